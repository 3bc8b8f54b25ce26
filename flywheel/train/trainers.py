"""Run one TRL trainer for a recipe: the trainer its method names (`flywheel.train.methods`).

`run` loads the base, builds the trainer the recipe's method names, trains (resuming from a
checkpoint when given one), evaluates and saves the result under the candidate's folder:
`adapter/` (LoRA; plus `merged/` when the recipe asks) or `model/` (full fine-tune), each with
its tokenizer so it loads on its own. It knows nothing of the database: `flywheel.train.run` does
the registering and the error policy.

The guards that need to be inside the training loop are callbacks: `FiniteLossGuard` stops at
the first NaN/inf logged loss (Trainer's own log filter, which would hide it, is off in our
configs), `LogCallback` forwards the loss to the `flywheel.train.run` logger (Prefect shows it).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from flywheel.train.labelled_positions import labelled_positions_only
from flywheel.train.methods import METHODS
from flywheel.train.recipes import Recipe, lora_config, trl_config, use_bf16
from flywheel.train.speedups import training_speedups

log = logging.getLogger("flywheel.train")


class FiniteLossGuard(TrainerCallback):
    """Stops training at the first non-finite logged loss and remembers where it happened."""

    def __init__(self):
        self.tripped: tuple[int, str, float] | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "train_loss"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value) and self.tripped is None:
                self.tripped = (state.global_step, key, value)
                control.should_training_stop = True
                control.should_save = False  # a diverged checkpoint is worth nothing
                control.should_evaluate = False


class LogCallback(TrainerCallback):
    """One log line per Trainer log event: step, loss, learning rate (what Prefect's log view shows)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
        shown = " ".join(f"{k}={v:.4g}" for k, v in logs.items() if k in ("loss", "eval_loss", "learning_rate", "grad_norm", "epoch"))
        if shown:
            log.info("step %d/%d %s", state.global_step, state.max_steps, shown)


def load_model(path: str, recipe: Recipe):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # LoRA trains in the base's precision (bf16 on GPU halves the frozen weights); a full fine-tune
    # keeps fp32 master weights and lets autocast do bf16.
    dtype = torch.bfloat16 if (use_bf16(recipe) and recipe.lora is not None) else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # e.g. Llama 3: batching needs a pad token; eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def as_prompt_completion(ds, tokenizer):
    """`messages` rows (and their `tools`, when given) as token ids with a `completion_mask` on the
    last turn, the target, rendered by `flywheel.tools.render` as the engine renders them: a tool
    call is trained exactly as it will be asked for and parsed, and tool results are never a target.

    The completion is what the whole chat adds to its prompt with the assistant's turn opened (the
    tokens past their common prefix, as TRL does for prompt/completion data)."""
    from flywheel.tools import render

    def tokenize(row):
        tools = row.get("tools")
        prompt = tokenizer(render(tokenizer, row["messages"][:-1], tools, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        ids = tokenizer(render(tokenizer, row["messages"], tools, add_generation_prompt=False), add_special_tokens=False)["input_ids"]
        start = next((i for i, (a, b) in enumerate(zip(prompt, ids)) if a != b), min(len(prompt), len(ids)))
        return {"input_ids": ids, "completion_mask": [0] * start + [1] * (len(ids) - start)}

    return ds.map(tokenize, remove_columns=ds.column_names)


def offers_tools(ds) -> bool:
    """Whether any row of `ds` offers tools or holds a tool result: those rows must be rendered by
    `flywheel.tools`, which TRL's own chat rendering knows nothing of."""
    import pyarrow.compute as pc

    if "tools" in ds.column_names and ds.data.column("tools").null_count < len(ds):
        return True
    roles = pc.list_flatten(ds.data.column("messages")).combine_chunks().field("role")
    return bool(pc.any(pc.equal(roles, "tool")).as_py())


def build_trainer(recipe: Recipe, model, tokenizer, train_ds, eval_ds, out_dir: Path, callbacks: list):
    args = trl_config(recipe, out_dir / "checkpoints", has_eval=eval_ds is not None)
    peft = lora_config(recipe)
    if recipe.early_stopping_patience is not None and eval_ds is not None:
        from transformers import EarlyStoppingCallback

        callbacks = [*callbacks, EarlyStoppingCallback(early_stopping_patience=recipe.early_stopping_patience)]
    if "messages" in train_ds.column_names and (getattr(args, "completion_only_loss", None) or offers_tools(train_ds)):
        # The loss goes on the answer only: a chat becomes its rendered tokens with a mask on the
        # last turn. Any chat template works, where assistant_only_loss needs `{% generation %}`
        # markers (SmolLM2's template has none), and tools are rendered as the engine renders them.
        with args.main_process_first(desc="rendering chats"):  # several ranks: rank 0 fills the datasets cache first
            train_ds, eval_ds = (as_prompt_completion(ds, tokenizer) if ds is not None else None for ds in (train_ds, eval_ds))
        # TRL applies that mask as `completion_mask`; its own assistant-turn masking needs chats it
        # renders itself. Only a recipe that turns both off trains on the whole chat.
        args.completion_only_loss = args.completion_only_loss is not False or bool(getattr(args, "assistant_only_loss", False))
        args.assistant_only_loss = False
    method = METHODS[recipe.method]
    return method.trainer_class()(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer, peft_config=peft,
        callbacks=callbacks, **method.trainer_args(recipe),
    )


def run(recipe: Recipe, train_ds, eval_ds, out_dir: Path, *, resume_from: str | None = None, callbacks: list = ()) -> dict[str, Any]:
    """Train, evaluate and save; return the metrics. Raises `NonFiniteLossError` when the guard trips."""
    # Evaluation's losses score labelled positions only, as training's do (`training_speedups`).
    with labelled_positions_only():
        return _run(recipe, train_ds, eval_ds, out_dir, resume_from=resume_from, callbacks=callbacks)


def _run(recipe: Recipe, train_ds, eval_ds, out_dir: Path, *, resume_from: str | None, callbacks: list) -> dict[str, Any]:
    from transformers import set_seed

    from flywheel.train.generate import exact_match

    set_seed(recipe.seed)  # before the model and adapter exist: LoRA init and dropout are seeded too
    model, tokenizer = load_model(recipe.base_model, recipe)
    guard = FiniteLossGuard()
    trainer = build_trainer(recipe, model, tokenizer, train_ds, eval_ds, out_dir, [guard, LogCallback(), *callbacks])
    metrics: dict[str, Any] = {"train_examples": len(train_ds), "eval_examples": len(eval_ds) if eval_ds is not None else 0}
    if eval_ds is not None and resume_from is None:
        metrics["eval_loss_before"] = trainer.evaluate()["eval_loss"]
    if resume_from:
        metrics["resumed_from"] = Path(resume_from).name
        log.info("resuming from %s", resume_from)
    with training_speedups(trainer, recipe) as reuse:
        result = trainer.train(resume_from_checkpoint=resume_from)
    if guard.tripped is not None:
        step, key, value = guard.tripped
        raise NonFiniteLossError(f"non-finite {key} ({value}) at step {step}: training aborted; lower learning_rate or check the data")
    metrics.update({k: v for k, v in result.metrics.items() if isinstance(v, (int, float))})
    metrics["global_step"] = trainer.state.global_step
    metrics["train_tokens"] = int(trainer.state.num_input_tokens_seen or 0)
    if reuse.reused:
        metrics["frozen_layers_reused"] = reuse.reused
    if eval_ds is not None:
        evaluation = trainer.evaluate()
        metrics["eval_loss"] = evaluation["eval_loss"]
        if not math.isfinite(metrics["eval_loss"]):
            raise NonFiniteLossError(f"non-finite eval_loss ({metrics['eval_loss']}) after training")
    main = trainer.accelerator.is_main_process  # several ranks (torchrun): one writes, and one generates
    if main and eval_ds is not None and METHODS[recipe.method].answers_chats and recipe.exact_match_samples > 0:
        rows = eval_ds.select(range(min(recipe.exact_match_samples, len(eval_ds))))
        metrics["exact_match"] = exact_match(trainer.model, tokenizer, rows, max_new_tokens=recipe.max_new_tokens)
    _save(trainer, tokenizer, recipe, out_dir, main=main)
    if main:
        (out_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    return metrics


def _save(trainer, tokenizer, recipe: Recipe, out_dir: Path, *, main: bool) -> None:
    if recipe.lora is None:
        trainer.save_model(str(out_dir / "model"))  # every rank: FSDP/DeepSpeed gather the weights; one writes
        if main:
            tokenizer.save_pretrained(out_dir / "model")
        return
    if not main:
        return
    trainer.model.save_pretrained(out_dir / "adapter")
    tokenizer.save_pretrained(out_dir / "adapter")
    if recipe.merge:
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(out_dir / "merged")
        tokenizer.save_pretrained(out_dir / "merged")


def artifact_paths(recipe: Recipe, out_dir: Path) -> tuple[Path | None, Path | None]:
    """(adapter_path, merged_path) a finished run leaves; a full fine-tune's weights count as merged."""
    if recipe.lora is None:
        return None, out_dir / "model"
    return out_dir / "adapter", (out_dir / "merged" if recipe.merge else None)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite."""
