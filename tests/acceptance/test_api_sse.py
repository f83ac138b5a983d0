"""The event stream over real HTTP: the API served by uvicorn on loopback, a
real PostgreSQL whose statements NOTIFY, and a real worker where work is done.

Each stream is read by a thread into a queue, so a test waits for the next
event with a bounded ``get`` and never polls the status route.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from psycopg.rows import dict_row

from api_stub.app import create_app
from api_stub.events import APPLICATION_NAME as LISTEN_APPLICATION_NAME
from api_stub.server import serve_in_thread
from shared import queue as queue_sql
from shared import repository
from shared.settings import load_settings
from tests.support.processes import WorkerProcess, scalar, wait_until

KEEPALIVE_S = 0.2
EVENT_WAIT_S = 60.0


@pytest.fixture(scope="module")
def served(db_url: str) -> Iterator[tuple[FastAPI, str]]:
    settings = load_settings(
        database_url=db_url, api_keepalive_s=KEEPALIVE_S, locale="en"
    )
    app = create_app(settings)
    with serve_in_thread(app) as url:
        yield app, url


@pytest.fixture
def client(served: tuple[FastAPI, str], clean_db: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[1], timeout=30) as http:
        yield http


@pytest.fixture
def open_stream(client: httpx.Client) -> Iterator[Callable[[str], EventReader]]:
    """Open an event stream; streams still open at the end are hung up."""
    readers: list[EventReader] = []

    def open_(artifact_id: str) -> EventReader:
        readers.append(EventReader(client, artifact_id))
        return readers[-1]

    yield open_
    for reader in readers:
        reader.close()


class EventReader:
    """Reads one event stream in a thread; ``next()`` returns what came next.

    Items are ``(kind, value)``: ``("comment", text)``, ``("retry", ms)``,
    ``(event_name, data)``, and ``("closed", "")`` when the server ends it.
    """

    def __init__(self, client: httpx.Client, artifact_id: str) -> None:
        self.status_code: int | None = None
        self._response: httpx.Response | None = None
        self._closing = False
        self._items: queue.Queue[tuple[str, str]] = queue.Queue()
        self._client = client
        self._path = f"/api/v1/artifacts/{artifact_id}/events"
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            with self._client.stream(
                "GET", self._path, timeout=EVENT_WAIT_S
            ) as response:
                self._response = response
                self.status_code = response.status_code
                self._parse(response.iter_lines())
        except httpx.HTTPError:
            if not self._closing:
                raise
        finally:
            self._items.put(("closed", ""))

    def close(self) -> None:
        """Hang up from this side, if the server has not ended the stream."""
        self._closing = True
        if self._response is not None:
            self._response.close()
        self._thread.join(timeout=EVENT_WAIT_S)

    def _parse(self, lines: Iterator[str]) -> None:
        name, data = "", []
        for line in lines:
            if line.startswith(":"):
                self._items.put(("comment", line[1:].strip()))
            elif line == "":
                if data:
                    self._items.put((name or "message", "\n".join(data)))
                name, data = "", []
            else:
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    name = value
                elif field == "data":
                    data.append(value)
                elif field == "retry":
                    self._items.put(("retry", value))

    def next(self) -> tuple[str, str]:
        return self._items.get(timeout=EVENT_WAIT_S)

    def next_event(self) -> tuple[str, Any]:
        """The next named event with its JSON data, skipping comments and retry."""
        while True:
            kind, value = self.next()
            if kind == "closed":
                return kind, None
            if kind not in ("comment", "retry"):
                return kind, json.loads(value)

    def events_until_closed(self) -> list[tuple[str, Any]]:
        events = []
        while (event := self.next_event())[0] != "closed":
            events.append(event)
        return events


def new_artifact(client: httpx.Client, artifact_type: str = "meeting_minutes") -> str:
    task = client.post(
        "/api/v1/tasks",
        json={
            "name": "design review",
            "transcript": "Alice: we decided to ship.\nBob: I will write the docs.",
        },
    ).json()
    accepted = client.post(
        f"/api/v1/tasks/{task['task_id']}/artifacts/{artifact_type}/generate"
    )
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["artifact_id"])


def test_events__a_client_sees_processing_then_success_without_polling(
    client: httpx.Client,
    open_stream: Callable[[str], EventReader],
    clean_db: str,
    tmp_path: Path,
) -> None:
    artifact_id = new_artifact(client)
    reader = open_stream(artifact_id)
    first = reader.next_event()

    worker = WorkerProcess(
        clean_db, tmp_path / "worker.log", "--drain", ARTIFACTD_GENERATOR="offline"
    )
    try:
        events = reader.events_until_closed()
        assert worker.wait(60) == 0, worker.log_text()
    finally:
        worker.kill()

    assert reader.status_code == 200
    assert first[0] == "state"
    assert (first[1]["artifact_id"], first[1]["state"]) == (artifact_id, "processing")
    states = [data["state"] for name, data in events if name == "state"]
    assert states == ["success"]
    assert {name for name, _ in events} <= {"state", "progress", "end"}
    assert events[-1] == ("end", {"artifact_id": artifact_id, "state": "success"})
    success = next(data for name, data in events if name == "state")
    assert set(success) == {
        "artifact_id",
        "state",
        "created_at",
        "updated_at",
        "attempts",
        "progress",
    }


def test_events__progress_reports_arrive_as_they_happen(
    client: httpx.Client, open_stream: Callable[[str], EventReader], clean_db: str
) -> None:
    artifact_id = new_artifact(client, "summary")
    reader = open_stream(artifact_id)
    assert reader.next_event()[1]["state"] == "processing"

    with psycopg.connect(clean_db, autocommit=True) as conn:
        claimed = (
            conn.cursor(row_factory=dict_row)
            .execute(
                queue_sql.CLAIM_BATCH,
                {"limit": 1, "worker_id": "test-worker", "lease_s": 60},
            )
            .fetchone()
        )
        assert claimed is not None and claimed["id"] == artifact_id
        token = claimed["lease_token"]
        progress = []
        for phase in ("reading", "writing"):
            conn.execute(
                queue_sql.UPDATE_PROGRESS,
                {
                    "progress": json.dumps({"phase": phase}),
                    "id": artifact_id,
                    "token": token,
                },
            )
            progress.append(reader.next_event())
        finished = repository.update_content_and_state(
            conn,
            artifact_id,
            token,
            state="success",
            content={"format": "markdown", "text": "# ok"},
        )
        rest = reader.events_until_closed()

    assert finished
    assert [(name, data["progress"]) for name, data in progress] == [
        ("progress", {"phase": "reading"}),
        ("progress", {"phase": "writing"}),
    ]
    assert [name for name, _ in rest] == ["state", "end"]
    assert rest[0][1]["state"] == "success"
    assert rest[0][1]["attempts"] == 1


def test_events__keep_alive_comments_flow_while_nothing_changes(
    client: httpx.Client, open_stream: Callable[[str], EventReader]
) -> None:
    artifact_id = new_artifact(client)
    reader = open_stream(artifact_id)

    seen = [reader.next() for _ in range(4)]

    assert seen[0] == ("retry", "3000")
    assert seen[1][0] == "state"
    assert seen[2:] == [("comment", "keep-alive")] * 2


def test_events__a_finished_artifact_gets_its_state_then_end(
    client: httpx.Client, open_stream: Callable[[str], EventReader]
) -> None:
    artifact_id = new_artifact(client)
    assert client.post(f"/api/v1/artifacts/{artifact_id}/cancel").status_code == 200

    events = open_stream(artifact_id).events_until_closed()

    assert [name for name, _ in events] == ["state", "end"]
    state = events[0][1]
    assert state["state"] == "failed"
    assert state["error"]["error_code"] == "CANCELLED"
    assert events[1][1] == {"artifact_id": artifact_id, "state": "failed"}


def test_events__many_streams_share_one_listen_connection(
    served: tuple[FastAPI, str],
    client: httpx.Client,
    open_stream: Callable[[str], EventReader],
    clean_db: str,
) -> None:
    app, _ = served
    artifact_id = new_artifact(client)
    other_id = new_artifact(client, "summary")
    readers = [open_stream(artifact_id) for _ in range(8)]
    other = open_stream(other_id)
    for reader in (*readers, other):
        assert reader.next_event()[0] == "state"
    wait_until(
        lambda: app.state.artifactd.events.subscriber_count == 9,
        message="9 subscribers",
    )
    listening = scalar(
        clean_db,
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = %s",
        (LISTEN_APPLICATION_NAME,),
    )

    assert client.post(f"/api/v1/artifacts/{artifact_id}/cancel").status_code == 200
    endings = [reader.events_until_closed() for reader in readers]

    assert listening == 1
    for events in endings:
        assert [name for name, _ in events] == ["state", "end"]
        assert events[-1][1]["state"] == "failed"
    assert other.next() == ("comment", "keep-alive")
    wait_until(
        lambda: app.state.artifactd.events.subscriber_count == 1,
        message="ended streams to unsubscribe",
    )
    other.close()
    wait_until(
        lambda: app.state.artifactd.events.subscriber_count == 0,
        message="a client that hung up to unsubscribe",
    )


def test_events__unknown_artifact_is_a_404_in_the_error_shape(
    client: httpx.Client,
) -> None:
    response = client.get(
        "/api/v1/artifacts/00000000-0000-0000-0000-000000000000/events"
    )

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "ARTIFACT_NOT_FOUND"


def test_events__a_change_arrives_by_notify_long_before_a_keep_alive(
    db_url: str, clean_db: str
) -> None:
    # Keep-alives 60 s apart: the progress event can only have been woken by
    # the statement's NOTIFY, not by a keep-alive re-read.
    settings = load_settings(database_url=db_url, api_keepalive_s=60.0, locale="en")
    with (
        serve_in_thread(create_app(settings)) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        artifact_id = new_artifact(http, "summary")
        reader = EventReader(http, artifact_id)
        try:
            assert reader.next() == ("retry", "3000")
            assert reader.next_event()[1]["state"] == "processing"
            with psycopg.connect(clean_db, autocommit=True) as conn:
                claimed = conn.execute(
                    queue_sql.CLAIM_BATCH,
                    {"limit": 1, "worker_id": "test-worker", "lease_s": 60},
                ).fetchone()
                assert claimed is not None
                conn.execute(
                    queue_sql.UPDATE_PROGRESS,
                    {
                        "progress": json.dumps({"phase": "writing"}),
                        "id": artifact_id,
                        "token": claimed[5],
                    },
                )
            kind, value = reader.next()
        finally:
            reader.close()

    assert kind == "progress"
    assert json.loads(value)["progress"] == {"phase": "writing"}


def test_events__a_row_changed_by_hand_without_notify_is_seen_at_a_keep_alive(
    client: httpx.Client, open_stream: Callable[[str], EventReader], clean_db: str
) -> None:
    artifact_id = new_artifact(client)
    reader = open_stream(artifact_id)
    assert reader.next_event()[1]["state"] == "processing"

    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(
            "UPDATE generated_artifacts SET state = 'failed', finished_at = now(), "
            """content = '{"error_code": "CANCELLED"}' WHERE id = %s""",
            (artifact_id,),
        )
    events = reader.events_until_closed()

    assert [name for name, _ in events] == ["state", "end"]
    assert events[0][1]["state"] == "failed"
