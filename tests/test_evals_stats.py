"""Paired bootstrap verdicts on planted candidates: better, worse, equal; incomplete never passes."""

from __future__ import annotations

import random

import pytest

from evals.metrics import MacroF1
from evals.stats import BETTER, SAME, WORSE, compare, paired_bootstrap
from evals.types import EvalRun, ExampleResult


def run(rid: str, correct: list[float], latency: float = 100.0, cost: float = 0.001, status: str = "done",
        n: int | None = None, errors: int = 0) -> EvalRun:  # fmt: skip
    rng = random.Random(rid)
    results = [ExampleResult(example_id=f"e{i:03d}", output="", scores={"acc": c}, latency_ms=latency * rng.uniform(0.8, 1.2),
                             cost_usd=cost, error="boom" if i < errors else None) for i, c in enumerate(correct)]  # fmt: skip
    return EvalRun(id=rid, project="p", task="t", benchmark_id="b", benchmark_version="bv-1", model=rid, sampler={},
                   status=status, error=None, n_examples=n or len(correct), metrics={"acc": sum(correct) / len(correct)},
                   latency={}, cost={}, results=results)  # fmt: skip


def planted(n: int, p: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [float(rng.random() < p) for _ in range(n)]


def test_planted_better_worse_equal():
    base = planted(300, 0.6, 1)
    better = [1.0 if b == 0 and i % 2 == 0 else b for i, b in enumerate(base)]  # fixes half the mistakes
    worse = [0.0 if b == 1 and i % 2 == 0 else b for i, b in enumerate(base)]
    # Equal quality: swap some right and wrong answers, same mean.
    same = list(base)
    ones, zeros = [i for i, b in enumerate(base) if b], [i for i, b in enumerate(base) if not b]
    for a, z in zip(ones[:15], zeros[:15]):
        same[a], same[z] = 0.0, 1.0
    inc = run("inc", base)
    assert compare(run("better", better, latency=50, cost=0.0001), inc).dimensions == {"quality": BETTER, "latency": BETTER, "cost": BETTER}
    v = compare(run("worse", worse, latency=200, cost=0.01), inc)
    assert v.dimensions == {"quality": WORSE, "latency": WORSE, "cost": WORSE} and not v.passed
    v = compare(run("same", same), inc)
    assert v.dimensions["quality"] == SAME and v.dimensions["cost"] == SAME and not v.passed
    q = next(c for c in v.comparisons if c.metric == "acc")
    assert q.ci_low < 0 < q.ci_high and q.diff == pytest.approx(0.0)


def test_partial_or_failed_run_never_passes():
    inc = run("inc", [0.0] * 100)
    assert compare(run("good", [1.0] * 100, latency=10, cost=0), inc).passed
    failed = compare(run("failed", [1.0] * 100, latency=10, cost=0, status="failed"), inc)
    assert not failed.passed and "failed" in failed.reason
    partial = compare(run("partial", [1.0] * 100, latency=10, cost=0, n=150), inc)
    assert not partial.passed and "100 of 150" in partial.reason
    errored = compare(run("errored", [1.0] * 100, latency=10, cost=0, errors=5), inc)
    assert not errored.passed and errored.n_paired == 95


def test_bootstrap_corpus_metric():
    f1 = MacroF1("f1", None).aggregate
    cand = [["a", "a"], ["b", "b"]] * 50
    inc = [["b", "a"], ["b", "b"]] * 50
    d, lo, hi = paired_bootstrap(cand, inc, f1, n_boot=300)
    assert d > 0 and lo > 0 and hi >= d


def test_report_orders_regressions_and_finds_the_pareto_front():
    from evals.report import pareto_front, per_example_diffs

    cand, inc = run("c", [1.0, 0.0, 1.0, 0.0]), run("i", [0.0, 1.0, 1.0, 0.0])
    diffs = per_example_diffs(cand, inc, "acc")
    assert [(d, i) for d, i, *_ in diffs] == [(-1.0, "e001"), (0.0, "e002"), (0.0, "e003"), (1.0, "e000")]
    # (cost, quality): the second point is dominated by the first; the third is cheaper but worse.
    assert pareto_front([(1.0, 0.9), (2.0, 0.8), (0.5, 0.5)]) == [0, 2]
