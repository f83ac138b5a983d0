"""The operator page at /ui, served by the real app on loopback.

Plain HTTP tests check escaping and the token; the browser test drives
Debian's headless Chromium through Playwright: sign in, find a failed
artifact, requeue it with the confirmation accepted, and watch a real
worker turn it to ``success``. It leaves a screenshot in tests/artifacts/.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from api_stub.app import create_app
from api_stub.server import serve_in_thread
from shared.errors import ErrorCode, error_content
from shared.settings import load_settings
from tests.support.processes import ROOT, WorkerProcess, scalar, wait_until

TOKEN = "ui-test-token"
HOSTILE_NAME = '<script>alert("pwned")</script> weekly sync'
HOSTILE_MARKDOWN = (
    '# Minutes\n\n<img src=x onerror="alert(1)">\n\n[click](javascript:alert(2))\n'
)
SCREENSHOTS = ROOT / "tests" / "artifacts"
SCREENSHOT = SCREENSHOTS / "ui.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

Server = Callable[..., AbstractContextManager[str]]


@pytest.fixture
def ui_server(clean_db: str) -> Server:
    """Starts the whole API (the page included) on a free loopback port."""

    @contextmanager
    def start(**settings: Any) -> Iterator[str]:
        app = create_app(load_settings(database_url=clean_db, **settings), url=clean_db)
        with serve_in_thread(app) as base_url:
            yield base_url

    return start


def seed_artifact(
    db_url: str,
    *,
    task_name: str = "Weekly sync",
    state: str = "failed",
    content: dict[str, Any] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> str:
    """A finished artifact of a new task, with one dead notification."""
    if content is None:
        content = error_content(ErrorCode.LLM_AUTH_FAILED, "en", "401 from upstream")
    metadata = {"errors": errors or []}
    with psycopg.connect(db_url, autocommit=True) as conn:
        task = conn.execute(
            "INSERT INTO tasks (name, transcript) VALUES (%s, %s) RETURNING id",
            (task_name, "Alice: we ship on Friday.\nBob: I will write the notes."),
        ).fetchone()
        assert task is not None
        artifact = conn.execute(
            """
            INSERT INTO generated_artifacts
                (task_id, artifact_type, state, content, metadata, attempts,
                 started_at, finished_at)
            VALUES (%s, 'meeting_minutes', %s, %s, %s, 1,
                    now() - interval '2 seconds', now())
            RETURNING id::text
            """,
            (task[0], state, json.dumps(content), json.dumps(metadata)),
        ).fetchone()
        assert artifact is not None
        conn.execute(
            """
            INSERT INTO notifications (artifact_id, event, channel, state, attempts, last_error)
            VALUES (%s, %s, 'wecom', 'dead', 8, 'errcode 93000: robot removed')
            """,
            (artifact[0], state),
        )
    return str(artifact[0])


def test_ui__escapes_hostile_task_names_and_content(
    ui_server: Server, clean_db: str
) -> None:
    failed_id = seed_artifact(clean_db, task_name=HOSTILE_NAME)
    succeeded_id = seed_artifact(
        clean_db,
        task_name=HOSTILE_NAME,
        state="success",
        content={"format": "markdown", "text": HOSTILE_MARKDOWN},
    )

    with ui_server() as base_url:
        overview = httpx.get(f"{base_url}/ui")
        failed = httpx.get(f"{base_url}/ui/artifacts/{failed_id}")
        succeeded = httpx.get(f"{base_url}/ui/artifacts/{succeeded_id}")

    for page in (overview, failed, succeeded):
        assert page.status_code == 200
        assert "<script>alert" not in page.text
        assert (
            "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt; weekly sync"
            in page.text
        )
        assert "script-src 'self'" in page.headers["content-security-policy"]
    assert f'href="/ui/artifacts/{failed_id}"' in overview.text
    assert "LLM_AUTH_FAILED" in overview.text
    # The markdown is rendered, its raw HTML and javascript: link are not.
    assert "<h1>Minutes</h1>" in succeeded.text
    assert "<img" not in succeeded.text
    assert "&lt;img src=x" in succeeded.text
    assert 'href="javascript' not in succeeded.text


def test_ui__needs_the_token_when_one_is_set(ui_server: Server, clean_db: str) -> None:
    artifact_id = seed_artifact(clean_db, task_name="Board review")

    with (
        ui_server(api_token=TOKEN) as base_url,
        httpx.Client(base_url=base_url) as client,
    ):
        anonymous_json = client.get("/ui/api/overview")
        anonymous_page = client.get("/ui")
        anonymous_action = client.post(
            f"/ui/api/artifacts/{artifact_id}/requeue", headers={"X-Artifactd-UI": "1"}
        )
        bearer_json = client.get(
            "/ui/api/overview", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        wrong_login = client.post("/ui/login", data={"token": "guess", "next": "/ui"})
        login = client.post("/ui/login", data={"token": TOKEN, "next": "/ui"})
        cookie_page = client.get("/ui")
        forged_action = client.post(f"/ui/api/artifacts/{artifact_id}/requeue")
        page_action = client.post(
            f"/ui/api/artifacts/{artifact_id}/requeue", headers={"X-Artifactd-UI": "1"}
        )
        api_still_closed = httpx.get(
            f"{base_url}/api/v1/artifacts/{artifact_id}/status"
        )
        lookalike_path_closed = httpx.get(f"{base_url}/uix")

    assert anonymous_json.status_code == 401
    assert anonymous_json.json()["error"]["code"] == "UNAUTHORIZED"
    assert anonymous_page.status_code == 401
    assert 'name="token"' in anonymous_page.text
    assert "Board review" not in anonymous_page.text
    assert anonymous_action.status_code == 401
    assert bearer_json.status_code == 200
    assert [f["id"] for f in bearer_json.json()["recent_failures"]] == [artifact_id]
    assert wrong_login.status_code == 401
    assert "artifactd_ui" not in wrong_login.cookies
    assert login.status_code == 303
    assert TOKEN not in login.headers["set-cookie"]
    assert "httponly" in login.headers["set-cookie"].lower()
    assert cookie_page.status_code == 200
    assert "Board review" in cookie_page.text
    assert forged_action.status_code == 403
    assert page_action.status_code == 200
    assert page_action.json()["state"] == "processing"
    assert (
        scalar(
            clean_db,
            "SELECT state FROM generated_artifacts WHERE id = %s",
            (artifact_id,),
        )
        == "processing"
    )
    assert api_still_closed.status_code == 401
    assert lookalike_path_closed.status_code == 401


def test_ui__requeue_and_cancel_refuse_what_they_cannot_do(
    ui_server: Server, clean_db: str
) -> None:
    succeeded_id = seed_artifact(
        clean_db, state="success", content={"format": "json", "text": "{}", "data": {}}
    )
    headers = {"X-Artifactd-UI": "1"}

    with (
        ui_server() as base_url,
        httpx.Client(base_url=base_url, headers=headers) as client,
    ):
        requeue = client.post(f"/ui/api/artifacts/{succeeded_id}/requeue")
        cancel = client.post(f"/ui/api/artifacts/{succeeded_id}/cancel")
        missing = client.post("/ui/api/artifacts/not-a-uuid/cancel")
        missing_page = client.get("/ui/artifacts/00000000-0000-0000-0000-000000000000")

    assert requeue.status_code == 409
    assert "only failed artifacts" in requeue.json()["reason"]
    assert cancel.status_code == 409
    assert "already finished" in cancel.json()["reason"]
    assert missing.status_code == 404
    assert missing_page.status_code == 404
    assert "No such artifact" in missing_page.text


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_ui__browser_requeues_a_failed_artifact_and_sees_it_succeed(
    ui_server: Server, clean_db: str, tmp_path: Path
) -> None:
    from playwright.sync_api import Dialog, sync_playwright

    artifact_id = seed_artifact(
        clean_db,
        task_name=HOSTILE_NAME,
        errors=[
            {
                "error_code": "LLM_AUTH_FAILED",
                "detail": "401 invalid x-api-key",
                "attempt": 1,
                "worker_id": "host-a:1234",
                "duration_ms": 312,
            }
        ],
    )
    other_id = seed_artifact(
        clean_db,
        task_name="产品周会",
        content=error_content(ErrorCode.OUTPUT_INVALID, "zh-CN", "missing 'owner'"),
    )
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    worker: WorkerProcess | None = None

    with (
        ui_server(api_token=TOKEN, fleet_concurrency=4) as base_url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            context = browser.new_context(viewport={"width": 1200, "height": 900})
            page = context.new_page()
            page.set_default_timeout(30_000)
            dialogs: list[str] = []

            def accept(dialog: Dialog) -> None:
                dialogs.append(dialog.message)
                dialog.accept()

            page.on("dialog", accept)

            # Signed out, the page asks for the token and shows no data.
            page.goto(f"{base_url}/ui")
            assert page.locator("#token").is_visible()
            assert "weekly sync" not in page.content()
            page.fill("#token", TOKEN)
            page.click("button[type=submit]")

            # The overview lists the failure, the hostile name as text.
            row = page.locator(f'#failures tr[data-artifact-id="{artifact_id}"]')
            row.wait_for()
            assert "LLM_AUTH_FAILED" in row.inner_text()
            assert HOSTILE_NAME in row.inner_text()
            assert (
                page.locator("#queue-in-flight").inner_text().replace(" ", "") == "0/4"
            )

            # Drill in: its own URL, its errors and notifications.
            row.locator(f'a[href="/ui/artifacts/{artifact_id}"]').click()
            page.wait_for_url(f"**/ui/artifacts/{artifact_id}")
            assert page.locator("#task-name").inner_text().startswith(HOSTILE_NAME)
            assert (
                "401 invalid x-api-key" in page.locator("#attempts-errors").inner_text()
            )
            assert (
                "robot removed" in page.locator("#artifact-notifications").inner_text()
            )
            page.locator('[data-state="failed"]').wait_for()

            # Requeue, with the confirmation accepted.
            page.click('button[data-action="requeue"]')
            page.locator('[data-state="processing"]').wait_for()
            assert len(dialogs) == 1 and "Requeue" in dialogs[0]
            assert (
                scalar(
                    clean_db,
                    "SELECT state FROM generated_artifacts WHERE id = %s",
                    (artifact_id,),
                )
                == "processing"
            )

            # A real worker runs it; the page refreshes itself to success.
            worker = WorkerProcess(
                clean_db, tmp_path / "worker.log", "--concurrency", "1"
            )
            page.locator('[data-state="success"]').wait_for(timeout=45_000)
            assert "Transcript:" in page.locator("#content").inner_text()
            assert "LLM_AUTH_FAILED" in page.locator("#attempts-errors").inner_text()
            page.screenshot(path=str(SCREENSHOTS / "ui-artifact.png"), full_page=True)

            # Back to the overview: the failure is gone from the list.
            page.go_back()
            page.wait_for_url(f"{base_url}/ui")
            wait_until(
                lambda: (
                    page.locator(
                        f'#failures tr[data-artifact-id="{artifact_id}"]'
                    ).count()
                    == 0
                ),
                timeout_s=20,
                message="the requeued artifact to leave the failure list",
            )
            assert (
                page.locator(f'#failures tr[data-artifact-id="{other_id}"]').count()
                == 1
            )
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            # On a phone-sized screen nothing is wider than the screen.
            phone = context.new_page()
            phone.set_viewport_size({"width": 390, "height": 844})
            phone.goto(f"{base_url}/ui/artifacts/{artifact_id}")
            phone.locator('[data-state="success"]').wait_for()
            overflow = phone.evaluate(
                "document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0
        finally:
            browser.close()
            if worker is not None:
                worker.kill()

    png = SCREENSHOT.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 1000 and height >= 600
    assert len(png) > 20_000
