"""Prefix caching (issue 16, item 1): a prompt prefix that requests share is computed once per model.

Chats that share a task's system prompt answer exactly as they do without the cache (greedy, token
for token, and sampled with a seed) on the base, a LoRA adapter and a whole model, whether they come
together, one by one, or join a running batch (their padding then sits between the cached prefix and
their own tokens). The cache hits, and counts it; an adapter's entries are its own and go when it is
unloaded, so a model loaded again under that name answers with its own keys and values; the entries
stay within their token budget; a model whose cache a prefix cannot seed (a sliding window) is served
without it; a row that fails among rows of its prefix ends alone. A served route counts its hits in
/metrics; `prefix_cache = false` turns the cache off.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import openai
import pytest
from conftest import auth, make_keys
from lively_model import TICKETS, build_lively_model
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from test_engine_batching import LONG, SHORT, Log, solo
from test_gateway import make_adapter

from flywheel.settings import RouteSettings, load_settings
from serving.app import create_app, in_thread
from serving.engine import Engine, Generation
from serving.prefix import BLOCK, MIN_TOKENS

pytestmark = pytest.mark.slow  # (tiny models are built once per module; each engine decodes a few hundred tokens)
SYSTEM = "Route the ticket to one queue: billing, shipping or refund."  # (+ the chat template: 42 shared tokens)


def chat(ticket: str, system: str = SYSTEM) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": ticket}]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    base = build_lively_model(root / "base")
    return {"base": base, "whole": build_lively_model(root / "whole", seed=1),
            **{f"ada-{i}": make_adapter(base, root / f"ada-{i}", i) for i in (1, 2)}}  # fmt: skip


def engines(models: dict[str, str], **options) -> dict[str, Engine]:
    adapters = {"ada-1": models["ada-1"], "whole": models["whole"]}
    return {"on": Engine(models["base"], adapters=adapters, max_batch=16, max_wait_ms=0, **options),
            "off": Engine(models["base"], adapters=adapters, max_batch=16, max_wait_ms=0,
                          prefix_cache_tokens=0)}  # fmt: skip


def sampled(engine: Engine, ids: list[int], adapter: str | None) -> str:
    pieces, finished = [], threading.Event()

    def emit(delta: str, done: dict | None) -> None:
        pieces.append(delta)
        if done is not None:
            finished.set()

    engine.submit(Generation(prompt_ids=ids, max_tokens=SHORT, emit=emit, temperature=0.9, seed=7, adapter=adapter))
    assert finished.wait(120), "the sampled request never got its last event"
    return "".join(pieces)


def answers(engine: Engine) -> dict[str, str]:
    """Every model's answers to the shared-system chats: joining a running batch together, then one by
    one, then sampled."""
    prompts = [engine.encode_chat(chat(t)) for t in TICKETS[:5]]
    repeats = engine.encode_chat(chat("order 12 order 12 order 12 order 12 order 12 order"))
    log = Log()
    log.submit(engine, "long", engine.encode_chat([{"role": "user", "content": TICKETS[7]}]), LONG)
    while not log.events:  # the long one (no system prompt: nothing cached) is decoding
        log.finished["long"].wait(0.01)
    for model in (None, "ada-1", "whole"):
        for i, ids in enumerate(prompts):  # (None-0 decodes on alone, its padding kept: it may speculate)
            log.submit(engine, f"{model}-{i}", ids, LONG if (model, i) == (None, 0) else SHORT, model)
    log.wait()
    texts = dict(log.texts)
    for model in (None, "ada-1", "whole"):
        texts |= {f"{model}-solo-{i}": solo(engine, ids, SHORT, model) for i, ids in enumerate(prompts[:3])}
        texts[f"{model}-repeats"] = solo(engine, repeats, 3 * SHORT, model)  # (n-gram drafts galore)
        texts[f"{model}-sampled"] = sampled(engine, prompts[3], model)
    return texts


def test_answers_are_the_same_with_and_without_the_prefix_cache(models):
    pair = engines(models, speculative="ngram")  # (the cached engine speculates too: both are lossless)
    try:
        got = {name: answers(engine) for name, engine in pair.items()}
    finally:
        for engine in pair.values():
            engine.close()
    on, off = pair["on"].prefixes, pair["off"].prefixes

    assert got["on"] == got["off"]
    greedy = got["off"]
    assert len({greedy[f"None-{i}"] for i in range(5)}) == 5, "the answers do not depend on their prompts"
    assert all(len({greedy[f"{model}-{i}"] for model in (None, "ada-1", "whole")}) == 3 for i in range(5)), \
        "the adapter or the whole model changes nothing: this proves nothing"  # fmt: skip
    # each model has its own entry: the system prompt and chat scaffolding, in whole blocks
    assert {key for key, _ in on.entries} == {None, "ada-1", "whole"}
    assert {len(ids) for _, ids in on.entries} == {MIN_TOKENS}  # (42 tokens shared, rounded down to 2 blocks)
    assert on.tokens == 3 * MIN_TOKENS and MIN_TOKENS % BLOCK == 0
    assert on.hits >= 3 * (5 + 3 + 2) - 3 and on.misses >= 1, (on.hits, on.misses)  # (a first of each may miss)
    assert off.hits == off.misses == 0 and not off.entries
    assert pair["on"].accepted > 0, ("the cached engine never speculated", pair["on"].drafted)


def test_an_unloaded_adapters_entries_go_and_its_name_can_come_back(models):
    pair = engines(models)
    prompts = [pair["on"].encode_chat(chat(t)) for t in TICKETS[:3]]
    try:
        for ids in prompts:
            solo(pair["on"], ids, SHORT, "ada-1")
            solo(pair["on"], ids, SHORT)
        assert {key for key, _ in pair["on"].prefixes.entries} == {None, "ada-1"}
        for engine in pair.values():
            engine.unload_adapter("ada-1").result(timeout=120)
        assert {key for key, _ in pair["on"].prefixes.entries} == {None}
        assert pair["on"].prefixes.tokens == MIN_TOKENS
        for engine in pair.values():  # another adapter under the same name: its own keys and values
            engine.load_adapter("ada-1", models["ada-2"]).result(timeout=120)
        got = {name: [solo(engine, ids, SHORT, "ada-1") for ids in prompts] for name, engine in pair.items()}
    finally:
        for engine in pair.values():
            engine.close()
    assert got["on"] == got["off"]


def test_the_entries_stay_within_their_token_budget(models):
    pair = engines(models, prefix_cache_tokens=MIN_TOKENS + BLOCK)
    other = "Answer the customer in one friendly sentence, then sign it."
    try:
        got = {name: [solo(engine, engine.encode_chat(chat(t, system)), SHORT) for system in (SYSTEM, other)
                      for t in TICKETS[:3]] for name, engine in pair.items()}  # fmt: skip
    finally:
        for engine in pair.values():
            engine.close()
    cache = pair["on"].prefixes
    assert got["on"] == got["off"]
    assert len(cache.entries) == 1 and cache.tokens <= MIN_TOKENS + BLOCK, "the older entry stayed"
    assert other[:20] in pair["on"].tokenizer.decode(next(iter(cache.entries))[1])
    assert cache.hits >= 4  # (two chats of each system prompt found their entry)


def sliding_window_model(out: Path, vocab_size: int) -> str:
    """A tiny Mistral whose layers attend to their last 16 tokens only: a cache that drops a prefix's start."""
    import torch
    from transformers import AutoModelForCausalLM, MistralConfig

    config = MistralConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=16,
                           max_position_embeddings=128)  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # (as lively_model: answers that depend on the prompt)
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.15)
    model.save_pretrained(out)
    return str(out)


def test_a_model_whose_cache_a_prefix_cannot_seed_is_served_without_it(models, tmp_path):
    from transformers import AutoConfig

    vocab_size = AutoConfig.from_pretrained(models["base"]).vocab_size
    adapters = {"sliding": sliding_window_model(tmp_path / "sliding", vocab_size)}
    pair = {name: Engine(models["base"], adapters=adapters, max_batch=8, max_wait_ms=0, prefix_cache_tokens=tokens)
            for name, tokens in (("on", 4096), ("off", 0))}  # fmt: skip
    try:
        prompts = [pair["on"].encode_chat(chat(t)) for t in TICKETS[:4]]
        got = {name: [solo(engine, ids, SHORT, "sliding") for ids in prompts] for name, engine in pair.items()}
    finally:
        for engine in pair.values():
            engine.close()
    assert got["on"] == got["off"] and len(set(got["off"])) > 1
    assert pair["on"].prefixes.unseeded == {"sliding"} and not pair["on"].prefixes.entries


def test_a_failing_row_ends_alone_among_rows_that_share_its_prefix(models):
    """A token the model cannot read after the shared system prompt fails the prefill of every row
    of that prefix: they are prefilled again one by one, and only the row that causes it ends."""
    alone = Engine(models["base"], max_batch=1, max_wait_ms=0, prefix_cache_tokens=0)
    try:
        prompts = [alone.encode_chat(chat(t)) for t in TICKETS[:5]]
        expected = [solo(alone, ids, SHORT) for ids in prompts]
    finally:
        alone.close()
    engine = Engine(models["base"], max_batch=len(prompts) + 1, max_wait_ms=10_000)  # the batch closes when all are in
    poisoned = prompts[0][:-2] + [engine.model.config.vocab_size + 5] + prompts[0][-2:]
    log = Log()
    try:
        for i, ids in enumerate([*prompts, poisoned]):
            log.submit(engine, f"r{i}", ids, SHORT)
        log.wait()
    finally:
        engine.close()
    assert [log.texts[f"r{i}"] for i in range(len(prompts))] == expected
    assert log.done["r5"]["finish_reason"] == "error" and "IndexError" in log.done["r5"]["error"]
    assert engine.prefixes.hits >= 2 * len(prompts)  # (the batch's, then each one's alone)


def test_a_served_route_counts_its_hits_and_can_turn_the_cache_off(models, tmp_path):
    home = tmp_path
    (home / "flywheel.toml").write_text(f"""
[gateway]
max_tokens = 8
[routes.cached]
kind = "local"
path = "{models['base']}"
[routes.plain]
kind = "local"
path = "{models['base']}"
prefix_cache = false
""")
    key = make_keys(home, "acme", role="admin")["acme"]

    with in_thread(create_app(load_settings(home))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)

        def count(route: str, result: str) -> float:
            families = text_string_to_metric_families(httpx.get(f"{url}/metrics", headers=auth(key)).text)
            return sum(s.value for f in families for s in f.samples if s.name == "flywheel_prefix_cache_requests_total"
                       and s.labels == {"route": route, "result": result})  # fmt: skip

        before = {(route, result): count(route, result) for route in ("cached", "plain") for result in ("hit", "miss")}
        said = {route: [client.chat.completions.create(model=route, messages=chat(t), temperature=0, max_tokens=8)
                        .choices[0].message.content for t in TICKETS[:4]] for route in ("cached", "plain")}  # fmt: skip
        after = {pair: count(*pair) for pair in before}

    assert said["cached"] == said["plain"]
    assert after[("cached", "hit")] - before[("cached", "hit")] == 3  # (the first had nothing to share with)
    assert after[("cached", "miss")] - before[("cached", "miss")] == 1
    assert after[("plain", "hit")] == after[("plain", "miss")] == 0


def test_a_route_keeps_at_least_one_prefix_token():
    assert RouteSettings(kind="local").prefix_cache is True
    with pytest.raises(ValidationError, match="prefix_cache_tokens"):
        RouteSettings(kind="local", prefix_cache_tokens=0)
