"""`kind = "local"`: a Hugging Face model served by our engine (serving.engine) in this process.

The request is tokenized here (with the chat template, PII-redacted first when the route's model
learned on redacted data), checked against the context length, and handed to the engine, whose
tokens come back through a queue: collected for a plain answer, relayed as server-sent events
for a stream. A client that goes away mid-stream cancels its row in the engine's batch.

A chat request's `tools` are rendered into its prompt as training renders them, and the answer is
read back into OpenAI `tool_calls` (serving.tool_calls); `tool_choice` "required" / a named
function and `response_format` become a grammar the engine decodes under (serving.constrain).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import msgspec
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from flywheel.ingest import pii
from flywheel.tools import parse
from flywheel.models import model_path
from serving import openai_types as oa
from serving import tool_calls
from serving.backends.base import Backend, Unavailable
from serving.constrain import GrammarError
from serving.engine import Engine, Generation
from serving.errors import ApiError
from serving.recording import ID_HEADER, Call
from serving.routing import Target


class LocalBackend(Backend):
    holds_adapters = True

    engine: Engine | None = None

    async def start(self, http: httpx.AsyncClient) -> None:
        route = self.route
        # `path` may name a base model of the data folder; the default one is imported on first use
        path = await run_in_threadpool(model_path, self.home, route.path) if self.home else route.path
        self.engine = await run_in_threadpool(lambda: Engine(path, adapters=route.adapters, max_batch=route.max_batch,
                                                             max_wait_ms=route.max_wait_ms, route=self.name,
                                                             speculative=route.speculative, home=self.home,
                                                             prefix_cache_tokens=route.prefix_cache_tokens
                                                             if route.prefix_cache else 0))  # fmt: skip
        self.failed_adapters = dict(self.engine.failed)

    async def close(self) -> None:
        if self.engine is not None:
            self.engine.close()

    async def load_adapter(self, name: str, path: str) -> None:
        if self.engine is None:
            raise Unavailable(f"route {self.name!r} has no model loaded")
        await asyncio.wrap_future(self.engine.load_adapter(name, path))

    async def unload_adapter(self, name: str) -> None:
        if self.engine is None:
            raise Unavailable(f"route {self.name!r} has no model loaded")
        await asyncio.wrap_future(self.engine.unload_adapter(name))

    def _prompt_ids(self, call: Call, tools: list[dict] | None) -> list[int]:
        messages, prompt = call.req.messages if call.chat else None, call.input.get("prompt")
        if self.route.redact_input:  # the model learned on redacted data: show it the same
            messages = [{**m, "content": pii.redact(m["content"])[0]} if isinstance(m.get("content"), str) else m
                        for m in messages] if call.chat else None  # fmt: skip
            prompt = None if call.chat else pii.redact(prompt)[0]
        try:
            ids = self.engine.encode_chat(messages, tools) if call.chat else self.engine.encode_prompt(prompt)
        except Exception as exc:
            raise ApiError(400, f"messages: cannot apply the chat template: {exc}", param="messages") from None
        param = "messages" if call.chat else "prompt"
        if not ids:  # the model needs at least one token to go on from
            raise ApiError(400, f"{param}: empty; give at least one token of text", param=param, code="empty_prompt")
        if len(ids) >= self.engine.context_length:
            raise ApiError(400, f"{param}: the prompt is {len(ids)} tokens; this model's context is "
                           f"{self.engine.context_length} tokens", param=param, code="context_length_exceeded")  # fmt: skip
        return ids

    async def answer(self, call: Call, target: Target, raw: dict) -> Response:
        if self.engine is None:
            raise Unavailable(f"route {self.name!r} did not start: its model could not be loaded")
        req = call.req
        offer = tool_calls.read(raw) if call.chat else tool_calls.Offer()
        if offer.grammar is not None:
            try:
                await run_in_threadpool(self.engine.grammars.check, offer.grammar)
            except GrammarError as exc:
                raise ApiError(400, f"{offer.grammar_param}: cannot constrain decoding to it: {exc}",
                               param=offer.grammar_param, code="invalid_parameter") from None  # fmt: skip
        ids = self._prompt_ids(call, offer.tools)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        gen = Generation(
            prompt_ids=ids, max_tokens=oa.token_limit(req, call.state.settings.gateway.max_tokens),
            temperature=1.0 if req.temperature is None else req.temperature, top_p=req.top_p or 1.0, seed=req.seed,
            stop=oa.stops(req), adapter=target.adapter, grammar=offer.grammar,
            emit=lambda delta, done: loop.call_soon_threadsafe(events.put_nowait, (delta, done)),
        )  # fmt: skip
        self.engine.submit(gen)
        oid = ("chatcmpl-" if call.chat else "cmpl-") + call.id
        if not req.stream:
            pieces, done = [], None
            while done is None:
                delta, done = await events.get()
                pieces.append(delta)
            text, usage = "".join(pieces), oa.usage(done["prompt_tokens"], done["completion_tokens"])
            if done["finish_reason"] == "error":
                call.record(target, text, usage, error=done["error"])
                raise ApiError(500, f"generation failed: {done['error']}", code="engine_error")
            body = oa.completion_body(call.chat, oid, target.model_id, text, done["finish_reason"], usage)
            calls = None
            if call.chat:
                message, finish = offer.message(text, done["finish_reason"], self.name)
                body["choices"][0].update(message=message, finish_reason=finish)
                text, calls = message["content"] or "", message.get("tool_calls")
            return Response(msgspec.json.encode(body), media_type="application/json", headers={ID_HEADER: call.id},
                            background=BackgroundTask(call.record, target, text, usage, tool_calls=calls))  # fmt: skip

        calls = offer.stream()  # (None: no tools, the text goes on as it comes)

        def chunk(item: str | dict, first: bool) -> bytes:
            text = item if isinstance(item, str) else ""
            body = oa.chunk_body(call.chat, oid, target.model_id, text=text, first=first)
            if isinstance(item, dict):  # a whole tool call, as one delta
                body["choices"][0]["delta"] = {**({"role": "assistant"} if first else {}),
                                               "tool_calls": [{"index": calls.calls.index(item), **item}]}  # fmt: skip
            return oa.sse(body)

        async def stream() -> AsyncIterator[bytes]:
            pieces, done, first = [], None, True
            try:
                while done is None:
                    delta, done = await events.get()
                    pieces.append(delta)
                    items = (calls.feed(delta) + (calls.close() if done else [])) if calls else [delta] if delta else []
                    for item in items or ([""] if first else []):
                        yield chunk(item, first)
                        first = False
                text = "".join(pieces)
                finish = done["finish_reason"]
                if calls:
                    offer.count(calls.unparsed, calls.calls, self.name)
                    finish = tool_calls.finish_reason(finish, calls.calls)
                    text = (parse(text)[0] or "") if calls.calls else text  # (recorded: the content)
                elif call.chat:
                    offer.count(text, [], self.name)
                usage = oa.usage(done["prompt_tokens"], done["completion_tokens"])
                # Recorded before the last chunks: OpenAI's client hangs up as soon as it reads [DONE],
                # and the disconnect would end this generator before a later line ran.
                call.record(target, text, usage, tool_calls=calls.calls if calls else None, error=done.get("error"))
                yield oa.sse(oa.chunk_body(call.chat, oid, target.model_id, finish=finish))
                if (req.stream_options or {}).get("include_usage"):
                    yield oa.sse(oa.chunk_body(call.chat, oid, target.model_id, usage_=usage))
                yield oa.sse("[DONE]")
            finally:
                if not call.recorded:
                    call.record(target, "".join(pieces), None, error="client disconnected")
                gen.cancelled.set()  # the client went away: the engine drops the row at its next step

        return StreamingResponse(stream(), media_type="text/event-stream", headers={ID_HEADER: call.id})
