"""The HTTP service behind `flywheel serve`: builds the FastAPI app and owns its writer."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from flywheel import store
from flywheel.settings import Settings
from serving import errors, ingest
from serving.auth import KeyCache
from serving.writer import Writer


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with store.connect(settings.db_path):  # create the database and apply migrations up front
            pass
        app.state.keys.refresh()
        app.state.writer.start()
        try:
            yield
        finally:
            app.state.writer.stop()  # graceful shutdown: everything accepted gets written

    app = FastAPI(title="Flywheel", version="0.1.0", lifespan=lifespan,
                  description="Ingestion, feedback and OpenAI-compatible gateway of Flywheel.")  # fmt: skip
    app.state.settings = settings
    app.state.keys = KeyCache(settings.db_path)
    app.state.writer = Writer(settings.db_path, max_queue_items=settings.ingest.max_queue_items,
                              max_batch_items=settings.ingest.max_batch_items)  # fmt: skip
    errors.install(app)
    app.include_router(ingest.router)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict:
        return {"status": "ok", "queue_items": app.state.writer.pending_items}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(settings: Settings, *, access_log: bool = False) -> None:
    """Run the service in the foreground until SIGINT/SIGTERM."""
    import uvicorn

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, access_log=access_log,
                log_level="info", timeout_graceful_shutdown=30)  # fmt: skip


@contextmanager
def running(settings: Settings) -> Iterator[str]:
    """The service in a background thread of this process (port 0: a free one); yields its URL."""
    import uvicorn

    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_level="warning",
                            access_log=False)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="flywheel-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the service did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{settings.host}:{port}"
    finally:
        server.should_exit = True
        thread.join()
