"""Runtime LoRA adapter management with vLLM's request bodies, for every route kind that holds adapters.

`POST /v1/load_lora_adapter {"lora_name", "lora_path"}` and `POST /v1/unload_lora_adapter
{"lora_name"}` (plus an optional `route` when several routes can hold adapters). The route's
backend does the loading (serving.backends: on a local route the engine loads it between two
batches; on a vLLM route the same call is forwarded). Promotion code is therefore the same for
every kind: load the adapter, then move the alias.

Only admin keys manage adapters (serving.auth). A model belongs to the project of the key that
loaded it, and names are per project (serving.routing): only that project calls it, sees it in
/v1/models, unloads or replaces it; another project may load its own model of the same name.

`lora_path` is confined. After symlinks it must lie
- in `<home>/models/<task>/<id>/`, the folder training gave candidate `<id>`, when the models
  table says the candidate is the caller's project's (by id, so two projects that name a task
  alike still cannot load each other's models);
- in `<home>/models/base/`, the imported base models, which every project may serve;
- in a folder of `[serving] adapter_dirs`, which the operator lists for every project.
Anything else is a 400 that says only "lora_path: not an allowed model folder", decided before
the folder is looked at, so the answer is the same whether a path exists or not. A folder that
is allowed but cannot be served (missing, corrupt, another base's adapter: serving.model_check)
is a 400 that names it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from flywheel import store
from flywheel.ingest.records import field_error
from flywheel.models.catalog import base_dir
from flywheel.settings import Settings
from serving import metrics
from serving.auth import AdminDep
from serving.backends import KINDS, Backend, BackendError, Unavailable
from serving.errors import ApiError
from serving.ingest import read_body
from serving.routing import Router, backend_name

router = APIRouter()
log = logging.getLogger("flywheel.serving")
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/@-]{0,127}$")]


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


def allowed_folder(settings: Settings, project: str, lora_path: str) -> Path | None:
    """`lora_path` resolved (symlinks followed), when `project` may load a model from it; else None.
    Nothing in the answer depends on whether the path exists (only the models table is read)."""
    try:
        path = Path(lora_path).resolve()
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop
        return None
    if any(path.is_relative_to(Path(d).resolve()) for d in settings.serving.adapter_dirs):
        return path
    models = (Path(settings.home) / "models").resolve()
    parts = path.relative_to(models).parts if path.is_relative_to(models) else ()
    if len(parts) < 2:
        return None
    with store.connect(settings.db_path) as con:
        owner = con.execute("SELECT project FROM models WHERE task = ? AND id = ?", list(parts[:2])).fetchone()
    if owner is not None:  # a candidate's folder: its project's alone
        return path if owner[0] == project else None
    return path if path.is_relative_to(base_dir(settings.home).resolve()) else None


def _route(request: Request, name: str | None, project: str) -> str:
    gw: Router = request.app.state.router
    capable = [r for r, backend in request.app.state.backends.items() if backend.holds_adapters and gw.may_use(project, r)]
    if name is not None:
        if name not in capable:
            kinds = " or ".join(k for k, kind in KINDS.items() if kind.holds_adapters)
            raise ApiError(400, f"route: {name!r} is not a {kinds} route this project may use "
                           f"(those are: {', '.join(capable) or 'none'})",
                           param="route")  # fmt: skip
        return name
    if len(capable) != 1:
        raise ApiError(400, f"route: name the route that should hold the adapter ({', '.join(capable) or 'none configured'})",
                       param="route")  # fmt: skip
    return capable[0]


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse, summary="Load a LoRA adapter (vLLM's API)")
async def load_lora_adapter(request: Request, project: AdminDep) -> str:
    body = _body(await read_body(request, 64 * 1024), LoadBody)
    gw: Router = request.app.state.router
    route_name = _route(request, body.route, project)
    if body.lora_name in gw.shared_names(project):
        raise ApiError(400, f"lora_name: {body.lora_name!r} is already a model name here", param="lora_name")
    if (project, body.lora_name) in gw.loaded:  # (a promoter takes this answer as success)
        raise ApiError(400, f"lora_name: adapter {body.lora_name!r} is already loaded", param="lora_name",
                       code="already_loaded")  # fmt: skip
    folder = await run_in_threadpool(allowed_folder, request.app.state.settings, project, body.lora_path)
    if folder is None:  # before anything looks at the folder
        raise ApiError(400, "lora_path: not an allowed model folder", param="lora_path", code="path_not_allowed")
    backend: Backend = request.app.state.backends[route_name]
    try:
        await backend.load_adapter(backend_name(project, body.lora_name), str(folder))
    except (OSError, ValueError, BackendError) as exc:
        failed(gw, project, body.lora_name, route_name, exc, when="runtime")
        if isinstance(exc, Unavailable):
            raise ApiError(503, str(exc), param="route", code="route_unavailable") from None
        if isinstance(exc, BackendError):
            raise ApiError(502, str(exc), code="upstream_error") from None
        code = getattr(exc, "code", "invalid_model")
        raise ApiError(400, f"lora_path: cannot load {body.lora_path!r} on route {route_name!r}: {exc}",
                       param="lora_path", code=code) from None  # fmt: skip
    gw.add(project, body.lora_name, route_name)
    metrics.MODELS_UNAVAILABLE.set(len(gw.unavailable))
    return f"Success: LoRA adapter '{body.lora_name}' added successfully."


def failed(gw: Router, project: str | None, name: str, route: str, exc: Exception, *, when: str) -> str:
    """Log and count a model that did not load (`project`: whose; None: a route or an adapter of
    flywheel.toml); a deployed one's aliases answer 503 with the reason."""
    reason = str(exc) if isinstance(exc, (OSError, ValueError, BackendError)) else f"{type(exc).__name__}: {exc}"
    log.warning("model %r of %s not loaded on route %r (%s): %s", name, project or "flywheel.toml", route, when, reason)
    metrics.MODEL_LOAD_FAILURES.labels(route=route, when=when).inc()
    if when == "start" or (project, name) in gw.unavailable:  # (a failed try of a new name leaves nothing behind)
        gw.unavailable[(project, name)] = reason
    metrics.MODELS_UNAVAILABLE.set(len(gw.unavailable))
    return reason


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse, summary="Unload a LoRA adapter (vLLM's API)")
async def unload_lora_adapter(request: Request, project: AdminDep) -> str:
    body = _body(await read_body(request, 64 * 1024), UnloadBody)
    gw: Router = request.app.state.router
    route_name = gw.loaded.get((project, body.lora_name))  # (flywheel.toml's adapters stay: the operator's)
    if route_name is None or (body.route is not None and body.route != route_name):
        raise ApiError(404, f"lora_name: no adapter {body.lora_name!r} is loaded", param="lora_name", code="not_found")
    gw.remove(project, body.lora_name)  # new requests stop resolving to it before it goes
    backend: Backend = request.app.state.backends[route_name]
    try:
        await backend.unload_adapter(backend_name(project, body.lora_name))
    except BackendError as exc:
        raise ApiError(502, str(exc), code="upstream_error") from None
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."
