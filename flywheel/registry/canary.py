"""The live half of the gate: a candidate serving `TASK:canary` is promoted to production or rolled
back from the thumbs its users gave, against the thumbs production's users gave meanwhile.

Why a second gate after the benchmark: the benchmark is a sample of yesterday's traffic, graded
by metrics; the canary is today's traffic, graded by the users. `settle` compares the two sides
over the same period (interactions since the canary began, so a change in traffic hits both) with
a two-sided two-proportion z-test on the thumbs-up rates, and decides only once each side has
`canary_min_feedback` thumbs — never on a fixed difference, which small samples cross by chance.
The rules (`GateConfig.canary_*`, help text there) in short:

- too little feedback on either side: wait; past `canary_max_days`: roll back;
- p < alpha: roll back when the canary is lower, promote when it is higher;
- otherwise wait; past `canary_max_days`: promote (no significant harm over the whole window).

Every outcome but "no canary" is a deployment event carrying the numbers, the test and the rule,
and `canary_status` shows the same numbers to `flywheel status` while the canary runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from flywheel import store
from flywheel.registry import deployments
from flywheel.registry.gate import GateConfig
from flywheel.registry.models import candidate
from flywheel.registry.promotion import load_first
from flywheel.settings import Settings

if TYPE_CHECKING:
    from flywheel.task import Task

OUTCOMES = ("promote", "rollback", "wait", "idle")  # idle: no canary to settle (nothing recorded)


@dataclass
class Settlement:
    """What `settle` did for one task; `evidence` is what the deployment history holds."""

    task: str
    outcome: str  # one of OUTCOMES
    reason: str
    canary: str | None = None
    production: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


def thumbs(con: store.Connection, *, project: str, task: str, models: list[str], since: datetime) -> dict[str, tuple[int, int]]:
    """model -> (thumbs up, thumbs) on `task`'s interactions since `since` (naive UTC). One vote per
    interaction, its latest: a user who changes their mind is counted once, as they last said."""
    rows = con.execute(
        "WITH votes AS (SELECT i.model, arg_max(f.value::BOOLEAN, f.ts) AS up FROM interactions i"
        "  JOIN feedback f ON f.project = i.project AND f.interaction_id = i.id"
        "  WHERE f.kind = 'thumbs' AND i.project = ? AND i.task = ? AND i.ts >= ? AND list_contains(?, i.model)"
        "  GROUP BY i.model, i.id)"
        " SELECT model, count(*) FILTER (WHERE up), count(*) FROM votes GROUP BY model",
        [project, task, since, models],
    ).fetchall()  # fmt: skip
    return {model: (up, n) for model, up, n in rows}


def two_proportions(up_a: int, n_a: int, up_b: int, n_b: int, alpha: float = 0.05) -> dict[str, float | None]:
    """Rate a minus rate b: the pooled two-sided z-test (`z`, `p_value`) and Newcombe's hybrid
    score interval at level 1 - alpha (`ci_low`, `ci_high`), which stays sensible at rates of 0 or
    1 where the plain Wald interval collapses. All None when a side has no votes."""
    if n_a == 0 or n_b == 0:
        return {"diff": None, "z": None, "p_value": None, "ci_low": None, "ci_high": None}
    a, b = up_a / n_a, up_b / n_b
    pooled = (up_a + up_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    z = (a - b) / se if se > 0 else 0.0  # (both sides all up, or all down: no difference at all)
    crit = NormalDist().inv_cdf(1 - alpha / 2)
    (la, ua), (lb, ub) = _wilson(up_a, n_a, crit), _wilson(up_b, n_b, crit)
    return {"diff": a - b, "z": z, "p_value": math.erfc(abs(z) / math.sqrt(2)),
            "ci_low": a - b - math.sqrt((a - la) ** 2 + (ub - b) ** 2),
            "ci_high": a - b + math.sqrt((ua - a) ** 2 + (b - lb) ** 2)}  # fmt: skip


def _wilson(up: int, n: int, crit: float) -> tuple[float, float]:
    centre = (up + crit**2 / 2) / (n + crit**2)
    half = crit * math.sqrt(up * (n - up) / n + crit**2 / 4) / (n + crit**2)
    return centre - half, centre + half


def verdict(evidence: dict[str, Any], gate: GateConfig) -> tuple[str, str]:
    """(outcome, rule) for measured `evidence` (see `measure`) under the gate: the whole policy."""
    c, p = evidence["canary"], evidence["production"]
    late = gate.canary_max_days is not None and evidence["days"] >= gate.canary_max_days
    if min(c["thumbs"], p["thumbs"]) < gate.canary_min_feedback:
        few = f"fewer than {gate.canary_min_feedback} thumbs on a side"
        if late:
            return "rollback", f"{few} after {gate.canary_max_days:g} days: no live evidence, production stays"
        return "wait", few
    if evidence["p_value"] < gate.canary_alpha:
        if evidence["diff"] < 0:
            return "rollback", f"canary significantly worse (p < {gate.canary_alpha:g})"
        return "promote", f"canary significantly better (p < {gate.canary_alpha:g})"
    if late:
        return "promote", f"no significant difference after {gate.canary_max_days:g} days (p >= {gate.canary_alpha:g})"
    return "wait", f"no significant difference yet (p >= {gate.canary_alpha:g})"


def measure(con: store.Connection, *, project: str, task: str, gate: GateConfig | None = None,
            now: datetime | None = None) -> dict[str, Any] | None:
    """The running canary of `task` against production, as evidence; None without both aliases."""
    gate = gate or GateConfig()
    started = deployments.canary_started(con, project=project, task=task)
    production = deployments.holder(con, project=project, task=task)
    if started is None or production is None:
        return None
    model, share, since = started
    now = store.naive_utc(now) if now is not None else datetime.now(UTC).replace(tzinfo=None)
    votes = thumbs(con, project=project, task=task, models=[model, production], since=since)

    def side(name: str) -> dict[str, Any]:
        up, n = votes.get(name, (0, 0))
        return {"model": name, "thumbs_up": up, "thumbs": n, "rate": up / n if n else None}

    canary, prod = side(model), side(production)
    test = two_proportions(canary["thumbs_up"], canary["thumbs"], prod["thumbs_up"], prod["thumbs"], gate.canary_alpha)
    evidence = {"canary": canary, "production": prod, "share": share, "since": since.isoformat(),
                "days": round((now - since).total_seconds() / 86400, 4), "test": "two-proportion z-test, two-sided",
                **test, "ci_level": 1 - gate.canary_alpha, "alpha": gate.canary_alpha,
                "min_feedback": gate.canary_min_feedback, "max_days": gate.canary_max_days}  # fmt: skip
    evidence["outcome"], evidence["rule"] = verdict(evidence, gate)
    return evidence


def canary_status(con: store.Connection, project: str, task: str, gate: GateConfig | None = None,
                  now: datetime | None = None) -> dict[str, Any] | None:
    """The running canary and its live numbers for `flywheel status` (None when there is none);
    `outcome` and `rule` say what `settle` would do now. `describe` makes it one line."""
    return measure(con, project=project, task=task, gate=gate, now=now)


def describe(status: dict[str, Any]) -> str:
    """One line for a terminal: `canary M (10%, 2.5 d): 41/50 up (82%) vs production P 400/500 (80%), ...`."""
    c, p = status["canary"], status["production"]

    def side(s: dict[str, Any]) -> str:
        return f"{s['thumbs_up']}/{s['thumbs']} up" + (f" ({s['rate']:.0%})" if s["rate"] is not None else "")

    test = "" if status["p_value"] is None else (
        f", diff {status['diff']:+.1%} [{status['ci_low']:+.1%}, {status['ci_high']:+.1%}], p={status['p_value']:.3g}")
    return (f"canary {c['model']} ({status['share']:.0%}, {status['days']:.1f} d): {side(c)} vs production "
            f"{p['model']} {side(p)}{test} → {status['outcome']}: {status['rule']}")  # fmt: skip


def settle(settings: Settings, task: Task, *, load: Callable[[str, str], None] | None = None,
           now: datetime | None = None) -> Settlement:
    """Promote `task`'s canary to production, roll it back, or leave it waiting, by `verdict`; the
    outcome goes into the deployment history with its evidence, by the task's gate;
    `load(model, path)` (e.g. `http_loader`) makes sure the serving tier has the
    canary before it takes production (a failure raises PromotionError and moves nothing)."""
    project, gate, name = task.project, task.gate, task.name
    with store.connect(settings.db_path) as con:
        evidence = measure(con, project=project, task=name, gate=gate, now=now)
        path = None
        if evidence is not None and evidence["outcome"] == "promote" and load is not None:
            record = candidate(con, evidence["canary"]["model"])
            path = record.path if record else None  # (no record: a route, which the gateway serves already)
    if evidence is None:
        return Settlement(name, "idle", "no canary next to a production model")
    outcome, canary, production = evidence["outcome"], evidence["canary"]["model"], evidence["production"]["model"]
    reason = f"canary {outcome}: {evidence['rule']} ({_numbers(evidence)})"
    if path is not None:  # loaded outside the store: the service needs it to check the loading key
        load_first(load, canary, path)
    with store.connect(settings.db_path) as con:
        now_running = deployments.canary_started(con, project=project, task=name)
        if now_running is None or now_running[0] != canary:  # changed while we measured or loaded
            return Settlement(name, "idle", "the canary changed while it was being settled; run settle again",
                              canary, production, evidence)  # fmt: skip
        if outcome == "promote":
            deployments.promote_canary(con, project=project, task=name, reason=reason, evidence=evidence)
        elif outcome == "rollback":
            deployments.remove(con, project=project, task=name, alias="canary", action="rollback", reason=reason,
                               evidence=evidence)  # fmt: skip
        else:
            deployments.record_event(con, project=project, task=name, alias="canary", action="wait", model=canary,
                                     reason=reason, evidence=evidence)  # fmt: skip
    return Settlement(name, outcome, reason, canary, production, evidence)


def _numbers(e: dict[str, Any]) -> str:
    c, p = e["canary"], e["production"]
    text = f"{c['thumbs_up']}/{c['thumbs']} up vs {p['thumbs_up']}/{p['thumbs']}"
    return text if e["p_value"] is None else f"{text}, p={e['p_value']:.3g}"
