"""Which backend answers a request: the gateway's model names, routes, aliases and canaries.

A request's `model` is a route name (from `[routes.NAME]`), an adapter name served by a route
that holds adapters (serving.backends), or an alias: `TASK` (the task's production model) or
`TASK:canary`. Aliases live in the `deployments` table; they are re-read every
`gateway.alias_refresh_s`, so a promotion made by another process takes effect within a second
without a restart. A canary with share s serves the fraction s of users, chosen by a stable hash
of the user (or session) id.

A name that is known but cannot be served (a deployed model that failed to load at start, see
serving.restore) is a `ModelUnavailable`, a 503 with the reason, rather than an unknown model's 404.
An adapter loaded at runtime belongs to one project (`owners`): other projects do not see it.
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


class Router:
    def __init__(self, settings: Settings):
        self.routes = settings.routes
        self.db_path: Path = settings.db_path
        self.refresh_s = settings.gateway.alias_refresh_s
        # adapter name -> route name; local routes' adapters are added by the engine owner
        self.adapters: dict[str, str] = {a: r for r, route in self.routes.items() for a in route.adapters}
        # adapter name -> the project it belongs to (loaded by its key, or a candidate of that project);
        # adapters of flywheel.toml belong to none, i.e. serve every project
        self.owners: dict[str, str | None] = {}
        # model or route name -> why it cannot be served (set at start and by failed loads, cleared by a load)
        self.unavailable: dict[str, str] = {}
        self._aliases: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._attempted = 0.0  # when the aliases were last read, or tried while the store was busy
        self._lock = threading.Lock()

    def model_ids(self, project: str | None = None) -> list[str]:
        """Routes and adapters (`project`: those it may call; None: every name taken here)."""
        return sorted(set(self.routes) | {a for a in self.adapters if project is None or self.serves(a, project)})

    def serves(self, adapter: str, project: str) -> bool:
        return self.owners.get(adapter) in (None, project)

    def add_adapter(self, name: str, route: str, project: str | None) -> None:
        self.adapters[name], self.owners[name] = route, project
        self.unavailable.pop(name, None)

    def remove_adapter(self, name: str) -> None:
        self.adapters.pop(name, None)
        self.owners.pop(name, None)

    def failures(self) -> list[dict]:
        """What cannot be served and why, with the aliases that point at it (for /healthz)."""
        pointing: dict[str, list[str]] = {}
        for (project, task, alias), (model, _) in sorted(self._aliases.items()):
            pointing.setdefault(model, []).append(f"{project}/{task}" + ("" if alias == "production" else f":{alias}"))
        return [{"model": m, "reason": why, "aliases": pointing.get(m, [])} for m, why in sorted(self.unavailable.items())]

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
        mine = model in self.adapters and self.serves(model, project)
        if model not in self.routes and not mine and model not in self.unavailable:
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
                if canary is not None and canary[0] not in self.unavailable and canary_bucket(user) < canary[1]:
                    model, alias = canary[0], "canary"
        if model in self.routes:
            return Target(model, self.routes[model], model, None, task, alias)
        if model in self.adapters and self.serves(model, project):
            route_name = self.adapters[model]
            return Target(route_name, self.routes[route_name], model, model, task, alias)
        named = f"model: {model!r}" if alias is None else f"model: alias {task}:{alias} points at {model!r}, which"
        if model in self.unavailable:
            raise ModelUnavailable(f"{named} cannot be served: {self.unavailable[model]}")
        if model in self.adapters:  # another project's adapter
            raise ModelUnavailable(f"{named} belongs to another project")
        raise ModelUnavailable(f"{named} is not loaded here (load it: `flywheel promote`, or POST /v1/load_lora_adapter)")
