"""PII redaction, applied to LLM traffic before anything is stored.

Flywheel keeps production prompts and answers and trains models on them. A model trained on raw
traffic can memorise and repeat a customer's e-mail, card number or API key, and a table of raw
traffic is a liability of its own. So each interaction is redacted on the way in: every personal
or secret value becomes a typed placeholder (``<EMAIL>``, ``<CARD>`` ...) that keeps the
sentence's shape, so a student still learns that an address goes there, while the value never
reaches disk. Curation re-checks stored records with ``contains_pii``.

People and clients hide values from filters, on purpose or not, so text is normalized before
matching: NFKC (full-width ``４１１１`` is ``4111``), zero-width characters removed, Unicode dashes
folded to ``-``. A text that changes under that and holds PII is stored in its normalized form
(with the placeholders); one that holds none is stored exactly as sent. Inside URLs and other
percent-encoded tokens the decoded form is checked (``john%40example.com``), credentials in a URL
(``https://user:pw@host``) are a secret, and an IPv4 host is an address even with a port.
E-mails written out to dodge filters (``john dot doe at example dot com``, ``john [at] example
[dot] com``) count when the "at" is bracketed, or spelled out with a spelled-out "dot"; a bare
"look at docs.python.org" does not. Separators are lenient where values are checksummed: cards
with dots or mixed separators, IBANs in lower case or with dashes, SSNs with spaces.

Identifiers the loop groups by (user and session ids) cannot lose their value to a placeholder:
`pseudonym` turns one that holds PII into a keyed hash (HMAC-SHA256 with the installation's
secret, `installation_secret`), the same for the same input, so grouping still works while the
value cannot be looked up from the stored hash without the secret.

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
redacted; a dotted quad with every part <= 255 is an IP even when it was meant as a version; an
e-mail with a plain "at" and real dots ("ann.lee at example.com") is kept, as it reads exactly like
"look at docs.python.org"; a value of a text that had to be normalized is stored normalized.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import unicodedata
from functools import cache
from pathlib import Path
from urllib.parse import unquote

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
_LETTER_CLASSES = (ord("A"), ord("a"))  # in _NUM_MAP

# --- normalization: what hides a value from the patterns but not from a reader ---
_FOLD = {**dict.fromkeys("\u00ad\u180e\u200b\u200c\u200d\u2060\ufeff", ""),  # zero-width, soft hyphen
         **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63", "-")}  # dashes (NFKC did U+FF0D)

# --- URLs and percent-encoded tokens ---
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_TOKEN_END = re.compile(r"[\s\"'<>]")
_URL_CREDENTIALS = re.compile(r"[^\s/?#@:\"'<>]+:[^\s/?#@\"'<>]*(?=@)")  # user:password@, after "://"
_URL_IPV4 = re.compile(r"(?:[^\s/?#@\"'<>]*@)?([0-9]{1,3}(?:\.[0-9]{1,3}){3})(?![\w.])")  # the host only

# --- e-mail written out: "john dot doe at example dot com", "john [at] example (dot) com" ---
_SPELLED_DOT = r"(?:\s*[\[({<]\s*dot\s*[\])}>]\s*|\s+dot\s+)"
_AT_TOKEN = re.compile(r"\s*[\[({<]\s*at\s*[\])}>]\s*|\s+at\s+|\s*@\s*", re.I)
_SPELLED_DOMAIN = re.compile(rf"(?:[a-z0-9-]{{1,63}}+(?:\.|{_SPELLED_DOT})){{1,8}}[a-z]{{2,24}}(?![\w-])", re.I)
_LOCAL_REVERSED = re.compile(  # the local part, matched backwards on the reversed text before the "at"
    r"[a-z0-9_%+-]{1,64}+(?:(?:\.|\s*[\])}>]\s*tod\s*[\[({<]\s*|\s+tod\s+)[a-z0-9_%+-]{1,64}+){0,6}(?![\w.%+-])", re.I)
_SPELLED_DOT_RE = re.compile(_SPELLED_DOT, re.I)
# Which texts need that search, and where: "dot", a bracketed "at" (only where a closing bracket
# is), a spaced "@"; in the lower-cased bytes (single characters first: C finds them fastest). The
# search then runs only around each possible "at".
_DOMAIN_AHEAD = rf"(?=\s*[\])}}>]?\s*[a-z0-9-]{{1,63}}+(?:\.|{_SPELLED_DOT})[a-z0-9-])".encode()
_AT_WORD = re.compile(rb"at(?<![a-z0-9]at)" + _DOMAIN_AHEAD)  # (a literal first: found at C speed)
_AT_SIGN = re.compile(rb"@" + _DOMAIN_AHEAD)
_AT_BRACKETED = re.compile(rb"at(?<![a-z0-9]at)\s*[\])}>]")
_SPELLED_BEFORE = 460  # the longest local part written out: 7 labels of 64 and their dots

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
_IBAN = re.compile(r"[A-Z]{2}[0-9]{2}(?:[ -]?[A-Z0-9]{4}){2,7}(?:[ -]?[A-Z0-9]{1,4})?(?![A-Za-z0-9])")  # upper-cased

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


def redact(text: str, kinds: frozenset[str] | None = None) -> tuple[str, int]:
    """Return text with each PII value replaced by a typed placeholder like <EMAIL>, and how many were replaced. kinds=None means all."""
    if kinds is None:
        kinds = _ALL
    elif not _ALL.issuperset(kinds):
        raise ValueError(f"unknown PII kinds {sorted(set(kinds) - _ALL)}; known: {KINDS}")
    if not text.isascii():  # (ASCII text is its own normal form)
        folded = normalize(text)
        if folded != text:
            out, n = _redact(folded, kinds)
            return (out, n) if n else (text, 0)
    return _redact(text, kinds)


def normalize(text: str) -> str:
    """The form the patterns see: NFKC, zero-width characters removed, Unicode dashes as '-'."""
    text = unicodedata.normalize("NFKC", text)
    for char, replacement in _FOLD.items():
        if char in text:  # (rare: a character search is far cheaper than str.translate)
            text = text.replace(char, replacement)
    return text


def _redact(text: str, kinds: frozenset[str]) -> tuple[str, int]:
    total = 0
    if "%" in text or ("/" in text and "://" in text):
        text, total = _urls(text, kinds)
    if "EMAIL" in kinds:
        text, n = _spelled_emails(text)
        total += n
        if "@" in text:
            text, n = _emails(text)
            total += n
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


def _urls(text: str, kinds: frozenset[str]) -> tuple[str, int]:
    """Percent-encoded tokens checked in their decoded form; a URL's credentials and IPv4 host."""
    spans, total, end = [], 0, 0
    for m in _PERCENT.finditer(text) if "%" in text else ():
        if m.start() < end:  # (in the token just checked)
            continue
        start = max(text.rfind(c, 0, m.start()) for c in " \t\n\"'<>") + 1
        stop = _TOKEN_END.search(text, m.end())
        end = stop.start() if stop else len(text)
        decoded, n = redact(unquote(text[start:end]), kinds)  # (a token encoded twice decodes again)
        if n:  # the decoded form, with its placeholders
            spans.append((start, end, decoded))
            total += n
    text = _splice(text, spans)
    spans, i = [], text.find("://")
    while i != -1:
        i += 3
        if "SECRET" in kinds and (m := _URL_CREDENTIALS.match(text, i)):
            spans.append((m.start(), m.end(), "<SECRET>"))
        if "IP" in kinds and (m := _URL_IPV4.match(text, i)) and _number_ok("IP", m[1]):
            spans.append((*m.span(1), "<IP>"))
        i = text.find("://", i)
    return _splice(text, spans), total + len(spans)


def _spelled_ats(text: str) -> list[int]:
    """Where the "at" of an e-mail written out may be: a word "at" (bracketed or not) or an '@', with a
    domain after it; looked for only in a text with a "dot", a bracketed "at" or a spaced '@'."""
    low = text.encode("ascii", "replace").lower()
    spaced = "@" in text and ("@ " in text or " @" in text)
    bracket = ")" in text or "]" in text or "}" in text or ">" in text
    if not (b"dot" in low or spaced or (bracket and _AT_BRACKETED.search(low))):
        return []
    ats = [m.start() for m in _AT_WORD.finditer(low)]
    if "@" in text:
        ats = sorted(ats + [m.start() for m in _AT_SIGN.finditer(low)])
    return ats


def _back_over_spaces(text: str, i: int, floor: int) -> int:
    while i > floor and text[i - 1] in " \t\n":
        i -= 1
    return i


def _spelled_emails(text: str) -> tuple[str, int]:
    """E-mails written to dodge a filter: the "at" bracketed or spaced, or any "dot" spelled out."""
    spans, done = [], 0
    for i in _spelled_ats(text):
        j = _back_over_spaces(text, i, done)  # the "at" token starts before its opening bracket and spaces
        if j > done and text[j - 1] in "[({<":
            j = _back_over_spaces(text, j - 1, done)
        token = _AT_TOKEN.match(text, j)
        domain = token and token.end() > i and _SPELLED_DOMAIN.match(text, token.end())
        local = domain and _LOCAL_REVERSED.match(text[max(done, j - _SPELLED_BEFORE) : j][::-1])
        if not local:
            continue
        at, start = token.group().strip(), j - local.end()
        if at[0] in "[({<" or (at == "@" != token.group()) or _SPELLED_DOT_RE.search(text, start, domain.end()):
            spans.append((start, domain.end(), "<EMAIL>"))  # bracketed, spaced, or a "dot" spelled out
            done = domain.end()
    return _splice(text, spans), len(spans)


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


def _iban_length(value: str, loose: bool = False) -> int:
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
    iban = text[i : i + 2].isalpha() and text[i + 2 : i + 4].isdigit() and _IBAN.match(text[i:j].upper())
    return bool(iban) and iban.end() == j - i and _iban_length(iban.group(), loose=True) == j - i


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


def _numbers(text: str, raw: bytes, hints: bytes, kinds: frozenset[str]) -> tuple[str, int]:
    hint = _NUM_HINT.search(hints) if b"0" in hints else None
    spans = []
    while hint:
        start, resume = hint.start() - 1, hint.end()  # text[start] is the hint's first "0"
        before = hints[start]  # the class of text[start - 1]
        if before in _LETTER_CLASSES:  # "AA00" or "aa00": an IBAN may start at start - 2
            lower_case_elsewhere = before == ord("a") and raw[start - 2 : start].upper().decode() not in _IBAN_LENGTHS
            if lower_case_elsewhere or (start > 2 and text[start - 3].isalnum()):
                iban = None  # ("sha256", "py311": in lower case, only a known country starts one)
            else:
                iban = _IBAN.match(raw[start - 2 : start + 60].decode().upper())
            loose = iban and (before == ord("a") or "-" in iban.group())  # lower case or dashes: stricter
            if loose and _UUID.search(text, max(start - 38, 0), start + 40):
                iban = None  # (hex groups of a UUID can pass mod-97 by chance)
            length = _iban_length(iban.group(), loose) if iban and "IBAN" in kinds else 0
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


# --- identifiers the loop groups by: a keyed hash when they hold PII ---
PSEUDONYM_PREFIX = "pii:"  # what a stored identifier that was hashed starts with
SECRET_FILE = "secret"


def pseudonym(value: str, secret: bytes) -> str:
    """`value` itself when it holds no PII, else the prefix and HMAC-SHA256(secret, value) (128 bits, hex).
    (A random-looking id of 32+ characters counts as a possible secret: hashed too, still groupable.)"""
    if not contains_pii(value):
        return value
    return PSEUDONYM_PREFIX + hmac.new(secret, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:32]


@cache
def installation_secret(home: Path) -> bytes:
    """This installation's key for `pseudonym`: `<home>/secret`, made on first use (mode 0600).

    It is written to a temporary file and linked into place, so a second process that starts at
    the same moment reads the same secret, never a partial one. It belongs with the data: with a
    new secret the same id hashes differently, and grouping across the change is lost."""
    path = Path(home) / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process made it first: use theirs
            pass
        finally:
            tmp.unlink()
    return bytes.fromhex(path.read_text().strip())
