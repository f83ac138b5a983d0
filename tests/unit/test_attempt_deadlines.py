"""``AttemptDeadlines``: one timer ends every attempt that outlives the limit.

Attempts here either finish without ever suspending or wait for an event
that never comes, so which of them time out does not depend on how fast the
machine is; the limit is short only so that the tests end soon.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from worker.executor import AttemptDeadlines

LIMIT_S = 0.05
# A timer that never fires would leave a stuck attempt waiting for ever: this
# turns that into a failure instead of a hung test.
GUARD_S = 30.0

T = TypeVar("T")


def _run(work: Awaitable[T]) -> T:
    async def guarded() -> T:
        return await asyncio.wait_for(work, GUARD_S)

    return asyncio.run(guarded())


async def _attempt(deadlines: AttemptDeadlines, stuck: bool) -> str:
    """What the executor does around one generator call."""
    timeout = asyncio.timeout(None)
    try:
        async with timeout:
            deadlines.add(timeout)
            try:
                if stuck:
                    await asyncio.Event().wait()
                return "finished"
            finally:
                deadlines.discard(timeout)
    except TimeoutError:
        return "timed out"


def test_deadlines__only_attempts_past_the_limit_time_out() -> None:
    deadlines = AttemptDeadlines(LIMIT_S)
    pattern = [i % 3 == 0 for i in range(30)]

    async def run() -> list[str]:
        attempts = []
        for stuck in pattern:
            attempts.append(asyncio.create_task(_attempt(deadlines, stuck)))
            await asyncio.sleep(0)  # staggered starts, as claims come in
        return await asyncio.gather(*attempts)

    results = _run(run())

    assert results == ["timed out" if stuck else "finished" for stuck in pattern]


def test_deadlines__an_attempt_after_a_quiet_spell_still_times_out() -> None:
    deadlines = AttemptDeadlines(LIMIT_S)

    async def run() -> list[str]:
        first = await _attempt(deadlines, stuck=False)  # arms the timer
        await asyncio.sleep(LIMIT_S * 2)  # the timer fires with nothing to do
        return [first, await _attempt(deadlines, stuck=True)]

    assert _run(run()) == ["finished", "timed out"]


def test_deadlines__work_across_event_loops() -> None:
    deadlines = AttemptDeadlines(LIMIT_S)

    for _ in range(2):  # the first loop ends with its timer still armed
        assert _run(_attempt(deadlines, stuck=False)) == "finished"
        assert _run(_attempt(deadlines, stuck=True)) == "timed out"


def test_deadlines__a_cancelled_attempt_is_cancelled_not_timed_out() -> None:
    deadlines = AttemptDeadlines(60.0)

    async def run() -> None:
        attempt = asyncio.create_task(_attempt(deadlines, stuck=True))
        await asyncio.sleep(0)
        attempt.cancel()  # shutdown, or a lost lease
        await attempt

    with pytest.raises(asyncio.CancelledError):
        _run(run())
