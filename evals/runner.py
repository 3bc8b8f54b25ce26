"""The runner: a benchmark × a sampler → an `eval_runs` row and one `eval_results` row per example.

Examples go to the sampler in chunks (`sampler.batch`: threads for endpoints, batched generate
for local models); each chunk's results are written in one `INSERT … SELECT` from Arrow, in one
short unit of work on the store (the file is never held while a model generates).

Resumable: a run is identified by (project, task, benchmark, version, model, sampler). Running
again finds the last such run: `done` is reused as is; `running`/`failed` continues, keeping its
answered examples and asking again only the missing and errored ones.

Faults: an example the sampler gave up on (after its bounded retries) is stored with its error;
a chunk in which every example failed stops the run early (the endpoint is down, not flaky).
Any errored example leaves the run `failed`, with the reason, so it can never pass a gate.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import numpy as np

from evals.metrics import Metric, macro_f1
from evals.types import EvalRun, Example, ExampleResult, SamplerBase

_RESULT_COLS = ["run_id", "example_id", "input", "expected", "output", "scores", "latency_ms", "completion_tokens",
                "error", "prompt_tokens", "cost_usd", "tool_calls"]  # fmt: skip


def start_run(con, *, project: str, task: str, benchmark_id: str, version: str, model: str, sampler: dict,
              n_examples: int, resume: bool) -> tuple[str, str, set[str]]:  # fmt: skip
    """(run id, status, example ids already answered): a new run, or the one to resume."""
    sampler_json = json.dumps(sampler, sort_keys=True)
    if resume:
        row = con.execute(
            "SELECT id, status FROM eval_runs WHERE project = ? AND task = ? AND benchmark_id = ? AND benchmark_version = ?"
            " AND model = ? AND sampler = ? ORDER BY started_at DESC LIMIT 1",
            [project, task, benchmark_id, version, model, sampler_json]).fetchone()  # fmt: skip
        if row and row[1] == "done":
            return row[0], "done", set()
        if row:
            con.execute("DELETE FROM eval_results WHERE run_id = ? AND error IS NOT NULL", [row[0]])
            con.execute("UPDATE eval_runs SET status = 'running', error = NULL, finished_at = NULL WHERE id = ?", [row[0]])
            done = {r[0] for r in con.execute("SELECT example_id FROM eval_results WHERE run_id = ?", [row[0]]).fetchall()}
            return row[0], "running", done
    run_id = "run-" + uuid.uuid4().hex[:12]
    con.execute("INSERT INTO eval_runs (id, project, task, benchmark_id, benchmark_version, model, sampler, status,"
                " n_examples, latency) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?)",
                [run_id, project, task, benchmark_id, version, model, sampler_json, n_examples,
                 json.dumps({"sampling_s": 0.0})])  # fmt: skip
    return run_id, "running", set()


def score(metrics: list[Metric], example: Example, output: str, tool_calls) -> dict[str, Any]:
    return {m.name: m.score(output, example, tool_calls) for m in metrics}


def write_results(con, run_id: str, examples: list[Example], results: list[ExampleResult], sampling_s: float) -> None:
    """One chunk in one statement, plus the run's accumulated sampling time."""
    import pyarrow as pa

    table = pa.table({
        "run_id": [run_id] * len(results), "example_id": [r.example_id for r in results],
        "input": [json.dumps(e.messages) for e in examples], "expected": [r.expected for r in results],
        "output": [r.output for r in results], "scores": [json.dumps(r.scores) for r in results],
        "latency_ms": pa.array([r.latency_ms for r in results], pa.float64()),
        "completion_tokens": pa.array([r.completion_tokens for r in results], pa.int64()),
        "error": pa.array([r.error for r in results], pa.string()),
        "prompt_tokens": pa.array([r.prompt_tokens for r in results], pa.int64()),
        "cost_usd": pa.array([r.cost_usd for r in results], pa.float64()),
        "tool_calls": pa.array([json.dumps(r.tool_calls) if r.tool_calls else None for r in results], pa.string()),
    })  # fmt: skip
    con.register("_chunk", table)
    try:
        con.execute("BEGIN")
        con.execute(f"INSERT INTO eval_results ({', '.join(_RESULT_COLS)}) SELECT {', '.join(_RESULT_COLS)} FROM _chunk")
        con.execute("UPDATE eval_runs SET latency = json_object('sampling_s', coalesce(latency->>'sampling_s', '0')::DOUBLE + ?)"
                    " WHERE id = ?", [sampling_s, run_id])  # fmt: skip
        con.execute("COMMIT")
    finally:
        con.unregister("_chunk")


def load_run(con, run_id: str) -> EvalRun:
    """A run and its results from the store (within the caller's unit of work)."""
    row = con.execute("SELECT id, project, task, benchmark_id, benchmark_version, model, sampler, status, error,"
                      " n_examples, metrics, latency, cost FROM eval_runs WHERE id = ?", [run_id]).fetchone()  # fmt: skip
    if row is None:
        raise KeyError(f"no eval run {run_id!r}")
    rows = con.execute("SELECT example_id, output, scores, latency_ms, completion_tokens, prompt_tokens, cost_usd, error,"
                       " expected, tool_calls FROM eval_results WHERE run_id = ? ORDER BY example_id", [run_id]).fetchall()  # fmt: skip
    results = [ExampleResult(example_id=r[0], output=r[1] or "", scores=json.loads(r[2] or "{}"), latency_ms=r[3] or 0.0,
                             completion_tokens=r[4] or 0, prompt_tokens=r[5] or 0, cost_usd=r[6] or 0.0, error=r[7],
                             expected=r[8] or "", tool_calls=json.loads(r[9]) if r[9] else None) for r in rows]  # fmt: skip
    # A list-valued score is a corpus metric's (predicted, gold) pair: macro-F1 aggregates those.
    first = next((r for r in results if r.error is None), None)
    aggregates = {k: macro_f1 for k, v in (first.scores if first else {}).items() if isinstance(v, list)}
    loads = lambda v: json.loads(v) if v else {}  # noqa: E731
    return EvalRun(id=row[0], project=row[1], task=row[2], benchmark_id=row[3], benchmark_version=row[4], model=row[5],
                   sampler=loads(row[6]), status=row[7], error=row[8], n_examples=row[9] or 0, metrics=loads(row[10]),
                   latency=loads(row[11]), cost=loads(row[12]), results=results, aggregates=aggregates)  # fmt: skip


def finalize(con, run_id: str, error: str | None = None) -> EvalRun:
    """Aggregate the stored results into the run's 3D measurements and set its final status."""
    run = load_run(con, run_id)
    ok = [r for r in run.results if r.error is None]
    failed = [r for r in run.results if r.error is not None]
    if error is None and failed:
        error = f"{len(failed)} of {run.n_examples} example(s) failed; first ({failed[0].example_id}): {failed[0].error}"
    if error is None and len(ok) < run.n_examples:
        error = f"only {len(ok)} of {run.n_examples} examples answered"
    names = list(ok[0].scores) if ok else []
    # None: a metric that does not apply to that example; one that applies to none is left out.
    scored = {k: [r.scores.get(k, 0.0) for r in ok if r.scores.get(k, 0.0) is not None] for k in names}
    metrics = {k: (run.aggregates.get(k) or (lambda v: float(np.mean(v))))(v) for k, v in scored.items() if v}
    lat = np.array([r.latency_ms for r in ok]) if ok else np.zeros(1)
    sampling_s = float(run.latency.get("sampling_s", 0.0))
    tokens = sum(r.completion_tokens for r in ok)
    latency = {"p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)), "mean_ms": float(lat.mean()),
               "tokens_per_s": tokens / sampling_s if sampling_s else 0.0,
               "requests_per_s": len(run.results) / sampling_s if sampling_s else 0.0, "sampling_s": sampling_s}  # fmt: skip
    total = sum(r.cost_usd for r in ok)
    cost = {"total_usd": total, "per_1k_requests_usd": 1000 * total / len(ok) if ok else 0.0}
    con.execute("UPDATE eval_runs SET status = ?, error = ?, finished_at = current_timestamp::TIMESTAMP, metrics = ?, latency = ?, cost = ?"
                " WHERE id = ?", ["failed" if error else "done", error, json.dumps(metrics), json.dumps(latency),
                                  json.dumps(cost), run_id])  # fmt: skip
    return load_run(con, run_id)


def run_benchmark(db_path, *, project: str, task: str, benchmark_id: str, version: str, examples: list[Example],
                  metrics: list[Metric], sampler: SamplerBase, resume: bool = True, chunk_size: int = 64,
                  progress: bool = False) -> EvalRun:  # fmt: skip
    """Run (or resume, or reuse) `sampler` on `examples`; return the finished run, `done` or `failed`."""
    from rich.progress import Progress

    from flywheel import store

    with store.connect(db_path) as con:
        run_id, status, answered = start_run(con, project=project, task=task, benchmark_id=benchmark_id, version=version,
                                             model=sampler.model, sampler=sampler.describe(), n_examples=len(examples),
                                             resume=resume)  # fmt: skip
        if status == "done":
            return load_run(con, run_id)
    todo = [e for e in examples if e.id not in answered]
    error = None
    try:
        with Progress(transient=True, disable=not progress) as bar:
            job = bar.add_task(f"{sampler.model} on {benchmark_id}", total=len(examples), completed=len(answered))
            for s in range(0, len(todo), chunk_size):
                chunk = todo[s : s + chunk_size]
                start = time.perf_counter()
                responses = sampler.batch([e.messages for e in chunk], tools=[e.tools for e in chunk])
                elapsed = time.perf_counter() - start
                results = [ExampleResult(example_id=e.id, output=r.text, expected=e.expected, latency_ms=r.latency_ms,
                                         completion_tokens=r.completion_tokens, prompt_tokens=r.prompt_tokens,
                                         cost_usd=r.cost_usd, error=r.error, tool_calls=r.tool_calls,
                                         scores={} if r.error else score(metrics, e, r.text, r.tool_calls))
                           for e, r in zip(chunk, responses)]  # fmt: skip
                with store.connect(db_path) as con:
                    write_results(con, run_id, chunk, results, elapsed)
                bar.advance(job, len(chunk))
                if all(r.error for r in results):
                    error = f"every request of a chunk failed, stopped early; last: {results[-1].error}"
                    break
    except BaseException as exc:
        with store.connect(db_path) as con:
            finalize(con, run_id, error=f"interrupted: {type(exc).__name__}: {exc}")
        raise
    with store.connect(db_path) as con:
        return finalize(con, run_id, error=error)


def set_scores(con, run_id: str, name: str, scores: dict[str, float]) -> None:
    """Merge one metric's per-example scores (a judge's) into stored results, in one statement."""
    import pyarrow as pa

    con.register("_s", pa.table({"example_id": list(scores), "patch": [json.dumps({name: v}) for v in scores.values()]}))
    try:
        con.execute("UPDATE eval_results SET scores = json_merge_patch(scores, _s.patch::JSON) FROM _s"
                    " WHERE eval_results.run_id = ? AND eval_results.example_id = _s.example_id", [run_id])  # fmt: skip
    finally:
        con.unregister("_s")
