"""What a fault did to the artifacts: counted from the database and the logs.

Every fault test ends with ``audit``: each artifact it enqueued must sit in
exactly one final state with exactly one outbox row per configured channel,
and no artifact may have two committed outcomes in the workers' logs. The
counts go to a JSON-lines report (``record``) from which ``docs/faults.md``
takes its table; the suite prints it at the end.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.support.processes import query

# Log events that a committed final write, and only that, produces.
FINAL_EVENTS = ("artifact.succeeded", "artifact.failed")

REPORT_ENV = "ARTIFACTD_FAULTS_REPORT"


def log_events(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every JSON log line of the given files, in file order."""
    events: list[dict[str, Any]] = []
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text("utf-8", "replace").splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue  # a line cut short by SIGKILL
    return events


@dataclass
class Audit:
    fault: str
    injected: int
    processed: int
    lost: int
    doubled: int
    stuck: int
    states: dict[str, int] = field(default_factory=dict)
    error_codes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.lost == self.doubled == self.stuck == 0


def audit(
    db_url: str,
    *,
    fault: str,
    injected: int,
    expected_ids: Iterable[str] = (),
    logs: Iterable[Path] = (),
    channels: Iterable[str] = ("wecom",),
) -> Audit:
    """Count lost, doubled and stuck artifacts in ``db_url`` and record them.

    - stuck: still ``processing``.
    - lost: an expected id that is gone, a success without a document, or a
      final state without its outbox row on some channel.
    - doubled: two outbox rows for one artifact and channel, or two
      committed outcome lines for one artifact across the workers' logs.
    """
    rows = query(
        db_url,
        """
        SELECT id::text, state, content->>'error_code',
               state = 'success' AND coalesce(content->>'text', '') = ''
        FROM generated_artifacts
        """,
    )
    outbox = query(
        db_url,
        "SELECT artifact_id::text, channel, count(*) FROM notifications GROUP BY 1, 2",
    )
    per_channel = {(a, c): n for a, c, n in outbox}
    channels = list(channels)
    ids = {r[0] for r in rows}
    notes: list[str] = []

    stuck = [r[0] for r in rows if r[1] == "processing"]
    missing = sorted(set(expected_ids) - ids)
    empty = [r[0] for r in rows if r[3]]
    unnotified = [
        r[0]
        for r in rows
        if r[1] != "processing"
        and any(per_channel.get((r[0], c), 0) == 0 for c in channels)
    ]
    lost = set(missing) | set(empty) | set(unnotified)
    double_outbox = {a for (a, _), n in per_channel.items() if n > 1}
    outcome_lines = Counter(
        str(e["artifact_id"])
        for e in log_events(logs)
        if e.get("event") in FINAL_EVENTS and e.get("artifact_id")
    )
    double_logged = {a for a, n in outcome_lines.items() if n > 1}
    doubled = double_outbox | double_logged
    for label, found in (
        ("stuck", stuck),
        ("missing", missing),
        ("success without text", empty),
        ("no outbox row", unnotified),
        ("two outbox rows", sorted(double_outbox)),
        ("two outcome lines", sorted(double_logged)),
    ):
        if found:
            notes.append(f"{label}: {list(found)[:5]}")

    result = Audit(
        fault=fault,
        injected=injected,
        processed=len(rows),
        lost=len(lost),
        doubled=len(doubled),
        stuck=len(stuck),
        states=dict(Counter(r[1] for r in rows)),
        error_codes=dict(Counter(r[2] for r in rows if r[2])),
        notes=notes,
    )
    record(result)
    return result


# Where ``record`` appends; the suite's conftest points it into the session's
# temporary directory unless ARTIFACTD_FAULTS_REPORT names a file.
report_file: Path | None = None


def report_path() -> Path | None:
    raw = os.environ.get(REPORT_ENV)
    return Path(raw) if raw else report_file


def record(result: Audit) -> None:
    """Append one JSON line to the report, and print it for ``pytest -s``."""
    line = json.dumps(asdict(result), ensure_ascii=False)
    print(f"[faults] {line}")
    path = report_path()
    if path is None:
        return
    with open(path, "a", encoding="utf-8") as out:
        out.write(line + "\n")


def read_report(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]
