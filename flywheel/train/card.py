"""The model card (`README.md`) written into every candidate folder.

A Hugging Face `ModelCard`: YAML front matter a hub or a registry can read (base model, library,
tags), then what a person deciding on promotion needs: base, method, dataset version, the training
metrics, how to load it, and the full recipe to reproduce it. The body is a Jinja template, so the
card reads here as it will on the page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flywheel.train.recipes import Recipe
    from flywheel.train.run import Candidate

_TEMPLATE = """---
{{ card_data }}
---
# {{ c.id }}

Candidate model for task **{{ c.task }}** (project `{{ c.project }}`), trained by Flywheel.

- **Base model**: `{{ c.base_model }}`
- **Method**: {{ method }}{% if recipe.teacher %}; teacher `{{ recipe.teacher }}`{% endif %}
- **Weights**: {{ weights }}
- **Dataset version**: `{{ c.dataset_id or 'unregistered' }}` (`{{ dataset_path }}`)
- **Recipe hash**: `{{ c.recipe_hash }}` (seed {{ recipe.seed }})

## Training metrics

| metric | value |
|---|---|
{% for name, value in metrics %}| {{ name }} | {{ value }} |
{% endfor %}
`eval_loss_before` is the base model on the same eval split; `exact_match` is the greedy answer
compared with the target on up to `exact_match_samples` eval examples.

## Load

```python
{% if adapter -%}
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer
model = AutoPeftModelForCausalLM.from_pretrained("{{ c.adapter_path }}")
tokenizer = AutoTokenizer.from_pretrained("{{ c.adapter_path }}")
{%- else -%}
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{{ c.merged_path }}")
tokenizer = AutoTokenizer.from_pretrained("{{ c.merged_path }}")
{%- endif %}
```

## Recipe

```yaml
{{ recipe_yaml }}
```
"""


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(candidate: Candidate, recipe: Recipe, *, dataset_path: str) -> str:
    import yaml
    from huggingface_hub import ModelCard, ModelCardData

    from flywheel.train.methods import METHODS

    adapter = candidate.adapter_path is not None
    data = ModelCardData(
        base_model=candidate.base_model,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=["flywheel", "trl", candidate.method, candidate.task] + (["lora"] if adapter else []),
    )
    weights = f"LoRA adapter (r={recipe.lora.r}, alpha={recipe.lora.alpha}) in `adapter/`" if adapter else "all weights in `model/`"
    if candidate.merged_path is not None and adapter:
        weights += "; merged model in `merged/`"
    card = ModelCard.from_template(
        data, template_str=_TEMPLATE, c=candidate, recipe=recipe, adapter=adapter, weights=weights, dataset_path=dataset_path,
        method=METHODS[candidate.method].summary, metrics=[(k, _fmt(v)) for k, v in sorted(candidate.metrics.items())],
        recipe_yaml=yaml.safe_dump(recipe.to_dict(), sort_keys=False).strip(),
    )
    return f"{card}\n"  # Jinja drops the template's final newline; a text file ends with one
