"""The `flywheel` Prefect flow: one turn of the loop (curate → train → evaluate → gate → promote →
optimize, the last when a promotion reached production and `[optimize] after_promotion` is on).

The one place a turn is written: `flywheel run`, the demo and the schedules all run this flow.
It chains the plain stage functions of `pipelines.loop` as Prefect tasks, so a turn shows in the
Prefect UI stage by stage, with
retries where only I/O failed and the turn's report (dataset, candidate, benchmark verdicts with
their confidence intervals, the gate's decision and reasons) as a Markdown artifact.

Retries: curation and evaluation are retried when the cause is transient I/O (the store locked by
the ingestion service for longer than one open's own backoff, the service briefly unreachable, a
full disk); bad input is not, trying again cannot fix it. Training is never retried automatically
(a guard failure would only fail again, and a crashed run is resumed by running the turn again),
and neither is promotion: it changes what production serves and appends to the deployment
history, so it runs once per turn and an operator decides about a second attempt.

Also here: the `feedback-trigger` flow, which `flywheel up` runs on an interval
(`pipelines.deployments`, which also deploys this flow per `[tasks.NAME]` with its cron schedule):
it starts a turn when a task has gathered `min_new_feedback` new feedback items since its last
turn (`feedback_since_last_turn`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flywheel import store
from flywheel.curate.config import DatasetVersion
from flywheel.settings import Settings, load_settings
from flywheel.task import Task, resolve_task
from flywheel.train.run import Candidate
from pipelines.loop import (
    Turn,
    curate_stage,
    evaluate_stage,
    optimize_stage,
    promote_stage,
    service_key,
    train_stage,
)
from pipelines.retries import (
    publish_markdown,
    publish_table,
    retry_io,
)

TRIGGER_DEPLOYMENT = "feedback-trigger"


def deployment_name(task_name: str) -> str:
    return f"flywheel-{task_name}"


# --- the stages as tasks. NO_CACHE: every turn must really run; a cached curation or training
# would silently replay an old turn (and Settings need not be hashable).


@task(name="curate", retries=3, retry_delay_seconds=[5, 15, 45], retry_condition_fn=retry_io, cache_policy=NO_CACHE)
def curate_task(settings: Settings, task: Task) -> DatasetVersion:
    return curate_stage(settings, task)


@task(name="train", cache_policy=NO_CACHE)  # never retried automatically, see the module docstring
def train_task(settings: Settings, task: Task, dataset: DatasetVersion) -> Candidate:
    return train_stage(settings, task, dataset)


@task(name="evaluate", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=retry_io, cache_policy=NO_CACHE)
def evaluate_task(settings: Settings, task: Task, dataset: DatasetVersion, candidate: Candidate, key: str) -> Turn:
    return evaluate_stage(settings, task, dataset, candidate, key=key)


@task(name="gate-and-promote", cache_policy=NO_CACHE)  # changes production: once per turn
def promote_task(settings: Settings, task: Task, turn: Turn, key: str) -> Turn:
    return promote_stage(settings, task, turn, key=key)


@task(name="optimize", cache_policy=NO_CACHE)  # changes production too: once per turn
def optimize_task(settings: Settings, task: Task, key: str) -> dict[str, Any]:
    """The 3D search over the new production model's serving options; its report as artifacts. A search
    that fails is reported, not raised: the promotion before it stands, and the turn is not a failure."""
    from prefect.logging import get_run_logger

    from evals.optimizer import markdown

    try:
        result = optimize_stage(settings, task, key=key)
    except Exception as exc:  # noqa: BLE001 - whatever broke the search, production is the promoted model
        reason = f"the search failed, nothing changed: {type(exc).__name__}: {exc}"
        get_run_logger().error("optimize %s: %s", task.name, reason)
        publish_markdown("optimize", task.name, f"# Optimize `{task.name}`\n\n**{reason}**\n", f"Optimize {task.name}: {reason}")
        return {"applied": None, "reason": reason, "report": None}
    publish_markdown("optimize", task.name, markdown(result), f"Optimize {task.name}: {result.reason}")
    publish_table("optimize", task.name, [{"option": m.option.name, "examples": m.examples, result.metric: m.quality,
                                           "verdict": m.verdict, "p95_ms": m.p95_ms, "compute_s_per_1k": m.compute_s_per_1k,
                                           "cost_per_1k_usd": m.cost_per_1k_usd, "outcome": m.outcome}
                                          for m in result.measured],
                  f"Serving options of {result.parent}; Pareto frontier: {', '.join(result.frontier) or '-'}")  # fmt: skip
    return {"applied": result.pick.option.name if result.applied else None, "reason": result.reason,
            "report": str(result.report)}  # fmt: skip


def _fmt(value: Any, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec) if isinstance(value, int | float) else str(value)


def turn_markdown(turn: Turn) -> str:
    """The turn's report: dataset counts, candidate, benchmark verdicts with CIs, gate decision."""
    lines = [f"# Flywheel turn: `{turn.task}`", ""]
    ds = turn.dataset
    if ds is not None:
        lines += [f"## Dataset `{ds.id}`" + ("" if ds.created else " (unchanged since the last curation)"), "",
                  "| count | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in ds.counts.items()), ""]  # fmt: skip
    c = turn.candidate
    if c is not None:
        lines += ["## Candidate", "", f"- id: `{c.id}`", f"- status: **{c.status}**", f"- method: {c.method}",
                  f"- base model: `{c.base_model}`"]  # fmt: skip
        if c.error:
            lines.append(f"- training error: {c.error}")
        lines.append("")
    lines += [f"Incumbent (holds `production`): `{turn.incumbent or 'none'}`", ""]
    verdicts = turn.report.verdicts if turn.report is not None else None
    if verdicts is not None and verdicts.comparisons:
        lines += ["## Benchmark: candidate vs incumbent", "",
                  "| metric | dimension | candidate | incumbent | diff | CI of diff | verdict |", "|---|---|---|---|---|---|---|",
                  *(f"| {x.metric} | {x.dimension} | {_fmt(x.candidate)} | {_fmt(x.incumbent)} | {_fmt(x.diff, '+.4g')} "
                    f"| [{_fmt(x.ci_low, '+.4g')}, {_fmt(x.ci_high, '+.4g')}] | **{x.verdict}** |" for x in verdicts.comparisons),
                  ""]  # fmt: skip
        if not verdicts.complete:
            lines += [f"Incomplete comparison: {verdicts.reason}", ""]
    else:
        why = (turn.evidence.contamination and f"contaminated benchmark: {turn.evidence.contamination}") if turn.evidence else None
        lines += ["## Benchmark", "", f"Not run: {why or 'no benchmark, no incumbent, or no ready candidate'}.", ""]
    if turn.report is not None:
        lines += [f"Full report: `{turn.report.html_path}`", ""]
    d = turn.decision
    if d is not None:
        label = "REFUSED" if not d.promote else "CANARY" if turn.alias == "canary" else "PROMOTED"
        lines += [f"## Gate: {label}", "", *(f"- {r}" for r in d.reasons), ""]
    return "\n".join(lines)


def turn_summary(turn: Turn) -> dict[str, Any]:
    """The flow's result: small and JSON-able (it shows in the UI and may be persisted)."""
    verdicts = turn.report.verdicts if turn.report is not None else None
    return {
        "task": turn.task,
        "dataset": {"id": turn.dataset.id, "counts": turn.dataset.counts} if turn.dataset else None,
        "candidate": {"id": turn.candidate.id, "status": turn.candidate.status, "error": turn.candidate.error}
        if turn.candidate else None,
        "incumbent": turn.incumbent,
        "verdicts": dict(verdicts.dimensions) if verdicts else {},
        "comparisons": [{"metric": x.metric, "dimension": x.dimension, "candidate": x.candidate, "incumbent": x.incumbent,
                         "diff": x.diff, "ci_low": x.ci_low, "ci_high": x.ci_high, "verdict": x.verdict}
                        for x in (verdicts.comparisons if verdicts else [])],
        "promoted": bool(turn.decision and turn.decision.promote),
        "reasons": list(turn.decision.reasons) if turn.decision else [],
        "report": str(turn.report.html_path) if turn.report is not None else None,
        "charts": [str(c) for c in getattr(turn.report, "charts", [])],
        "evidence": {k: getattr(turn.evidence, k) for k in ("latency_p95_ms", "cost_per_1k_usd", "incumbent_cost_per_1k_usd")}
        if turn.evidence else {},
    }  # fmt: skip


@task(name="publish-turn-report", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def publish_task(turn: Turn) -> None:
    verdict = "promoted" if turn.decision and turn.decision.promote else "refused"
    publish_markdown("flywheel", turn.task, turn_markdown(turn),
                     f"Flywheel turn of {turn.task}: candidate {turn.candidate.id if turn.candidate else '-'} {verdict}")


@flow(name="flywheel")
def flywheel_flow(task: str, data_dir: str | None = None) -> dict:
    """One turn of the loop for `task`; the Flywheel service for `data_dir` must be running."""
    settings = load_settings(data_dir)
    resolved = resolve_task(settings, task, required=True)  # an unknown task fails the run at once, with the reason
    with service_key(settings, resolved.project) as key:  # revoked when the turn's service calls are done
        dataset = curate_task(settings, resolved)
        candidate = train_task(settings, resolved, dataset)
        turn = evaluate_task(settings, resolved, dataset, candidate, key)
        turn = promote_task(settings, resolved, turn, key)
        optimized = (optimize_task(settings, resolved, key)
                     if turn.alias == "production" and settings.optimize.after_promotion else None)  # fmt: skip
    publish_task(turn)
    return {**turn_summary(turn), "optimized": optimized}


# --- the feedback trigger


def feedback_since_last_turn(settings: Settings, task: str, *, since: datetime | None = None) -> int:
    """Feedback rows on `task`'s interactions received after its last turn (the task's newest
    `deployment_events` row: a promotion, refusal or rollback; a canary's
    `wait` is not a turn), or all of them when there was none.
    `since` (UTC) raises the bound further, e.g. to the start of the last run that ended before
    promoting anything (a failed curation), so the trigger does not fire again on the same feedback."""
    project = resolve_task(settings, task, required=True).project  # an unknown task: UnknownTask (a KeyError)
    if not settings.db_path.exists():
        return 0
    with store.connect(settings.db_path, read_only=True) as con:
        # deployment_events.ts defaults to current_timestamp, which DuckDB stores as *local* time,
        # while received_at is UTC: convert (this process has the writer's TimeZone setting).
        row = con.execute(
            "SELECT max(ts)::TIMESTAMPTZ AT TIME ZONE 'UTC' FROM deployment_events"
            " WHERE project = ? AND task = ? AND action <> 'wait'",
            [project, task]).fetchone()  # fmt: skip
        bounds = [b for b in (row[0] if row else None, store.naive_utc(since)) if b is not None]
        after = max(bounds) if bounds else datetime(1970, 1, 1)
        return con.execute(
            "SELECT count(*) FROM feedback f JOIN interactions i ON i.project = f.project AND i.id = f.interaction_id"
            " WHERE i.project = ? AND i.task = ? AND f.received_at > ?", [project, task, after]).fetchone()[0]  # fmt: skip


def _last_run(client, deployment_id) -> Any:
    """The newest run of a deployment that was due by now (future cron runs are not counted)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterExpectedStartTime,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
                                      expected_start_time=FlowRunFilterExpectedStartTime(before_=datetime.now(UTC))),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1)  # fmt: skip
    return runs[0] if runs else None


@flow(name="feedback-trigger")
def feedback_trigger_flow(data_dir: str | None = None) -> dict[str, str]:
    """For every task with `min_new_feedback`: start its `flywheel` deployment when that much new
    feedback arrived since its last turn, unless a turn of it is already due or running."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.logging import get_run_logger

    logger = get_run_logger()
    settings = load_settings(data_dir)
    outcome: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        for name, cfg in settings.tasks.items():
            if not cfg.min_new_feedback:
                continue
            try:
                deployment = client.read_deployment_by_name(f"flywheel/{deployment_name(name)}")
            except ObjectNotFound:
                outcome[name] = "no deployment"
                continue
            last = _last_run(client, deployment.id)
            if last is not None and last.state is not None and not last.state.is_final():
                outcome[name] = f"turn {last.name} is {last.state.name.lower()}"  # the count stays high until it ends
                continue
            since = (last.start_time or last.expected_start_time) if last is not None else None
            n = feedback_since_last_turn(settings, name, since=since)
            if n < cfg.min_new_feedback:
                outcome[name] = f"waiting: {n}/{cfg.min_new_feedback} new feedback"
                continue
            run = client.create_flow_run_from_deployment(deployment.id, tags=["feedback-trigger"])
            outcome[name] = f"started {run.name}: {n} new feedback >= {cfg.min_new_feedback}"
            logger.info("%s: %s", name, outcome[name])
    return outcome
