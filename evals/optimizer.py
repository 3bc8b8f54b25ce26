"""The 3D optimizer: the cheapest way to serve a task's production model that keeps its quality.

`optimize` serves each option of the `[optimize]` space (flywheel.optimize.options) of the model
that holds the task's `production` alias, as a variant loaded into the serving tier, and measures
it on the task's private benchmark, at the task's observed concurrency:

- quality: the benchmark's metrics, with a paired bootstrap verdict against the option serving now
  (evals.stats.compare, on the same examples);
- latency p50 / p95 per request, and throughput (requests per second of the run's wall time);
- cost per 1,000 requests: the run's wall time (the machine is busy for it) per request × 1,000 ×
  `[evals] hardware_usd_per_hour`. Options are ranked by that compute time, so the ranking holds
  when no price is set.

Successive halving prunes: every option answers `first_rung` examples; failed and significantly worse
options drop out, and those costlier than the current one (which could never be picked), then the
costlier half (two stay at least), and the rest answer twice as many, up to
the whole benchmark, while `time_budget_s` lasts. The pick is the cheapest option measured
furthest whose quality is not significantly worse than the current option's and whose p95 meets
`[tasks.T] latency_slo_ms`; an option with other weights (dtype, int8, layers) must also have been
compared on at least the gate's `min_examples`, so a small benchmark cannot pass it for lack of
evidence. With none, the result says why and nothing changes. An option that fails to load or to
answer is recorded with the reason and skipped.

Loading and answering go through `Service` (callables), so this module knows benchmarks, not
HTTP: `pipelines.loop.optimize_stage` wires it to the running service and applies the pick.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from evals.evaluate import apply_sampling
from evals.runner import run_benchmark
from evals.spec import BenchmarkSpec, benchmark_version, load_examples
from evals.stats import INSUFFICIENT, WORSE, compare
from evals.types import EvalError, SamplerBase
from flywheel import store
from flywheel.optimize.options import ServingOption, is_variant, read_variant, space
from flywheel.optimize.variants import prepare_variant
from flywheel.registry.deployments import holder
from flywheel.registry.models import candidate
from flywheel.settings import Settings
from flywheel.task import Task

log = logging.getLogger("flywheel.optimize")


class NothingToOptimize(EvalError):
    """The task has no benchmark, or no candidate of ours holds its production alias."""


@dataclass
class Service:
    """Where options are measured: `load(model id, folder)`, `unload(model id)`, and a sampler that
    answers as `model id` with `concurrency` requests in flight."""

    load: Callable[[str, str], None]
    unload: Callable[[str], None]
    sampler: Callable[[str, int], SamplerBase]


@dataclass
class Measurement:
    """One option on one rung of the search."""

    option: ServingOption
    model: str  # the gateway model id it answered as
    examples: int
    run_id: str | None = None
    quality: float | None = None  # the benchmark's primary metric
    verdict: str | None = None  # quality vs the current option on the same examples
    quality_ci: tuple[float, float] | None = None  # the CI of the difference the verdict rests on
    p50_ms: float | None = None
    p95_ms: float | None = None
    requests_per_s: float | None = None
    compute_s_per_1k: float | None = None
    cost_per_1k_usd: float | None = None
    error: str | None = None
    outcome: str = ""  # what the search made of it: pruned and why, on the frontier, picked


@dataclass
class Optimization:
    """What `optimize` found, for the report, the artifact and the deployment event's evidence."""

    task: str
    project: str
    model: str  # holds production now
    parent: str  # the candidate the options serve (the model itself, or the one its variant was made from)
    source: str  # the parent's adapter or whole-model folder
    current: ServingOption
    metric: str
    concurrency: int
    latency_slo_ms: float | None
    min_saving: float = 0.0  # the least share of compute per request a pick must save ([optimize] min_saving)
    measured: list[Measurement] = field(default_factory=list)  # each option's furthest rung
    rungs: list[int] = field(default_factory=list)  # examples per rung
    frontier: list[str] = field(default_factory=list)  # option names on the cost/quality Pareto frontier
    pick: Measurement | None = None  # None: nothing changes
    reason: str = ""
    elapsed_s: float = 0.0
    folders: dict[ServingOption, str] = field(default_factory=dict)  # what was loaded for each option
    report: Path | None = None  # report.md, once written
    applied: bool = False  # production moved to the pick

    @property
    def baseline(self) -> Measurement:
        return next(m for m in self.measured if m.option == self.current)

    def evidence(self) -> dict:
        """The figures a deployment event keeps for the applied pick."""
        pick, base = self.pick, self.baseline
        return {"option": pick.option.to_dict(), "from": self.model, "parent": self.parent, "examples": pick.examples,
                "metric": self.metric, "quality": pick.quality, "current_quality": base.quality,
                "quality_verdict": pick.verdict, "quality_ci": pick.quality_ci, "p95_ms": pick.p95_ms,
                "latency_slo_ms": self.latency_slo_ms, "compute_s_per_1k": pick.compute_s_per_1k,
                "current_compute_s_per_1k": base.compute_s_per_1k, "cost_per_1k_usd": pick.cost_per_1k_usd,
                "current_cost_per_1k_usd": base.cost_per_1k_usd, "concurrency": self.concurrency,
                "search_s": round(self.elapsed_s, 1)}  # fmt: skip


def observed_concurrency(settings: Settings, project: str, task: str, window: int = 1000) -> int:
    """The requests in flight that a request of the task meets when it arrives (itself included), at the
    90th percentile over its last `window` recorded interactions; 1 without traffic. (Each interaction
    ran from `ts - latency_ms` to `ts`. An average over time, Little's law, would count the idle hours
    between an app's bursts and ask for far less than the bursts need.)"""
    with store.connect(settings.db_path, read_only=True) as con:
        row = con.execute(
            "WITH r AS (SELECT row_number() OVER () AS i, ts - to_microseconds(CAST(latency_ms * 1000 AS BIGINT)) AS s,"
            "  ts AS e FROM (SELECT ts, latency_ms FROM interactions WHERE project = ? AND task = ?"
            "  AND latency_ms IS NOT NULL ORDER BY ts DESC LIMIT ?))"
            " SELECT quantile_disc(n, 0.9) FROM (SELECT a.i, count(*) AS n FROM r a JOIN r b ON b.s <= a.s AND a.s < b.e"
            "  GROUP BY a.i)", [project, task, window]).fetchone()  # fmt: skip
    return max(1, min(64, int(row[0] or 1)))


def _serving_now(settings: Settings, task: Task) -> tuple[str, str, str, ServingOption]:
    """(production model, its parent candidate, the parent's folder, the option serving now)."""
    with store.connect(settings.db_path, read_only=True) as con:
        model = holder(con, project=task.project, task=task.name)
        record = candidate(con, model) if model else None
        if record is None or not record.path:
            raise NothingToOptimize(f"task {task.name!r}: production is {model or 'nobody'}, not a candidate of ours; "
                                    "only a local model's serving can be optimized")  # fmt: skip
        if not is_variant(record.path):
            return model, model, record.path, ServingOption()
        option, source, parent = read_variant(record.path)
        return model, parent, str(source), option


def _measure(settings: Settings, task: Task, service: Service, spec: BenchmarkSpec, option: ServingOption,
             model: str, examples: list, concurrency: int) -> Measurement:  # fmt: skip
    m = Measurement(option, model, len(examples))
    sampler = service.sampler(model, concurrency)
    apply_sampling(sampler, spec)
    try:
        # A first round of requests, unrecorded: a freshly loaded model's first passes allocate and warm
        # caches, which would bill it for what the option serving now paid before the search.
        sampler.batch([e.messages for e in examples[:concurrency]], tools=[e.tools for e in examples[:concurrency]])
        run = run_benchmark(settings.db_path, project=task.project, task=task.name, benchmark_id=spec.name,
                            version=benchmark_version(spec, examples), examples=examples,
                            metrics=spec.quality_metrics(), sampler=sampler, resume=False)  # fmt: skip
    finally:
        sampler.close()
    m.run_id = run.id
    answered = [r for r in run.results if r.error is None]
    if run.status != "done" or not answered:
        m.error = run.error or "no example answered"
        return m
    wall_s = float(run.latency.get("sampling_s", 0.0))
    m.quality = run.metrics.get(spec.primary or spec.metric_names()[0])
    m.p50_ms, m.p95_ms = run.latency.get("p50_ms"), run.latency.get("p95_ms")
    m.requests_per_s = len(answered) / wall_s if wall_s else None
    m.compute_s_per_1k = 1000 * wall_s / len(answered)
    m.cost_per_1k_usd = m.compute_s_per_1k * settings.evals.hardware_usd_per_hour / 3600
    return m


def _judge(settings: Settings, task: Task, spec: BenchmarkSpec, rung: list[Measurement], base: Measurement) -> None:
    """Each measurement's quality verdict against the current option's, on the same examples."""
    from evals.runner import load_run

    with store.connect(settings.db_path, read_only=True) as con:
        base_run = load_run(con, base.run_id)
        for m in rung:
            if m.error is None and m is not base:
                verdicts = compare(load_run(con, m.run_id), base_run, margin=task.gate.quality_margin,
                                   min_examples=task.gate.min_examples, gated=spec.gate)  # fmt: skip
                m.verdict = verdicts.dimensions.get("quality")
                bound = verdicts.quality_bound
                m.quality_ci = (bound.ci_low, bound.ci_high) if bound else None


def _prune(rung: list[Measurement], base: Measurement, n: int, slo_ms: float | None) -> list[Measurement]:
    """The options that go on to the next rung: the current one, and the cheaper half (at least two) of
    those that answered and are not significantly worse. An option that costs more than the current one
    could never be picked (the pick is the cheapest that qualifies, and the current one does), unless
    the current one misses the latency objective and it might meet it: only then does it go on."""
    current_meets = slo_ms is None or (base.p95_ms or math.inf) <= slo_ms
    alive = []
    for m in rung:
        if m is base:
            continue
        if m.error is not None:
            m.outcome = f"failed: {m.error}"
        elif m.verdict == WORSE:
            m.outcome = f"pruned at {n} examples: quality significantly worse"
        elif current_meets and m.compute_s_per_1k >= base.compute_s_per_1k:
            m.outcome = f"pruned at {n} examples: costlier than {base.option.name}"
        else:
            alive.append(m)
    alive.sort(key=lambda m: m.compute_s_per_1k)
    # At least two go on: the cheapest is often cheap for a reason (int8) that only more examples show.
    keep = max(2, math.ceil(len(alive) / 2))
    for m in alive[keep:]:
        m.outcome = f"pruned at {n} examples: in the costlier half"
    return [base, *alive[:keep]]


def _frontier(final: list[Measurement]) -> list[str]:
    from evals.report import pareto_front

    ok = [m for m in final if m.error is None]
    return [ok[i].option.name for i in pareto_front([(m.compute_s_per_1k, m.quality or 0.0) for m in ok])]


def optimize(settings: Settings, task: Task, service: Service) -> Optimization:
    """Search the task's serving options; return what was measured and the pick (None: keep what serves)."""
    started = time.monotonic()
    if not task.benchmark:
        raise NothingToOptimize(f"task {task.name!r} has no benchmark ([tasks.{task.name}] benchmark): "
                                "options cannot be compared")  # fmt: skip
    model, parent, source, current = _serving_now(settings, task)
    spec = BenchmarkSpec.from_file(task.benchmark)
    examples = load_examples(spec)
    cfg = settings.optimize
    result = Optimization(task.name, task.project, model, parent, source, current,
                          spec.primary or spec.metric_names()[0],
                          cfg.concurrency or observed_concurrency(settings, task.project, task.name),
                          task.latency_slo_ms, cfg.min_saving)  # fmt: skip
    options = space(dtypes=list(cfg.dtypes), quantize=list(cfg.quantize), merge=list(cfg.merge),
                    speculative=list(cfg.speculative), max_batch=list(cfg.max_batch), threads=list(cfg.threads),
                    layers=list(cfg.layers))  # fmt: skip
    options = [current, *(o for o in options if o != current)]
    models = {current: model}  # option -> the model id it answers as (and, to load it, its folder)
    folders: dict[ServingOption, str] = {}
    failed: dict[ServingOption, str] = {}
    latest: dict[ServingOption, Measurement] = {}
    loaded: set[ServingOption] = set()  # loaded for the search (the current option serves already)
    alive, n = options, min(cfg.first_rung, len(examples))
    while True:
        for option in alive[1:]:  # loaded rung by rung, so pruned variants do not hold memory meanwhile
            if option not in loaded and option not in failed:
                try:
                    models[option], folders[option] = prepare_variant(settings, task=task.name, parent=parent,
                                                                      source=source, option=option)  # fmt: skip
                    service.load(models[option], folders[option])
                    loaded.add(option)
                except Exception as exc:  # noqa: BLE001 - whatever the load raised, the option is recorded and skipped
                    failed[option] = f"could not load: {exc}"
                    latest[option] = Measurement(option, models.get(option, ""), 0, error=failed[option],
                                                 outcome=f"failed: {failed[option]}")  # fmt: skip
        alive = [o for o in alive if o not in failed]
        rung = [_measure(settings, task, service, spec, o, models[o], examples[:n], result.concurrency) for o in alive]
        result.rungs.append(n)
        base = rung[0]
        latest.update({m.option: m for m in rung})
        if base.error is not None:
            result.reason = f"the option serving now ({current.name}) failed on the benchmark: {base.error}; nothing changes"
            break
        _judge(settings, task, spec, rung, base)
        if n >= len(examples) or time.monotonic() - started > cfg.time_budget_s or len(rung) == 1:
            for m in rung:
                m.outcome = f"failed: {m.error}" if m.error else m.outcome
            break
        survivors = [m.option for m in _prune(rung, base, n, result.latency_slo_ms)]
        _unload(service, models, loaded, [o for o in alive if o not in survivors])
        alive, n = survivors, min(2 * n, len(examples))
    result.measured = [latest[o] for o in options if o in latest]
    result.folders = folders
    final = [m for m in result.measured if m.examples == result.rungs[-1] and m.error is None and m.outcome == ""]
    if base.error is None:
        _choose(result, final)
    _unload(service, models, loaded, [o for o in loaded if result.pick is None or o != result.pick.option])
    result.elapsed_s = time.monotonic() - started
    return result


def _unload(service: Service, models: dict[ServingOption, str], loaded: set[ServingOption],
            options: list[ServingOption]) -> None:  # fmt: skip
    for option in options:
        if option in loaded:
            loaded.discard(option)
            try:
                service.unload(models[option])
            except Exception as exc:  # noqa: BLE001 - an unload changes nothing that serves; a restart forgets it anyway
                log.warning("could not unload %s after the search: %s", models[option], exc)


def _same_weights(option: ServingOption, current: ServingOption) -> bool:
    """Whether `option` computes with the current option's numbers (merging, speculating, batching and
    threads change speed, not answers): its quality needs no proof; a new dtype, int8 or a cut does."""
    return (option.dtype, option.quantize, option.layers) == (current.dtype, current.quantize, current.layers)


def _choose(result: Optimization, final: list[Measurement]) -> None:
    result.frontier = _frontier(final)
    slo = result.latency_slo_ms
    unproven = [m for m in final if m.verdict == INSUFFICIENT and not _same_weights(m.option, result.current)]
    fits = [m for m in final if m.verdict != WORSE and m not in unproven]
    eligible = [m for m in fits if slo is None or (m.p95_ms or math.inf) <= slo]
    for m in final:
        m.outcome = ("quality significantly worse" if m.verdict == WORSE else
                     "too few examples to show its quality is not worse" if m in unproven else
                     f"p95 {m.p95_ms:.0f} ms over the objective {slo:g} ms" if m not in eligible else
                     "on the frontier" if m.option.name in result.frontier else "measured")  # fmt: skip
    if not eligible:
        result.reason = (f"no option meets the latency objective (p95 <= {slo:g} ms) at quality not significantly "
                         f"worse than {result.current.name}: nothing changes" if fits else
                         "no option showed quality not worse than the current one: nothing changes")  # fmt: skip
        return
    best, base = min(eligible, key=lambda m: m.compute_s_per_1k), result.baseline
    if base in eligible and best.compute_s_per_1k > base.compute_s_per_1k * (1 - result.min_saving):
        best = base  # a smaller saving is within the measurement's noise: production does not move for it
    best.outcome = "picked"
    if best.option == result.current:
        result.reason = (f"the option serving now ({result.current.name}) is the cheapest that qualifies"
                         + (f" by {result.min_saving:.0%} or more" if result.min_saving else "") + ": nothing changes")
        return
    result.pick = best
    result.reason = (f"{best.option.name}: {base.compute_s_per_1k / best.compute_s_per_1k:.2f}x less compute per request "
                     f"than {result.current.name} ({best.compute_s_per_1k:.1f} vs {base.compute_s_per_1k:.1f} s per 1k), "
                     f"quality {best.verdict or 'not distinguishable'}"
                     + (f", p95 {best.p95_ms:.0f} ms <= {slo:g} ms" if slo else ""))  # fmt: skip


def markdown(result: Optimization) -> str:
    """The search as a report: every option's figures and what became of it, the pick and why."""
    slo = f"p95 <= {result.latency_slo_ms:g} ms" if result.latency_slo_ms else "none set"
    lines = [f"# Optimize `{result.task}`: serving options of `{result.parent}`", "",
             f"- serving now: `{result.model}` ({result.current.name})",
             f"- benchmark examples per rung: {', '.join(map(str, result.rungs))}; concurrency {result.concurrency}",
             f"- latency objective: {slo}; search took {result.elapsed_s:.0f} s",
             f"- **{'apply ' + result.pick.option.name if result.pick else 'no change'}**: {result.reason}", "",
             (f"| option | examples | {result.metric} | vs current (CI of diff) | p50 ms | p95 ms | req/s | compute s / 1k "
              "| USD / 1k | outcome |"), "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def f(value: float | None, spec: str = ".3g") -> str:
        return "-" if value is None else format(value, spec)

    for m in result.measured:
        ci = f" [{m.quality_ci[0]:+.3f}, {m.quality_ci[1]:+.3f}]" if m.quality_ci else ""
        lines.append(f"| {m.option.name} | {m.examples} | {f(m.quality)} | {m.verdict or '-'}{ci} | {f(m.p50_ms, '.0f')} "
                     f"| {f(m.p95_ms, '.0f')} | {f(m.requests_per_s)} | {f(m.compute_s_per_1k, '.1f')} "
                     f"| {f(m.cost_per_1k_usd, '.4f')} | {m.outcome} |")  # fmt: skip
    lines += ["", f"Pareto frontier (compute per request vs {result.metric}): {', '.join(result.frontier) or '-'}"]
    return "\n".join(lines) + "\n"


def write_report(settings: Settings, result: Optimization) -> Path:
    """report.md, report.html and the Pareto charts under <home>/reports/optimize/<task>/<time>/."""
    from evals.report import pareto_charts, to_html
    from evals.runner import load_run

    out = Path(settings.home) / "reports" / "optimize" / result.task / time.strftime("%Y%m%dT%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    final = [m for m in result.measured if m.run_id and m.error is None and m.examples == result.rungs[-1]]
    with store.connect(settings.db_path, read_only=True) as con:
        runs = [load_run(con, m.run_id) for m in final]
    for run, m in zip(runs, final):  # the charts' cost axis: compute time × the hardware price, as ranked
        run.cost["per_1k_requests_usd"] = m.cost_per_1k_usd
    pareto_charts(runs, result.metric, out, highlight={result.pick.run_id} if result.pick else set())
    md = markdown(result)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(to_html(md, f"Optimize {result.task}"))
    return out / "report.md"
