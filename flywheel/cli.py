"""`flywheel`: the one front door. Each command is a thin call into a plain function;
FastAPI, uvicorn and the other packages are imported inside the commands that need them."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from flywheel import store
from flywheel.settings import CONFIG_FILE, Settings, load_settings

app = typer.Typer(help="Flywheel: turn production LLM traffic into smaller, better models.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)  # fmt: skip
keys_app = typer.Typer(help="API keys (one project each).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data folder (default: $FLYWHEEL_HOME, else ./.flywheel).", show_default=False),
]

CONFIG_TEMPLATE = """\
# Flywheel settings. Environment variables FLYWHEEL_* override these
# (nested with __, e.g. FLYWHEEL_INGEST__MAX_ITEMS=500).
host = "127.0.0.1"
port = 8000
redact_pii = true            # default for every project

[ingest]
max_body_bytes = 16777216    # 413 above this
max_items = 5000             # items per request
max_queue_items = 100000     # 503 + Retry-After above this

# [projects.my-project]
# redact_pii = false
"""


def fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def _settings(data_dir: Path | None) -> Settings:
    try:
        return load_settings(data_dir)
    except Exception as exc:  # pydantic's ValidationError names the setting
        fail(f"invalid settings: {exc}", 2)


def _new_key(settings: Settings, project: str) -> str:
    from flywheel.keys import create_key

    try:
        with store.connect(settings.db_path) as con:
            return create_key(con, project)
    except ValueError as exc:
        fail(str(exc), 2)
    except store.StoreBusy as exc:
        fail(str(exc))


@app.command()
def init(data_dir: DataDir = None,
         project: Annotated[str, typer.Option(help="Project of the first API key.")] = "default") -> None:
    """Create the data folder, its config and database, and print a first API key (shown once)."""
    settings = _settings(data_dir)
    settings.home.mkdir(parents=True, exist_ok=True)
    config = settings.home / CONFIG_FILE
    if not config.exists():
        config.write_text(CONFIG_TEMPLATE)
    from flywheel.keys import active_keys

    with store.connect(settings.db_path) as con:
        has_keys = bool(active_keys(con))
    if has_keys:
        typer.echo(f"{settings.home} is already initialised; `flywheel keys create --project P` makes more keys.")
        return
    key = _new_key(settings, project)
    typer.echo(f"initialised {settings.home}")
    typer.echo(f"API key for project {project!r} (shown once, store it now):\n{key}")


@keys_app.command("create")
def keys_create(project: Annotated[str, typer.Option(help="The project the key reads and writes.")],
                data_dir: DataDir = None) -> None:
    """Print a new API key for PROJECT (only its hash is stored)."""
    typer.echo(_new_key(_settings(data_dir), project))


@app.command()
def serve(data_dir: DataDir = None,
          host: Annotated[str | None, typer.Option(help="Address to bind [default: 127.0.0.1].")] = None,
          port: Annotated[int | None, typer.Option(help="Port to bind [default: 8000].", min=1, max=65535)] = None,
          access_log: Annotated[bool, typer.Option(help="Log every request.")] = False) -> None:
    """Run the HTTP service: ingestion, feedback and the gateway."""
    settings = _settings(data_dir)
    if host is not None:
        settings.host = host
    if port is not None:
        settings.port = port
    from serving.app import serve as run

    run(settings, access_log=access_log)


@app.command()
def status(data_dir: DataDir = None, task: Annotated[str | None, typer.Option(help="Only this task.")] = None) -> None:
    """Traffic, feedback, datasets and candidates per task."""
    from rich.console import Console
    from rich.table import Table

    settings = _settings(data_dir)
    if not settings.db_path.exists():
        fail(f"no Flywheel data in {settings.home} (run `flywheel init`)")
    where, params = ("WHERE task = ?", [task]) if task else ("", [])
    with store.connect(settings.db_path, read_only=True) as con:
        rows = con.execute(
            "WITH i AS (SELECT project, task, count(*) AS n, count(*) FILTER (status = 'error') AS errors,"
            f"  max(ts) AS last_seen FROM interactions {where} GROUP BY ALL),"
            " f AS (SELECT i.project, i.task, count(*) AS n FROM feedback f"
            "  JOIN interactions i ON i.project = f.project AND i.id = f.interaction_id GROUP BY ALL),"
            " d AS (SELECT project, task, count(*) AS n FROM datasets GROUP BY ALL),"
            " m AS (SELECT project, task, count(*) AS n FROM models GROUP BY ALL)"
            " SELECT i.project, i.task, i.n, i.errors, coalesce(f.n, 0), coalesce(d.n, 0), coalesce(m.n, 0),"
            "  strftime(i.last_seen, '%Y-%m-%d %H:%M')"
            " FROM i LEFT JOIN f USING (project, task) LEFT JOIN d USING (project, task)"
            " LEFT JOIN m USING (project, task) ORDER BY i.project, i.task",
            params,
        ).fetchall()
    if not rows:
        if task:
            fail(f"no interactions for task {task!r}")
        typer.echo(f"no interactions in {settings.home} yet: send some to POST /v1/interactions")
        return
    table = Table("project", "task", "interactions", "errors", "feedback", "datasets", "candidates", "last seen (UTC)")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    Console(width=max(120, Console().width)).print(table)


Project = Annotated[str, typer.Option(help="The project whose traffic to use.")]
Task = Annotated[str, typer.Option("--task", help="The task (product feature), e.g. support-triage.")]


@app.command()
def curate(task: Task, data_dir: DataDir = None, project: Project = "default",
           config: Annotated[Path | None, typer.Option(help="Curation config (TOML/YAML/JSON).", exists=True,
                                                       dir_okay=False)] = None,
           since: Annotated[datetime | None, typer.Option(help="Only interactions from this time (UTC).")] = None,
           until: Annotated[datetime | None, typer.Option(help="Only interactions before this time (UTC).")] = None,
           ) -> None:  # fmt: skip
    """Curate the task's traffic and feedback into a versioned dataset (train / eval splits)."""
    from flywheel.curate import CurationConfig, CurationError, curate as run

    settings = _settings(data_dir)
    try:
        cfg = CurationConfig.from_file(config) if config else None
        version = run(settings, project=project, task=task, config=cfg, since=since, until=until)
    except CurationError as exc:
        fail(str(exc), 2)
    except store.StoreBusy as exc:
        fail(str(exc))
    typer.echo(version.report)
    typer.echo(f"dataset {version.id} {'written to' if version.created else 'already at'} {version.path}")


@app.command()
def demo(data_dir: DataDir = None,
         turns: Annotated[int, typer.Option(help="Turns of the loop.", min=1, max=10)] = 2,
         requests: Annotated[int, typer.Option(help="App requests per turn.", min=50, max=10_000)] = 600) -> None:
    """The whole loop on a simulated support desk: traffic, curation, training, benchmarks, promotion."""
    from pipelines.demo import run_demo

    run_demo(data_dir if data_dir is not None else Path(".flywheel-demo"), turns=turns, per_turn=requests)


def main() -> None:
    app(prog_name="flywheel")


if __name__ == "__main__":
    sys.exit(main())
