"""Which stored texts could hold PII: a compiled superset test, so curation runs the precise
patterns of `flywheel.ingest.pii` only on the few records that need them.

`flywheel.ingest.pii.redact` finds nothing in a text that has none of these (each is a necessary
condition of one kind of PII): an '@' (e-mail); a run of 16 token characters [A-Za-z0-9_-]
(secrets); '::' or 7+ colons (IPv6); four digits, each within two characters of the last (phone,
card, SSN, IPv4); two capitals then two digits (IBAN); and, for the evasions the redactor undoes
first, any non-ASCII byte (NFKC, zero-width characters, Unicode dashes), '%' and two hex digits
(URL-encoding), "dot", or "at" before a closing bracket (an e-mail written out). One pass over
the UTF-8 bytes of an Arrow string array, parallel over texts, at memory speed; tests/test_pii.py
checks that every planted value, evasions included, is flagged.
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa

from flywheel.curate.dedup import utf8

_TOKEN, _DIGIT, _UPPER, _SPECIAL = 1, 2, 4, 8
_CLASS = np.zeros(256, dtype=np.uint8)
_CLASS[[ord(c) for c in "abcdefghijklmnopqrstuvwxyz_-"]] = _TOKEN
_CLASS[[ord(c) for c in "0123456789"]] = _TOKEN | _DIGIT
_CLASS[[ord(c) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]] = _TOKEN | _UPPER
_CLASS[[ord("@"), ord(":")]] = _SPECIAL
_HEX = np.zeros(256, dtype=np.bool_)
_HEX[[ord(c) for c in "0123456789abcdefABCDEF"]] = True


@numba.njit(parallel=True, cache=True)
def _suspects(data, offsets, cls, hexes, out):  # pragma: no cover (compiled)
    for i in numba.prange(len(offsets) - 1):
        token_run = colons = digits = gap = capitals = iban_digits = percent = 0
        hit = False
        p, end = offsets[i], offsets[i + 1]
        while p < end and not hit:
            c = data[p]
            k = cls[c]
            p += 1
            lower = c | 32  # (ASCII letters in lower case)
            hit = c >= 128 or (percent == 2 and hexes[c])  # non-ASCII; '%' and two hex digits
            percent = 1 if c == 37 else (percent + 1 if percent and hexes[c] else 0)
            if lower == 116 and p - 3 >= offsets[i] and data[p - 3] | 32 == 100 and data[p - 2] | 32 == 111:
                hit = True  # "dot"
            if c in (93, 41, 125, 62):  # "at", then spaces, then a closing bracket
                q = p - 2
                while q > offsets[i] and data[q] == 32:
                    q -= 1
                hit = hit or (q - 1 >= offsets[i] and data[q] | 32 == 116 and data[q - 1] | 32 == 97)
            if k & 1:  # token character: a secret is a run of 16
                token_run += 1
                hit = hit or token_run >= 16
            else:
                token_run = 0
            if k & 2:  # digit: four in a chain with gaps <= 2; two after two capitals
                digits = digits + 1 if digits and gap <= 2 else 1
                gap = 0
                iban_digits = iban_digits + 1 if iban_digits or capitals >= 2 else 0
                capitals = 0
                hit = hit or digits >= 4 or iban_digits >= 2
            else:
                gap += 1
                iban_digits = 0
                capitals = capitals + 1 if k & 4 else 0
            if k & 8:  # '@', or ':' (IPv6: '::' or 7 colons)
                colons += c == 58
                hit = hit or c == 64 or colons >= 7 or (c == 58 and p - 2 >= offsets[i] and data[p - 2] == 58)
        out[i] = hit


def suspects(texts: pa.Array) -> np.ndarray:
    """A boolean per text: True where `flywheel.ingest.pii.contains_pii` may be True (a null is clean)."""
    data, offsets = utf8(texts)
    out = np.zeros(len(offsets) - 1, dtype=np.bool_)
    _suspects(data, offsets, _CLASS, _HEX, out)
    return out
