"""Speculative decoding with prompt-lookup drafts (issue 16, item 2): the same output, fewer passes.

A greedy request writes exactly what it writes without speculation, token for token and with the
same finish, on prompts with and without repetition; drafts are both accepted and rejected along
the way (so the cache really is cropped back), which the counts show. A sampling request does not
speculate: with a seed, its answer is unchanged too. A route's `speculative` is checked at load.
"""

from __future__ import annotations

import threading

import pytest
from lively_model import TICKETS, build_lively_model
from pydantic import ValidationError

from flywheel.settings import RouteSettings
from serving.engine import Engine, Generation
from serving.speculate import ngram_draft

pytestmark = pytest.mark.slow  # (a tiny model is built once; two engines decode a few hundred tokens)


def answer(engine: Engine, ids: list[int], **params) -> tuple[str, dict]:
    pieces, done, finished = [], {}, threading.Event()

    def emit(delta: str, last: dict | None) -> None:
        pieces.append(delta)
        if last is not None:
            done.update(last)
            finished.set()

    engine.submit(Generation(prompt_ids=ids, emit=emit, **{"max_tokens": 40, "temperature": 0, **params}))
    assert finished.wait(120), "the request never got its last event"
    return "".join(pieces), done


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return build_lively_model(tmp_path_factory.mktemp("model") / "lively")


def test_ngram_drafts_continue_the_latest_match():
    assert ngram_draft([5, 6, 7, 8, 1, 6, 7, 9, 2, 6, 7], k=3) == [9, 2, 6]  # the later "6 7" wins
    assert ngram_draft([1, 2, 3, 4, 2, 3], k=2) == [4, 2]
    assert ngram_draft([1, 2, 3], k=4) == []  # nothing repeats
    assert ngram_draft([1, 2, 3, 1], k=4) == []  # one token is too short a match


def test_greedy_output_is_the_same_with_and_without_speculation(model):
    plain = Engine(model, max_batch=1, max_wait_ms=0)
    ngram = Engine(model, max_batch=1, max_wait_ms=0, speculative="ngram")
    try:
        prompts = [plain.encode_prompt(t) for t in TICKETS]
        prompts.append(plain.encode_prompt("order 12 order 12 order 12 order 12 order 12 order"))  # drafts galore
        limits = [40] * len(prompts) + [7, 1]  # (a draft must not run past max_tokens)
        prompts += prompts[:2]
        expected = [answer(plain, ids, max_tokens=n) for ids, n in zip(prompts, limits)]
        got = [answer(ngram, ids, max_tokens=n) for ids, n in zip(prompts, limits)]
        sampled = [answer(e, prompts[3], temperature=0.9, seed=7) for e in (plain, ngram)]
    finally:
        plain.close()
        ngram.close()

    assert got == expected
    assert len({text for text, _ in expected}) >= len(TICKETS), "the answers do not depend on their prompts"
    assert [done["completion_tokens"] for _, done in got[-2:]] == [7, 1]
    assert plain.drafted == 0
    assert 0 < ngram.accepted < ngram.drafted, (ngram.accepted, ngram.drafted)  # some accepted, some rejected
    assert sampled[0] == sampled[1]


def test_a_route_names_a_known_speculation():
    assert RouteSettings(kind="local", speculative="ngram").speculative == "ngram"
    with pytest.raises(ValidationError, match="speculative"):
        RouteSettings(kind="local", speculative="medusa")


def test_a_draft_models_kept_cache_drafts_as_a_fresh_one_does():
    """A draft model keeps its cache from one step's draft to the next, cropped to what the new context
    shares: whatever ended the last draft (its length, end-of-sequence, an unsure token), the next
    draft is what a draft model without a kept cache proposes for the same context."""
    import random

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from serving.speculate import ModelDraft

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # a peaked head: some drafts run to their length, others stop at an unsure token
        model.lm_head.weight.mul_(20)
    kept, ids = ModelDraft(model, list(range(12)), eos_ids={11}), list(range(12))
    rng, ended = random.Random(0), set()
    context = [rng.randrange(64) for _ in range(20)]
    for _ in range(30):
        k = rng.choice([1, 3, 6])
        draft = kept(context, k=k)
        assert draft == ModelDraft(model, ids, eos_ids={11})(context, k=k), context
        ended.add("length" if len(draft) == k else "end" if draft[-1] == 11 else "unsure")
        # the model accepts some of the draft, then writes its own token (sometimes one the draft never saw)
        context = context + draft[: rng.randrange(len(draft) + 1)] + [rng.randrange(64)]
    assert ended == {"length", "end", "unsure"}, ended
