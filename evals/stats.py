"""Candidate vs incumbent on the same examples: paired bootstrap CIs and a verdict per dimension.

Paired: each resample draws example indices once and applies them to both runs, so the CI is
about the *difference* on the same examples (much tighter than two independent CIs). The verdict
is `better` when the whole CI is on the good side of zero, `worse` when it is on the bad side,
else `not distinguishable`. Dimensions: quality (every metric; worse if any metric is worse,
better if one is better and none worse), latency (per-request ms, lower is better) and cost
(USD per 1,000 requests, lower is better).

The bootstrap has no floor of its own (3 unanimous examples give a CI of [1, 1]): with fewer than
`min_examples` pairs every verdict is `insufficient evidence`. And "not distinguishable from zero"
is no evidence of equal quality (so is [-0.15, +0.03]): a comparison passes only when every quality
CI's lower bound is at least -`margin` (non-inferiority). Both come from the promotion gate's
config (`flywheel.registry.gate.GateConfig`), so the report applies the gate's own test. A
benchmark may name the quality metrics its gate tests (`gate:` in the spec); the others are
compared all the same, as the `diagnostic` dimension, outside every verdict.

A run that is not complete (failed, partial, errored examples) never passes: `Verdicts.passed`
is False with the reason, whatever the numbers say.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evals.types import EvalError, EvalRun
from flywheel.registry.gate import GateConfig

BETTER, SAME, WORSE, INSUFFICIENT = "better", "not distinguishable", "worse", "insufficient evidence"


@dataclass
class Comparison:
    """One metric: both values, the difference (candidate − incumbent) and its CI, the verdict."""

    metric: str
    dimension: str  # quality | latency | cost
    candidate: float
    incumbent: float
    diff: float
    ci_low: float
    ci_high: float
    verdict: str
    higher_is_better: bool = True


@dataclass
class Verdicts:
    """What the promotion gate consumes."""

    candidate_run: str
    incumbent_run: str
    complete: bool
    reason: str | None
    n_paired: int
    comparisons: list[Comparison] = field(default_factory=list)
    dimensions: dict[str, str] = field(default_factory=dict)
    margin: float = GateConfig.quality_margin  # non-inferiority margin on the quality metrics
    min_examples: int = GateConfig.min_examples  # paired examples a verdict needs
    alpha: float = 0.05  # the CIs are 1 - alpha

    @property
    def method(self) -> str:
        return f"paired bootstrap, {1 - self.alpha:.0%} CI"

    @property
    def test(self) -> str:
        """The test in words, for reports: "paired bootstrap, 95% CI, non-inferiority margin 0.01, n=120"."""
        return f"{self.method}, non-inferiority margin {self.margin:g}, n={self.n_paired}"

    @property
    def quality_bound(self) -> Comparison | None:
        """The quality comparison with the lowest CI bound: the one non-inferiority hinges on."""
        return min((c for c in self.comparisons if c.dimension == "quality"), key=lambda c: c.ci_low, default=None)

    @property
    def non_inferior(self) -> bool:
        """Enough pairs, and no quality metric's CI reaches below -margin."""
        q = self.quality_bound
        return self.n_paired >= self.min_examples and q is not None and q.ci_low >= -self.margin

    @property
    def passed(self) -> bool:
        """Complete runs, non-inferior quality (on enough pairs), no dimension worse, at least one better."""
        vals = self.dimensions.values()
        return self.complete and self.non_inferior and WORSE not in vals and BETTER in vals

    def gate_evidence(self) -> dict[str, Any]:
        """The quality test's figures, as the promotion gate's `Evidence` takes them."""
        q = self.quality_bound
        return {"quality_ci": (q.ci_low, q.ci_high) if q else None, "quality_metric": q.metric if q else None,
                "n_paired": self.n_paired, "test": self.method}  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"candidate_run": self.candidate_run, "incumbent_run": self.incumbent_run, "complete": self.complete,
                "reason": self.reason, "n_paired": self.n_paired, "passed": self.passed, "dimensions": self.dimensions,
                "test": self.test, "margin": self.margin, "min_examples": self.min_examples,
                "non_inferior": self.non_inferior, "comparisons": [c.__dict__ for c in self.comparisons]}  # fmt: skip


def mean(values: list[Any]) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def paired_bootstrap(cand: list[Any], inc: list[Any], aggregate: Callable[[list[Any]], float] | None = None, *,
                     n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:  # fmt: skip
    """(point difference, CI low, CI high) of aggregate(cand) − aggregate(inc), resampling pairs."""
    n = len(cand)
    if n != len(inc):
        raise ValueError(f"paired samples differ in length: {n} vs {len(inc)}")
    if n == 0:
        return 0.0, 0.0, 0.0
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    if aggregate is None:  # the mean: vectorised
        d = np.asarray(cand, dtype=float) - np.asarray(inc, dtype=float)
        point, boots = float(d.mean()), d[idx].mean(axis=1)
    else:  # a corpus metric (macro-F1): recompute on every resample
        point = aggregate(cand) - aggregate(inc)
        boots = np.array([aggregate([cand[i] for i in row]) - aggregate([inc[i] for i in row]) for row in idx])
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(point), float(lo), float(hi)


def verdict(lo: float, hi: float, higher_is_better: bool = True) -> str:
    if lo > 0:
        return BETTER if higher_is_better else WORSE
    if hi < 0:
        return WORSE if higher_is_better else BETTER
    return SAME


def combine(verdicts: list[str]) -> str:
    return WORSE if WORSE in verdicts else BETTER if BETTER in verdicts else SAME


def compare(candidate_run: EvalRun, incumbent_run: EvalRun, *, aggregates: dict[str, Callable] | None = None,
            n_boot: int = 2000, alpha: float = 0.05, seed: int = 0, margin: float = GateConfig.quality_margin,
            min_examples: int = GateConfig.min_examples, gated: Collection[str] | None = None) -> Verdicts:  # fmt: skip
    """Verdicts of candidate vs incumbent over the examples both answered without error.

    `aggregates`: metric name → corpus aggregate for metrics that are not a mean (macro-F1);
    `evals.runner.load_run` runs carry them, so callers rarely pass it. `margin` and
    `min_examples`: the non-inferiority test (see the module docstring; the gate's settings). `gated`:
    the quality metrics the verdicts test (None: all); the others are compared as `diagnostic`."""
    if candidate_run.benchmark_version != incumbent_run.benchmark_version:
        raise EvalError(f"runs {candidate_run.id} and {incumbent_run.id} are on different benchmark versions "
                        f"({candidate_run.benchmark_version} vs {incumbent_run.benchmark_version}): not comparable")
    aggregates = {**candidate_run.aggregates, **(aggregates or {})}
    problems = [f"{r.id} ({role}) is {r.status}" + (f": {r.error}" if r.error else "") if r.status != "done"
                else f"{r.id} ({role}) has {sum(x.error is None for x in r.results)} of {r.n_examples} examples answered"
                for role, r in (("candidate", candidate_run), ("incumbent", incumbent_run)) if not r.complete]  # fmt: skip
    inc = {r.example_id: r for r in incumbent_run.results if r.error is None}
    pairs = [(c, inc[c.example_id]) for c in candidate_run.results if c.error is None and c.example_id in inc]
    out = Verdicts(candidate_run.id, incumbent_run.id, complete=not problems, reason="; ".join(problems) or None,
                   n_paired=len(pairs), margin=margin, min_examples=min_examples, alpha=alpha)  # fmt: skip
    enough = len(pairs) >= min_examples
    names = [k for k in candidate_run.metrics if all(k in c.scores and k in i.scores for c, i in pairs)] if pairs else []
    for k, name in enumerate(names):
        agg = aggregates.get(name)
        # A metric that does not apply to an example scores None there: compared where both runs scored.
        both = [(c.scores[name], i.scores[name]) for c, i in pairs if c.scores[name] is not None and i.scores[name] is not None]
        if not both:
            continue
        cv, iv = [c for c, _ in both], [i for _, i in both]
        d, lo, hi = paired_bootstrap(cv, iv, agg, n_boot=n_boot, alpha=alpha, seed=seed + k)
        dimension = "quality" if gated is None or name in gated else "diagnostic"
        out.comparisons.append(Comparison(name, dimension, (agg or mean)(cv), (agg or mean)(iv), d, lo, hi,
                                          verdict(lo, hi) if enough else INSUFFICIENT))  # fmt: skip
    for dim, name, get in (("latency", "latency_ms", lambda r: r.latency_ms),
                           ("cost", "cost_per_1k_usd", lambda r: r.cost_usd * 1000)):  # fmt: skip
        cv, iv = [get(c) for c, _ in pairs], [get(i) for _, i in pairs]
        d, lo, hi = paired_bootstrap(cv, iv, n_boot=n_boot, alpha=alpha, seed=seed + 1000 + len(name))
        out.comparisons.append(Comparison(name, dim, mean(cv), mean(iv), d, lo, hi,
                                          verdict(lo, hi, False) if enough else INSUFFICIENT, False))  # fmt: skip
    for dim in ("quality", "latency", "cost"):
        out.dimensions[dim] = combine([c.verdict for c in out.comparisons if c.dimension == dim]) if enough else INSUFFICIENT
    return out
