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

Here: the policy (`redact`: normalization, URLs, the detectors in order) and the pseudonyms. The
detectors each hold one family of kinds: `emails`, `credentials` (SECRET), `numbers` (phones,
cards, IBANs, SSNs, IPs); `scan` is how they stay cheap on the ingestion hot path.

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
import os
import re
import secrets
import unicodedata
from functools import cache
from pathlib import Path
from urllib.parse import unquote

from flywheel.ingest.pii.credentials import redact_secrets
from flywheel.ingest.pii.emails import redact_emails, redact_spelled_emails
from flywheel.ingest.pii.numbers import number_ok, redact_ipv6, redact_numbers
from flywheel.ingest.pii.scan import NUM_MAP, splice

KINDS: tuple[str, ...] = ("EMAIL", "PHONE", "CARD", "IBAN", "IP", "SSN", "SECRET")
_ALL = frozenset(KINDS)
_NUMERIC = frozenset({"PHONE", "CARD", "IBAN", "IP", "SSN"})

# --- normalization: what hides a value from the patterns but not from a reader ---
_FOLD = {**dict.fromkeys("\u00ad\u180e\u200b\u200c\u200d\u2060\ufeff", ""),  # zero-width, soft hyphen
         **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63", "-")}  # dashes (NFKC did U+FF0D)

# --- URLs and percent-encoded tokens ---
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_TOKEN_END = re.compile(r"[\s\"'<>]")
_URL_CREDENTIALS = re.compile(r"[^\s/?#@:\"'<>]+:[^\s/?#@\"'<>]*(?=@)")  # user:password@, after "://"
_URL_IPV4 = re.compile(r"(?:[^\s/?#@\"'<>]*@)?([0-9]{1,3}(?:\.[0-9]{1,3}){3})(?![\w.])")  # the host only


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
        text, n = redact_spelled_emails(text)
        total += n
        if "@" in text:
            text, n = redact_emails(text)
            total += n
    raw = hints = b""
    for needs, step in _STEPS:
        if needs.isdisjoint(kinds):
            continue
        if not raw:  # one byte per character, so offsets agree with text
            raw = text.encode("ascii", "replace")
            hints = b" " + raw.translate(NUM_MAP)  # hints[k + 1] is the class of text[k]
        text, n = step(text, raw, hints, kinds)
        if n:
            total, raw = total + n, b""
    return text, total


def contains_pii(text: str, kinds: frozenset[str] | None = None) -> bool:
    """True if `redact` would replace anything (used by curation to re-check stored records)."""
    return redact(text, kinds)[1] > 0


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
    text = splice(text, spans)
    spans, i = [], text.find("://")
    while i != -1:
        i += 3
        if "SECRET" in kinds and (m := _URL_CREDENTIALS.match(text, i)):
            spans.append((m.start(), m.end(), "<SECRET>"))
        if "IP" in kinds and (m := _URL_IPV4.match(text, i)) and number_ok("IP", m[1]):
            spans.append((*m.span(1), "<IP>"))
        i = text.find("://", i)
    return splice(text, spans), total + len(spans)


# After e-mail, in this order: a token's digits are gone before the number patterns look.
_STEPS = ((frozenset({"SECRET"}), redact_secrets), (frozenset({"IP"}), redact_ipv6), (_NUMERIC, redact_numbers))


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
