"""Serving benchmark: prints figures, asserts nothing.

1. Local engine throughput (completion tokens/s) and p50/p99 latency at concurrency 1, 8, 32
   through the OpenAI API of a real `flywheel serve`, against sequential `model.generate` calls
   on the same model and prompts in the same run (target: >= 4x at 32).
2. Multi-LoRA memory: server RSS with 8 adapters loaded vs none (target <= 1.1x on the real base).
3. Gateway overhead of an upstream route (to a second local server): added p50 latency (target < 5 ms).

    .venv/bin/python bench/serve.py [--base tiny|smollm2|FOLDER] [--tokens 32]

`--base tiny` (the default) builds a 6-layer tiny Llama in seconds; `--base smollm2` serves the
embedded SmolLM2-135M-Instruct (imported into the bench's folder first, ≈45 s) or FOLDER, an
already imported Hugging Face folder. The real base decodes ≈10x slower on 2 cores, so it runs
fewer requests per level (SIZES).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import Server, make_keys
from test_gateway import make_adapter

PROMPTS = [f"Ticket {i}: my parcel {i} is late and the courier does not answer" for i in range(256)]
# base -> (baseline prompts, requests at concurrency 1, 8, 32, gateway-overhead pairs): enough for
# a steady rate, small enough that the real base's run stays within minutes on 2 cores.
SIZES = {"tiny": (32, (16, 64, 128), 60), "real": (4, (4, 8, 32), 20)}


def baseline(path: str, prompts: list[str], tokens: int) -> tuple[float, int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    produced = 0
    started = time.perf_counter()
    with torch.inference_mode():
        for p in prompts:
            ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)  # fmt: skip
            out = model.generate(**ids, max_new_tokens=tokens, do_sample=False)
            produced += out.shape[1] - ids["input_ids"].shape[1]
    return time.perf_counter() - started, produced


def load(client: openai.OpenAI, model: str, prompts: list[str], tokens: int, concurrency: int):
    def one(p):
        t0 = time.perf_counter()
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": p}],
                                           max_tokens=tokens, temperature=0)  # fmt: skip
        return time.perf_counter() - t0, r.usage.completion_tokens

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, prompts))
    wall = time.perf_counter() - started
    latencies = sorted(r[0] for r in results)
    return sum(r[1] for r in results) / wall, latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99) - 1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="tiny", help="tiny (built here), smollm2 (the embedded SmolLM2-135M-Instruct, "
                        "imported here) or the folder of an imported Hugging Face model")
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-serve-"))
    up_dir = work / "upstream"
    up_dir.mkdir()
    base = _base(args.base, work, up_dir)
    import transformers

    n_params = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(base).parameters())
    n_baseline, levels, n_overhead = SIZES["tiny" if args.base == "tiny" else "real"]
    print(f"{args.base} ({base}): {n_params / 1e6:.1f}M parameters, {args.tokens} new tokens per request, greedy")

    # adapter_dirs: the bench's adapters live in its own folder, outside <home>/models
    (up_dir / "flywheel.toml").write_text(f'[gateway]\nmax_tokens = 256\n[serving]\nadapter_dirs = ["{work}"]\n'
                                          f'[routes.local]\nkind = "local"\npath = "{base}"\nmax_batch = 32\nmax_wait_ms = 5\n')
    key = make_keys(up_dir, "bench", role="admin")["bench"]  # admin: it loads adapters
    up = Server(up_dir).start()
    gw_dir = work / "gateway"
    gw_dir.mkdir()
    (gw_dir / "flywheel.toml").write_text(f'[routes.remote]\nkind = "upstream"\nbase_url = "{up.url}/v1"\napi_key_env = "UP_KEY"\nmodel = "local"\n')
    gw_key = make_keys(gw_dir, "bench")["bench"]
    gw = Server(gw_dir, env={"UP_KEY": key}).start()
    try:
        client = openai.OpenAI(base_url=f"{up.url}/v1", api_key=key, max_retries=0, timeout=300)
        load(client, "local", PROMPTS[:8], 4, 8)  # warm up
        base_s, base_tokens = baseline(base, PROMPTS[:n_baseline], args.tokens)
        base_tps = base_tokens / base_s
        print(f"baseline: sequential model.generate, {n_baseline} prompts: {base_tps:,.1f} tokens/s")
        for concurrency, n in zip((1, 8, 32), levels):
            tps, p50, p99 = load(client, "local", PROMPTS[:n], args.tokens, concurrency)
            print(f"engine, concurrency {concurrency:>2}, {n} requests: {tps:,.1f} tokens/s ({tps / base_tps:.1f}x baseline), "
                  f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")  # fmt: skip

        before = rss_mb(up.proc.pid)
        admin = httpx.Client(base_url=up.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        for i in range(8):
            path = make_adapter(base, work / f"ada-{i}", i)
            assert admin.post("/v1/load_lora_adapter", json={"lora_name": f"ada-{i}", "lora_path": path}).status_code == 200
            load(client, f"ada-{i}", PROMPTS[:4], 4, 4)
        after = rss_mb(up.proc.pid)
        print(f"multi-LoRA: RSS {before:,.0f} MB with no adapter, {after:,.0f} MB with 8 ({after / before:.2f}x) "
              f"[target <= {'1.2' if args.base == 'tiny' else '1.1'}x]")

        via = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw_key, max_retries=0)
        direct, proxied = [], []
        for i in range(n_overhead):  # interleaved, one token each: the difference is the gateway's own time
            for c, model, sink in ((client, "local", direct), (via, "remote", proxied)):
                t0 = time.perf_counter()
                c.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPTS[i]}],
                                          max_tokens=1, temperature=0)  # fmt: skip
                sink.append(time.perf_counter() - t0)
        d, p = statistics.median(direct) * 1000, statistics.median(proxied) * 1000
        print(f"gateway overhead (upstream route): p50 {p:.1f} ms via gateway vs {d:.1f} ms direct: +{p - d:.1f} ms [target < 5 ms]")
    finally:
        gw.stop()
        up.stop()


def _base(name: str, work: Path, home: Path) -> str:
    """The served model's folder: a tiny Llama built here, the embedded SmolLM2 imported into `home`
    (as `flywheel serve` would on first use), or a folder given."""
    if name == "tiny":
        from flywheel.demo.tiny import build_tiny_model, ticket_texts

        return str(build_tiny_model(work / "base", ticket_texts(400), hidden=384, layers=6, heads=6, max_length=256))
    if name == "smollm2":
        from flywheel.models import default_base

        started = time.perf_counter()
        path = default_base(home)
        print(f"imported the embedded SmolLM2-135M-Instruct in {time.perf_counter() - started:.0f} s")
        return str(path)
    if not (Path(name) / "config.json").exists():
        raise SystemExit(f"--base: expected tiny, smollm2 or a Hugging Face model folder, got {name!r}")
    return str(Path(name).resolve())


if __name__ == "__main__":
    main()
