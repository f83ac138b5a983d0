"""Input that breaks naive code, from the transcript file to the model's answer.

NUL bytes and unpaired surrogates cannot be stored in PostgreSQL text at
all, so they come in the ways real ones would: transcript files read by
``artifactd enqueue`` and text streamed back by the (fake) model. The rest
(emoji and mixed scripts, empty and blank transcripts, several megabytes,
ids and artifact types full of quotes, semicolons and other scripts) go in
through the CLI or a plain INSERT, as another program would enqueue them.
Each row must end with a correct result or a clear error code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.fakes.messages_server import (
    FakeMessagesServer,
    RecordedRequest,
    Reply,
    answer,
)
from tests.fakes.robot_server import FakeRobotServer
from tests.faults.audit import audit
from tests.faults.harness import (
    assert_secret_absent,
    llm_env,
    returning,
    robot_env,
    secret_key,
)
from tests.support.processes import ROOT, WorkerProcess, base_env, query, scalar

MIXED = (
    "# 周会 🚀 Réunion\nZoë 👩‍💻: 我们决定 ship it 🚀\nБорис: согласен.\nسارا: موافق.\n"
)
HOSTILE_NAME = 'quote\'s; DROP TABLE tasks;--"名前"'
# What the model "writes" back: a NUL, a lone high surrogate, emoji, Arabic.
HOSTILE_MARKDOWN = "# Minutes\n\nNUL:|\x00| lone:|\ud83d| emoji:🚀 مرحبا\n"
HOSTILE_JSON = (
    '{"items": [{"owner": "Zo\\u00eb\\u0000", "task": "ship \\ud83d it", "due": null}],'
    ' "summary": "done \\u0000 🚀"}'
)
HOSTILE_TASK_IDS = [
    "'; DROP TABLE tasks; --",
    'say "hi"',
    "id-😀-日本語",
    "back\\slash%_",
]
HOSTILE_TYPES = ["meeting_minutes'; --", '"><img src=x>', "类型;", "summary "]


def hostile_model(record: RecordedRequest) -> Reply:
    if "HOSTILE-MD" in record.user_text:
        return answer(HOSTILE_MARKDOWN)
    if "HOSTILE-JSON" in record.user_text:
        return answer(HOSTILE_JSON)
    return answer()


def write_files(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    files = {
        "nul": ("nul.txt", b"Alice: before\x00after NUL.\nBob: fine."),
        "surrogate": (
            "surrogate.json",
            b'{"title": "surrogate", "meeting_transcripts": '
            b'[{"speaker": "Ann \\ud800", "content": "bad \\udc00 half, HOSTILE-MD"}]}',
        ),
        "not_utf8": ("not-utf8.txt", b"Alice: caf\xed\xa0\x80 encoded surrogate"),
        "mixed": ("mixed.txt", MIXED.encode()),
        "empty": ("empty.txt", b""),
        "blank": ("blank.txt", b"  \n\t \n"),
        "named": (f"{HOSTILE_NAME}.txt", b"Alice: the name is the attack."),
        "big": ("big.txt", _big_transcript(3_000_000)),
    }
    paths = {}
    for key, (name, body) in files.items():
        paths[key] = folder / name
        paths[key].write_bytes(body)
    return paths


def _big_transcript(size: int) -> bytes:
    line = (
        "Speaker {n}: we reviewed the budget line by line and agreed to revisit it.\n"
    )
    lines, total, n = [], 0, 0
    while total < size:
        text = line.format(n=n % 7)
        lines.append(text)
        total += len(text)
        n += 1
    return "".join(lines).encode()


def enqueue_cli(db_url: str, *files: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "enqueue",
            *map(str, files),
            "--type",
            "meeting_minutes",
            "--max-attempts",
            "2",
            "--json",
        ],
        env=base_env(db_url),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_hostile_transcripts_ids_types_and_model_output__each_ends_with_a_result_or_a_code(
    fault_db: str, tmp_path: Path, robot: FakeRobotServer
) -> None:
    """Faults: NUL bytes, unpaired surrogates and bytes that are not UTF-8 in
    transcript files; emoji and five scripts; empty and blank transcripts; a
    3 MB transcript; a file name, task ids and artifact types with quotes,
    semicolons and other scripts; NULs and lone surrogates in model output."""
    files = write_files(tmp_path / "in")

    enqueued = enqueue_cli(fault_db, *files.values())

    assert enqueued.returncode == 1  # some files were refused, the rest went in
    for refused in ("not_utf8", "empty", "blank"):
        assert files[refused].name in enqueued.stderr
    assert "UTF-8" in enqueued.stderr
    accepted = json.loads(enqueued.stdout)
    assert len(accepted) == 5
    with psycopg.connect(fault_db, autocommit=True) as conn:
        sql_ids = _insert_hostile_rows(conn)

    key = secret_key()
    with FakeMessagesServer(require_api_key=key, responder=hostile_model) as llm:
        env = {**llm_env(llm, key), **robot_env(robot), "ARTIFACTD_CONCURRENCY": "8"}
        proc = WorkerProcess(fault_db, tmp_path / "worker.log", "--drain", **env)
        try:
            code = proc.wait(timeout_s=150)
        finally:
            proc.kill()

    result = audit(
        fault_db,
        fault="hostile transcripts, ids, types and model output",
        injected=len(files) + len(sql_ids),
        expected_ids=[e["artifact_id"] for e in accepted] + sql_ids,
        logs=[proc.log_path],
    )
    assert result.clean, result.notes
    assert code == 0
    outcomes = dict(
        query(
            fault_db,
            "SELECT a.id::text, coalesce(a.content->>'error_code', a.state) "
            "FROM generated_artifacts a",
        )
    )
    by_task = {t: outcomes[a] for t, a in _artifacts_by_task_name(fault_db)}
    assert by_task["nul"] == "success"
    assert by_task["surrogate"] == "success"
    assert by_task["周会 🚀 Réunion"] == "success"
    assert by_task[HOSTILE_NAME] == "success"
    assert by_task["big"] == "success"
    for task_id in HOSTILE_TASK_IDS:
        assert by_task[f"task {task_id}"] == "success"
    for artifact_type in HOSTILE_TYPES:
        assert by_task[f"type {artifact_type}"] == "UNKNOWN_ARTIFACT_TYPE"
    assert by_task["missing task"] == "INPUT_NOT_FOUND"
    assert by_task["empty"] == "INPUT_EMPTY"
    assert by_task["blank"] == "INPUT_EMPTY"
    assert by_task["hostile json"] == "success"

    # Stored text: no NUL, lone surrogates replaced, everything else intact.
    assert scalar(fault_db, "SELECT transcript FROM tasks WHERE name = 'nul'") == (
        "Alice: beforeafter NUL.\nBob: fine."
    )
    assert "🚀" in scalar(
        fault_db, "SELECT transcript FROM tasks WHERE name = %s", ("周会 🚀 Réunion",)
    )
    markdown = _content(fault_db, "surrogate")
    assert markdown["text"] == "# Minutes\n\nNUL:|| lone:|\ufffd| emoji:🚀 مرحبا\n"
    data = _content(fault_db, "hostile json")["data"]
    assert data["items"][0]["owner"] == "Zoë" and data["summary"] == "done  🚀"
    assert data["items"][0]["task"] == "ship \ufffd it"
    big_parts = scalar(
        fault_db,
        "SELECT (a.metadata->>'parts')::int FROM generated_artifacts a "
        "JOIN tasks t ON t.id = a.task_id WHERE t.name = 'big'",
    )
    assert big_parts > 1  # split to fit the model, then combined
    assert scalar(fault_db, "SELECT count(*) FROM tasks") == (
        5 + len(HOSTILE_TASK_IDS) + len(HOSTILE_TYPES) + 3
    )
    assert_secret_absent(key, fault_db, [proc.log_path])


def _insert_hostile_rows(conn: psycopg.Connection) -> list[str]:
    """Rows another program might INSERT; every value is a bound parameter."""
    ids = []

    def artifact(task_id: str, artifact_type: str = "meeting_minutes") -> None:
        ids.append(
            returning(
                conn,
                "INSERT INTO generated_artifacts (task_id, artifact_type, state, max_attempts) "
                "VALUES (%s, %s, 'processing', 2) RETURNING id::text",
                (task_id, artifact_type),
            )
        )

    def task(name: str, transcript: str, task_id: str | None = None) -> str:
        return str(
            returning(
                conn,
                "INSERT INTO tasks (id, name, transcript) "
                "VALUES (coalesce(%s, gen_random_uuid()::text), %s, %s) RETURNING id",
                (task_id, name, transcript),
            )
        )

    for task_id in HOSTILE_TASK_IDS:
        artifact(task(f"task {task_id}", "Alice: hostile id.", task_id))
    for artifact_type in HOSTILE_TYPES:
        artifact(task(f"type {artifact_type}", "Alice: hostile type."), artifact_type)
    artifact("nope'; DROP TABLE generated_artifacts; --")  # no such task
    artifact(task("empty", ""))
    artifact(task("blank", " \n\t "))
    artifact(task("hostile json", "Alice: HOSTILE-JSON please."), "action_items")
    return ids


def _artifacts_by_task_name(db_url: str) -> list[tuple[str, str]]:
    rows = query(
        db_url,
        "SELECT coalesce(t.name, 'missing task'), a.id::text FROM generated_artifacts a "
        "LEFT JOIN tasks t ON t.id = a.task_id",
    )
    return rows


def _content(db_url: str, task_name: str) -> dict:
    return scalar(
        db_url,
        "SELECT a.content FROM generated_artifacts a JOIN tasks t ON t.id = a.task_id "
        "WHERE t.name = %s",
        (task_name,),
    )
