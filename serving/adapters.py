"""Runtime LoRA adapter management with vLLM's request bodies, for every route kind that holds adapters.

`POST /v1/load_lora_adapter {"lora_name", "lora_path"}` and `POST /v1/unload_lora_adapter
{"lora_name"}` (plus an optional `route` when several routes can hold adapters). The route's
backend does the loading (serving.backends: on a local route the engine loads it between two
batches; on a vLLM route the same call is forwarded). Promotion code is therefore the same for
every kind: load the adapter, then move the alias.

An adapter belongs to the project of the key that loaded it: only that project calls it by name,
sees it in /v1/models and unloads it (adapters of flywheel.toml serve every project). A folder
that cannot be served on the route (missing, corrupt, another base's adapter: serving.model_check)
is a 400 that names it.
"""

from __future__ import annotations

import logging
from typing import Annotated

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from flywheel.ingest.records import field_error
from serving import metrics
from serving.auth import ProjectDep
from serving.backends import KINDS, Backend, BackendError, Unavailable
from serving.errors import ApiError
from serving.ingest import read_body
from serving.routing import Router

router = APIRouter()
log = logging.getLogger("flywheel.serving")
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")]


class LoadBody(msgspec.Struct):
    lora_name: Name
    lora_path: Annotated[str, msgspec.Meta(min_length=1)]
    route: str | None = None


class UnloadBody(msgspec.Struct):
    lora_name: Name
    route: str | None = None


def _body(raw: bytes, kind: type):
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        param, message = field_error(exc)
        raise ApiError(400, f"{param}: {message}", param=param, code="invalid_parameter") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ApiError(400, f"malformed JSON: {exc}", code="malformed_json") from None


def _route(request: Request, name: str | None) -> str:
    capable = [r for r, backend in request.app.state.backends.items() if backend.holds_adapters]
    if name is not None:
        if name not in capable:
            kinds = " or ".join(k for k, kind in KINDS.items() if kind.holds_adapters)
            raise ApiError(400, f"route: {name!r} is not a {kinds} route (those are: {', '.join(capable) or 'none'})",
                           param="route")  # fmt: skip
        return name
    if len(capable) != 1:
        raise ApiError(400, f"route: name the route that should hold the adapter ({', '.join(capable) or 'none configured'})",
                       param="route")  # fmt: skip
    return capable[0]


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse, summary="Load a LoRA adapter (vLLM's API)")
async def load_lora_adapter(request: Request, project: ProjectDep) -> str:
    body = _body(await read_body(request, 64 * 1024), LoadBody)
    gw: Router = request.app.state.router
    route_name = _route(request, body.route)
    if body.lora_name in gw.adapters and not gw.serves(body.lora_name, project):
        # (not "already loaded", which a promoter takes as success: the name is someone else's)
        raise ApiError(409, f"lora_name: {body.lora_name!r} is taken by another project's adapter",
                       param="lora_name", code="name_taken")  # fmt: skip
    if body.lora_name in gw.model_ids():
        raise ApiError(400, f"lora_name: {body.lora_name!r} is already a model name here", param="lora_name")
    backend: Backend = request.app.state.backends[route_name]
    try:
        await backend.load_adapter(body.lora_name, body.lora_path)
    except (OSError, ValueError, BackendError) as exc:
        failed(gw, body.lora_name, route_name, exc, when="runtime")
        if isinstance(exc, Unavailable):
            raise ApiError(503, str(exc), param="route", code="route_unavailable") from None
        if isinstance(exc, BackendError):
            raise ApiError(502, str(exc), code="upstream_error") from None
        code = getattr(exc, "code", "invalid_model")
        raise ApiError(400, f"lora_path: cannot load {body.lora_path!r} on route {route_name!r}: {exc}",
                       param="lora_path", code=code) from None  # fmt: skip
    gw.add_adapter(body.lora_name, route_name, project)
    metrics.MODELS_UNAVAILABLE.set(len(gw.unavailable))
    return f"Success: LoRA adapter '{body.lora_name}' added successfully."


def failed(gw: Router, name: str, route: str, exc: Exception, *, when: str) -> str:
    """Log and count a model that did not load; a deployed one's aliases answer 503 with the reason."""
    reason = str(exc) if isinstance(exc, (OSError, ValueError, BackendError)) else f"{type(exc).__name__}: {exc}"
    log.warning("model %r not loaded on route %r (%s): %s", name, route, when, reason)
    metrics.MODEL_LOAD_FAILURES.labels(route=route, when=when).inc()
    if when == "start" or name in gw.unavailable:  # (a failed try of a new name leaves nothing behind)
        gw.unavailable[name] = reason
    metrics.MODELS_UNAVAILABLE.set(len(gw.unavailable))
    return reason


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse, summary="Unload a LoRA adapter (vLLM's API)")
async def unload_lora_adapter(request: Request, project: ProjectDep) -> str:
    body = _body(await read_body(request, 64 * 1024), UnloadBody)
    gw: Router = request.app.state.router
    route_name = gw.adapters.get(body.lora_name)
    if route_name is None or (body.route is not None and body.route != route_name) or not gw.serves(body.lora_name, project):
        raise ApiError(404, f"lora_name: no adapter {body.lora_name!r} is loaded", param="lora_name", code="not_found")
    gw.remove_adapter(body.lora_name)  # new requests stop resolving to it before it goes
    backend: Backend = request.app.state.backends[route_name]
    try:
        await backend.unload_adapter(body.lora_name)
    except BackendError as exc:
        raise ApiError(502, str(exc), code="upstream_error") from None
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."
