"""`flywheel demo`: the whole loop on a simulated product, from a fresh folder, in minutes.

The product is a support desk that routes tickets (flywheel.simulate). Its app calls the
Flywheel gateway with the official `openai` client; production starts on a *simulated* upstream
provider (serving.simulated: a known error rate, latency and price), and simulated users and
agents send feedback. Each turn curates the recorded traffic, trains a tiny student with TRL,
benchmarks student vs production on a golden set through the gateway, and promotes only if the
gate passes; the app's next traffic goes to whatever holds the alias then.
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
from flywheel.deployments import assign
from flywheel.settings import load_settings
from flywheel.simulate import QUEUES, SYSTEM, TASK, Incumbent, golden, ticket, user_feedback
from flywheel.tiny import build_tiny_model
from pipelines.loop import service_key
from serving import simulated
from serving.app import in_thread, running

PROJECT = "demo"
INCUMBENT = Incumbent(latency_ms=400.0)  # simulated; kept short so the demo stays quick


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

[routes.student]            # our engine on this machine; price = a small CPU box, per token
kind = "local"
path = "{base}"
max_batch = 32
redact_input = true         # the student learned on redacted tickets
usd_per_1k_prompt = 0.0002
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


def _benchmark(home: Path) -> None:
    folder = home / "benchmarks"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "golden.jsonl").write_bytes(b"\n".join(msgspec.json.encode(r) for r in golden(200)))
    (folder / "golden.yaml").write_text(
        f"name: {TASK}-golden\ndescription: 200 tickets labelled by agents (simulated)\n"
        "source: {golden: golden.jsonl}\nsampling: {max_tokens: 8, temperature: 0}\n"
        f"metrics:\n  - {{type: accuracy, labels: [{', '.join(QUEUES)}]}}\n"
    )


def _app_traffic(url: str, key: str, turn: int, n: int) -> dict:
    """The simulated app: n tickets through the gateway, then its users' feedback."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=2)
    rng = random.Random(turn)
    tickets = [(*ticket(rng), f"user-{rng.randint(1, 500)}") for _ in range(n)]

    def call(item):
        text, truth, user = item
        raw = client.chat.completions.with_raw_response.create(
            model=TASK, messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
            max_tokens=8, temperature=0, user=user)  # fmt: skip
        answer = raw.parse()
        return raw.headers["x-flywheel-interaction-id"], truth, answer.choices[0].message.content or "", answer.model

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, tickets))
    seconds = time.perf_counter() - started
    feedback = [f for iid, truth, answer, _ in answers if (f := user_feedback(rng, iid, truth, answer))]
    httpx.post(f"{url}/v1/feedback", json={"feedback": feedback}, headers={"Authorization": f"Bearer {key}"},
               timeout=60).raise_for_status()  # fmt: skip
    right = sum(answer.strip() == truth for _, truth, answer, _ in answers)
    return {"requests": n, "live_accuracy": right / n, "served_by": answers[-1][3], "feedback": len(feedback),
            "seconds": seconds}  # fmt: skip


def _row(i: int, live: dict, turn: dict) -> dict:
    quality = next((c for c in turn["comparisons"] if c["dimension"] == "quality"), None)
    ev, counts = turn["evidence"], (turn["dataset"] or {}).get("counts", {})
    return {
        "turn": i, "served_by": live["served_by"], "live_accuracy": f"{live['live_accuracy']:.1%}",
        "dataset": f"{counts.get('train', '?')} train ex", "candidate": (turn["candidate"] or {}).get("id", "-"),
        "benchmark quality": (f"{quality['candidate']:.3f} vs {quality['incumbent']:.3f} "
                              f"(diff CI [{quality['ci_low']:+.3f}, {quality['ci_high']:+.3f}])" if quality else "-"),
        "p95 ms": f"{ev['latency_p95_ms']:.0f}" if ev.get("latency_p95_ms") is not None else "-",
        "cost / 1k req": (f"${ev['cost_per_1k_usd']:.4f} vs ${ev['incumbent_cost_per_1k_usd']:.4f}"
                          if ev.get("cost_per_1k_usd") is not None and ev.get("incumbent_cost_per_1k_usd") else "-"),
        "decision": ("promote: " if turn["promoted"] else "refuse: ") + "; ".join(turn["reasons"]),
    }  # fmt: skip


def _html(rows: list[dict], turns: list[dict], path: Path) -> None:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    def rel(target: str) -> str:  # links that work wherever the folder is opened from
        return os.path.relpath(Path(target).resolve(), path.parent.resolve())

    charts = "".join(f'<h3>turn {i + 1}</h3><p><a href="{rel(t["report"])}">benchmark report</a></p>'
                     + "".join(f'<img src="{rel(c)}" width="420">' for c in t["charts"])
                     for i, t in enumerate(turns) if t["report"])  # fmt: skip
    path.write_text(f"<html><head><meta charset='utf-8'><title>Flywheel demo</title></head><body>"
                    f"<h1>Flywheel demo: {TASK}</h1><p>The incumbent is a SIMULATED provider "
                    f"({INCUMBENT.error_rate:.0%} wrong routes, {INCUMBENT.latency_ms:.0f} ms, declared prices).</p>"
                    f"<table border=1 cellpadding=4><tr>{head}</tr>{body}</table>{charts}</body></html>")  # fmt: skip


def run_demo(home: Path, *, turns: int = 2, per_turn: int = 600, console: Console | None = None) -> list[dict]:
    """Turn the loop `turns` times on the simulated support desk; return the summary rows."""
    console = console or Console()
    os.environ.setdefault("TQDM_DISABLE", "1")  # the demo has its own progress view
    # Prefect without a server unless one is configured; its files stay in the demo folder.
    os.environ.setdefault("PREFECT_HOME", str(home.resolve() / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from pipelines.flywheel import flywheel_flow

    started = time.perf_counter()
    if home.exists() and (home / "flywheel.duckdb").exists():
        shutil.rmtree(home)  # a demo starts from nothing
    home.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]Flywheel demo[/] in {home}: a support desk routing tickets ({', '.join(QUEUES)})")
    console.print(f"production starts on [italic]{INCUMBENT.name}[/], a SIMULATED provider: "
                  f"{INCUMBENT.error_rate:.0%} wrong routes, ~{INCUMBENT.latency_ms:.0f} ms, declared prices")  # fmt: skip
    rng = random.Random(7)
    texts = [SYSTEM, *QUEUES, *(ticket(rng)[0] for _ in range(400))]
    base = build_tiny_model(home / "models" / "base", texts, hidden=64, layers=2, max_length=256)
    _benchmark(home)
    (home / "recipes").mkdir()
    (home / "recipes" / "student.yaml").write_text(  # the sft-full default, with more epochs for little data
        "method: sft\nlora: null\nlearning_rate: 3.0e-3\nnum_train_epochs: 30\nper_device_train_batch_size: 16\n"
        "max_length: 256\nassistant_only_loss: true\nwarmup_ratio: 0.05\neval_split: eval\nseed: 0\n")
    rows, done = [], []
    with in_thread(simulated.create_app(INCUMBENT)) as provider_url:
        (home / "flywheel.toml").write_text(f"port = {_free_port()}\n" + _config(home, provider_url, base))
        settings = load_settings(home)
        with store.connect(settings.db_path) as con:
            assign(con, project=PROJECT, task=TASK, alias="production", model="incumbent", reason="the app's provider today")
        with service_key(settings, PROJECT) as key, running(settings) as url:
            console.print(f"gateway at {url}; the app's OpenAI client now uses base_url={url}/v1, model={TASK!r}")
            for i in range(1, turns + 1):
                with console.status(f"turn {i}: the app sends {per_turn} tickets through the gateway"):
                    live = _app_traffic(url, key, i, per_turn)
                console.print(f"turn {i}: {per_turn} tickets answered by [bold]{live['served_by']}[/] "
                              f"(live accuracy {live['live_accuracy']:.1%}), {live['feedback']} feedback items")  # fmt: skip
                with console.status(f"turn {i}: the `flywheel` Prefect flow: curate → train → benchmark → gate"):
                    turn = flywheel_flow(task=TASK, data_dir=str(home))
                rows.append(_row(i, live, turn))
                done.append(turn)
                console.print(f"turn {i}: {rows[-1]['decision']}")
            final = _app_traffic(url, key, turns + 1, per_turn // 2)
    table = Table(title=f"{TASK}: every turn of the loop (incumbent = SIMULATED provider)")
    for column in rows[0]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console(width=max(180, console.width)).print(table)
    console.print(f"after the loop the app is served by [bold]{final['served_by']}[/]: live accuracy "
                  f"{final['live_accuracy']:.1%} (it started at {rows[0]['live_accuracy']})")  # fmt: skip
    report = home / "reports" / "demo.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    _html(rows, done, report)
    console.print(f"report: {report}   ({time.perf_counter() - started:.0f} s in all)")
    return rows
