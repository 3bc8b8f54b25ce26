"""The `settle` Prefect flow: decide each running canary from live feedback, on a schedule.

Why a flow of its own and not a stage of the `flywheel` turn: a turn runs when there is new data
to train on (nightly, or on a feedback trigger), while a canary needs its users' thumbs, which
come in by the hour; so `flywheel up` runs this flow on an interval (`settle_deployment`), and
each run either waits (recorded, cheap) or ends the canary. The decision itself is
`flywheel.registry.canary.settle`, a plain function (what `flywheel settle --task T` and the
tests call); this module only adds the Prefect task per task, retries and a report artifact.

Retries: a store held by the ingestion service for longer than one open's own backoff, or the
service briefly unreachable while the canary is loaded before it takes production, is worth
another try; each settle reads the numbers afresh, so a retry never acts on stale ones.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flywheel.registry.canary import Settlement, settle
from flywheel.settings import Settings, load_settings
from flywheel.task import Task, resolve_task
from pipelines.deployments import interval_deployment
from pipelines.loop import service_loader
from pipelines.retries import publish_markdown, retry_io

SETTLE_DEPLOYMENT = "settle"


@task(name="settle-canary", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=retry_io,
      cache_policy=NO_CACHE)  # fmt: skip
def settle_task(settings: Settings, task: Task) -> Settlement:
    return settle(settings, task, load=service_loader(settings, task))


def settlement_markdown(s: Settlement) -> str:
    """The run's report for one task: the outcome, the rule, and both sides' numbers."""
    lines = [f"# Canary of `{s.task}`: **{s.outcome}**", "", s.reason, ""]
    e = s.evidence
    if e:
        lines += ["| side | model | thumbs up | thumbs | rate |", "|---|---|---|---|---|"]
        for side in ("canary", "production"):
            x = e[side]
            rate = "-" if x["rate"] is None else f"{x['rate']:.1%}"
            lines.append(f"| {side} | `{x['model']}` | {x['thumbs_up']} | {x['thumbs']} | {rate} |")
        if e["p_value"] is not None:
            lines += ["", (f"Difference {e['diff']:+.1%}, {e['ci_level']:.0%} CI [{e['ci_low']:+.1%}, {e['ci_high']:+.1%}], "
                           f"{e['test']}: z = {e['z']:.2f}, p = {e['p_value']:.3g} (alpha {e['alpha']:g}).")]  # fmt: skip
        lines += ["", (f"Canary since {e['since']} UTC ({e['days']:.2f} days; deadline {e['max_days'] or 'none'} days), "
                       f"share {e['share']:.0%}, at least {e['min_feedback']} thumbs a side.")]  # fmt: skip
    return "\n".join(lines)


@flow(name="settle")
def settle_flow(task: str | None = None, data_dir: str | None = None) -> dict[str, dict[str, Any]]:
    """Settle the canary of `task`, or of every configured task; a task without one is idle."""
    settings = load_settings(data_dir)
    names = [task] if task else list(settings.tasks)
    result: dict[str, dict[str, Any]] = {}
    for name in names:
        s = settle_task(settings, resolve_task(settings, name))
        if s.outcome != "idle":
            publish_markdown("settle", name, settlement_markdown(s), f"Canary of {name}: {s.outcome}")
        result[name] = {"outcome": s.outcome, "reason": s.reason, "canary": s.canary, "production": s.production}
    return result


def settle_deployment(settings: Settings, *, every_s: float = 3600.0):
    """The interval deployment `flywheel up` serves when some task runs canaries (`gate.canary_share`),
    else None. It settles every task, so a canary started by hand is settled too."""
    if not any(cfg.gate.get("canary_share") for cfg in settings.tasks.values()):
        return None
    return interval_deployment(settle_flow, SETTLE_DEPLOYMENT, settings, every_s=every_s, tags=["flywheel", "canary"],
                               description="Promotes or rolls back each running canary from live thumbs "
                                           "(see flywheel.registry.canary)")  # fmt: skip
