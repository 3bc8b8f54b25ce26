"""What a training method is to Flywheel: a name, the TRL classes that run it, the data it reads.

Everything that used to branch on `recipe.method` across recipes, trainers, data checks and the
model card reads one of these fields instead, so a method is described once, in its own module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # recipes imports this package (to validate `method`): no import back at run time
    from flywheel.train.recipes import Recipe


def _no_args(*_) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Method:
    """One training method.

    - `name`: what a recipe's `method:` says; `summary`: the model card's "Method" line.
    - `config` / `trainer`: the TRL classes as "module:Class", imported only when training
      (importing trl takes seconds; the CLI should not pay for it to read a recipe).
    - `columns`: the dataset columns the trainer reads; `flywheel.train.data` checks them and
      drops the rest. Methods reading `messages` also get the exact-match metric.
    - `config_args(recipe, cpu)`: the method's own config fields, from the recipe; the fields all
      methods share are set by `flywheel.train.recipes.trl_config`.
    - `trainer_args(recipe)`: extra trainer arguments (GKD: the teacher model).
    - `needs_teacher`: refuse a recipe without `teacher` before anything is registered.
    - `prepare(recipe, train_ds)`: runs on the train split before training (distill: the
      teacher's answers replace the targets).
    """

    name: str
    summary: str
    config: str
    trainer: str
    columns: tuple[str, ...]
    config_args: Callable[[Recipe, bool], dict[str, Any]] = _no_args
    trainer_args: Callable[[Recipe], dict[str, Any]] = _no_args
    needs_teacher: bool = False
    prepare: Callable[[Recipe, Any], Any] | None = None

    def config_class(self) -> type:
        return _load(self.config)

    def trainer_class(self) -> type:
        return _load(self.trainer)

    @property
    def answers_chats(self) -> bool:
        """Trained on chats, so its greedy answer can be compared with the last message (exact match)."""
        return "messages" in self.columns

    def check(self, recipe: Recipe) -> None:
        """Raise `ValueError` for a recipe this method cannot train with (checked before registering)."""
        if self.needs_teacher and not recipe.teacher:
            raise ValueError(f"method {self.name!r} needs a local teacher model: set `teacher` in the recipe or pass teacher=")


def _load(dotted: str) -> type:
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)
