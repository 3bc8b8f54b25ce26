"""Deterministic corpora for PII redaction: planted values in support-chat text, and clean text.

Shared by tests/test_pii.py (recall and false-positive thresholds) and bench/pii.py (figures).
`planted_corpus` returns (sentence, kind, value) triples: the value must vanish and `<KIND>` appear.
`clean_corpus` returns sentences full of things that look numeric or technical but are not PII.
"""

from __future__ import annotations

import base64
import json
import random
import string
import uuid

B62 = string.ascii_letters + string.digits
FIRST = "anna ben carla dmitri elif farah george hana ivan julia kofi lena marco nadia oscar priya".split()
LAST = "smith mueller garcia nowak rossi dubois kim okafor jensen silva tanaka novak ahmed brown".split()
DOMAINS = ["example.com", "gmail.com", "acme-corp.io", "mail.company.co.uk", "uni-berlin.de", "shop.example.org"]

# fmt: off
PLANT = [
    "Hi, you can reach me at {v} if anything changes with order #48213.",
    "Please update my details to {v} — I was charged $49.99 twice on 2024-05-01.",
    "Customer wrote: \"{v}\" in the notes field at 12:30:45 yesterday.",
    "Can you confirm ({v}) before Friday? Ticket 88213, priority 2.",
    "{v} was used for the refund of €1,299.00 on 03/05/2024.",
    "My details: {v}; app version 3.11.7 on Android 14.",
    "log line: user={v} status=200 latency=131ms region=eu-west-1",
    '{{"customer": "{v}", "items": 3, "total": 129.5}}',
    "Thanks!\nSent from my phone\n{v}\n",
    "I tried again at 9:05 am with {v}, still error 502.",
]
CLEAN = [
    "Your order #{o} ships on {d} and should arrive within {n} business days.",
    "The total comes to ${p} including {pct}% VAT; the coupon SAVE{n}{n} takes off ${p2}.",
    "We released version {ver} on {d} at {t}; please upgrade from {ver2}.",
    "Ticket {o} was escalated at {t} and closed at {t2} on {d}.",
    "Run `pip install flywheel=={ver}` and then `python -m flywheel.cli --port {port}`.",
    "See https://docs.example.com/v{n}/guides/setup?page={n}&lang=en#section-{n} for details.",
    "The request id is {uuid}; include it when you contact support.",
    "Commit {sha} fixed the crash in `parse_config()` on line {n}{n}.",
    "In Python, `arr[::{n}]` and `arr[1::2]` take every other element; std::vector works like a list.",
    "Meeting moved to {d2} {t} (CET), dial-in code {n}{n}{n}.",
    "The invoice INV-{year}-{o} covers {n} seats at €{p} each, billed {d}.",
    "Between {year} and {year2} the user base grew from {big} to {big2} accounts.",
    "Set max_position_embeddings_v2_config to {n}{n}{n}{n} and batch_size to {n}{n}.",
    "Screen resolution 1920x1080 at {n}{n} Hz, ratio 16:9, brightness {pct}%.",
    "Error 0x80070005 occurred {n} times between {t} and {t2}, see the log at /var/log/app/{n}.log.",
    "The parcel weighs {p} kg and measures {n}{n} x {n}{n} x {n} cm; tracking 1Z{n}{n}{n}AA{n}{n}{n}{n}{n}.",
    "Our office is at {n}{n} Market Street, Suite {n}{n}{n}, San Francisco, CA 94105.",
    "Interest of {pct}% on a balance of ${big}.{n}{n} gives ${p} per month.",
    "Build {o}.{n} passed {n}{n}{n} of {n}{n}{n} tests in {p} s on Chrome 124.0.6367.{n}{n}.",
    "Timestamp {ts} corresponds to {d}T{t}Z in ISO 8601.",
    "Your ZIP code 90210-{n}{n}{n}{n} is covered; ISBN 978-3-16-148410-0 is in stock.",
    "The score was {n}-{n} after {n}{n} minutes; temperature dropped to -{n}.{n}°C.",
    "Use the MAC filter 00:1A:2B:3C:4D:5E and the model llama-3-8b-instruct-q4_k_m-gguf-v2.",
    "Decorate the handler with @dataclass and ping @{first} in the thread about build {o}.",
    "Amazon order 112-{big7}-{big7} was refunded; your account number ends in {n}{n}{n}{n}.",
    "The ratio is {n}:{n}, the window is 10:00-11:30, and the timer shows 01:{n}{n}:{n}{n}.",
    "Windows build 10.0.19045.{o} and macOS {n}{n}.{n}.{n} are both supported.",
    "The bearer of this voucher gets {pct}% off; the bearer instrument expired in {year}.",
    "Call the function getUserAccountBalanceForRegion with region={n} and retry after {n}s.",
    "Coordinates {lat}, {lon} are near the warehouse; drive {n}{n} km north.",
    # look-alikes of the evasions: words "at" and "dot", URLs with ports and encoding, dotted and dashed ids
    "Look at docs.python.org or at {first}.example.com for the dot product of {n} vectors.",
    "We met at noon dot {n} on the dot; see you at the cafe (at) {t} on {d}.",
    "Open http://localhost:{port}/admin or https://api.example.com:{port}/v{n}/items?q=red%20shoes&page={n}.",
    "SKU AB{n}{n}-CD{n}{n}-EF{n}{n} and part {o}.{n}{n}{n}{n}.{n}{n}{n}{n} ship from bay {n}{n}-{n}{n}{n}{n}.",
    "Release {year}.{n}{n}.{n}{n}.{o} replaced build {year}-{n}{n}{n}{n} 20{n}{n} in the changelog.",
    "Order {big7}-{o} {n}{n} was placed at {d}T{t}:{n}{n}.{o}Z in the EU-{n}{n} region.",
    "Scan {n}{n}{n} items? No, the count is {o} at {pct}% of the de{n}{n} target (section {n}.{n}{n}.{n}{n}{n}{n}).",
]
# fmt: on


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # these will be doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def _group(s: str, sizes: tuple[int, ...], sep: str) -> str:
    out, i = [], 0
    for n in sizes:
        out.append(s[i : i + n])
        i += n
    out.append(s[i:])
    return sep.join(part for part in out if part)


def card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("4", 13), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15),
                                 ("6011", 16), ("65", 16), ("4", 19)])  # fmt: skip
    digits = _luhn_complete(prefix, length, rng)
    style = rng.randrange(3)
    if style == 0 or length == 13:
        return digits
    sep = " " if style == 1 else "-"
    return _group(digits, (4, 6, 5) if length == 15 else (4, 4, 4, 4, 3), sep)


# country -> BBAN layout, pieces of <alphabet><length>: a = letters, n = digits, c = either
IBAN_SPECS = {"DE": "n18", "GB": "a4 n14", "FR": "n10 c11 n2", "NL": "a4 n10", "ES": "n20", "IT": "a1 n10 c12",
              "BE": "n12", "CH": "n5 c12", "AT": "n16", "PL": "n24"}  # fmt: skip
POOLS = {"a": string.ascii_uppercase, "n": string.digits, "c": string.ascii_uppercase + string.digits}


def iban(rng: random.Random, valid: bool = True) -> str:
    cc = rng.choice(sorted(IBAN_SPECS))
    bban = []
    for piece in IBAN_SPECS[cc].split():
        bban.append("".join(rng.choice(POOLS[piece[0]]) for _ in range(int(piece[1:]))))
    bban = "".join(bban)
    check = 98 - int("".join(str(int(c, 36)) for c in bban + cc + "00")) % 97
    if not valid:
        check = check % 97 + 1 if check < 97 else 2  # any other check digits fail mod-97
    value = f"{cc}{check:02d}{bban}"
    return value if rng.random() < 0.4 else _group(value, (4,) * 9, " ")


def phone(rng: random.Random) -> str:
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    area, exch = str(rng.randint(201, 989)), str(rng.randint(200, 999))
    forms = [
        f"({area}) {exch}-{d(4)}", f"{area}-{exch}-{d(4)}", f"{area}.{exch}.{d(4)}", f"{area} {exch} {d(4)}",
        f"+1 {area} {exch} {d(4)}", f"+1-{area}-{exch}-{d(4)}", f"+1 ({area}) {exch}-{d(4)}", f"1-800-{exch}-{d(4)}",
        f"+1{area}{exch}{d(4)}", f"+44 20 {d(4)} {d(4)}", f"+44 7{d(3)} {d(6)}", f"020 {d(4)} {d(4)}",
        f"+44 (0)20 {d(4)} {d(4)}", f"+49 30 {d(7)}", f"+49 151 {d(8)}", f"030 {d(7)}", f"+49151{d(8)}",
        f"0151 {d(8)}", f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}", f"06 {d(2)} {d(2)} {d(2)} {d(2)}",
        f"+61 2 {d(4)} {d(4)}", f"+91 9{d(4)} {d(5)}", f"+81 3-{d(4)}-{d(4)}", f"+34 6{d(2)} {d(3)} {d(3)}",
    ]  # fmt: skip
    return rng.choice(forms)


def ip(rng: random.Random) -> str:
    h = lambda: f"{rng.randrange(0x100, 0x10000):x}"  # noqa: E731
    forms = [
        lambda: ".".join(str(rng.randint(1, 255)) for _ in range(4)),
        lambda: f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        lambda: f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        lambda: ":".join(f"{rng.randrange(0x10000):04x}" for _ in range(8)),
        lambda: f"2001:db8::{h()}:{h()}",
        lambda: f"fe80::{h()}:{h()}:{h()}:{h()}".upper(),
        lambda: "::1",
        lambda: f"2001:db8:{h()}::{rng.randint(1, 9)}",
        lambda: f"::ffff:192.0.2.{rng.randint(1, 254)}",
    ]
    return rng.choice(forms)()


def ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def email(rng: random.Random) -> str:
    f, l, dom = rng.choice(FIRST), rng.choice(LAST), rng.choice(DOMAINS)
    return rng.choice([f"{f}.{l}@{dom}", f"{f}{rng.randint(1, 99)}@{dom}", f"{f}_{l}+support@{dom}",
                       f"{f.title()}.{l.title()}@{dom.upper()}", f"{f[0]}{l}@{dom}"])  # fmt: skip


def _b64url(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def secret(rng: random.Random) -> str:
    s = lambda n, pool=B62: "".join(rng.choice(pool) for _ in range(n))  # noqa: E731
    jwt = lambda: (f"{_b64url({'alg': 'HS256', 'typ': 'JWT'})}.{_b64url({'sub': s(8), 'iat': rng.randint(1, 2**31)})}"
                   f".{s(43, B62 + '-_')}")  # fmt: skip
    forms = [
        lambda: f"sk-{s(48)}", lambda: f"sk-proj-{s(64, B62 + '-_')}", lambda: f"sk_live_{s(24)}",
        lambda: f"sk_test_{s(24)}", lambda: f"pk_live_{s(24)}", lambda: f"ghp_{s(36)}", lambda: f"gho_{s(36)}",
        lambda: f"ghs_{s(36)}", lambda: f"github_pat_{s(22)}_{s(59)}",
        lambda: f"xoxb-{s(12, string.digits)}-{s(13, string.digits)}-{s(24)}",
        lambda: f"xoxp-{s(12, string.digits)}-{s(24)}",
        lambda: f"AKIA{s(16, string.ascii_uppercase + string.digits)}", lambda: f"AIza{s(35, B62 + '-_')}",
        jwt, lambda: f"Bearer {s(40)}", lambda: f"Bearer {jwt()}", lambda: s(rng.randint(32, 64)),
        lambda: s(40, "0123456789abcdef"), lambda: s(43, B62 + "-_"),
        lambda: s(32, string.ascii_lowercase + string.digits),
    ]  # fmt: skip
    return rng.choice(forms)()


GENERATORS = {"EMAIL": email, "PHONE": phone, "CARD": card, "IBAN": iban, "IP": ip, "SSN": ssn, "SECRET": secret}


def planted_corpus(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """n sentences, each with one PII value: (sentence, kind, value), kinds in rotation."""
    rng, out, kinds = random.Random(seed), [], sorted(GENERATORS)
    for i in range(n):
        kind = kinds[i % len(kinds)]
        value = GENERATORS[kind](rng)
        out.append((rng.choice(PLANT).format(v=value), kind, value.removeprefix("Bearer ")))
    return out


def clean_corpus(n: int, seed: int = 0) -> list[str]:
    """n support-chat sentences with prices, dates, times, versions, ids, code and URLs, but no PII."""
    rng = random.Random(seed)

    def fill() -> dict[str, str]:
        r = rng.randint
        return {
            "o": str(r(1000, 999999)), "d": f"{r(2019, 2026)}-{r(1, 12):02d}-{r(1, 28):02d}", "n": str(r(1, 9)),
            "p": f"{r(1, 999)}.{r(0, 99):02d}", "p2": f"{r(1, 50)}.{r(0, 99):02d}", "pct": str(r(1, 99)),
            "ver": f"{r(0, 12)}.{r(0, 30)}.{r(0, 30)}", "ver2": f"v{r(0, 12)}.{r(0, 30)}.{r(0, 9)}-rc.{r(1, 5)}",
            "t": f"{r(0, 23):02d}:{r(0, 59):02d}", "t2": f"{r(0, 23):02d}:{r(0, 59):02d}:{r(0, 59):02d}",
            "port": str(r(1024, 65535)), "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "sha": f"{rng.getrandbits(28):07x}", "d2": f"{r(1, 28):02d}.{r(1, 12):02d}.{r(2019, 2026)}",
            "year": str(r(1990, 2015)), "year2": str(r(2016, 2026)), "big": f"{r(1, 999):,}",
            "big2": f"{r(1000, 9999999):,}",
            "big7": str(r(1000000, 9999999)), "ts": str(r(1_500_000_000, 1_800_000_000)), "first": rng.choice(FIRST),
            "lat": f"{rng.uniform(-90, 90):.4f}", "lon": f"{rng.uniform(-180, 180):.4f}",
        }  # fmt: skip

    return [rng.choice(CLEAN).format(**fill()) for _ in range(n)]


# --- evasions: the same values written to slip past a filter (issue 18, finding 5) ---
FULL_WIDTH = {c: c + 0xFEE0 for c in range(0x21, 0x7F)}  # "!" to "~" as their full-width forms
DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63"
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad"


def _spelled_email(rng: random.Random) -> str:
    f, l, dom = rng.choice(FIRST), rng.choice(LAST), rng.choice(DOMAINS)
    dot = rng.choice([" dot ", " DOT ", " [dot] ", "(dot)", " (dot) ", "{dot}"])
    at = rng.choice([" at ", " AT ", " [at] ", "(at)", " (at) ", "[at]", " {at} ", " <at> "])
    local = rng.choice([f, f"{f}{dot}{l}", f"{f}{rng.randint(1, 99)}"])
    domain = dom.replace(".", dot) if at.strip().lower() == "at" or rng.random() < 0.7 else dom
    return f"{local}{at}{domain}"


def _bracketed_email(rng: random.Random) -> str:
    f, l, dom = rng.choice(FIRST), rng.choice(LAST), rng.choice(DOMAINS)
    return f"{f}.{l}{rng.choice([' [at] ', '[at]', ' (at) ', '(at)', ' @ ', '{at}', ' [AT] '])}{dom}"


def _dashed(value: str, rng: random.Random) -> str:
    return "".join(rng.choice(DASHES) if c == "-" else c for c in value)


def _zero_width(value: str, rng: random.Random) -> str:
    cut = sorted(rng.sample(range(1, len(value)), min(3, len(value) - 1)))
    return "".join(value[a:b] + (rng.choice(ZERO_WIDTH) if b < len(value) else "")
                   for a, b in zip([0, *cut], [*cut, len(value)]))  # fmt: skip


def _card_mixed(rng: random.Random) -> str:
    digits = _luhn_complete(rng.choice(["4", "51", "55", "6011", "2221"]), 16, rng)
    seps = [rng.choice(". -") for _ in range(3)] if rng.random() < 0.5 else ["."] * 3
    return "".join(digits[i * 4 : i * 4 + 4] + (seps[i] if i < 3 else "") for i in range(4))


def _iban_loose(rng: random.Random) -> str:
    value = iban(rng).replace(" ", "")
    grouped = _group(value, (4,) * 9, rng.choice([" ", "-", ""]))
    return grouped.lower() if rng.random() < 0.7 else grouped


def _url_ip(rng: random.Random) -> tuple[str, str]:
    host = ".".join(str(rng.randint(1, 254)) for _ in range(4))
    path = rng.choice(["admin", "api/v1", ""])
    return f"{rng.choice(['http', 'https', 'ftp'])}://{host}:{rng.randint(80, 65535)}/{path}", host


def _url_credentials(rng: random.Random) -> tuple[str, str]:
    user = rng.choice([f"{rng.choice(FIRST)}.{rng.choice(LAST)}", rng.choice(FIRST), "admin"])
    password = "".join(rng.choice(B62 + "!$*") for _ in range(rng.randint(2, 16)))
    return f"{rng.choice(['https', 'postgres', 'redis', 'ftp'])}://{user}:{password}@{rng.choice(DOMAINS)}/x", \
        f"{user}:{password}"


def _url_encoded_email(rng: random.Random) -> tuple[str, str]:
    value = email(rng)
    prefix = rng.choice(["mailto:", "https://shop.example.org/account?email=", ""])
    return prefix + value.replace("@", rng.choice(["%40", "%40", "%2540"])), value


def _hidden(hide):
    """An evasion that hides a plain value of a random kind: (kind, as written, the plain value)."""
    def make(rng: random.Random) -> tuple[str, str, str]:
        kind = rng.choice(["EMAIL", "PHONE", "CARD", "SSN", "IBAN"])
        value = GENERATORS[kind](rng)
        return kind, hide(value, rng), value
    return make


def _same(kind, make):
    """An evasion whose value as written is the one that must vanish."""
    def made(rng: random.Random) -> tuple[str, str, str]:
        value = make(rng)
        return kind, value, value
    return made


def _written(kind, make):
    """An evasion whose maker returns (as written, the plain value)."""
    return lambda rng: (kind, *make(rng))


def _dashed_value(rng: random.Random) -> tuple[str, str, str]:
    phone_number = f"{rng.randint(201, 989)}-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}"
    kind, value = rng.choice([("SSN", ssn(rng)), ("PHONE", phone_number),
                              ("CARD", _group(_luhn_complete("4", 16, rng), (4, 4, 4), "-"))])
    return kind, _dashed(value, rng), value


# kind of evasion -> rng -> (PII kind, the value as written, the plain value that must not survive)
EVASIONS = {
    "spelled-out e-mail": _same("EMAIL", _spelled_email),
    "bracketed e-mail": _same("EMAIL", _bracketed_email),
    "full-width characters": _hidden(lambda v, rng: v.translate(FULL_WIDTH)),
    "Unicode dashes": _dashed_value,
    "zero-width characters": _hidden(_zero_width),
    "URL-encoded @": _written("EMAIL", _url_encoded_email),
    "card with dots or mixed separators": _same("CARD", _card_mixed),
    "lowercase or dashed IBAN": _same("IBAN", _iban_loose),
    "IPv4 with port in a URL": _written("IP", _url_ip),
    "SSN with spaces": _same("SSN", lambda rng: ssn(rng).replace("-", " ")),
    "credentials in a URL": _written("SECRET", _url_credentials),
}


def evasion_corpus(n_per_kind: int, seed: int = 0) -> list[tuple[str, str, str, str, str]]:
    """(sentence, evasion kind, PII kind, value as written, plain value): both values must vanish
    (the plain one from the normalized output too) and `<KIND>` appear."""
    rng, out = random.Random(seed), []
    for evasion, make in EVASIONS.items():
        for _ in range(n_per_kind):
            kind, written, plain = make(rng)
            out.append((rng.choice(PLANT).format(v=written), evasion, kind, written, plain))
    return out


# --- per field: a value planted in each field of an item (flywheel.ingest.records) ---
BASE_ITEM = {"task": "t", "model": "m", "messages": [{"role": "user", "content": "hi"}], "response": "ok"}
BASE_FEEDBACK = {"interaction_id": "i1", "kind": "label", "value": "billing"}


def _tool_call(v: str) -> dict:
    arguments = json.dumps({"to": v, "note": f"for {v}", "n": 3})
    return {"role": "assistant", "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "send", "arguments": arguments}}]}


# field -> ("interaction" | "feedback" | "gateway", how the value enters the item)
FIELDS = {
    "messages[].content": ("interaction", lambda v: {"messages": [{"role": "user", "content": f"Hi, {v} here"}]}),
    "messages[].content (system)": ("interaction", lambda v: {"messages": [{"role": "system", "content": f"Escalate to {v}"},
                                                                            {"role": "user", "content": "hi"}]}),
    "messages[].name": ("interaction", lambda v: {"messages": [{"role": "user", "name": v, "content": "hi"}]}),
    "messages[].content[].text": ("interaction", lambda v: {"messages": [{"role": "user", "content": [{"type": "text", "text": v}]}]}),
    "messages[].content[].image_url": ("interaction", lambda v: {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"https://img.example.com/u?who={v}"}}]}]}),
    "tool-call arguments": ("interaction", lambda v: {"messages": [{"role": "user", "content": "send it"}, _tool_call(v)]}),
    "tool result": ("interaction", lambda v: {"messages": [{"role": "user", "content": "look up"},
                                                          {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"found": v})}]}),
    "prompt": ("interaction", lambda v: {"messages": None, "prompt": f"Complete: {v}"}),
    "response": ("interaction", lambda v: {"response": f"Sure, {v}."}),
    "model": ("interaction", lambda v: {"model": f"ft-small [{v}]"}),
    "params": ("interaction", lambda v: {"params": {"stop": [v], "extra": {"who": v}}}),
    "metadata": ("interaction", lambda v: {"metadata": {"customer": {"contact": v, "notes": [f"said {v}"]}}}),
    "tags": ("interaction", lambda v: {"tags": ["vip", v]}),
    "user_id": ("interaction", lambda v: {"user_id": v}),
    "session_id": ("interaction", lambda v: {"session_id": v}),
    "gateway user": ("gateway", lambda v: {"user_id": v}),
    "feedback label": ("feedback", lambda v: {"kind": "label", "value": v}),
    "feedback comment": ("feedback", lambda v: {"kind": "thumbs", "value": "down", "comment": f"wrong, ask {v}"}),
    "feedback correction": ("feedback", lambda v: {"kind": "correction", "value": f"Reply to {v}"}),
    "feedback user_id": ("feedback", lambda v: {"kind": "thumbs", "value": True, "user_id": v}),
}  # fmt: skip


def field_corpus(n_per_field: int, seed: int = 0) -> list[tuple[str, str, str, str, dict]]:
    """(field, source, value as written, plain value, item): planted values of every kind, plain and
    evasive, in every field; neither value may survive anywhere in the stored row."""
    rng, out = random.Random(seed), []
    makers = [_same(k, g) for k, g in GENERATORS.items()] + list(EVASIONS.values())
    for field, (source, place) in FIELDS.items():
        for i in range(n_per_field):
            _, written, plain = makers[i % len(makers)](rng)
            if written.startswith("Bearer "):  # (the word stays; the token goes)
                written = plain = written.removeprefix("Bearer ")
            base = BASE_FEEDBACK if source == "feedback" else BASE_ITEM
            item = {k: v for k, v in {**base, **place(written[:128])}.items() if v is not None}
            out.append((field, source, written[:128], plain[:128], item))
    return out


def stored_text(source: str, item: dict, secret: bytes) -> str:
    """What storage keeps of one `field_corpus` item: the row records validation makes of it (as the
    ingestion API or the gateway would), every string of it normalized, one per line."""
    import msgspec

    from flywheel.ingest.pii import normalize
    from flywheel.ingest.records import Limits, feedback_row, interaction_row

    raw, limits = msgspec.json.encode(item), Limits(200_000, 100)
    if source == "feedback":
        row = feedback_row(raw, project="p", redact=True, limits=limits, secret=secret)
    else:
        row = interaction_row(raw, project="p", redact=True, limits=limits, secret=secret,
                              source="gateway" if source == "gateway" else "ingest")  # fmt: skip
    return "\n".join(normalize(text) for text in _stored_strings(row))


def _stored_strings(row) -> list[str]:
    """Every string a stored row holds, its JSON columns (and JSON inside their strings) decoded."""
    out, stack = [], [v for v in row if v is not None]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            out.append(value)
            if value[:1] in ("{", "["):
                try:
                    stack.append(json.loads(value))
                except ValueError:
                    pass
        elif isinstance(value, dict):
            stack += [*value.keys(), *value.values()]
        elif isinstance(value, list):
            stack += value
    return out
