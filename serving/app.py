"""The HTTP service behind `flywheel serve`: builds the FastAPI app and owns its writer."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx
import orjson
from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect

from flywheel import store
from flywheel.settings import ServingSettings, Settings
from serving import adapters, backends, errors, gateway, ingest, openapi
from serving.admission import Admission, AdmissionMiddleware
from serving.auth import AdminDep, KeyCache
from serving.client_deadline import client_deadline
from serving.restore import restore
from serving.routing import Router
from serving.writer import Writer


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with store.connect(settings.db_path):  # create the database and apply migrations up front
            pass
        app.state.keys.refresh()
        app.state.router.refresh_aliases(force=True)
        app.state.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        failed_routes: dict[str, str] = {}
        for name, backend in app.state.backends.items():  # e.g. load the model of every local route
            try:
                await backend.start(app.state.http)
            except (OSError, ValueError) as exc:  # the other routes serve on; this one answers 503
                failed_routes[name] = str(exc)
        # the models that aliases point at, before /healthz answers (a restart forgot them)
        await restore(settings, app.state.router, app.state.backends, failed_routes)
        app.state.writer.start()
        try:
            yield
        finally:
            app.state.writer.stop()  # graceful shutdown: everything accepted gets written
            for backend in app.state.backends.values():
                await backend.close()
            await app.state.http.aclose()

    app = FastAPI(title="Flywheel", version="0.1.0", lifespan=lifespan,
                  description="Ingestion, feedback and OpenAI-compatible gateway of Flywheel.")  # fmt: skip
    app.state.settings = settings
    app.state.keys = KeyCache(settings.db_path, settings.key_refresh_s)
    app.state.writer = Writer(settings.db_path, max_queue_items=settings.ingest.max_queue_items,
                              max_batch_items=settings.ingest.max_batch_items)  # fmt: skip
    app.state.admission = Admission(settings, app.state.writer, app.state.keys)
    app.add_middleware(AdmissionMiddleware, admission=app.state.admission)  # 503/429 before a body is read
    app.state.router = Router(settings)
    app.state.backends = backends.build(settings.routes, settings.home)  # route name -> its backend, by the route's kind
    errors.install(app)
    openapi.describe(app)  # the request bodies and the bearer scheme, for generated clients and fuzzers

    @app.exception_handler(ClientDisconnect)
    async def _gone(request, exc: ClientDisconnect) -> Response:  # nobody reads it; no traceback in the log
        return errors.error_response(408, "the client left before sending its whole request")

    app.include_router(ingest.router)
    app.include_router(gateway.router)
    app.include_router(adapters.router)

    @app.get("/healthz", summary="Liveness, and the deployed models that cannot be served")
    async def healthz() -> dict:
        """`unavailable`: each model (or route) that did not load, why, and the aliases
        (`project/task[:canary]`) that answer 503 because of it; `flywheel status` shows them."""
        return {"status": "ok", "queue_items": app.state.writer.pending_items,
                "unavailable": app.state.router.failures()}  # fmt: skip

    @app.get("/readyz", summary="Readiness: 503 while ingestion is refused for a full queue")
    async def readyz() -> Response:
        """For a load balancer: send traffic elsewhere while this answers 503 (ingestion would
        get 503 too). Liveness is `/healthz`: a busy service is alive, and must not be restarted."""
        admission: Admission = app.state.admission
        why = admission.busy()
        body = {"status": "busy" if why else "ready", "reason": why, "queue_items": app.state.writer.pending_items,
                "bytes_in_progress": admission.bytes_in_progress}  # fmt: skip
        return Response(orjson.dumps(body), status_code=503 if why else 200, media_type="application/json",
                        headers={"Retry-After": "1"} if why else None)  # fmt: skip

    @app.get("/metrics", summary="Prometheus metrics (admin key)")
    async def metrics(project: AdminDep) -> Response:  # (the counters are the whole service's, not one project's)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(settings: Settings, *, access_log: bool = False) -> None:
    """Run the service in the foreground until SIGINT/SIGTERM."""
    import uvicorn

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, access_log=access_log,
                log_level="info", timeout_graceful_shutdown=30,
                http=client_deadline(settings.serving.client_timeout_s))  # fmt: skip


@contextmanager
def in_thread(app, host: str = "127.0.0.1", port: int = 0, client_timeout_s: float | None = None) -> Iterator[str]:
    """Serve an ASGI app from a background thread of this process (port 0: a free one); yields its URL.
    Clients slower than `client_timeout_s` (default: serving.client_timeout_s's) are dropped."""
    import uvicorn

    http = client_deadline(client_timeout_s or ServingSettings().client_timeout_s)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, http=http))
    thread = threading.Thread(target=server.run, name="flywheel-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the service did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join()


def running(settings: Settings) -> Iterator[str]:
    """The Flywheel service for `settings` in a background thread; yields its URL."""
    return in_thread(create_app(settings), settings.host, settings.port, settings.serving.client_timeout_s)
