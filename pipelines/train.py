"""Prefect flow `train`: one training run for a task, shown in the Prefect UI with its loss log.

A thin wrapper: `flywheel.train.run.train` / `train_latest` does the work; this module adds the run
logger (loss lines in the flow run's log), and the candidate's model card as a Prefect artifact.
No automatic retries: a crashed run is resumed from its last checkpoint by running the flow again
(same task, recipe and dataset), while a guard failure (NaN loss, OOM) would only fail again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow, task

from pipelines.retries import publish_markdown


def _logger():
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:  # called with `.fn()` outside a run
        return logging.getLogger("flywheel.train")


def _loss_logger(logger):
    from transformers import TrainerCallback

    class PrefectLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            shown = {k: round(v, 5) for k, v in (logs or {}).items() if k in ("loss", "eval_loss", "learning_rate") and isinstance(v, float)}
            if shown:
                logger.info("step %d/%d %s", state.global_step, state.max_steps, shown)

    return PrefectLog()


@task(name="train-candidate")
def train_candidate(
    *,
    task_name: str,
    recipe: str | None = None,
    data_dir: str | None = None,
    project: str | None = None,
    dataset_path: str | None = None,
    dataset_id: str | None = None,
    base_model: str | None = None,
    teacher: str | None = None,
) -> dict[str, Any]:
    """Train one candidate; return its summary (id, status, paths, metrics). Recipe, project, base
    model and teacher default to the task's section in flywheel.toml."""
    from flywheel.settings import load_settings
    from flywheel.task import resolve_task
    from flywheel.train.run import train, train_latest

    settings = load_settings(data_dir)
    logger = _logger()
    task = resolve_task(settings, task_name, project=project, recipe=recipe, base_model=base_model, teacher=teacher)
    if dataset_path:
        candidate = train(settings, project=task.project, task=task.name, dataset_path=dataset_path, dataset_id=dataset_id,
                          recipe=task.recipe, base_model=task.base_model, teacher=task.teacher,
                          callbacks=[_loss_logger(logger)])  # fmt: skip
    else:
        candidate = train_latest(settings, task, callbacks=[_loss_logger(logger)])
    logger.info("candidate %s %s: %s", candidate.id, candidate.status, candidate.metrics)
    return {
        "id": candidate.id,
        "status": candidate.status,
        "method": candidate.method,
        "path": str(candidate.path),
        "adapter_path": str(candidate.adapter_path) if candidate.adapter_path else None,
        "merged_path": str(candidate.merged_path) if candidate.merged_path else None,
        "metrics": candidate.metrics,
    }


@task(name="publish-card")
def publish_card(summary: dict[str, Any], task_name: str) -> None:
    """The model card as a markdown artifact of the flow run."""
    publish_markdown("train", task_name, (Path(summary["path"]) / "README.md").read_text(), f"candidate {summary['id']}")


@flow(name="train")
def train_flow(
    task: str,
    recipe: str | None = None,
    data_dir: str | None = None,
    project: str | None = None,
    dataset_path: str | None = None,
    base_model: str | None = None,
    teacher: str | None = None,
) -> dict[str, Any]:
    """Train a candidate for `task` on its newest curated dataset (or `dataset_path`)."""
    summary = train_candidate(
        task_name=task, recipe=recipe, data_dir=data_dir, project=project, dataset_path=dataset_path, base_model=base_model, teacher=teacher
    )
    publish_card(summary, task)
    return summary
