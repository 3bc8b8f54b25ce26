"""Training throughput: TRL's SFT defaults vs our recipe's settings, same tiny model, same data.

    .venv/bin/python bench/train.py [--examples 2048] [--hidden 64] [--layers 2] [--threads N]

Prints real (non-pad) training tokens per second for each setting, the ratio to TRL's defaults,
and each run's peak RSS. Every setting trains one epoch over the same examples (the demo's short
support tickets) in its own spawned process, so imports, caches and peak memory don't leak from one
to the next. "Real tokens" are counted once from the chat-templated dataset: the same number for
every setting, so tokens/s is examples/s times a constant; padding is what the defaults pay for.

Settings:
- `trl-defaults`: `SFTConfig()` as TRL ships it (only `use_cpu` added where there is no GPU):
  no packing, per-batch padding, batch 8, gradient checkpointing on.
- `trl-defaults+cpu-fixes`: the same plus bf16/gradient checkpointing off (STACK.md), to separate
  that effect from packing's.
- `flywheel`: `flywheel.recipes.trl_config` of the `sft-full` recipe: gradient checkpointing and
  bf16 off on CPU, batch 16, and packing "auto" — bfd packing (padding-free) on CUDA, none on CPU.
  `--set packing=true` shows why: on CPU, sdpa attends each packed row in full (a block-diagonal
  mask), so the attention cost per token grows with the row length; on these ~42-token tickets
  that cost more than the ~15% padding it saves (128-token rows: 0.7x of unpacked; 512: worse).
  On a GPU with varlen flash attention that cost goes away and packing is the win.
These are figures, not asserts.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def _run(name: str, base: str, data: str, max_length: int, batch: int, sets: dict, threads: int | None, out: dict) -> None:
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer, logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    from flywheel.recipes import load_recipe, trl_config

    hf_logging.set_verbosity_error()
    if threads:
        torch.set_num_threads(threads)
    ds = load_from_disk(data)
    work = tempfile.mkdtemp()
    common = dict(num_train_epochs=1, save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=10_000, seed=0)
    if name.startswith("trl-defaults"):
        cfg = SFTConfig(output_dir=work, use_cpu=not torch.cuda.is_available(), **common)
        if name.endswith("cpu-fixes"):
            cfg = SFTConfig(output_dir=work, use_cpu=not torch.cuda.is_available(), bf16=False, gradient_checkpointing=False, **common)
    else:
        overrides = {k: v for k, v in (("max_length", max_length), ("per_device_train_batch_size", batch)) if v}
        recipe = load_recipe("sft-full", base_model=base, **overrides, **sets)
        cfg = trl_config(recipe, work, has_eval=False)
        for key, value in common.items():
            setattr(cfg, key, value)
    model = AutoModelForCausalLM.from_pretrained(base)
    tok = AutoTokenizer.from_pretrained(base)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    start = time.perf_counter()
    trainer.train()
    out[name] = {
        "seconds": time.perf_counter() - start,
        "steps": trainer.state.global_step,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=None, help="our packed row length (default: the recipe's)")
    parser.add_argument("--batch", type=int, default=None, help="our packed rows per step (default: the recipe's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field of our recipe (YAML value), e.g. --set packing=false")
    parser.add_argument("--settings", default="trl-defaults,trl-defaults+cpu-fixes,flywheel", help="comma-separated subset to run")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()

    from datasets import Dataset
    from transformers import AutoTokenizer

    from flywheel.tiny import build_tiny_model, ticket_examples, ticket_texts

    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    base = build_tiny_model(root / "base", ticket_texts(), hidden=args.hidden, layers=args.layers, max_length=max(1024, args.max_length or 0))
    rows = ticket_examples(args.examples, seed=0)
    Dataset.from_list(rows).save_to_disk(root / "data")
    tok = AutoTokenizer.from_pretrained(base)
    real_tokens = sum(len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]) for r in rows)

    import yaml

    sets = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    ctx = mp.get_context("spawn")
    results = ctx.Manager().dict()
    for name in args.settings.split(","):
        p = ctx.Process(target=_run, args=(name, str(base), str(root / "data"), args.max_length, args.batch, sets, args.threads, results))
        p.start()
        p.join()
        if p.exitcode != 0:
            print(f"{name}: failed (exit {p.exitcode})")

    from transformers import AutoModelForCausalLM

    params = sum(t.numel() for t in AutoModelForCausalLM.from_pretrained(base).parameters())
    print(f"\ntiny Llama hidden={args.hidden} layers={args.layers}; {args.examples} examples, "
          f"{real_tokens} real tokens ({real_tokens / args.examples:.1f}/example), 1 epoch each\n")
    print(f"{'setting':<24} {'steps':>6} {'seconds':>8} {'real tok/s':>11} {'vs defaults':>12} {'peak RSS MB':>12}")
    ref = results.get("trl-defaults")
    for name, r in results.items():
        rate = real_tokens / r["seconds"]
        ratio = rate / (real_tokens / ref["seconds"]) if ref else float("nan")
        print(f"{name:<24} {r['steps']:>6} {r['seconds']:>8.2f} {rate:>11,.0f} {ratio:>11.2f}x {r['peak_rss_mb']:>12.0f}")
    any_run = next(iter(results.values()), {})
    print(f"\ndevice={any_run.get('device')} torch threads={any_run.get('threads')} params={params:,}")


if __name__ == "__main__":
    main()
