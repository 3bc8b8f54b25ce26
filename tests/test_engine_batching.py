"""Continuous batching in our engine (issue 16, item 1).

A request joins the running batch at the next decoding step instead of waiting for it to end: a
long request is decoding when the others arrive, and each of them writes its first token, and
finishes, while the long one is still going. Every answer equals the same request decoded alone
(greedy), so merging KV caches of different widths, and rows leaving, change nobody's tokens.
Rows for different LoRA adapters join one batch; a whole model runs beside it as its own batch;
an adapter's unload waits for the request still decoding with it.
"""

from __future__ import annotations

import threading

import pytest
from lively_model import TICKETS, build_lively_model
from test_gateway import make_adapter

from serving.engine import Engine, Generation

pytestmark = pytest.mark.slow  # (tiny models are built once per module; each engine decodes a few hundred tokens)
LONG, SHORT = 60, 8  # tokens: the long request is still decoding when the short ones are done


class Log:
    """Every event of every request, in the order the engine thread emitted them."""

    def __init__(self):
        self.events: list[tuple[str, str]] = []  # (request, "token" | "done")
        self.texts: dict[str, str] = {}
        self.done: dict[str, dict] = {}
        self.finished: dict[str, threading.Event] = {}

    def submit(self, engine: Engine, name: str, ids: list[int], max_tokens: int, adapter: str | None = None) -> None:
        self.texts[name], self.finished[name] = "", threading.Event()

        def emit(delta: str, done: dict | None) -> None:
            self.events.append((name, "token" if done is None else "done"))
            self.texts[name] += delta
            if done is not None:
                self.done[name] = done
                self.finished[name].set()

        engine.submit(Generation(prompt_ids=ids, max_tokens=max_tokens, emit=emit, temperature=0, adapter=adapter))

    def wait(self, *names: str) -> None:
        for name in names or list(self.finished):
            assert self.finished[name].wait(120), f"{name} never got its last event"

    def first(self, name: str, kind: str) -> int:
        return self.events.index((name, kind))


def solo(engine: Engine, ids: list[int], max_tokens: int, adapter: str | None = None) -> str:
    log = Log()
    log.submit(engine, "solo", ids, max_tokens, adapter)
    log.wait()
    return log.texts["solo"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    base = build_lively_model(root / "base")
    return {"base": base, "whole": build_lively_model(root / "whole", seed=1),
            **{f"ada-{i}": make_adapter(base, root / f"ada-{i}", i) for i in (1, 2)}}  # fmt: skip


def test_requests_join_a_running_batch_and_answer_as_alone(models):
    engine = Engine(models["base"], max_batch=8, max_wait_ms=0)
    try:
        prompts = [engine.encode_prompt(t) for t in TICKETS]
        alone = {f"r{i}": solo(engine, ids, LONG if i == 0 else SHORT) for i, ids in enumerate(prompts)}
        log = Log()
        log.submit(engine, "r0", prompts[0], LONG)
        while not log.events:  # the long one is decoding
            log.finished["r0"].wait(0.01)
        for i, ids in enumerate(prompts[1:], 1):
            log.submit(engine, f"r{i}", ids, SHORT)
        log.wait()
    finally:
        engine.close()

    assert log.done["r0"]["finish_reason"] == "length", "the long request ended early: it proves nothing"
    long_done = log.first("r0", "done")
    for name in alone:
        if name != "r0":
            assert log.first(name, "token") < long_done, f"{name} waited for the running batch to end"
            assert log.first(name, "done") < long_done
    assert log.texts == alone
    assert len(set(alone.values())) == len(alone), "the answers do not depend on their prompts"


def test_adapters_and_whole_models_join_a_running_batch(models):
    engine = Engine(models["base"], adapters={k: v for k, v in models.items() if k != "base"}, max_batch=8,
                    max_wait_ms=0)  # fmt: skip
    assert engine.full_models.keys() == {"whole"}
    requests = [("base", None), ("a1", "ada-1"), ("a2", "ada-2"), ("w", "whole"), ("a1-again", "ada-1"), ("b2", None)]
    try:
        # the short ones share a prompt: their answers differ only by the model or adapter that writes them
        prompts = {name: engine.encode_prompt(TICKETS[0 if name == "base" else 1]) for name, _ in requests}
        alone = {name: solo(engine, prompts[name], LONG if name == "base" else SHORT, adapter)
                 for name, adapter in requests}  # fmt: skip
        log = Log()
        log.submit(engine, "base", prompts["base"], LONG)
        while not log.events:
            log.finished["base"].wait(0.01)
        for name, adapter in requests[1:]:
            log.submit(engine, name, prompts[name], SHORT, adapter)
        log.wait()
    finally:
        engine.close()

    assert log.texts == alone
    assert len({alone["b2"], alone["a1"], alone["a2"], alone["w"]}) == 4, "the adapters change nothing"
    long_done = log.first("base", "done")
    assert all(log.first(name, "done") < long_done for name, _ in requests[1:])


def test_an_unload_waits_for_the_request_decoding_with_its_adapter(models):
    engine = Engine(models["base"], adapters={"ada-1": models["ada-1"]}, max_batch=8, max_wait_ms=0)
    try:
        ids = engine.encode_prompt(TICKETS[3])
        alone = solo(engine, ids, LONG, "ada-1")
        log = Log()
        log.submit(engine, "in-flight", ids, LONG, "ada-1")
        while not log.events:
            log.finished["in-flight"].wait(0.01)
        unloaded = engine.unload_adapter("ada-1")
        unloaded.result(timeout=120)
        assert log.finished["in-flight"].is_set(), "the adapter went while a request was decoding with it"
        late = Log()
        late.submit(engine, "late", ids, SHORT, "ada-1")
        late.wait()
    finally:
        engine.close()

    assert log.texts["in-flight"] == alone and log.done["in-flight"]["finish_reason"] == "length"
    assert late.done["late"]["finish_reason"] == "error" and "unloaded" in late.done["late"]["error"]
