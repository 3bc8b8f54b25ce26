"""The entry point: evaluate a model (and its incumbent) on a benchmark → `EvalReport`.

    report = evaluate(settings, project="acme", task="support-triage", benchmark="bench.yaml",
                      sampler=LocalSampler(path), baseline_sampler=EndpointSampler(url, "big-llm"))
    report.passed, report.verdicts.dimensions, report.markdown_path

Order matters: the spec and the contamination guard are checked before any run is created, so a
refused evaluation leaves nothing in the store. Then each sampler runs (or resumes, or is reused
when the same run already finished), the judges score what they have not scored yet, the runs
are compared, and the report is written to `<home>/reports/eval/<task>/<candidate run>/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from evals.contamination import check_contamination, training_dataset_of
from evals.judge import judge_pairwise, judge_rubric
from evals.report import markdown, pareto_charts, to_html
from evals.runner import finalize, load_run, run_benchmark, set_scores
from evals.spec import BenchmarkSpec, benchmark_version, load_examples
from evals.stats import Verdicts, compare
from evals.types import EvalError, EvalRun, Example, SamplerBase


@dataclass
class EvalReport:
    """The outcome: runs, verdicts, and where the report files are."""

    candidate: EvalRun
    incumbent: EvalRun | None
    verdicts: Verdicts | None
    passed: bool  # complete run(s) and, with an incumbent, `verdicts.passed`
    markdown: str
    markdown_path: Path
    html_path: Path
    charts: list[Path] = field(default_factory=list)


def apply_sampling(sampler: SamplerBase, spec: BenchmarkSpec) -> None:
    # The spec owns the sampling parameters, so every model is asked the same way.
    for attr, value in (("max_tokens", spec.max_tokens), ("temperature", spec.temperature)):
        if hasattr(sampler, attr):
            setattr(sampler, attr, value)


def _training_data(settings, sampler: SamplerBase) -> str | None:
    from flywheel import store

    path = getattr(sampler, "path", None)
    keys = [sampler.model] + ([str(Path(path).resolve()), Path(path).name, Path(path).parent.name] if path else [])
    if not Path(settings.db_path).exists():
        return None
    with store.connect(settings.db_path) as con:
        return training_dataset_of(con, *keys)


def _run_judges(db_path, spec: BenchmarkSpec, examples: list[Example], cand: EvalRun, inc: EvalRun | None,
                judge: SamplerBase | None) -> None:  # fmt: skip
    from flywheel import store

    judges = spec.judges()
    if not judges:
        return
    by_id = {e.id: e for e in examples}
    for j in judges:
        runs = [r for r in (cand, inc) if r is not None and r.status == "done"]
        if j["type"] == "judge_pairwise":
            if inc is None or len(runs) < 2:
                continue  # nothing to compare against, or a failed run that cannot pass anyway
            inc_out = {r.example_id: r for r in inc.results if r.error is None}
            todo = [r for r in cand.results if r.error is None and r.example_id in inc_out and j["name"] not in r.scores]
            if not todo:
                continue
            scores = judge_pairwise(judge, j["prompt"], [by_id[r.example_id] for r in todo],
                                    [r.output for r in todo], [inc_out[r.example_id].output for r in todo])  # fmt: skip
            with store.connect(db_path) as con:
                set_scores(con, cand.id, j["name"], {r.example_id: s for r, s in zip(todo, scores)})
                set_scores(con, inc.id, j["name"], {r.example_id: 1 - s for r, s in zip(todo, scores)})
        else:
            for run in runs:
                todo = [r for r in run.results if r.error is None and j["name"] not in r.scores]
                if todo:
                    scores = judge_rubric(judge, j["prompt"], [by_id[r.example_id] for r in todo],
                                          [r.output for r in todo], float(j.get("scale", 10)))  # fmt: skip
                    with store.connect(db_path) as con:
                        set_scores(con, run.id, j["name"], {r.example_id: s for r, s in zip(todo, scores)})


def evaluate(settings, *, project: str, task: str, benchmark: BenchmarkSpec | str | Path, sampler: SamplerBase,
             baseline_sampler: SamplerBase | None = None, judge_sampler: SamplerBase | None = None,
             train_dataset: str | Path | None = None, resume: bool = True, report_dir: str | Path | None = None,
             progress: bool = False, n_boot: int = 2000, chunk_size: int = 64) -> EvalReport:  # fmt: skip
    """Run `sampler` (and `baseline_sampler`, the incumbent) on the benchmark; compare; write the report.

    Raises `SpecError` (naming the field) for a bad spec and `ContaminationError` when the
    benchmark overlaps the candidate's training data (`train_dataset`, else the dataset the
    registered model was trained on). A failing sampler does not raise: its run is `failed` and
    the report says so, with `passed` False."""
    from flywheel import store

    spec = benchmark if isinstance(benchmark, BenchmarkSpec) else BenchmarkSpec.from_file(benchmark)
    examples = load_examples(spec)
    version = benchmark_version(spec, examples)
    train = train_dataset or _training_data(settings, sampler)
    if train:
        check_contamination(examples, train)
    if spec.judges() and judge_sampler is None:
        raise EvalError(f"benchmark {spec.name} has judge metric(s) {[j['name'] for j in spec.judges()]}: pass judge_sampler")
    metrics = spec.quality_metrics()
    runs = []
    for s in (sampler, baseline_sampler):
        if s is not None:
            apply_sampling(s, spec)
            runs.append(run_benchmark(settings.db_path, project=project, task=task, benchmark_id=spec.name, version=version,
                                      examples=examples, metrics=metrics, sampler=s, resume=resume,
                                      chunk_size=chunk_size, progress=progress))  # fmt: skip
    cand, inc = runs[0], (runs[1] if len(runs) > 1 else None)
    _run_judges(settings.db_path, spec, examples, cand, inc, judge_sampler)
    with store.connect(settings.db_path) as con:
        # Re-aggregate with the judges' scores; a failed run stays failed (its reason is kept).
        cand = finalize(con, cand.id, error=cand.error if cand.status != "done" else None)
        if inc is not None:
            inc = finalize(con, inc.id, error=inc.error if inc.status != "done" else None)
        ids = [r[0] for r in con.execute("SELECT id FROM eval_runs WHERE benchmark_version = ? AND status = 'done'"
                                         " ORDER BY started_at", [version]).fetchall()]  # fmt: skip
        others = [load_run(con, i) for i in ids if i not in {cand.id, inc.id if inc else None}]
    from flywheel.task import resolve_task

    gate = resolve_task(settings, task).gate  # the report applies the test the task's promotion gate applies
    verdicts = compare(cand, inc, n_boot=n_boot, margin=gate.quality_margin, min_examples=gate.min_examples,
                       gated=spec.gate) if inc is not None else None  # fmt: skip
    passed = cand.complete and (verdicts.passed if verdicts else True)
    out = Path(report_dir) if report_dir else Path(settings.home) / "reports" / "eval" / task / cand.id
    out.mkdir(parents=True, exist_ok=True)
    primary = spec.primary or spec.metric_names()[0]
    shown = [r for r in [cand, inc, *others] if r is not None]
    charts = pareto_charts(shown, primary, out, highlight={cand.id, inc.id if inc else ""})
    title = f"Eval: {cand.model}" + (f" vs {inc.model}" if inc else "") + f" on {spec.name}"
    md = markdown(title=title, candidate=cand, incumbent=inc, verdicts=verdicts, passed=passed, metric=primary, charts=charts)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(to_html(md, title))
    return EvalReport(cand, inc, verdicts, passed, md, out / "report.md", out / "report.html", charts)
