"""One stage of the loop at a time (`curate`, `train`, `eval`, `promote`, `rollback`, `settle`, `optimize`) or one
whole turn (`run`): each a thin call into the plain function that does it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from flywheel import store
from flywheel.cli.common import (
    DataDir,
    Project,
    TaskName,
    app,
    fail,
    settings_of,
    task_of,
)
from flywheel.cli.service import use_prefect_env


@app.command()
def curate(task: TaskName, data_dir: DataDir = None,
           project: Project = None,
           config: Annotated[Path | None, typer.Option(help="Curation config (TOML/YAML/JSON), over the task's `curation` table.",
                                                       exists=True, dir_okay=False)] = None,
           since: Annotated[datetime | None, typer.Option(help="Only interactions from this time (UTC).")] = None,
           until: Annotated[datetime | None, typer.Option(help="Only interactions before this time (UTC).")] = None,
           ) -> None:  # fmt: skip
    """Curate the task's traffic and feedback into a versioned dataset (train / eval splits)."""
    from flywheel.curate.pipeline import CurationError
    from flywheel.curate.pipeline import curate as run

    settings = settings_of(data_dir)
    resolved = task_of(settings, task, project=project)
    try:
        version = run(settings, project=resolved.project, task=task, config=resolved.curation_with(config),
                      since=since, until=until)  # fmt: skip
    except CurationError as exc:
        fail(str(exc), 2)
    typer.echo(version.report)
    typer.echo(f"dataset {version.id} {'written to' if version.created else 'already at'} {version.path}")


@app.command()
def train(task: TaskName, data_dir: DataDir = None,
          recipe: Annotated[str | None, typer.Option(help="A default recipe (sft, sft-full, distill, gkd, dpo) or a file "
                                                         "[default: the task's, else sft].")] = None,
          base_model: Annotated[str | None, typer.Option(help="The student's base model (path or id) [default: the task's].")] = None,
          teacher: Annotated[str | None, typer.Option(help="A local teacher model (distill, gkd) [default: the task's].")] = None,
          project: Project = None,
          processes: Annotated[int, typer.Option(help="Processes training together (torchrun, data-parallel: gloo on CPU, "
                                                      "one GPU each where present); rank 0 registers the candidate.",
                                                 min=1, max=1024)] = 1) -> None:  # fmt: skip
    """Train a candidate on the task's newest curated dataset and register it."""
    from flywheel.train.run import TrainingError, train_latest

    if processes > 1:
        from flywheel.train.launch import launch

        settings = settings_of(data_dir)
        resolved = task_of(settings, task, project=project, recipe=recipe, base_model=base_model, teacher=teacher)
        try:
            code = launch(settings, resolved, processes=processes)
        except (FileNotFoundError, ValueError) as exc:
            fail(str(exc), 2)
        if code != 0:
            fail(f"training in {processes} processes failed (torchrun exit status {code}); their log is above")
        return
    try:
        settings = settings_of(data_dir)
        resolved = task_of(settings, task, project=project, recipe=recipe, base_model=base_model, teacher=teacher)
        candidate = train_latest(settings, resolved)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc), 2)
    except TrainingError as exc:
        fail(f"training failed, candidate marked failed: {exc}")
    typer.echo(f"candidate {candidate.id} ({candidate.method}) ready in {candidate.path}")
    typer.echo(", ".join(f"{k} {v:.4g}" for k, v in candidate.metrics.items() if k in ("eval_loss", "exact_match")))


@app.command("eval")
def eval_(task: TaskName, model: Annotated[str, typer.Option(help="The model to benchmark (a gateway model id).")],
          data_dir: DataDir = None,
          baseline: Annotated[str | None, typer.Option(help="Compare with this model (default: the task's production).")] = None,
          benchmark: Annotated[Path | None, typer.Option(help="Benchmark spec (default: the task's).", exists=True)] = None,
          ) -> None:  # fmt: skip
    """Benchmark a model through the running service, against production, in 3D (quality, latency, cost)."""
    from evals import EndpointSampler, EvalError, evaluate
    from pipelines.loop import production_model, service_key

    settings = settings_of(data_dir)
    resolved = task_of(settings, task)
    spec = benchmark or resolved.benchmark
    if spec is None:
        fail(f"--benchmark: task {task!r} has no benchmark in [tasks.{task}]; pass a spec file", 2)
    project = resolved.project
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
def promote(task: TaskName, model: Annotated[str, typer.Option(help="A ready candidate id (or a route name).")],
            data_dir: DataDir = None, project: Project = None,
            alias: Annotated[str, typer.Option(help="production or canary.")] = "production",
            share: Annotated[float, typer.Option(help="Canary share of users.", min=0.01, max=1.0)] = 1.0,
            reason: Annotated[str, typer.Option(help="Why (kept in the history).")] = "manual promotion") -> None:
    """Put a model in service under an alias now: load it in the running service, then move the alias."""
    from flywheel.registry.models import candidate
    from flywheel.registry.promotion import Decision, PromotionError
    from flywheel.registry.promotion import promote as run
    from pipelines.loop import service_loader

    settings = settings_of(data_dir)
    resolved = task_of(settings, task, project=project)
    project = resolved.project
    with store.connect(settings.db_path) as con:
        row = candidate(con, model)
    if row is None and model not in settings.routes:
        fail(f"--model: {model!r} is neither a registered candidate nor a route", 2)
    if row is not None and row.status != "ready":
        fail(f"--model: candidate {model!r} is {row.status}; only a ready candidate can serve", 2)
    if row is not None and row.project != project:
        fail(f"--model: candidate {model!r} belongs to project {row.project!r}, not {project!r}", 2)
    # a candidate is loaded in the running service first, with a key for that call only; a route serves already
    load = service_loader(settings, resolved) if row else (lambda name, path: None)
    try:
        run(settings, project=project, task=task, model=model, path=row.path if row else "", alias=alias, share=share,
            decision=Decision(True, [reason], {"manual": True}), load=load)  # fmt: skip
    except (PromotionError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"{task}{'' if alias == 'production' else ':' + alias} → {model}")


@app.command()
def rollback(task: TaskName, data_dir: DataDir = None, project: Project = None,
             reason: Annotated[str, typer.Option(help="Why (kept in the history).")] = "manual rollback") -> None:
    """Give production back to the model that held it before the last change."""
    from flywheel.registry.promotion import PromotionError
    from flywheel.registry.promotion import rollback as run
    from pipelines.loop import service_loader

    settings = settings_of(data_dir)
    resolved = task_of(settings, task, project=project)
    try:  # the previous model is loaded in the running service first (a restart may have dropped it)
        deployment = run(settings, project=resolved.project, task=task, reason=reason,
                         load=service_loader(settings, resolved))  # fmt: skip
    except PromotionError as exc:
        fail(str(exc))
    typer.echo(f"{task} → {deployment.model} (rolled back)")


@app.command()
def settle(task: TaskName, data_dir: DataDir = None, project: Project = None) -> None:
    """Decide the task's canary from live thumbs: promote it, roll it back, or wait (each recorded)."""
    from flywheel.registry.canary import settle as run
    from flywheel.registry.promotion import PromotionError
    from pipelines.loop import service_loader

    settings = settings_of(data_dir)
    resolved = task_of(settings, task, project=project)
    try:
        result = run(settings, resolved, load=service_loader(settings, resolved))
    except PromotionError as exc:
        fail(str(exc))
    typer.echo(f"{task}: {result.outcome}: {result.reason}")


@app.command()
def optimize(task: TaskName, data_dir: DataDir = None, project: Project = None,
             dry_run: Annotated[bool, typer.Option("--dry-run", help="Search and report; change nothing.")] = False,
             ) -> None:  # fmt: skip
    """Search the serving options of the task's production model (dtype, int8, merged LoRA, speculation,
    batch, threads, fewer layers) on its benchmark through the running service; apply the cheapest
    whose quality is not significantly worse and whose p95 meets the task's latency_slo_ms (undo:
    `flywheel rollback`)."""
    from evals.optimizer import NothingToOptimize, markdown
    from evals.types import EvalError
    from flywheel.registry.promotion import PromotionError
    from pipelines.loop import optimize_stage, service_key

    settings = settings_of(data_dir)
    resolved = task_of(settings, task, project=project)
    try:
        with service_key(settings, resolved.project) as key:
            result = optimize_stage(settings, resolved, key=key, apply=not dry_run)
    except NothingToOptimize as exc:
        fail(str(exc), 2)
    except (EvalError, PromotionError) as exc:
        fail(str(exc))
    typer.echo(markdown(result))
    typer.echo(f"report: {result.report}")
    if result.baseline.error:  # nothing could be compared (e.g. the service is not running)
        fail(result.reason)
    if result.applied:
        typer.echo(f"{task} → {result.pick.model} (undo: flywheel rollback --task {task})")


@app.command()
def run(task: TaskName, data_dir: DataDir = None) -> None:
    """One turn of the loop now (curate → train → eval → gate → promote) as a Prefect flow run,
    with the service running."""
    settings = settings_of(data_dir)
    task_of(settings, task, required=True)
    use_prefect_env(settings)
    from pipelines.turn import flywheel_flow

    try:
        result = flywheel_flow(task=task, data_dir=str(settings.home))
    except Exception as exc:  # each stage's own error names its cause
        fail(f"{type(exc).__name__}: {exc}")
    candidate = (result.get("candidate") or {}).get("id")
    typer.echo(("promoted " if result["promoted"] else "not promoted ") + f"{candidate}: " + "; ".join(result["reasons"]))
