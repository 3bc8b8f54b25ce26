"""Training: TRL's defaults vs our recipe's settings, same base, same data, side by side.

    .venv/bin/python bench/train.py [--base smollm2] [--examples 120] [--held-out 40] [--set lora.top_layers=null]
    .venv/bin/python bench/train.py --base tiny [--examples 2048] [--hidden 64] [--layers 2] [--threads N]

Every setting trains in its own spawned process (imports, caches and peak memory don't leak from
one to the next) on the same examples (the demo's short support tickets); "real tokens" are the
non-pad tokens trained on (`num_input_tokens_seen`, non-padding), so tokens/s is what each setting
does with the machine, padding and frozen layers included. These are figures, not asserts.

`--base smollm2` (the default): LoRA SFT on the embedded pretrained base, SmolLM2-135M-Instruct
(`flywheel.models.default_base`, imported once into `--data-dir`), then held-out accuracy: exact
match of the greedy answer (the label) on `--held-out` tickets not trained on. Settings:
- `trl-defaults`: `SFTConfig()` and PEFT's `LoraConfig(task_type="CAUSAL_LM")` as shipped (only
  `use_cpu` added where there is no GPU): r=8 on q/v of every layer, lr 2e-5, 3 epochs, batch 8,
  loss on every token of the chat, gradient checkpointing on, bf16 on.
- `trl-defaults+cpu-fixes`: the same with bf16/gradient checkpointing off (STACK.md).
- `flywheel`: `trl_config` + `lora_config` of the `sft` recipe (recipes/sft.yaml says why): LoRA on
  the top 8 layers only, lr 1e-3, completion-only loss (the chats given as prompt/completion),
  3 epochs, batch 8 x 2. `--set KEY=VALUE` changes one field (`lora.top_layers=null`, …).
- `flywheel-no-reuse`: `flywheel` computing the frozen lower layers at every epoch
  (`reuse_frozen_layers: false`), as before `flywheel.train.frozen_layers`.
- `flywheel-all-positions`: `flywheel` with TRL's LM head scoring every position on a CPU, as
  before `flywheel.train.labelled_positions` (it keeps the labelled ones only on CUDA).
- `base`: no training: the base's own accuracy.

`--base tiny`: a tiny random-init Llama, full fine-tune, one epoch, throughput only (the settings
above without `base`; `flywheel` is the `sft-full` recipe): gradient checkpointing and bf16 off on
CPU, batch 16, packing "auto" — bfd packing (padding-free) on CUDA, none on CPU. `--set
packing=true` shows why: on CPU, sdpa attends each packed row in full (a block-diagonal mask), so
the attention cost per token grows with the row length; on these ~42-token tickets that cost more
than the ~15% padding it saves (128-token rows: 0.7x of unpacked; 512: worse). On a GPU with
varlen flash attention that cost goes away and packing is the win.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

COMMON = {"save_strategy": "no", "report_to": "none", "disable_tqdm": True, "logging_steps": 10_000, "seed": 0,
          "include_num_input_tokens_seen": "non_padding"}


def _overrides(sets: dict) -> dict:
    """`--set` pairs as recipe overrides: `lora.top_layers=null` updates one key of the lora mapping."""
    out: dict = {}
    for key, value in sets.items():
        if key.startswith("lora."):
            out.setdefault("lora", {})[key.split(".", 1)[1]] = value
        else:
            out[key] = value
    return out


def _recipe(name: str, base: str, sets: dict, **extra):
    import dataclasses

    from flywheel.train.recipes import load_recipe

    recipe = load_recipe(name, base_model=base, **extra)
    over = _overrides(sets)
    if "lora" in over:
        lora = {**dataclasses.asdict(recipe.lora or load_recipe("sft").lora), **over.pop("lora")}
        over["lora"] = lora
    return recipe.replace(**over) if over else recipe


def _run_real(name: str, base: str, data: str, sets: dict, threads: int | None, out: dict) -> None:
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from transformers import logging as hf_logging

    from flywheel.train.generate import exact_match

    hf_logging.set_verbosity_error()
    if threads:
        torch.set_num_threads(threads)
    cpu = not torch.cuda.is_available()
    train_ds, held_out = load_from_disk(f"{data}/train"), load_from_disk(f"{data}/held_out")
    work = tempfile.mkdtemp()
    set_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    tok = AutoTokenizer.from_pretrained(base)
    result = {"threads": torch.get_num_threads(), "device": "cpu" if cpu else "cuda"}
    if name != "base":
        from peft import LoraConfig
        from trl import SFTConfig, SFTTrainer

        speedups = contextlib.nullcontext()
        if name.startswith("trl-defaults"):
            fixes = {"bf16": False, "gradient_checkpointing": False} if name.endswith("cpu-fixes") else {}
            cfg = SFTConfig(output_dir=work, use_cpu=cpu, **fixes, **COMMON)
            peft = LoraConfig(task_type="CAUSAL_LM")
        else:
            from flywheel.train.recipes import lora_config, trl_config
            from flywheel.train.trainers import as_prompt_completion

            recipe = _recipe("sft", base, {**sets, **({"reuse_frozen_layers": False} if name == "flywheel-no-reuse" else {})})
            cfg = trl_config(recipe, work, has_eval=False)
            for key, value in COMMON.items():
                setattr(cfg, key, value)
            peft = lora_config(recipe, model.config)
            if recipe.completion_only_loss:  # what flywheel.train.trainers does with chats
                train_ds = as_prompt_completion(train_ds, tok)
            result["recipe"] = {k: v for k, v in recipe.to_dict().items() if k in ("learning_rate", "num_train_epochs", "lora", "completion_only_loss")}
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=train_ds, processing_class=tok, peft_config=peft)
        if name.startswith("flywheel"):  # what flywheel.train.trainers trains inside
            from flywheel.train.speedups import training_speedups

            speedups = training_speedups(trainer, recipe, labelled_positions=name != "flywheel-all-positions")
        start = time.perf_counter()
        with speedups:
            trainer.train()
        result.update(seconds=time.perf_counter() - start, steps=trainer.state.global_step,
                      tokens=int(trainer.state.num_input_tokens_seen or 0),
                      trainable=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
                      epochs=cfg.num_train_epochs, lr=cfg.learning_rate)
        model = trainer.model
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    start = time.perf_counter()
    result["accuracy"] = exact_match(model, tok, list(held_out), max_new_tokens=8)
    result["eval_seconds"] = time.perf_counter() - start
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out[name] = result


def _run_tiny(name: str, base: str, data: str, max_length: int, batch: int, sets: dict, threads: int | None, out: dict) -> None:
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    from flywheel.train.recipes import trl_config

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
        recipe = _recipe("sft-full", base, sets, **overrides)
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


def _spawn(target, names: list[str], args_for) -> dict:
    ctx = mp.get_context("spawn")
    results = ctx.Manager().dict()
    for name in names:
        p = ctx.Process(target=target, args=(name, *args_for(), results))
        p.start()
        p.join()
        if p.exitcode != 0:
            print(f"{name}: failed (exit {p.exitcode})", flush=True)
        else:  # as soon as it is known: a long run's first figures are not lost to an interrupt
            print(f"{name}: {dict(results[name])}", flush=True)
    return dict(results)


def main_real(args, sets: dict) -> None:
    from datasets import Dataset

    from flywheel.demo.tiny import ticket_examples
    from flywheel.models import default_base

    base = Path(args.base_model) if args.base_model else default_base(Path(args.data_dir).expanduser())
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    rows = ticket_examples(args.examples + args.held_out, seed=args.seed)
    Dataset.from_list(rows[: args.examples]).save_to_disk(root / "data" / "train")
    Dataset.from_list(rows[args.examples :]).save_to_disk(root / "data" / "held_out")
    names = args.settings.split(",") if args.settings else ["trl-defaults", "flywheel"]
    results = _spawn(_run_real, names, lambda: (str(base), str(root / "data"), sets, args.threads))

    print(f"\nLoRA SFT on {base.name} ({base}); {args.examples} train / {args.held_out} held-out tickets (seed {args.seed})"
          + (f"; flywheel with {sets}" if sets else "") + "\n")
    print(f"{'setting':<24} {'epochs':>6} {'lr':>8} {'steps':>6} {'train s':>8} {'real tok/s':>11} {'vs defaults':>12} "
          f"{'held-out acc':>13} {'trainable':>11} {'peak RSS MB':>12}")
    ref_name, ref = _reference(results)
    for name, r in results.items():
        if "seconds" not in r:
            print(f"{name:<24} {'-':>6} {'-':>8} {'-':>6} {'-':>8} {'-':>11} {'-':>12} {r['accuracy']:>12.0%} {'-':>11} {r['peak_rss_mb']:>12.0f}")
            continue
        rate = r["tokens"] / r["seconds"]
        ratio = rate / (ref["tokens"] / ref["seconds"]) if ref else float("nan")
        print(f"{name:<24} {r['epochs']:>6g} {r['lr']:>8.0e} {r['steps']:>6} {r['seconds']:>8.1f} {rate:>11,.0f} {ratio:>11.2f}x "
              f"{r['accuracy']:>12.0%} {r['trainable']:>11,} {r['peak_rss_mb']:>12.0f}")
    if ref and "flywheel" in results:
        ours = results["flywheel"]
        print(f"\nflywheel vs {ref_name}: {ours['tokens'] / ours['seconds'] / (ref['tokens'] / ref['seconds']):.2f}x real tokens/s, "
              f"{ours['seconds'] / ref['seconds']:.2f}x the training time, held-out accuracy {ours['accuracy']:.0%} vs {ref['accuracy']:.0%}")
    for before_name, what in (("flywheel-no-reuse", "reusing the frozen layers' output"),
                              ("flywheel-all-positions", "the LM head on labelled positions only")):
        if {"flywheel", before_name} <= results.keys():
            ours, before = results["flywheel"], results[before_name]
            print(f"{what}: {before['seconds'] / ours['seconds']:.2f}x faster training, "
                  f"held-out accuracy {ours['accuracy']:.0%} vs {before['accuracy']:.0%}")
    if "flywheel" in results:
        print(f"flywheel recipe: {results['flywheel'].get('recipe')}")
    any_run = next(iter(results.values()), {})
    print(f"device={any_run.get('device')} torch threads={any_run.get('threads')}")


def _reference(results: dict) -> tuple[str | None, dict | None]:
    """The baseline the ratios are against: TRL's defaults as shipped, else with the CPU fixes."""
    for name in ("trl-defaults", "trl-defaults+cpu-fixes"):
        if name in results and "seconds" in results[name]:
            return name, results[name]
    return None, None


def main_tiny(args, sets: dict) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flywheel.demo.tiny import build_tiny_model, ticket_examples, ticket_texts

    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    base = build_tiny_model(root / "base", ticket_texts(), hidden=args.hidden, layers=args.layers, max_length=max(1024, args.max_length or 0))
    rows = ticket_examples(args.examples, seed=args.seed)
    Dataset.from_list(rows).save_to_disk(root / "data")
    tok = AutoTokenizer.from_pretrained(base)
    real_tokens = sum(len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]) for r in rows)
    names = (args.settings or "trl-defaults,trl-defaults+cpu-fixes,flywheel").split(",")
    results = _spawn(_run_tiny, names, lambda: (str(base), str(root / "data"), args.max_length, args.batch, sets, args.threads))

    params = sum(t.numel() for t in AutoModelForCausalLM.from_pretrained(base).parameters())
    print(f"\ntiny Llama hidden={args.hidden} layers={args.layers}; {args.examples} examples, "
          f"{real_tokens} real tokens ({real_tokens / args.examples:.1f}/example), 1 epoch each\n")
    print(f"{'setting':<24} {'steps':>6} {'seconds':>8} {'real tok/s':>11} {'vs defaults':>12} {'peak RSS MB':>12}")
    _, ref = _reference(results)
    for name, r in results.items():
        rate = real_tokens / r["seconds"]
        ratio = rate / (real_tokens / ref["seconds"]) if ref else float("nan")
        print(f"{name:<24} {r['steps']:>6} {r['seconds']:>8.2f} {rate:>11,.0f} {ratio:>11.2f}x {r['peak_rss_mb']:>12.0f}")
    any_run = next(iter(results.values()), {})
    print(f"\ndevice={any_run.get('device')} torch threads={any_run.get('threads')} params={params:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", choices=("smollm2", "tiny"), default="smollm2",
                        help="smollm2: LoRA on the embedded pretrained base, with held-out accuracy (default); tiny: full fine-tune throughput")
    parser.add_argument("--base-model", default=None, help="smollm2 mode: a Hugging Face folder instead of the embedded base")
    parser.add_argument("--data-dir", default=os.environ.get("FLYWHEEL_HOME", ".flywheel"), help="where the embedded base is imported (once)")
    parser.add_argument("--examples", type=int, default=None, help="training examples (default: 120 smollm2, 2048 tiny)")
    parser.add_argument("--held-out", type=int, default=40, help="smollm2 mode: held-out examples for accuracy")
    parser.add_argument("--seed", type=int, default=0, help="which tickets")
    parser.add_argument("--hidden", type=int, default=64, help="tiny mode")
    parser.add_argument("--layers", type=int, default=2, help="tiny mode")
    parser.add_argument("--max-length", type=int, default=None, help="tiny mode: our packed row length (default: the recipe's)")
    parser.add_argument("--batch", type=int, default=None, help="tiny mode: our packed rows per step (default: the recipe's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of our recipe (YAML value), e.g. --set packing=false, --set lora.top_layers=null")
    parser.add_argument("--settings", default=None, help="comma-separated subset to run (smollm2 also knows 'base': no training)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.examples is None:
        args.examples = 120 if args.base == "smollm2" else 2048

    import yaml

    sets = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    (main_real if args.base == "smollm2" else main_tiny)(args, sets)


if __name__ == "__main__":
    main()
