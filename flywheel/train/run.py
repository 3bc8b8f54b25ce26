"""Training entry point: a curated dataset + a recipe → a registered candidate model.

    candidate = train(settings, project="acme", task="support-triage",
                      dataset_path=".flywheel/datasets/…", recipe="sft-full")

What `train` guarantees, in order:
1. Clear errors before anything is registered or trained: an unknown base model path, a dataset
   without the columns the method needs, or one smaller than `recipe.min_train_examples`.
2. A `models` row in status `training` (its lineage: base, dataset id, recipe and its hash),
   then `ready` with metrics and artifact paths, or `failed` with the error. The database is
   opened once per update, never held during training.
3. The candidate folder `<home>/models/<task>/<id>/`: `adapter/` or `model/` (+ `merged/`), each
   with its tokenizer, `recipe.yaml`, `metrics.json`, `README.md` (model card).
4. Resume: a run with the same lineage that crashed (row `failed`, or `training` with its process
   gone) and left a checkpoint is continued, under the same id, from its last checkpoint.
5. Guards: a NaN/inf loss stops the run and marks it failed (never promotable); out-of-memory
   fails with the recipe knobs to turn.
6. Several processes (`torchrun`, `accelerate launch`; `flywheel.train.launch`): every rank trains,
   rank 0 alone registers the candidate and writes its folder, card and row (`flywheel.train.ranks`).

Heavy libraries (torch, transformers, trl, peft, datasets) are imported inside functions, so the
CLI that imports this module starts fast.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.settings import Settings
from flywheel.store import connect, pid_alive
from flywheel.train import ranks
from flywheel.train.data import (
    BaseModelNotFound,
    DatasetTooSmall,
    check_model_source,
    load_splits,
)
from flywheel.train.methods import METHODS
from flywheel.train.recipes import Recipe, dump_recipe, load_recipe, recipe_hash

if TYPE_CHECKING:
    from flywheel.task import Task

log = logging.getLogger("flywheel.train")

__all__ = [  # the checks' errors are re-exported: callers catch everything from here
    "BaseModelNotFound", "Candidate", "DatasetTooSmall", "NonFiniteLoss", "OutOfMemory", "TrainingError",
    "candidate_dir", "latest_dataset", "load_splits", "train", "train_latest",
]

@dataclass
class Candidate:
    """A trained (or failed) model, as registered in the `models` table."""

    id: str
    project: str
    task: str
    method: str
    base_model: str
    dataset_id: str | None
    path: Path  # the candidate folder
    adapter_path: Path | None
    merged_path: Path | None
    recipe_hash: str
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class TrainingError(RuntimeError):
    """Training failed after the candidate was registered; `model_id` names the failed row."""

    def __init__(self, message: str, model_id: str | None = None):
        super().__init__(message)
        self.model_id = model_id


class NonFiniteLoss(TrainingError):
    """The loss became NaN/inf; the candidate is marked failed."""


class OutOfMemory(TrainingError):
    """The device ran out of memory; the message names the recipe knobs to turn."""


# --- the models table ------------------------------------------------------------------------


def _dataset_id_for(settings: Settings, dataset_path: Path) -> str | None:
    with connect(settings.db_path) as con:
        row = con.execute("SELECT id FROM datasets WHERE path = ? ORDER BY created_at DESC LIMIT 1", [str(dataset_path)]).fetchone()
    return row[0] if row else None


def _resumable(settings: Settings, *, project: str, task: str, rhash: str, dataset_id: str | None, dataset_path: str) -> tuple[str, str] | None:
    """(model id, checkpoint) of an interrupted run with the same lineage, if one left a checkpoint."""
    with connect(settings.db_path) as con:
        rows = con.execute(
            "SELECT id, status FROM models WHERE project = ? AND task = ? AND recipe_hash = ?"
            " AND dataset_id IS NOT DISTINCT FROM ? AND status IN ('training', 'failed') ORDER BY created_at DESC",
            [project, task, rhash, dataset_id],
        ).fetchall()
    for model_id, status in rows:
        folder = candidate_dir(settings, task, model_id)
        try:
            run = json.loads((folder / "run.json").read_text())
        except (OSError, ValueError):
            continue
        if run.get("dataset_path") != dataset_path:
            continue
        if status == "training" and run.get("pid") != os.getpid() and _alive(run.get("pid")):
            continue  # another process is training it right now
        steps = [p for p in (folder / "checkpoints").glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").exists()]
        checkpoints = sorted(steps, key=lambda p: int(p.name.split("-")[-1]))  # only complete ones: state is written last
        if checkpoints:
            return model_id, str(checkpoints[-1])
    return None


def _alive(pid: Any) -> bool:
    return isinstance(pid, int) and pid_alive(pid)


def _set(settings: Settings, model_id: str, **values: Any) -> None:
    sets = ", ".join(f"{k} = ?" for k in values)
    with connect(settings.db_path) as con:
        con.execute(f"UPDATE models SET {sets} WHERE id = ?", [*values.values(), model_id])


def candidate_dir(settings: Settings, task: str, model_id: str) -> Path:
    return Path(settings.home) / "models" / task / model_id


# --- train -----------------------------------------------------------------------------------


def train(
    settings: Settings,
    *,
    project: str,
    task: str,
    dataset_path: Path | str,
    recipe: Recipe | str | Path,
    dataset_id: str | None = None,
    teacher: str | None = None,
    base_model: str | None = None,
    resume: bool = True,
    callbacks: list | tuple = (),
) -> Candidate:
    """Train a candidate for `task` on a curated dataset; register it; return it.

    `recipe`: a `Recipe`, a recipe file or a default's name. `teacher` / `base_model` override the
    recipe's. `dataset_id` defaults to the `datasets` row whose path is `dataset_path`.
    `callbacks`: extra `transformers.TrainerCallback`s (e.g. a Prefect logger).
    Raises `BaseModelNotFound`, `DatasetTooSmall`, `ValueError` before registering; `NonFiniteLoss`,
    `OutOfMemory` or `TrainingError` after marking the candidate failed.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    overrides = {k: v for k, v in (("base_model", base_model), ("teacher", teacher)) if v is not None}
    recipe = recipe.replace(**overrides) if overrides else recipe
    # Local paths are recorded absolute: the row and the card must mean the same model from any cwd.
    for key in ("base_model", "teacher"):
        value = getattr(recipe, key)
        if value and Path(value).expanduser().exists():
            recipe = recipe.replace(**{key: str(Path(value).expanduser().resolve())})
    if not recipe.base_model:
        raise ValueError("the recipe names no base_model: set it in the recipe or pass base_model=")
    check_model_source(recipe.base_model)
    method = METHODS[recipe.method]
    method.check(recipe)  # e.g. gkd without a teacher
    if recipe.teacher:
        check_model_source(recipe.teacher, role="teacher model")
    dataset_path = Path(dataset_path).resolve()
    train_ds, eval_ds = load_splits(dataset_path, recipe)
    rhash = recipe_hash(recipe)
    # Under torchrun / accelerate launch every rank gets here; rank 0 alone touches the database
    # and the candidate folder, and tells the others which candidate they are training.
    dataset_id, model_id, resume_from = ranks.on_main(lambda: _register(
        settings, recipe, project=project, task=task, dataset_path=dataset_path, dataset_id=dataset_id, rhash=rhash,
        resume=resume, examples=len(train_ds)))  # fmt: skip
    out = candidate_dir(settings, task, model_id)

    from flywheel.train import trainers

    try:
        if method.prepare is not None:  # e.g. distill: the teacher answers the prompts first
            train_ds = method.prepare(recipe, train_ds)
        metrics = trainers.run(recipe, train_ds, eval_ds, out, resume_from=resume_from, callbacks=list(callbacks))
        candidate = _finish(settings, recipe, out, model_id=model_id, project=project, task=task, dataset_id=dataset_id,
                            rhash=rhash, metrics=metrics, dataset_path=dataset_path)
    except trainers.NonFiniteLossError as exc:
        if ranks.is_main():
            shutil.rmtree(out / "checkpoints", ignore_errors=True)  # diverged: never resume from these
        _fail(settings, model_id, f"NonFiniteLoss: {exc}")
        raise NonFiniteLoss(str(exc), model_id) from None
    except BaseException as exc:
        if _is_oom(exc):
            message = _oom_message(recipe, exc)
            _fail(settings, model_id, f"OutOfMemory: {message}")
            raise OutOfMemory(message, model_id) from exc
        _fail(settings, model_id, f"{exc.__class__.__name__}: {exc}")
        if isinstance(exc, Exception):
            raise TrainingError(f"training {model_id} failed: {exc.__class__.__name__}: {exc}", model_id) from exc
        raise  # KeyboardInterrupt / SystemExit: marked failed (resumable), then let it through
    log.info("candidate %s ready: %s", model_id, {k: metrics[k] for k in ("eval_loss", "exact_match") if k in metrics})
    return candidate


def _register(settings: Settings, recipe: Recipe, *, project: str, task: str, dataset_path: Path, dataset_id: str | None,
              rhash: str, resume: bool, examples: int) -> tuple[str | None, str, str | None]:
    """(dataset id, candidate id, checkpoint to resume from): the run resumed, or a new `models`
    row in status `training`; its folder with `run.json` and the recipe. Rank 0's work."""
    if dataset_id is None:
        dataset_id = _dataset_id_for(settings, dataset_path)
    found = _resumable(settings, project=project, task=task, rhash=rhash, dataset_id=dataset_id, dataset_path=str(dataset_path)) if resume else None
    if found:
        model_id, resume_from = found
        _set(settings, model_id, status="training", error=None)
    else:
        model_id = f"{recipe.method}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        resume_from = None
        with connect(settings.db_path) as con:
            con.execute(
                "INSERT INTO models (id, project, task, base_model, method, dataset_id, recipe, recipe_hash, status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'training')",
                [model_id, project, task, recipe.base_model, recipe.method, dataset_id, json.dumps(recipe.to_dict()), rhash],
            )
    out = candidate_dir(settings, task, model_id)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps({"pid": os.getpid(), "dataset_path": str(dataset_path), "dataset_id": dataset_id}))
    dump_recipe(recipe, out / "recipe.yaml")
    log.info("training %s (%s on %s, %d examples) → %s", model_id, recipe.method, recipe.base_model, examples, out)
    return dataset_id, model_id, resume_from


def _finish(settings: Settings, recipe: Recipe, out: Path, *, model_id: str, project: str, task: str, dataset_id: str | None,
            rhash: str, metrics: dict[str, Any], dataset_path: Path) -> Candidate:
    """Metrics, model card, row → ready. Checkpoints go: they only exist to resume an unfinished run."""
    from flywheel.train import trainers
    from flywheel.train.card import model_card

    adapter_path, merged_path = trainers.artifact_paths(recipe, out)
    candidate = Candidate(
        id=model_id, project=project, task=task, method=recipe.method, base_model=recipe.base_model, dataset_id=dataset_id,
        path=out, adapter_path=adapter_path, merged_path=merged_path, recipe_hash=rhash, status="ready", metrics=metrics,
    )
    if not ranks.is_main():
        return candidate  # the others trained with it; rank 0 writes the card and the row
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "README.md").write_text(model_card(candidate, recipe, dataset_path=str(dataset_path)))
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    _set(
        settings, model_id, status="ready", error=None, metrics=json.dumps(metrics),
        adapter_path=str(adapter_path) if adapter_path else None, merged_path=str(merged_path) if merged_path else None,
    )
    return candidate


def _fail(settings: Settings, model_id: str, error: str) -> None:
    log.error("candidate %s failed: %s", model_id, error)
    if ranks.is_main():
        _set(settings, model_id, status="failed", error=error[:4000])


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _oom_message(recipe: Recipe, exc: BaseException) -> str:
    hints = [
        f"lower per_device_train_batch_size (now {recipe.per_device_train_batch_size}) and raise "
        f"gradient_accumulation_steps (now {recipe.gradient_accumulation_steps}) to keep the effective batch",
        f"lower max_length (now {recipe.max_length})",
    ]
    if not recipe.gradient_checkpointing:
        hints.append("set gradient_checkpointing: true")
    if recipe.lora is None:
        hints.append("train a LoRA adapter instead of all weights (lora: {r: 16})")
    return f"out of memory ({str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__}); in the recipe: " + "; or ".join(hints)


def latest_dataset(settings: Settings, task: Task) -> tuple[str, str]:
    """(id, path) of the newest curated dataset of the task's project; FileNotFoundError naming the
    command to run when there is none."""
    with connect(settings.db_path) as con:
        row = con.execute("SELECT id, path FROM datasets WHERE task = ? AND project = ? ORDER BY created_at DESC LIMIT 1",
                          [task.name, task.project]).fetchone()  # fmt: skip
    if row is None:
        raise FileNotFoundError(f"no curated dataset for task {task.name!r} in project {task.project!r}: "
                                f"run `flywheel curate --task {task.name}` first")  # fmt: skip
    return row[0], row[1]


def train_latest(settings: Settings, task: Task, **kwargs) -> Candidate:
    """`train` on the newest curated dataset of the task's project: what `flywheel train --task T` runs."""
    dataset_id, path = ranks.on_main(lambda: latest_dataset(settings, task))
    return train(settings, project=task.project, task=task.name, dataset_path=path, dataset_id=dataset_id,
                 recipe=task.recipe, base_model=task.base_model, teacher=task.teacher, **kwargs)  # fmt: skip
