"""What every route needs, built once per app: settings, pool, events, types.

A router added later (an operator page, say) gets it the same way the
built-in routes do: ``state: Annotated[ApiState, Depends(api_state)]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from api_stub.events import EventHub
from api_stub.pool import Database
from shared.artifact_types import ArtifactType
from shared.settings import Settings


@dataclass(frozen=True)
class ApiState:
    settings: Settings
    database: Database
    events: EventHub
    artifact_types: dict[str, ArtifactType]


async def api_state(request: Request) -> ApiState:
    """The app's ``ApiState``, set by the lifespan before the first request."""
    state: ApiState = request.app.state.artifactd
    return state
