"""What every PII detector searches: the text as bytes of character classes, and the splice that
puts the placeholders in.

Redaction runs on the ingestion hot path and most messages hold no PII, so saying "nothing here"
must be cheap: the text is mapped once to bytes of character classes (``bytes.translate``), C-level
searches on those (``bytes.find``, regexes with a literal prefix) find the few places worth a
closer look, and the precise patterns run only there, with bounded or possessive quantifiers so
the work stays linear. Checksums (Luhn, IBAN mod-97 and length, octet ranges, SSN rules) decide
each candidate: a value that fails its check stays as it is.
"""

from __future__ import annotations

import re


def byte_map(classes: dict[str, str]) -> bytes:
    """A bytes.translate table sending each byte to its class letter, everything else to b' '."""
    return bytes(next((ord(to) for chars, to in classes.items() if chr(b) in chars), 32) for b in range(256))


UPPER, LOWER, DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz", "0123456789"
# The classes `redact` hands every step as `hints`: digits and "()" -> 0, letters -> A or a.
NUM_MAP = byte_map({DIGITS + "()": "0", "+": "+", ".": ".", "-_": "-", UPPER: "A", LOWER + "/": "a"})
LETTER_CLASSES = (ord("A"), ord("a"))  # in NUM_MAP
# A canonical UUID is an identifier, neither a secret nor an IBAN (its hex groups can pass mod-97).
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def splice(text: str, spans: list[tuple[int, int, str]]) -> str:
    """`text` with each (start, end) span, in order and not overlapping, replaced by its placeholder."""
    if not spans:
        return text
    out, last = [], 0
    for start, end, placeholder in spans:
        out += (text[last:start], placeholder)
        last = end
    out.append(text[last:])
    return "".join(out)
