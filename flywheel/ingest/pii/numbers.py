"""The PII that is a number or an address: phones, cards, IBANs, SSNs, IPv4 and IPv6.

Each is found in the character-class bytes of `flywheel.ingest.pii.scan` and decided by its
check: Luhn and a major network's first digit for a card, mod-97 and the country's length for an
IBAN, the SSN rules, octets <= 255, E.164 lengths for a phone, `ipaddress` for IPv6. Separators
are lenient where values are checksummed (cards with dots or mixed separators, IBANs in lower case
or with dashes, SSNs with spaces); bare digit runs without separators or a leading "+" (order
ids, timestamps) are never phone numbers.
"""

from __future__ import annotations

import ipaddress
import re

from flywheel.ingest.pii.scan import DIGITS, LETTER_CLASSES, UUID, byte_map, splice

_HEX_MAP = byte_map({DIGITS + "abcdefABCDEF:": "h"})  # IPv6 addresses are runs of these
_HEX_RUN = b"h" * 15  # no uncompressed IPv6 is shorter

# --- IBAN: country, 2 check digits, BBAN in groups of four; the length is fixed per country ---
_IBAN_LENGTHS = {entry[:2]: int(entry[2:]) for entry in (
    "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DK18 DO28 EE20 EG29 ES24 "
    "FI18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22 IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 LB28 LC32 "
    "LI21 LT20 LU20 LV21 LY25 MC27 MD24 ME22 MK19 MR27 MT31 MU30 NL18 NO15 PK24 PL28 PS29 PT25 QA29 RO24 RS22 "
    "SA24 SC31 SE24 SI19 SK24 SM27 ST25 SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20").split()}  # fmt: skip
IBAN = re.compile(r"[A-Z]{2}[0-9]{2}(?:[ -]?[A-Z0-9]{4}){2,7}(?:[ -]?[A-Z0-9]{1,4})?(?![A-Za-z0-9])")  # upper-cased

# --- IPv6: hex-and-colon runs around a "::" or 15+ long, checked by `ipaddress` ---
_DOUBLE_COLON = re.compile(b"::")  # (a regex finds a rare literal faster than bytes.find)
_IP6 = re.compile(r"[0-9A-Fa-f:](?<![\w:.].)[0-9A-Fa-f:]{1,38}+(?:\.[0-9]{1,3}){0,3}(?![\w:]|\.[0-9])")

# --- numbers and IBANs: in the byte map (digits, "()" -> 0; letters -> a, A; other separators ->
# space) a phone, card or SSN starts as " 0" with 9+ digits (or "+0" with 8+) joined by single
# separators, and is not a date, a ZIP+4 code or 9-12 bare digits (a timestamp); an IPv4 is
# " 0.0.0.0"; an IBAN "AA00". The precise patterns run only there. (The regex engine finds the
# literal prefix "0" in C; what precedes it is checked behind.)
_NUM_HINT = re.compile(rb"0(?:(?<=AA0|aa0)0|(?<=[ +]0)(?!(?<= 0)(?:0{8,11}(?![0.-])|(?:000-00-00|0\.00\.0000)(?!0)"
                       rb"|0000-0000(?![0.-]| 0)))(?:(?:(?<= 0)[. -]?0|(?<=\+0))(?:[. -]?0){7}"
                       rb"|0{0,2}\.0{1,3}\.0{1,3}\.0)[0. -]*+)")
_IBAN_BEFORE = re.compile(r"[A-Z]{2}[0-9]{2}(?: [A-Z0-9]{4})* \Z")  # digits inside an invalid IBAN
_NUM = re.compile(r"""(?<![\w.+/-])(?:
    (?P<SSN>[0-9]{3}(?P<z>[ .-])[0-9]{2}(?P=z)[0-9]{4})(?!\w|-[0-9])
  | (?P<IP>[0-9]{1,3}(?:\.[0-9]{1,3}){3})(?!\w|\.[0-9])
  | (?P<CARD>[0-9]{13,19}
      | [0-9]{4}[ .-][0-9]{4}[ .-][0-9]{4}[ .-][0-9]{1,4}(?:[ .-][0-9]{3})?
      | [0-9]{4}[ .-][0-9]{6}[ .-][0-9]{4,5})(?!\w)
  | (?P<PHONE>\+[1-9][0-9]{7,14}
      | \+[1-9][0-9]{0,2}(?:[ .-]?\([0-9]{1,4}\)[ .-]?[0-9]{1,8}|[ .-][0-9]{1,8})(?:[ .-][0-9]{1,8}){0,5}
      | (?:1[ .-])?(?:\([0-9]{3}\)[ ]?|[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}
      | 0[1-9][0-9]{0,3}(?P<n>[ .-])[0-9]{2,8}(?:(?P=n)[0-9]{2,4}){0,4})(?!\w|[.-][0-9])
)""", re.X)


def iban_length(value: str, loose: bool = False) -> int:
    """How many characters at the start of an IBAN-shaped `value` (upper-cased) are a valid IBAN (0: none).
    `loose` (it was written in lower case or with dashes): the country must be a known one too."""
    compact = value.replace(" ", "").replace("-", "")
    if loose and value[:2] not in _IBAN_LENGTHS:
        return 0
    length = _IBAN_LENGTHS.get(value[:2], len(compact))  # the registry fixes the length
    ends = [k + 1 for k, ch in enumerate(value) if ch not in " -"]  # where each character ends
    end = ends[length - 1] if len(ends) >= length else 0
    if length < 15 or not end or value[end : end + 1] not in ("", " ", "-") or compact[2:4] in ("00", "01", "99"):
        return 0  # too short, cut inside a group, or check digits that mod-97 can never produce
    digits = "".join(str(int(c, 36)) for c in compact[4:length] + compact[:4])
    return end if int(digits) % 97 == 1 else 0


def redact_ipv6(text: str, raw: bytes, hints: bytes, kinds: frozenset[str]) -> tuple[str, int]:
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
    return splice(text, spans), len(spans)


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


def number_ok(kind: str, value: str) -> str:
    """The part of `value` that is a valid `kind` ('' if none)."""
    if kind == "PHONE":
        while value and not _phone_ok(value):  # "+1 555 123 4567 2 times": drop the trailing group
            value = value[: max(value.rfind(" "), value.rfind("-"), value.rfind("."), 0)]
        return value
    if kind == "SSN":
        area, group, serial = value[:3], value[4:6], value[7:]
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


def redact_numbers(text: str, raw: bytes, hints: bytes, kinds: frozenset[str]) -> tuple[str, int]:
    hint = _NUM_HINT.search(hints) if b"0" in hints else None
    spans = []
    while hint:
        start, resume = hint.start() - 1, hint.end()  # text[start] is the hint's first "0"
        before = hints[start]  # the class of text[start - 1]
        if before in LETTER_CLASSES:  # "AA00" or "aa00": an IBAN may start at start - 2
            lower_case_elsewhere = before == ord("a") and raw[start - 2 : start].upper().decode() not in _IBAN_LENGTHS
            if lower_case_elsewhere or (start > 2 and text[start - 3].isalnum()):
                iban = None  # ("sha256", "py311": in lower case, only a known country starts one)
            else:
                iban = IBAN.match(raw[start - 2 : start + 60].decode().upper())
            loose = iban and (before == ord("a") or "-" in iban.group())  # lower case or dashes: stricter
            if loose and UUID.search(text, max(start - 38, 0), start + 40):
                iban = None  # (hex groups of a UUID can pass mod-97 by chance)
            length = iban_length(iban.group(), loose) if iban and "IBAN" in kinds else 0
            if length:  # (the match may have run into the next word)
                spans.append((start - 2, start - 2 + length, "<IBAN>"))
                resume = start - 1 + length
        else:  # from the "+" if there is one; resume is one character more, for the lookaheads
            for m in _NUM.finditer(text, start - (before == ord("+")), resume):
                kind = m.lastgroup
                value = number_ok(kind, m.group()) if kind in kinds else ""
                if value and not _IBAN_BEFORE.search(text, max(m.start() - 40, 0), m.start()):
                    spans.append((m.start(), m.start() + len(value), f"<{kind}>"))
        hint = _NUM_HINT.search(hints, resume)
    return splice(text, spans), len(spans)
