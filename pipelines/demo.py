"""`flywheel demo`: the whole loop on a simulated product, from a fresh folder, in minutes.

The product is a support desk with two LLM features, two tasks of one project: a router that sends
tickets to a queue (`support-triage`, flywheel.demo.world) and an agent that calls tools to look
up, refund, re-address or escalate (`support-agent`, flywheel.demo.agent). Its app calls the
Flywheel gateway with the official `openai` client; production starts on a *simulated* upstream
provider (serving.simulated: known error rates, latency and price), and simulated users and
reviewers send feedback. The students (`student="smollm2"`, the default) are LoRA adapters on a
real pretrained base, SmolLM2-135M-Instruct (the embedded default, `flywheel.models.default_base`):
one per task, all loaded beside each other on the one engine that serves the base (two experts,
one base); the tests use `student="tiny"`, a from-scratch tiny model, fully fine-tuned. Before
turn 1 the base itself is benchmarked zero-shot on the router's golden set (the table's first
row). Each turn curates a task's recorded traffic, trains a student with TRL, benchmarks student vs
production on the task's golden set through the gateway, and promotes only if the gate passes; the
app's next traffic goes to whatever holds the alias then. The router turns the loop `turns` times;
the agent, with `--agent` (`make demo-agent`), once, in turn 1 (its prompts carry the tools, ≈390
tokens against ≈70, so a step of its training costs several of the router's: off by default, to
keep the demo within minutes).

The tasks, their sizes (requests per turn, training steps, golden sets, max_tokens) and recipes
are in `pipelines.demo_desks` (README: the figures).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgspec
import openai
from rich.console import Console

from flywheel import store
from flywheel.demo import agent
from flywheel.demo.world import (
    QUEUES,
    SYSTEM,
    TASK,
    ticket,
)
from flywheel.registry.deployments import assign
from flywheel.settings import Settings, load_settings
from pipelines.demo_desks import (
    AGENT,
    AGENT_INCUMBENT,
    AGENT_SIZES,
    APP_CONCURRENCY,
    DESKS,
    INCUMBENT,
    STUDENTS,
    TRIAGE,
    Desk,
    write_benchmark,
)
from pipelines.demo_table import print_table, turn_row, write_html, zero_shot_row
from pipelines.loop import service_key
from serving import simulated
from serving.app import in_thread, running

PROJECT = "demo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _task_config(home: Path, desk: Desk, base: Path) -> str:
    return f"""
[tasks.{desk.task}]
project = "{PROJECT}"
recipe = "{home / 'recipes' / f'{desk.task}.yaml'}"
base_model = "{base}"
benchmark = "{home / 'benchmarks' / f'{desk.task}.yaml'}"
route = "student"
# only verified answers: corrections and thumbs-up (the incumbent's unrated answers are ~20% wrong)
curation = {{ min_examples = 50, keep_unlabelled = false }}
"""


def _config(home: Path, provider_url: str, base: Path, desks: tuple[Desk, ...]) -> str:
    return f"""# written by `flywheel demo`
[routes.incumbent]          # SIMULATED upstream provider: {INCUMBENT.error_rate:.0%} wrong routes; as the agent {1 - AGENT_INCUMBENT.expected_accuracy():.0%} wrong calls
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
redact_input = true         # the students learned on redacted requests
usd_per_1k_prompt = 0.0002  # a small CPU box, per token
usd_per_1k_completion = 0.0004

[optimize]                  # `flywheel optimize --task T` also tries the student cut to its first 6 layers (of
layers = [6]                # SmolLM2's 30), fine-tuned on the answers it was trained on: kept if its accuracy holds
""" + "".join(_task_config(home, desk, base) for desk in desks)


def _base(home: Path, student: str, console: Console) -> Path:
    """The students' base model: the embedded SmolLM2 (imported into the folder once), or a tiny one."""
    if student == "tiny":
        from flywheel import tools
        from flywheel.demo.tiny import build_tiny_model

        rng = random.Random(7)
        texts = [SYSTEM, *QUEUES, *(ticket(rng)[0] for _ in range(400)), agent.SYSTEM, tools.TOOLS_PREAMBLE,
                 *(msgspec.json.encode(t).decode() for t in agent.TOOLS), *(agent.request(rng)[0] for _ in range(200))]  # fmt: skip
        return build_tiny_model(home / "models" / "base", texts, hidden=64, layers=2, max_length=1024)
    from flywheel.models import DEFAULT_BASE, default_base, get_model

    if get_model(home, DEFAULT_BASE) is not None:
        console.print(f"base model: {DEFAULT_BASE} (imported by an earlier demo run in this folder)")
        return default_base(home)
    with console.status(f"importing the embedded base model {DEFAULT_BASE} (GGUF → Hugging Face folder, once)"):
        started = time.perf_counter()
        path = default_base(home)
    console.print(f"base model: {DEFAULT_BASE} imported in {time.perf_counter() - started:.0f} s → {path}")
    return path


def _start_prefect_server() -> Callable[[], None]:
    """Start Prefect's temporary server now, beside the base's import and the zero-shot benchmark,
    rather than at turn 1's first flow run (≈16 s on 2 cores, measured). Returns the wait for it:
    `SubprocessASGIServer.start` marks itself running before the server is healthy, so a flow run
    that called it meanwhile would not wait. Nothing starts when a Prefect API is configured."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return lambda: None
    # A failure here is not lost: the flow run calls `start` again and raises it.
    starting = threading.Thread(target=SubprocessASGIServer().start, name="prefect-server", daemon=True)
    starting.start()
    return starting.join


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


def _app_traffic(url: str, key: str, desk: Desk, turn: int, n: int) -> dict:
    """The simulated app: n requests of one feature through the gateway, then its users' feedback."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=2, timeout=600)
    rng = random.Random(desk.seed + turn)
    requests = [(*desk.ask(rng), f"user-{rng.randint(1, 500)}") for _ in range(n)]

    def call(item):
        text, truth, user = item
        raw = client.chat.completions.with_raw_response.create(
            model=desk.task, messages=[{"role": "system", "content": desk.system}, {"role": "user", "content": text}],
            max_tokens=desk.max_tokens, temperature=0, user=user, **({"tools": desk.tools} if desk.tools else {}))  # fmt: skip
        answer = raw.parse()
        message = answer.choices[0].message
        calls = [{"name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls or []]
        return raw.headers["x-flywheel-interaction-id"], truth, message.content or "", calls, answer.model

    started = time.perf_counter()
    with ThreadPoolExecutor(APP_CONCURRENCY) as pool:
        answers = list(pool.map(call, requests))
    seconds = time.perf_counter() - started
    feedback = [f for iid, truth, text, calls, _ in answers if (f := desk.feedback(rng, iid, truth, text, calls))]
    httpx.post(f"{url}/v1/feedback", json={"feedback": feedback}, headers={"Authorization": f"Bearer {key}"},
               timeout=60).raise_for_status()  # fmt: skip
    right = sum(desk.right(truth, text, calls) for _, truth, text, calls, _ in answers)
    return {"requests": n, "live_accuracy": right / n, "served_by": answers[-1][4], "feedback": len(feedback),
            "seconds": seconds}  # fmt: skip


def _zero_shot(settings: Settings, url: str, key: str, base_name: str) -> dict:
    """The base model itself, benchmarked through the gateway (route `student`, no adapter) against
    the incumbent on the router's golden set: where the students start from."""
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
        "task": TASK, "turn": "0 (the base, zero-shot)", "candidate": f"{base_name} (base, zero-shot)",
        "comparisons": [{"metric": x.metric, "dimension": x.dimension, "candidate": x.candidate, "incumbent": x.incumbent,
                         "diff": x.diff, "ci_low": x.ci_low, "ci_high": x.ci_high, "verdict": x.verdict}
                        for x in (v.comparisons if v else [])],
        "evidence": {"latency_p95_ms": report.candidate.latency.get("p95_ms"),
                     "cost_per_1k_usd": report.candidate.cost.get("per_1k_requests_usd"),
                     "incumbent_cost_per_1k_usd": report.incumbent.cost.get("per_1k_requests_usd") if report.incumbent else None},
        "report": str(report.html_path), "charts": [str(c) for c in getattr(report, "charts", [])],
    }  # fmt: skip


def _adapters(url: str, key: str) -> list[str]:
    """The candidates the gateway can call now (adapters beside the base on the local engine)."""
    r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=60)
    r.raise_for_status()
    aliases = tuple(desk.task for desk in DESKS)
    return [m["id"] for m in r.json()["data"] if m["id"] not in ("incumbent", "student") and not m["id"].startswith(aliases)]


def run_demo(home: Path, *, turns: int = 2, per_turn: int | None = None, golden_size: int | None = None,
             student: str = "smollm2", with_agent: bool = False, console: Console | None = None) -> list[dict]:
    """Turn the loop on the simulated support desk: the router `turns` times, the agent once (in
    turn 1); return the summary rows (for SmolLM2 the router's zero-shot base first, then one per
    task and turn). `per_turn` and `golden_size` size the router's turns. `student`: "smollm2" (LoRA
    adapters on the embedded SmolLM2-135M-Instruct) or "tiny" (a from-scratch tiny model, fully
    fine-tuned: seconds per turn, for tests). `with_agent`: the agent too (`make demo-agent`); off by
    default to keep the demo near 6 minutes: its long prompts make each of its 96 updates ≈5x a
    router update."""
    if student not in STUDENTS:
        raise ValueError(f"student: expected one of {', '.join(STUDENTS)}, got {student!r}")
    per_turn, golden_size = per_turn or STUDENTS[student][0], golden_size or STUDENTS[student][1]
    agent_requests, agent_golden, agent_final = AGENT_SIZES[student]
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

    prefect_ready = _start_prefect_server()
    console.print(f"[bold]Flywheel demo[/] in {home}: a support desk that routes tickets ({', '.join(QUEUES)}) "
                  f"and an agent that calls tools ({', '.join(agent.TOOL_NAMES)})")  # fmt: skip
    a = AGENT_INCUMBENT
    console.print(f"production starts on [italic]{INCUMBENT.name}[/], a SIMULATED provider: "
                  f"{INCUMBENT.error_rate:.0%} wrong routes; as the agent, on requests that need a tool {a.wrong_tool:.0%} "
                  f"wrong tool and {a.wrong_argument:.0%} a wrong argument, on those that need none {a.needless_call:.0%} "
                  f"a call anyway ({1 - a.expected_accuracy():.0%} of calls wrong); ~{INCUMBENT.latency_ms:.0f} ms, declared prices")  # fmt: skip
    base = _base(home, student, console)
    base_name = "tiny from-scratch model" if student == "tiny" else base.name
    write_benchmark(home, TRIAGE, golden_size)
    desks = (TRIAGE, AGENT) if with_agent else (TRIAGE,)
    if with_agent:
        write_benchmark(home, AGENT, agent_golden)
    (home / "recipes").mkdir(exist_ok=True)
    for desk in desks:
        (home / "recipes" / f"{desk.task}.yaml").write_text(desk.recipes[student])
    rows, done, first = [], [], {}
    with in_thread(simulated.create_app(INCUMBENT, agent=AGENT_INCUMBENT)) as provider_url:
        (home / "flywheel.toml").write_text(f"port = {_free_port()}\n" + _config(home, provider_url, base, desks))
        settings = load_settings(home)
        with store.connect(settings.db_path) as con:
            for desk in desks:
                assign(con, project=PROJECT, task=desk.task, alias="production", model="incumbent", reason="the app's provider today")
        with service_key(settings, PROJECT) as key, running(settings) as url:  # running: the engine loads the base
            console.print(f"gateway at {url}; the app's OpenAI client now uses base_url={url}/v1, "
                          f"model={TASK!r} or {agent.TASK!r}")  # fmt: skip
            if student != "tiny":  # where a pretrained student starts from (a from-scratch one knows nothing)
                with console.status(f"turn 0: benchmarking the base ({base_name}) zero-shot on {golden_size} golden tickets"):
                    zero = _zero_shot(settings, url, key, base_name)
                rows.append(zero_shot_row(TASK, zero))
                done.append(zero)
                console.print(f"turn 0: the base, zero-shot: {rows[-1]['benchmark quality']}")
            for i in range(1, turns + 1):
                for desk, n in ((TRIAGE, per_turn), (AGENT, agent_requests))[: len(desks) if i == 1 else 1]:
                    with console.status(f"turn {i}: the app sends {n} {desk.task} requests through the gateway"):
                        live = _app_traffic(url, key, desk, i, n)
                    first.setdefault(desk.task, live)
                    console.print(f"turn {i}: {n} {desk.task} requests answered by [bold]{live['served_by']}[/] in "
                                  f"{live['seconds']:.0f} s (live accuracy {live['live_accuracy']:.1%}), "
                                  f"{live['feedback']} feedback items")  # fmt: skip
                    with console.status(f"turn {i}: the `flywheel` Prefect flow for {desk.task}: curate → train → benchmark → gate"):
                        prefect_ready()
                        turn = flywheel_flow(task=desk.task, data_dir=str(home))
                    rows.append(turn_row(desk.task, i, live, turn))
                    done.append({**turn, "task": desk.task, "turn": i})
                    console.print(f"turn {i}: {desk.task}: {rows[-1]['decision']}")
                console.print(f"turn {i}: the local engine holds the base + adapters {_adapters(url, key) or 'none'}")
            finals = {}
            for desk, n in ((TRIAGE, per_turn // 2), (AGENT, agent_final))[: len(desks)]:
                with console.status(f"the app sends {n} more {desk.task} requests"):
                    finals[desk.task] = _app_traffic(url, key, desk, turns + 1, n)
    title = f"the support desk: every turn of the loop, {' and '.join(d.task for d in desks)} (incumbent = SIMULATED provider"
    print_table(rows, title + (f"; students = LoRA adapters on {base_name}, one engine)" if student != "tiny" else ")"), console)
    for task, final in finals.items():
        console.print(f"after the loop {task} is served by [bold]{final['served_by']}[/]: live accuracy "
                      f"{final['live_accuracy']:.1%} (it started at {first[task]['live_accuracy']:.1%})")  # fmt: skip
    report = home / "reports" / "demo.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    write_html(rows, done, report, title=f"Flywheel demo: {', '.join(d.task for d in desks)}",
               note=f"The incumbent is a SIMULATED provider ({INCUMBENT.error_rate:.0%} wrong routes; as the agent "
                    f"{a.wrong_tool:.0%} wrong tool, {a.wrong_argument:.0%} wrong argument, {a.needless_call:.0%} needless "
                    "calls; declared latency and prices).")  # fmt: skip
    console.print(f"report: {report}   ({time.perf_counter() - started:.0f} s in all)")
    return rows
