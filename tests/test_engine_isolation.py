"""A request's failure is its own, and every route obeys `gateway.max_tokens` (issue 19, findings 2 and 5).

At the door: a seed a torch generator cannot take, or an empty prompt, is a 400 naming the field;
a tiny temperature decodes greedily. In the engine: a row that fails while decoding (its seed, its
caller's `emit`, a token the model cannot read, so the batched forward pass fails) gets an error,
and the rows batched with it finish with the same text as when each runs alone. Upstream and vLLM
routes forward a token limit capped at `gateway.max_tokens`, as the local engine applies it.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from fastapi import FastAPI, Request

from conftest import make_keys
from flywheel.settings import load_settings
from serving.app import create_app, in_thread
from serving.engine import Engine, Generation

pytestmark = pytest.mark.slow  # (a tiny model is built, and a service started, once per module)
TICKETS = [f"ticket {i}: " + "my parcel is late and " * (i % 4) + f"order {i * 37} is missing" for i in range(15)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    from flywheel.demo.tiny import build_tiny_model, ticket_texts

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", ticket_texts(200), max_length=96))


class Answer:
    """What the engine emitted for one request: its text and its last event."""

    def __init__(self):
        self.pieces: list[str] = []
        self.done: dict | None = None
        self.finished = threading.Event()

    def emit(self, delta: str, done: dict | None) -> None:
        self.pieces.append(delta)
        if done is not None:
            self.done = done
            self.finished.set()

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class BrokenClient(Answer):
    """A caller whose handler raises on every piece of text (say, its queue is gone)."""

    def emit(self, delta: str, done: dict | None) -> None:
        if done is None:
            raise RuntimeError("the caller's handler broke")
        super().emit(delta, done)


def generate(engine: Engine, requests: list[tuple[list[int], Answer, dict]]) -> list[Answer]:
    """Submit all `requests` at once (so they share a batch) and wait for every last event."""
    for ids, answer, params in requests:
        engine.submit(Generation(prompt_ids=ids, max_tokens=8, emit=answer.emit, **{"temperature": 0, **params}))
    for _, answer, _ in requests:
        assert answer.finished.wait(60), "a request never got its last event"
    return [answer for _, answer, _ in requests]


def test_a_failing_row_ends_alone_and_its_batch_goes_on(tiny):
    poisons = 4
    alone = Engine(tiny, max_batch=1, max_wait_ms=0)
    try:
        prompts = [alone.encode_prompt(t) for t in TICKETS]
        solo = [generate(alone, [(ids, Answer(), {})])[0].text for ids in prompts]
    finally:
        alone.close()
    engine = Engine(tiny, max_batch=len(TICKETS) + poisons, max_wait_ms=10_000)  # the batch closes when all are in
    try:
        vocab = engine.model.config.vocab_size
        poisoned = [
            (prompts[0], BrokenClient(), {}),  # the row's own work fails at its first token
            (prompts[1][:3] + [vocab + 5] + prompts[1][3:], Answer(), {}),  # the batched forward pass fails
            (prompts[2], Answer(), {"seed": 10**21, "temperature": 1.0}),  # (the door refuses it; the engine too)
            ([], Answer(), {}),  # an empty prompt
        ]
        normal = [(ids, Answer(), {}) for ids in prompts]
        requests = normal[:5] + poisoned[:2] + normal[5:10] + poisoned[2:] + normal[10:]
        assert len(requests) == engine.max_batch
        generate(engine, requests)
    finally:
        engine.close()

    assert [a.text for _, a, _ in normal] == solo
    assert all(a.done["finish_reason"] in ("stop", "length") for _, a, _ in normal)
    assert any(solo), "the tiny model said nothing: the comparison would prove nothing"
    assert [a.done["finish_reason"] for _, a, _ in poisoned] == ["error"] * poisons
    errors = [a.done["error"] for _, a, _ in poisoned]
    assert "handler broke" in errors[0] and "IndexError" in errors[1]
    assert "Overflow" in errors[2] and "no tokens" in errors[3]


@pytest.fixture(scope="module")
def provider():
    """A fake OpenAI-compatible provider that keeps every request body it got."""
    app, bodies = FastAPI(), []

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        bodies.append(await request.json())
        return {"id": "fake", "object": "chat.completion", "created": 0, "model": "fake",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}  # fmt: skip

    @app.post("/v1/completions")
    async def completions(request: Request) -> dict:
        bodies.append(await request.json())
        return {"id": "fake", "object": "text_completion", "created": 0, "model": "fake",
                "choices": [{"index": 0, "finish_reason": "stop", "text": "ok", "logprobs": None}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}  # fmt: skip

    with in_thread(app) as url:
        yield url, bodies


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny, provider):
    """`flywheel serve` in this process: a batching local route, the same model one request at a
    time (for the solo answers), and an upstream and a vLLM route to the fake provider."""
    home = tmp_path_factory.mktemp("home")
    (home / "flywheel.toml").write_text(f"""
[gateway]
max_tokens = 16
[routes.tiny]
kind = "local"
path = "{tiny}"
max_batch = 16
max_wait_ms = 2000
[routes.solo]
kind = "local"
path = "{tiny}"
max_batch = 1
max_wait_ms = 0
[routes.up]
kind = "upstream"
base_url = "{provider[0]}/v1"
retries = 0
[routes.gpu]
kind = "vllm"
base_url = "{provider[0]}/v1"
model = "served-there"
retries = 0
""")
    key = make_keys(home, "acme")["acme"]
    with in_thread(create_app(load_settings(home))) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def chat(client, model: str, content: str, **params):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                          **{"temperature": 0, "max_tokens": 8, **params})  # fmt: skip


def test_fifteen_requests_and_a_poisoned_one_together(client):
    """The poisoned requests are refused at the door with a 400 naming the field; the 15 sent with
    them answer as they do alone (one of them at temperature 1e-300, which decodes greedily)."""
    solo = [chat(client, "solo", t).choices[0].message.content for t in TICKETS]
    calls = [lambda t=t: chat(client, "tiny", t) for t in TICKETS[:14]]
    calls.append(lambda: chat(client, "tiny", TICKETS[14], temperature=1e-300))
    calls.append(lambda: chat(client, "tiny", TICKETS[0], seed=10**21, temperature=1.0))
    calls.append(lambda: client.completions.create(model="tiny", prompt="", max_tokens=8))

    def outcome(call):
        try:
            return call()
        except openai.APIStatusError as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        answers = list(pool.map(outcome, calls))
    assert [a.choices[0].message.content for a in answers[:15]] == solo
    assert any(solo), "the tiny model said nothing: the comparison would prove nothing"
    seed, empty = answers[15:]
    assert isinstance(seed, openai.BadRequestError) and seed.body["param"] == "seed"
    assert str(2**63 - 1) in seed.message
    assert isinstance(empty, openai.BadRequestError) and empty.body["param"] == "prompt"


def test_every_seed_the_door_takes_decodes(client):
    for seed in (-(2**63), 2**63 - 1):
        assert chat(client, "solo", TICKETS[0], seed=seed, temperature=1.0).choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, "up", TICKETS[0], seed=2**63)  # upstream routes too: vLLM takes no more
    assert info.value.body["param"] == "seed"


def test_upstream_and_vllm_routes_forward_a_capped_token_limit(client, provider):
    _, bodies = provider
    chat(client, "up", "hi", max_tokens=10**30)
    chat(client, "gpu", "hi", max_tokens=5)
    client.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}])
    client.chat.completions.create(model="gpu", messages=[{"role": "user", "content": "hi"}],
                                   max_completion_tokens=10**30)  # fmt: skip
    client.completions.create(model="up", prompt="hi", max_tokens=10**30)
    client.completions.create(model="gpu", prompt="hi")
    sent = [(b["model"], b.get("max_tokens"), b.get("max_completion_tokens")) for b in bodies[-6:]]
    assert sent == [("up", 16, None), ("served-there", 5, None), ("up", None, 16), ("served-there", None, 16),
                    ("up", 16, None), ("served-there", 16, None)]  # fmt: skip
