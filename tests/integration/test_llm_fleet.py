"""Worker processes with the anthropic generator against the fake Messages API.

Real ``python -m worker run`` subprocesses talk, through the real SDK, to a
``FakeMessagesServer`` running in this process, so what the tests see is what
a fleet sends over HTTP: the code each row ends with, how many requests one
artifact costs, how many are in flight at once and when they start. Nothing
here asserts how long anything took; only counts and the order of recorded
events.

Starting a worker costs seconds of imports, so the module starts four:

- ``drained``: one ``--drain`` worker runs once over one artifact per
  scenario (an outcome, a retry path, a long transcript) and exit; several
  tests then read what happened. A scenario is picked by a marker in the
  task name, which every request's user prompt carries, parts and combine
  included.
- ``capped``: three workers of four slots under a fleet cap of five stay up
  for the tests that need a live fleet (the 429 pause, the cap, progress).

Each fleet has a database of its own. The gate those workers share is also
checked on its own, against the session database.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from shared.errors import CATALOG, ErrorCode
from shared.schema import migrate
from tests.conftest import create_database, drop_database
from tests.fakes.messages_server import (
    FakeMessagesServer,
    RecordedRequest,
    Reply,
    answer,
    bad_request,
    credit_exhausted,
    delayed,
    drop,
    error_event,
    forbidden,
    http_error,
    overloaded,
    rate_limited,
    refusal,
    server_error,
    spend_limited,
    stall,
    truncated,
    unauthorized,
)
from tests.support.processes import WorkerProcess, query, wait_until, workers
from worker.gate import DatabaseGate
from worker.generators.anthropic import COMBINE_NOTE, MAX_TRIES

API_KEY = f"test-key-{uuid.uuid4().hex}"
MODEL = "claude-fleet-test"
MAX_ATTEMPTS = 2
TRANSCRIPT = "Alice: we ship on Friday.\nBob: I will write the release notes.\n"
SCENARIO_RE = re.compile(r"scenario=([a-z0-9_]+)")
PART_RE = re.compile(r"part (\d+) of (\d+)")
# Slack for comparing the fake's clock with pauses measured by PostgreSQL's.
CLOCK_TOLERANCE_S = 0.1
HONOURED_RETRY_AFTER_S = 2.5  # longer than the first queue backoff can draw
PAUSE_RETRY_AFTER_S = 3.5
FLEET_CAP = 5


def llm_env(fake: FakeMessagesServer, **extra: str) -> dict[str, str]:
    """Worker settings for the anthropic generator pointed at ``fake``."""
    env = {
        "ARTIFACTD_GENERATOR": "anthropic",
        "ANTHROPIC_API_KEY": API_KEY,
        "ANTHROPIC_BASE_URL": fake.base_url,
        "ARTIFACTD_MODEL": MODEL,
        "ARTIFACTD_LOCALE": "en",
        "ARTIFACTD_LEASE_S": "5",
        "ARTIFACTD_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        # Short, so that timeouts and stalls are cheap to provoke, yet long
        # enough that a worker starting thirty jobs on a busy machine does
        # not see a stall where there is none.
        "ARTIFACTD_REQUEST_TIMEOUT_S": "3",
        "ARTIFACTD_STALL_TIMEOUT_S": "1.5",
        "ARTIFACTD_ATTEMPT_TIMEOUT_S": "20",
        "ARTIFACTD_POLL_INTERVAL_S": "0.5",
        "ARTIFACTD_SHUTDOWN_GRACE_S": "2",
    }
    env.update(extra)
    return env


def enqueue(
    url: str,
    scenario: str,
    transcript: str = TRANSCRIPT,
    *,
    artifact_type: str = "meeting_minutes",
    missing_task: bool = False,
) -> str:
    """A task named for ``scenario`` and one processing artifact; its id."""
    with psycopg.connect(url, autocommit=True) as conn:
        task_id = f"missing-{scenario}"
        if not missing_task:
            task = conn.execute(
                "INSERT INTO tasks (name, transcript) VALUES (%s, %s) RETURNING id",
                (f"scenario={scenario}", transcript),
            ).fetchone()
            assert task is not None
            task_id = task[0]
        row = conn.execute(
            "INSERT INTO generated_artifacts"
            " (task_id, artifact_type, state, max_attempts)"
            " VALUES (%s, %s, 'processing', %s) RETURNING id::text",
            (task_id, artifact_type, MAX_ATTEMPTS),
        ).fetchone()
    assert row is not None
    return str(row[0])


def artifact(url: str, artifact_id: str) -> dict[str, Any]:
    rows = query(
        url,
        "SELECT state, content, metadata, attempts FROM generated_artifacts"
        " WHERE id = %s",
        (artifact_id,),
    )
    state, content, metadata, attempts = rows[0]
    return {
        "state": state,
        "content": content,
        "metadata": metadata,
        "attempts": attempts,
    }


def unfinished(url: str) -> int:
    rows = query(
        url, "SELECT count(*) FROM generated_artifacts WHERE state = 'processing'"
    )
    return int(rows[0][0])


def scenario_of(record: RecordedRequest) -> str:
    match = SCENARIO_RE.search(record.user_text)
    return match.group(1) if match else ""


def log_events(procs: list[WorkerProcess]) -> list[dict[str, Any]]:
    """Every JSON log line the workers wrote."""
    events = []
    for proc in procs:
        for line in proc.log_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def assert_key_never_logged(procs: list[WorkerProcess]) -> None:
    for proc in procs:
        assert API_KEY not in proc.log_text(), f"API key in {proc.log_path.name}"


@pytest.fixture(scope="module")
def module_db(pg_admin_url: str) -> Iterator[Any]:
    """Makes databases at the newest revision; drops them with the module."""
    made: list[str] = []

    def make() -> str:
        url = create_database(pg_admin_url, "artifactd_llm")
        made.append(url)
        migrate(url)
        return url

    yield make
    for url in made:
        drop_database(pg_admin_url, url)


# -- one drained run over every scenario ----------------------------------------


class ScriptedScenarios:
    """A responder: each scenario's replies in order, the last one repeating.

    Steps of a split transcript (each part, the combine) count apart, so a
    scenario can fail a step a given number of times. Runs on the fake
    server's request threads, hence the lock.
    """

    def __init__(self, replies: dict[str, list[Reply]]) -> None:
        self._replies = replies
        self._seen: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def __call__(self, record: RecordedRequest) -> Reply:
        name, step = scenario_of(record), step_of(record)
        with self._lock:
            self._seen[name, step] += 1
            seen = self._seen[name, step]
        if name == "split":
            return answer(f"# Notes for {step}\n")
        if name == "worst":
            # Every step fails until its last try; the combine never succeeds.
            if step == "combine" or seen % MAX_TRIES:
                return server_error()
            return answer(f"# Notes for {step}\n")
        replies = self._replies.get(name) or [answer()]
        return replies[min(seen - 1, len(replies) - 1)]


def is_combine(record: RecordedRequest) -> bool:
    return COMBINE_NOTE.strip() in record.system


def step_of(record: RecordedRequest) -> str:
    """``combine``, ``part i of n``, or ``whole``."""
    if is_combine(record):
        return "combine"
    match = PART_RE.search(record.system)
    return match.group(0) if match else "whole"


RETRYABLE_COST = MAX_ATTEMPTS * MAX_TRIES
# Scenario: (replies in order, final code or None for success, requests spent).
OUTCOMES: dict[str, tuple[list[Reply], ErrorCode | None, int]] = {
    "ok": ([answer()], None, 1),
    "retried_in_attempt": ([server_error(), answer()], None, 2),
    "retried_by_queue": (
        [server_error()] * MAX_TRIES + [answer()],
        None,
        MAX_TRIES + 1,
    ),
    "timeout": ([delayed(30)], ErrorCode.LLM_TIMEOUT, RETRYABLE_COST),
    "rate_limited": ([rate_limited()], ErrorCode.LLM_RATE_LIMITED, RETRYABLE_COST),
    "overloaded": ([overloaded()], ErrorCode.LLM_OVERLOADED, RETRYABLE_COST),
    "overloaded_mid_stream": (
        [error_event("overloaded_error")],
        ErrorCode.LLM_OVERLOADED,
        RETRYABLE_COST,
    ),
    "server_error": ([server_error()], ErrorCode.LLM_UNAVAILABLE, RETRYABLE_COST),
    "connection_dropped": ([drop()], ErrorCode.LLM_UNAVAILABLE, RETRYABLE_COST),
    "stalled": ([stall(30)], ErrorCode.LLM_STREAM_STALLED, RETRYABLE_COST),
    "unauthorized": ([unauthorized()], ErrorCode.LLM_AUTH_FAILED, 1),
    "forbidden": ([forbidden()], ErrorCode.LLM_AUTH_FAILED, 1),
    "key_echoed": (
        [http_error(401, f"invalid x-api-key: {API_KEY}")],
        ErrorCode.LLM_AUTH_FAILED,
        1,
    ),
    "spend_limit": ([spend_limited()], ErrorCode.LLM_SPEND_LIMIT, 1),
    "credit_exhausted": ([credit_exhausted()], ErrorCode.LLM_SPEND_LIMIT, 1),
    "bad_request": ([bad_request()], ErrorCode.LLM_BAD_REQUEST, 1),
    "no_such_model": ([http_error(404, "model: nope")], ErrorCode.LLM_BAD_REQUEST, 1),
    "prompt_too_long": (
        [bad_request("prompt is too long: 212000 tokens > 200000 maximum")],
        ErrorCode.INPUT_TOO_LONG,
        1,
    ),
    "truncated": ([truncated()], ErrorCode.OUTPUT_TRUNCATED, 1),
    "refused": ([refusal()], ErrorCode.OUTPUT_REFUSED, 1),
}
# Scenarios that need their own input: (transcript, type, final code, requests).
INPUTS: dict[str, tuple[str, str, ErrorCode, int]] = {
    "invalid_json": (TRANSCRIPT, "action_items", ErrorCode.OUTPUT_INVALID, 1),
    "empty": (" \n ", "meeting_minutes", ErrorCode.INPUT_EMPTY, 0),
    "unknown_type": (TRANSCRIPT, "no_such_type", ErrorCode.UNKNOWN_ARTIFACT_TYPE, 0),
    "line_too_long": (
        "Alice: " + "very " * 8000 + "long.\n",
        "summary",
        ErrorCode.INPUT_TOO_LONG,
        0,
    ),
}


def long_transcript(lines: int) -> str:
    return "".join(
        f"Speaker {i % 5}: item {i} is on track and the owner will report "
        "back on it next week with numbers.\n"
        for i in range(lines)
    )


LONG_TRANSCRIPT = long_transcript(500)


@dataclass
class DrainedRun:
    url: str
    ids: dict[str, str]
    fake: FakeMessagesServer
    procs: list[WorkerProcess]

    def row(self, scenario: str) -> dict[str, Any]:
        return artifact(self.url, self.ids[scenario])

    def requests(self, scenario: str) -> list[RecordedRequest]:
        return [r for r in self.fake.requests if scenario_of(r) == scenario]

    def events(self, scenario: str) -> list[dict[str, Any]]:
        artifact_id = self.ids[scenario]
        return [
            e for e in log_events(self.procs) if e.get("artifact_id") == artifact_id
        ]


@pytest.fixture(scope="module")
def drained(
    module_db: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DrainedRun]:
    """One worker drains one artifact per scenario, at debug log level."""
    url = module_db()
    replies = {name: script for name, (script, _, _) in OUTCOMES.items()}
    replies["invalid_json"] = [answer("these are not the JSON items")]
    replies["honoured"] = [
        *[server_error()] * (MAX_TRIES - 1),
        rate_limited(retry_after=HONOURED_RETRY_AFTER_S),
        answer(),
    ]
    ids = {name: enqueue(url, name) for name in OUTCOMES}
    for name, (transcript, artifact_type, _, _) in INPUTS.items():
        ids[name] = enqueue(url, name, transcript, artifact_type=artifact_type)
    ids["missing_task"] = enqueue(url, "missing_task", missing_task=True)
    ids["honoured"] = enqueue(url, "honoured")
    for name in ("split", "worst"):
        ids[name] = enqueue(url, name, LONG_TRANSCRIPT, artifact_type="summary")

    with FakeMessagesServer(responder=ScriptedScenarios(replies)) as fake:
        env = llm_env(
            fake,
            # Small enough that the summary type splits LONG_TRANSCRIPT.
            ARTIFACTD_CONTEXT_TOKENS="8000",
            ARTIFACTD_LOG_LEVEL="debug",
        )
        tmp_path = tmp_path_factory.mktemp("drained")
        with workers(
            url, tmp_path, 1, "--drain", "--concurrency", "32", **env
        ) as procs:
            for proc in procs:
                assert proc.wait(timeout_s=120) == 0, proc.log_text()[-2000:]
        yield DrainedRun(url, ids, fake, procs)


def test_drained__each_llm_outcome_ends_the_row_with_its_code(
    drained: DrainedRun,
) -> None:
    """content.error_code, message and hint from the catalog; attempts as coded."""
    for name, (_, code, _) in OUTCOMES.items():
        row = drained.row(name)

        if code is None:
            assert row["state"] == "success", (name, row["content"])
            continue
        assert row["state"] == "failed", name
        assert row["content"]["error_code"] == code.value, (name, row["content"])
        assert row["content"]["error_message"].startswith(CATALOG[code].message["en"])
        assert row["content"]["hint"] == CATALOG[code].hint["en"]
        attempts = MAX_ATTEMPTS if CATALOG[code].retryable else 1
        assert row["attempts"] == attempts, name
        errors = [e["error_code"] for e in row["metadata"]["errors"]]
        assert errors == [code.value] * attempts, name
    assert drained.row("retried_in_attempt")["attempts"] == 1
    assert drained.row("retried_by_queue")["attempts"] == 2


def test_drained__input_problems_fail_at_once_with_their_code(
    drained: DrainedRun,
) -> None:
    for name, (_, _, code, _) in INPUTS.items():
        row = drained.row(name)

        assert row["content"]["error_code"] == code.value, (name, row["content"])
        assert row["attempts"] == 1
    missing = drained.row("missing_task")
    assert missing["content"]["error_code"] == ErrorCode.INPUT_NOT_FOUND.value


def test_drained__requests_per_artifact_stay_within_the_documented_bound(
    drained: DrainedRun,
) -> None:
    """Permanent codes stop at one request; transient ones at attempts * tries."""
    costs = {name: cost for name, (_, _, cost) in OUTCOMES.items()}
    costs |= {name: cost for name, (_, _, _, cost) in INPUTS.items()}
    costs["missing_task"] = 0

    spent = {name: len(drained.requests(name)) for name in costs}

    assert spent == costs


def test_drained__worst_case_split_costs_exactly_the_documented_maximum(
    drained: DrainedRun,
) -> None:
    """Every step tried max_tries times in every attempt: (P + 1) * tries each."""
    parts = {step_of(r) for r in drained.requests("worst")} - {"combine"}

    spent = len(drained.requests("worst"))

    assert len(parts) >= 2
    assert spent == MAX_ATTEMPTS * (len(parts) + 1) * MAX_TRIES
    row = drained.row("worst")
    assert row["content"]["error_code"] == ErrorCode.LLM_UNAVAILABLE.value


def test_drained__long_transcript_is_generated_in_parts_and_combined(
    drained: DrainedRun,
) -> None:
    requests = drained.requests("split")
    parts = [r for r in requests if not is_combine(r)]
    combines = [r for r in requests if is_combine(r)]
    count = len(parts)

    assert count >= 2
    assert [step_of(r) for r in parts] == [
        f"part {i} of {count}" for i in range(1, count + 1)
    ]
    for line in LONG_TRANSCRIPT.splitlines():
        assert sum(line in r.user_text for r in parts) == 1, line
    assert len(combines) == 1
    for i in range(1, count + 1):
        assert f"# Notes for part {i} of {count}" in combines[0].user_text
    row = drained.row("split")
    assert row["state"] == "success"
    assert row["content"]["text"] == "# Notes for combine\n"
    assert row["metadata"]["parts"] == count
    assert row["metadata"]["requests"] == count + 1


def test_drained__queue_backoff_between_attempts_honours_retry_after(
    drained: DrainedRun,
) -> None:
    """The last try's retry-after, longer than the backoff, sets run_after."""
    scheduled = [
        e
        for e in drained.events("honoured")
        if e["event"] == "artifact.retry_scheduled"
    ]
    requests = drained.requests("honoured")

    assert len(scheduled) == 1
    assert scheduled[0]["error_code"] == ErrorCode.LLM_RATE_LIMITED.value
    assert scheduled[0]["retry_in_s"] >= HONOURED_RETRY_AFTER_S
    assert len(requests) == MAX_TRIES + 1
    limited = requests[MAX_TRIES - 1]
    assert limited.status == 429 and limited.finished_at is not None
    resume_at = limited.finished_at + HONOURED_RETRY_AFTER_S - CLOCK_TOLERANCE_S
    assert requests[-1].received_at >= resume_at
    row = drained.row("honoured")
    assert (row["state"], row["attempts"]) == ("success", 2)


def test_drained__sends_the_configured_model_and_never_logs_the_key(
    drained: DrainedRun,
) -> None:
    """At debug level too, and when the API echoes the key in an error."""
    requests = drained.fake.requests
    echoed = drained.row("key_echoed")

    assert {r.body["model"] for r in requests} == {MODEL}
    assert {r.headers["authorization"] for r in requests} == {f"Bearer {API_KEY}"}
    assert drained.row("ok")["metadata"]["model"] == MODEL
    assert echoed["content"]["error_code"] == ErrorCode.LLM_AUTH_FAILED.value
    assert API_KEY not in json.dumps(echoed)
    assert any(e["level"] == "debug" for e in log_events(drained.procs))
    assert_key_never_logged(drained.procs)


# -- a live fleet of three under a cap ---------------------------------------


@dataclass
class CappedFleet:
    url: str
    fake: FakeMessagesServer
    procs: list[WorkerProcess]

    def drain(self) -> None:
        wait_until(lambda: unfinished(self.url) == 0, timeout_s=90, message="drain")


@pytest.fixture(scope="module")
def capped(
    module_db: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CappedFleet]:
    """Three workers of four slots each, a fleet cap of five, listening."""
    url = module_db()
    with FakeMessagesServer() as fake:
        env = llm_env(
            fake,
            ARTIFACTD_FLEET_CONCURRENCY=str(FLEET_CAP),
            ARTIFACTD_REQUEST_TIMEOUT_S="10",
            ARTIFACTD_STALL_TIMEOUT_S="5",
        )
        tmp_path = tmp_path_factory.mktemp("capped")
        with workers(url, tmp_path, 3, "--concurrency", "4", **env) as procs:
            wait_until(
                lambda: all('"listener.connected"' in p.log_text() for p in procs),
                timeout_s=90,
                message="every worker listening",
            )
            yield CappedFleet(url, fake, procs)

            for proc in procs:
                proc.signal(signal.SIGTERM)
            for proc in procs:
                assert proc.wait(timeout_s=30) == 0
            assert_key_never_logged(procs)


class PauseScript:
    """Slow answers for the first four requests, a 429 for the fifth, then fast.

    With a cap of five the fifth request finds every slot of the fleet busy,
    so nothing else can start until a slow answer ends or the pause lifts.
    """

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def __call__(self, record: RecordedRequest) -> Reply:
        with self._lock:
            index = self._count
            self._count += 1
        if index < FLEET_CAP - 1:
            return answer(chunk_chars=8, chunk_interval_s=0.2)
        if index == FLEET_CAP - 1:
            return rate_limited(retry_after=PAUSE_RETRY_AFTER_S)
        return answer()


def test_capped__429_with_retry_after_stops_every_worker_until_it_passes(
    capped: CappedFleet,
) -> None:
    """No request starts anywhere between the 429 and the end of its retry-after."""
    capped.fake.reset()
    capped.fake.responder = PauseScript()
    ids = [enqueue(capped.url, f"paused_{i}") for i in range(12)]

    capped.drain()

    requests = sorted(capped.fake.requests, key=lambda r: r.received_at)
    limited = [r for r in requests if r.status == 429]
    assert len(limited) == 1 and limited[0].finished_at is not None
    before = requests[: requests.index(limited[0])]
    after = requests[requests.index(limited[0]) + 1 :]
    resume_at = limited[0].finished_at + PAUSE_RETRY_AFTER_S - CLOCK_TOLERANCE_S
    # Slots came free, with rows waiting, well before the pause lifted: the
    # quiet that follows is the pause's doing, not a lack of room.
    assert len(before) == FLEET_CAP - 1
    assert min(r.finished_at or resume_at for r in before) < resume_at - 1.0
    assert len(requests) == len(ids) + 1  # one more: the 429's second try
    assert min(r.received_at for r in after) >= resume_at
    assert {artifact(capped.url, i)["state"] for i in ids} == {"success"}
    assert any(e["event"] == "fleet.paused" for e in log_events(capped.procs))


def test_capped__never_has_more_requests_in_flight_than_the_fleet_cap(
    capped: CappedFleet,
) -> None:
    """Twelve slots across three workers, a cap of five: five at most, and five."""
    capped.fake.reset()
    capped.fake.responder = lambda _: answer(chunk_chars=8, chunk_interval_s=0.06)
    ids = [enqueue(capped.url, f"capped_{i}") for i in range(30)]

    capped.drain()

    assert len(capped.fake.requests) == len(ids)
    assert capped.fake.max_in_flight == FLEET_CAP
    rows = [artifact(capped.url, i) for i in ids]
    assert {row["state"] for row in rows} == {"success"}
    assert len({row["metadata"]["worker_id"] for row in rows}) >= 2


def test_capped__progress_appears_on_the_row_while_the_answer_streams(
    capped: CappedFleet,
) -> None:
    """metadata.progress grows while the row is still processing."""
    text = "".join(f"- point {i} of the meeting\n" for i in range(40))
    capped.fake.reset()
    capped.fake.script(answer(text, chunk_chars=20, chunk_interval_s=0.05))
    artifact_id = enqueue(capped.url, "progress")

    def streamed_chars() -> int:
        row = artifact(capped.url, artifact_id)
        if row["state"] != "processing":
            return -1
        return int((row["metadata"].get("progress") or {}).get("output_chars", 0))

    first = wait_until(lambda: max(streamed_chars(), 0), timeout_s=30)
    second = wait_until(lambda: c if (c := streamed_chars()) > first else 0)
    capped.drain()

    assert 0 < first < second < len(text)
    row = artifact(capped.url, artifact_id)
    assert row["state"] == "success"
    assert row["content"]["text"] == text
    assert row["metadata"]["progress"]["phase"] == "generating"


# -- the gate on its own ---------------------------------------------------------


def test_gate__wait_open_holds_until_the_fleet_pause_has_passed(
    clean_db: str,
) -> None:
    """A shorter pause never shortens a longer one; waiting outlasts both."""

    async def pause_then_wait() -> tuple[float, float]:
        async with AsyncConnectionPool(
            clean_db, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
        ) as pool:
            gate = DatabaseGate(pool)
            await gate.pause(1.0, ErrorCode.LLM_RATE_LIMITED.value)
            await gate.pause(0.1, ErrorCode.LLM_OVERLOADED.value)
            paused_s = await gate.remaining_s()
            await gate.wait_open()
            return paused_s, await gate.remaining_s()

    paused_s, left_s = asyncio.run(pause_then_wait())

    assert 0.1 < paused_s <= 1.0
    assert left_s == 0.0


def test_gate__fails_open_when_the_database_is_away() -> None:
    """Neither a request nor a 429 fails its artifact for want of the database."""

    async def use_gate() -> type[BaseException] | None:
        # Port 1 on loopback: nothing listens, connections are refused.
        async with AsyncConnectionPool(
            "postgresql://postgres@127.0.0.1:1/postgres",
            min_size=1,
            open=False,
            reconnect_timeout=60,
        ) as pool:
            gate = DatabaseGate(pool, check_timeout_s=0.2)
            try:
                await gate.remaining_s()
            except Exception as exc:  # the precondition: the pause is unreadable
                unreadable: type[BaseException] | None = type(exc)
            else:
                unreadable = None
            await gate.pause(5.0, ErrorCode.LLM_RATE_LIMITED.value)
            await gate.wait_open()
            return unreadable

    unreadable = asyncio.run(use_gate())

    assert unreadable is PoolTimeout
