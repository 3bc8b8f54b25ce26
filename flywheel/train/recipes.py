"""Training recipes as data: a YAML/TOML/JSON file ↔ `Recipe` → a TRL config and a PEFT `LoraConfig`.

A recipe says *how* to train (base model, method, LoRA or full fine-tune, optimiser, lengths,
packing, seed, eval split, early stopping); the curated dataset says *on what*. The defaults in
`flywheel/train/recipes/*.yaml` are loaded by name (`load_recipe("sft")`), anything else by path.

    base_model: ./models/qwen2.5-0.5b-instruct
    method: sft                 # sft | distill | gkd | dpo (flywheel.train.methods)
    lora: {r: 16, alpha: 32}    # null (or omitted) → full fine-tune
    learning_rate: 2.0e-4
    max_steps: 300

Unknown keys are an error (a typo should not silently train with a default). `extra` passes any
other TRL/`TrainingArguments` field through unchanged, for the rare knob we don't name.
The recipe is hashed (`recipe_hash`) and stored with each candidate so a run can be reproduced.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic

from flywheel.settings import read_config_file
from flywheel.train.methods import METHODS, get_method

RECIPES_DIR = Path(__file__).parent / "recipes"
# Recipes are plain dataclasses (the help text stays next to each field); pydantic validates the
# data from a file into them: lax coercion (YAML 1.1 reads `2e-4` as text, a quoted '50' is fine),
# and a key the dataclass does not name is an error, not a silent default.
_STRICT_KEYS = pydantic.ConfigDict(extra="forbid")


@dataclass
class LoraRecipe:
    """LoRA adapter shape. On a randomly initialised tiny base LoRA barely learns: use full fine-tune there."""

    __pydantic_config__ = _STRICT_KEYS
    r: int = field(default=16, metadata={"help": "Adapter rank."})
    alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapter input."})
    target_modules: str | list[str] = field(
        default="all-linear", metadata={"help": "Modules to adapt: 'all-linear' or a list of module names."}
    )
    top_layers: int | None = field(
        default=None,
        metadata={"help": "Adapt only the last N decoder layers (None: all). Backward then stops at layer N from the top: "
                  "faster steps, and on a small pretrained base it also learned better (recipes/sft.yaml)."},
    )
    layers_to_transform: list[int] | None = field(
        default=None, metadata={"help": "Adapt only these decoder layers (indices from 0); exclusive with `top_layers`."}
    )

    def __post_init__(self):
        if self.top_layers is not None and self.layers_to_transform is not None:
            raise ValueError("lora: set `top_layers` or `layers_to_transform`, not both")
        if self.top_layers is not None and self.top_layers < 1:
            raise ValueError(f"lora: top_layers must be at least 1 (got {self.top_layers})")


@dataclass
class Recipe:
    """One training recipe.

    Grouped by what the fields control:
    - what: `base_model`, `method`, `teacher` (distill/gkd), `lora` (None: full fine-tune), `merge`.
    - optimisation: `learning_rate`, `num_train_epochs`, `max_steps`, `per_device_train_batch_size`,
      `gradient_accumulation_steps`, `warmup_ratio`, `lr_scheduler_type`, `weight_decay`, `seed`.
    - sequences: `max_length`, `packing`, `padding_free`, `assistant_only_loss`, `completion_only_loss`.
    - evaluation: `eval_split`, `eval_fraction`, `eval_steps`, `early_stopping_patience`,
      `exact_match_samples`, `min_train_examples`.
    - method specific: `dpo_beta`; `gkd_lmbda`, `gkd_beta`, `temperature`, `max_new_tokens`.
    - machine: `bf16`, `gradient_checkpointing`, `reuse_frozen_layers`, `logging_steps`, `save_steps`,
      `save_total_limit`.
    """

    __pydantic_config__ = _STRICT_KEYS

    base_model: str | None = field(default=None, metadata={"help": "Local path or hub id of the model to fine-tune."})
    method: str = field(default="sft", metadata={"help": "A name in `flywheel.train.methods`: sft | distill (sequence-level) | gkd (on-policy, needs a teacher) | dpo."})
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
    assistant_only_loss: bool = field(
        default=True,
        metadata={"help": "Loss on the assistant's turns only, not on the prompt. Needs a chat template with "
                  "`{% generation %}` markers (the tiny test models have them; SmolLM2's does not: use completion_only_loss)."},
    )
    completion_only_loss: bool = field(
        default=False,
        metadata={"help": "Loss on the last assistant message only: the chats reach TRL as prompt/completion pairs, which "
                  "works with any chat template."},
    )

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
    reuse_frozen_layers: bool = field(
        default=True,
        metadata={"help": "LoRA on the top layers only: compute the frozen layers below once per example instead of once "
                  "per epoch (`flywheel.train.frozen_layers`; exact up to rounding; off with gradient checkpointing)."},
    )
    logging_steps: int = field(default=10, metadata={"help": "Log the loss (and check it is finite) every N steps."})
    save_steps: int = field(default=200, metadata={"help": "Checkpoint every N steps, for resuming after a crash."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept on disk."})
    extra: dict[str, Any] = field(default_factory=dict, metadata={"help": "Other TRL config fields, passed through as is."})

    def __post_init__(self):
        if isinstance(self.lora, dict):  # Recipe(lora={"r": 4}) in Python, as in a file
            self.lora = pydantic.TypeAdapter(LoraRecipe).validate_python(self.lora)
        get_method(self.method)  # an unknown method is a ValueError naming the known ones

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> Recipe:
        return dataclasses.replace(self, **changes)


_RECIPE = pydantic.TypeAdapter(Recipe)


def _explain(exc: pydantic.ValidationError) -> str:
    """pydantic's report reworded per recipe field: "recipe field 'max_steps': … (got 'many')"."""
    fields = {cls: [f.name for f in dataclasses.fields(cls)] for cls in (Recipe, LoraRecipe)}
    problems: dict[str, list[str]] = {}
    for error in exc.errors():
        # Union members add their type to the location ('lora.target_modules.str'): keep field names only.
        loc = [str(part) for part in error["loc"] if str(part) in fields[Recipe] + fields[LoraRecipe]]
        where = ".".join(loc)
        if error["type"] == "unexpected_keyword_argument":
            name = str(error["loc"][-1])
            known = fields[LoraRecipe if len(error["loc"]) > 1 else Recipe]
            close = difflib.get_close_matches(name, known, n=1)
            where = ".".join([*loc, name])
            problems[f"unknown recipe key {where!r}"] = [f"did you mean {close[0]!r}?" if close else f"known: {known}"]
        elif not where:  # raised by __post_init__, e.g. an unknown method
            problems[error["msg"].removeprefix("Value error, ")] = []
        else:
            problems.setdefault(f"recipe field {where!r}", []).append(f"{error['msg']} (got {error['input']!r})")
    return "; ".join(f"{head}: {' or '.join(dict.fromkeys(why))}" if why else head for head, why in problems.items())


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """A `Recipe` from plain data; unknown keys and ill-typed values are errors naming the field."""
    data = dict(data)
    if data.get("lora") in (False, "none", "full"):  # TOML has no null: `lora = false` means full fine-tune
        data["lora"] = None
    try:
        return _RECIPE.validate_python(data)
    except pydantic.ValidationError as exc:
        raise ValueError(_explain(exc)) from None


def available_recipes() -> list[str]:
    """Names of the default recipes shipped in `flywheel/train/recipes/`."""
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
    """The TRL config of the recipe's method (`SFTConfig`, `GKDConfig`, `DPOConfig`, …): the fields
    every method shares are set here, the method's own by its `Method.config_args`."""
    import torch

    method = METHODS[recipe.method]
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
    args = {**common, **method.config_args(recipe, cpu)}
    config_class = method.config_class()
    if "completion_only_loss" in {f.name for f in dataclasses.fields(config_class)}:
        args.setdefault("completion_only_loss", recipe.completion_only_loss)
    return config_class(**{**args, **recipe.extra})


def lora_layers(recipe: Recipe, model_config=None) -> list[int] | None:
    """The decoder layers the adapter goes on (None: all). `top_layers` needs the base's layer count:
    from `model_config`, else read from `recipe.base_model`'s config.json."""
    lora = recipe.lora
    if lora is None or (lora.top_layers is None and lora.layers_to_transform is None):
        return None
    if lora.layers_to_transform is not None:
        return sorted(lora.layers_to_transform)
    n = _text_config(recipe, model_config).num_hidden_layers
    return list(range(max(0, n - lora.top_layers), n))


def _text_config(recipe: Recipe, model_config=None):
    if model_config is None:
        if not recipe.base_model:
            raise ValueError("lora.top_layers / 'all-linear' on some layers need the base model's config: set base_model")
        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(recipe.base_model)
    return model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config


def _linear_module_names(recipe: Recipe, model_config=None) -> list[str]:
    """What PEFT's 'all-linear' means for this base, as names: the Linear modules inside its decoder
    layers (PEFT refuses `layers_to_transform` with a string `target_modules`). Built on the meta
    device from the config: no weights are read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = model_config if model_config is not None else AutoConfig.from_pretrained(recipe.base_model)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and ".layers." in name}
    return sorted(names)


def lora_config(recipe: Recipe, model_config=None):
    """The PEFT `LoraConfig` for the recipe, or None for a full fine-tune.

    With `top_layers` (or `layers_to_transform`) the layer indices are resolved against the base's
    config (`model_config`, else `recipe.base_model`'s config.json), and 'all-linear' is spelled out
    as module names, which PEFT requires alongside `layers_to_transform`."""
    if recipe.lora is None:
        return None
    from peft import LoraConfig

    layers = lora_layers(recipe, model_config)
    targets = recipe.lora.target_modules
    if layers is not None and isinstance(targets, str):
        targets = _linear_module_names(recipe, model_config) if targets == "all-linear" else [targets]
    return LoraConfig(
        r=recipe.lora.r,
        lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=targets,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
