"""What every command shares: the app, the common options, settings loading and the exit codes
(0 success, 1 failure, 2 bad usage, with a message naming the option)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from flywheel import store
from flywheel.settings import Settings, load_settings
from flywheel.task import Task, UnknownTask, resolve_task

app = typer.Typer(help="Flywheel: turn production LLM traffic into smaller, better models.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)  # fmt: skip

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data folder (default: $FLYWHEEL_HOME, else ./.flywheel).", show_default=False),
]

Project = Annotated[str | None, typer.Option(help="The project [default: the task's in flywheel.toml, else default].",
                                             show_default=False)]
TaskName = Annotated[str, typer.Option("--task", help="The task (product feature), e.g. support-triage.")]


def error(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)


def fail(message: str, code: int = 1) -> NoReturn:
    error(message)
    raise typer.Exit(code)


def settings_of(data_dir: Path | None) -> Settings:
    try:
        return load_settings(data_dir)
    except Exception as exc:  # pydantic's ValidationError names the setting
        fail(f"invalid settings: {exc}", 2)


def database_of(settings: Settings) -> Path:
    """The database file, or exit 2 when the data folder has none."""
    if not settings.db_path.exists():
        fail(f"--data-dir: no Flywheel database in {settings.home} (run `flywheel init`)", 2)
    return settings.db_path


def new_key(settings: Settings, project: str, role: str = "app") -> str:
    from flywheel.registry.keys import create_key

    try:
        with store.connect(settings.db_path) as con:
            return create_key(con, project, role)
    except ValueError as exc:
        fail(str(exc), 2)


def task_of(settings: Settings, name: str, *, required: bool = False, **given) -> Task:
    """The task resolved once (exit 2 naming the problem when its config is bad or it is unknown)."""
    try:
        return resolve_task(settings, name, required=required, **given)
    except (UnknownTask, ValueError, TypeError) as exc:
        fail(f"--task: {exc}", 2)
