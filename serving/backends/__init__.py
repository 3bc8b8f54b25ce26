"""Route kinds: the `kind` of a `[routes.NAME]` table → the class that serves such a route.

    [routes.tiny]                 [routes.big]                  [routes.gpu]
    kind = "local"                kind = "upstream"             kind = "vllm"

A new kind is one module here with a `Backend` subclass (serving.backends.base), one line in
`KINDS`, and its tests; the gateway, the adapter endpoints and the app's start and stop use the
table and never name a kind. (`RouteSettings.kind` in flywheel.settings lists the names too.)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from flywheel.settings import RouteSettings
from serving.backends.base import Backend, BackendError, Unavailable
from serving.backends.local import LocalBackend
from serving.backends.upstream import UpstreamBackend
from serving.backends.vllm import VllmBackend

KINDS: dict[str, type[Backend]] = {"local": LocalBackend, "upstream": UpstreamBackend, "vllm": VllmBackend}


def build(routes: Mapping[str, RouteSettings], home: Path | None = None) -> dict[str, Backend]:
    """One backend per route (not started yet); `home`, the data folder, is where adapters' base
    models are looked up (serving.model_check)."""
    unknown = {name: r.kind for name, r in routes.items() if r.kind not in KINDS}
    if unknown:
        name, kind = next(iter(unknown.items()))
        raise ValueError(f"routes.{name}.kind: {kind!r} is not a route kind; one of {', '.join(KINDS)}")
    return {name: KINDS[route.kind](name, route, home) for name, route in routes.items()}


__all__ = ["KINDS", "Backend", "BackendError", "Unavailable", "build"]
