"""Paired bootstrap verdicts on planted candidates: better, worse, equal; incomplete never passes;
the gate's non-inferiority test and sample floor, from planted per-example scores to its decision."""

from __future__ import annotations

import random

import pytest

from evals.metrics import MacroF1
from evals.report import markdown
from evals.stats import BETTER, INSUFFICIENT, SAME, WORSE, compare, paired_bootstrap
from evals.types import EvalRun, ExampleResult
from flywheel.registry.gate import Evidence, GateConfig, decide


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


def gate(verdicts, gate_config: GateConfig | None = None):
    """The promotion gate's decision on a comparison, its evidence built as the loop builds it."""
    cost = next(c for c in verdicts.comparisons if c.metric == "cost_per_1k_usd")
    evidence = Evidence("ready", verdicts.complete, dict(verdicts.dimensions), cost_per_1k_usd=cost.candidate,
                        incumbent_cost_per_1k_usd=cost.incumbent, **verdicts.gate_evidence())  # fmt: skip
    return decide(evidence, gate_config)


def test_a_wide_ci_below_zero_is_not_equal_quality():
    # The demo's case: a candidate right 75% of the time vs production's 81%, on 200 examples,
    # answering independently of it (so the CI is wide), at 1% of the cost.
    inc, cand = [float(i < 162) for i in range(200)], [float(i < 150) for i in range(200)]
    random.Random(12).shuffle(cand)
    v = compare(run("cheap", cand, cost=0.00002), run("inc", inc, cost=0.002))
    q = v.quality_bound
    assert v.dimensions["quality"] == SAME and v.dimensions["cost"] == BETTER  # "not distinguishable"...
    assert q.ci_low < -0.1 and q.ci_high > 0 and q.diff == pytest.approx(0.75 - 0.81)  # ...but centred below zero, wide
    assert not v.non_inferior and not v.passed
    decision = gate(v)
    assert not decision.promote
    assert decision.reasons[0].startswith(f"insufficient evidence of non-inferiority: CI [{q.ci_low:+.3f}, "
                                          f"{q.ci_high:+.3f}] reaches below -0.01, n=200 (acc, paired bootstrap, 95% CI")  # fmt: skip
    md = markdown(title="t", candidate=run("cheap", cand), incumbent=run("inc", inc), verdicts=v, passed=v.passed,
                  metric="acc", charts=[])  # fmt: skip
    assert "Test: paired bootstrap, 95% CI, non-inferiority margin 0.01, n=200" in md
    assert f"≥ -0.01: **no** (acc: CI [{q.ci_low:+.3f}, {q.ci_high:+.3f}])" in md and "NO PASS" in md


def test_a_tight_ci_within_the_margin_at_a_lower_cost_passes():
    # The candidate answers as the incumbent does on 1,000 examples but two (one won, one lost).
    inc = planted(1000, 0.8, 13)
    cand = list(inc)
    right, wrong = inc.index(1.0), inc.index(0.0)
    cand[right], cand[wrong] = 0.0, 1.0
    v = compare(run("cheap", cand, cost=0.00002), run("inc", inc, cost=0.002))
    assert v.dimensions["quality"] == SAME and v.non_inferior and v.passed
    assert -0.01 <= v.quality_bound.ci_low < 0 < v.quality_bound.ci_high <= 0.01
    decision = gate(v)
    assert decision.promote and decision.reasons[0].startswith("quality non-inferior at 0.01x the incumbent's cost: Δq CI")
    assert "≥ -0.01, n=1000 (acc, paired bootstrap, 95% CI, non-inferiority margin 0.01)" in decision.reasons[0]
    assert not gate(v, GateConfig(quality_margin=0.0)).promote  # no margin: "equal" is never enough
    strict = compare(run("cheap", cand, cost=0.00002), run("inc", inc, cost=0.002), margin=0.0)
    assert not strict.non_inferior and not strict.passed  # the report applies the margin it is given


def test_three_unanimous_examples_are_insufficient_evidence():
    v = compare(run("cand", [1.0] * 3, latency=10, cost=0), run("inc", [0.0] * 3))
    assert v.dimensions == {"quality": INSUFFICIENT, "latency": INSUFFICIENT, "cost": INSUFFICIENT}
    assert v.quality_bound.ci_low == 1.0 and not v.passed  # the bootstrap alone says [1, 1]: "better"
    decision = gate(v)
    assert not decision.promote
    assert decision.reasons[0].startswith("insufficient evidence: 3 paired benchmark examples, fewer than min_examples 30")
    md = markdown(title="t", candidate=run("cand", [1.0] * 3), incumbent=run("inc", [0.0] * 3), verdicts=v,
                  passed=v.passed, metric="acc", charts=[])  # fmt: skip
    assert "> Insufficient evidence: 3 paired examples, fewer than the 30 a verdict needs" in md
    assert compare(run("cand", [1.0] * 3), run("inc", [0.0] * 3), min_examples=3).dimensions["quality"] == BETTER


def test_a_significant_better_with_enough_examples_passes():
    inc = planted(120, 0.6, 14)
    better = [1.0 if b == 0 and i % 2 == 0 else b for i, b in enumerate(inc)]
    v = compare(run("better", better, cost=0.0001), run("inc", inc))
    assert v.dimensions["quality"] == BETTER and v.passed and v.n_paired == 120
    decision = gate(v)
    assert decision.promote and decision.reasons[0].startswith("quality better than the incumbent (significant): Δq CI [+")
    assert "n=120 (acc, paired bootstrap, 95% CI, non-inferiority margin 0.01)" in decision.reasons[0]


def test_better_on_one_metric_does_not_hide_a_loss_on_another():
    inc = planted(200, 0.6, 15)
    better = [1.0 if b == 0 and i % 2 == 0 else b for i, b in enumerate(inc)]
    # A second metric (a judge's), not distinguishable but possibly 0.1 worse: the case above.
    judged_inc, judged_cand = [float(i < 162) for i in range(200)], [float(i < 150) for i in range(200)]
    random.Random(12).shuffle(judged_cand)

    def two(rid: str, acc: list[float], judge: list[float]) -> EvalRun:
        r = run(rid, acc)
        for x, j in zip(r.results, judge):
            x.scores["judge"] = j
        r.metrics["judge"] = sum(judge) / len(judge)
        return r

    v = compare(two("cand", better, judged_cand), two("inc", inc, judged_inc))
    assert v.dimensions["quality"] == BETTER and v.quality_bound.metric == "judge" and v.quality_bound.ci_low < -0.01
    assert not v.passed and not gate(v).promote
    assert "CI" in gate(v).reasons[0] and "(judge, paired bootstrap" in gate(v).reasons[0]


def test_a_metric_outside_the_benchmarks_gate_is_compared_but_never_decides():
    # The agent's benchmark: call accuracy decides; irrelevance is scored on the few examples that
    # need no tool, too few to show non-inferiority at a 0.01 margin. Named out of the gate, it is
    # still compared (and reported) as a diagnostic, and no verdict depends on it.
    inc = planted(200, 0.6, 16)
    better = [1.0 if b == 0 and i % 2 == 0 else b for i, b in enumerate(inc)]
    few_inc, few_cand = [float(i < 14) for i in range(20)], [float(i < 13) for i in range(20)]

    def two(rid: str, acc: list[float], slice_: list[float]) -> EvalRun:
        r = run(rid, acc)
        for i, x in enumerate(r.results):
            x.scores["irrelevance"] = slice_[i] if i < len(slice_) else None  # not scored outside its slice
        r.metrics["irrelevance"] = sum(slice_) / len(slice_)
        return r

    cand, incumbent = two("cand", better, few_cand), two("inc", inc, few_inc)
    assert not compare(cand, incumbent).passed  # gating on both: the slice's CI reaches far below -0.01
    v = compare(cand, incumbent, gated=["acc"])
    assert v.passed and v.dimensions["quality"] == BETTER and v.quality_bound.metric == "acc"
    (diagnostic,) = [c for c in v.comparisons if c.dimension == "diagnostic"]
    assert diagnostic.metric == "irrelevance" and diagnostic.ci_low < -0.01
    assert "diagnostic" not in v.dimensions and gate(v).promote
