"""At start, before /healthz answers: load every model a `production` or `canary` alias points at.

A promotion loads its model into the running service (`POST /v1/load_lora_adapter`) and moves
the alias in the database; a restart forgets what was loaded, so the service reads the aliases of
every task of every project and loads their models again, from the `models` table:

- an adapter (`adapter_path`), else a whole model (`merged_path`: served beside the base on a
  local route), on the task's `[tasks.T] route`, else on the only route that holds adapters;
- as the candidate's project's, as if its admin key had loaded it (serving.adapters), under that
  project's name for it (serving.routing). The folder comes from the models table, which training
  wrote, so it is not confined as a `lora_path` sent over HTTP is.

A model that cannot be loaded does not stop the others nor the service: it is logged, counted
(`flywheel_model_load_failures_total{when="start"}`), listed in /healthz, and its aliases answer
503 with the reason until a load of it succeeds (e.g. `flywheel promote` or `flywheel rollback`).
Routes whose model itself failed to load are reported the same way.
"""

from __future__ import annotations

import logging

from flywheel import store
from flywheel.registry.deployments import ALIASES
from flywheel.settings import Settings
from flywheel.task import resolve_task
from serving.adapters import failed
from serving.backends import Backend
from serving.routing import Router, backend_name

log = logging.getLogger("flywheel.serving")


def deployed_models(settings: Settings) -> list[dict]:
    """One row per model an alias points at: model, project, task, adapter_path, merged_path
    (None when the models table has no such candidate)."""
    with store.connect(settings.db_path) as con:
        rows = con.execute(
            "SELECT d.model, d.project, d.task, m.id IS NOT NULL, m.project, m.adapter_path, m.merged_path"
            " FROM deployments d LEFT JOIN models m ON m.id = d.model"
            f" WHERE d.alias IN ({', '.join('?' * len(ALIASES))}) ORDER BY d.project, d.task, d.alias",
            list(ALIASES)).fetchall()  # fmt: skip
    seen, result = set(), []
    for model, project, task, known, owner, adapter_path, merged_path in rows:
        if (owner or project, model) not in seen:
            seen.add((owner or project, model))
            result.append({"model": model, "project": owner or project, "task": task, "candidate": known,
                           "path": adapter_path or merged_path})  # fmt: skip
    return result


def route_for(settings: Settings, task: str, backends: dict[str, Backend]) -> str:
    """The route that serves `task`'s candidates; ValueError when none can be chosen."""
    configured = resolve_task(settings, task).route
    if configured is not None:
        if not backends[configured].holds_adapters:
            raise ValueError(f"tasks.{task}.route: route {configured!r} holds no adapters")
        return configured
    capable = [name for name, backend in backends.items() if backend.holds_adapters]
    if len(capable) != 1:
        raise ValueError(f"no route to load it on: set [tasks.{task}] route to one of: {', '.join(capable) or 'none'}"
                         if capable else "no local or vllm route is configured to hold it")  # fmt: skip
    return capable[0]


async def restore(settings: Settings, router: Router, backends: dict[str, Backend], failed_routes: dict[str, str]) -> None:
    """Load the deployed models; record what could not be (`router.unavailable`)."""
    for name, reason in failed_routes.items():
        failed(router, None, name, name, ValueError(f"route {name!r} did not start: {reason}"), when="start")
    for name, backend in backends.items():
        for adapter, reason in backend.failed_adapters.items():  # it answers 503 with the reason, not the engine's 500
            failed(router, None, adapter, name, ValueError(reason), when="start")
    for row in deployed_models(settings):
        model, project = row["model"], row["project"]
        if model in router.routes or model in router.shared or (project, model) in router.unavailable:
            continue  # a route, an adapter of flywheel.toml, or one that failed already
        route = "-"
        try:
            if not row["candidate"]:
                raise ValueError(f"{model!r} is not a registered candidate, a route nor an adapter of flywheel.toml")
            if not row["path"]:
                raise ValueError(f"candidate {model!r} has neither an adapter nor a model folder")
            route = route_for(settings, row["task"], backends)
            if route in failed_routes:
                raise ValueError(f"its route {route!r} did not start")
            if not router.may_use(project, route):
                raise ValueError(f"its route {route!r} is not one of project {project!r}'s ([routes.{route}] projects)")
            await backends[route].load_adapter(backend_name(project, model), row["path"])
        except Exception as exc:  # noqa: BLE001 - each model on its own; the reason is reported
            failed(router, project, model, route, exc, when="start")
            continue
        router.add(project, model, route)
        log.info("loaded %s (%s, deployed for %s/%s) on route %r", model, row["path"], row["project"], row["task"], route)
