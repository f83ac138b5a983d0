"""The fleet gate on a real database, with the real SDK behind it.

Two gates on two connection pools stand for two worker processes sharing
one database. What a gate read is counted by its pool (``requests_num``, one
per connection taken); what was sent, by the fake Messages API on loopback.
Nothing here asserts how long anything took: only what was read, what was
sent, and in which order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from shared.artifact_types import ArtifactType
from shared.errors import ErrorCode
from tests.fakes.messages_server import FakeMessagesServer
from worker.gate import DatabaseGate
from worker.generators.anthropic import AnthropicGenerator
from worker.generators.base import GenerationRequest, no_progress

RATE_LIMITED = ErrorCode.LLM_RATE_LIMITED.value
MINUTES = ArtifactType(
    name="meeting_minutes",
    title={"en": "Meeting minutes"},
    model="claude-test-model",
    max_tokens=256,
    system_prompt="You write meeting minutes in Markdown.",
    user_template="Transcript:\n{transcript}",
)
REQUEST = GenerationRequest(
    artifact_id="00000000-0000-0000-0000-000000000001",
    task_id="task-1",
    task_name="Weekly sync",
    meeting_time=None,
    language="en",
    transcript="Alice: we ship on Friday.\n",
    artifact_type=MINUTES,
    locale="en",
    attempt=1,
)


@asynccontextmanager
async def pool_on(url: str) -> AsyncIterator[AsyncConnectionPool]:
    async with AsyncConnectionPool(
        url, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
    ) as pool:
        yield pool


def readings(pool: AsyncConnectionPool) -> int:
    """Connections the pool has handed out: one per reading of the pause."""
    return pool.get_stats().get("requests_num", 0)


async def eventually(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition never held")
        await asyncio.sleep(0.01)


async def lift_pause(url: str) -> float:
    """End the fleet pause now; returns when (``time.monotonic()``) it was lifted."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "UPDATE queue_controls SET paused_until = now() - interval '1 second'"
        )
    return time.monotonic()


@pytest.fixture(scope="module")
def fake() -> FakeMessagesServer:
    with FakeMessagesServer() as server:
        yield server


def generator_for(fake: FakeMessagesServer, gate: DatabaseGate) -> AnthropicGenerator:
    return AnthropicGenerator(
        api_key="test-key",
        base_url=fake.base_url,
        model_override=None,
        request_timeout_s=10.0,
        stall_timeout_s=5.0,
        attempt_timeout_s=60.0,
        max_tries=3,
        gate=gate,
    )


def test_gate__reads_the_pause_once_for_requests_that_come_within_the_window(
    clean_db: str,
) -> None:
    """One reading of "not paused" lets the requests after it go unread."""

    async def main() -> int:
        async with pool_on(clean_db) as pool:
            gate = DatabaseGate(pool, trust_open_s=3600)
            before = readings(pool)
            for _ in range(5):
                await gate.wait_open()
            return readings(pool) - before

    assert asyncio.run(main()) == 1


def test_gate__concurrent_requests_share_one_reading(clean_db: str) -> None:
    """Requests that queue behind a reading take its answer."""

    async def main() -> int:
        async with pool_on(clean_db) as pool:
            gate = DatabaseGate(pool)
            before = readings(pool)
            await asyncio.gather(*(gate.wait_open() for _ in range(20)))
            return readings(pool) - before

    assert asyncio.run(main()) == 1


def test_gate__with_no_window_every_request_reads_the_pause(clean_db: str) -> None:
    async def main() -> int:
        async with pool_on(clean_db) as pool:
            gate = DatabaseGate(pool, trust_open_s=0)
            before = readings(pool)
            for _ in range(3):
                await gate.wait_open()
            return readings(pool) - before

    assert asyncio.run(main()) == 3


def test_gate__its_own_pause_holds_its_next_request_however_long_the_window(
    clean_db: str,
) -> None:
    """``pause`` drops the trusted reading: the next request reads, and waits."""

    async def main() -> tuple[bool, float, float]:
        async with pool_on(clean_db) as pool:
            gate = DatabaseGate(pool, trust_open_s=3600)
            await gate.wait_open()  # "not paused", trusted for an hour
            await gate.pause(60, RATE_LIMITED)
            before = readings(pool)
            waiting = asyncio.create_task(gate.wait_open())
            await eventually(lambda: readings(pool) > before)
            await asyncio.sleep(0.2)  # time to go, were it not held
            held = not waiting.done()
            lifted_at = await lift_pause(clean_db)
            await waiting
            return held, lifted_at, time.monotonic()

    held, lifted_at, opened_at = asyncio.run(main())

    assert held
    assert opened_at >= lifted_at


def test_gate__a_pause_set_by_another_worker_stops_requests_once_the_window_ends(
    clean_db: str, fake: FakeMessagesServer
) -> None:
    """Worker A has just read "not paused"; worker B pauses the fleet.

    Once A's window has run out, A's next request waits for the pause and
    reaches the API only after it has been lifted.
    """
    fake.reset()
    window_s = 0.2

    async def main() -> tuple[int, float]:
        async with pool_on(clean_db) as pool_a, pool_on(clean_db) as pool_b:
            gate_a = DatabaseGate(pool_a, trust_open_s=window_s)
            generator = generator_for(fake, gate_a)
            try:
                await generator.generate(REQUEST, no_progress)  # reads "open"
                await DatabaseGate(pool_b).pause(60, RATE_LIMITED)
                await asyncio.sleep(window_s)  # A's reading is no longer trusted
                before = readings(pool_a)
                second = asyncio.create_task(generator.generate(REQUEST, no_progress))
                await eventually(lambda: readings(pool_a) > before)
                await asyncio.sleep(0.2)  # time to send, were it not held
                sent_while_paused = len(fake.requests) - 1
                lifted_at = await lift_pause(clean_db)
                await second
            finally:
                await generator.aclose()
            return sent_while_paused, lifted_at

    sent_while_paused, lifted_at = asyncio.run(main())

    assert sent_while_paused == 0
    first, second = fake.requests
    assert second.received_at >= lifted_at


def test_gate__requests_queued_behind_an_unreadable_reading_go_with_it() -> None:
    """The database is away: one reading fails, and every request goes."""

    async def main() -> int:
        # Port 1 on loopback: nothing listens, connections are refused.
        async with AsyncConnectionPool(
            "postgresql://postgres@127.0.0.1:1/postgres",
            min_size=1,
            open=False,
            reconnect_timeout=60,
        ) as pool:
            gate = DatabaseGate(pool, check_timeout_s=0.2)
            await asyncio.gather(*(gate.wait_open() for _ in range(5)))
            return readings(pool)

    assert asyncio.run(main()) == 1
