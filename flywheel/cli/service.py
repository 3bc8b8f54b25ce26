"""The long-running commands, the overview and the store's upkeep: `serve`, `up`, `status`, `compact`, `demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flywheel import store
from flywheel.cli.common import DataDir, app, database_of, fail, settings_of
from flywheel.settings import Settings


@app.command()
def serve(data_dir: DataDir = None,
          host: Annotated[str | None, typer.Option(help="Address to bind [default: 127.0.0.1].")] = None,
          port: Annotated[int | None, typer.Option(help="Port to bind [default: 8000].", min=1, max=65535)] = None,
          access_log: Annotated[bool, typer.Option(help="Log every request.")] = False) -> None:
    """Run the HTTP service: ingestion, feedback and the gateway."""
    settings = settings_of(data_dir)
    if host is not None:
        settings.host = host
    if port is not None:
        settings.port = port
    if store.is_lake(settings.db_path):  # a [store] that does not match the lake found: exit 2 before binding
        with store.connect(settings.db_path):
            pass
    from serving.app import serve as run

    run(settings, access_log=access_log)


@app.command()
def status(data_dir: DataDir = None, task: Annotated[str | None, typer.Option(help="Only this task.")] = None) -> None:
    """Traffic, feedback, datasets and candidates per task."""
    from rich.console import Console
    from rich.table import Table

    settings = settings_of(data_dir)
    database_of(settings)
    from flywheel.status import service_lines, task_overview

    with store.connect(settings.db_path, read_only=True) as con:
        rows = task_overview(con, task)
    for line in service_lines(settings.url):
        typer.echo(line)
    if not rows:
        if task:
            fail(f"no interactions for task {task!r}")
        typer.echo(f"no interactions in {settings.home} yet: send some to POST /v1/interactions")
        return
    table = Table("project", "task", "interactions", "errors", "feedback", "latest dataset (versions)",
                  "candidates ready/all", "serving", "last decision", "last seen (UTC)")  # fmt: skip
    for row in rows:
        table.add_row(*(str(v) for v in row))
    Console(width=max(200, Console().width)).print(table)
    from flywheel.registry.canary import canary_status, describe
    from flywheel.task import resolve_task

    with store.connect(settings.db_path, read_only=True) as con:
        for project_, task_ in sorted({(r[0], r[1]) for r in rows}):
            live = canary_status(con, project_, task_, resolve_task(settings, task_).gate)
            if live:
                typer.echo(f"{task_}: {describe(live)}")


@app.command()
def compact(data_dir: DataDir = None) -> None:
    """Lake store: merge small data files, expire old snapshots, delete unused files (safe while serving)."""
    from flywheel.store.compact import compact as run

    settings = settings_of(data_dir)
    database_of(settings)
    typer.echo(run(settings).summary())


def use_prefect_env(settings: Settings) -> None:
    """Prefect without a server unless one is configured: its files under the data folder."""
    import os

    from pipelines.up import prefect_env

    for name, value in prefect_env(settings.home.resolve()).items():
        os.environ.setdefault(name, value)


@app.command()
def up(data_dir: DataDir = None,
       port: Annotated[int | None, typer.Option(help="API port [default: 8000].", min=1, max=65535)] = None,
       prefect_port: Annotated[int, typer.Option(help="Prefect UI/API port.", min=1, max=65535)] = 4200,
       workers: Annotated[int, typer.Option(help="Run the flows on the Prefect process work pool `flywheel-process` with "
                                                 "this many workers, one flow run each at a time (different tasks' turns "
                                                 "in parallel); 0 serves them from one process.", min=0, max=64)] = 0) -> None:
    """The service, a local Prefect server (UI) and the scheduled flywheel flows, until Ctrl-C."""
    settings = settings_of(data_dir)
    if port is not None:
        settings.port = port
    use_prefect_env(settings)
    from pipelines.up import up as run_up

    try:
        run_up(settings, prefect_port=prefect_port, workers=workers)
    except RuntimeError as exc:
        fail(str(exc))


@app.command()
def demo(data_dir: Annotated[Path, typer.Option("--data-dir", help="The demo's folder, emptied first: never "
                                                "$FLYWHEEL_HOME or ./.flywheel, which hold real data.")] = Path(".flywheel-demo"),
         turns: Annotated[int, typer.Option(help="Turns of the loop.", min=1, max=10)] = 2,
         requests: Annotated[int | None, typer.Option(help="App requests per turn [default: 600 tiny, 300 smollm2].",
                                                      min=50, max=10_000, show_default=False)] = None,
         student: Annotated[str, typer.Option(help="The student: `smollm2` (LoRA on SmolLM2-135M-Instruct) or "
                                                   "`tiny` (a from-scratch model, fully fine-tuned: seconds per turn)."
                                              )] = "smollm2",
         agent: Annotated[bool, typer.Option("--agent", help="Also turn the loop once for the desk's tool-calling "
                                             "agent (a second adapter on the same base); slower: its prompts carry "
                                             "the tools.")] = False) -> None:
    """The whole loop on a simulated support desk: traffic, curation, training, benchmarks, promotion."""
    from pipelines.demo import run_demo

    if student not in ("tiny", "smollm2"):
        fail(f"--student: expected tiny or smollm2, got {student!r}", 2)
    run_demo(data_dir, turns=turns, per_turn=requests, student=student, with_agent=agent)
