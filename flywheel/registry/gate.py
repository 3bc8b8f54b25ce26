"""The promotion gate: the rules (`GateConfig`, the `[tasks.T] gate` table), what they look at
(`Evidence`) and their verdict (`Decision`).

Why a module of its own: the gate is pure (no store, no HTTP, no settings), so the settings can
validate a config's gate table with it at load time, and the offline gate (`decide`, on the
benchmark) and the live one (`flywheel.registry.canary.settle`, on thumbs) read one config.

The offline gate's statistics: the benchmark's CI of the quality difference (candidate −
incumbent, paired over the examples both answered) must come from at least `min_examples` pairs,
and its lower bound must be at least −`quality_margin` (non-inferiority) for any promotion. "Not
distinguishable" from zero is not evidence of equal quality: a CI of [−0.15, +0.03] is not
distinguishable either, and such a candidate was once promoted for being cheaper.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

QUALITY_RULES = ("better", "not distinguishable")


@dataclass
class GateConfig:
    """When a candidate may replace production (the `[tasks.T] gate` table of flywheel.toml)."""

    quality: str = field(default="better", metadata={"help": (
        "Quality verdict required: 'better' (the whole CI above zero), or 'not distinguishable' (any "
        "non-inferior candidate, see quality_margin; never 'worse').")})
    equal_quality_max_cost_ratio: float = field(default=0.5, metadata={"help": (
        "A 'not distinguishable' quality still passes when the candidate is non-inferior (see "
        "quality_margin) and costs at most this fraction of the incumbent.")})
    quality_margin: float = field(default=0.01, metadata={"help": (
        "Non-inferiority margin, in the units of the quality metrics (all 0-1): any promotion needs the "
        "lower bound of the CI of candidate - incumbent to be at least -margin on every quality metric, "
        "i.e. the benchmark shows the candidate loses at most this much. 0.01 (one point of accuracy) is "
        "small on purpose, the product's promise being never to promote a worse model: for a 0/1 metric "
        "the CI's half-width is about 2*sqrt(d/n) for a share d of examples where the two models "
        "disagree, so passing on equal quality (for a lower cost or latency) takes a benchmark of about "
        "40,000*d examples (4,000 at d = 10%, 400 at d = 1%), while a significantly better candidate "
        "passes anyway. Raise it (e.g. 0.02-0.05) where that much quality is worth the saving.")})
    min_examples: int = field(default=30, metadata={"help": (
        "Paired benchmark examples (answered by both models) a verdict needs; with fewer, the candidate is "
        "refused for insufficient evidence, whatever the verdict. The bootstrap has no floor of its own: 3 "
        "examples the candidate gets right and the incumbent wrong give a CI of [1, 1], 'better'. 30 is "
        "the usual rule of thumb for a resampled mean to approximate its sampling distribution (and 30 "
        "straight wins are significant by an exact sign test, p < 1e-8); it only rules out a verdict from "
        "almost nothing: at 30 the CI is still about +-0.2 wide, and quality_margin asks for a tight one.")})
    max_latency_p95_ms: float | None = field(default=None, metadata={"help": "Refuse a candidate slower than this at p95."})
    max_cost_per_1k_usd: float | None = field(default=None, metadata={"help": "Refuse a candidate dearer than this per 1,000 requests."})
    canary_share: float | None = field(default=None, metadata={"help": (
        "Unset: a candidate that passes the gate takes `production` at once. Set (0 < share < 1): it "
        "first serves `TASK:canary`, i.e. this fraction of users (by user or session id), and `flywheel "
        "settle` later promotes it to production or rolls it back from the thumbs on the traffic each "
        "side served since the canary began. With no production model yet, there is nothing to "
        "compare with, and a passing candidate takes production directly.")})
    canary_min_feedback: int = field(default=30, metadata={"help": (
        "Thumbs (one per interaction, the latest) needed on EACH side, canary and production, before "
        "settle decides anything; below it, settle waits.")})
    canary_alpha: float = field(default=0.05, metadata={"help": (
        "Significance level of the two-sided two-proportion z-test on the thumbs-up rates. With enough "
        "feedback on both sides: p < alpha and the canary lower -> rolled back at once; p < alpha and "
        "the canary higher -> promoted at once; otherwise settle waits (for more feedback or the "
        "deadline). Settle looks again on every run, and each look is another chance of a false "
        "alarm: lower alpha (e.g. 0.01) when settle runs often.")})
    canary_max_days: float | None = field(default=7.0, metadata={"help": (
        "Deadline for an undecided canary, in days since it began. Past it: with enough feedback on "
        "both sides and no significant difference, it is promoted (it passed the offline gate, and "
        "live traffic showed no significant harm); with too little feedback, it is rolled back (it "
        "never earned live evidence; production keeps the proven model). Unset: wait for ever.")})

    def __post_init__(self) -> None:
        if self.quality not in QUALITY_RULES:  # a typo must not loosen the gate
            raise ValueError(f"gate.quality: expected one of {', '.join(map(repr, QUALITY_RULES))}, got {self.quality!r}")
        margin, n = self.quality_margin, self.min_examples  # (a bool is an int to Python, never a count here)
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0.0 <= margin < 1.0:
            raise ValueError(f"gate.quality_margin: expected a number in [0, 1) on the 0-1 quality metrics, got {margin!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"gate.min_examples: expected a whole number of examples, at least 1, got {n!r}")
        # A share of 1 would leave production only anonymous traffic: nothing to compare with.
        if self.canary_share is not None and not 0.0 < self.canary_share < 1.0:
            raise ValueError(f"gate.canary_share: expected a fraction in (0, 1), got {self.canary_share}")
        if self.canary_min_feedback < 1:
            raise ValueError(f"gate.canary_min_feedback: expected at least 1, got {self.canary_min_feedback}")
        if not 0.0 < self.canary_alpha < 0.5:
            raise ValueError(f"gate.canary_alpha: expected a level in (0, 0.5), got {self.canary_alpha}")
        if self.canary_max_days is not None and self.canary_max_days <= 0:
            raise ValueError(f"gate.canary_max_days: expected a positive number of days, got {self.canary_max_days}")


@dataclass
class Evidence:
    """What the gate looks at: the candidate's training status and its benchmark against the incumbent."""

    candidate_status: str  # from the models record: ready | failed | training
    eval_complete: bool  # both runs answered every example
    verdicts: dict[str, str]  # quality / latency / cost -> better | not distinguishable | worse
    latency_p95_ms: float | None = None
    cost_per_1k_usd: float | None = None
    incumbent_cost_per_1k_usd: float | None = None
    contamination: str | None = None  # the overlap, when the benchmark overlaps the training data
    # The quality test's figures: the CI of candidate − incumbent on the quality metric whose lower
    # bound is lowest (the one non-inferiority hinges on), the paired examples it came from, and how.
    quality_ci: tuple[float, float] | None = None
    quality_metric: str | None = None
    n_paired: int | None = None
    test: str | None = None  # e.g. "paired bootstrap, 95% CI"
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    evidence: dict[str, Any]
    # From the gate: a passing candidate serves `TASK:canary` at this share first (see GateConfig).
    # Carried here so that `promote(decision=...)` needs no second look at the config.
    canary_share: float | None = None

    def summary(self) -> str:
        return ("promote: " if self.promote else "refuse: ") + "; ".join(self.reasons)


def decide(evidence: Evidence, gate: GateConfig | None = None) -> Decision:
    """Apply the gate. Every failed rule is a reason; any reason refuses."""
    gate = gate or GateConfig()
    refusals, passes = [], []
    if evidence.candidate_status != "ready":
        refusals.append(f"training did not succeed (status {evidence.candidate_status})")
    if evidence.contamination:
        refusals.append(f"benchmark overlaps the training data: {evidence.contamination}")
    if not evidence.eval_complete:
        refusals.append("the benchmark run is missing, failed or partial")
    quality = evidence.verdicts.get("quality", "missing")
    ratio = None
    if evidence.cost_per_1k_usd is not None and evidence.incumbent_cost_per_1k_usd:
        ratio = evidence.cost_per_1k_usd / evidence.incumbent_cost_per_1k_usd
    n, ci, margin, measured = evidence.n_paired, evidence.quality_ci, gate.quality_margin, _measured(evidence, gate)
    if n is not None and n < gate.min_examples:  # whatever the verdict: a handful of examples proves nothing
        refusals.append(f"insufficient evidence: {n} paired benchmark examples, fewer than min_examples "
                        f"{gate.min_examples}" + (f": {measured}" if measured else ""))  # fmt: skip
    elif quality not in QUALITY_RULES:  # worse, or missing
        refusals.append(f"quality verdict is '{quality}'" + (f": {measured}" if measured else ""))
    elif n is None:
        refusals.append("insufficient evidence: the number of paired benchmark examples is unknown")
    elif ci is None:
        refusals.append("insufficient evidence: no CI of the quality difference was measured")
    elif ci[0] < -margin:
        refusals.append(f"insufficient evidence of non-inferiority: CI [{ci[0]:+.3f}, {ci[1]:+.3f}] reaches below "
                        f"-{margin:g}, n={n} ({_how(evidence, gate)})")  # fmt: skip
    elif quality == "better":
        passes.append(f"quality better than the incumbent (significant): {measured}")
    elif gate.quality == "not distinguishable":
        passes.append(f"quality non-inferior to the incumbent: {measured}")
    elif ratio is not None and ratio <= gate.equal_quality_max_cost_ratio:
        passes.append(f"quality non-inferior at {ratio:.2f}x the incumbent's cost: {measured}")
    else:
        cost = "" if ratio is None else f" at {ratio:.2f}x the incumbent's cost (over {gate.equal_quality_max_cost_ratio:g})"
        refusals.append(f"quality verdict is '{quality}'{cost}: {measured}")
    for dimension in ("latency", "cost"):
        if evidence.verdicts.get(dimension) == "worse" and quality != "better":
            refusals.append(f"{dimension} is worse and quality does not make up for it")
    # (an unmeasured figure is over any bound; a measured 0, e.g. a local model's cost, is not)
    if gate.max_latency_p95_ms is not None and _or_inf(evidence.latency_p95_ms) > gate.max_latency_p95_ms:
        refusals.append(f"latency p95 {evidence.latency_p95_ms} ms is over the bound of {gate.max_latency_p95_ms} ms")
    if gate.max_cost_per_1k_usd is not None and _or_inf(evidence.cost_per_1k_usd) > gate.max_cost_per_1k_usd:
        refusals.append(f"cost {evidence.cost_per_1k_usd} $/1k is over the bound of {gate.max_cost_per_1k_usd} $/1k")
    return Decision(not refusals, refusals or passes, {"gate": asdict(gate), **asdict(evidence)}, gate.canary_share)


def _how(evidence: Evidence, gate: GateConfig) -> str:
    parts = (evidence.quality_metric, evidence.test or "CI of candidate - incumbent", f"non-inferiority margin {gate.quality_margin:g}")
    return ", ".join(p for p in parts if p)


def _measured(evidence: Evidence, gate: GateConfig) -> str:
    """The quality test in one phrase: "Δq CI [-0.008, +0.020] ≥ -0.01, n=200 (accuracy, paired
    bootstrap, 95% CI, non-inferiority margin 0.01)"; empty when no CI was measured."""
    if evidence.quality_ci is None:
        return ""
    lo, hi = evidence.quality_ci
    return (f"Δq CI [{lo:+.3f}, {hi:+.3f}] {'≥' if lo >= -gate.quality_margin else '<'} -{gate.quality_margin:g}, "
            f"n={evidence.n_paired} ({_how(evidence, gate)})")  # fmt: skip


def _or_inf(value: float | None) -> float:
    return float("inf") if value is None else value
