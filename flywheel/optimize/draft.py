"""A task's trained draft for speculative decoding: what its production model's answers usually say next.

Prompt lookup (serving.speculate) drafts only what a request's own context already holds. A task's
answers repeat each other far more than that: the same labels, the same tool-call scaffolding, the
same phrases. So the loop builds, from the answers of the dataset the production model was trained
on, a table from each run of the last 3 (else 2) tokens to the token that followed it, kept only
where that token followed at least `MIN_COUNT` times and in at least `MIN_SHARE` of them (a rejected
draft token costs a wasted position of the verifying pass). Drafting follows the table token by
token (`table_draft`), after prompt lookup found nothing.

The table is built with the base model's tokenizer, each answer preceded by the last tokens of its
rendered prompt (so the answer's first tokens are drafted too) and followed by end-of-sequence. It
is stored as `draft.json` in a variant's folder, with its lineage (the dataset and the number of
answers) in the file and in the variant's registry row.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

DRAFT_FILE = "draft.json"
ORDERS = (3, 2)  # context lengths looked up, longest first (as prompt lookup does)
MIN_COUNT = 2
MIN_SHARE = 0.5

Table = dict[tuple[int, ...], int]


def answers(dataset_path: str | Path) -> list[tuple[list[dict], list[dict] | None, dict]]:
    """(prompt messages, tools, target assistant message) of each training row of a curated dataset."""
    import pyarrow.parquet as pq

    rows = pq.read_table(Path(dataset_path) / "parquet" / "sft-train.parquet").to_pylist()
    result = []
    for row in rows:
        messages = row["messages"]
        tools = json.loads(row["tools"]) if isinstance(row.get("tools"), str) and row["tools"] not in ("", "None") else None
        if messages and messages[-1].get("role") == "assistant":
            result.append((messages[:-1], tools, messages[-1]))
    return result


def build_table(tokenizer, examples: list[tuple[list[dict], list[dict] | None, dict]]) -> Table:
    from flywheel.tools import assistant_text, render

    follows: dict[tuple[int, ...], Counter] = defaultdict(Counter)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for prompt, tools, target in examples:
        head = tokenizer.encode(render(tokenizer, prompt, tools, add_generation_prompt=True), add_special_tokens=False)
        answer = tokenizer.encode(assistant_text(target), add_special_tokens=False) + eos
        seq = head[-max(ORDERS):] + answer
        for i in range(max(ORDERS), len(seq)):
            for n in ORDERS:
                follows[tuple(seq[i - n : i])][seq[i]] += 1
    table = {}
    for key, counts in follows.items():
        token, count = counts.most_common(1)[0]
        if count >= MIN_COUNT and count / sum(counts.values()) >= MIN_SHARE:
            table[key] = token
    return table


def write_draft(folder: Path, tokenizer_path: str | Path, dataset_path: str | Path, dataset_id: str | None) -> dict:
    """Build the table from the dataset's answers, write `draft.json` into `folder`; return its lineage."""
    from transformers import AutoTokenizer

    examples = answers(dataset_path)
    table = build_table(AutoTokenizer.from_pretrained(str(tokenizer_path)), examples)
    lineage = {"dataset": dataset_id, "answers": len(examples), "entries": len(table)}
    (folder / DRAFT_FILE).write_text(json.dumps({**lineage, "table": [[*key, token] for key, token in table.items()]}))
    return lineage


def read_table(folder: str | Path) -> Table:
    """The table of `folder`'s draft.json; ValueError naming the file when it is missing or malformed."""
    path = Path(folder) / DRAFT_FILE
    try:
        entries = json.loads(path.read_text())["table"]
        return {tuple(int(t) for t in entry[:-1]): int(entry[-1]) for entry in entries}
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"{path}: cannot read the draft table: {type(exc).__name__}: {exc}") from None


def table_draft(context: list[int], table: Table, k: int) -> list[int]:
    """Up to `k` tokens the table predicts after `context`, each from the longest known tail."""
    draft: list[int] = []
    seq = list(context[-max(ORDERS):])
    while len(draft) < k:
        token = next((table[key] for n in ORDERS if len(seq) >= n and (key := tuple(seq[-n:])) in table), None)
        if token is None:
            break
        draft.append(token)
        seq.append(token)
    return draft
