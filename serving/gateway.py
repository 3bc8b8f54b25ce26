"""The OpenAI-compatible gateway: /v1/chat/completions, /v1/completions, /v1/models.

An app points its OpenAI client's `base_url` here. Each call is resolved to a route
(serving.routing), answered by that route's backend (serving.backends: our local engine, an
upstream, vLLM), with the route's fallback when it fails, and recorded as an interaction whose id
comes back in the `x-flywheel-interaction-id` header, so the app can send feedback on it.
Tool calling passes through: malformed `tools`, `tool_choice` or `response_format` is a 400 naming
the field (`flywheel.ingest.tool_fields`, the check ingestion makes), the rest goes to the route.
"""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from flywheel.ingest.records import field_error
from flywheel.ingest.tool_fields import ToolFieldError, check_request
from serving import openai_types as oa
from serving.auth import ProjectDep
from serving.backends import Backend, BackendError, Unavailable
from serving.errors import ApiError
from serving.ingest import read_body
from serving.recording import ID_HEADER, Call
from serving.routing import ModelUnavailable, Router, Target, UnknownModel

router = APIRouter()


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
        field, message = field_error(exc)
        param = field.split("[")[0].split(".")[0] if field else None  # OpenAI names the top-level parameter
        raise ApiError(400, f"{param}: {message}", param=param, code="invalid_parameter") from None


def _check_tools(req: oa.ChatRequest) -> None:
    try:
        check_request(req.tools, req.tool_choice, req.response_format)
    except ToolFieldError as exc:
        param = exc.field.split("[")[0].split(".")[0]
        raise ApiError(400, str(exc), param=param, code="invalid_parameter") from None


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
    if chat:
        _check_tools(req)
    gw: Router = state.router
    if gw.aliases_stale():
        await run_in_threadpool(gw.refresh_aliases)
    user = req.user or request.headers.get("x-flywheel-user") or request.headers.get("x-flywheel-session")
    try:
        target = gw.resolve(project, req.model, user=user)
    except UnknownModel as exc:
        raise ApiError(404, str(exc), param="model", code="model_not_found") from None
    except ModelUnavailable as exc:
        raise ApiError(503, str(exc), param="model", code="model_unavailable") from None
    call = Call(request, project, req, raw, chat, target)
    backends: dict[str, Backend] = state.backends
    reason, unavailable = "", False
    for attempt in _chain(gw, target):
        try:
            return await backends[attempt.route_name].answer(call, attempt, raw)
        except BackendError as exc:
            reason, unavailable = str(exc), isinstance(exc, Unavailable)
    call.record(target, "", None, error=reason)
    if unavailable:  # the route's model is not loaded: nothing to retry until an operator acts
        raise ApiError(503, f"model: {reason}", param="model", code="model_unavailable", headers={ID_HEADER: call.id})
    raise ApiError(502, f"upstream failed: {reason}", code="upstream_error", headers={ID_HEADER: call.id})


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
    ids = gw.model_ids(project) + gw.aliases(project)
    return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "flywheel"} for m in ids]}
