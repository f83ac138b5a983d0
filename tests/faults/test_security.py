"""Security as a fault: callers without the token, SQL built from text, a
worker role that may do no more than it needs.

The API key never reaching logs or rows is checked where a real worker ran
with one: ``test_llm.py``, ``test_hostile_input.py`` (``assert_secret_absent``);
the robot key the same way in ``test_webhook.py``.
"""

from __future__ import annotations

import re
import signal
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from pydantic import SecretStr
from starlette.routing import Route

from tests.fakes.messages_server import (
    FakeMessagesServer,
    RecordedRequest,
    Reply,
    answer,
    http_error,
)
from tests.fakes.robot_server import FakeRobotServer
from tests.faults.audit import Audit, audit, log_events, record
from tests.faults.harness import enqueue, llm_env, robot_env, secret_key
from tests.faults.sql_scan import scan_files, sql_compositions
from tests.support.pgserver import PgServer
from tests.support.processes import ROOT, WorkerProcess, query, scalar, wait_until

# ---------------------------------------------------------------------------
# No SQL built from runtime strings
# ---------------------------------------------------------------------------

# What ships (pyproject's packages); tests and benchmarks build SQL freely.
PACKAGES = ("shared", "worker", "api_stub", "migrations")


def product_sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_sql_scanner__flags_text_from_run_time_and_passes_constants() -> None:
    """The scanner itself must be able to fail: a planted bad example."""
    planted = """
TABLE_SQL = "generated_artifacts"
GOOD = f"SELECT id FROM {TABLE_SQL}"
GOOD_TOO = GOOD.replace("id", "state")
def bad(cur, name, ids, column):
    cur.execute(f"SELECT * FROM tasks WHERE name = '{name}'")
    cur.execute("DELETE FROM tasks WHERE id IN (%s)" % ids)
    cur.execute("SELECT " + column + " FROM tasks")
    cur.execute("UPDATE tasks SET name = '{}'".format(name))
    for index in ("a", "b"):
        cur.execute(f"DROP INDEX ix_{index}")
"""

    found = sql_compositions(planted)

    kinds = Counter((c.kind, c.constant) for c in found)
    assert kinds == {
        ("f-string", True): 2,
        ("replace", True): 1,
        ("f-string", False): 1,
        ("%", False): 1,
        ("+", False): 1,
        ("format", False): 1,
    }


def test_no_sql_is_built_from_run_time_strings_in_shipped_code() -> None:
    """Every SQL composition in shared/, worker/, api_stub/ and migrations/
    puts together only literals and module constants."""
    compositions = scan_files(product_sources(), ROOT)

    unsafe = [c for c in compositions if not c.constant]
    assert unsafe == [], "SQL built from run-time text; use parameters or psycopg.sql"
    # The known constant compositions are seen, so the scan reaches them.
    seen = {c.path for c in compositions}
    assert {"shared/queue.py", "shared/repository.py"} <= seen


# ---------------------------------------------------------------------------
# The API token on every route
# ---------------------------------------------------------------------------

# Routes that are open on purpose: the health check, and the operator page's
# sign-in, sign-out and static files (which hold no data).
OPEN_ROUTES = {
    ("GET", "/healthz"),
    ("GET", "/ui/static/{name}"),
    ("POST", "/ui/login"),
    ("POST", "/ui/logout"),
}


def test_api_token_is_required_on_every_route_but_the_open_ones(fault_db: str) -> None:
    """Fault: callers with no token, a wrong token or the wrong scheme, on
    every route the app has (found from the app, so a new route is covered)."""
    from starlette.testclient import TestClient

    from api_stub.app import create_app
    from shared.settings import Settings

    token = secret_key()
    settings = Settings(
        database_url=SecretStr(fault_db),
        api_token=SecretStr(token),
        api_max_body_bytes=4096,
    )
    app = create_app(settings, url=fault_db)
    artifact_id, task_id = _one_artifact(fault_db)
    # Unknown ids: the right token then meets a 404, never an endless event
    # stream; the real row is asked for once, without a token, below.
    values = {
        "artifact_id": str(uuid.uuid4()),
        "task_id": "no-such-task",
        "artifact_type": "summary",
        "batch_id": str(uuid.uuid4()),
        "name": "app.js",
    }
    routes = sorted(_routes(app.routes))
    wrong = {
        "none": {},
        "wrong token": {"Authorization": f"Bearer {token}x"},
        "wrong scheme": {"Authorization": f"Basic {token}"},
        "empty bearer": {"Authorization": "Bearer "},
    }

    checked = 0
    with TestClient(app) as client:
        for method, path in routes:
            url = re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "x"), path)
            if (method, path) in OPEN_ROUTES:
                continue
            for label, headers in wrong.items():
                answer_ = client.request(method, url, headers=headers, json={})
                assert answer_.status_code == 401, f"{method} {path} with {label}"
            right = client.request(
                method, url, headers={"Authorization": f"Bearer {token}"}, json={}
            )
            assert right.status_code != 401, f"{method} {path} refuses the right token"
            checked += 1
        for path in (
            f"/api/v1/artifacts/{artifact_id}",
            f"/api/v1/tasks/{task_id}/artifacts",
            f"/ui/artifacts/{artifact_id}",
            f"/ui/api/artifacts/{artifact_id}",
        ):
            refused = client.get(path)
            assert refused.status_code == 401 and "private" not in refused.text, path
        # Limits hold for callers with the token too.
        too_big = client.post(
            "/api/v1/tasks",
            headers={"Authorization": f"Bearer {token}"},
            json={"name": "big", "transcript": "x" * 8192},
        )
        too_many = client.post(
            "/api/v1/batches",
            headers={"Authorization": f"Bearer {token}"},
            json={"items": [{"task_id": task_id, "artifact_type": "summary"}] * 101},
        )

    assert checked >= 10
    assert too_big.status_code == 413
    assert too_many.status_code in (413, 422)
    # Nothing the refused calls asked for happened.
    assert query(
        fault_db, "SELECT state, count(*) FROM generated_artifacts GROUP BY 1"
    ) == [("processing", 1)]
    record(
        Audit(
            fault=f"API calls with no or a wrong token ({checked} routes)",
            injected=checked * len(wrong),
            processed=0,
            lost=0,
            doubled=0,
            stuck=0,
        )
    )


def _routes(routes: list[Any], prefix: str = "") -> set[tuple[str, str]]:
    """(method, path) of every route, through routers included in routers."""
    found = set()
    for route in routes:
        included = getattr(route, "original_router", None)  # newer FastAPI
        if included is not None:
            nested = prefix + getattr(route.include_context, "prefix", "")
            found |= _routes(included.routes, nested)
        elif isinstance(route, Route):
            found |= {
                (m, prefix + route.path) for m in (route.methods or set()) - {"HEAD"}
            }
    return found


def _one_artifact(db_url: str) -> tuple[str, str]:
    [artifact_id] = enqueue(db_url, ["Alice: a private transcript."])
    task_id = scalar(db_url, "SELECT task_id FROM generated_artifacts")
    return artifact_id, task_id


# ---------------------------------------------------------------------------
# The worker's database role: no more than it uses
# ---------------------------------------------------------------------------

DOCS = ROOT / "docs" / "faults.md"


def worker_role_sql() -> str:
    """The ``sql`` block of docs/faults.md that creates the worker role."""
    text = DOCS.read_text("utf-8")
    match = re.search(r"```sql\n(-- artifactd worker role.*?)```", text, re.DOTALL)
    assert match, "docs/faults.md has no worker role block"
    return match.group(1)


class WorkLLM:
    """One row that needs a queue retry, one that pauses the fleet."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, record: RecordedRequest) -> Reply:
        with self._lock:
            for marker in ("FAIL-ATTEMPT", "RATE-LIMIT"):
                if marker in record.user_text:
                    self.seen[marker] += 1
            failing = self.seen["FAIL-ATTEMPT"]
            limited = self.seen["RATE-LIMIT"]
        if "FAIL-ATTEMPT" in record.user_text and failing <= 3:
            return http_error(500)  # three tries: the attempt fails, the queue retries
        if "RATE-LIMIT" in record.user_text and limited == 1:
            return http_error(429, retry_after=1)
        return answer()


def test_worker_runs_with_only_the_documented_grants(
    pg_server: PgServer, fault_db: str, tmp_path: Path, robot: FakeRobotServer
) -> None:
    """Fault: a worker connected as a role with only the grants docs/faults.md
    lists. It claims, renews, reports progress, retries, pauses the fleet,
    fails a lost row and delivers notifications; anything more is refused."""
    role = f"artifactd_worker_{uuid.uuid4().hex[:8]}"
    database = str(psycopg.conninfo.conninfo_to_dict(fault_db)["dbname"])
    script = (
        worker_role_sql()
        .replace(':"role"', sql.Identifier(role).as_string())
        .replace(':"db"', sql.Identifier(database).as_string())
        .replace(":'password'", sql.Literal("unused-trust-auth").as_string())
    )
    with psycopg.connect(fault_db, autocommit=True) as conn:
        conn.execute(script)
    ids = enqueue(
        fault_db,
        ["Alice: plain.", "Bob: FAIL-ATTEMPT first.", "Carol: RATE-LIMIT first.", "  "],
        max_attempts=3,
    )
    ids += _lost_row(fault_db)
    role_url = pg_server.url(database, user=role)
    key = secret_key()

    try:
        with FakeMessagesServer(responder=WorkLLM(), latency_s=0.6) as llm:
            env = {**llm_env(llm, key), **robot_env(robot), "ARTIFACTD_LEASE_S": "1.5"}
            proc = WorkerProcess(role_url, tmp_path / "worker.log", **env)
            try:
                wait_until(
                    lambda: (
                        scalar(
                            fault_db,
                            "SELECT count(*) FROM notifications WHERE state = 'sent'",
                        )
                        == 5
                    ),
                    timeout_s=90,
                    message="every artifact final and its notification sent",
                )
                proc.signal(signal.SIGTERM)
                code = proc.wait(30)
            finally:
                proc.kill()
        refused = _refused_statements(role_url)
    finally:
        with psycopg.connect(fault_db, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(pg_server.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(
                    sql.Identifier(database), sql.Identifier(role)
                )
            )
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))

    result = audit(
        fault_db,
        fault="worker as the least-privilege role",
        injected=1,
        expected_ids=ids,
        logs=[proc.log_path],
    )
    assert result.clean, result.notes
    assert code == 0
    log_text = proc.log_path.read_text("utf-8")
    assert (
        "permission denied" not in log_text and "InsufficientPrivilege" not in log_text
    )
    outcomes = sorted(
        query(
            fault_db,
            "SELECT coalesce(content->>'error_code', state), attempts FROM generated_artifacts",
        )
    )
    assert outcomes == [
        ("INPUT_EMPTY", 1),
        ("WORKER_LOST", 2),
        ("success", 1),
        ("success", 1),
        ("success", 2),
    ]
    events = Counter(e["event"] for e in log_events([proc.log_path]))
    assert events["fleet.paused"] >= 1 and events["artifact.retry_scheduled"] >= 1
    assert scalar(fault_db, "SELECT count(*) FROM queue_controls") == 1
    assert refused == {
        "DELETE FROM generated_artifacts": True,
        "INSERT INTO tasks": True,
        "UPDATE tasks": True,
        "TRUNCATE notifications": True,
        "CREATE TABLE": True,
        "DROP TABLE tasks": True,
    }


def _lost_row(db_url: str) -> list[str]:
    """A row whose worker died on its last attempt: the rescuer must fail it."""
    [artifact_id] = enqueue(db_url, ["Dana: poison."], max_attempts=2)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE generated_artifacts SET attempts = 2, lease_owner = 'gone:1:000000', "
            "lease_token = gen_random_uuid(), lease_expires_at = now() - interval '1 second' "
            "WHERE id = %s",
            (artifact_id,),
        )
    return [artifact_id]


def _refused_statements(role_url: str) -> dict[str, bool]:
    """Statements the worker never needs, tried as its role: each must fail."""
    attempts = {
        "DELETE FROM generated_artifacts": "DELETE FROM generated_artifacts",
        "INSERT INTO tasks": "INSERT INTO tasks (name, transcript) VALUES ('x', 'y')",
        "UPDATE tasks": "UPDATE tasks SET name = name",
        "TRUNCATE notifications": "TRUNCATE notifications",
        "CREATE TABLE": "CREATE TABLE intruder (id int)",
        "DROP TABLE tasks": "DROP TABLE tasks",
    }
    refused = {}
    with psycopg.connect(role_url, autocommit=True) as conn:
        for label, statement in attempts.items():
            try:
                conn.execute(statement)
                refused[label] = False
            except psycopg.errors.InsufficientPrivilege:
                refused[label] = True
    return refused
