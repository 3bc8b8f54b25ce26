"""Which backend answers a request: the gateway's model names, routes, aliases and canaries.

A request's `model` is a route name (from `[routes.NAME]`), an adapter name served by a route
that holds adapters (serving.backends), or an alias: `TASK` (the task's production model) or
`TASK:canary`. Aliases live in the `deployments` table; they are re-read every
`gateway.alias_refresh_s`, so a promotion made by another process takes effect within a second
without a restart. A canary with share s serves the fraction s of users, chosen by a stable hash
of the user (or session) id.

A name that is known but cannot be served (a deployed model that failed to load at start, see
serving.restore) is a `ModelUnavailable`, a 503 with the reason, rather than an unknown model's 404.

Names are per project. What flywheel.toml declares (routes and their adapters: shared bases,
providers) is visible to every project, or only to a route's `projects` when it lists them. A
model loaded at run time (serving.adapters) or restored from the registry (serving.restore)
belongs to one project, the loading key's or its task's: only that project lists it in
/v1/models, calls it, unloads or replaces it, and two projects may each load a `v1` without
touching the other's. Its route knows it by `backend_name` (`project/name`), so vLLM and our
engine hold both. Every message names only what the caller may use.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from flywheel import store
from flywheel.registry.deployments import deployments
from flywheel.settings import RouteSettings, Settings


@dataclass(frozen=True)
class Target:
    """Where one request goes, and what it is recorded as."""

    route_name: str
    route: RouteSettings
    model_id: str  # what the caller asked for, resolved: a route or adapter name
    adapter: str | None  # the LoRA adapter on a route that holds adapters
    task: str | None  # from an alias
    alias: str | None


class UnknownModel(LookupError):
    pass


class ModelUnavailable(LookupError):
    """The name is known (an alias, a route, a deployed model) but cannot be served now: a 503
    whose message says why (e.g. the model's folder was gone when the service started)."""


def canary_bucket(key: str) -> float:
    """A stable number in [0, 1) for a user or session id."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def backend_name(project: str, name: str) -> str:
    """What a route's backend calls a project's model (a project name holds no '/', so it is unique)."""
    return f"{project}/{name}"


class Router:
    def __init__(self, settings: Settings):
        self.routes = settings.routes
        self.db_path: Path = settings.db_path
        self.refresh_s = settings.gateway.alias_refresh_s
        # adapters of flywheel.toml: name -> route (each project that may use the route sees them)
        self.shared: dict[str, str] = {a: r for r, route in self.routes.items() for a in route.adapters}
        # models loaded at run time or restored: (project, name) -> route
        self.loaded: dict[tuple[str, str], str] = {}
        # (project, model) or (None, route or shared adapter) -> why it cannot be served (set at start
        # and by failed loads, cleared by a load)
        self.unavailable: dict[tuple[str | None, str], str] = {}
        self._aliases: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._attempted = 0.0  # when the aliases were last read, or tried while the store was busy
        self._lock = threading.Lock()

    def may_use(self, project: str, route: str) -> bool:
        allowed = self.routes[route].projects
        return allowed is None or project in allowed

    def shared_names(self, project: str) -> set[str]:
        """The routes and adapters of flywheel.toml that `project` may use."""
        routes = {r for r in self.routes if self.may_use(project, r)}
        return routes | {a for a, r in self.shared.items() if r in routes}

    def model_ids(self, project: str) -> list[str]:
        """Routes and adapters `project` may call."""
        return sorted(self.shared_names(project) | {n for p, n in self.loaded if p == project})

    def add(self, project: str, name: str, route: str) -> None:
        self.loaded[(project, name)] = route
        self.unavailable.pop((project, name), None)

    def remove(self, project: str, name: str) -> None:
        self.loaded.pop((project, name), None)

    def why_unavailable(self, project: str, name: str) -> str | None:
        """Why `project`'s model, or a route or adapter of flywheel.toml it may use, cannot be served."""
        if (project, name) in self.unavailable:
            return self.unavailable[(project, name)]
        return self.unavailable.get((None, name)) if name in self.shared_names(project) else None

    def failures(self) -> list[dict]:
        """What cannot be served and why, with the aliases that point at it (for /healthz)."""
        result = []
        for (owner, name), why in sorted(self.unavailable.items(), key=lambda kv: (kv[0][1], kv[0][0] or "")):
            aliases = [f"{p}/{t}" + ("" if a == "production" else f":{a}")
                       for (p, t, a), (model, _) in sorted(self._aliases.items()) if model == name and owner in (None, p)]
            result.append({"model": name, "reason": why, "aliases": aliases})
        return result

    def refresh_aliases(self, force: bool = False) -> None:
        """Re-read the aliases once every `refresh_s`. While another process holds the store,
        requests are routed by the aliases last read: a read waits at most 1 s (not the
        store's 30 s) and is tried again `refresh_s` later. `force` (at start) waits and raises."""
        with self._lock:
            if not force and not self.aliases_stale():
                return
            try:
                with store.connect(self.db_path, **({} if force else {"timeout_s": 1.0})) as con:
                    rows = deployments(con)
                self._aliases = {(d.project, d.task, d.alias): (d.model, d.share) for d in rows}
            except store.StoreBusy:
                if force:
                    raise
            finally:  # (after the read: a request that finds it in progress waits for it)
                self._attempted = time.monotonic()

    def aliases_stale(self) -> bool:
        return time.monotonic() - self._attempted >= self.refresh_s

    def aliases(self, project: str) -> list[str]:
        return sorted(t if a == "production" else f"{t}:{a}" for (p, t, a) in self._aliases if p == project)

    def resolve(self, project: str, model: str, *, user: str | None = None) -> Target:
        task = alias = None
        if model not in self.model_ids(project) and self.why_unavailable(project, model) is None:
            task, _, suffix = model.partition(":")
            alias = suffix or "production"
            deployed = self._aliases.get((project, task, alias))
            if deployed is None:
                known = ", ".join(self.model_ids(project) + self.aliases(project)) or "none"
                raise UnknownModel(f"model: {model!r} is not a route, an adapter or a deployed alias (known: {known})")
            model = deployed[0]
            if alias == "production" and user is not None:
                canary = self._aliases.get((project, task, "canary"))
                # (a canary that cannot be served leaves its users on production; `TASK:canary` says why)
                if (canary is not None and self.why_unavailable(project, canary[0]) is None
                        and canary_bucket(user) < canary[1]):
                    model, alias = canary[0], "canary"
        if (project, model) in self.loaded:
            route_name = self.loaded[(project, model)]
            return Target(route_name, self.routes[route_name], model, backend_name(project, model), task, alias)
        if model in self.routes and self.may_use(project, model):  # (a route that did not start says so itself)
            return Target(model, self.routes[model], model, None, task, alias)
        named = f"model: {model!r}" if alias is None else f"model: alias {task}:{alias} points at {model!r}, which"
        why = self.why_unavailable(project, model)
        if why is not None:
            raise ModelUnavailable(f"{named} cannot be served: {why}")
        if model in self.shared_names(project):
            route_name = self.shared[model]
            return Target(route_name, self.routes[route_name], model, model, task, alias)
        raise ModelUnavailable(f"{named} is not loaded here (load it: `flywheel promote`, or POST /v1/load_lora_adapter)")
