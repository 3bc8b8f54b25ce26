"""What every route kind implements: answer a call, hold LoRA adapters (or not), start and stop.

One `Backend` instance serves one `[routes.NAME]`. The gateway, the adapter endpoints and the app's
lifespan only talk to this interface, so a new kind of route never touches them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from pathlib import Path

    import httpx
    from fastapi.responses import Response

    from flywheel.settings import RouteSettings
    from serving.recording import Call
    from serving.routing import Target


class BackendError(RuntimeError):
    """The route failed after its own retries; the gateway tries the route's fallback.
    The message is the last reason."""


class Unavailable(BackendError):
    """The route cannot answer at all (its model did not load); the gateway says 503 with this reason."""


class Backend:
    """One route. Subclasses answer calls; those that set `holds_adapters` also load and unload
    LoRA adapters at runtime (`POST /v1/load_lora_adapter`), and get adapter names routed to them."""

    holds_adapters: ClassVar[bool] = False

    def __init__(self, name: str, route: RouteSettings, home: Path | None = None):
        self.name, self.route, self.home = name, route, home  # home: the data folder (to find base models)
        self.failed_adapters: dict[str, str] = {}  # configured adapters that did not load -> why

    async def start(self, http: httpx.AsyncClient) -> None:
        """Before the service accepts requests (load a model, keep the shared HTTP client…)."""

    async def close(self) -> None:
        """After the service stopped accepting requests."""

    async def answer(self, call: Call, target: Target, raw: dict) -> Response:
        """The HTTP answer to `call` (stream or not), recorded through `call.record`.
        `raw` is the request body as sent. Raise `BackendError` to hand over to the fallback."""
        raise NotImplementedError

    async def load_adapter(self, name: str, path: str) -> None:
        """Raise OSError/ValueError for a bad `path` (serving.model_check.ModelLoadError: the folder
        cannot be served here, e.g. an adapter of another base), `BackendError` when the backend is
        unreachable."""
        raise NotImplementedError(f"a {type(self).__name__} route holds no adapters")

    async def unload_adapter(self, name: str) -> None:
        raise NotImplementedError(f"a {type(self).__name__} route holds no adapters")
