"""The eval report: Markdown (also the Prefect artifact) and HTML, with Pareto charts as PNG.

Sections: the verdict (and why a run cannot pass, if so), the per-metric table with the paired
bootstrap CIs, the 3D measurements of each run, the per-example differences on the primary
metric (worst regressions first), and two Pareto charts over every finished run of this benchmark
version: quality vs cost per 1,000 requests, and quality vs p50 latency.
"""

from __future__ import annotations

import html
from pathlib import Path

from evals.stats import Verdicts
from evals.types import EvalRun


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (x lower is better, y higher)."""
    return [i for i, (x, y) in enumerate(points)
            if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for x2, y2 in points)]  # fmt: skip


def pareto_charts(runs: list[EvalRun], metric: str, out_dir: Path, highlight: set[str] = frozenset()) -> list[Path]:
    """quality-vs-cost.png and quality-vs-latency.png; the Pareto frontier drawn as a line."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    paths = []
    for name, label, get in (("quality-vs-cost.png", "cost per 1,000 requests (USD)", lambda r: r.cost.get("per_1k_requests_usd", 0.0)),
                             ("quality-vs-latency.png", "p50 latency per request (ms)", lambda r: r.latency.get("p50_ms", 0.0))):  # fmt: skip
        pts = [(float(get(r)), float(r.metrics.get(metric, 0.0))) for r in runs]
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for r, (x, y) in zip(runs, pts):
            ax.scatter([x], [y], s=60 if r.id in highlight else 25, color="tab:red" if r.id in highlight else "tab:blue")
            ax.annotate(r.model, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = sorted(pts[i] for i in pareto_front(pts))
        if len(front) > 1:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="gray", linestyle="--", linewidth=1)
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} vs {label.split(' ')[0]} (red: this comparison)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / name)
        plt.close(fig)
        paths.append(out_dir / name)
    return paths


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _run_lines(run: EvalRun, role: str) -> list[str]:
    lat, cost = run.latency, run.cost
    return [f"| {role} | `{run.id}` | {run.model} | {run.status} | {', '.join(f'{k} {_fmt(v)}' for k, v in run.metrics.items())} "
            f"| {_fmt(lat.get('p50_ms', 0))} / {_fmt(lat.get('p95_ms', 0))} | {_fmt(lat.get('tokens_per_s', 0))} "
            f"| {_fmt(cost.get('per_1k_requests_usd', 0))} |"]  # fmt: skip


def per_example_diffs(candidate: EvalRun, incumbent: EvalRun, metric: str) -> list[tuple[float, str, str, str, str]]:
    """(candidate − incumbent score, example id, expected, candidate output, incumbent output), worst first."""
    inc = {r.example_id: r for r in incumbent.results if r.error is None}
    rows = []
    for c in candidate.results:
        i = inc.get(c.example_id)
        if (c.error is None and i is not None and isinstance(c.scores.get(metric), (int, float))
                and isinstance(i.scores.get(metric, 0.0), (int, float))):  # None: not scored on that example
            rows.append((float(c.scores[metric]) - float(i.scores.get(metric, 0.0)), c.example_id, c.expected, c.output, i.output))
    return sorted(rows, key=lambda r: (r[0], r[1]))


def _test_lines(v: Verdicts) -> list[str]:
    """The test, its margin and its sample size, and whether quality cleared the margin."""
    q = v.quality_bound
    bound = f" ({q.metric}: CI [{q.ci_low:+.3f}, {q.ci_high:+.3f}])" if q else ""
    test = (f"Test: {v.test} (candidate − incumbent, paired over the examples both runs answered; a verdict needs "
            f"at least {v.min_examples} of them). Quality non-inferiority, every quality CI's lower bound "
            f"≥ -{v.margin:g}: **{'yes' if v.non_inferior else 'no'}**{bound}.")  # fmt: skip
    if v.n_paired >= v.min_examples:
        return [test]
    few = (f"> Insufficient evidence: {v.n_paired} paired examples, fewer than the {v.min_examples} a verdict needs "
           "(`gate.min_examples`). The candidate cannot pass on this benchmark.")  # fmt: skip
    return [test, "", few]


def markdown(*, title: str, candidate: EvalRun, incumbent: EvalRun | None, verdicts: Verdicts | None, passed: bool,
             metric: str, charts: list[Path], max_examples: int = 20) -> str:  # fmt: skip
    lines = [f"# {title}", "", f"Benchmark `{candidate.benchmark_id}` version `{candidate.benchmark_version}` · "
             f"project `{candidate.project}` · task `{candidate.task}` · {candidate.n_examples} examples", "",
             f"**Result: {'PASS' if passed else 'NO PASS'}**", ""]  # fmt: skip
    for r in (candidate, incumbent):
        if r is not None and r.status != "done":
            lines += [f"> Run `{r.id}` ({r.model}) is **{r.status}**: {r.error}. A failed or partial run never passes.", ""]
    if verdicts is not None:
        if verdicts.reason:
            lines += [f"> Not comparable as a pass: {verdicts.reason}", ""]
        lines += ["| dimension | verdict |", "|---|---|"] + [f"| {d} | **{v}** |" for d, v in verdicts.dimensions.items()]
        lines += ["", *_test_lines(verdicts), "",
                  f"| metric | dimension | candidate | incumbent | difference | {1 - verdicts.alpha:.0%} CI | verdict |",
                  "|---|---|---:|---:|---:|---|---|"]  # fmt: skip
        lines += [f"| {c.metric} | {c.dimension} | {_fmt(c.candidate)} | {_fmt(c.incumbent)} | {_fmt(c.diff)} "
                  f"| [{_fmt(c.ci_low)}, {_fmt(c.ci_high)}] | {c.verdict} |" for c in verdicts.comparisons]  # fmt: skip
        lines.append("")
    lines += ["## Runs", "", "| role | run | model | status | quality | latency p50 / p95 ms | tokens/s | USD per 1k requests |",
              "|---|---|---|---|---|---:|---:|---:|"]  # fmt: skip
    lines += _run_lines(candidate, "candidate") + (_run_lines(incumbent, "incumbent") if incumbent else [])
    if incumbent is not None:
        diffs = per_example_diffs(candidate, incumbent, metric)
        lines += ["", f"## Per-example differences on `{metric}` (worst regressions first)", "",
                  "| Δ | example | expected | candidate | incumbent |", "|---:|---|---|---|---|"]  # fmt: skip
        cell = lambda s: (s or "").replace("|", "\\|").replace("\n", " ")[:120]  # noqa: E731
        lines += [f"| {_fmt(d)} | `{i}` | {cell(e)} | {cell(c)} | {cell(o)} |" for d, i, e, c, o in diffs[:max_examples]]
    lines += ["", "## Pareto charts", ""] + [f"![{p.stem}]({p.name})" for p in charts]
    return "\n".join(lines) + "\n"


_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{border:1px solid #ccc;padding:2px 6px}"
          "table{border-collapse:collapse}")


def to_html(md: str, title: str) -> str:
    """A self-contained HTML page of the report's Markdown (CommonMark plus tables). Raw HTML in
    the Markdown (a model's output quoted in a table) is escaped, never rendered."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n{body}</body></html>\n")  # fmt: skip
