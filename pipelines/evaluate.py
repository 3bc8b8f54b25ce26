"""The `eval` Prefect flow: a thin wrapper around `evals.evaluate`.

What Prefect adds: a visible run per evaluation, retries where I/O can fail (the store locked by
the ingestion server), and the report published as a Markdown artifact. Bad input (a malformed
spec, a contaminated benchmark) is never retried. A run that did not pass because it failed or
was partial fails the flow with the reason, so a scheduled loop cannot mistake it for a result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from evals.evaluate import evaluate
from evals.samplers import build_sampler
from evals.types import EvalError, RunFailed
from flywheel.settings import load_settings
from pipelines.retries import publish_markdown, retry_unless

# Retry store and file-system failures, never an `EvalError`: trying again cannot fix bad input.
_retry_io = retry_unless(EvalError)


@task(name="run-eval", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_retry_io)
def run_eval(data_dir: str | None, project: str, task: str, benchmark: str, sampler: dict[str, Any],
             baseline: dict[str, Any] | None, judge: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    settings = load_settings(data_dir)
    build = lambda cfg: build_sampler(cfg, settings.home) if cfg else None  # noqa: E731
    report = evaluate(settings, project=project, task=task, benchmark=benchmark, sampler=build(sampler),
                      baseline_sampler=build(baseline), judge_sampler=build(judge))  # fmt: skip
    return {"candidate_run": report.candidate.id, "candidate_status": report.candidate.status,
            "candidate_error": report.candidate.error,
            "incumbent_run": report.incumbent.id if report.incumbent else None, "passed": report.passed,
            "verdicts": report.verdicts.to_dict() if report.verdicts else None, "markdown": report.markdown,
            "report": str(report.markdown_path), "html": str(report.html_path)}  # fmt: skip


@task(name="publish-eval-report", retries=2, retry_delay_seconds=2)
def publish_report(task: str, result: dict[str, Any]) -> None:
    publish_markdown("eval", task, result["markdown"], f"Eval of {task}: run {result['candidate_run']}")


@flow(name="eval")
def eval_flow(task: str, benchmark: str, sampler: dict[str, Any], project: str = "default",
              baseline: dict[str, Any] | None = None, judge: dict[str, Any] | None = None,
              data_dir: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Evaluate a model (and the incumbent) on a benchmark spec; publish the report."""
    result = run_eval(str(Path(data_dir)) if data_dir else None, project, task, benchmark, sampler, baseline, judge)
    publish_report(task, result)
    if result["candidate_status"] != "done":
        raise RunFailed(result["candidate_run"], result["candidate_error"] or "incomplete")
    return result
