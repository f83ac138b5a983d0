"""Writes a job's progress onto its row, a few times a second at most.

Each write is fenced by the lease token, so it doubles as an early check that
the row is still ours: a write that matches nothing raises ``LeaseLost`` and
the job stops instead of finishing work nobody will keep.

A job's first report starts its clock and is not written: the first write
comes with the first report at least ``min_interval_s`` later. A job that is
over by then (a short answer) writes no progress at all, its final write
following at once. The price: a first report that no other follows for a
while (the offline generator's ``extracting``, before a long extraction)
never reaches the row.
"""

from __future__ import annotations

import json
import time
from typing import Any

from psycopg_pool import AsyncConnectionPool

from shared import queue
from shared.errors import LeaseLost
from shared.text import storable

MIN_INTERVAL_S = 0.25


class ProgressWriter:
    def __init__(
        self, pool: AsyncConnectionPool, *, min_interval_s: float = MIN_INTERVAL_S
    ) -> None:
        self._pool = pool
        self._min_interval_s = min_interval_s
        self._last: dict[str, float] = {}

    async def report(
        self, artifact_id: str, lease_token: str, progress: dict[str, Any]
    ) -> None:
        now = time.monotonic()
        last = self._last.setdefault(artifact_id, now)
        if now - last < self._min_interval_s:
            return
        self._last[artifact_id] = now
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                queue.UPDATE_PROGRESS,
                {
                    "progress": json.dumps(storable(progress)),
                    "id": artifact_id,
                    "token": lease_token,
                },
            )
            if await cur.fetchone() is None:
                raise LeaseLost(artifact_id)

    def forget(self, artifact_id: str) -> None:
        self._last.pop(artifact_id, None)
