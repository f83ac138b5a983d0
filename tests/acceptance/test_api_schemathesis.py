"""A property-based run against the API's OpenAPI document, over real HTTP.

Schemathesis generates requests, valid and invalid, for every operation in
the document and sends them to the API on loopback (uvicorn in a thread, a
real PostgreSQL). No answer may be a 500, and every answer must be one the
document declares, in the declared content type and schema. The example
count is bounded so the whole run stays well under a minute.

The document is built from the same app factory at import time, since the
generated tests must exist before any server does; the first test checks
that it is exactly what the running server serves.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api_stub.app import create_app
from api_stub.server import serve_in_thread
from shared.settings import Settings, load_settings

MAX_EXAMPLES = 15
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def api_settings(database_url: str | None = None) -> Settings:
    return load_settings(database_url=database_url, log_level="warning")


# Building the app opens nothing; only serving it connects to the database.
OPENAPI: dict[str, Any] = create_app(api_settings()).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)


@pytest.fixture(scope="module")
def base_url(db_url: str) -> Iterator[str]:
    with serve_in_thread(create_app(api_settings(db_url))) as url:
        yield url


def test_openapi__the_tested_document_is_the_served_one(base_url: str) -> None:
    served = httpx.get(f"{base_url}/openapi.json", timeout=30).json()

    assert served == OPENAPI


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api__generated_requests_get_no_500_and_declared_answers(
    case: schemathesis.Case, base_url: str
) -> None:
    case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=30)
