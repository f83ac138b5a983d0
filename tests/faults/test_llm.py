"""Faults in the LLM: hanging, slow, cut mid-stream, or echoing our key back.

The fake Messages API decides per row from a marker in the transcript, and
counts every request, so the test also sees the bound on requests per
artifact (tries per attempt times attempts).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from pathlib import Path

from tests.fakes.messages_server import (
    FakeMessagesServer,
    RecordedRequest,
    Reply,
    answer,
    delayed,
    drop,
    http_error,
    stall,
)
from tests.fakes.robot_server import FakeRobotServer
from tests.faults.audit import audit
from tests.faults.harness import (
    assert_secret_absent,
    enqueue,
    llm_env,
    robot_env,
    secret_key,
)
from tests.support.processes import WorkerProcess, query

MAX_ATTEMPTS = 2
TRIES_PER_ATTEMPT = 3  # worker.generators.anthropic.MAX_TRIES

# marker -> (final state, error code, attempts)
EXPECTED = {
    "ok": ("success", None, 1),
    "slow": ("success", None, 1),
    "stall-once": ("success", None, 1),
    "drop-once": ("success", None, 1),
    "stall-always": ("failed", "LLM_STREAM_STALLED", MAX_ATTEMPTS),
    "drop-always": ("failed", "LLM_UNAVAILABLE", MAX_ATTEMPTS),
    "too-slow": ("failed", "LLM_TIMEOUT", MAX_ATTEMPTS),
    "key-echo": ("failed", "LLM_AUTH_FAILED", 1),
}
ROW_RE = re.compile(r"ROW-(\d+)-([a-z-]+)-END")


class ScriptedLLM:
    """Answers each request by its row's marker; counts requests per row."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, record: RecordedRequest) -> Reply:
        match = ROW_RE.search(record.user_text)
        if match is None:
            return answer()
        row, marker = match.group(0), match.group(2)
        with self._lock:
            self.requests[row] += 1
            first = self.requests[row] == 1
        if marker == "slow":
            return Reply(delay_s=0.4, chunk_interval_s=0.1)
        if marker == "stall-always" or (marker == "stall-once" and first):
            return stall(30.0, after_chunks=1)
        if marker == "drop-always" or (marker == "drop-once" and first):
            return drop(after_chunks=1)
        if marker == "too-slow":
            return delayed(30.0)
        if marker == "key-echo":
            # A hostile or buggy upstream quoting the credential back.
            return http_error(401, f"invalid x-api-key: {self.key}")
        return answer()


def test_llm_hangs_stalls_slows_and_drops__each_row_ends_once_with_its_code(
    fault_db: str, tmp_path: Path, robot: FakeRobotServer
) -> None:
    """Faults: the model never answers (too slow for the request timeout),
    stalls mid-stream once or always, answers slowly but in time, drops the
    connection mid-stream once or always, and answers 401 quoting our key."""
    key = secret_key()
    script = ScriptedLLM(key)
    markers = [m for m in EXPECTED for _ in range(2)]
    ids = enqueue(
        fault_db,
        [f"Alice: ROW-{n}-{m}-END\nBob: noted." for n, m in enumerate(markers)],
        max_attempts=MAX_ATTEMPTS,
    )
    env = {
        **robot_env(robot),
        "ARTIFACTD_CONCURRENCY": "16",
        "ARTIFACTD_STALL_TIMEOUT_S": "0.5",
        "ARTIFACTD_REQUEST_TIMEOUT_S": "1.5",
        "ARTIFACTD_ATTEMPT_TIMEOUT_S": "20",
        "ARTIFACTD_LEASE_S": "5",
    }

    with FakeMessagesServer(require_api_key=key, responder=script) as llm:
        proc = WorkerProcess(
            fault_db, tmp_path / "worker.log", "--drain", **llm_env(llm, key), **env
        )
        try:
            code = proc.wait(timeout_s=150)
        finally:
            proc.kill()

    result = audit(
        fault_db,
        fault="LLM stalls, hangs, is slow, drops mid-stream, echoes the key",
        injected=len(EXPECTED) - 1,
        expected_ids=ids,
        logs=[proc.log_path],
    )
    assert result.clean, result.notes
    assert code == 0
    rows = query(
        fault_db,
        "SELECT t.transcript, a.state, a.content->>'error_code', a.attempts "
        "FROM generated_artifacts a JOIN tasks t ON t.id = a.task_id",
    )
    for transcript, state, error_code, attempts in rows:
        match = ROW_RE.search(transcript)
        assert match is not None
        assert (state, error_code, attempts) == EXPECTED[match.group(2)], match.group(0)
        # The documented bound: tries per attempt times attempts.
        assert 1 <= script.requests[match.group(0)] <= TRIES_PER_ATTEMPT * MAX_ATTEMPTS
    assert_secret_absent(key, fault_db, [proc.log_path])
