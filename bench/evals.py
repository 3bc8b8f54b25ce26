"""Bench: the batched eval runner vs a sequential loop of single generations, same model, same run.

    .venv/bin/python bench/evals.py [--n 1000] [--batch-size 64] [--max-tokens 16]

Builds the tiny local model (flywheel.demo.tiny), writes N ticket examples as a golden JSONL, then
1. batched: `evals.evaluate` with a `LocalSampler` (batched generate, left padding) — the whole
   runner: store writes, metrics, report;
2. sequential: the same sampler's single-prompt call, once per example, nothing else.
Prints both wall times, examples/s and the ratio (target ≥ 5×). Figures, not asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    import torch

    from evals import BenchmarkSpec, LocalSampler, evaluate
    from flywheel.settings import load_settings
    from flywheel.demo.tiny import TICKET_LABELS, build_tiny_model, ticket_examples, ticket_texts

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_model(tmp / "tiny", ticket_texts(400))
        rows = ticket_examples(args.n, seed=7)
        (tmp / "golden.jsonl").write_text("".join(json.dumps({"id": f"t{i:05d}", **r}) + "\n" for i, r in enumerate(rows)))
        spec = BenchmarkSpec.from_dict({"name": "bench-triage", "source": {"golden": str(tmp / "golden.jsonl")},
                                        "sampling": {"max_tokens": args.max_tokens},
                                        "metrics": [{"type": "accuracy", "labels": sorted(TICKET_LABELS)}, {"type": "rouge_l"}]})  # fmt: skip
        sampler = LocalSampler(model, model="tiny", batch_size=args.batch_size, usd_per_hour=1.0)
        sampler(rows[0]["messages"][:1])  # warm-up: first-call allocations are not what we measure

        start = time.perf_counter()
        rep = evaluate(load_settings(tmp / "home"), project="bench", task="triage", benchmark=spec, sampler=sampler,
                       chunk_size=4 * args.batch_size, resume=False)  # fmt: skip
        batched = time.perf_counter() - start

        start = time.perf_counter()
        single = [sampler(r["messages"][:1]) for r in rows]
        sequential = time.perf_counter() - start

    run = rep.candidate
    agree = sum(a.output == s.text for a, s in zip(sorted(run.results, key=lambda r: r.example_id), single))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.n} examples, max_new_tokens {args.max_tokens}")
    print(f"batched runner (batch {args.batch_size}): {batched:7.2f} s  {args.n / batched:8.1f} examples/s  "
          f"(run {run.status}, p50 {run.latency['p50_ms']:.0f} ms/request, {run.latency['tokens_per_s']:.0f} tokens/s, "
          f"${run.cost['per_1k_requests_usd']:.5f} per 1k requests at $1/h)")
    print(f"sequential single generations:  {sequential:7.2f} s  {args.n / sequential:8.1f} examples/s")
    print(f"ratio: {sequential / batched:.1f}x  (target >= 5x); identical outputs: {agree}/{args.n}")


if __name__ == "__main__":
    main()
