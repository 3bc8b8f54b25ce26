"""Which stored texts could hold PII: a compiled superset test, so curation runs the precise
patterns of `flywheel.ingest.pii` only on the few records that need them.

`flywheel.ingest.pii.redact` finds nothing in a text that has none of these (each is a necessary
condition of one kind of PII): an '@' (e-mail); a run of 16 token characters [A-Za-z0-9_-]
(secrets); '::' or 7+ colons (IPv6); four digits, each within two characters of the last (phone,
card, SSN, IPv4); two capitals then two digits (IBAN). One pass over the UTF-8 bytes of an Arrow
string array, parallel over texts, at memory speed; tests/test_pii.py checks that every planted
value is flagged.
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


@numba.njit(parallel=True, cache=True)
def _suspects(data, offsets, cls, out):  # pragma: no cover (compiled)
    for i in numba.prange(len(offsets) - 1):
        token_run = colons = digits = gap = capitals = iban_digits = 0
        hit = False
        p, end = offsets[i], offsets[i + 1]
        while p < end and not hit:
            c = data[p]
            k = cls[c]
            p += 1
            if k & 1:  # token character: a secret is a run of 16
                token_run += 1
                hit = token_run >= 16
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
    _suspects(data, offsets, _CLASS, out)
    return out
