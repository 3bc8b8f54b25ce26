"""PII redaction, applied to LLM traffic before anything is stored.

Flywheel keeps production prompts and answers and later trains models on them. A model trained
on raw traffic can memorise and repeat a customer's e-mail, card number or API key, and a table
of raw traffic is a liability of its own. So each interaction is redacted on the way in: every
personal or secret value becomes a typed placeholder (``<EMAIL>``, ``<CARD>`` ...). The
placeholder keeps the sentence's shape, so a student still learns that an address goes there,
while the value itself never reaches disk. Curation re-checks records with ``contains_pii``.

This runs once per message on the ingestion hot path, and most messages hold no PII, so the
cost of saying "nothing here" is what matters: C-level gates (``'@' in text``, a byte-class map
searched with ``bytes.find``) decide which detectors run at all; every scanning regex starts
with a character class so the engine skips ahead in C; quantifiers are bounded, possessive or
unambiguous, so the work stays linear. Checksums (Luhn, IBAN mod-97, octet ranges, SSN rules)
run only on candidates, in the substitution callback: a value that fails its check stays as is.

Deliberate trade-offs: canonical UUIDs are identifiers, not secrets, and are kept; bare digit
runs without separators or a leading "+" (order ids, timestamps) are never phone numbers;
full-length hex digests (40+ hex chars, e.g. a git SHA-1) look exactly like hex API keys and are
redacted; a dotted quad with every part <= 255 is an IP even when it was meant as a version.
"""

from __future__ import annotations

import ipaddress
import re

KINDS: tuple[str, ...] = ("EMAIL", "PHONE", "CARD", "IBAN", "IP", "SSN", "SECRET")
_ALL = frozenset(KINDS)
_NUMERIC = frozenset({"PHONE", "CARD", "IP", "SSN"})


def _byte_map(classes: dict[str, str]) -> bytes:
    """A bytes.translate table sending each byte to its class letter, everything else to b' '."""
    table = bytearray(b" " * 256)
    for chars, to in classes.items():
        for ch in chars:
            table[ord(ch)] = ord(to)
    return bytes(table)


_UPPER, _LOWER, _DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz", "0123456789"
_CLASS_MAP = _byte_map({_UPPER: "A", _DIGITS: "0"})  # an IBAN starts with "AA00"
_TOKEN_MAP = _byte_map({_UPPER + _LOWER + _DIGITS + "_-": "w"})  # secrets are runs of these
_HEX_MAP = _byte_map({_DIGITS + "abcdefABCDEF:": "h"})  # IPv6 addresses are runs of these
_NUM_MAP = _byte_map({_DIGITS + "+()": "0", ".": ".", "-": "-", _UPPER + _LOWER + "_/": "a"})
_RUN, _HEX_RUN = b"w" * 16, b"h" * 15  # no secret is shorter; no uncompressed IPv6 either

# --- e-mail: found from each '@' outwards, so text without '@' costs one `in` ---
_LOCAL_REV = re.compile(r"[\w.%+-]{1,64}")  # matched on the reversed text before the '@'
_DOMAIN = re.compile(r"(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}(?![\w-])")

# --- IBAN: country, 2 check digits, BBAN in groups of four ---
_IBAN = re.compile(r"[A-Z]{2}[0-9]{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?(?![A-Za-z0-9])")

# --- secrets ---
_BEARER = re.compile(r"([Bb](?<!\w.)(?:earer|EARER)\s+)([A-Za-z0-9._~+/-]{8,}=*)")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
_PREFIXES = ("sk", "rk", "pk", "gh", "github_pat_", "xox", "AKIA", "AIza")
_PREFIXED = re.compile(
    r"sk-[A-Za-z0-9_-]{20,}|[spr]k_(?:live|test)_[A-Za-z0-9]{10,}|gh[oprsu]_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{30,}|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{30,}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_LETTER_DIGIT = re.compile(r"[A-Za-z](?=[0-9])|[0-9](?=[A-Za-z])")
_CASE_SWITCH = re.compile(r"[a-z](?=[A-Z])|[A-Z](?=[a-z])")
_LOWER_RUN = re.compile(r"[a-z]{6,}")

# --- IPv6: hex-and-colon runs around a "::" or 15+ long, checked by `ipaddress` ---
_IP6 = re.compile(r"[0-9A-Fa-f:](?<![\w:.].)[0-9A-Fa-f:]{1,38}+(?:\.[0-9]{1,3}){0,3}(?![\w:]|\.[0-9])")

# --- numbers: in the byte map (digits, "+()" -> 0; word chars -> a; other separators -> space) a
# phone, card or SSN is a number start " 0" with 9+ digits joined by single separators, an IPv4
# is " 0.0.0.0"; the precise patterns below run only inside such runs.
_NUM_HINT = re.compile(rb" 0(?:(?:[. -]?0){8}|0{0,2}\.0{1,3}\.0{1,3}\.0)[0. -]*+")
_NUM = re.compile(r"""(?<![\w.+-])(?:
    (?P<SSN>[0-9]{3}-[0-9]{2}-[0-9]{4})(?![0-9]|-[0-9])
  | (?P<IP>[0-9]{1,3}(?:\.[0-9]{1,3}){3})(?![0-9]|\.[0-9])
  | (?P<CARD>[0-9]{13,19}
      | [0-9]{4}(?P<s>[ -])[0-9]{4}(?P=s)[0-9]{4}(?P=s)[0-9]{1,4}(?:(?P=s)[0-9]{3})?
      | [0-9]{4}(?P<a>[ -])[0-9]{6}(?P=a)[0-9]{4,5})(?![0-9])
  | (?P<PHONE>\+[1-9][0-9]{7,14}
      | \+[1-9][0-9]{0,2}(?:[ .-]?\([0-9]{1,4}\)[ .-]?[0-9]{1,8}|[ .-][0-9]{1,8})(?:[ .-][0-9]{1,8}){0,5}
      | (?:1[ .-])?(?:\([0-9]{3}\)[ ]?|[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}
      | 0[1-9][0-9]{0,3}(?P<n>[ .-])[0-9]{2,8}(?:(?P=n)[0-9]{2,4}){0,4})(?![0-9]|[.-][0-9])
)""", re.X)


def redact(text: str, kinds: frozenset[str] | None = None) -> tuple[str, int]:
    """Return text with each PII value replaced by a typed placeholder like <EMAIL>, and how many were replaced. kinds=None means all."""
    if kinds is None:
        kinds = _ALL
    elif not _ALL.issuperset(kinds):
        raise ValueError(f"unknown PII kinds {sorted(set(kinds) - _ALL)}; known: {KINDS}")
    total = 0
    if "EMAIL" in kinds and "@" in text:
        text, total = _emails(text)
    raw = None  # text as bytes, one per character, so offsets agree with text
    for needs, step in _STEPS:
        if needs.isdisjoint(kinds):
            continue
        if raw is None:
            raw = text.encode("ascii", "replace")
        text, n = step(text, raw, kinds)
        if n:
            total, raw = total + n, None
    return text, total


def contains_pii(text: str, kinds: frozenset[str] | None = None) -> bool:
    """True if `redact` would replace anything (used by curation to re-check stored records)."""
    return redact(text, kinds)[1] > 0


def _splice(text: str, spans: list[tuple[int, int, str]]) -> str:
    out, last = [], 0
    for start, end, placeholder in spans:
        out += (text[last:start], placeholder)
        last = end
    out.append(text[last:])
    return "".join(out)


def _emails(text: str) -> tuple[str, int]:
    spans, at, floor = [], text.find("@"), 0
    while at != -1:
        domain = _DOMAIN.match(text, at + 1)
        local = _LOCAL_REV.match(text[max(floor, at - 64):at][::-1]) if domain else None
        start = at - local.end() if local else at
        while start < at and text[start] == ".":  # a local part cannot start with a dot
            start += 1
        if start < at:
            spans.append((start, domain.end(), "<EMAIL>"))
            floor = domain.end()
        at = text.find("@", max(floor, at + 1))
    return _splice(text, spans), len(spans)


def _iban_ok(compact: str) -> bool:
    if not 15 <= len(compact) <= 34 or compact[2:4] in ("00", "01", "99"):
        return False
    return int("".join(str(int(c, 36)) for c in compact[4:] + compact[:4])) % 97 == 1


def _ibans(text: str, raw: bytes, kinds: frozenset[str]) -> tuple[str, int]:
    classes, spans = raw.translate(_CLASS_MAP), []
    i = classes.find(b"AA00")
    while i != -1:
        m = None if i and text[i - 1].isalnum() else _IBAN.match(text, i)
        value = m.group() if m else ""
        while value and not _iban_ok(value.replace(" ", "")):  # a trailing word may have been swallowed
            value = value[: max(value.rfind(" "), 0)]
        if value:
            spans.append((i, i + len(value), "<IBAN>"))
        i = classes.find(b"AA00", i + max(len(value), 1))
    return _splice(text, spans), len(spans)


def _secrets(text: str, raw: bytes, kinds: frozenset[str]) -> tuple[str, int]:
    count = 0
    if "earer" in text or "EARER" in text:

        def bearer(m: re.Match) -> str:
            nonlocal count
            token = m.group(2)
            if len(token) < 20 and not any(c.isdigit() for c in token):
                return m.group()  # "the bearer of this voucher": a word, not a token
            count += 1
            return m.group(1) + "<SECRET>"

        text = _BEARER.sub(bearer, text)
        raw = text.encode("ascii", "replace") if count else raw
    tokens, spans = raw.translate(_TOKEN_MAP), []
    i = tokens.find(_RUN)
    while i != -1:
        j = tokens.find(b" ", i)
        j = len(tokens) if j < 0 else j
        jwt = _JWT.match(text, i) if text.startswith("eyJ", i) else None
        if jwt:
            j = jwt.end()
        if jwt or (text.startswith(_PREFIXES, i) and _PREFIXED.fullmatch(text, i, j)) or _looks_random(text, i, j):
            spans.append((i, j, "<SECRET>"))
        i = tokens.find(_RUN, j)
    return _splice(text, spans), count + len(spans)


def _looks_random(text: str, i: int, j: int) -> bool:
    """A generic token of >= 32 chars: random-looking, mixing letters and digits (not a UUID)."""
    if j - i < 32:
        return False
    tok = text[i:j]
    switches = len(_LETTER_DIGIT.findall(tok))
    if switches >= 4:  # hex digests, base62 keys: letters and digits interleave
        if "-" in tok and _UUID.search(tok):  # (identifiers like max_len_v2_2024 switch once or twice)
            return any(_looks_random(part, 0, len(part)) for part in _UUID.split(tok))
        return True
    # mostly-letter base62 keys: many case switches and no word-like lowercase run
    return switches >= 1 and len(_CASE_SWITCH.findall(tok)) * 4 >= len(tok) and not _LOWER_RUN.search(tok)


def _ipv6(text: str, raw: bytes, kinds: frozenset[str]) -> tuple[str, int]:
    double = text.find("::")
    if double < 0 and text.count(":") < 7:
        return text, 0
    hexes, starts = raw.translate(_HEX_MAP), set()
    while double != -1:  # runs holding a "::"
        starts.add(hexes.rfind(b" ", 0, double) + 1)
        end = hexes.find(b" ", double)
        double = -1 if end < 0 else text.find("::", end)
    i = hexes.find(_HEX_RUN)
    while i != -1:  # runs long enough for eight groups
        starts.add(i)
        end = hexes.find(b" ", i)
        i = -1 if end < 0 else hexes.find(_HEX_RUN, end)
    spans = []
    for start in sorted(starts):
        m = _IP6.match(text, start)
        if m and _ipv6_ok(m):
            spans.append((start, m.end(), "<IP>"))
    return _splice(text, spans), len(spans)


def _ipv6_ok(m: re.Match) -> bool:
    value = m.group()
    if "::" not in value and value.count(":") < 6:  # 12:30:45 is a time
        return False
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    if value == "::1":  # but arr[::1] slices a list
        return not m.string[max(m.start() - 2, 0) : m.start()].rstrip("[")[-1:].isalnum()
    groups = [g for g in value.split(":") if g]  # a[1::2], "::" and friends are code
    return len(groups) >= 2 and max(map(len, groups)) >= 3


def _luhn(digits: str) -> bool:
    total = sum(map(int, digits[-1::-2]))
    for d in digits[-2::-2]:
        total += (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)[ord(d) - 48]
    return total % 10 == 0


def _phone_ok(value: str) -> bool:
    digits = sum(c.isdigit() for c in value)
    if value[0] == "+":
        return digits == 11 if value[1] == "1" else 8 <= digits <= 15
    if value[0] == "0":
        return 9 <= digits <= 12
    return True  # US forms are fixed by the pattern


def _number_ok(kind: str, value: str) -> str:
    """The part of `value` that is a valid `kind` ('' if none)."""
    if kind == "SSN":
        area, group, serial = value.split("-")
        ok = area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"
        return value if ok else ""
    if kind == "IP":
        return value if all(int(octet) <= 255 for octet in value.split(".")) else ""
    if kind == "CARD":
        digits = value.replace(" ", "").replace("-", "")
        return value if digits[0] in "23456" and _luhn(digits) else ""
    while not _phone_ok(value):  # drop trailing groups: "+1 555 123 4567 2 times"
        cut = max(value.rfind(" "), value.rfind("-"), value.rfind("."))
        if cut < 2:
            return ""
        value = value[:cut]
    return value


def _numbers(text: str, raw: bytes, kinds: frozenset[str]) -> tuple[str, int]:
    hints, spans = b" " + raw.translate(_NUM_MAP), []  # hints[k] is text[k - 1]
    hint = _NUM_HINT.search(hints)
    while hint:
        for m in _NUM.finditer(text, hint.start(), hint.end() - 1):
            kind = m.lastgroup
            value = _number_ok(kind, m.group()) if kind in kinds else ""
            if value:
                spans.append((m.start(), m.start() + len(value), f"<{kind}>"))
        hint = _NUM_HINT.search(hints, hint.end())
    return _splice(text, spans), len(spans)


_STEPS = ((frozenset({"IBAN"}), _ibans), (frozenset({"SECRET"}), _secrets), (frozenset({"IP"}), _ipv6),
          (_NUMERIC, _numbers))  # fmt: skip
