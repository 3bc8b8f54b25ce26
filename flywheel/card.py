"""The model card (`README.md`) written into every candidate folder.

Hugging Face style: YAML front matter a hub or a registry can read (base model, library, tags),
then what a person deciding on promotion needs: base, method, dataset version, the training
metrics, how to load it, and the full recipe to reproduce it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flywheel.recipes import Recipe
    from flywheel.train import Candidate

_METHOD = {
    "sft": "supervised fine-tuning (TRL `SFTTrainer`)",
    "distill": "sequence-level distillation: SFT on a teacher's answers (TRL `SFTTrainer`)",
    "gkd": "on-policy distillation, generalised knowledge distillation (TRL `GKDTrainer`)",
    "dpo": "direct preference optimisation (TRL `DPOTrainer`)",
}


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(candidate: Candidate, recipe: Recipe, *, dataset_path: str) -> str:
    import yaml

    adapter = candidate.adapter_path is not None
    front = {
        "base_model": candidate.base_model,
        "library_name": "peft" if adapter else "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["flywheel", "trl", candidate.method, candidate.task] + (["lora"] if adapter else []),
    }
    weights = f"LoRA adapter (r={recipe.lora.r}, alpha={recipe.lora.alpha}) in `adapter/`" if adapter else "all weights in `model/`"
    if candidate.merged_path is not None and adapter:
        weights += "; merged model in `merged/`"
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        f"# {candidate.id}",
        "",
        f"Candidate model for task **{candidate.task}** (project `{candidate.project}`), trained by Flywheel.",
        "",
        f"- **Base model**: `{candidate.base_model}`",
        f"- **Method**: {_METHOD[candidate.method]}" + (f"; teacher `{recipe.teacher}`" if recipe.teacher else ""),
        f"- **Weights**: {weights}",
        f"- **Dataset version**: `{candidate.dataset_id or 'unregistered'}` (`{dataset_path}`)",
        f"- **Recipe hash**: `{candidate.recipe_hash}` (seed {recipe.seed})",
        "",
        "## Training metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {_fmt(v)} |" for k, v in sorted(candidate.metrics.items())),
        "",
        "`eval_loss_before` is the base model on the same eval split; `exact_match` is the greedy answer",
        "compared with the target on up to `exact_match_samples` eval examples.",
        "",
        "## Load",
        "",
        "```python",
    ]
    if adapter:
        lines += [
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{candidate.adapter_path}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{candidate.adapter_path}")',
        ]
    else:
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'model = AutoModelForCausalLM.from_pretrained("{candidate.merged_path}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{candidate.merged_path}")',
        ]
    lines += ["```", "", "## Recipe", "", "```yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False).strip(), "```", ""]
    return "\n".join(lines)
