"""Worker memory with 64 streamed answers in flight.

One worker (``--concurrency 64``, the ``anthropic`` generator) and a loopback
fake of the Messages API that streams every answer slowly, in small chunks,
over ``stream_s`` seconds. The bench inserts 64 artifacts over real meeting
transcripts (the bundled AMI meetings), waits until the fake server counts
all 64 requests in flight, and samples the worker's resident set size
(psutil) until the first answer ends. It reports the idle size before any
work, the peak while 64 streams were open, and the size once all were done.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench import seed
from bench.process import BenchError, wait_until, worker
from bench.server import fresh_database
from shared import queue
from shared.transcript import read_transcripts
from tests.fakes.messages_server import (
    FakeMessagesServer,
    RecordedRequest,
    Reply,
    answer,
)
from worker.cli.demo import bundled_meetings

GOAL_MB = 150.0
MB = 1024 * 1024

# About a thousand tokens of minutes, streamed in chunks of a few tokens.
ANSWER_TEXT = "# Minutes\n\n" + "".join(
    f"- Item {i}: the team reviewed the design and agreed on the next steps.\n"
    for i in range(60)
)


def run(
    admin_url: str,
    *,
    streams: int = 64,
    stream_s: float = 10.0,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    def slow_answer(_: RecordedRequest) -> Reply:
        return answer(ANSWER_TEXT, chunk_chars=24)

    meetings = [
        t
        for path in bundled_meetings()
        if path.suffix == ".json"
        for t in read_transcripts(path)
    ]
    with (
        tempfile.TemporaryDirectory(prefix="artifactd-bench-") as tmp,
        FakeMessagesServer(latency_s=stream_s, responder=slow_answer) as fake,
        fresh_database(admin_url, "memory") as url,
    ):
        task_ids = [seed.create_task(url, m.text) for m in meetings]
        proc = worker(
            url,
            Path(tmp) / "memory.log",
            "--concurrency",
            str(streams),
            ARTIFACTD_GENERATOR="anthropic",
            ANTHROPIC_API_KEY="bench",
            ANTHROPIC_BASE_URL=fake.base_url,
        )
        try:
            ps = psutil.Process(proc.pid)
            with psycopg.connect(url, autocommit=True) as conn:
                wait_until(
                    lambda: seed.listening_backends(conn) or not proc.running(),
                    timeout_s=timeout_s,
                    what="the worker to listen",
                )
                proc.raise_if_exited("the worker exited")
                time.sleep(1.0)  # let start-up garbage settle
                idle_mb = ps.memory_info().rss / MB
                conn.execute(
                    """
                    INSERT INTO generated_artifacts (task_id, artifact_type, state)
                    SELECT (%(tasks)s::text[])[1 + g %% cardinality(%(tasks)s::text[])],
                           'meeting_minutes', 'processing'
                    FROM generate_series(1, %(count)s) AS g
                    """,
                    {"tasks": task_ids, "count": streams},
                )
                wait_until(
                    lambda: fake.in_flight >= streams or not proc.running(),
                    timeout_s=timeout_s,
                    what=f"{streams} requests in flight",
                )
                samples: list[float] = []
                while fake.in_flight >= streams and proc.running():
                    samples.append(ps.memory_info().rss / MB)
                    time.sleep(0.1)
                wait_until(
                    lambda: _unfinished(conn) == 0 or not proc.running(),
                    timeout_s=timeout_s,
                    what="every artifact to finish",
                )
                proc.raise_if_exited("the worker exited")
                after_mb = ps.memory_info().rss / MB
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE state = 'success') FROM generated_artifacts"
                ).fetchone()
                succeeded = int(row[0]) if row else 0
        finally:
            proc.stop()
        max_in_flight = fake.max_in_flight

    if not samples:
        raise BenchError("no sample taken with every stream open")
    peak_mb = max(samples)
    return {
        "benchmark": "memory",
        "streams": streams,
        "stream_s": stream_s,
        "results": {
            "idle_rss_mb": round(idle_mb, 1),
            "peak_rss_mb": round(peak_mb, 1),
            "after_rss_mb": round(after_mb, 1),
            "samples": len(samples),
            "max_in_flight": max_in_flight,
            "succeeded": succeeded,
        },
        "goal": {
            "peak_rss_mb_at_most": GOAL_MB,
            "met": peak_mb <= GOAL_MB
            and max_in_flight >= streams
            and succeeded == streams,
        },
    }


def _unfinished(conn: psycopg.Connection) -> int:
    row = conn.execute(queue.COUNT_UNFINISHED).fetchone()
    return int(row[0]) if row else 0
