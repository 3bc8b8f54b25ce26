"""Tool-call benchmark on the demo's support agent: prints figures, asserts nothing.

What constrained decoding buys and costs, measured side by side in one run on one engine, through
the OpenAI API of a real Flywheel service (the official client), on the agent's golden requests
(flywheel.demo.agent):

- `auto`: unconstrained; the model may call a tool or answer in words (all requests);
- `required`: `tool_choice: "required"`, decoding constrained (llguidance) to a call to one of the
  tools with arguments that follow its schema (the requests that need a tool);
- `named`: `tool_choice` naming the right function, constrained the same way (those requests).

Per mode: call accuracy (right function and arguments, BFCL-style typed match), JSON-schema
validity of the calls made, the share of answers that were a call, irrelevance (no call where none
was needed: `auto` only, the others must call), and completion tokens/s. The modes alternate in
rounds on the same requests, so a busy machine slows them alike.

    .venv/bin/python bench/tools.py --demo-dir D [--examples 40] [--concurrency 8] [--rounds 2]

`--demo-dir`: a folder `flywheel demo` ran in: its SmolLM2 base, and its newest ready
`support-agent` student (a LoRA adapter) when there is one, else the base alone; `--adapter F`
names the student's adapter folder instead (e.g. while the demo still holds its database).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parents[1]
# The repository before this folder (whose evals.py would shadow the `evals` package), and tests/ for its key helper.
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from conftest import free_port, make_keys

from evals.metrics import build_metric
from evals.spec import split_example
from flywheel import store
from flywheel.demo import agent
from flywheel.models import DEFAULT_BASE, base_dir
from flywheel.settings import load_settings
from serving.app import running

METRICS = {name: build_metric({"type": kind}) for name, kind in (
    ("call accuracy", "tool_call_args_typed"), ("schema valid", "tool_call_schema_valid"), ("irrelevance", "tool_call_irrelevance"))}  # fmt: skip


def student(demo_dir: Path) -> tuple[str, str] | None:
    """(id, adapter folder) of the demo's newest ready support-agent student, if any."""
    db = load_settings(demo_dir).db_path
    if not db.exists():
        return None
    with store.connect(db, read_only=True) as con:
        row = con.execute("SELECT id, adapter_path FROM models WHERE task = ? AND status = 'ready' AND adapter_path IS NOT NULL"
                          " ORDER BY created_at DESC LIMIT 1", [agent.TASK]).fetchone()  # fmt: skip
    return (row[0], row[1]) if row else None


def run(client: openai.OpenAI, model: str, examples: list, mode: str, concurrency: int) -> dict:
    def one(ex):
        choice = {"auto": "auto", "required": "required",
                  "named": {"type": "function", "function": {"name": (ex.expected_tool_calls or [{}])[0].get("name")}}}[mode]  # fmt: skip
        r = client.chat.completions.create(model=model, messages=ex.messages, tools=ex.tools, tool_choice=choice,
                                           max_tokens=64, temperature=0)  # fmt: skip
        msg = r.choices[0].message
        calls = [{"function": {"name": c.function.name, "arguments": c.function.arguments}} for c in msg.tool_calls or []]
        return ex, msg.content or "", calls, r.usage.completion_tokens

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(one, examples))
    wall = time.perf_counter() - started
    rows = [(bool(ex.expected_tool_calls), {name: m.score(text, ex, calls) for name, m in METRICS.items()}, bool(calls))
            for ex, text, calls, _ in answers]  # fmt: skip
    return {"rows": rows, "tokens": sum(a[3] for a in answers), "wall": wall}


def share(values: list) -> str:
    values = [v for v in values if v is not None]  # (a metric that does not apply to an answer)
    return f"{sum(values) / len(values):.3f} (n={len(values)})" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo-dir", type=Path, required=True, help="A folder `flywheel demo` ran in.")
    parser.add_argument("--adapter", type=Path, help="A student's adapter folder (default: the demo's newest ready "
                        "support-agent student, read from its database).")
    parser.add_argument("--examples", type=int, default=40, help="Golden requests (all modes use the same).")
    parser.add_argument("--concurrency", type=int, default=8, help="Parallel requests (the engine batches them).")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds of all modes, alternating.")
    args = parser.parse_args()

    base = base_dir(args.demo_dir) / DEFAULT_BASE
    if not base.is_dir():
        parser.error(f"--demo-dir: no imported {DEFAULT_BASE} under {args.demo_dir} (run `flywheel demo --data-dir` there first)")
    # (a trained model's adapter sits in <model id>/adapter: the id names it)
    name = args.adapter and (args.adapter.parent.name if args.adapter.name == "adapter" else args.adapter.name)
    found = (name, str(args.adapter.resolve())) if args.adapter else student(args.demo_dir)
    examples = [split_example(r, f"golden[{i}]") for i, r in enumerate(agent.golden(args.examples, seed=30_000))]
    needing = [ex for ex in examples if ex.expected_tool_calls]
    home = Path(tempfile.mkdtemp(prefix="bench-tools-"))
    (home / "flywheel.toml").write_text(
        f'port = {free_port()}\n[serving]\nadapter_dirs = ["{args.demo_dir.resolve()}"]\n'
        f'[routes.student]\nkind = "local"\npath = "{base}"\nmax_batch = {args.concurrency}\nmax_wait_ms = 20\n')
    settings = load_settings(home)
    key = make_keys(home, "bench", role="admin")["bench"]
    totals: dict[str, dict] = {}
    with running(settings) as url:
        model = "student"
        if found:
            r = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": found[0], "lora_path": found[1]},
                           headers={"Authorization": f"Bearer {key}"}, timeout=600)  # fmt: skip
            r.raise_for_status()
            model = found[0]
        print(f"model: {model} ({'LoRA student on ' if found else 'the base, no student found: '}{base.name}); "
              f"{len(examples)} golden requests, {len(needing)} need a tool; concurrency {args.concurrency}, "
              f"{args.rounds} rounds")  # fmt: skip
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, timeout=600, max_retries=0)
        run(client, model, examples[:2], "auto", 1)  # warm-up (the first batch, the grammar compiler)
        run(client, model, needing[:2], "required", 1)
        for _ in range(args.rounds):
            for mode in ("auto", "required", "named"):
                got = run(client, model, examples if mode == "auto" else needing, mode, args.concurrency)
                t = totals.setdefault(mode, {"rows": [], "tokens": 0, "wall": 0.0})
                t["rows"] += got["rows"]
                t["tokens"] += got["tokens"]
                t["wall"] += got["wall"]
    print(f"\n{'mode':<10}{'call acc (need a tool)':>24}{'call acc (all)':>18}{'schema valid':>16}{'calls made':>12}"
          f"{'irrelevance':>16}{'tokens':>8}{'s':>8}{'tok/s':>8}")  # fmt: skip
    for mode, t in totals.items():
        rows = t["rows"]
        print(f"{mode:<10}{share([r[1]['call accuracy'] for r in rows if r[0]]):>24}"
              f"{share([r[1]['call accuracy'] for r in rows]) if mode == 'auto' else '-':>18}"
              f"{share([r[1]['schema valid'] for r in rows]):>16}{sum(r[2] for r in rows) / len(rows):>12.3f}"
              f"{share([r[1]['irrelevance'] for r in rows]) if mode == 'auto' else '-':>16}{t['tokens']:>8}"
              f"{t['wall']:>8.1f}{t['tokens'] / t['wall']:>8.1f}")  # fmt: skip
    speed = {mode: t["tokens"] / t["wall"] for mode, t in totals.items()}
    print(f"\ncompletion tokens/s, constrained vs unconstrained: required {speed['required'] / speed['auto']:.2f}x, "
          f"named {speed['named'] / speed['auto']:.2f}x the auto rate")  # fmt: skip
    print(json.dumps({"model": model, "examples": len(examples), "concurrency": args.concurrency, "rounds": args.rounds,
                      "tok_s": {m: round(v, 2) for m, v in speed.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()
