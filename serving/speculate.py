"""Speculative decoding, lossless: draft a few tokens cheaply, let the model check them all in one pass.

Decoding one token costs a forward pass of the whole model, and on a small batch that pass is
bound by reading the weights, not by arithmetic: checking k+1 tokens costs little more than one.
A greedy row's draft (`ngram_draft`: the tokens that followed the last time its latest few tokens
appeared, in its prompt or its answer so far, i.e. prompt-lookup decoding) is fed after its next
token; `accept` keeps the longest prefix of the draft that the model itself would have chosen,
plus the model's own next token, so the output is exactly what plain greedy decoding writes.
Routing labels, extractions and answers quoting the prompt repeat their context a lot.

A variant may draft from a trained draft model instead (`ModelDraft`, flywheel.optimize.draft_model):
greedily, token by token, its KV cache kept from one step's draft to the next.

Only greedy, unconstrained rows decoding alone speculate (the engine checks): sampling rows keep
plain decoding, so their distribution is unchanged, and a batch's cache is cropped as one.
"""

from __future__ import annotations

from collections.abc import Callable

MODES = ("off", "ngram")  # a route's; a variant may also use its task's trained drafts (serving.variants)
# The most tokens a draft proposes. On 2 cores a verifying pass of 2 to 13 tokens costs about the same,
# 1.7-2.1x a plain step (a product of a few rows is slower than a vector's), so a long predictable run
# is best checked in one pass. `bench/draft_replay.py` (SmolLM2, 64 demo tickets, a table of 166
# answers): plain decoding's steps cost 1.81x the speculating ones at 6 tokens, 2.01x at 8, 2.07x at
# 12 (prompt lookup alone: 1.09-1.11x at any length).
DRAFT_TOKENS = 12
LONGEST_MATCH = 3  # the longest tail n-gram looked up; shorter ones are tried when it has no match
# A single repeated token predicts what follows it poorly (on SmolLM2's answers to the demo's tickets:
# 14% of such drafts accepted, against 41% from two or more tokens), and every rejected token costs.
SHORTEST_MATCH = 2
# A draft model's token is proposed while the draft is this sure of it (the first always is): an unsure
# token is mostly rejected, and costs a verifying position and the draft passes after it. (Not tuned yet.)
SURE = 0.5


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


class ModelDraft:
    """Greedy drafts of a small model. The engine asks for one at every speculation step with the row's
    whole context, which differs from the last one only at its end (the accepted draft tokens and the
    model's own next token): the cache keeps the last context's keys and values, cropped to the part
    the new context shares, so a draft runs only the new tokens and then one per drafted token.
    One row speculates at a time per model (it decodes alone), so one cache serves it; another
    row's context shares little and mostly starts it over.

    The head is restricted to `token_ids` (those the task's answers use, and end-of-sequence): on
    SmolLM2-135M the full head (576 x 49,152) costs more than 4 decoder layers. A draft token the model
    would not choose is only rejected, so the output stays the model's own."""

    def __init__(self, model, token_ids: list[int], eos_ids: set[int]) -> None:
        import torch

        self.model, self.eos_ids = model, eos_ids
        self.decoder = model.get_decoder()
        device = self.decoder.embed_tokens.weight.device
        self.token_ids = torch.tensor(token_ids, dtype=torch.long, device=device)
        self.head = model.get_output_embeddings().weight.detach()[self.token_ids].clone()  # [kept, hidden]
        self.context: list[int] = []  # the tokens whose keys and values the cache holds
        self.cache = None

    def __call__(self, context: list[int], k: int = DRAFT_TOKENS) -> list[int]:
        import torch
        from transformers import DynamicCache

        from serving.batch import cache_name

        shared = 0
        for shared, (a, b) in enumerate(zip(self.context, context[:-1])):  # (its last token is always fed)
            if a != b:
                break
        else:
            shared = min(len(self.context), len(context) - 1)
        cache, self.cache = self.cache, None  # (until this draft is done: a failed one leaves no stale cache)
        if cache is None or shared == 0:
            cache, shared = DynamicCache(config=self.model.config), 0
        elif shared < len(self.context):
            cache.crop(shared - len(self.context))  # (transformers 5 crops by the tokens to remove, negative)
        feed, draft, fed = context[shared:], [], context[:shared]  # fed: the tokens the cache holds
        with torch.inference_mode():
            while len(draft) < k:
                ids = torch.tensor([feed], dtype=torch.long, device=self.token_ids.device)
                hidden = self.decoder(input_ids=ids, **{cache_name(): cache}, use_cache=True).last_hidden_state[0, -1]
                fed = fed + feed
                probs = (self.head @ hidden.to(self.head.dtype)).float().softmax(-1)
                best = int(probs.argmax())
                if draft and probs[best] < SURE:
                    break
                token = int(self.token_ids[best])
                draft.append(token)
                if token in self.eos_ids:
                    break
                feed = [token]
        # (the last drafted token was fed only when an unsure one after it ended the draft)
        self.cache, self.context = cache, fed
        return draft


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
