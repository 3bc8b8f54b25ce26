"""PII redaction, applied to LLM traffic before anything is stored.

Flywheel keeps production prompts and answers and trains models on them. A model trained on raw
traffic can memorise and repeat a customer's e-mail, card number or API key, and a table of raw
traffic is a liability of its own. So each interaction is redacted on the way in: every personal
or secret value becomes a typed placeholder (``<EMAIL>``, ``<CARD>`` ...) that keeps the
sentence's shape, so a student still learns that an address goes there, while the value never
reaches disk. Curation re-checks stored records with ``contains_pii``.

This runs on the ingestion hot path and most messages hold no PII, so saying "nothing here" must
be cheap: the text is mapped once to bytes of character classes (``bytes.translate``), C-level
searches on those (``bytes.find``, regexes with a literal prefix) find the few places worth a
closer look, and the precise patterns run only there, with bounded or possessive quantifiers so
the work stays linear. Checksums (Luhn, IBAN mod-97 and length, octet ranges, SSN rules) decide
each candidate: a value that fails its check stays as it is.

Deliberate trade-offs: canonical UUIDs are identifiers, not secrets, and are kept; bare digit
runs without separators or a leading "+" (order ids, timestamps) are never phone numbers; card
numbers must also start like a major network's (2-6); a bearer token needs a run of 16+ token
characters; full-length hex digests (e.g. a git SHA-1) look exactly like hex API keys and are
redacted; a dotted quad with every part <= 255 is an IP even when it was meant as a version.
"""

from __future__ import annotations

import ipaddress
import re

KINDS: tuple[str, ...] = ("EMAIL", "PHONE", "CARD", "IBAN", "IP", "SSN", "SECRET")
_ALL = frozenset(KINDS)
_NUMERIC = frozenset({"PHONE", "CARD", "IBAN", "IP", "SSN"})


def _byte_map(classes: dict[str, str]) -> bytes:
    """A bytes.translate table sending each byte to its class letter, everything else to b' '."""
    return bytes(next((ord(to) for chars, to in classes.items() if chr(b) in chars), 32) for b in range(256))


_UPPER, _LOWER, _DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz", "0123456789"
_TOKEN_MAP = _byte_map({_UPPER + _LOWER + _DIGITS + "_-": "w"})  # secrets are runs of these
_HEX_MAP = _byte_map({_DIGITS + "abcdefABCDEF:": "h"})  # IPv6 addresses are runs of these
_NUM_MAP = _byte_map({_DIGITS + "()": "0", "+": "+", ".": ".", "-_": "-", _UPPER: "A", _LOWER + "/": "a"})
_RUN, _HEX_RUN = b"w" * 16, b"h" * 15  # no prefixed secret is shorter; no uncompressed IPv6 either

# --- e-mail: found from each '@' outwards, so text without '@' costs one `in` ---
_LOCAL_REV = re.compile(r"[\w.%+-]{1,64}")  # matched on the reversed text before the '@'
_FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
_DOMAIN = re.compile(r"(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}(?![\w-])")

# --- IBAN: country, 2 check digits, BBAN in groups of four; the length is fixed per country ---
_IBAN_LENGTHS = {entry[:2]: int(entry[2:]) for entry in (
    "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DK18 DO28 EE20 EG29 ES24 "
    "FI18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22 IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 LB28 LC32 "
    "LI21 LT20 LU20 LV21 LY25 MC27 MD24 ME22 MK19 MR27 MT31 MU30 NL18 NO15 PK24 PL28 PS29 PT25 QA29 RO24 RS22 "
    "SA24 SC31 SE24 SI19 SK24 SM27 ST25 SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20").split()}  # fmt: skip
_IBAN = re.compile(r"[A-Z]{2}[0-9]{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?(?![A-Za-z0-9])")

# --- secrets ---
# "Bearer <token>" keeps the word; found from the token's runs of 16+ (the token may hold . ~ + / =)
_BEARER = re.compile(r"\b(?:[Bb]earer|BEARER)\s+([A-Za-z0-9._~+/-]*)\Z")  # searched just before a run
_B64 = re.compile(r"[A-Za-z0-9._~+/-]*[A-Za-z0-9_~+/-]=*")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
_PREFIXES = ("sk", "rk", "pk", "gh", "xox", "AKIA", "AIza", "eyJ")  # github_pat_ starts with gh
_PREFIXED = re.compile(
    r"sk-[A-Za-z0-9_-]{20,}|[spr]k_(?:live|test)_[A-Za-z0-9]{10,}|gh[oprsu]_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{30,}|xox[abprs]-[A-Za-z0-9-]{11,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{30,}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

# --- IPv6: hex-and-colon runs around a "::" or 15+ long, checked by `ipaddress` ---
_DOUBLE_COLON = re.compile(b"::")  # (a regex finds a rare literal faster than bytes.find)
_IP6 = re.compile(r"[0-9A-Fa-f:](?<![\w:.].)[0-9A-Fa-f:]{1,38}+(?:\.[0-9]{1,3}){0,3}(?![\w:]|\.[0-9])")

# --- numbers and IBANs: in the byte map (digits, "()" -> 0; letters -> a, A; other separators ->
# space) a phone, card or SSN starts as " 0" with 9+ digits (or "+0" with 8+) joined by single
# separators, and is not a date, a ZIP+4 code or 9-12 bare digits (a timestamp); an IPv4 is
# " 0.0.0.0"; an IBAN "AA00". The precise patterns run only there. (The regex engine finds the
# literal prefix "0" in C; what precedes it is checked behind.)
_NUM_HINT = re.compile(rb"0(?:(?<=AA0)0|(?<=[ +]0)(?!(?<= 0)(?:0{8,11}(?![0.-])|(?:000-00-00|0\.00\.0000)(?!0)"
                       rb"|0000-0000(?![0.-])))(?:(?:(?<= 0)[. -]?0|(?<=\+0))(?:[. -]?0){7}"
                       rb"|0{0,2}\.0{1,3}\.0{1,3}\.0)[0. -]*+)")
_IBAN_BEFORE = re.compile(r"[A-Z]{2}[0-9]{2}(?: [A-Z0-9]{4})* \Z")  # digits inside an invalid IBAN
_NUM = re.compile(r"""(?<![\w.+/-])(?:
    (?P<SSN>[0-9]{3}-[0-9]{2}-[0-9]{4})(?!\w|-[0-9])
  | (?P<IP>[0-9]{1,3}(?:\.[0-9]{1,3}){3})(?!\w|\.[0-9])
  | (?P<CARD>[0-9]{13,19}
      | [0-9]{4}(?P<s>[ -])[0-9]{4}(?P=s)[0-9]{4}(?P=s)[0-9]{1,4}(?:(?P=s)[0-9]{3})?
      | [0-9]{4}(?P<a>[ -])[0-9]{6}(?P=a)[0-9]{4,5})(?!\w)
  | (?P<PHONE>\+[1-9][0-9]{7,14}
      | \+[1-9][0-9]{0,2}(?:[ .-]?\([0-9]{1,4}\)[ .-]?[0-9]{1,8}|[ .-][0-9]{1,8})(?:[ .-][0-9]{1,8}){0,5}
      | (?:1[ .-])?(?:\([0-9]{3}\)[ ]?|[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}
      | 0[1-9][0-9]{0,3}(?P<n>[ .-])[0-9]{2,8}(?:(?P=n)[0-9]{2,4}){0,4})(?!\w|[.-][0-9])
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
    raw = hints = b""
    for needs, step in _STEPS:
        if needs.isdisjoint(kinds):
            continue
        if not raw:  # one byte per character, so offsets agree with text
            raw = text.encode("ascii", "replace")
            hints = b" " + raw.translate(_NUM_MAP)  # hints[k + 1] is the class of text[k]
        text, n = step(text, raw, hints, kinds)
        if n:
            total, raw = total + n, b""
    return text, total


def contains_pii(text: str, kinds: frozenset[str] | None = None) -> bool:
    """True if `redact` would replace anything (used by curation to re-check stored records)."""
    return redact(text, kinds)[1] > 0


def _splice(text: str, spans: list[tuple[int, int, str]]) -> str:
    if not spans:
        return text
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
        if start < at and not domain.group().lower().endswith(_FILE_SUFFIXES):  # icon@2x.png
            spans.append((start, domain.end(), "<EMAIL>"))
            floor = domain.end()
        at = text.find("@", max(floor, at + 1))
    return _splice(text, spans), len(spans)


def _iban_length(value: str) -> int:
    """How many characters at the start of an IBAN-shaped `value` are a valid IBAN (0: none)."""
    compact = value.replace(" ", "")
    length = _IBAN_LENGTHS.get(value[:2], len(compact))  # the registry fixes the length
    ends = [k + 1 for k, ch in enumerate(value) if ch != " "]  # where each character ends
    end = ends[length - 1] if len(ends) >= length else 0
    if length < 15 or not end or value[end : end + 1] not in ("", " ") or compact[2:4] in ("00", "01", "99"):
        return 0  # too short, cut inside a group, or check digits that mod-97 can never produce
    digits = "".join(str(int(c, 36)) for c in compact[4:length] + compact[:4])
    return end if int(digits) % 97 == 1 else 0


def _secrets(text: str, raw: bytes, hints: bytes, kinds: frozenset[str]) -> tuple[str, int]:
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
    return _splice(text, spans), len(spans)


def _secret_span(text: str, hints: bytes, i: int, j: int) -> tuple[int, int] | None:
    """The secret around text[i:j], a run of 16+ token characters, if there is one."""
    before = max(i - 64, 0)
    if "earer" in text[before:i].lower() and (bearer := _BEARER.search(text, before, i)):
        return bearer.start(1), _B64.match(text, i).end()  # "Bearer <SECRET>"
    if text.startswith("eyJ", i) and (jwt := _JWT.match(text, i)):
        return i, jwt.end()
    if (text.startswith(_PREFIXES, i) and _PREFIXED.fullmatch(text, i, j)) or _looks_random(text, hints, i, j):
        return i, j
    return None


def _looks_random(text: str, hints: bytes, i: int, j: int) -> bool:
    """A generic token of >= 32 chars: random-looking, mixing letters and digits (not a UUID)."""
    if j - i < 32 or j - i == 36 and _UUID.fullmatch(text, i, j):
        return False
    classes = hints[i + 1 : j + 1]  # lower a, upper A, digit 0
    switches = sum(map(classes.count, (b"a0", b"0a", b"A0", b"0A")))
    if switches >= 4:  # hex digests, base62 keys: letters and digits interleave
        if b"-" in classes and _UUID.search(text, i, j):  # (identifiers like max_len_v2 switch once or twice)
            edges = [i, *(k for m in _UUID.finditer(text, i, j) for k in m.span()), j]  # judge what is around
            return any(_looks_random(text, hints, a, b) for a, b in zip(edges[::2], edges[1::2]))
        return True
    # mostly-letter base62 keys: many case switches and no word-like lowercase run
    case_switches = classes.count(b"aA") + classes.count(b"Aa")
    return switches >= 1 and case_switches * 4 >= j - i and b"aaaaaa" not in classes


def _ipv6(text: str, raw: bytes, hints: bytes, kinds: frozenset[str]) -> tuple[str, int]:
    if b":" not in raw or (not _DOUBLE_COLON.search(raw) and raw.count(b":") < 7):
        return text, 0
    hexes, starts = raw.translate(_HEX_MAP), set()
    for haystack, needle in ((raw, b"::"), (hexes, _HEX_RUN)):  # runs holding "::" or long enough for 8
        i = haystack.find(needle)
        while i != -1:
            starts.add(hexes.rfind(b" ", 0, i) + 1)
            end = hexes.find(b" ", i)
            i = -1 if end < 0 else haystack.find(needle, end)
    spans = [(i, m.end(), "<IP>") for i in sorted(starts) if (m := _IP6.match(text, i)) and _ipv6_ok(m)]
    return _splice(text, spans), len(spans)


def _ipv6_ok(m: re.Match) -> bool:
    value = m.group()
    if "::" not in value:
        ok = value.count(":") >= 6  # 12:30:45 is a time
    elif value == "::1":  # but arr[::1] slices a list
        ok = not m.string[max(m.start() - 2, 0) : m.start()].rstrip("[")[-1:].isalnum()
    else:  # a[1::2], "::" and friends are code
        groups = [g for g in value.split(":") if g]
        ok = len(groups) >= 2 and max(map(len, groups)) >= 3
    try:
        return ok and bool(ipaddress.IPv6Address(value))
    except ValueError:
        return False


def _number_ok(kind: str, value: str) -> str:
    """The part of `value` that is a valid `kind` ('' if none)."""
    if kind == "PHONE":
        while value and not _phone_ok(value):  # "+1 555 123 4567 2 times": drop the trailing group
            value = value[: max(value.rfind(" "), value.rfind("-"), value.rfind("."), 0)]
        return value
    if kind == "SSN":
        area, group, serial = value.split("-")
        ok = area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"
    elif kind == "IP":
        ok = all(int(octet) <= 255 for octet in value.split("."))
    else:  # CARD: a major network's first digit, and Luhn
        digits = [int(d) for d in value if d.isdigit()]
        luhn = sum(digits[-1::-2]) + sum((0, 2, 4, 6, 8, 1, 3, 5, 7, 9)[d] for d in digits[-2::-2])
        ok = 2 <= digits[0] <= 6 and luhn % 10 == 0
    return value if ok else ""


def _phone_ok(value: str) -> bool:
    n = sum(c.isdigit() for c in value)  # E.164: at most 15 digits, +1 exactly 11
    if value[0] == "+":
        return n == 11 if value[1] == "1" else 8 <= n <= 15
    return value[0] != "0" or 9 <= n <= 12  # national 0... forms; US forms are fixed by the pattern


def _numbers(text: str, raw: bytes, hints: bytes, kinds: frozenset[str]) -> tuple[str, int]:
    hint = _NUM_HINT.search(hints) if b"0" in hints else None
    spans = []
    while hint:
        start, resume = hint.start() - 1, hint.end()  # text[start] is the hint's first "0"
        before = hints[start]  # the class of text[start - 1]
        if before == ord("A"):  # "AA00": an IBAN may start at start - 2
            iban = None if start > 2 and text[start - 3].isalnum() else _IBAN.match(text, start - 2)
            length = _iban_length(iban.group()) if iban and "IBAN" in kinds else 0
            if length:  # (the match may have run into the next word)
                spans.append((start - 2, start - 2 + length, "<IBAN>"))
                resume = start - 1 + length
        else:  # from the "+" if there is one; resume is one character more, for the lookaheads
            for m in _NUM.finditer(text, start - (before == ord("+")), resume):
                kind = m.lastgroup
                value = _number_ok(kind, m.group()) if kind in kinds else ""
                if value and not _IBAN_BEFORE.search(text, max(m.start() - 40, 0), m.start()):
                    spans.append((m.start(), m.start() + len(value), f"<{kind}>"))
        hint = _NUM_HINT.search(hints, resume)
    return _splice(text, spans), len(spans)


# After e-mail, in this order: a token's digits are gone before the number patterns look.
_STEPS = ((frozenset({"SECRET"}), _secrets), (frozenset({"IP"}), _ipv6), (_NUMERIC, _numbers))
