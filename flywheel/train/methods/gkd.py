"""On-policy distillation, generalised knowledge distillation (TRL `GKDTrainer`, experimental).

The student samples answers and the teacher scores every token of them, so the teacher is a local
model sharing the student's tokenizer/vocabulary, and a recipe without one is refused up front.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flywheel.train.methods.base import Method

if TYPE_CHECKING:
    from flywheel.train.recipes import Recipe


def gkd_args(recipe: Recipe, cpu: bool) -> dict[str, Any]:
    return {"lmbda": recipe.gkd_lmbda, "beta": recipe.gkd_beta, "temperature": recipe.temperature, "max_new_tokens": recipe.max_new_tokens}


GKD = Method(
    name="gkd",
    summary="on-policy distillation, generalised knowledge distillation (TRL `GKDTrainer`)",
    config="trl.experimental.gkd:GKDConfig",
    trainer="trl.experimental.gkd:GKDTrainer",
    columns=("messages",),  # GKD builds its own prompt/completion batches from the chats
    config_args=gkd_args,
    trainer_args=lambda recipe: {"teacher_model": recipe.teacher},
    needs_teacher=True,
)
