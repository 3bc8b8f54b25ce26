"""What `flywheel up` serves, and how a flow becomes one of its deployments.

`build_deployments` lists them for the settings: one `flywheel` turn per `[tasks.NAME]` with its
cron schedule, plus the interval ones: the feedback trigger (`pipelines.turn`), `settle` and
`compact` (each flow's module says when it is wanted). Every deployment is built the same way
(`interval_deployment`, and the turns here): on the settings' data dir, one run at a time, with
the flow found by module path.
"""

from __future__ import annotations

from datetime import timedelta

from flywheel.settings import Settings


def _deployment(flow, name: str, settings: Settings, *, parameters: dict | None = None, **options):
    """`flow` (which takes `data_dir`) as a deployment on the settings' data dir; `options` are
    `to_deployment`'s (schedule, tags, description)."""
    from prefect.deployments.runner import EntrypointType

    # MODULE_PATH: a run imports the flow's module wherever the package is installed, not a file
    # path relative to the directory `flywheel up` was started in.
    # concurrency_limit=1: one run of a deployment at a time (a cron turn and a triggered turn of
    # one task wait for each other: one training, one promotion at a time).
    return flow.to_deployment(name=name, concurrency_limit=1,
                              parameters={**(parameters or {}), "data_dir": str(settings.home.resolve())},
                              entrypoint_type=EntrypointType.MODULE_PATH, **options)  # fmt: skip


def interval_deployment(flow, name: str, settings: Settings, *, every_s: float, tags: list[str], description: str):
    """The deployment of `flow` that `flywheel up` runs every `every_s` seconds."""
    return _deployment(flow, name, settings, interval=timedelta(seconds=every_s), tags=tags, description=description)


def build_deployments(settings: Settings, *, trigger_every_s: float = 60.0) -> list:
    """What `flywheel up` serves: a `flywheel` deployment per task with its cron schedule (none when
    `schedule` is empty), the feedback trigger when some task sets `min_new_feedback`, the
    `settle` deployment when some task sets `gate.canary_share`, and the `compact` deployment (every
    6 h) on a lake store."""
    from prefect.schedules import Cron

    # Imported here, not at the top: those modules build their interval deployments with this one.
    from pipelines.compact import compact_deployment
    from pipelines.settle import settle_deployment
    from pipelines.turn import (
        TRIGGER_DEPLOYMENT,
        deployment_name,
        feedback_trigger_flow,
        flywheel_flow,
    )

    deployments = [
        _deployment(flywheel_flow, deployment_name(name), settings, parameters={"task": name},
                    schedule=Cron(cfg.schedule, timezone="UTC") if cfg.schedule else None, tags=["flywheel", name],
                    description=f"One turn of the loop for task {name!r} (schedule: {cfg.schedule or 'none'})")
        for name, cfg in settings.tasks.items()
    ]
    if any(cfg.min_new_feedback for cfg in settings.tasks.values()):
        deployments.append(interval_deployment(
            feedback_trigger_flow, TRIGGER_DEPLOYMENT, settings, every_s=trigger_every_s, tags=["flywheel"],
            description="Starts a turn when a task has gathered min_new_feedback new feedback"))  # fmt: skip
    if (settle := settle_deployment(settings)) is not None:  # when some task runs canaries
        deployments.append(settle)
    if (compaction := compact_deployment(settings)) is not None:  # on a lake store
        deployments.append(compaction)
    return deployments
