"""`flywheel`: the one front door. Each command is a thin call into a plain function;
FastAPI, uvicorn and the other packages are imported inside the commands that need them."""

from __future__ import annotations

import sys
from contextlib import nullcontext
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

Project = Annotated[str | None, typer.Option(help="The project [default: the task's in flywheel.toml, else default].",
                                             show_default=False)]
Task = Annotated[str, typer.Option("--task", help="The task (product feature), e.g. support-triage.")]

CONFIG_TEMPLATE = """\
# Flywheel settings. Environment variables FLYWHEEL_* override these
# (nested with __, e.g. FLYWHEEL_INGEST__MAX_ITEMS=500).
host = "127.0.0.1"
port = 8000
redact_pii = true            # default for every project
key_refresh_s = 5.0          # a revoked API key is refused within this time

[ingest]
max_body_bytes = 16777216    # 413 above this
max_items = 5000             # items per request
max_queue_items = 100000     # 503 + Retry-After above this

# [projects.my-project]
# redact_pii = false
"""


def _error(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)


def fail(message: str, code: int = 1) -> NoReturn:
    _error(message)
    raise typer.Exit(code)


def _settings(data_dir: Path | None) -> Settings:
    try:
        return load_settings(data_dir)
    except Exception as exc:  # pydantic's ValidationError names the setting
        fail(f"invalid settings: {exc}", 2)


def _database(settings: Settings) -> Path:
    """The database file, or exit 2 when the data folder has none."""
    if not settings.db_path.exists():
        fail(f"--data-dir: no Flywheel database in {settings.home} (run `flywheel init`)", 2)
    return settings.db_path


def _new_key(settings: Settings, project: str) -> str:
    from flywheel.keys import create_key

    try:
        with store.connect(settings.db_path) as con:
            return create_key(con, project)
    except ValueError as exc:
        fail(str(exc), 2)


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


@keys_app.command("list")
def keys_list(data_dir: DataDir = None) -> None:
    """List the keys by prefix: project, created, revoked (the keys themselves are not stored)."""
    from flywheel.keys import list_keys

    with store.connect(_database(_settings(data_dir)), read_only=True) as con:
        rows = list_keys(con)
    typer.echo(f"{'prefix':<12} {'project':<20} {'created (UTC)':<20} revoked (UTC)")
    for prefix, project, created, revoked in rows:
        typer.echo(f"{prefix:<12} {project:<20} {created:%Y-%m-%d %H:%M:%S}  {f'{revoked:%Y-%m-%d %H:%M:%S}' if revoked else '-'}")


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The key, or its prefix as `flywheel keys list` shows it.")],
                data_dir: DataDir = None) -> None:
    """Revoke a key: a running service refuses it within `key_refresh_s` (default 5 s)."""
    from flywheel.keys import revoke_key

    try:
        with store.connect(_database(_settings(data_dir))) as con:
            prefix = revoke_key(con, key)
    except ValueError as exc:
        fail(str(exc), 2)
    typer.echo(f"revoked {prefix}")


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
    _database(settings)
    where, params = ("WHERE task = ?", [task]) if task else ("", [])
    with store.connect(settings.db_path, read_only=True) as con:
        rows = con.execute(
            "WITH i AS (SELECT project, task, count(*) AS n, count(*) FILTER (status = 'error') AS errors,"
            f"  max(ts) AS last_seen FROM interactions {where} GROUP BY ALL),"
            " f AS (SELECT i.project, i.task, count(*) AS n FROM feedback f"
            "  JOIN interactions i ON i.project = f.project AND i.id = f.interaction_id GROUP BY ALL),"
            " d AS (SELECT project, task, arg_max(id, created_at) AS latest, count(*) AS n FROM datasets GROUP BY ALL),"
            " m AS (SELECT project, task, count(*) FILTER (status = 'ready') AS ready, count(*) AS n FROM models GROUP BY ALL),"
            " p AS (SELECT project, task, string_agg(alias || '=' || model, ', ' ORDER BY alias DESC) AS serving"
            "  FROM deployments GROUP BY ALL),"
            " e AS (SELECT project, task, arg_max(action || ' ' || coalesce(model, '') || ': ' || reason, ts) AS last"
            "  FROM deployment_events GROUP BY ALL)"
            " SELECT i.project, i.task, i.n, i.errors, coalesce(f.n, 0),"
            "  coalesce(d.latest || ' (' || d.n || ')', '-'), coalesce(m.ready || '/' || m.n, '0'),"
            "  coalesce(p.serving, '-'), coalesce(e.last, '-'), strftime(i.last_seen, '%Y-%m-%d %H:%M')"
            " FROM i LEFT JOIN f USING (project, task) LEFT JOIN d USING (project, task)"
            " LEFT JOIN m USING (project, task) LEFT JOIN p USING (project, task) LEFT JOIN e USING (project, task)"
            " ORDER BY i.project, i.task",
            params,
        ).fetchall()
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


@app.command()
def curate(task: Task, data_dir: DataDir = None,
           project: Project = None,
           config: Annotated[Path | None, typer.Option(help="Curation config (TOML/YAML/JSON), over the task's `curation` table.",
                                                       exists=True, dir_okay=False)] = None,
           since: Annotated[datetime | None, typer.Option(help="Only interactions from this time (UTC).")] = None,
           until: Annotated[datetime | None, typer.Option(help="Only interactions before this time (UTC).")] = None,
           ) -> None:  # fmt: skip
    """Curate the task's traffic and feedback into a versioned dataset (train / eval splits)."""
    from flywheel.curate import CurationConfig, CurationError, curate as run

    settings = _settings(data_dir)
    try:
        cfg = CurationConfig.for_task(settings, task, path=config)
        version = run(settings, project=project or settings.project_of(task), task=task, config=cfg, since=since, until=until)
    except CurationError as exc:
        fail(str(exc), 2)
    typer.echo(version.report)
    typer.echo(f"dataset {version.id} {'written to' if version.created else 'already at'} {version.path}")


@app.command()
def train(task: Task, data_dir: DataDir = None,
          recipe: Annotated[str | None, typer.Option(help="A default recipe (sft, sft-full, distill, gkd, dpo) or a file "
                                                         "[default: the task's, else sft].")] = None,
          base_model: Annotated[str | None, typer.Option(help="The student's base model (path or id) [default: the task's].")] = None,
          teacher: Annotated[str | None, typer.Option(help="A local teacher model (distill, gkd) [default: the task's].")] = None,
          project: Annotated[str | None, typer.Option(help="Only this project's datasets [default: the task's project "
                                                          "when flywheel.toml has the task, else any].")] = None) -> None:  # fmt: skip
    """Train a candidate on the task's newest curated dataset and register it."""
    from flywheel.train import TrainingError, train_latest

    try:
        candidate = train_latest(_settings(data_dir), task=task, recipe=recipe, project=project, base_model=base_model,
                                 teacher=teacher)  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc), 2)
    except TrainingError as exc:
        fail(f"training failed, candidate marked failed: {exc}")
    typer.echo(f"candidate {candidate.id} ({candidate.method}) ready in {candidate.path}")
    typer.echo(", ".join(f"{k} {v:.4g}" for k, v in candidate.metrics.items() if k in ("eval_loss", "exact_match")))


@app.command("eval")
def eval_(task: Task, model: Annotated[str, typer.Option(help="The model to benchmark (a gateway model id).")],
          data_dir: DataDir = None,
          baseline: Annotated[str | None, typer.Option(help="Compare with this model (default: the task's production).")] = None,
          benchmark: Annotated[Path | None, typer.Option(help="Benchmark spec (default: the task's).", exists=True)] = None,
          ) -> None:  # fmt: skip
    """Benchmark a model through the running service, against production, in 3D (quality, latency, cost)."""
    from evals import EndpointSampler, EvalError, evaluate
    from pipelines.loop import production_model, service_key

    settings = _settings(data_dir)
    cfg = settings.tasks.get(task)
    spec = benchmark or (cfg.benchmark if cfg else None)
    if spec is None:
        fail(f"--benchmark: task {task!r} has no benchmark in [tasks.{task}]; pass a spec file", 2)
    project = settings.project_of(task)
    baseline = baseline or production_model(settings, project, task)
    try:
        with service_key(settings, project) as key:
            sampler = EndpointSampler(f"{settings.url}/v1", model, api_key=key)
            incumbent = EndpointSampler(f"{settings.url}/v1", baseline, api_key=key) if baseline else None
            report = evaluate(settings, project=project, task=task, benchmark=spec, sampler=sampler,
                              baseline_sampler=incumbent, progress=True)  # fmt: skip
    except EvalError as exc:
        fail(str(exc), 2)
    typer.echo(report.markdown)
    typer.echo(f"report: {report.html_path}")
    if report.candidate.status != "done":
        fail(f"the benchmark run failed: {report.candidate.error}")


@app.command()
def promote(task: Task, model: Annotated[str, typer.Option(help="A ready candidate id (or a route name).")],
            data_dir: DataDir = None, project: Project = None,
            alias: Annotated[str, typer.Option(help="production or canary.")] = "production",
            share: Annotated[float, typer.Option(help="Canary share of users.", min=0.01, max=1.0)] = 1.0,
            reason: Annotated[str, typer.Option(help="Why (kept in the history).")] = "manual promotion") -> None:
    """Put a model in service under an alias now: load it in the running service, then move the alias."""
    from flywheel.promotion import Decision, PromotionError, http_loader, promote as run
    from pipelines.loop import service_key

    settings = _settings(data_dir)
    project = project or settings.project_of(task)
    with store.connect(settings.db_path) as con:
        row = con.execute("SELECT status, coalesce(adapter_path, merged_path) FROM models WHERE id = ?", [model]).fetchone()
    if row is None and model not in settings.routes:
        fail(f"--model: {model!r} is neither a registered candidate nor a route", 2)
    if row is not None and row[0] != "ready":
        fail(f"--model: candidate {model!r} is {row[0]}; only a ready candidate can serve", 2)
    route = settings.tasks[task].route if task in settings.tasks else None
    try:  # a candidate is loaded in the running service first, with a key for that call only
        with service_key(settings, project) if row else nullcontext() as key:
            load = http_loader(settings.url, key, route) if row else (lambda name, path: None)
            run(settings, project=project, task=task, model=model, path=row[1] if row else "", alias=alias, share=share,
                decision=Decision(True, [reason], {"manual": True}), load=load)  # fmt: skip
    except (PromotionError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"{task}{'' if alias == 'production' else ':' + alias} → {model}")


@app.command()
def rollback(task: Task, data_dir: DataDir = None, project: Project = None,
             reason: Annotated[str, typer.Option(help="Why (kept in the history).")] = "manual rollback") -> None:
    """Give production back to the model that held it before the last change."""
    from flywheel.promotion import PromotionError, rollback as run

    settings = _settings(data_dir)
    try:
        deployment = run(settings, project=project or settings.project_of(task), task=task, reason=reason)
    except PromotionError as exc:
        fail(str(exc))
    typer.echo(f"{task} → {deployment.model} (rolled back)")


def _prefect_env(settings: Settings) -> None:
    """Prefect without a server unless one is configured: its files under the data folder."""
    import os

    from pipelines.up import prefect_env

    for name, value in prefect_env(settings.home.resolve()).items():
        os.environ.setdefault(name, value)


@app.command()
def run(task: Task, data_dir: DataDir = None) -> None:
    """One turn of the loop now (curate → train → eval → gate → promote) as a Prefect flow run,
    with the service running."""
    settings = _settings(data_dir)
    if task not in settings.tasks:
        fail(f"--task: no [tasks.{task}] section in {settings.home / CONFIG_FILE}", 2)
    _prefect_env(settings)
    from pipelines.flywheel import flywheel_flow

    try:
        result = flywheel_flow(task=task, data_dir=str(settings.home))
    except Exception as exc:  # each stage's own error names its cause
        fail(f"{type(exc).__name__}: {exc}")
    candidate = (result.get("candidate") or {}).get("id")
    typer.echo(("promoted " if result["promoted"] else "not promoted ") + f"{candidate}: " + "; ".join(result["reasons"]))


@app.command()
def up(data_dir: DataDir = None,
       port: Annotated[int | None, typer.Option(help="API port [default: 8000].", min=1, max=65535)] = None,
       prefect_port: Annotated[int, typer.Option(help="Prefect UI/API port.", min=1, max=65535)] = 4200) -> None:
    """The service, a local Prefect server (UI) and the scheduled flywheel flows, until Ctrl-C."""
    settings = _settings(data_dir)
    if port is not None:
        settings.port = port
    _prefect_env(settings)
    from pipelines.up import up as run_up

    try:
        run_up(settings, prefect_port=prefect_port)
    except RuntimeError as exc:
        fail(str(exc))


@app.command()
def demo(data_dir: DataDir = None,
         turns: Annotated[int, typer.Option(help="Turns of the loop.", min=1, max=10)] = 2,
         requests: Annotated[int, typer.Option(help="App requests per turn.", min=50, max=10_000)] = 600) -> None:
    """The whole loop on a simulated support desk: traffic, curation, training, benchmarks, promotion."""
    from pipelines.demo import run_demo

    run_demo(data_dir if data_dir is not None else Path(".flywheel-demo"), turns=turns, per_turn=requests)


def main() -> None:
    try:
        app(prog_name="flywheel")
    except store.StoreBusy as exc:  # another process held the database too long: say so, no traceback
        _error(str(exc))
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
