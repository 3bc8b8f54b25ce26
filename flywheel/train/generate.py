"""Teacher answers and greedy generation: the pieces of distillation that are not a TRL trainer.

Sequence-level distillation is SFT on a teacher's answers. The curated dataset already holds the
incumbent's logged responses, so with no teacher model it is plain SFT on them; with a local
teacher model, `teacher_answers` first replaces every target by what the teacher says (the teacher
may use another tokenizer: only text crosses over); the `distill` method (`flywheel.train.methods`)
calls it. On-policy distillation (GKD) is a TRL trainer (`flywheel.train.methods.gkd`); it needs the
teacher's full next-token distribution, so teacher and student must share a vocabulary.

`generate` and `exact_match` are also how training reports whether the candidate answers right:
exact match of the greedy answer against the target, on the eval split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def generate(model, tokenizer, conversations: Sequence[list[dict]], *, max_new_tokens: int = 64, batch_size: int = 16,
             tools: Sequence | None = None) -> list[str]:
    """Greedy answers of `model` to chat `conversations` (each ends before the assistant turn),
    offered `tools` (one list or JSON text per conversation, or None), rendered as the engine does."""
    import torch

    from flywheel.tools import render

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only generation: pad on the left so answers start aligned
    answers: list[str] = []
    try:
        for start in range(0, len(conversations), batch_size):
            batch = conversations[start : start + batch_size]
            offered = tools[start : start + batch_size] if tools is not None else [None] * len(batch)
            texts = [render(tokenizer, list(c), t, add_generation_prompt=True) for c, t in zip(batch, offered, strict=True)]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    use_cache=True,  # TRL turns the cache off for training; generation wants it
                )
            new = out[:, enc["input_ids"].shape[1] :]
            answers += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def split_targets(rows: Sequence[dict[str, Any]]) -> tuple[list[list[dict]], list[str]]:
    """Chat rows → (prompts without the last message, the last message's content as the target)."""
    prompts, targets = [], []
    for row in rows:
        messages = row["messages"]
        prompts.append([{"role": m["role"], "content": m["content"]} for m in messages[:-1]])
        targets.append(messages[-1]["content"])
    return prompts, targets


def exact_match(model, tokenizer, rows: Sequence[dict[str, Any]], *, max_new_tokens: int = 64, batch_size: int = 16) -> float:
    """Fraction of `rows` (chat format) whose greedy answer equals the target (whitespace-stripped)."""
    if not rows:
        return float("nan")
    prompts, targets = split_targets(rows)
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       tools=[row.get("tools") for row in rows])
    return sum(a == t.strip() for a, t in zip(answers, targets)) / len(rows)


def teacher_answers(teacher: str, dataset, *, max_new_tokens: int = 256, batch_size: int = 16, bf16: bool = False):
    """`dataset` (a `messages` column) with each last assistant message replaced by the teacher's answer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.bfloat16 if bf16 else torch.float32)
    if torch.cuda.is_available():
        model = model.to("cuda")
    prompts, _ = split_targets(dataset)
    tools = list(dataset["tools"]) if "tools" in dataset.column_names else None
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, tools=tools)
    del model

    def relabel(row, idx):
        messages = list(row["messages"])
        messages[-1] = {**messages[-1], "content": answers[idx]}
        return {"messages": messages}

    return dataset.map(relabel, with_indices=True)
