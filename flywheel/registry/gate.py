"""The promotion gate: the rules (`GateConfig`, the `[tasks.T] gate` table), what they look at
(`Evidence`) and their verdict (`Decision`).

Why a module of its own: the gate is pure (no store, no HTTP, no settings), so the settings can
validate a config's gate table with it at load time, and the offline gate (`decide`, on the
benchmark) and the live one (`flywheel.registry.canary.settle`, on thumbs) read one config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

QUALITY_RULES = ("better", "not distinguishable")


@dataclass
class GateConfig:
    """When a candidate may replace production (the `[tasks.T] gate` table of flywheel.toml)."""

    quality: str = field(default="better", metadata={"help": "Quality verdict required: 'better', or 'not distinguishable' (never 'worse')."})
    equal_quality_max_cost_ratio: float = field(default=0.5, metadata={"help": "A 'not distinguishable' quality still passes when the candidate costs at most this fraction of the incumbent."})
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
    if quality == "better":
        passes.append("quality better than the incumbent (significant)")
    elif quality == "not distinguishable" and gate.quality == "not distinguishable":
        passes.append("quality not distinguishable from the incumbent")
    elif quality == "not distinguishable" and ratio is not None and ratio <= gate.equal_quality_max_cost_ratio:
        passes.append(f"quality not distinguishable at {ratio:.2f}x the incumbent's cost")
    else:
        refusals.append(f"quality verdict is '{quality}'")
    for dimension in ("latency", "cost"):
        if evidence.verdicts.get(dimension) == "worse" and quality != "better":
            refusals.append(f"{dimension} is worse and quality does not make up for it")
    # (an unmeasured figure is over any bound; a measured 0, e.g. a local model's cost, is not)
    if gate.max_latency_p95_ms is not None and _or_inf(evidence.latency_p95_ms) > gate.max_latency_p95_ms:
        refusals.append(f"latency p95 {evidence.latency_p95_ms} ms is over the bound of {gate.max_latency_p95_ms} ms")
    if gate.max_cost_per_1k_usd is not None and _or_inf(evidence.cost_per_1k_usd) > gate.max_cost_per_1k_usd:
        refusals.append(f"cost {evidence.cost_per_1k_usd} $/1k is over the bound of {gate.max_cost_per_1k_usd} $/1k")
    return Decision(not refusals, refusals or passes, {"gate": asdict(gate), **asdict(evidence)}, gate.canary_share)


def _or_inf(value: float | None) -> float:
    return float("inf") if value is None else value
