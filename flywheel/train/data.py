"""Checks before training: is the base model there, and is the dataset usable for the method?

Everything here runs before a candidate is registered, so a bad input is a clear error and not a
failed row: an unknown model path or id, a dataset folder without the columns the method needs,
or fewer examples than `recipe.min_train_examples`. `load_splits` also finds the Hugging Face copy
inside a curated dataset version folder and holds out an eval split when curation made none.
"""

from __future__ import annotations

from pathlib import Path

from flywheel.train.methods import METHODS
from flywheel.train.recipes import Recipe


class DatasetTooSmall(ValueError):
    """Empty or too-small dataset: refused before any training."""


class BaseModelNotFound(FileNotFoundError):
    """The base (or teacher) model path or id cannot be loaded."""


def check_model_source(name: str, *, role: str = "base model") -> None:
    """Raise `BaseModelNotFound` unless `name` is a loadable local model folder (or a cached hub id)."""
    path = Path(name).expanduser()
    looks_local = path.is_absolute() or name.startswith((".", "~")) or path.exists()
    if looks_local:
        if not (path / "config.json").exists():
            raise BaseModelNotFound(f"{role} {name!r}: no such model folder (expected {path / 'config.json'})")
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise BaseModelNotFound(f"{role} {name!r} is neither a local model folder nor a loadable model id ({exc.__class__.__name__}); set `base_model` to a local path") from None


def _find_dataset_dir(path: Path, columns: list[str]) -> Path:
    # A curated dataset version is a folder; the HF `datasets` copy may be it or one level down
    # (next to Parquet files, or an SFT and a preference copy side by side): pick by columns.
    def is_hf(p: Path) -> bool:
        return (p / "dataset_dict.json").exists() or (p / "state.json").exists()

    if is_hf(path):
        return path
    from datasets import load_from_disk

    candidates = sorted(p for p in path.iterdir() if p.is_dir() and is_hf(p)) if path.is_dir() else []
    for sub in candidates:
        ds = load_from_disk(str(sub))
        names = next(iter(ds.values())).column_names if hasattr(ds, "values") else ds.column_names
        if all(c in names for c in columns):
            return sub
    raise FileNotFoundError(f"no Hugging Face dataset with columns {columns} at {path}")


def load_splits(dataset_path: Path | str, recipe: Recipe):
    """(train, eval or None) from a `save_to_disk` folder; validated for the recipe's method and size."""
    from datasets import DatasetDict, load_from_disk

    columns = list(METHODS[recipe.method].columns)  # curation writes `messages` for chats, pairs for preferences
    ds = load_from_disk(str(_find_dataset_dir(Path(dataset_path), columns)))
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise ValueError(f"dataset {dataset_path} has splits {list(ds)}, no 'train'")
        train_ds, eval_ds = ds["train"], ds.get(recipe.eval_split)
    else:
        train_ds, eval_ds = ds, None
    missing = [c for c in columns if c not in train_ds.column_names]
    if missing:
        raise ValueError(f"dataset {dataset_path} lacks column(s) {missing} needed by method {recipe.method!r} (has {train_ds.column_names})")
    if len(train_ds) < recipe.min_train_examples:
        raise DatasetTooSmall(
            f"dataset {dataset_path} has {len(train_ds)} training example(s); the recipe needs at least "
            f"min_train_examples={recipe.min_train_examples}: curate more traffic or lower min_train_examples"
        )
    if eval_ds is None and recipe.eval_fraction > 0 and len(train_ds) * recipe.eval_fraction >= 4:
        parts = train_ds.train_test_split(test_size=recipe.eval_fraction, seed=recipe.seed)
        train_ds, eval_ds = parts["train"], parts["test"]
    # Only the columns the trainer reads: curation may carry ids and metadata alongside. The tools
    # a chat offered travel with it, to be rendered as the engine renders them (`flywheel.tools`).
    if "messages" in columns and "tools" in train_ds.column_names:
        columns.append("tools")
    train_ds = train_ds.select_columns(columns)
    eval_ds = eval_ds.select_columns(columns) if eval_ds is not None and len(eval_ds) else None
    return train_ds, eval_ds
