"""`flywheel demo`: the whole loop on a simulated product, from a fresh folder, in minutes.

The product is a support desk that routes tickets (flywheel.demo.world). Its app calls the
Flywheel gateway with the official `openai` client; production starts on a *simulated* upstream
provider (serving.simulated: a known error rate, latency and price), and simulated users and
agents send feedback. The student (`student="smollm2"`, the default) is a LoRA adapter on a real
pretrained base, SmolLM2-135M-Instruct (the embedded default, `flywheel.models.default_base`); the
tests use `student="tiny"`, a from-scratch tiny model, fully fine-tuned. The local route serves the
base, each turn's candidate is loaded beside the earlier ones as another adapter on the same engine,
and before turn 1 the base itself is benchmarked zero-shot through the gateway (the table's first row). Each turn curates
the recorded traffic, trains a student with TRL, benchmarks student vs production on a golden set
through the gateway, and promotes only if the gate passes; the app's next traffic goes to
whatever holds the alias then.

The SmolLM2 sizes (requests per turn, training steps, golden set, max_tokens) give two turns in
about 10 minutes on 2 quiet CPU cores, the base's import included (measured; the aim is 6).
"""

from __future__ import annotations

import html
import os
import random
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgspec
import openai
from rich.console import Console
from rich.table import Table

from flywheel import store
from flywheel.demo.world import (
    QUEUES,
    SYSTEM,
    TASK,
    Incumbent,
    golden,
    ticket,
    user_feedback,
)
from flywheel.registry.deployments import assign
from flywheel.settings import Settings, load_settings
from pipelines.loop import service_key
from serving import simulated
from serving.app import in_thread, running

PROJECT = "demo"
INCUMBENT = Incumbent(latency_ms=400.0)  # simulated; kept short so the demo stays quick
# student -> (app requests per turn, golden benchmark examples). ~1/3 of the requests come back
# verified (thumbs up or an agent's correction); at 100 golden tickets the CI of a 0.18 accuracy gap
# stays clear of 0. The tiny model keeps the sizes its README table was measured with.
STUDENTS = {"tiny": (600, 200), "smollm2": (300, 100)}
MAX_TOKENS = 8  # a queue name is 1-2 tokens; the zero-shot base gets room for the start of a sentence
APP_CONCURRENCY = 32  # the app's parallel calls (= the local route's max_batch: full batches)

# The student recipes the demo writes to <home>/recipes/student.yaml.
# SmolLM2: the `sft` default (LoRA on the top 8 layers, completion-only loss, lr 1e-3, 4 examples per
# update), bounded in steps rather than epochs so a turn trains in about a minute on 2 cores however
# much verified traffic it gathered. What counts is the number of updates: on turn 1's 85 verified
# examples, 14 updates of 16 left the student answering `refund` or nothing (golden accuracy 7%),
# 56 updates of 4 (the same 224 examples seen, the same compute) reached 95%.
SMOLLM2_RECIPE = """# written by `flywheel demo`: the `sft` default's shape, bounded in steps so a turn fits the demo
method: sft
lora: {r: 16, alpha: 32, dropout: 0.05, target_modules: all-linear, top_layers: 8}
learning_rate: 1.0e-3
max_steps: 56
per_device_train_batch_size: 4
max_length: 256
assistant_only_loss: false
completion_only_loss: true
warmup_ratio: 0.1
eval_split: eval
exact_match_samples: 16
max_new_tokens: 4
logging_steps: 8
seed: 0
"""
# The tiny from-scratch model: the sft-full default, with more epochs for little data.
TINY_RECIPE = ("method: sft\nlora: null\nlearning_rate: 3.0e-3\nnum_train_epochs: 30\nper_device_train_batch_size: 16\n"
               "max_length: 256\nassistant_only_loss: true\nwarmup_ratio: 0.05\neval_split: eval\nseed: 0\n")  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(home: Path, provider_url: str, base: Path) -> str:
    return f"""# written by `flywheel demo`
[routes.incumbent]          # SIMULATED upstream provider: {INCUMBENT.error_rate:.0%} wrong routes
kind = "upstream"
base_url = "{provider_url}/v1"
retries = 1
usd_per_1k_prompt = 0.03
usd_per_1k_completion = 0.06

[routes.student]            # our engine on this machine: serves the base; candidates load beside it as adapters
kind = "local"
path = "{base}"
max_batch = {APP_CONCURRENCY}
max_wait_ms = 20            # let concurrent calls fill a batch
redact_input = true         # the student learned on redacted tickets
usd_per_1k_prompt = 0.0002  # a small CPU box, per token
usd_per_1k_completion = 0.0004

[tasks.{TASK}]
project = "{PROJECT}"
recipe = "{home / 'recipes' / 'student.yaml'}"
base_model = "{base}"
benchmark = "{home / 'benchmarks' / 'golden.yaml'}"
route = "student"
# only verified answers: corrections and thumbs-up (the incumbent's unrated answers are ~18% wrong)
curation = {{ min_examples = 50, keep_unlabelled = false }}
"""


def _benchmark(home: Path, n: int) -> None:
    folder = home / "benchmarks"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "golden.jsonl").write_bytes(b"\n".join(msgspec.json.encode(r) for r in golden(n)))
    (folder / "golden.yaml").write_text(
        f"name: {TASK}-golden\ndescription: {n} tickets labelled by agents (simulated)\n"
        f"source: {{golden: golden.jsonl}}\nsampling: {{max_tokens: {MAX_TOKENS}, temperature: 0}}\n"
        f"metrics:\n  - {{type: accuracy, labels: [{', '.join(QUEUES)}]}}\n"
    )


def _base(home: Path, student: str, console: Console) -> Path:
    """The student's base model: the embedded SmolLM2 (imported into the folder once), or a tiny one."""
    if student == "tiny":
        from flywheel.demo.tiny import build_tiny_model

        rng = random.Random(7)
        texts = [SYSTEM, *QUEUES, *(ticket(rng)[0] for _ in range(400))]
        return build_tiny_model(home / "models" / "base", texts, hidden=64, layers=2, max_length=256)
    from flywheel.models import DEFAULT_BASE, default_base, get_model

    if get_model(home, DEFAULT_BASE) is not None:
        console.print(f"base model: {DEFAULT_BASE} (imported by an earlier demo run in this folder)")
        return default_base(home)
    with console.status(f"importing the embedded base model {DEFAULT_BASE} (GGUF → Hugging Face folder, once)"):
        started = time.perf_counter()
        path = default_base(home)
    console.print(f"base model: {DEFAULT_BASE} imported in {time.perf_counter() - started:.0f} s → {path}")
    return path


def _reset(home: Path) -> None:
    """A demo starts from nothing, except the imported base model: it only depends on the installed
    wheel, and re-importing it costs ~45 s a run."""
    from flywheel.models import DEFAULT_BASE, base_dir

    if not (home.exists() and (home / "flywheel.duckdb").exists()):
        return
    kept, parked = base_dir(home) / DEFAULT_BASE, home.parent / f".{home.name}-base-{os.getpid()}"
    if kept.is_dir():
        kept.rename(parked)
    shutil.rmtree(home)
    if parked.is_dir():
        kept.parent.mkdir(parents=True)
        parked.rename(kept)


def _app_traffic(url: str, key: str, turn: int, n: int) -> dict:
    """The simulated app: n tickets through the gateway, then its users' feedback."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=2, timeout=600)
    rng = random.Random(turn)
    tickets = [(*ticket(rng), f"user-{rng.randint(1, 500)}") for _ in range(n)]

    def call(item):
        text, truth, user = item
        raw = client.chat.completions.with_raw_response.create(
            model=TASK, messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
            max_tokens=MAX_TOKENS, temperature=0, user=user)  # fmt: skip
        answer = raw.parse()
        return raw.headers["x-flywheel-interaction-id"], truth, answer.choices[0].message.content or "", answer.model

    started = time.perf_counter()
    with ThreadPoolExecutor(APP_CONCURRENCY) as pool:
        answers = list(pool.map(call, tickets))
    seconds = time.perf_counter() - started
    feedback = [f for iid, truth, answer, _ in answers if (f := user_feedback(rng, iid, truth, answer))]
    httpx.post(f"{url}/v1/feedback", json={"feedback": feedback}, headers={"Authorization": f"Bearer {key}"},
               timeout=60).raise_for_status()  # fmt: skip
    right = sum(answer.strip() == truth for _, truth, answer, _ in answers)
    return {"requests": n, "live_accuracy": right / n, "served_by": answers[-1][3], "feedback": len(feedback),
            "seconds": seconds}  # fmt: skip


def _zero_shot(settings: Settings, url: str, key: str, base_name: str) -> dict:
    """The base model itself, benchmarked through the gateway (route `student`, no adapter) against
    the incumbent: where the student starts from."""
    from evals import EndpointSampler, evaluate
    from pipelines.loop import _prices

    task = settings.tasks[TASK]
    # As the turns' samplers are built (pipelines.loop.evaluate_stage), so the figures compare and the
    # incumbent's run is reused by turn 1.
    sampler = EndpointSampler(f"{url}/v1", "student", api_key=key, prices={"student": _prices(settings, "student")})
    baseline = EndpointSampler(f"{url}/v1", "incumbent", api_key=key, prices={"incumbent": _prices(settings, "incumbent")})
    report = evaluate(settings, project=PROJECT, task=TASK, benchmark=task.benchmark, sampler=sampler,
                      baseline_sampler=baseline)  # fmt: skip
    v = report.verdicts
    return {
        "turn": "0 (the base, zero-shot)", "candidate": f"{base_name} (base, zero-shot)",
        "comparisons": [{"metric": x.metric, "dimension": x.dimension, "candidate": x.candidate, "incumbent": x.incumbent,
                         "diff": x.diff, "ci_low": x.ci_low, "ci_high": x.ci_high, "verdict": x.verdict}
                        for x in (v.comparisons if v else [])],
        "evidence": {"latency_p95_ms": report.candidate.latency.get("p95_ms"),
                     "cost_per_1k_usd": report.candidate.cost.get("per_1k_requests_usd"),
                     "incumbent_cost_per_1k_usd": report.incumbent.cost.get("per_1k_requests_usd") if report.incumbent else None},
        "report": str(report.html_path), "charts": [str(c) for c in getattr(report, "charts", [])],
    }  # fmt: skip


def _quality(comparisons: list[dict]) -> str:
    q = next((c for c in comparisons if c["dimension"] == "quality"), None)
    return (f"{q['candidate']:.3f} vs {q['incumbent']:.3f} (diff CI [{q['ci_low']:+.3f}, {q['ci_high']:+.3f}])"
            if q else "-")  # fmt: skip


def _evidence(ev: dict) -> tuple[str, str]:
    p95 = f"{ev['latency_p95_ms']:.0f}" if ev.get("latency_p95_ms") is not None else "-"
    cost = (f"${ev['cost_per_1k_usd']:.4f} vs ${ev['incumbent_cost_per_1k_usd']:.4f}"
            if ev.get("cost_per_1k_usd") is not None and ev.get("incumbent_cost_per_1k_usd") else "-")  # fmt: skip
    return p95, cost


def _zero_shot_row(z: dict) -> dict:
    p95, cost = _evidence(z["evidence"])
    return {"turn": "0", "served_by": "-", "live_accuracy": "-", "dataset": "-", "candidate": z["candidate"],
            "benchmark quality": _quality(z["comparisons"]), "p95 ms": p95, "cost / 1k req": cost,
            "decision": "the starting point: the base before any training (not a candidate)"}  # fmt: skip


def _row(i: int, live: dict, turn: dict) -> dict:
    counts = (turn["dataset"] or {}).get("counts", {})
    p95, cost = _evidence(turn["evidence"])
    return {
        "turn": str(i), "served_by": live["served_by"], "live_accuracy": f"{live['live_accuracy']:.1%}",
        "dataset": f"{counts.get('train', '?')} train ex", "candidate": (turn["candidate"] or {}).get("id", "-"),
        "benchmark quality": _quality(turn["comparisons"]), "p95 ms": p95, "cost / 1k req": cost,
        "decision": ("promote: " if turn["promoted"] else "refuse: ") + "; ".join(turn["reasons"]),
    }  # fmt: skip


def _adapters(url: str, key: str) -> list[str]:
    """The candidates the gateway can call now (adapters beside the base on the local engine)."""
    r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=60)
    r.raise_for_status()
    return [m["id"] for m in r.json()["data"] if m["id"] not in ("incumbent", "student") and not m["id"].startswith(TASK)]


def _html(rows: list[dict], turns: list[dict], path: Path) -> None:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    def rel(target: str) -> str:  # links that work wherever the folder is opened from
        return os.path.relpath(Path(target).resolve(), path.parent.resolve())

    charts = "".join(f'<h3>turn {t["turn"]}</h3><p><a href="{rel(t["report"])}">benchmark report</a></p>'
                     + "".join(f'<img src="{rel(c)}" width="420">' for c in t["charts"])
                     for t in turns if t["report"])  # fmt: skip
    path.write_text(f"<html><head><meta charset='utf-8'><title>Flywheel demo</title></head><body>"
                    f"<h1>Flywheel demo: {TASK}</h1><p>The incumbent is a SIMULATED provider "
                    f"({INCUMBENT.error_rate:.0%} wrong routes, {INCUMBENT.latency_ms:.0f} ms, declared prices).</p>"
                    f"<table border=1 cellpadding=4><tr>{head}</tr>{body}</table>{charts}</body></html>")  # fmt: skip


def run_demo(home: Path, *, turns: int = 2, per_turn: int | None = None, golden_size: int | None = None,
             student: str = "smollm2", console: Console | None = None) -> list[dict]:
    """Turn the loop `turns` times on the simulated support desk; return the summary rows (for
    SmolLM2 the zero-shot base first, then one per turn). `student`: "smollm2" (LoRA adapters on the
    embedded SmolLM2-135M-Instruct) or "tiny" (a from-scratch tiny model, fully fine-tuned: seconds
    per turn, for tests)."""
    if student not in STUDENTS:
        raise ValueError(f"student: expected one of {', '.join(STUDENTS)}, got {student!r}")
    per_turn, golden_size = per_turn or STUDENTS[student][0], golden_size or STUDENTS[student][1]
    console = console or Console()
    started = time.perf_counter()
    _reset(home)
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the demo has its own progress view
    # Prefect without a server unless one is configured; its files stay in the demo folder (which
    # exists by now: Prefect creates its home when imported).
    os.environ.setdefault("PREFECT_HOME", str(home.resolve() / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Its temporary server starts while training and the engine share the CPU: 20 s (the default) was too short.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from pipelines.turn import flywheel_flow
    console.print(f"[bold]Flywheel demo[/] in {home}: a support desk routing tickets ({', '.join(QUEUES)})")
    console.print(f"production starts on [italic]{INCUMBENT.name}[/], a SIMULATED provider: "
                  f"{INCUMBENT.error_rate:.0%} wrong routes, ~{INCUMBENT.latency_ms:.0f} ms, declared prices")  # fmt: skip
    base = _base(home, student, console)
    base_name = "tiny from-scratch model" if student == "tiny" else base.name
    _benchmark(home, golden_size)
    (home / "recipes").mkdir(exist_ok=True)
    (home / "recipes" / "student.yaml").write_text(TINY_RECIPE if student == "tiny" else SMOLLM2_RECIPE)
    rows, done = [], []
    with in_thread(simulated.create_app(INCUMBENT)) as provider_url:
        (home / "flywheel.toml").write_text(f"port = {_free_port()}\n" + _config(home, provider_url, base))
        settings = load_settings(home)
        with store.connect(settings.db_path) as con:
            assign(con, project=PROJECT, task=TASK, alias="production", model="incumbent", reason="the app's provider today")
        with service_key(settings, PROJECT) as key, running(settings) as url:  # running: the engine loads the base
            console.print(f"gateway at {url}; the app's OpenAI client now uses base_url={url}/v1, model={TASK!r}")
            if student != "tiny":  # where a pretrained student starts from (a from-scratch one knows nothing)
                with console.status(f"turn 0: benchmarking the base ({base_name}) zero-shot on {golden_size} golden tickets"):
                    zero = _zero_shot(settings, url, key, base_name)
                rows.append(_zero_shot_row(zero))
                done.append(zero)
                console.print(f"turn 0: the base, zero-shot: {rows[-1]['benchmark quality']}")
            for i in range(1, turns + 1):
                with console.status(f"turn {i}: the app sends {per_turn} tickets through the gateway"):
                    live = _app_traffic(url, key, i, per_turn)
                console.print(f"turn {i}: {per_turn} tickets answered by [bold]{live['served_by']}[/] in "
                              f"{live['seconds']:.0f} s (live accuracy {live['live_accuracy']:.1%}), "
                              f"{live['feedback']} feedback items")  # fmt: skip
                with console.status(f"turn {i}: the `flywheel` Prefect flow: curate → train → benchmark → gate"):
                    turn = flywheel_flow(task=TASK, data_dir=str(home))
                rows.append(_row(i, live, turn))
                done.append({**turn, "turn": i})
                console.print(f"turn {i}: {rows[-1]['decision']}")
                console.print(f"turn {i}: the local engine holds the base + adapters {_adapters(url, key) or 'none'}")
            with console.status(f"the app sends {per_turn // 2} more tickets"):
                final = _app_traffic(url, key, turns + 1, per_turn // 2)
    table = Table(title=f"{TASK}: every turn of the loop (incumbent = SIMULATED provider; student = LoRA on {base_name})"
                  if student != "tiny" else f"{TASK}: every turn of the loop (incumbent = SIMULATED provider)")  # fmt: skip
    for column in rows[0]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console(width=max(180, console.width)).print(table)
    console.print(f"after the loop the app is served by [bold]{final['served_by']}[/]: live accuracy "
                  f"{final['live_accuracy']:.1%} (it started at {rows[1]['live_accuracy'] if len(rows) > 1 else '-'})")  # fmt: skip
    report = home / "reports" / "demo.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    _html(rows, done, report)
    console.print(f"report: {report}   ({time.perf_counter() - started:.0f} s in all)")
    return rows
