"""Secrets (the SECRET kind): API keys, bearer tokens, JWTs and random-looking tokens.

Each is a run of 16+ token characters, found in one `bytes.find` over the text mapped to token
classes. A known prefix (``sk-``, ``ghp_``, ``AKIA`` ...) with its length, a "Bearer" before it, a
JWT's shape, or 32+ characters that mix letters and digits the way random keys do make it a
secret. Canonical UUIDs are identifiers and are kept; a full-length hex digest (e.g. a git SHA-1)
looks exactly like a hex API key and is redacted; an IBAN is left to `numbers`.
"""

from __future__ import annotations

import re

from flywheel.ingest.pii.numbers import IBAN, iban_length
from flywheel.ingest.pii.scan import DIGITS, LOWER, UPPER, UUID, byte_map, splice

_TOKEN_MAP = byte_map({UPPER + LOWER + DIGITS + "_-": "w"})  # secrets are runs of these
_RUN = b"w" * 16  # no prefixed secret is shorter

# "Bearer <token>" keeps the word; found from the token's runs of 16+ (the token may hold . ~ + / =)
_BEARER = re.compile(r"\b(?:[Bb]earer|BEARER)\s+([A-Za-z0-9._~+/-]*)\Z")  # searched just before a run
_B64 = re.compile(r"[A-Za-z0-9._~+/-]*[A-Za-z0-9_~+/-]=*")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
_PREFIXES = ("sk", "rk", "pk", "gh", "xox", "AKIA", "AIza", "eyJ")  # github_pat_ starts with gh
_PREFIXED = re.compile(
    r"sk-[A-Za-z0-9_-]{20,}|[spr]k_(?:live|test)_[A-Za-z0-9]{10,}|gh[oprsu]_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{30,}|xox[abprs]-[A-Za-z0-9-]{11,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{30,}")


def redact_secrets(text: str, raw: bytes, hints: bytes, kinds: frozenset[str]) -> tuple[str, int]:
    tokens, spans = raw.translate(_TOKEN_MAP), []
    i = tokens.find(_RUN)
    while i != -1:
        j = tokens.find(b" ", i)
        j = len(tokens) if j < 0 else j
        span = _secret_span(text, hints, i, j)
        if span:
            spans.append((*span, "<SECRET>"))
            j = max(j, span[1])
        i = tokens.find(_RUN, j)
    return splice(text, spans), len(spans)


def _secret_span(text: str, hints: bytes, i: int, j: int) -> tuple[int, int] | None:
    """The secret around text[i:j], a run of 16+ token characters, if there is one."""
    if _is_iban(text, i, j):  # a dashed or compact IBAN is a run of token characters too
        return None
    before = max(i - 64, 0)
    if "earer" in text[before:i].lower() and (bearer := _BEARER.search(text, before, i)):
        return bearer.start(1), _B64.match(text, i).end()  # "Bearer <SECRET>"
    if text.startswith("eyJ", i) and (jwt := _JWT.match(text, i)):
        return i, jwt.end()
    if (text.startswith(_PREFIXES, i) and _PREFIXED.fullmatch(text, i, j)) or _looks_random(text, hints, i, j):
        return i, j
    return None


def _is_iban(text: str, i: int, j: int) -> bool:
    iban = text[i : i + 2].isalpha() and text[i + 2 : i + 4].isdigit() and IBAN.match(text[i:j].upper())
    return bool(iban) and iban.end() == j - i and iban_length(iban.group(), loose=True) == j - i


def _looks_random(text: str, hints: bytes, i: int, j: int) -> bool:
    """A generic token of >= 32 chars: random-looking, mixing letters and digits (not a UUID)."""
    if j - i < 32 or j - i == 36 and UUID.fullmatch(text, i, j):
        return False
    classes = hints[i + 1 : j + 1]  # lower a, upper A, digit 0
    switches = sum(map(classes.count, (b"a0", b"0a", b"A0", b"0A")))
    if switches >= 4:  # hex digests, base62 keys: letters and digits interleave
        if b"-" in classes and UUID.search(text, i, j):  # (identifiers like max_len_v2 switch once or twice)
            edges = [i, *(k for m in UUID.finditer(text, i, j) for k in m.span()), j]  # judge what is around
            return any(_looks_random(text, hints, a, b) for a, b in zip(edges[::2], edges[1::2]))
        return True
    # mostly-letter base62 keys: many case switches and no word-like lowercase run
    case_switches = classes.count(b"aA") + classes.count(b"Aa")
    return switches >= 1 and case_switches * 4 >= j - i and b"aaaaaa" not in classes
