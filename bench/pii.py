"""PII redaction benchmark: prints figures, asserts nothing.

(a) recall per kind on planted values, per evasion kind (values written to slip past a filter),
    per field of an item (through `flywheel.ingest.records`), and the false-positive rate on clean
    text full of look-alikes (tests/pii_cases.py);
(b) throughput of `redact` (µs per KB and MB/s, median of several runs) on ≈1 KB messages without
    PII (plain prose; typical chat; chat dense with numbers, dates, ids and code) and with PII;
(c) linearity: time on 20 KB vs 200 KB of adversarial input (long digit, word and colon runs).

(a) and (b) also measure the redactor of commit b5b4738 (`git show b5b4738:flywheel/ingest/pii.py`, the last
before normalization and the evasion kinds) side by side, in the same run, as the baseline;
`--baseline REV` picks another revision.

    .venv/bin/python bench/pii.py [--messages 2000] [--runs 7] [--baseline b5b4738]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from flywheel.ingest.pii import KINDS, normalize, redact  # noqa: E402

_spec = importlib.util.spec_from_file_location("pii_cases", ROOT / "tests" / "pii_cases.py")
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)

PROSE = ("the customer says their parcel arrived late and the refund has not shown up yet so please "
         "check the courier tracking and reply with an apology and a voucher if the delay was on our side").split()


def prose(rng: random.Random) -> str:
    return " ".join(rng.choices(PROSE, k=rng.randint(8, 16))).capitalize() + rng.choice(".?!")


def messages(sentences: list[str], size: int = 1024) -> list[str]:
    """Pack sentences into messages of about `size` characters."""
    out, cur = [], []
    for s in sentences:
        cur.append(s)
        if sum(map(len, cur)) + len(cur) >= size:
            out.append(" ".join(cur)[:size])
            cur = []
    return out


def cpu_seconds(fn, *args) -> float:
    """CPU time of one call: on a shared machine it is steadier than wall time, and equal when idle."""
    t0 = time.process_time()
    fn(*args)
    return time.process_time() - t0


def baseline_redact(rev: str):
    """`redact` as it was at git revision `rev`, loaded from a temporary copy (only this bench uses it)."""
    source = subprocess.run(["git", "show", f"{rev}:flywheel/ingest/pii.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "baseline_pii.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("baseline_pii", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.redact


def redact_all(fn, msgs: list[str]) -> None:
    for m in msgs:
        fn(m)


def throughput(fns: list, msgs: list[str], runs: int) -> list[tuple[float, float]]:
    """Median µs per KB and MB/s of each fn (a redact) over msgs; the fns take turns in every run,
    so that a busy machine slows them alike."""
    total = sum(len(m.encode()) for m in msgs)
    times = list(zip(*[[cpu_seconds(redact_all, fn, msgs) for fn in fns] for _ in range(runs)]))
    return [(t / (total / 1024) * 1e6, total / t / 1e6) for t in map(statistics.median, times)]


def evasion_recall(fn, n_per_kind: int) -> tuple[Counter, Counter]:
    hits, totals = Counter(), Counter()
    for sentence, evasion, kind, written, plain in cases.evasion_corpus(n_per_kind, seed=11):
        out, _ = fn(sentence)
        totals[evasion] += 1
        hits[evasion] += written not in out and plain not in normalize(out) and f"<{kind}>" in out
    return hits, totals


def field_recall(n_per_field: int) -> tuple[Counter, Counter]:
    """Planted values (plain and evasive) in each field of an item, through records validation."""
    hits, totals = Counter(), Counter()
    for field, source, written, plain, item in cases.field_corpus(n_per_field, seed=12):
        stored = cases.stored_text(source, item, b"bench")
        totals[field] += 1
        hits[field] += written not in stored and normalize(plain) not in stored
    return hits, totals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--baseline", default="b5b4738", help="git revision whose redactor is measured side by side "
                    "(default: the last before normalization and the evasion kinds)")
    args = ap.parse_args()
    old = baseline_redact(args.baseline)

    planted = cases.planted_corpus(7000, seed=1)
    hits, totals = Counter(), Counter()
    for sentence, kind, value in planted:
        out, _ = redact(sentence)
        totals[kind] += 1
        hits[kind] += value not in out and f"<{kind}>" in out
    print("recall per kind (planted values, 1000 per kind):")
    for kind in KINDS:
        print(f"  {kind:7s} {hits[kind] / totals[kind]:.4f}")

    print(f"\nrecall per evasion kind (500 each; now vs {args.baseline}):")
    (hits, totals), (old_hits, _) = evasion_recall(redact, 500), evasion_recall(old, 500)
    for evasion in totals:
        print(f"  {evasion:36s} {hits[evasion] / totals[evasion]:.4f}   (was {old_hits[evasion] / totals[evasion]:.4f})")
    print(f"  {'all':36s} {sum(hits.values()) / sum(totals.values()):.4f}   "
          f"(was {sum(old_hits.values()) / sum(totals.values()):.4f})")  # fmt: skip

    print("\nrecall per field of an item (200 each, plain and evasive values, through records):")
    hits, totals = field_recall(200)
    for field in totals:
        print(f"  {field:36s} {hits[field] / totals[field]:.4f}")
    print(f"  {'all':36s} {sum(hits.values()) / sum(totals.values()):.4f}")

    clean = cases.clean_corpus(20000, seed=2)
    fp, old_fp = sum(redact(s)[1] > 0 for s in clean), sum(old(s)[1] > 0 for s in clean)
    print(f"\nfalse positives on clean sentences with look-alikes: {fp}/{len(clean)} = {fp / len(clean):.4f}"
          f"   (was {old_fp / len(clean):.4f})")  # fmt: skip

    rng = random.Random(3)
    n = args.messages
    dense = cases.clean_corpus(n * 12, seed=4)
    typical = [s if i % 4 == 0 else prose(rng) for i, s in enumerate(cases.clean_corpus(n * 16, seed=5))]
    with_pii = [s for s, _, _ in cases.planted_corpus(n * 4, seed=6)] + cases.clean_corpus(n * 9, seed=7)
    rng.shuffle(with_pii)
    workloads = {
        "plain prose, no digits": messages([prose(rng) for _ in range(n * 14)])[:n],
        "typical chat, 1 in 4 sentences technical": messages(typical)[:n],
        "dense: every sentence numbers, ids, code": messages(dense)[:n],
        "with PII, ~3 values per KB": messages(with_pii)[:n],
    }
    print(f"\nthroughput, {n} messages of ≈1 KB, median of {args.runs} runs (now | {args.baseline} | ratio):")
    for name, msgs in workloads.items():
        (us_per_kb, mb_s), (old_us, _) = throughput([redact, old], msgs, args.runs)
        print(f"  {name:42s} {us_per_kb:6.2f} µs/KB  {mb_s:7.1f} MB/s | {old_us:6.2f} µs/KB | x{us_per_kb / old_us:.2f}")

    print("\nlinearity (CPU ms for 20 KB -> 200 KB of adversarial input, best of 3):")
    adversarial = {"digits": "1234567890", "digit groups": "12 34 ", "plus groups": "+1 2 ", "word chars": "aB3_",
                   "colons": "ab:", "loopbacks": "::1 ", "at signs": "a@b.", "dots": "1.2.", "IBAN-like": "DE89 ",
                   "spelled at": "a dot b at ", "brackets": "a [at] b ", "percent": "%41", "full-width": "４１",
                   "url creds": "http://a:b"}  # fmt: skip
    for name, unit in adversarial.items():
        texts = [(unit * (size // len(unit) + 1))[:size] for size in (20_000, 200_000)]
        t = [min(cpu_seconds(redact, text) for _ in range(3)) for text in texts]
        print(f"  {name:12s} {t[0] * 1e3:8.2f} ms -> {t[1] * 1e3:8.2f} ms  (x{t[1] / t[0]:.1f})")


if __name__ == "__main__":
    main()
