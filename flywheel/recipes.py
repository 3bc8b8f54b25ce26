"""Training recipes as data: a YAML/TOML/JSON file ↔ `Recipe` → a TRL config and a PEFT `LoraConfig`.

A recipe says *how* to train (base model, method, LoRA or full fine-tune, optimiser, lengths,
packing, seed, eval split, early stopping); the curated dataset says *on what*. The defaults in
`flywheel/recipes/*.yaml` are loaded by name (`load_recipe("sft")`), anything else by path.

    base_model: ./models/qwen2.5-0.5b-instruct
    method: sft                 # sft | distill | gkd | dpo
    lora: {r: 16, alpha: 32}    # null (or omitted) → full fine-tune
    learning_rate: 2.0e-4
    max_steps: 300

Unknown keys are an error (a typo should not silently train with a default). `extra` passes any
other TRL/`TrainingArguments` field through unchanged, for the rare knob we don't name.
The recipe is hashed (`recipe_hash`) and stored with each candidate so a run can be reproduced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flywheel.settings import read_config_file

RECIPES_DIR = Path(__file__).parent / "recipes"
METHODS = ("sft", "distill", "gkd", "dpo")


@dataclass
class LoraRecipe:
    """LoRA adapter shape. On a randomly initialised tiny base LoRA barely learns: use full fine-tune there."""

    r: int = field(default=16, metadata={"help": "Adapter rank."})
    alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapter input."})
    target_modules: str | list[str] = field(
        default="all-linear", metadata={"help": "Modules to adapt: 'all-linear' or a list of module names."}
    )


@dataclass
class Recipe:
    """One training recipe.

    Grouped by what the fields control:
    - what: `base_model`, `method`, `teacher` (distill/gkd), `lora` (None: full fine-tune), `merge`.
    - optimisation: `learning_rate`, `num_train_epochs`, `max_steps`, `per_device_train_batch_size`,
      `gradient_accumulation_steps`, `warmup_ratio`, `lr_scheduler_type`, `weight_decay`, `seed`.
    - sequences: `max_length`, `packing`, `padding_free`, `assistant_only_loss`.
    - evaluation: `eval_split`, `eval_fraction`, `eval_steps`, `early_stopping_patience`,
      `exact_match_samples`, `min_train_examples`.
    - method specific: `dpo_beta`; `gkd_lmbda`, `gkd_beta`, `temperature`, `max_new_tokens`.
    - machine: `bf16`, `gradient_checkpointing`, `logging_steps`, `save_steps`, `save_total_limit`.
    """

    base_model: str | None = field(default=None, metadata={"help": "Local path or hub id of the model to fine-tune."})
    method: str = field(default="sft", metadata={"help": "sft | distill (sequence-level) | gkd (on-policy, needs a teacher) | dpo."})
    teacher: str | None = field(default=None, metadata={"help": "Teacher model path: distill generates its answers, gkd matches its distributions."})
    lora: LoraRecipe | None = field(default=None, metadata={"help": "LoRA adapter settings; None trains all weights."})
    merge: bool = field(default=False, metadata={"help": "Also save the base with the adapter merged in (LoRA only)."})

    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs over the train split (ignored when max_steps > 0)."})
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; -1 → use num_train_epochs."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Sequences (or packed rows) per step per device. Lower it on OOM."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Steps accumulated per update; raise it when lowering the batch."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Fraction of steps spent warming up the learning rate."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    seed: int = field(default=0, metadata={"help": "Seed for initialisation, shuffling and sampling: same seed, same model."})

    max_length: int = field(default=1024, metadata={"help": "Tokens per sequence (per packed row); longer examples are truncated. Lower it on OOM."})
    packing: bool | None = field(
        default=None,
        metadata={"help": "Pack examples into full rows (bfd), no compute spent on padding. None → on with CUDA, off on CPU "
                  "(there sdpa attends each packed row in full, which cost more than padding: bench/train.py)."},
    )
    padding_free: bool = field(default=False, metadata={"help": "Flatten the batch without padding (implied by packing)."})
    assistant_only_loss: bool = field(default=True, metadata={"help": "Loss on the assistant's turns only, not on the prompt."})

    eval_split: str = field(default="eval", metadata={"help": "Split of the curated dataset used for evaluation."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Held out from train when the dataset has no eval split."})
    eval_steps: int | None = field(default=None, metadata={"help": "Evaluate every N steps; None → only at the end (or per epoch with early stopping)."})
    early_stopping_patience: int | None = field(default=None, metadata={"help": "Stop after N evaluations without eval-loss improvement."})
    exact_match_samples: int = field(default=64, metadata={"help": "Eval examples answered greedily for the exact-match metric (0: skip)."})
    min_train_examples: int = field(default=16, metadata={"help": "Refuse to train on fewer examples than this."})

    dpo_beta: float = field(default=0.1, metadata={"help": "DPO: strength of the pull towards the reference model."})
    gkd_lmbda: float = field(default=0.5, metadata={"help": "GKD: fraction of steps trained on the student's own samples."})
    gkd_beta: float = field(default=0.5, metadata={"help": "GKD: generalised JSD interpolation (0: KL, 1: reverse KL)."})
    temperature: float = field(default=0.9, metadata={"help": "GKD: sampling temperature of the student's completions."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest generated answer (teacher answers, GKD samples, exact match)."})

    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision; None → on where the GPU supports it, off on CPU."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations to save memory (slower). Turn on for OOM on big models."})
    logging_steps: int = field(default=10, metadata={"help": "Log the loss (and check it is finite) every N steps."})
    save_steps: int = field(default=200, metadata={"help": "Checkpoint every N steps, for resuming after a crash."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept on disk."})
    extra: dict[str, Any] = field(default_factory=dict, metadata={"help": "Other TRL config fields, passed through as is."})

    def __post_init__(self):
        if isinstance(self.lora, dict):
            self.lora = _build(LoraRecipe, self.lora)
        if self.method not in METHODS:
            raise ValueError(f"unknown training method {self.method!r}: use one of {', '.join(METHODS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> Recipe:
        return dataclasses.replace(self, **changes)


def _coerce(value: Any, annotation: Any) -> Any:
    # YAML reads `2e-4` as a string (YAML 1.1 wants a dot); TOML has no null. Coerce to the field type.
    if value is None:
        return None
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{value!r} is not a {annotation}")
    if annotation is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, (int, str)) and not isinstance(value, bool):
        return int(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise ValueError(f"{value!r} is not a boolean")
    if annotation is str:
        if not isinstance(value, str):
            raise TypeError(f"{value!r} is not a string")
        return value
    if typing.get_origin(annotation) is list and isinstance(value, list):
        return value
    if annotation is LoraRecipe and isinstance(value, (dict, LoraRecipe)):
        return value if isinstance(value, LoraRecipe) else _build(LoraRecipe, value)
    if typing.get_origin(annotation) is dict and isinstance(value, dict):
        return value
    raise TypeError(f"{value!r} is not a {annotation}")


def _build(cls, data: dict[str, Any]):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)  # resolves the string annotations of `from __future__ import annotations`
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        try:
            kwargs[name] = _coerce(value, hints[name])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"recipe field {name!r}: {exc}") from None
    return cls(**kwargs)


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """A `Recipe` from plain data; unknown keys and ill-typed values are errors naming the field."""
    data = dict(data)
    if data.get("lora") in (False, "none", "full"):  # TOML has no null: `lora = false` means full fine-tune
        data["lora"] = None
    return _build(Recipe, data)


def available_recipes() -> list[str]:
    """Names of the default recipes shipped in `flywheel/recipes/`."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(source: str | Path, **overrides) -> Recipe:
    """A recipe from a file (.yaml/.yml/.toml/.json) or the name of a default (`sft`, `dpo`, …)."""
    path = Path(source)
    if not path.exists():
        named = RECIPES_DIR / f"{source}.yaml"
        if not named.exists():
            raise FileNotFoundError(f"no recipe file {source!r} and no default recipe of that name (defaults: {', '.join(available_recipes())})")
        path = named
    try:
        data = read_config_file(path)
    except Exception as exc:  # unreadable, or not YAML/TOML/JSON: a user's file, a clear error
        raise ValueError(f"recipe {source}: cannot read it: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"recipe {source}: expected a mapping of settings, got {type(data).__name__}")
    data.update(overrides)
    return recipe_from_dict(data)


def dump_recipe(recipe: Recipe, path: Path) -> Path:
    """Write the recipe as YAML (readable, and `load_recipe` reads it back)."""
    import yaml

    path.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    return path


def recipe_hash(recipe: Recipe) -> str:
    """Content hash of the recipe (canonical JSON), 16 hex digits."""
    blob = json.dumps(recipe.to_dict(), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --- recipe → TRL / PEFT ---------------------------------------------------------------------


def use_bf16(recipe: Recipe) -> bool:
    import torch

    if recipe.bf16 is not None:
        return recipe.bf16
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _checkpointing(on: bool) -> dict[str, bool]:
    # transformers 5 renamed gradient_checkpointing → activation_checkpointing (old name warns).
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {key: on, "gradient_checkpointing": on} if key != "gradient_checkpointing" else {key: on}


def trl_config(recipe: Recipe, output_dir: Path | str, *, has_eval: bool = True):
    """The TRL config for the recipe's method: `SFTConfig` (sft, distill), `GKDConfig` (gkd), `DPOConfig` (dpo)."""
    import torch

    cpu = not torch.cuda.is_available()
    early = recipe.early_stopping_patience is not None and has_eval
    eval_strategy = "no"
    if has_eval and (recipe.eval_steps or early):
        eval_strategy = "steps" if recipe.eval_steps else "epoch"
    common: dict[str, Any] = dict(
        output_dir=str(output_dir),
        learning_rate=recipe.learning_rate,
        num_train_epochs=recipe.num_train_epochs,
        max_steps=recipe.max_steps,
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        per_device_eval_batch_size=recipe.per_device_train_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        warmup_steps=recipe.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        lr_scheduler_type=recipe.lr_scheduler_type,
        weight_decay=recipe.weight_decay,
        seed=recipe.seed,
        data_seed=recipe.seed,
        # On CPU TRL's defaults (bf16 on, gradient checkpointing on) are 2x slower or fail: see STACK.md.
        use_cpu=cpu,
        bf16=use_bf16(recipe),
        **_checkpointing(recipe.gradient_checkpointing),
        logging_steps=recipe.logging_steps,
        # Trainer by default replaces a NaN/inf loss by the running mean in the logs; our guard must see it.
        logging_nan_inf_filter=False,
        save_strategy="steps" if eval_strategy != "epoch" else "epoch",
        save_steps=recipe.save_steps if not recipe.eval_steps else recipe.eval_steps,
        save_total_limit=recipe.save_total_limit,
        eval_strategy=eval_strategy,
        eval_steps=recipe.eval_steps,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        report_to="none",
        include_num_input_tokens_seen="non_padding",
        max_length=recipe.max_length,
    )
    if recipe.method in ("sft", "distill"):
        from trl import SFTConfig

        packing = (not cpu) if recipe.packing is None else recipe.packing
        return SFTConfig(
            **common,
            packing=packing,
            # TRL: padding-free without packing requires max_length=None (no truncation then).
            padding_free=recipe.padding_free or packing,
            assistant_only_loss=recipe.assistant_only_loss,
            **recipe.extra,
        )
    if recipe.method == "gkd":
        from trl.experimental.gkd import GKDConfig

        return GKDConfig(
            **common,
            lmbda=recipe.gkd_lmbda,
            beta=recipe.gkd_beta,
            temperature=recipe.temperature,
            max_new_tokens=recipe.max_new_tokens,
            **recipe.extra,
        )
    from trl import DPOConfig

    return DPOConfig(**common, beta=recipe.dpo_beta, **recipe.extra)


def lora_config(recipe: Recipe):
    """The PEFT `LoraConfig` for the recipe, or None for a full fine-tune."""
    if recipe.lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=recipe.lora.r,
        lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=recipe.lora.target_modules,
        task_type="CAUSAL_LM",
    )
