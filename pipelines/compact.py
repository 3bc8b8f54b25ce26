"""The `compact` Prefect flow: the lake's maintenance (`flywheel.store.compact`) on a schedule.

Why a flow of its own: compaction has nothing to do with a task's turn; it depends on how much
the replicas ingested, so it runs on an interval, every few hours, beside them (it is safe while
they write). The work is the plain function `compact` (what `flywheel compact` calls); this
module adds retries for a busy or briefly unreachable catalog, the report as an artifact, and
`compact_deployment` for whoever serves the deployments (`flywheel up`, infra/prefect.yaml).
"""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flywheel.settings import Settings, load_settings
from flywheel.store.compact import CompactionReport, compact
from pipelines.deployments import interval_deployment
from pipelines.retries import publish_markdown, retry_io

COMPACT_DEPLOYMENT = "compact"


@task(name="compact-lake", retries=2, retry_delay_seconds=[30, 120], retry_condition_fn=retry_io,
      cache_policy=NO_CACHE)  # fmt: skip
def compact_task(settings: Settings) -> CompactionReport:
    return compact(settings)


@flow(name="compact")
def compact_flow(data_dir: str | None = None) -> dict[str, int | str]:
    """Compact the store of `data_dir` (on the file store: nothing to do, reported)."""
    report = compact_task(load_settings(data_dir))
    publish_markdown("compact", "store", f"# Compaction\n\n{report.summary()}\n", report.summary())
    return {"store": report.store, "files_before": report.files_before, "files_after": report.files_after,
            "snapshots_expired": report.snapshots_expired, "files_deleted": report.files_deleted}  # fmt: skip


def compact_deployment(settings: Settings, *, every_s: float = 6 * 3600.0):
    """The interval deployment of `compact_flow` for a lake store, else None (nothing to compact)."""
    if settings.store.kind != "lake":
        return None
    return interval_deployment(compact_flow, COMPACT_DEPLOYMENT, settings, every_s=every_s, tags=["flywheel", "store"],
                               description="Merges the lake's small files, expires old snapshots, deletes unused files "
                                           "(flywheel.store.compact)")  # fmt: skip
