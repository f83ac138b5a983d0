"""The app factory: ``create_app(settings)`` builds the whole HTTP API.

It wires the routes, the one error shape (``api_stub.errors``), the
middleware (access log, then bearer token, then body limit) and a lifespan
that opens the connection pool and the ``EventHub``'s listening connection.
Another router is one more entry in ``routers``; it reaches the pool
through ``api_stub.state.api_state`` and gets the same token check. The
operator page (``api_stub.ui``) is always mounted and checks callers itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from importlib.metadata import PackageNotFoundError, version

import structlog
from fastapi import APIRouter, FastAPI, Security
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware

from api_stub import artifacts, batches, event_stream, health, tasks, ui
from api_stub.access import AccessLogMiddleware
from api_stub.auth import BearerAuthMiddleware, bearer_scheme
from api_stub.body_limit import BodyLimitMiddleware
from api_stub.errors import install_error_handlers
from api_stub.events import EventHub
from api_stub.pool import Database
from api_stub.state import ApiState
from shared.artifact_types import load_artifact_types
from shared.database import database_url, listen_url
from shared.settings import Settings

log = structlog.get_logger(__name__)

DESCRIPTION = """\
Queue LLM-written documents about meetings and follow them to the end.

The API only writes and reads rows; workers do the generating. Every answer
that is not a success has one shape:
`{"error": {"code", "message", "field"?, "details"?}}`. Unknown ids are 404,
malformed bodies and unknown artifact types 422 (naming the field), bodies
above ARTIFACTD_API_MAX_BODY_BYTES 413. With ARTIFACTD_API_TOKEN set, every
route but /healthz needs `Authorization: Bearer <token>`. A POST repeated
with the same `Idempotency-Key` gets the first answer again, marked
`Idempotent-Replayed: true`.
"""

API_ROUTERS = (tasks.router, artifacts.router, event_stream.router, batches.router)


def _package_version() -> str:
    try:
        return version("artifactd")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(
    settings: Settings,
    *,
    url: str | None = None,
    routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """The API for ``settings``; ``url`` overrides the database they name.

    ``routers`` are mounted beside the API's own, behind the same token.
    Raises ConfigurationError when an artifact type cannot be loaded.
    """
    artifact_types = load_artifact_types(settings.types_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Resolving may start the embedded server: not on the event loop.
        db_url = url if url else await run_in_threadpool(database_url, settings)
        database = Database(db_url)
        database.open()
        hub = EventHub(listen_url(settings, db_url))
        listening = asyncio.create_task(hub.run(), name="artifactd-api-events")
        app.state.artifactd = ApiState(settings, database, hub, artifact_types)
        try:
            yield
        finally:
            hub.close()
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening
            await run_in_threadpool(database.close)

    middleware = [Middleware(AccessLogMiddleware)]
    if settings.api_token is not None:
        middleware.append(Middleware(BearerAuthMiddleware, token=settings.api_token))
    middleware.append(
        Middleware(BodyLimitMiddleware, max_bytes=settings.api_max_body_bytes)
    )

    app = FastAPI(
        title="artifactd",
        version=_package_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        middleware=middleware,
    )
    install_error_handlers(app)

    # The middleware checks the token; this only shows the scheme in OpenAPI.
    secured = [Security(bearer_scheme)] if settings.api_token is not None else []
    for router in (*API_ROUTERS, *routers):
        app.include_router(router, dependencies=secured)
    app.include_router(health.router)
    app.include_router(ui.router)  # checks the token itself: api_stub.ui
    return app
