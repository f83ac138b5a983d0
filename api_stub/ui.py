"""The operator's page at ``/ui``: the queue at a glance, one artifact in depth.

Server-rendered HTML (Jinja2, autoescaped) and one small script, no build
step. Each view has its own URL (``/ui``, ``/ui/artifacts/{id}``), so links,
reloads and the back button work as on any site. The script polls a small
JSON endpoint of the view (``/ui/api/overview``, ``/ui/api/artifacts/{id}``)
and, when the answer changes, fetches the page again and swaps its live
region, so there is one renderer and it is the server's.

Requeue and cancel are JSON POSTs from the page after a confirmation. With
``ARTIFACTD_API_TOKEN`` set, every view and endpoint here needs the token:
either the API's ``Authorization: Bearer`` header or the session cookie that
the login form sets after checking the token. The cookie holds an HMAC of
the token, never the token, so rotating the token logs every browser out.
Operator actions sent without the Bearer header (with the cookie, or with
no token configured) must carry the ``X-Artifactd-UI`` header, which no
cross-site form can send. What this module reads comes from
``shared.ops`` and ``shared.repository``; the few read statements only the
page needs are named below.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

import structlog
from fastapi import APIRouter, Depends, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader
from markdown_it import MarkdownIt
from markupsafe import Markup
from psycopg.rows import dict_row

from api_stub.artifacts import notification_channels
from api_stub.errors import ApiError, error_response
from api_stub.state import ApiState, api_state
from shared import ops, queue, repository
from shared.settings import Settings

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/ui", include_in_schema=False)

State = Annotated[ApiState, Depends(api_state)]

_HERE = Path(__file__).resolve().parent
_STATIC_DIR = _HERE / "static"
_STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}

SESSION_COOKIE = "artifactd_ui"
ACTION_HEADER = "X-Artifactd-UI"
# Windows the outcome tables cover, in seconds.
HOUR_S = 3_600
DAY_S = 86_400
RECENT_FAILURES_LIMIT = 20
# How often the script polls the view's JSON while the tab is visible.
POLL_INTERVAL_MS = 3_000

# Data is shown, never run: no script, style or frame from anywhere else, and
# none inline either, so an escaped name that slipped through could not act.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# The oldest row still waiting for a worker (no live lease): the oldest of
# the unleased rows and of those whose lease expired, each over its own
# partial index.
OLDEST_WAITING = """
SELECT a.id::text AS id, a.task_id, t.name AS task_name, a.artifact_type,
       a.attempts, a.max_attempts, a.created_at, a.run_after,
       extract(epoch FROM now() - a.created_at)::float8 AS age_s
FROM (
    (SELECT id FROM generated_artifacts
     WHERE state = 'processing' AND lease_token IS NULL
     ORDER BY created_at LIMIT 1)
    UNION ALL
    (SELECT id FROM generated_artifacts
     WHERE state = 'processing' AND lease_token IS NOT NULL
       AND lease_expires_at < now()
     ORDER BY created_at LIMIT 1)
) w
JOIN generated_artifacts a ON a.id = w.id
LEFT JOIN tasks t ON t.id = a.task_id
ORDER BY a.created_at
LIMIT 1
"""

# Newest failures first, with their messages, over ix_generated_artifacts_finished.
RECENT_FAILURES = """
SELECT a.id::text AS id, a.task_id, t.name AS task_name, a.artifact_type,
       a.content->>'error_code' AS error_code,
       a.content->>'error_message' AS error_message,
       a.content->>'hint' AS hint,
       a.attempts, a.max_attempts, a.finished_at
FROM generated_artifacts a
LEFT JOIN tasks t ON t.id = a.task_id
WHERE a.state <> 'processing' AND a.state = 'failed'
ORDER BY a.finished_at DESC NULLS LAST
LIMIT %(limit)s
"""


# -- rendering ----------------------------------------------------------------

# CommonMark with tables and strikethrough; raw HTML in the text is shown as
# text and links with a javascript: or similar scheme are dropped.
_markdown = MarkdownIt("js-default", {"html": False, "linkify": False})


def render_markdown(text: str) -> Markup:
    """Markdown as HTML that cannot carry markup of its own."""
    return Markup(_markdown.render(text))  # noqa: S704 - html is off, see above


# The filters take what they are given: metadata is JSON any program may
# have written, so a value of the wrong kind shows as a dash, not an error.


def _format_time(value: Any) -> str:
    moment: datetime
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    elif isinstance(value, datetime):
        moment = value
    else:
        return "–"
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _format_age(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "–"
    return ops.format_age(max(seconds, 0.0))


def _format_ms(value: Any) -> str:
    if not isinstance(value, int | float):
        return "–"
    if value >= 10_000:
        return f"{value / 1000:.0f} s"
    if value >= 1_000:
        return f"{value / 1000:.1f} s"
    return f"{value:.0f} ms"


def _pretty_json(value: Any) -> str:
    return json.dumps(jsonable_encoder(value), indent=2, ensure_ascii=False)


_templates = Environment(
    loader=FileSystemLoader(_HERE / "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters.update(
    time=_format_time, age=_format_age, ms=_format_ms, pretty_json=_pretty_json
)
_templates.globals.update(
    markdown=render_markdown,
    poll_interval_ms=POLL_INTERVAL_MS,
    action_header=ACTION_HEADER,
)


def _page(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = _templates.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status_code, headers=_SECURITY_HEADERS)


# -- access -------------------------------------------------------------------


def session_value(token: str) -> str:
    """What the session cookie holds for ``token``: an HMAC, not the token."""
    return hmac.new(token.encode(), b"artifactd-ui-session", hashlib.sha256).hexdigest()


def _bearer_ok(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def _cookie_ok(request: Request, token: str) -> bool:
    given = request.cookies.get(SESSION_COOKIE, "")
    return hmac.compare_digest(given.encode(), session_value(token).encode())


def _token(settings: Settings) -> str | None:
    return settings.api_token.get_secret_value() if settings.api_token else None


def _signed_in(request: Request, settings: Settings) -> bool:
    token = _token(settings)
    return token is None or _bearer_ok(request, token) or _cookie_ok(request, token)


def _require_data_access(request: Request, settings: Settings) -> None:
    if not _signed_in(request, settings):
        raise ApiError(
            401,
            "UNAUTHORIZED",
            "sign in at /ui or send Authorization: Bearer <ARTIFACTD_API_TOKEN>",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _require_action_access(request: Request, settings: Settings) -> None:
    """Data access, plus proof the request came from the page or a program.

    A browser attaches cookies to a form another site submits; it does not
    let that site add a custom header without a CORS preflight we never pass.
    """
    _require_data_access(request, settings)
    token = _token(settings)
    if token is not None and _bearer_ok(request, token):
        return
    if request.headers.get(ACTION_HEADER) != "1":
        raise ApiError(
            403, "FORBIDDEN", f"operator actions need the {ACTION_HEADER} header"
        )


def _login_page(request: Request, *, failed: bool = False) -> HTMLResponse:
    return _page(
        "login.html",
        status_code=401,
        next_path=_safe_next(request.url.path),
        failed=failed,
        signed_in=False,
    )


def _safe_next(path: str) -> str:
    """Only our own views are places to return to after signing in."""
    if path == "/ui" or (path.startswith("/ui/") and not path.startswith("/ui//")):
        return path
    return "/ui"


def _artifact_id(artifact_id: str) -> str | None:
    try:
        return str(uuid.UUID(artifact_id))
    except ValueError:
        return None


# -- reading ------------------------------------------------------------------


def read_overview(state: ApiState) -> dict[str, Any]:
    """Everything the overview shows, as one JSON-ready dict."""
    with state.database.transaction() as conn:
        day = ops.queue_stats(conn, since_s=DAY_S)
        hour = ops.queue_stats(conn, since_s=HOUR_S)
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(OLDEST_WAITING)
            oldest = cur.fetchone()
            cur.execute(RECENT_FAILURES, {"limit": RECENT_FAILURES_LIMIT})
            failures = cur.fetchall()

    return {
        "fleet_cap": state.settings.fleet_concurrency,
        "queue": day["queue"],
        "oldest_waiting": oldest,
        "windows": {
            name: {
                "since_s": stats["since_s"],
                "totals": stats["totals"],
                "outcomes": stats["outcomes"],
                "errors": stats["errors"],
            }
            for name, stats in (("hour", hour), ("day", day))
        },
        "notifications": day["notifications"],
        "recent_failures": failures,
    }


def read_artifact(state: ApiState, artifact_id: str) -> dict[str, Any] | None:
    """One artifact with its task (not the transcript) and notifications."""
    with state.database.transaction() as conn:
        artifact = repository.get_artifact(conn, artifact_id)
        if artifact is None:
            return None
        task = repository.get_task(conn, artifact["task_id"])
        notifications = ops.artifact_notifications(conn, artifact_id)
        now = conn.execute(queue.DATABASE_NOW).fetchone()

    if task is not None:
        task = dict(task)
        task["transcript_chars"] = len(task.pop("transcript") or "")
    return {
        "artifact": artifact,
        "task": task,
        "notifications": notifications,
        "now": now[0] if now else None,
    }


# -- views --------------------------------------------------------------------


@router.get("", response_class=HTMLResponse)
def overview_page(request: Request, state: State) -> Response:
    """The queue at a glance."""
    if not _signed_in(request, state.settings):
        return _login_page(request)

    data = read_overview(state)

    return _page(
        "overview.html",
        data=data,
        poll_url="/ui/api/overview",
        signed_in=state.settings.api_token is not None,
    )


@router.get("/artifacts/{artifact_id}", response_class=HTMLResponse)
def artifact_page(artifact_id: str, request: Request, state: State) -> Response:
    """One artifact: content, attempts and errors, notifications, actions."""
    if not _signed_in(request, state.settings):
        return _login_page(request)
    canonical = _artifact_id(artifact_id)

    data = read_artifact(state, canonical) if canonical else None

    signed_in = state.settings.api_token is not None
    if data is None:
        return _page(
            "missing.html",
            status_code=404,
            artifact_id=artifact_id,
            signed_in=signed_in,
        )
    return _page(
        "artifact.html",
        data=data,
        poll_url=f"/ui/api/artifacts/{canonical}",
        signed_in=signed_in,
    )


@router.post("/login")
async def login(request: Request, state: State) -> Response:
    """Check the token from the form; on success set the session cookie."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    given = (form.get("token") or [""])[0].strip()
    next_path = _safe_next((form.get("next") or ["/ui"])[0])
    token = _token(state.settings)

    if token is None:
        return RedirectResponse(next_path, status_code=303)
    if not hmac.compare_digest(given.encode(), token.encode()):
        log.warning(
            "ui.login_refused", client=request.client.host if request.client else None
        )
        return _page("login.html", status_code=401, next_path=next_path, failed=True)

    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_value(token),
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/ui", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    """The stylesheet and the script; they hold no data, so no token."""
    path = _STATIC_DIR / name
    media_type = _STATIC_TYPES.get(path.suffix)
    if "/" in name or name.startswith(".") or media_type is None or not path.is_file():
        return error_response(404, "NOT_FOUND", f"no route /ui/static/{name}")
    return Response(
        path.read_bytes(),
        media_type=media_type,
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


# -- JSON for the script (and for anyone with the token) ----------------------


@router.get("/api/overview")
def overview_json(request: Request, state: State) -> JSONResponse:
    """Queue depth, in flight and the cap, outcomes per hour and day, failures."""
    _require_data_access(request, state.settings)

    return _json(read_overview(state))


@router.get("/api/artifacts/{artifact_id}")
def artifact_json(artifact_id: str, request: Request, state: State) -> JSONResponse:
    """One artifact, its task and its notifications."""
    _require_data_access(request, state.settings)
    canonical = _artifact_id(artifact_id)

    data = read_artifact(state, canonical) if canonical else None

    if data is None:
        return _no_artifact(artifact_id)
    data.pop("now", None)
    return _json(data)


@router.post("/api/artifacts/{artifact_id}/requeue")
def requeue(artifact_id: str, request: Request, state: State) -> JSONResponse:
    """Back to ``processing`` with attempts reset; only a failed artifact goes."""
    _require_action_access(request, state.settings)
    canonical = _artifact_id(artifact_id)
    if canonical is None:
        return _no_artifact(artifact_id)

    with state.database.transaction() as conn:
        report = ops.requeue_by_ids(conn, [canonical])
        row = repository.get_artifact(conn, canonical)

    if row is None:
        return _no_artifact(artifact_id)
    return _action_answer(
        "requeue", canonical, row, bool(report.requeued), report.refused
    )


@router.post("/api/artifacts/{artifact_id}/cancel")
def cancel(artifact_id: str, request: Request, state: State) -> JSONResponse:
    """Fail it with CANCELLED; a worker running it stops at its next renewal."""
    _require_action_access(request, state.settings)
    canonical = _artifact_id(artifact_id)
    if canonical is None:
        return _no_artifact(artifact_id)
    settings = state.settings

    with state.database.transaction() as conn:
        report = ops.cancel_artifacts(
            conn,
            [canonical],
            locale=settings.locale,
            channels=notification_channels(settings),
        )
        row = repository.get_artifact(conn, canonical)

    if row is None:
        return _no_artifact(artifact_id)
    return _action_answer(
        "cancel", canonical, row, bool(report.cancelled), report.refused
    )


def _action_answer(
    action: str, artifact_id: str, row: dict[str, Any], done: bool, refused: list[Any]
) -> JSONResponse:
    reason = refused[0].reason if refused else None
    log.info(f"ui.{action}", artifact_id=artifact_id, done=done, reason=reason)
    body = {
        "artifact_id": artifact_id,
        "done": done,
        "state": row["state"],
        "reason": reason,
    }
    return _json(body, status_code=200 if done else 409)


def _json(data: dict[str, Any], status_code: int = 200) -> JSONResponse:
    return JSONResponse(
        jsonable_encoder(data),
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
    )


def _no_artifact(artifact_id: str) -> JSONResponse:
    return error_response(
        404,
        "ARTIFACT_NOT_FOUND",
        f"no artifact with id {artifact_id!r}",
        field="artifact_id",
    )
