"""Samplers: anything that answers chat messages.

- `EndpointSampler`: any OpenAI-compatible `/chat/completions` (our gateway, an upstream, vLLM),
  over httpx with a thread pool for concurrency and bounded retries with backoff; the cost of a
  request comes from a per-route price table (USD per million prompt / completion tokens).
- `LocalSampler`: a Hugging Face causal LM from `from_pretrained(path)`, batched greedy
  `generate` with left padding and the chat template; cost = measured compute seconds × the
  configured hardware price per hour, shared by the requests of a batch.
- `FunctionSampler`: a Python callable (a rule baseline, a simulated provider, a test judge).

`SAMPLERS` maps each `kind` to its class; `build_sampler({"kind": …, …})` makes one from plain data
(CLI, Prefect parameters). A new kind of sampler is a class here (or in its own module) with a
`kind` and a line in `SAMPLERS`.

Prices may also come from `<home>/flywheel.toml`: `[evals] hardware_usd_per_hour = 1.2` and
`[evals.prices."route"] prompt = 0.15, completion = 0.6` (USD per 1M tokens).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from evals.types import Messages, SamplerBase, SamplerResponse

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def eval_config(home: Path | str) -> dict[str, Any]:
    """The `[evals]` settings of the data folder `home` (flywheel.settings.EvalsSettings) as plain data."""
    from flywheel.settings import load_settings

    return load_settings(home).evals.model_dump()


class EndpointSampler(SamplerBase):
    """An OpenAI-compatible chat endpoint. `prices`: {route: {"prompt": usd/1M, "completion": usd/1M}}."""

    kind = "endpoint"

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, max_tokens: int = 64,
                 temperature: float = 0.0, concurrency: int = 8, max_retries: int = 3, backoff_s: float = 0.5,
                 timeout_s: float = 60.0, prices: dict[str, dict[str, float]] | None = None,
                 tools: list[dict] | None = None):  # fmt: skip
        self.base_url, self.model = base_url.rstrip("/"), model
        self.max_tokens, self.temperature, self.tools = max_tokens, temperature, tools
        self.concurrency, self.max_retries, self.backoff_s = concurrency, max_retries, backoff_s
        self.price = (prices or {}).get(model, {})
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers,
                                    limits=httpx.Limits(max_connections=concurrency))  # fmt: skip

    @classmethod
    def from_config(cls, cfg: dict[str, Any], evals_conf: dict[str, Any]) -> EndpointSampler:
        return cls(**{"prices": evals_conf.get("prices", {}), **cfg})

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "base_url": self.base_url, "model": self.model, "price": self.price}

    def __call__(self, messages: Messages, tools: list[dict] | None = None) -> SamplerResponse:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                                "temperature": self.temperature}  # fmt: skip
        tools = self.tools if tools is None else tools  # the example's tools, else the sampler's own
        if tools:
            body["tools"] = tools
        error, attempts = "", 0
        for attempt in range(self.max_retries + 1):
            attempts += 1
            if attempt:  # exponential backoff with jitter, so many threads do not retry in lockstep
                time.sleep(self.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
            start = time.perf_counter()
            try:
                resp = self._client.post(f"{self.base_url}/chat/completions", json=body)
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
                continue
            latency = (time.perf_counter() - start) * 1000
            if resp.status_code != 200:
                error = f"HTTP {resp.status_code}: {resp.text[:200]}"
                if resp.status_code in RETRY_STATUS:
                    continue
                break  # a 4xx other than the above will not get better by asking again
            try:
                data = resp.json()
                msg = data["choices"][0]["message"]
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                error = f"malformed response: {exc!r}"
                continue
            usage = data.get("usage") or {}
            pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            cost = (pt * self.price.get("prompt", 0.0) + ct * self.price.get("completion", 0.0)) / 1e6
            return SamplerResponse(text=msg.get("content") or "", latency_ms=latency, prompt_tokens=pt,
                                   completion_tokens=ct, cost_usd=cost, tool_calls=msg.get("tool_calls"))  # fmt: skip
        return SamplerResponse(error=f"{attempts} attempt(s) failed; last: {error}")

    def batch(self, batch: list[Messages], tools: list[list[dict] | None] | None = None) -> list[SamplerResponse]:
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(batch)))) as pool:
            return list(pool.map(self, batch, tools or [None] * len(batch)))

    def close(self) -> None:
        self._client.close()


class LocalSampler(SamplerBase):
    """A local causal LM, batched. `usd_per_hour` prices the measured compute time."""

    kind = "local"

    def __init__(self, path: Path | str, *, model: str | None = None, max_tokens: int = 64, batch_size: int = 32,
                 usd_per_hour: float = 0.0, device: str | None = None):  # fmt: skip
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path, self.model = str(path), model or Path(path).name
        self.max_tokens, self.batch_size, self.usd_per_hour = max_tokens, batch_size, usd_per_hour
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.tokenizer.padding_side = "left"  # generation continues from the right end of each row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = AutoModelForCausalLM.from_pretrained(self.path).to(self.device).eval()

    @classmethod
    def from_config(cls, cfg: dict[str, Any], evals_conf: dict[str, Any]) -> LocalSampler:
        return cls(**{"usd_per_hour": float(evals_conf.get("hardware_usd_per_hour", 0.0)), **cfg})

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "model": self.model, "batch_size": self.batch_size,
                "usd_per_hour": self.usd_per_hour}  # fmt: skip

    def __call__(self, messages: Messages, tools: list[dict] | None = None) -> SamplerResponse:
        return self._generate([messages], [tools])[0]

    def batch(self, batch: list[Messages], tools: list[list[dict] | None] | None = None) -> list[SamplerResponse]:
        tools = tools or [None] * len(batch)
        # Similar lengths together waste less padding; answers go back in the caller's order.
        order = sorted(range(len(batch)), key=lambda i: len(str(batch[i])))
        out: list[SamplerResponse | None] = [None] * len(batch)
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            for i, r in zip(idx, self._generate([batch[i] for i in idx], [tools[i] for i in idx])):
                out[i] = r
        return out  # type: ignore[return-value]

    def _generate(self, batch: list[Messages], tools: list[list[dict] | None]) -> list[SamplerResponse]:
        import torch

        tok = self.tokenizer
        # Tools go in through the model's chat template (one without a tools section ignores them).
        texts = [tok.apply_chat_template(m, tools=t or None, tokenize=False, add_generation_prompt=True)
                 for m, t in zip(batch, tools)]  # fmt: skip
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        start = time.perf_counter()
        with torch.inference_mode():
            gen = self.lm.generate(**enc, max_new_tokens=self.max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        new = gen[:, enc["input_ids"].shape[1] :]
        cost = seconds * self.usd_per_hour / 3600 / len(batch)
        out = []
        for row, mask in zip(new, enc["attention_mask"]):
            ids = row.tolist()
            # Up to and including the end-of-turn token; rows that stopped early are padded after it.
            n = next((i + 1 for i, t in enumerate(ids) if t == tok.eos_token_id), None)
            n = n if n is not None else sum(1 for t in ids if t != tok.pad_token_id)
            out.append(SamplerResponse(text=tok.decode(ids[:n], skip_special_tokens=True).strip(),
                                       latency_ms=seconds * 1000, prompt_tokens=int(mask.sum()),
                                       completion_tokens=n, cost_usd=cost))  # fmt: skip
        return out


class FunctionSampler(SamplerBase):
    """A Python function of the messages (returning text or a `SamplerResponse`) as a sampler."""

    kind = "function"

    def __init__(self, fn: Callable[[Messages], str | SamplerResponse], *, model: str = "function",
                 cost_per_request_usd: float = 0.0):  # fmt: skip
        self.fn, self.model, self.cost = fn, model, cost_per_request_usd

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "cost_per_request_usd": self.cost}

    def __call__(self, messages: Messages, tools: list[dict] | None = None) -> SamplerResponse:
        # The function sees the messages only; one that calls tools returns a SamplerResponse with tool_calls.
        start = time.perf_counter()
        try:
            out = self.fn(messages)
        except Exception as exc:  # a failing function is an errored example, like a failing endpoint
            return SamplerResponse(error=f"{type(exc).__name__}: {exc}")
        if isinstance(out, SamplerResponse):
            return out
        return SamplerResponse(text=str(out), latency_ms=(time.perf_counter() - start) * 1000,
                               completion_tokens=len(str(out).split()), cost_usd=self.cost)  # fmt: skip


SAMPLERS: dict[str, type[SamplerBase]] = {c.kind: c for c in (EndpointSampler, LocalSampler, FunctionSampler)}


def build_sampler(spec: dict[str, Any], home: Path | str | None = None) -> SamplerBase:
    """A sampler from plain data: `{"kind": "endpoint", "base_url", "model", "api_key"?, …}`,
    `{"kind": "local", "path", …}` or `{"kind": "function", "fn", …}` (without `kind`: endpoint
    when there is a `base_url`, else local); the other keys are the class's keyword arguments.
    Prices default to the `[evals]` table of `<home>/flywheel.toml`."""
    cfg = dict(spec)
    kind = cfg.pop("kind", "endpoint" if "base_url" in cfg else "local")
    if kind not in SAMPLERS:
        raise ValueError(f"sampler kind {kind!r}: one of {', '.join(SAMPLERS)}")
    return SAMPLERS[kind].from_config(cfg, eval_config(home) if home else {})
