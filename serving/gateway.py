"""The OpenAI-compatible gateway: /v1/chat/completions, /v1/completions, /v1/models.

An app points its OpenAI client's `base_url` here. Each call is resolved to a backend
(serving.routing), answered by our local engine or proxied to an upstream (with a fallback
route when it fails), and recorded as an interaction whose id comes back in the
`x-flywheel-interaction-id` header, so the app can send feedback on it.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from flywheel import pii
from serving import metrics, openai_types as oa, recording, upstream
from serving.auth import ProjectDep
from serving.engine import Generation
from serving.errors import ApiError
from serving.ingest import read_body
from serving.routing import Router, Target, UnknownModel

router = APIRouter()
TASK_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ID_HEADER = "x-flywheel-interaction-id"


def _parse(body: bytes, kind: type) -> tuple[Any, dict]:
    try:
        raw = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:  # (RecursionError: nested too deeply)
        raise ApiError(400, f"malformed JSON: {exc}", code="malformed_json") from None
    if not isinstance(raw, dict):
        raise ApiError(400, "expected a JSON object", code="invalid_body")
    try:
        return msgspec.convert(raw, kind), raw
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$.")
        param = where.rstrip("`").split("[")[0].split(".")[0] or None
        if message.startswith("Object missing required field"):
            param, message = message.split("`")[1], "required"
        raise ApiError(400, f"{param}: {message}", param=param, code="invalid_parameter") from None


class _Call:
    """What is known about one gateway call, for its record."""

    def __init__(self, request: Request, project: str, req: Any, raw: dict, chat: bool, target: Target):
        self.state, self.project, self.req, self.chat, self.target = request.app.state, project, req, chat, target
        self.id = uuid.uuid4().hex
        self.started = time.perf_counter()
        task = request.headers.get("x-flywheel-task") or target.task or "untagged"
        if not TASK_PATTERN.match(task):
            raise ApiError(400, "x-flywheel-task: expected 1-128 letters, digits, '.', '_' or '-'", param="x-flywheel-task")
        self.task = task
        self.input = ({"messages": req.messages} if chat else
                      {"prompt": req.prompt if isinstance(req.prompt, str) else req.prompt[0]})  # fmt: skip
        self.params = {k: raw[k] for k in ("temperature", "top_p", "max_tokens", "stop", "seed") if k in raw}

    def record(self, target: Target, text: str, usage: dict | None, *, error: str | None = None) -> None:
        p, c = (usage or {}).get("prompt_tokens"), (usage or {}).get("completion_tokens")
        metadata = {"route": target.route_name, "alias": target.alias, **({"error": error} if error else {})}
        metrics.GATEWAY.labels(target.route_name, "error" if error else "ok").inc()
        recording.record(self.state.settings, self.state.writer, project=self.project, interaction={
            "id": self.id, "task": self.task, "model": target.model_id, **self.input, "params": self.params or None,
            "response": text, "latency_ms": round((time.perf_counter() - self.started) * 1000, 3),
            "prompt_tokens": p, "completion_tokens": c, "cost_usd": recording.cost_usd(target.route, p, c),
            "status": "error" if error else "ok", "user_id": self.req.user or None, "metadata": metadata,
        })  # fmt: skip


def _chain(gw: Router, target: Target) -> list[Target]:
    """The target, then its fallbacks (each route at most once)."""
    chain = [target]
    while chain[-1].route.fallback and chain[-1].route.fallback not in {t.route_name for t in chain}:
        name = chain[-1].route.fallback
        chain.append(Target(name, gw.routes[name], name, None, target.task, target.alias))
    return chain


async def _complete(request: Request, project: str, chat: bool) -> Response:
    state = request.app.state
    req, raw = _parse(await read_body(request, state.settings.ingest.max_body_bytes),
                      oa.ChatRequest if chat else oa.CompletionRequest)  # fmt: skip
    gw: Router = state.router
    if gw.aliases_stale():
        await run_in_threadpool(gw.refresh_aliases)
    user = req.user or request.headers.get("x-flywheel-user") or request.headers.get("x-flywheel-session")
    try:
        target = gw.resolve(project, req.model, user=user)
    except UnknownModel as exc:
        raise ApiError(404, str(exc), param="model", code="model_not_found") from None
    call = _Call(request, project, req, raw, chat, target)
    reason = ""
    for attempt in _chain(gw, target):
        try:
            if attempt.route.kind == "local":
                return await _local(call, attempt)
            return await _proxy(call, attempt, raw)
        except upstream.UpstreamError as exc:
            reason = str(exc)
    call.record(target, "", None, error=reason)
    raise ApiError(502, f"upstream failed: {reason}", code="upstream_error", headers={ID_HEADER: call.id})


async def _local(call: _Call, target: Target) -> Response:
    engine = call.state.engines[target.route_name]
    req, cap = call.req, call.state.settings.gateway.max_tokens
    messages, prompt = req.messages if call.chat else None, call.input.get("prompt")
    if target.route.redact_input:  # the model learned on redacted data: show it the same
        messages = [{**m, "content": pii.redact(m["content"])[0]} if isinstance(m.get("content"), str) else m
                    for m in messages] if call.chat else None  # fmt: skip
        prompt = None if call.chat else pii.redact(prompt)[0]
    try:
        ids = engine.encode_chat(messages) if call.chat else engine.encode_prompt(prompt)
    except Exception as exc:
        raise ApiError(400, f"messages: cannot apply the chat template: {exc}", param="messages") from None
    if len(ids) >= engine.context_length:
        param = "messages" if call.chat else "prompt"
        raise ApiError(400, f"{param}: the prompt is {len(ids)} tokens; this model's context is "
                       f"{engine.context_length} tokens", param=param, code="context_length_exceeded")  # fmt: skip
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    gen = Generation(
        prompt_ids=ids, max_tokens=min(req.max_completion_tokens or req.max_tokens or cap, cap),
        temperature=1.0 if req.temperature is None else req.temperature, top_p=req.top_p or 1.0, seed=req.seed,
        stop=oa.stops(req), adapter=target.adapter,
        emit=lambda delta, done: loop.call_soon_threadsafe(events.put_nowait, (delta, done)),
    )  # fmt: skip
    engine.submit(gen)
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
        return Response(msgspec.json.encode(body), media_type="application/json", headers={ID_HEADER: call.id},
                        background=BackgroundTask(call.record, target, text, usage))  # fmt: skip

    async def stream() -> AsyncIterator[bytes]:
        pieces, done, first = [], None, True
        try:
            while done is None:
                delta, done = await events.get()
                pieces.append(delta)
                if delta or first:
                    yield oa.sse(oa.chunk_body(call.chat, oid, target.model_id, text=delta, first=first))
                    first = False
            yield oa.sse(oa.chunk_body(call.chat, oid, target.model_id, finish=done["finish_reason"]))
            usage = oa.usage(done["prompt_tokens"], done["completion_tokens"])
            if (req.stream_options or {}).get("include_usage"):
                yield oa.sse(oa.chunk_body(call.chat, oid, target.model_id, usage_=usage))
            yield oa.sse("[DONE]")
            call.record(target, "".join(pieces), usage, error=done.get("error"))
        finally:
            if not gen.cancelled.is_set() and (done is None or first):
                call.record(target, "".join(pieces), None, error="client disconnected")
            gen.cancelled.set()  # the client went away: the engine drops the row at its next step

    return StreamingResponse(stream(), media_type="text/event-stream", headers={ID_HEADER: call.id})


async def _proxy(call: _Call, target: Target, raw: dict) -> Response:
    client: httpx.AsyncClient = call.state.http
    path = "/chat/completions" if call.chat else "/completions"
    body = {**raw, "model": target.adapter or target.route.model or target.route_name}
    response = await upstream.send(client, target.route, path, body, stream=call.req.stream)
    if response.status_code >= 400:  # the upstream refused the request itself: pass its answer on
        content = await response.aread()
        await response.aclose()
        call.record(target, "", None, error=f"upstream {response.status_code}: {content[:300].decode(errors='replace')}")
        return Response(content, status_code=response.status_code, media_type="application/json",
                        headers={ID_HEADER: call.id})  # fmt: skip
    if not call.req.stream:
        data = msgspec.json.decode(response.content)
        choice = (data.get("choices") or [{}])[0]
        text = (choice.get("message") or {}).get("content") or "" if call.chat else choice.get("text") or ""
        return Response(response.content, media_type="application/json", headers={ID_HEADER: call.id},
                        background=BackgroundTask(call.record, target, text, data.get("usage")))  # fmt: skip

    async def relay() -> AsyncIterator[bytes]:
        pieces, usage = [], None
        try:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    chunk = msgspec.json.decode(line[6:])
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        pieces.append((choice.get("delta") or {}).get("content") or "" if call.chat
                                      else choice.get("text") or "")  # fmt: skip
                yield (line + "\n").encode()
            call.record(target, "".join(pieces), usage)
        finally:
            await response.aclose()

    return StreamingResponse(relay(), media_type="text/event-stream", headers={ID_HEADER: call.id})


@router.post("/v1/chat/completions", summary="OpenAI chat completions (stream or not)")
async def chat_completions(request: Request, project: ProjectDep) -> Response:
    return await _complete(request, project, chat=True)


@router.post("/v1/completions", summary="OpenAI text completions (stream or not)")
async def completions(request: Request, project: ProjectDep) -> Response:
    return await _complete(request, project, chat=False)


@router.get("/v1/models", summary="Models and aliases this key can call")
async def models(request: Request, project: ProjectDep) -> dict:
    gw: Router = request.app.state.router
    if gw.aliases_stale():
        await run_in_threadpool(gw.refresh_aliases)
    ids = gw.model_ids() + gw.aliases(project)
    return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "flywheel"} for m in ids]}
