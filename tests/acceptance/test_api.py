"""The HTTP API end to end: ``artifactd api`` as a subprocess on loopback, a
real PostgreSQL, and real worker processes where work has to get done.

The front end's flow (create a task, generate, poll status until success,
fetch the artifact) comes first; then de-duplication, idempotency, batches,
cancel, the shared error shape, the token, health and a graceful stop.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from api_stub.app import create_app
from api_stub.server import serve_in_thread
from shared.settings import load_settings
from tests.support.processes import (
    ROOT,
    WorkerProcess,
    base_env,
    query,
    scalar,
    wait_until,
)

TRANSCRIPT = "Alice: we should ship on Friday.\nBob: agreed, I will write the notes."
STATUS_FIELDS = {
    "artifact_id",
    "state",
    "created_at",
    "updated_at",
    "attempts",
    "progress",
}
MAX_BODY_BYTES = 65_536
MAX_BATCH_ITEMS = 5


class ApiProcess:
    """``python -m worker api --port 0``; the port comes from its api.started line."""

    def __init__(self, db_url: str, log_path: Path, **env: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "api", "--port", "0"],
            env=base_env(db_url, **env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        port = wait_until(self._bound_port, timeout_s=60, message="api.started")
        self.url = f"http://127.0.0.1:{port}"

    def _bound_port(self) -> int | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"artifactd api exited early:\n{self.log_text()}")
        for line in self.log_text().splitlines():
            if '"api.started"' in line:
                return int(json.loads(line)["port"])
        return None

    def log_text(self) -> str:
        return self.log_path.read_text("utf-8", "replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self._log.close()


@pytest.fixture(scope="module")
def api_process(
    db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    log_path = tmp_path_factory.mktemp("api") / "api.log"
    api = ApiProcess(
        db_url,
        log_path,
        ARTIFACTD_API_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        ARTIFACTD_API_MAX_BATCH_ITEMS=str(MAX_BATCH_ITEMS),
        ARTIFACTD_LOCALE="en",
        # Cancels write an outbox row per channel; no notifier runs here.
        ARTIFACTD_WECOM_WEBHOOK_URL="http://127.0.0.1:9/unused",
    )
    yield api
    api.stop()


@pytest.fixture
def client(api_process: ApiProcess, clean_db: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_process.url, timeout=30) as http:
        yield http


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port bound but not listening, so connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def create_task(client: httpx.Client, **fields: Any) -> str:
    body = {"name": "weekly sync", "transcript": TRANSCRIPT, **fields}
    response = client.post("/api/v1/tasks", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["task_id"])


def generate(
    client: httpx.Client,
    task_id: str,
    artifact_type: str = "meeting_minutes",
    *,
    again: bool = False,
    **headers: str,
) -> httpx.Response:
    verb = "regenerate" if again else "generate"
    return client.post(
        f"/api/v1/tasks/{task_id}/artifacts/{artifact_type}/{verb}", headers=headers
    )


def assert_error(
    response: httpx.Response, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    if field is not None:
        assert error["field"] == field
    return dict(error)


# --- the front end's flow ----------------------------------------------------


def test_front_end_flow__create_generate_poll_until_success_fetch_regenerate(
    client: httpx.Client, clean_db: str, tmp_path: Path
) -> None:
    task_id = create_task(
        client, meeting_time="2026-03-02T10:00:00+08:00", language="en"
    )
    accepted = generate(client, task_id)
    assert accepted.status_code == 202, accepted.text
    artifact = accepted.json()
    assert set(artifact) == {
        "artifact_id",
        "task_id",
        "artifact_type",
        "version",
        "state",
        "created_at",
    }
    assert (artifact["task_id"], artifact["version"], artifact["state"]) == (
        task_id,
        1,
        "processing",
    )
    status_url = f"/api/v1/artifacts/{artifact['artifact_id']}/status"
    assert set(client.get(status_url).json()) == STATUS_FIELDS

    worker = WorkerProcess(clean_db, tmp_path / "worker.log", "--drain")
    try:
        final = wait_until(
            lambda: (s := client.get(status_url).json())["state"] != "processing" and s,
            timeout_s=60,
            message="the artifact to finish",
        )
        assert worker.wait(60) == 0, worker.log_text()
    finally:
        worker.kill()
    fetched = client.get(f"/api/v1/artifacts/{artifact['artifact_id']}")

    assert final["state"] == "success", final
    assert set(final) == STATUS_FIELDS
    assert final["attempts"] == 1
    assert fetched.status_code == 200
    body = fetched.json()
    assert body["artifact_id"] == artifact["artifact_id"]
    assert body["state"] == "success"
    assert body["content"]["format"] == "markdown"
    assert "weekly sync" in body["content"]["text"]
    assert body["finished_at"] is not None and "error" not in body

    again = generate(client, task_id, again=True)
    listed = client.get(f"/api/v1/tasks/{task_id}/artifacts")

    assert again.status_code == 202
    assert (again.json()["version"], again.json()["state"]) == (2, "processing")
    still = client.get(f"/api/v1/artifacts/{artifact['artifact_id']}").json()
    assert still["state"] == "success" and still["content"] == body["content"]
    assert listed.status_code == 200
    assert [(a["version"], a["state"]) for a in listed.json()] == [
        (2, "processing"),
        (1, "success"),
    ]


def test_generate__returns_the_artifact_still_processing_instead_of_a_second(
    client: httpx.Client, clean_db: str
) -> None:
    task_id = create_task(client)
    first = generate(client, task_id).json()

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: generate(client, task_id), range(6)))
    other_type = generate(client, task_id, "summary").json()

    assert {a.status_code for a in answers} == {202}
    assert {a.json()["artifact_id"] for a in answers} == {first["artifact_id"]}
    assert other_type["artifact_id"] != first["artifact_id"]
    assert (
        scalar(
            clean_db,
            "SELECT count(*) FROM generated_artifacts WHERE task_id = %s",
            (task_id,),
        )
        == 2
    )


def test_list__unknown_task_is_404_and_a_task_without_artifacts_an_empty_list(
    client: httpx.Client,
) -> None:
    task_id = create_task(client)

    empty = client.get(f"/api/v1/tasks/{task_id}/artifacts")
    missing = client.get("/api/v1/tasks/no-such-task/artifacts")

    assert empty.status_code == 200 and empty.json() == []
    assert_error(missing, 404, "TASK_NOT_FOUND", "task_id")


# --- Idempotency-Key ---------------------------------------------------------


def test_idempotency_key__a_repeated_post_gets_the_first_answer(
    client: httpx.Client, clean_db: str
) -> None:
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    body = {"name": "retro", "transcript": TRANSCRIPT}

    task_a = client.post("/api/v1/tasks", json=body, headers=key)
    task_b = client.post("/api/v1/tasks", json=body, headers=key)
    task_other = client.post(
        "/api/v1/tasks", json={**body, "name": "changed"}, headers=key
    )
    task_id = task_a.json()["task_id"]
    gen_key = {"Idempotency-Key": f"g-{uuid.uuid4()}"}
    regen_a = generate(client, task_id, "summary", again=True, **gen_key)
    regen_b = generate(client, task_id, "summary", again=True, **gen_key)
    reused = generate(client, task_id, "action_items", **gen_key)

    assert task_a.status_code == task_b.status_code == 201
    assert task_b.json() == task_a.json()
    assert task_b.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in task_a.headers
    assert_error(task_other, 409, "IDEMPOTENCY_KEY_REUSED", "Idempotency-Key")
    assert scalar(clean_db, "SELECT count(*) FROM tasks") == 1
    assert regen_a.status_code == regen_b.status_code == 202
    assert regen_b.json() == regen_a.json()
    assert_error(reused, 409, "IDEMPOTENCY_KEY_REUSED", "Idempotency-Key")
    assert scalar(clean_db, "SELECT count(*) FROM generated_artifacts") == 1


def test_idempotency_key__concurrent_repeats_make_one_artifact(
    client: httpx.Client, clean_db: str
) -> None:
    task_id = create_task(client)
    key = f"c-{uuid.uuid4()}"

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(
            pool.map(
                lambda _: generate(
                    client, task_id, "summary", again=True, **{"Idempotency-Key": key}
                ),
                range(6),
            )
        )

    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["artifact_id"] for a in answers}) == 1
    assert scalar(clean_db, "SELECT count(*) FROM generated_artifacts") == 1


# --- batches -----------------------------------------------------------------


def test_batch__creates_items_in_order_and_reports_counts_and_states(
    client: httpx.Client, clean_db: str
) -> None:
    task_id = create_task(client)
    items = [
        {"task_id": task_id, "artifact_type": "summary"},
        {
            "task": {"name": "inline", "transcript": TRANSCRIPT, "id": "inline-1"},
            "artifact_type": "action_items",
        },
        {"task_id": task_id, "artifact_type": "meeting_minutes"},
    ]

    created = client.post("/api/v1/batches", json={"items": items})
    batch = created.json()
    cancelled = client.post(
        f"/api/v1/artifacts/{batch['items'][0]['artifact_id']}/cancel"
    )
    read = client.get(f"/api/v1/batches/{batch['batch_id']}")

    assert created.status_code == 202, created.text
    assert [(i["task_id"], i["artifact_type"]) for i in batch["items"]] == [
        (task_id, "summary"),
        ("inline-1", "action_items"),
        (task_id, "meeting_minutes"),
    ]
    assert cancelled.status_code == 200
    assert read.status_code == 200
    state = read.json()
    assert state["total"] == 3
    assert state["counts"] == {"processing": 2, "success": 0, "failed": 1}
    assert state["done"] is False
    assert [i["artifact_id"] for i in state["items"]] == [
        i["artifact_id"] for i in batch["items"]
    ]
    assert state["items"][0]["error"]["error_code"] == "CANCELLED"
    assert "error" not in state["items"][1]


def test_batch__one_bad_item_writes_nothing_and_names_the_item(
    client: httpx.Client, clean_db: str
) -> None:
    task_id = create_task(client)
    good = {"task_id": task_id, "artifact_type": "summary"}

    unknown_type = client.post(
        "/api/v1/batches",
        json={"items": [good, {"task_id": task_id, "artifact_type": "poem"}]},
    )
    unknown_task = client.post(
        "/api/v1/batches",
        json={
            "items": [
                {"task": {"name": "n", "transcript": "t"}, "artifact_type": "summary"},
                {"task_id": "ghost", "artifact_type": "summary"},
            ]
        },
    )
    both = client.post(
        "/api/v1/batches",
        json={"items": [{**good, "task": {"name": "n", "transcript": "t"}}]},
    )
    too_many = client.post(
        "/api/v1/batches", json={"items": [good] * (MAX_BATCH_ITEMS + 1)}
    )
    empty = client.post("/api/v1/batches", json={"items": []})

    assert_error(unknown_type, 422, "UNKNOWN_ARTIFACT_TYPE", "items.1.artifact_type")
    assert_error(unknown_task, 404, "TASK_NOT_FOUND", "items.1.task_id")
    assert_error(both, 422, "VALIDATION_FAILED", "items.0")
    assert_error(too_many, 422, "VALIDATION_FAILED", "items")
    assert_error(empty, 422, "VALIDATION_FAILED", "items")
    assert scalar(clean_db, "SELECT count(*) FROM generated_artifacts") == 0
    assert scalar(clean_db, "SELECT count(*) FROM tasks") == 1


def test_batch__idempotency_key_returns_the_same_batch(
    client: httpx.Client, clean_db: str
) -> None:
    task_id = create_task(client)
    body = {
        "items": [
            {"task_id": task_id, "artifact_type": "summary"},
            {"task": {"name": "n", "transcript": "t"}, "artifact_type": "summary"},
        ]
    }
    key = {"Idempotency-Key": f"b-{uuid.uuid4()}"}

    first = client.post("/api/v1/batches", json=body, headers=key)
    again = client.post("/api/v1/batches", json=body, headers=key)
    different = client.post(
        "/api/v1/batches", json={"items": body["items"][:1]}, headers=key
    )

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert_error(different, 409, "IDEMPOTENCY_KEY_REUSED")
    assert scalar(clean_db, "SELECT count(*) FROM generated_artifacts") == 2


def test_batch__unknown_or_malformed_id_is_404(client: httpx.Client) -> None:
    assert_error(client.get(f"/api/v1/batches/{uuid.uuid4()}"), 404, "BATCH_NOT_FOUND")
    assert_error(client.get("/api/v1/batches/not-a-uuid"), 404, "BATCH_NOT_FOUND")


# --- cancel ------------------------------------------------------------------


def test_cancel__fails_it_with_cancelled_once_and_refuses_finished_ones(
    client: httpx.Client, clean_db: str
) -> None:
    task_id = create_task(client)
    artifact_id = generate(client, task_id).json()["artifact_id"]

    first = client.post(f"/api/v1/artifacts/{artifact_id}/cancel")
    again = client.post(f"/api/v1/artifacts/{artifact_id}/cancel")
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(
            "UPDATE generated_artifacts SET state = 'success' WHERE id = %s",
            (artifact_id,),
        )
    finished = client.post(f"/api/v1/artifacts/{artifact_id}/cancel")

    assert first.status_code == 200, first.text
    status = first.json()
    assert status["state"] == "failed"
    assert status["error"]["error_code"] == "CANCELLED"
    assert status["error"]["error_message"] == "The artifact was cancelled."
    assert (
        again.status_code == 200 and again.json()["error"]["error_code"] == "CANCELLED"
    )
    assert_error(finished, 409, "ARTIFACT_FINISHED", "artifact_id")
    outbox = query(
        clean_db,
        "SELECT event, channel FROM notifications WHERE artifact_id = %s",
        (artifact_id,),
    )
    assert outbox == [("failed", "wecom")]


# --- one error shape ---------------------------------------------------------


def test_errors__unknown_ids_are_404_whatever_their_syntax(
    client: httpx.Client,
) -> None:
    task_id = create_task(client)

    for path in (
        f"/api/v1/artifacts/{uuid.uuid4()}/status",
        f"/api/v1/artifacts/{uuid.uuid4()}",
        "/api/v1/artifacts/not-a-uuid/status",
        "/api/v1/artifacts/12345",
        "/api/v1/artifacts/not-a-uuid/events",
    ):
        assert_error(client.get(path), 404, "ARTIFACT_NOT_FOUND", "artifact_id")
    assert_error(
        client.post("/api/v1/artifacts/nope/cancel"), 404, "ARTIFACT_NOT_FOUND"
    )
    assert_error(generate(client, "no-such-task"), 404, "TASK_NOT_FOUND", "task_id")
    assert_error(generate(client, "nul%00task"), 404, "TASK_NOT_FOUND", "task_id")
    assert_error(
        generate(client, task_id, "poem"), 422, "UNKNOWN_ARTIFACT_TYPE", "artifact_type"
    )
    assert_error(client.get("/api/v1/nothing-here"), 404, "NOT_FOUND")
    assert_error(client.delete("/api/v1/tasks"), 405, "METHOD_NOT_ALLOWED")


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b'{"name": "x", "transcript": ', "body"),
        (b"[1, 2]", "body"),
        (b'{"name": "x"}', "transcript"),
        (b'{"name": "", "transcript": "t"}', "name"),
        (b'{"name": "x", "transcript": "t", "colour": "red"}', "colour"),
        (b'{"name": "x\\u0000y", "transcript": "t"}', "name"),
        (b'{"name": "x", "transcript": "\\ud800"}', "transcript"),
        (
            b'{"name": "x", "transcript": "t", "meeting_time": "2026-01-01T10:00:00"}',
            "meeting_time",
        ),
        (b'{"name": "x", "transcript": "t", "id": "has/slash"}', "id"),
        (b'{"name": "x", "transcript": "t", "language": "not a language"}', "language"),
    ],
)
def test_errors__malformed_bodies_are_422_naming_the_field(
    client: httpx.Client, content: bytes, field: str
) -> None:
    response = client.post(
        "/api/v1/tasks", content=content, headers={"Content-Type": "application/json"}
    )

    error = assert_error(response, 422, "VALIDATION_FAILED", field)
    assert error["details"][0]["field"] == field


def test_errors__a_taken_task_id_is_409(client: httpx.Client) -> None:
    create_task(client, id="meeting-42")

    again = client.post(
        "/api/v1/tasks", json={"name": "x", "transcript": "t", "id": "meeting-42"}
    )

    assert_error(again, 409, "TASK_EXISTS", "id")


def test_errors__bodies_above_the_limit_are_413(
    client: httpx.Client, clean_db: str
) -> None:
    big = json.dumps({"name": "big", "transcript": "x" * MAX_BODY_BYTES}).encode()

    declared = client.post(
        "/api/v1/tasks", content=big, headers={"Content-Type": "application/json"}
    )
    chunked = client.post(
        "/api/v1/tasks",
        content=iter([big[:1000], big[1000:]]),
        headers={"Content-Type": "application/json"},
    )
    just_fits = client.post(
        "/api/v1/tasks", json={"name": "ok", "transcript": "x" * (MAX_BODY_BYTES - 100)}
    )

    assert_error(declared, 413, "PAYLOAD_TOO_LARGE")
    assert chunked.request.headers["Transfer-Encoding"] == "chunked"
    assert_error(chunked, 413, "PAYLOAD_TOO_LARGE")
    assert just_fits.status_code == 201
    assert scalar(clean_db, "SELECT count(*) FROM tasks") == 1


def test_api__never_imports_the_worker() -> None:
    script = (
        "import sys, api_stub.app, api_stub.server\n"
        "print([m for m in sys.modules if m.split('.')[0] == 'worker'])"
    )

    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_openapi__documents_every_route_of_the_contract(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    assert set(paths["/api/v1/tasks"]) == {"post"}
    for verb in ("generate", "regenerate"):
        assert (
            "post"
            in paths[f"/api/v1/tasks/{{task_id}}/artifacts/{{artifact_type}}/{verb}"]
        )
    for path in ("/status", "", "/events"):
        assert "get" in paths[f"/api/v1/artifacts/{{artifact_id}}{path}"]
    assert "post" in paths["/api/v1/artifacts/{artifact_id}/cancel"]
    assert "get" in paths["/api/v1/tasks/{task_id}/artifacts"]
    assert (
        "post" in paths["/api/v1/batches"]
        and "get" in paths["/api/v1/batches/{batch_id}"]
    )
    assert "get" in paths["/healthz"]


# --- token, health, stopping -------------------------------------------------


def test_token__every_route_but_healthz_needs_the_bearer(clean_db: str) -> None:
    settings = load_settings(database_url=clean_db, api_token="s3cret-token")
    bearer = {"Authorization": "Bearer s3cret-token"}

    with (
        serve_in_thread(create_app(settings)) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        health = http.get("/healthz")
        bare = http.post("/api/v1/tasks", json={"name": "x", "transcript": "t"})
        wrong = http.get(
            "/openapi.json", headers={"Authorization": "Bearer s3cret-tokeN"}
        )
        basic = http.get(
            "/api/v1/batches/x", headers={"Authorization": "Basic s3cret-token"}
        )
        unparsable = http.post(
            "/api/v1/tasks", content=b"{", headers={"Content-Type": "application/json"}
        )
        good = http.post(
            "/api/v1/tasks", json={"name": "x", "transcript": "t"}, headers=bearer
        )
        schema = http.get("/openapi.json", headers=bearer).json()

    assert health.status_code == 200
    for refused in (bare, wrong, basic, unparsable):
        assert_error(refused, 401, "UNAUTHORIZED")
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert good.status_code == 201
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert scalar(clean_db, "SELECT count(*) FROM tasks") == 1


def test_healthz__503_while_the_database_does_not_answer() -> None:
    with refused_port() as port:
        settings = load_settings(
            database_url=f"postgresql://postgres@127.0.0.1:{port}/nothing",
            log_format="json",
        )
        app = create_app(settings)
        with (
            serve_in_thread(app) as url,
            httpx.Client(base_url=url, timeout=30) as http,
        ):
            health = http.get("/healthz")

    assert_error(health, 503, "DATABASE_UNAVAILABLE")


def test_healthz__200_when_the_database_answers(client: httpx.Client) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_sigterm__ends_open_event_streams_and_exits_0(
    db_url: str, clean_db: str, tmp_path: Path
) -> None:
    api = ApiProcess(db_url, tmp_path / "api.log")
    lines: list[str] = []
    try:
        with httpx.Client(base_url=api.url, timeout=30) as http:
            task_id = create_task(http)
            artifact_id = generate(http, task_id).json()["artifact_id"]
            with http.stream(
                "GET", f"/api/v1/artifacts/{artifact_id}/events"
            ) as stream:
                reader = threading.Thread(
                    target=lambda: lines.extend(stream.iter_lines()), daemon=True
                )
                reader.start()
                wait_until(lambda: "event: state" in lines, message="the first event")

                code = api.stop(signal.SIGTERM)
                reader.join(timeout=30)
    finally:
        api.stop(signal.SIGKILL)

    assert code == 0, api.log_text()
    assert not reader.is_alive()
    assert '"events.stream_closed"' in api.log_text()
    assert '"api.stopped"' in api.log_text()
    assert (
        scalar(
            clean_db,
            "SELECT state FROM generated_artifacts WHERE id = %s",
            (artifact_id,),
        )
        == "processing"
    )


def test_status__error_appears_only_when_failed(client: httpx.Client) -> None:
    task_id = create_task(client)
    artifact_id = generate(client, task_id).json()["artifact_id"]

    processing = client.get(f"/api/v1/artifacts/{artifact_id}/status").json()
    client.post(f"/api/v1/artifacts/{artifact_id}/cancel")
    failed = client.get(f"/api/v1/artifacts/{artifact_id}/status").json()

    assert set(processing) == STATUS_FIELDS
    assert processing["progress"] is None
    assert set(failed) == STATUS_FIELDS | {"error"}
    assert set(failed["error"]) == {"error_code", "error_message", "hint"}
