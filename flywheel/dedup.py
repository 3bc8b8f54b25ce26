"""Near-duplicate detection for curation: MinHash signatures, LSH banding, connected components.

Why not one `datasketch.MinHash` per row: that is a Python call per example and K hash passes
per shingle (≈100 µs a row, minutes at a million rows). Here the work is vectorised over a whole
batch of rows with numpy, and each shingle is hashed once:

- *one-permutation MinHash* (Li, Owen & Zhang 2012): one hash per shingle, its top bits pick one
  of K bins, each bin keeps its minimum. Empty bins are filled by *rotation densification*
  (Shrivastava & Li 2014) so two signatures agree in a bin with probability ≈ their Jaccard
  similarity, which is what LSH banding needs;
- *LSH banding*: b bands of r bins (b·r ≤ K, chosen to minimise false positives + negatives at
  the threshold, as datasketch does); rows sharing a band bucket become candidate pairs;
- *verification*: a candidate pair is kept when its estimated Jaccard (16 bits per bin) reaches
  the threshold; the groups are the connected components of the kept pairs.

Input is the per-row list of token hashes (DuckDB computes them); shingles are k consecutive tokens.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_M1 = _U64(0xBF58476D1CE4E5B9)
_M2 = _U64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads every input bit over the output (uint64 arithmetic wraps)."""
    x = x ^ (x >> _U64(30))
    x = x * _M1
    x = x ^ (x >> _U64(27))
    x = x * _M2
    return x ^ (x >> _U64(31))


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


def shingle_hashes(tokens: pa.ListArray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the k-token shingles of each row: (row index per shingle, shingle hash).

    A row shorter than k tokens is one shingle of all its tokens; a row with no tokens has none.
    """
    tokens = tokens.combine_chunks() if isinstance(tokens, pa.ChunkedArray) else tokens
    offsets = tokens.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]
    h = tokens.values.to_numpy(zero_copy_only=False).astype(_U64, copy=False)
    h = h[: offsets[-1]]
    n = len(offsets) - 1
    lens = np.diff(offsets)
    # Roll a polynomial hash over windows of k tokens (DuckDB's token hashes are already well
    # mixed; `signatures` mixes the result); windows crossing a row end are masked out.
    acc = h.copy()
    for d in range(1, k):
        acc[:-d] *= _GOLDEN
        acc[:-d] += h[d:]
    row = np.repeat(np.arange(n, dtype=np.int64), lens)
    start_ok = (offsets[1:][row] - np.arange(len(h))) >= k
    rows, sh = row[start_ok], acc[start_ok]
    short = np.flatnonzero((lens > 0) & (lens < k))
    if len(short):
        # A short row's single shingle: the ordered mix of its tokens.
        short_hash = np.zeros(len(short), dtype=_U64)
        for d in range(int(lens[short].max())):
            has = lens[short] > d
            short_hash[has] = short_hash[has] * _GOLDEN + h[offsets[short[has]] + d]
        rows = np.concatenate([rows, short])
        sh = np.concatenate([sh, short_hash])
    return rows, sh


def signatures(rows: np.ndarray, shingles: np.ndarray, n: int, num_perm: int, seed: int) -> np.ndarray:
    """Densified one-permutation MinHash signatures, shape (n, num_perm), uint32.

    Rows without shingles get an all-zero signature; callers exclude them from LSH.
    """
    bits = int(num_perm).bit_length() - 1
    if 1 << bits != num_perm:
        raise ValueError(f"num_perm must be a power of two, got {num_perm}")
    hv = _mix64(shingles ^ _mix64(np.array([seed + 1], dtype=_U64)))
    bins = (hv >> _U64(64 - bits)).astype(np.int64) if bits else np.zeros(len(hv), dtype=np.int64)
    vals = ((hv >> _U64(max(0, 32 - bits))) & _U64(0xFFFFFFFF)).astype(np.uint32)
    empty = np.uint32(0xFFFFFFFF)
    sig = np.full(n * num_perm, empty, dtype=np.uint32)
    np.minimum.at(sig, rows * num_perm + bins, vals)
    # Rotation densification: an empty bin takes the next non-empty bin to its right (circularly),
    # mixed with the distance, so two rows agree there only when both borrow the same value from
    # the same distance. Walk the bins right to left twice (for the wrap-around) carrying the last
    # value seen: K vector steps over the batch instead of (n, K) index arrays.
    cols = np.ascontiguousarray(sig.reshape(n, num_perm).T)  # (K, n): one contiguous row per bin
    out = cols.copy()
    carry = np.full(n, empty, dtype=np.uint32)
    dist = np.zeros(n, dtype=np.uint32)
    for j in range(2 * num_perm - 1, -1, -1):
        c = j % num_perm
        has = cols[c] != empty
        dist += np.uint32(1)
        carry = np.where(has, cols[c], carry)
        dist[has] = 0
        if j < num_perm:
            filled = (carry ^ (dist * np.uint32(0x9E3779B1))) * np.uint32(0x85EBCA6B)
            out[c] = np.where(has, cols[c], filled)
    sig = np.ascontiguousarray(out.T)
    sig[carry == empty] = 0  # rows without any shingle
    return sig


def band_keys(sig: np.ndarray, bands: int, rows_per_band: int) -> np.ndarray:
    """One uint64 bucket key per (row, band), shape (n, bands)."""
    keys = np.empty((sig.shape[0], bands), dtype=_U64)
    for b in range(bands):
        acc = np.full(sig.shape[0], _U64(b + 1), dtype=_U64)
        for c in range(b * rows_per_band, (b + 1) * rows_per_band):
            acc = acc * _GOLDEN + sig[:, c].astype(_U64)
        keys[:, b] = _mix64(acc)
    return keys


def candidate_pairs(keys: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (head, member) of rows sharing a bucket in some band; head is the bucket's lowest row.

    Linking each member to its bucket's head (not every pair) keeps the output linear in the
    bucket size; the components come out the same.
    """
    ids = np.flatnonzero(valid)
    heads, members = [], []
    for b in range(keys.shape[1]):
        k = keys[ids, b]
        order = np.argsort(k, kind="stable")  # stable: ties keep row order, so the head is the lowest row
        ks, rs = k[order], ids[order]
        new = np.ones(len(ks), dtype=bool)
        new[1:] = ks[1:] != ks[:-1]
        head_pos = np.maximum.accumulate(np.where(new, np.arange(len(ks)), 0))
        dup = ~new
        heads.append(rs[head_pos[dup]])
        members.append(rs[dup])
    if not heads:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    pairs = np.unique(np.stack([np.concatenate(heads), np.concatenate(members)], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


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


def near_duplicate_groups(
    batches: Iterable[tuple[np.ndarray, pa.ListArray]],
    n: int,
    *,
    threshold: float,
    shingle_size: int = 3,
    num_perm: int = 128,
    seed: int = 0,
) -> np.ndarray:
    """Group label (lowest member's row index) for rows 0..n-1, from batches of
    (row indices, token-hash lists). Rows without tokens stay alone."""
    bands, r = lsh_params(threshold, num_perm)
    keys = np.zeros((n, bands), dtype=_U64)
    sig16 = np.zeros((n, num_perm), dtype=np.uint16)  # 16 bits a bin is plenty to estimate Jaccard
    valid = np.zeros(n, dtype=bool)
    for idx, tokens in batches:
        rows, sh = shingle_hashes(tokens, shingle_size)
        sig = signatures(rows, sh, len(idx), num_perm, seed)
        keys[idx] = band_keys(sig, bands, r)
        sig16[idx] = (sig & np.uint32(0xFFFF)).astype(np.uint16)
        has = np.zeros(len(idx), dtype=bool)
        has[rows] = True
        valid[idx] = has
    u, v = candidate_pairs(keys, valid)
    keep = estimated_jaccard(sig16, u, v) >= threshold
    return components(n, u[keep], v[keep])
