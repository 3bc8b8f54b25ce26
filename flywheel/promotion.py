"""The promotion gate, promotion and rollback: a model serves a task only when the measurements
say it is better, and the previous production is one command away.

The gate is config (`GateConfig`); its decision and evidence are stored with every outcome,
refusals included. Promotion is atomic: the serving tier loads the model first (through the
vLLM-style admin API our gateway and vLLM share), and only then does the alias move; if loading
fails, nothing moves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from flywheel import deployments, store
from flywheel.settings import Settings


class PromotionError(RuntimeError):
    """The candidate could not be put in service; no alias moved."""


QUALITY_RULES = ("better", "not distinguishable")
# What the serving tier answers when the model is loaded already (ours, then vLLM's).
_ALREADY_LOADED = ("is already loaded", "is already a model name", "has already been loaded")


@dataclass
class GateConfig:
    """When a candidate may replace production (under `[gate]` in a loop config)."""

    quality: str = field(default="better", metadata={"help": "Quality verdict required: 'better', or 'not distinguishable' (never 'worse')."})
    equal_quality_max_cost_ratio: float = field(default=0.5, metadata={"help": "A 'not distinguishable' quality still passes when the candidate costs at most this fraction of the incumbent."})
    max_latency_p95_ms: float | None = field(default=None, metadata={"help": "Refuse a candidate slower than this at p95."})
    max_cost_per_1k_usd: float | None = field(default=None, metadata={"help": "Refuse a candidate dearer than this per 1,000 requests."})

    def __post_init__(self) -> None:
        if self.quality not in QUALITY_RULES:  # a typo must not loosen the gate
            raise ValueError(f"gate.quality: expected one of {', '.join(map(repr, QUALITY_RULES))}, got {self.quality!r}")


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
    return Decision(not refusals, refusals or passes, {"gate": asdict(gate), **asdict(evidence)})


def _or_inf(value: float | None) -> float:
    return float("inf") if value is None else value


def http_loader(base_url: str, api_key: str, route: str | None = None) -> Callable[[str, str], None]:
    """Load a model into a running Flywheel gateway or vLLM server through its admin API."""

    def load(name: str, path: str) -> None:
        body = {"lora_name": name, "lora_path": path, **({"route": route} if route else {})}
        try:
            r = httpx.post(f"{base_url.rstrip('/')}/v1/load_lora_adapter", json=body,
                           headers={"Authorization": f"Bearer {api_key}"}, timeout=300)  # fmt: skip
        except httpx.HTTPError as exc:
            raise PromotionError(f"the serving tier at {base_url} is unreachable: {exc}") from exc
        already = f"'{name}'" in r.text and any(answer in r.text for answer in _ALREADY_LOADED)
        if r.status_code != 200 and not already:
            raise PromotionError(f"the serving tier refused to load {name!r}: {r.status_code} {r.text[:300]}")

    return load


def promote(settings: Settings, *, project: str, task: str, model: str, path: str, decision: Decision,
            load: Callable[[str, str], None], alias: str = "production", share: float = 1.0) -> deployments.Deployment | None:
    """Put `model` in service under `alias` if the gate said so; store the decision either way.
    Returns the new deployment, or None when the gate refused."""
    if not decision.promote:
        with store.connect(settings.db_path) as con:
            deployments.record_decision(con, project=project, task=task, model=model, reason=decision.summary(),
                                        evidence=decision.evidence)  # fmt: skip
        return None
    try:
        load(model, path)  # first: if the serving tier cannot load it, no alias moves
    except PromotionError:
        raise
    except Exception as exc:
        raise PromotionError(f"loading {model!r} failed: {exc}") from exc
    with store.connect(settings.db_path) as con:
        return deployments.assign(con, project=project, task=task, alias=alias, model=model, share=share,
                                  reason=decision.summary(), evidence=decision.evidence)  # fmt: skip


def rollback(settings: Settings, *, project: str, task: str, reason: str = "manual rollback") -> deployments.Deployment:
    """Give `production` back to the model that held it before the last change (a promotion of
    the model already in production, e.g. to reload it, is no change)."""
    with store.connect(settings.db_path) as con:
        events = [e for e in deployments.history(con, project=project, task=task)
                  if e["alias"] == "production" and e["action"] in ("promote", "rollback")
                  and e["model"] != e["previous_model"]]  # fmt: skip
        if not events or events[-1]["previous_model"] is None:
            raise PromotionError(f"task {task!r} has no previous production model to roll back to")
        last = events[-1]
        return deployments.assign(con, project=project, task=task, alias="production", model=last["previous_model"],
                                  reason=reason, action="rollback",
                                  evidence={"rolled_back": last["model"]})  # fmt: skip


@dataclass
class CanaryRule:
    """How a canary is settled from live feedback (thumbs) on the traffic each model served."""

    min_feedback: int = field(default=50, metadata={"help": "Thumbs needed on each side before deciding."})
    max_drop: float = field(default=0.05, metadata={"help": "Roll back when the canary's thumbs-up rate is this much below production's."})


def canary_rates(con: store.Connection, *, project: str, task: str, models: list[str]) -> dict[str, tuple[float, int]]:
    """model -> (thumbs-up rate, thumbs count) over the task's recorded traffic."""
    rows = con.execute(
        "SELECT i.model, avg(CASE WHEN f.value::BOOLEAN THEN 1.0 ELSE 0.0 END), count(*) FROM feedback f"
        " JOIN interactions i ON i.project = f.project AND i.id = f.interaction_id"
        " WHERE f.kind = 'thumbs' AND i.project = ? AND i.task = ? AND list_contains(?, i.model) GROUP BY i.model",
        [project, task, models],
    ).fetchall()
    return {model: (rate, n) for model, rate, n in rows}


def settle_canary(settings: Settings, *, project: str, task: str, rule: CanaryRule | None = None) -> str:
    """Promote the canary to production, roll it back, or wait for more feedback; returns which."""
    rule = rule or CanaryRule()
    with store.connect(settings.db_path) as con:
        current = {d.alias: d.model for d in deployments.deployments(con, project) if d.task == task}
        if "canary" not in current or "production" not in current:
            raise PromotionError(f"task {task!r} has no canary next to a production model")
        rates = canary_rates(con, project=project, task=task, models=[current["canary"], current["production"]])
        canary, production = rates.get(current["canary"], (0.0, 0)), rates.get(current["production"], (0.0, 0))
        evidence = {"canary": current["canary"], "canary_rate": canary[0], "canary_n": canary[1],
                    "production": current["production"], "production_rate": production[0], "production_n": production[1]}  # fmt: skip
        if min(canary[1], production[1]) < rule.min_feedback:
            return "waiting"
        if canary[0] < production[0] - rule.max_drop:
            deployments.remove(con, project=project, task=task, alias="canary", evidence=evidence,
                               reason=f"canary thumbs-up {canary[0]:.0%} vs production {production[0]:.0%}: rolled back")  # fmt: skip
            return "rolled back"
        deployments.assign(con, project=project, task=task, alias="production", model=current["canary"], evidence=evidence,
                           reason=f"canary thumbs-up {canary[0]:.0%} vs production {production[0]:.0%}: promoted")  # fmt: skip
        deployments.remove(con, project=project, task=task, alias="canary", reason="canary became production")
        return "promoted"
