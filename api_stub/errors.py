"""The one error shape every route answers with, and the handlers that build it.

Every answer that is not a success is JSON of this shape::

    {"error": {"code": "TASK_NOT_FOUND",
               "message": "no task with id 'x'",
               "field": "task_id",                  # only when one field is to blame
               "details": [{"field", "message"}]}}  # only for validation failures

``code`` is stable and meant for programs; ``message`` is English prose for
people. The codes and their statuses:

=======================  ======  ===============================================
code                     status  when
=======================  ======  ===============================================
VALIDATION_FAILED        422     malformed JSON, a missing or malformed field
UNKNOWN_ARTIFACT_TYPE    422     no such artifact type is configured
UNAUTHORIZED             401     ARTIFACTD_API_TOKEN is set and the bearer is wrong
TASK_NOT_FOUND           404     no task with that id
ARTIFACT_NOT_FOUND       404     no artifact with that id (any non-UUID included)
BATCH_NOT_FOUND          404     no batch with that id
NOT_FOUND                404     no such route
METHOD_NOT_ALLOWED       405     the route exists, the method does not
TASK_EXISTS              409     a task with the requested id exists already
IDEMPOTENCY_KEY_REUSED   409     the key was first used for a different request
ARTIFACT_FINISHED        409     cancel of an artifact that already finished
PAYLOAD_TOO_LARGE        413     the body is above ARTIFACTD_API_MAX_BODY_BYTES
DATABASE_UNAVAILABLE     503     PostgreSQL did not answer in time
INTERNAL_ERROR           500     a bug; the traceback goes to the log
=======================  ======  ===============================================

The artifact's own failure (``content`` of a failed row) is a different
thing: ``{error_code, error_message, hint}`` from ``shared.errors``.
"""

from __future__ import annotations

from typing import Any

import psycopg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger(__name__)

_STATUS_CODES = {
    401: "UNAUTHORIZED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    422: "VALIDATION_FAILED",
    503: "DATABASE_UNAVAILABLE",
}


class FieldProblem(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None
    details: list[FieldProblem] | None = None


class ErrorResponse(BaseModel):
    """Every non-success answer: ``{"error": {code, message, field?, details?}}``."""

    error: ErrorBody


class ApiError(Exception):
    """An answer other than success, raised anywhere below a route."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers


def not_found(code: str, message: str, field: str | None = None) -> ApiError:
    return ApiError(404, code, message, field=field)


def error_json(
    code: str,
    message: str,
    *,
    field: str | None = None,
    details: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """The body of an error answer; ``field`` and ``details`` only when given."""
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    if details:
        body["details"] = details
    return {"error": body}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    details: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_json(code, message, field=field, details=details),
        status_code=status,
        headers=headers,
    )


def field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "items", 2, "task_id")`` -> ``items.2.task_id``.

    Body fields are named by their path inside the body; path, query and
    header parameters by their own name. A body that is not JSON at all, or
    not an object, is ``body``.
    """
    parts = list(loc)
    if parts and parts[0] in ("body", "path", "query", "header", "cookie"):
        source = parts.pop(0)
        # A JSON decode error's location is a character offset, not a field.
        if source == "body" and len(parts) == 1 and isinstance(parts[0], int):
            return "body"
    return ".".join(str(p) for p in parts) or "body"


def _validation_message(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "")
        return f"the body is not valid JSON: {reason}".rstrip(": ")
    # pydantic prefixes the message of a validator's ValueError; drop that.
    return str(error.get("msg", "invalid value")).removeprefix("Value error, ")


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(
        exc.status, exc.code, exc.message, field=exc.field, headers=exc.headers
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"field": field_name(e.get("loc", ())), "message": _validation_message(e)}
        for e in exc.errors()
    ]
    first = details[0] if details else {"field": "body", "message": "invalid request"}
    return error_response(
        422,
        "VALIDATION_FAILED",
        f"{first['field']}: {first['message']}",
        field=first["field"],
        details=details,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot decode at all (not UTF-8, say);
        # to a client that is a malformed body like any other.
        return error_response(
            422,
            "VALIDATION_FAILED",
            "body: the body could not be decoded as JSON",
            field="body",
        )
    code = _STATUS_CODES.get(exc.status_code, f"HTTP_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else code.lower()
    if exc.status_code == 404:
        message = f"no route {request.url.path}"
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, code, message, headers=headers)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning(
        "api.database_unavailable",
        error=" ".join(str(exc).split()) or type(exc).__name__,
        action="answering 503",
    )
    return error_response(
        503, "DATABASE_UNAVAILABLE", "the database did not answer; try again later"
    )


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error(
        "api.internal_error",
        method=request.method,
        path=request.url.path,
        error=type(exc).__name__,
        exc_info=exc,
    )
    return error_response(500, "INTERNAL_ERROR", "internal error; see the API log")


def install_error_handlers(app: FastAPI) -> None:
    """Make every failure, FastAPI's and Starlette's included, answer one shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(psycopg.OperationalError, _database_unavailable)
    app.add_exception_handler(PoolTimeout, _database_unavailable)
    app.add_exception_handler(Exception, _internal_error)


_DESCRIBED = {
    401: "Missing or wrong bearer token (when ARTIFACTD_API_TOKEN is set)",
    404: "Unknown id",
    409: "Conflicts with an existing row or an earlier Idempotency-Key",
    413: "Body above ARTIFACTD_API_MAX_BODY_BYTES",
    422: "Malformed body, field or artifact type",
    503: "Database unavailable",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route can answer."""
    return {
        status: {"model": ErrorResponse, "description": _DESCRIBED.get(status, "Error")}
        for status in statuses
    }


def json_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The same, for a route whose own answer is not JSON (FastAPI would give
    ``model`` entries the route's media type)."""
    content = {
        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
    }
    return {
        status: {"content": content, "description": _DESCRIBED.get(status, "Error")}
        for status in statuses
    }
