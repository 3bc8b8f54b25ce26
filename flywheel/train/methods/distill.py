"""Sequence-level distillation: SFT on a teacher's answers.

Without a teacher model the curated dataset's targets already are the incumbent's logged answers,
so this is SFT on them; with `teacher: PATH` the teacher first answers every training prompt
(`flywheel.train.generate.teacher_answers`; the teacher may use another tokenizer: only text
crosses over).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from flywheel.train.methods.sft import SFT

if TYPE_CHECKING:
    from flywheel.train.recipes import Recipe


def teacher_targets(recipe: Recipe, train_ds):
    if not recipe.teacher:
        return train_ds
    from flywheel.train.generate import teacher_answers
    from flywheel.train.recipes import use_bf16

    return teacher_answers(recipe.teacher, train_ds, max_new_tokens=recipe.max_new_tokens, bf16=use_bf16(recipe))


DISTILL = dataclasses.replace(
    SFT,
    name="distill",
    summary="sequence-level distillation: SFT on a teacher's answers (TRL `SFTTrainer`)",
    prepare=teacher_targets,
)
