"""The stages of one turn of the flywheel as plain functions: curate → train → evaluate → gate → promote.

`pipelines.turn.flywheel_flow` chains them as Prefect tasks (the one place a turn is written);
the CLI's single-stage commands and the tests call them directly. A candidate is evaluated
through the serving tier (loaded there under its id first), against whatever holds the task's
`production` alias now, and promoted only when the gate says so; otherwise it is unloaded again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel import store
from flywheel.curate.config import DatasetVersion
from flywheel.curate.pipeline import curate
from flywheel.optimize.variants import apply_option
from flywheel.registry.deployments import holder
from flywheel.registry.keys import create_key, revoke_key
from flywheel.registry.promotion import (
    Decision,
    Evidence,
    decide,
    http_loader,
    http_unloader,
    promote,
)
from flywheel.settings import Settings
from flywheel.task import Task
from flywheel.train.run import Candidate, TrainingError, train

if TYPE_CHECKING:
    from evals.optimizer import Optimization

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
    alias: str | None = None  # what the candidate took: production, or canary when the gate sets a share


@contextmanager
def service_key(settings: Settings, project: str) -> Iterator[str]:
    """A key for the loop's own calls to the service, revoked when they are done: an admin key of
    the task's project, since the loop loads and unloads that project's models."""
    with store.connect(settings.db_path) as con:
        key = create_key(con, project, "admin")
    try:
        yield key
    finally:
        try:
            with store.connect(settings.db_path) as con:
                revoke_key(con, key)
        except (store.StoreBusy, ValueError) as exc:  # the work is done (or an operator revoked it): report only
            log.warning("service key %s… not revoked (%s): run `flywheel keys revoke %s`", key[:10], exc, key[:10])


def service_loader(settings: Settings, task: Task) -> Callable[[str, str], None]:
    """`load(model, path)` through the running service, with a key made only when a model is
    actually loaded (a settle that only waits needs neither key nor service)."""

    def load(name: str, path: str) -> None:
        with service_key(settings, task.project) as key:
            http_loader(settings.url, key, task.route)(name, path)

    return load


def production_model(settings: Settings, project: str, task: str) -> str | None:
    with store.connect(settings.db_path) as con:
        return holder(con, project=project, task=task)


def curate_stage(settings: Settings, task: Task) -> DatasetVersion:
    return curate(settings, project=task.project, task=task.name, config=task.curation)


def train_stage(settings: Settings, task: Task, dataset: DatasetVersion) -> Candidate:
    try:
        return train(settings, project=task.project, task=task.name, dataset_path=dataset.path, dataset_id=dataset.id,
                     recipe=task.recipe, base_model=task.base_model, teacher=task.teacher)  # fmt: skip
    except TrainingError as exc:  # registered as failed: the gate will refuse it
        return Candidate(exc.model_id or "failed", task.project, task.name, "?", task.base_model or "?", dataset.id,
                         Path("."), None, None, "", "failed", error=str(exc))  # fmt: skip


def _model_path(candidate: Candidate) -> str:
    return str(candidate.adapter_path or candidate.merged_path or candidate.path)


def _prices(settings: Settings, route: str | None) -> dict[str, float]:
    r = settings.routes.get(route or "")
    return {"prompt": r.usd_per_1k_prompt * 1000, "completion": r.usd_per_1k_completion * 1000} if r else {}


def evaluate_stage(settings: Settings, task: Task, dataset: DatasetVersion, candidate: Candidate, *, key: str) -> Turn:
    """Load the candidate into the serving tier, benchmark it against production, gather the evidence."""
    from evals import ContaminationError, EndpointSampler, evaluate

    turn = Turn(task.name, dataset, candidate, incumbent=production_model(settings, task.project, task.name))
    verdicts: dict[str, str] = {}
    measured: dict = {}  # the quality test's CI and sample size (Verdicts.gate_evidence)
    complete, contamination, cand_cost, inc_cost, p95 = False, None, None, None, None
    if candidate.status == "ready" and task.benchmark and turn.incumbent:
        http_loader(settings.url, key, task.route)(candidate.id, _model_path(candidate))
        incumbent_route = turn.incumbent if turn.incumbent in settings.routes else task.route
        sampler = EndpointSampler(f"{settings.url}/v1", candidate.id, api_key=key,
                                  prices={candidate.id: _prices(settings, task.route)})  # fmt: skip
        baseline = EndpointSampler(f"{settings.url}/v1", turn.incumbent, api_key=key,
                                   prices={turn.incumbent: _prices(settings, incumbent_route)})  # fmt: skip
        try:
            report = evaluate(settings, project=task.project, task=task.name, benchmark=task.benchmark, sampler=sampler,
                              baseline_sampler=baseline, train_dataset=dataset.path)  # fmt: skip
        except ContaminationError as exc:
            contamination = str(exc)
        else:
            turn.report = report
            if report.verdicts is not None:
                verdicts, complete = dict(report.verdicts.dimensions), report.verdicts.complete
                measured = report.verdicts.gate_evidence()
            cand_cost = report.candidate.cost.get("per_1k_requests_usd")
            inc_cost = report.incumbent.cost.get("per_1k_requests_usd") if report.incumbent else None
            p95 = report.candidate.latency.get("p95_ms")
    turn.evidence = Evidence(candidate.status, complete, verdicts, latency_p95_ms=p95, cost_per_1k_usd=cand_cost,
                             incumbent_cost_per_1k_usd=inc_cost, contamination=contamination, **measured,
                             details={"candidate": candidate.id, "incumbent": turn.incumbent, "dataset": dataset.id,
                                      "report": str(turn.report.html_path) if turn.report else None,
                                      "training_error": candidate.error})  # fmt: skip
    return turn


def promote_stage(settings: Settings, task: Task, turn: Turn, *, key: str) -> Turn:
    turn.decision = decide(turn.evidence, task.gate)
    candidate = turn.candidate
    deployment = promote(settings, project=task.project, task=turn.task, model=candidate.id, path=_model_path(candidate),
            decision=turn.decision, load=http_loader(settings.url, key, task.route))  # fmt: skip
    turn.alias = deployment.alias if deployment else None
    if not turn.decision.promote and candidate.status == "ready" and task.benchmark:
        http_unloader(settings.url, key)(candidate.id)
    return turn


def optimize_stage(settings: Settings, task: Task, *, key: str, apply: bool = True) -> Optimization:
    """Search the serving options of the task's production model through the serving tier (evals.optimizer),
    write the report, and apply the pick (unless `apply` is false): production moves to it."""
    from evals import EndpointSampler
    from evals.optimizer import Service, optimize, write_report

    service = Service(load=http_loader(settings.url, key, task.route), unload=http_unloader(settings.url, key),
                      sampler=lambda model, concurrency: EndpointSampler(f"{settings.url}/v1", model, api_key=key,
                                                                         concurrency=concurrency))  # fmt: skip
    result = optimize(settings, task, service)
    result.report = write_report(settings, result)
    if apply and result.pick is not None:
        apply_option(settings, project=task.project, task=task.name, model=result.pick.model,
                     path=result.folders[result.pick.option], reason=f"optimize: {result.reason}",
                     evidence=result.evidence(), load=service.load)  # fmt: skip
        result.applied = True
    return result
