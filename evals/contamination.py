"""Contamination guard: never score a model on examples it was trained on.

The key is the content hash of an example's prompt (`evals.spec.prompt_hash`: roles and
whitespace-normalised text), so the same question counts as seen whatever its id or reference.
The training data is a curated dataset version's `train` splits (HF `DatasetDict`s: the version
folder's `sft/` and `preference/`, or one such folder) or a JSONL of `messages` rows. Given a model id or path, the dataset
it was trained on is found through the `models` → `datasets` lineage.
"""

from __future__ import annotations

import json
from pathlib import Path

from evals.spec import prompt_hash
from evals.types import ContaminationError, EvalError, Example


def training_prompt_hashes(path: Path | str, split: str = "train") -> set[str]:
    """Prompt hashes of every training row: the messages before the final assistant target of
    an SFT row, the `prompt` of a preference (DPO) row. A version folder gives both: its `sft/`
    and its `preference/` (which holds prompts SFT dropped, e.g. thumbed-down answers)."""
    path = Path(path)
    if path.is_file():  # JSONL of {"messages": [...]}
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        from datasets import load_from_disk

        folders = [p for p in (path, path / "sft", path / "preference") if (p / "dataset_dict.json").exists()]
        if not folders:
            raise EvalError(f"contamination check: no training dataset (HF DatasetDict) at {path}")
        rows = []
        for folder in folders:
            ds = load_from_disk(str(folder))
            if split not in ds:
                raise EvalError(f"contamination check: dataset {folder} has no {split!r} split (has {list(ds)})")
            rows += ds[split].to_list()
    return {prompt_hash(_prompt(row)) for row in rows}


def _prompt(row: dict) -> list[dict]:
    if "prompt" in row:
        prompt = row["prompt"]
        return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    msgs = row.get("messages") or []
    return msgs[:-1] if msgs and msgs[-1].get("role") == "assistant" else msgs


def check_contamination(examples: list[Example], train_path: Path | str) -> None:
    """Raise `ContaminationError` naming the overlap when any example's prompt was trained on."""
    seen = training_prompt_hashes(train_path)
    overlap = [ex.id for ex in examples if prompt_hash(ex.messages) in seen]
    if overlap:
        raise ContaminationError(len(overlap), len(examples), overlap, str(train_path))


def training_dataset_of(con, *keys: str) -> str | None:
    """The dataset path a registered model was trained on, by model id or by one of its paths."""
    keys = tuple(k for k in keys if k)
    if not keys:
        return None
    marks = ", ".join("?" * len(keys))
    row = con.execute(
        "SELECT d.path FROM models m JOIN datasets d ON d.id = m.dataset_id"
        f" WHERE m.id IN ({marks}) OR m.merged_path IN ({marks}) OR m.adapter_path IN ({marks})"
        " ORDER BY m.created_at DESC LIMIT 1", list(keys) * 3).fetchone()  # fmt: skip
    return row[0] if row else None
