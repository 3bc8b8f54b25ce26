"""PII redaction benchmark: prints figures, asserts nothing.

(a) recall per kind on planted values and the false-positive rate on clean text (tests/pii_cases.py);
(b) throughput of `redact` (µs per KB and MB/s, median of several runs) on ≈1 KB messages without
    PII (plain prose; typical chat; chat dense with numbers, dates, ids and code) and with PII;
(c) linearity: time on 20 KB vs 200 KB of adversarial input (long digit, word and colon runs).

    .venv/bin/python bench/pii.py [--messages 2000] [--runs 7]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from flywheel.ingest.pii import KINDS, redact  # noqa: E402

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


def redact_all(msgs: list[str]) -> None:
    for m in msgs:
        redact(m)


def throughput(msgs: list[str], runs: int) -> tuple[float, float]:
    """Median µs per KB and MB/s of redact() over msgs."""
    total = sum(len(m.encode()) for m in msgs)
    t = statistics.median(cpu_seconds(redact_all, msgs) for _ in range(runs))
    return t / (total / 1024) * 1e6, total / t / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()

    planted = cases.planted_corpus(7000, seed=1)
    hits, totals = Counter(), Counter()
    for sentence, kind, value in planted:
        out, _ = redact(sentence)
        totals[kind] += 1
        hits[kind] += value not in out and f"<{kind}>" in out
    print("recall per kind (planted values, 1000 per kind):")
    for kind in KINDS:
        print(f"  {kind:7s} {hits[kind] / totals[kind]:.4f}")
    clean = cases.clean_corpus(20000, seed=2)
    fp = sum(redact(s)[1] > 0 for s in clean)
    print(f"false positives on clean sentences: {fp}/{len(clean)} = {fp / len(clean):.4f}")

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
    print(f"\nthroughput, {n} messages of ≈1 KB, median of {args.runs} runs:")
    for name, msgs in workloads.items():
        us_per_kb, mb_s = throughput(msgs, args.runs)
        print(f"  {name:42s} {us_per_kb:6.2f} µs/KB  {mb_s:7.1f} MB/s")

    print("\nlinearity (CPU ms for 20 KB -> 200 KB of adversarial input, best of 3):")
    adversarial = {"digits": "1234567890", "digit groups": "12 34 ", "plus groups": "+1 2 ", "word chars": "aB3_",
                   "colons": "ab:", "loopbacks": "::1 ", "at signs": "a@b.", "dots": "1.2.", "IBAN-like": "DE89 "}
    for name, unit in adversarial.items():
        texts = [(unit * (size // len(unit) + 1))[:size] for size in (20_000, 200_000)]
        t = [min(cpu_seconds(redact, text) for _ in range(3)) for text in texts]
        print(f"  {name:12s} {t[0] * 1e3:8.2f} ms -> {t[1] * 1e3:8.2f} ms  (x{t[1] / t[0]:.1f})")


if __name__ == "__main__":
    main()
