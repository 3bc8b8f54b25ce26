"""Speculative decoding, lossless: draft a few tokens cheaply, let the model check them all in one pass.

Decoding one token costs a forward pass of the whole model, and on a small batch that pass is
bound by reading the weights, not by arithmetic: checking k+1 tokens costs little more than one.
A greedy row's draft (`ngram_draft`: the tokens that followed the last time its latest few tokens
appeared, in its prompt or its answer so far, i.e. prompt-lookup decoding) is fed after its next
token; `accept` keeps the longest prefix of the draft that the model itself would have chosen,
plus the model's own next token, so the output is exactly what plain greedy decoding writes.
Routing labels, extractions and answers quoting the prompt repeat their context a lot.

Only greedy, unconstrained rows decoding alone speculate (the engine checks): sampling rows keep
plain decoding, so their distribution is unchanged, and a batch's cache is cropped as one.
"""

from __future__ import annotations

from collections.abc import Callable

MODES = ("off", "ngram")  # a route's; a variant may also use its task's trained draft (serving.variants)
DRAFT_TOKENS = 6  # the most tokens a draft proposes: beyond this, acceptance falls faster than cost
LONGEST_MATCH = 3  # the longest tail n-gram looked up; shorter ones are tried when it has no match
# A single repeated token predicts what follows it poorly (on SmolLM2's answers to the demo's tickets:
# 14% of such drafts accepted, against 41% from two or more tokens), and every rejected token costs.
SHORTEST_MATCH = 2


def ngram_draft(context: list[int], k: int = DRAFT_TOKENS) -> list[int]:
    """Up to `k` tokens that followed the latest earlier occurrence of the context's last n tokens
    (n = LONGEST_MATCH down to SHORTEST_MATCH; a longer match predicts better). Empty when nothing matches."""
    for n in range(LONGEST_MATCH, SHORTEST_MATCH - 1, -1):
        if len(context) <= n:
            continue
        tail = context[-n:]
        for start in range(len(context) - n - 1, -1, -1):
            if context[start:start + n] == tail:
                return context[start + n:start + n + k]
    return []


def accept(draft: list[int], logits, step: Callable[[object], int | None]) -> tuple[int, int | None]:
    """Walk the verifying pass's logits [len(draft) + 1, vocab], position by position: `step(logits)`
    chooses the row's token there (None: the row finished). The draft's token at a position is
    accepted while it is what the model chose. Returns (draft tokens accepted, the token the row
    feeds next, or None when it finished)."""
    for i, drafted in enumerate(draft):
        token = step(logits[i])
        if token != drafted:  # (None, too: the row finished)
            return i, token
    return len(draft), step(logits[len(draft)])
