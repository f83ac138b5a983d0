"""``GET /healthz``: 200 when the database answers, 503 when it does not.

It needs no token, so a load balancer or systemd can ask it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from api_stub.errors import error_responses
from api_stub.schemas import Health
from api_stub.state import ApiState, api_state

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, responses=error_responses(503))
def healthz(state: Annotated[ApiState, Depends(api_state)]) -> Health:
    """Ask the database one question; a failure is a 503 ``DATABASE_UNAVAILABLE``."""
    state.database.ping()
    return Health(status="ok")
