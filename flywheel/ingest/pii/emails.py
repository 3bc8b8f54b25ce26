"""E-mail addresses: found from each '@' outwards, and written out to dodge a filter.

A plain address costs one `in` on a text without '@'. One written out (``john dot doe at example
dot com``, ``john [at] example [dot] com``) counts when the "at" is bracketed or spaced, or a "dot"
is spelled out; a bare "look at docs.python.org" does not, nor does "ann.lee at example.com" (it
reads exactly like it).
"""

from __future__ import annotations

import re

from flywheel.ingest.pii.scan import splice

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


def redact_spelled_emails(text: str) -> tuple[str, int]:
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
    return splice(text, spans), len(spans)


def redact_emails(text: str) -> tuple[str, int]:
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
    return splice(text, spans), len(spans)
