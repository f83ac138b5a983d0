"""``GET /api/v1/artifacts/{id}/events``: an artifact's changes as server-sent events.

The stream, in order:

- ``event: state`` with the status (the same JSON as the status route) at
  once, and again whenever the state changes;
- ``event: progress`` with the status when only ``progress`` changed;
- ``: keep-alive`` comments every ``ARTIFACTD_API_KEEPALIVE_S`` while idle;
- ``event: end`` with ``{"artifact_id", "state"}`` after a final state, and
  then the server closes the stream. ``EventSource`` clients should close on
  ``end``, or they reconnect and get the final state and ``end`` again.

Changes come from the app's one ``EventHub``; the stream subscribes before
it reads the first status, so no change can fall between the two.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import psycopg
import structlog
from fastapi import APIRouter, Depends
from psycopg_pool import PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from api_stub.artifacts import artifact_id_or_404, read_status
from api_stub.errors import json_error_responses, not_found
from api_stub.events import Subscription
from api_stub.schemas import ArtifactStatus
from api_stub.state import ApiState, api_state

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/api/v1/artifacts", tags=["artifacts"])

State = Annotated[ApiState, Depends(api_state)]

# Tells EventSource how long to wait before reconnecting, in milliseconds.
RECONNECT_MS = 3000
FINAL_STATES = ("success", "failed")


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` answer. Not FastAPI's ``EventSourceResponse``,
    which would take over the route's own keep-alive and 404 handling."""

    media_type = "text/event-stream"


def _event(event: str, data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"event: {event}\ndata: {payload}\n\n".encode()


def _status_event(event: str, status: ArtifactStatus) -> bytes:
    return _event(event, status.model_dump_json(exclude_unset=True))


@router.get(
    "/{artifact_id}/events",
    response_class=EventStreamResponse,
    responses={
        200: {"description": "state, progress and end events; keep-alive comments"},
        **json_error_responses(401, 404, 422, 503),
    },
)
async def stream_events(artifact_id: str, state: State) -> EventStreamResponse:
    """Server-sent events on every change of the artifact, so clients need not poll."""
    artifact_id = artifact_id_or_404(artifact_id)
    hub = state.events

    sub = hub.subscribe(artifact_id)
    try:
        first = await run_in_threadpool(read_status, state.database, artifact_id)
    except BaseException:
        hub.unsubscribe(sub)
        raise
    if first is None:
        hub.unsubscribe(sub)
        raise not_found(
            "ARTIFACT_NOT_FOUND", f"no artifact with id {artifact_id!r}", "artifact_id"
        )

    return EventStreamResponse(
        _stream(state, sub, first),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(
    state: ApiState, sub: Subscription, first: ArtifactStatus
) -> AsyncIterator[bytes]:
    hub = state.events
    keepalive_s = state.settings.api_keepalive_s
    artifact_id = sub.artifact_id
    last = first
    try:
        yield f"retry: {RECONNECT_MS}\n\n".encode()
        yield _status_event("state", first)
        while last.state not in FINAL_STATES:
            woken = await sub.wait(keepalive_s)
            if sub.closed:
                log.info("events.stream_closed", artifact_id=artifact_id, by="shutdown")
                return
            if not woken:
                # Read again even with the listener up: a row changed by hand
                # (no NOTIFY) or a wake-up lost with a dropped connection is
                # seen within one keep-alive.
                yield b": keep-alive\n\n"

            try:
                current = await run_in_threadpool(
                    read_status, state.database, artifact_id
                )
            except (psycopg.OperationalError, PoolTimeout) as exc:
                log.warning(
                    "events.read_failed",
                    artifact_id=artifact_id,
                    error=" ".join(str(exc).split()),
                    action="reading again at the next keep-alive",
                )
                continue
            if current is None:
                # Deleted under us (prune): nothing more will happen to it.
                log.info("events.artifact_gone", artifact_id=artifact_id)
                return

            if current.state != last.state:
                yield _status_event("state", current)
            elif current.progress != last.progress:
                yield _status_event("progress", current)
            last = current
        yield _event("end", {"artifact_id": artifact_id, "state": last.state})
    finally:
        hub.unsubscribe(sub)
