"""One turn of the flywheel, stage by stage: curate → train → evaluate → gate → promote.

Each stage is a plain function (what `flywheel run` and the demo call, and what the tests use);
`pipelines/flywheel.py` wraps the same functions as Prefect tasks. A candidate is evaluated
through the serving tier (loaded there under its id first), against whatever holds the task's
`production` alias now, and promoted only when the gate says so; otherwise it is unloaded again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from flywheel import store
from flywheel.curate import CurationConfig, DatasetVersion, curate
from flywheel.deployments import deployments
from flywheel.keys import create_key, revoke_key
from flywheel.promotion import Decision, Evidence, GateConfig, decide, http_loader, promote
from flywheel.settings import Settings, TaskSettings
from flywheel.train import Candidate, TrainingError, train

log = logging.getLogger(__name__)


@dataclass
class Turn:
    """What one turn did, for the report and the summary table."""

    task: str
    dataset: DatasetVersion | None = None
    candidate: Candidate | None = None
    incumbent: str | None = None
    evidence: Evidence | None = None
    decision: Decision | None = None
    report: Any = None  # evals.EvalReport
    metrics: dict[str, Any] = field(default_factory=dict)


@contextmanager
def service_key(settings: Settings, project: str) -> Iterator[str]:
    """A key for the loop's own calls to the service, revoked when they are done."""
    with store.connect(settings.db_path) as con:
        key = create_key(con, project)
    try:
        yield key
    finally:
        try:
            with store.connect(settings.db_path) as con:
                revoke_key(con, key)
        except (store.StoreBusy, ValueError) as exc:  # the work is done (or an operator revoked it): report only
            log.warning("service key %s… not revoked (%s): run `flywheel keys revoke %s`", key[:10], exc, key[:10])


def task_settings(settings: Settings, task: str) -> TaskSettings:
    if task not in settings.tasks:
        raise KeyError(f"task {task!r} has no [tasks.{task}] section in {settings.home / 'flywheel.toml'}")
    return settings.tasks[task]


def production_model(settings: Settings, project: str, task: str) -> str | None:
    with store.connect(settings.db_path) as con:
        return next((d.model for d in deployments(con, project) if d.task == task and d.alias == "production"), None)


def curate_stage(settings: Settings, task: str) -> DatasetVersion:
    cfg = task_settings(settings, task)
    return curate(settings, project=cfg.project, task=task, config=CurationConfig.for_task(settings, task))


def train_stage(settings: Settings, task: str, dataset: DatasetVersion) -> Candidate:
    cfg = task_settings(settings, task)
    try:
        return train(settings, project=cfg.project, task=task, dataset_path=dataset.path, dataset_id=dataset.id,
                     recipe=cfg.recipe, base_model=cfg.base_model, teacher=cfg.teacher)  # fmt: skip
    except TrainingError as exc:  # registered as failed: the gate will refuse it
        return Candidate(exc.model_id or "failed", cfg.project, task, "?", cfg.base_model or "?", dataset.id,
                         Path("."), None, None, "", "failed", error=str(exc))  # fmt: skip


def _model_path(candidate: Candidate) -> str:
    return str(candidate.adapter_path or candidate.merged_path or candidate.path)


def _prices(settings: Settings, route: str | None) -> dict[str, float]:
    r = settings.routes.get(route or "")
    return {"prompt": r.usd_per_1k_prompt * 1000, "completion": r.usd_per_1k_completion * 1000} if r else {}


def evaluate_stage(settings: Settings, task: str, dataset: DatasetVersion, candidate: Candidate, *, key: str) -> Turn:
    """Load the candidate into the serving tier, benchmark it against production, gather the evidence."""
    from evals import ContaminationError, EndpointSampler, evaluate

    cfg = task_settings(settings, task)
    turn = Turn(task, dataset, candidate, incumbent=production_model(settings, cfg.project, task))
    verdicts: dict[str, str] = {}
    complete, contamination, cand_cost, inc_cost, p95 = False, None, None, None, None
    if candidate.status == "ready" and cfg.benchmark and turn.incumbent:
        http_loader(settings.url, key, cfg.route)(candidate.id, _model_path(candidate))
        incumbent_route = turn.incumbent if turn.incumbent in settings.routes else cfg.route
        sampler = EndpointSampler(f"{settings.url}/v1", candidate.id, api_key=key,
                                  prices={candidate.id: _prices(settings, cfg.route)})  # fmt: skip
        baseline = EndpointSampler(f"{settings.url}/v1", turn.incumbent, api_key=key,
                                   prices={turn.incumbent: _prices(settings, incumbent_route)})  # fmt: skip
        try:
            report = evaluate(settings, project=cfg.project, task=task, benchmark=cfg.benchmark, sampler=sampler,
                              baseline_sampler=baseline, train_dataset=dataset.path)  # fmt: skip
        except ContaminationError as exc:
            contamination = str(exc)
        else:
            turn.report = report
            if report.verdicts is not None:
                verdicts, complete = dict(report.verdicts.dimensions), report.verdicts.complete
            cand_cost = report.candidate.cost.get("per_1k_requests_usd")
            inc_cost = report.incumbent.cost.get("per_1k_requests_usd") if report.incumbent else None
            p95 = report.candidate.latency.get("p95_ms")
    turn.evidence = Evidence(candidate.status, complete, verdicts, latency_p95_ms=p95, cost_per_1k_usd=cand_cost,
                             incumbent_cost_per_1k_usd=inc_cost, contamination=contamination,
                             details={"candidate": candidate.id, "incumbent": turn.incumbent, "dataset": dataset.id,
                                      "report": str(turn.report.html_path) if turn.report else None,
                                      "training_error": candidate.error})  # fmt: skip
    return turn


def promote_stage(settings: Settings, turn: Turn, *, key: str) -> Turn:
    cfg = task_settings(settings, turn.task)
    turn.decision = decide(turn.evidence, GateConfig(**cfg.gate))
    candidate = turn.candidate
    promote(settings, project=cfg.project, task=turn.task, model=candidate.id, path=_model_path(candidate),
            decision=turn.decision, load=http_loader(settings.url, key, cfg.route))  # fmt: skip
    if not turn.decision.promote and candidate.status == "ready" and cfg.benchmark:
        httpx.post(f"{settings.url}/v1/unload_lora_adapter", json={"lora_name": candidate.id},
                   headers={"Authorization": f"Bearer {key}"}, timeout=60)  # tidy; a failure here changes nothing
    return turn


def run_turn(settings: Settings, task: str) -> Turn:
    """One whole turn for `task`, with the service of `settings` running."""
    cfg = task_settings(settings, task)
    with service_key(settings, cfg.project) as key:
        dataset = curate_stage(settings, task)
        candidate = train_stage(settings, task, dataset)
        turn = evaluate_stage(settings, task, dataset, candidate, key=key)
        return promote_stage(settings, turn, key=key)
