"""The `curate` Prefect flow: a thin wrapper around `flywheel.curate.pipeline.curate`.

The flow adds what Prefect is for: a visible run per curation, retries where I/O can fail
(the store may stay locked by the ingestion server for longer than one open's timeout, a disk
may be briefly full), and the curation report published as a Markdown artifact. Bad input
(`CurationError`: unknown task, empty selection, too few examples) is never retried: trying
again cannot fix it, so the run fails at once with the reason.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, task

from flywheel.curate.pipeline import CurationConfig, CurationError, curate
from flywheel.settings import load_settings
from flywheel.task import resolve_task
from pipelines.retries import publish_markdown, retry_unless

# Retry store and file-system failures, never a `CurationError`: trying again cannot fix bad input.
_retry_io = retry_unless(CurationError)


@task(name="load-curation-config")
def load_config(data_dir: str | None, task: str, config: dict[str, Any] | None = None,
                config_path: str | None = None) -> CurationConfig:
    """The task's `curation` table in flywheel.toml, a file's keys over it, then the dict's."""
    return resolve_task(load_settings(data_dir), task).curation_with(config_path, config)


@task(name="curate-dataset", retries=3, retry_delay_seconds=[5, 15, 45], retry_condition_fn=_retry_io)
def curate_dataset(data_dir: str | None, project: str, task: str, config: CurationConfig,
                   since: datetime | None, until: datetime | None) -> dict[str, Any]:
    version = curate(load_settings(data_dir), project=project, task=task, config=config, since=since, until=until)
    return {"id": version.id, "path": str(version.path), "counts": version.counts, "created": version.created,
            "parent_id": version.parent_id, "report": version.report}  # fmt: skip


@task(name="publish-curation-report", retries=2, retry_delay_seconds=2)
def publish_report(task: str, version: dict[str, Any]) -> None:
    publish_markdown("curation", task, version["report"], f"Curation of {task}: dataset version {version['id']}")


@flow(name="curate")
def curate_flow(task: str, project: str | None = None, data_dir: str | None = None,
                config: dict[str, Any] | None = None, config_path: str | None = None,
                since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    """Curate one task's traffic into a dataset version and publish its report (project and
    config default to the task's section in flywheel.toml)."""
    data_dir = str(Path(data_dir)) if data_dir else None
    cfg = load_config(data_dir, task, config, config_path)
    project = resolve_task(load_settings(data_dir), task, project=project).project
    version = curate_dataset(data_dir, project, task, cfg, since, until)
    publish_report(task, version)
    return version
