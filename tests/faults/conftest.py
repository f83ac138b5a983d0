"""Fixtures for the fault suite: a PostgreSQL of its own, fakes, the report.

Faults here restart, stop and cut the database, so the suite never uses the
shared test server: one ``PgServer`` is started for the session and each
test gets a fresh database on it. The outside systems are the loopback
fakes the rest of the tests use. Every test's counts land in one JSON-lines
report, printed as a table at the end of the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.database import engine
from shared.schema import migrate
from tests.fakes.messages_server import FakeMessagesServer
from tests.fakes.robot_server import FakeRobotServer
from tests.faults import audit
from tests.support.pgserver import PgServer


@pytest.fixture(scope="session", autouse=True)
def fault_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = audit.report_path() or tmp_path_factory.getbasetemp() / "faults-report.jsonl"
    audit.report_file = path
    return path


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer()
    server.start()
    yield server
    server.destroy()


@pytest.fixture
def fault_db(pg_server: PgServer) -> Iterator[str]:
    """A migrated database on the suite's own server, dropped afterwards."""
    if not pg_server.is_up():
        pg_server.start()  # a test that failed mid-outage left it stopped
    url = pg_server.create_database()
    migrate(url)
    engine(url).dispose()
    yield url
    if not pg_server.is_up():
        pg_server.start()
    pg_server.drop_database(url)


@pytest.fixture
def llm() -> Iterator[FakeMessagesServer]:
    with FakeMessagesServer() as server:
        yield server


@pytest.fixture
def robot() -> Iterator[FakeRobotServer]:
    with FakeRobotServer() as server:
        yield server


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    path = audit.report_path()
    rows = audit.read_report(path) if path else []
    if not rows:
        return
    write = terminalreporter.write_line
    terminalreporter.section("faults injected")
    write(f"{'fault':58} {'inj':>4} {'done':>5} {'lost':>4} {'dbl':>4} {'stuck':>5}")
    for row in rows:
        write(
            f"{row['fault'][:58]:58} {row['injected']:>4} {row['processed']:>5} "
            f"{row['lost']:>4} {row['doubled']:>4} {row['stuck']:>5}"
        )
    write(f"report: {path}")
