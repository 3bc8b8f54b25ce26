"""Duplicate detection for curation: one pass over the text, then exact keys and MinHash + LSH.

A million examples must dedup in seconds, so neither a Python call per example (one
`datasketch.MinHash` is ≈100 µs) nor a list of token hashes per example (a gigabyte) will do.
`sketch` runs one compiled pass (numba, parallel over examples) over the raw UTF-8 bytes and
gives each example, at once:

- its *exact key*: a hash of its normalised words (split on whitespace and punctuation; the
  caller lower-cases), so case, punctuation and spacing do not make two examples different;
- its *one-permutation MinHash* (Li, Owen & Zhang 2012) over k-word shingles: one hash per
  shingle, its top bits pick one of K bins, each bin keeps its minimum. Empty bins are filled by
  *rotation densification* (Shrivastava & Li 2014) so two signatures agree in a bin with
  probability ≈ their Jaccard similarity, which is what LSH banding needs;
- its *LSH band keys*: b bands of r bins (b·r ≤ K, chosen to minimise false positives + negatives
  at the threshold, as datasketch does).

`near_duplicate_groups` then links rows sharing a band bucket, keeps a candidate pair when its
estimated Jaccard (16 bits a bin) reaches the threshold, and returns the connected components.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
import pyarrow as pa

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_M1 = _U64(0xBF58476D1CE4E5B9)
_M2 = _U64(0x94D049BB133111EB)
_FNV_OFFSET = _U64(0xCBF29CE484222325)
_FNV_PRIME = _U64(0x100000001B3)
_EMPTY = np.uint32(0xFFFFFFFF)

# Bytes that end a word: ASCII whitespace and punctuation. Other bytes (letters, digits, symbols,
# every byte of a non-ASCII character) are word characters.
SEPARATORS = " \t\n\r\f\v.,;:!?\"'()[]{}<>"
_SEP = np.zeros(256, dtype=np.uint8)
_SEP[[ord(c) for c in SEPARATORS]] = 1


@numba.njit(inline="always")
def _mix64(x):
    """splitmix64 finaliser: spreads every input bit over the output (uint64 arithmetic wraps)."""
    x = x ^ (x >> _U64(30))
    x = x * _M1
    x = x ^ (x >> _U64(27))
    x = x * _M2
    return x ^ (x >> _U64(31))


@numba.njit(inline="always")
def _add_shingle(sig, sh, seed_mix, bits):
    # The shingle hash is already a mix of mixed word hashes: one multiply and shift spread it.
    hv = (sh ^ seed_mix) * _M2
    hv ^= hv >> _U64(29)
    b = np.int64(hv >> _U64(64 - bits))
    sig[b] = min(sig[b], np.uint32((hv >> _U64(32 - bits)) & _U64(0xFFFFFFFF)))  # (branch-free)


@numba.njit(parallel=True, cache=True)
def _sketch_kernel(data, offsets, rows, sep, k, bits, r, seed_mix, exact, keys, sig16, valid):  # pragma: no cover
    num_perm = 1 << bits
    bands = keys.shape[1]
    golden_k = _U64(1)  # _GOLDEN ** k: what the word leaving a shingle weighs in the rolling hash
    for _ in range(k):
        golden_k = golden_k * _GOLDEN
    chunks = 64  # parallel over chunks of rows: the work buffers are allocated once a chunk
    for chunk in numba.prange(chunks):
        sig = np.empty(num_perm, dtype=np.uint32)
        filled = np.empty(num_perm, dtype=np.uint32)
        ring = np.zeros(k, dtype=np.uint64)  # the last k word hashes
        for i in range(chunk * len(rows) // chunks, (chunk + 1) * len(rows) // chunks):
            row = rows[i]
            sig[:] = _EMPTY
            ntok = 0
            slot = 0  # where the next word goes in the ring
            words = _U64(0)  # polynomial hash of all words: the exact key
            shingle = _U64(0)  # rolling polynomial hash of the last k words
            h = _FNV_OFFSET
            in_word = False
            end = offsets[i + 1]
            for p in range(offsets[i], end + 1):
                c = data[p] if p < end else np.uint8(32)
                if sep[c]:
                    if in_word:
                        word = _mix64(h)
                        shingle = shingle * _GOLDEN + word
                        if ntok >= k:
                            shingle -= ring[slot] * golden_k
                        ring[slot] = word
                        slot = slot + 1 if slot + 1 < k else 0
                        ntok += 1
                        words = words * _GOLDEN + word
                        if ntok >= k:
                            _add_shingle(sig, shingle, seed_mix, bits)
                        in_word = False
                else:
                    if not in_word:
                        h = _FNV_OFFSET
                        in_word = True
                    h = (h ^ _U64(c)) * _FNV_PRIME
            if 0 < ntok < k:  # a row shorter than a shingle is one shingle of all its words
                _add_shingle(sig, shingle, seed_mix, bits)
            valid[row] = ntok > 0
            exact[row] = _mix64(words ^ _U64(ntok))
            # Rotation densification: an empty bin takes the next non-empty bin to its right
            # (circularly), mixed with the distance, so two rows agree there only when both
            # borrow the same value from the same distance. A row without words stays all zero.
            if ntok == 0:
                filled[:] = 0
            else:
                nxt, dist = _EMPTY, 0
                for jj in range(2 * num_perm - 1, -1, -1):  # right to left, twice for the wrap-around
                    j = jj - num_perm if jj >= num_perm else jj
                    if sig[j] != _EMPTY:
                        nxt, dist = sig[j], 0
                    else:
                        dist += 1
                    if jj < num_perm:
                        filled[j] = nxt if dist == 0 else (nxt ^ np.uint32(dist * 0x9E3779B1)) * np.uint32(0x85EBCA6B)
            for j in range(num_perm):
                sig16[row, j] = np.uint16(filled[j] & np.uint32(0xFFFF))
            for b in range(bands):
                acc = _U64(b + 1)
                for j in range(b * r, (b + 1) * r):
                    acc = acc * _GOLDEN + _U64(filled[j])
                keys[row, b] = _mix64(acc)


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising the equally weighted false-positive and false-negative
    areas around `threshold` (the rule datasketch's `MinHashLSH` uses)."""
    s_lo = np.linspace(0.0, threshold, 200)
    s_hi = np.linspace(threshold, 1.0, 200)
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1 - (1 - s_lo**r) ** b, s_lo)
            fn = np.trapezoid((1 - s_hi**r) ** b, s_hi)
            if fp + fn < best_err:
                best, best_err = (b, r), fp + fn
    return best


@dataclass
class Sketch:
    """Per row 0..n-1: exact key, LSH band keys, 16-bit MinHash signature, and whether it has words."""

    exact: np.ndarray  # (n,) uint64
    keys: np.ndarray  # (n, bands) uint64
    sig16: np.ndarray  # (n, num_perm) uint16
    valid: np.ndarray  # (n,) bool


def utf8(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets) of a string array, zero-copy; a null is an empty text."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if texts.null_count:
        texts = texts.fill_null("")
    width = np.int64 if pa.types.is_large_string(texts.type) else np.int32
    _, offsets, data = texts.buffers()
    offsets = np.frombuffer(offsets, dtype=width)[texts.offset : texts.offset + len(texts) + 1].astype(np.int64)
    data = np.frombuffer(data, dtype=np.uint8) if data is not None and data.size else np.zeros(1, np.uint8)
    return data, offsets


def sketch(batches, n: int, *, threshold: float, shingle_size: int = 3, num_perm: int = 128, seed: int = 0) -> Sketch:
    """Sketch rows 0..n-1 from batches of (row indices, lower-cased texts); rows never given
    stay invalid (no words)."""
    bits = int(num_perm).bit_length() - 1
    if num_perm < 8 or 1 << bits != num_perm:
        raise ValueError(f"num_perm must be a power of two >= 8, got {num_perm}")
    bands, r = lsh_params(threshold, num_perm)
    out = Sketch(np.zeros(n, _U64), np.zeros((n, bands), _U64), np.zeros((n, num_perm), np.uint16), np.zeros(n, bool))
    seed_mix = _U64(_mix64(_U64(seed + 1)))  # (numba returns a Python int)
    for rows, texts in batches:
        data, offsets = utf8(texts)
        _sketch_kernel(data, offsets, np.asarray(rows, np.int64), _SEP, shingle_size, bits, r, seed_mix,
                       out.exact, out.keys, out.sig16, out.valid)  # fmt: skip
    return out


def candidate_pairs(keys: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (head, member) of rows sharing a bucket in some band; head is the bucket's lowest row.

    Linking each member to its bucket's head (not every pair) keeps the output linear in the
    bucket size; the components come out the same.
    """
    ids = np.flatnonzero(valid)
    if not len(ids) or not keys.shape[1]:
        return np.empty(0, np.int64), np.empty(0, np.int64)

    def band(b: int) -> tuple[np.ndarray, np.ndarray]:
        k = keys[ids, b]
        order = np.argsort(k)  # (not stable: 4x faster; the head is taken as the bucket's minimum)
        ks, rs = k[order], ids[order]
        new = np.ones(len(ks), dtype=bool)
        new[1:] = ks[1:] != ks[:-1]
        head = np.minimum.reduceat(rs, np.flatnonzero(new))[np.cumsum(new) - 1]
        member = rs != head
        return head[member], rs[member]

    with ThreadPoolExecutor(2) as pool:  # (numpy sorts without the GIL)
        heads, members = zip(*pool.map(band, range(keys.shape[1])), strict=True)
    n = np.int64(len(valid))
    codes = np.unique(np.concatenate(heads) * n + np.concatenate(members))
    return codes // n, codes % n


def estimated_jaccard(sig16: np.ndarray, u: np.ndarray, v: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Fraction of equal signature bins for each pair (u[i], v[i])."""
    out = np.empty(len(u), dtype=np.float64)
    for i in range(0, len(u), chunk):
        out[i : i + chunk] = (sig16[u[i : i + chunk]] == sig16[v[i : i + chunk]]).mean(axis=1)
    return out


def components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Connected components of an undirected graph on n nodes: each node's label is the lowest
    node of its component. Vectorised hook-and-compress, no Python loop over nodes."""
    labels = np.arange(n, dtype=np.int64)
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    while len(u):
        lu, lv = labels[u], labels[v]
        differ = lu != lv
        if not differ.any():
            break
        lu, lv = lu[differ], lv[differ]
        low = np.minimum(lu, lv)
        # Hook each root onto the lower root (labels only ever decrease: no cycles).
        np.minimum.at(labels, np.maximum(lu, lv), low)
        while True:  # pointer jumping until every node points at its root
            nxt = labels[labels]
            if np.array_equal(nxt, labels):
                break
            labels = nxt
    return labels


def near_duplicate_groups(sk: Sketch, rows: np.ndarray, threshold: float) -> np.ndarray:
    """Group label (lowest member's row index) for rows 0..n-1, linking only `rows` (a boolean
    mask: the examples still in play) whose estimated Jaccard reaches `threshold`."""
    u, v = candidate_pairs(sk.keys, sk.valid & rows)
    keep = estimated_jaccard(sk.sig16, u, v) >= threshold
    return components(len(rows), u[keep], v[keep])
