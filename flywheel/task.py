"""A task resolved once: its `[tasks.NAME]` section of flywheel.toml with the curation config and
the gate already parsed, what the caller gave over it, and one default project.

Every entry point (the CLI, the flows, the loop, the demo) calls `resolve_task` and passes the
`Task` down, so a task trains, curates and promotes the same way whoever starts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flywheel.curate.config import CurationConfig, file_table
from flywheel.registry.promotion import GateConfig
from flywheel.settings import CONFIG_FILE, Settings, TaskSettings


class UnknownTask(KeyError):
    """The loop needs a `[tasks.NAME]` section (a benchmark, a route); this task has none."""

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class Task:
    """One product feature and how the loop turns for it."""

    name: str
    project: str
    recipe: str
    base_model: str | None = None
    teacher: str | None = None
    benchmark: str | None = None
    route: str | None = None
    curation: CurationConfig = field(default_factory=CurationConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    schedule: str | None = None
    min_new_feedback: int | None = None
    latency_slo_ms: float | None = None
    configured: bool = False  # flywheel.toml has a [tasks.NAME] section

    def curation_with(self, path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> CurationConfig:
        """The task's curation config with the keys of a file, then `overrides`, over it."""
        if path is None and not overrides:
            return self.curation
        return CurationConfig.from_dict({**self.curation.to_dict(), **file_table(path),
                                         **(overrides or {})})  # fmt: skip


def resolve_task(settings: Settings, name: str, *, project: str | None = None, recipe: str | Path | None = None,
                 base_model: str | None = None, teacher: str | None = None, required: bool = False) -> Task:
    """What the caller gives, else what `[tasks.NAME]` sets, else the defaults of `TaskSettings`
    (project `default`, recipe `sft`). `required`: an unconfigured task is an `UnknownTask`."""
    section = settings.tasks.get(name)
    if section is None and required:
        raise UnknownTask(f"task {name!r} has no [tasks.{name}] section in {settings.home / CONFIG_FILE}")
    section = section or TaskSettings()
    return Task(name=name, project=project or section.project, recipe=str(recipe or section.recipe),
                base_model=base_model or section.base_model, teacher=teacher or section.teacher,
                benchmark=section.benchmark, route=section.route, curation=CurationConfig.from_dict(section.curation),
                gate=GateConfig(**section.gate), schedule=section.schedule, min_new_feedback=section.min_new_feedback,
                latency_slo_ms=section.latency_slo_ms,
                configured=name in settings.tasks)  # fmt: skip
