"""Operator actions on the queue: list, requeue, cancel, stats, prune.

Plain functions over an open psycopg connection, so the CLI, the HTTP API and
an operator page share them. Statements live in ``shared.queue``. Reads and
single-statement actions (``cancel_artifacts``) leave the transaction to the
caller; ``requeue_*`` and ``prune`` write in batches, each batch in
``conn.transaction()``, so on an autocommit connection every batch commits on
its own and a large table is never locked for long (inside a caller's
transaction they become savepoints and commit together). Nothing here prints: the
reports are dataclasses and dicts that ``to_json`` turns into JSON-ready
values.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
import structlog
from psycopg.rows import dict_row

from shared import queue
from shared.errors import ErrorCode, error_content

log = structlog.get_logger(__name__)

# Rows per write transaction for requeue and prune.
BATCH_SIZE = 1_000
# Rows a dry run lists; the count is always exact.
PREVIEW_LIMIT = 1_000

FINAL_STATES = ("success", "failed")


@dataclass(frozen=True)
class Refusal:
    """An artifact an action was asked about and left alone, and why."""

    artifact_id: str
    state: str | None
    reason: str


@dataclass(frozen=True)
class RequeueFilter:
    """Which failed rows to requeue; None means any."""

    error_code: str | None = None
    artifact_type: str | None = None
    older_than_s: float | None = None

    def describe(self) -> str:
        parts = []
        if self.error_code:
            parts.append(f"error code {self.error_code}")
        if self.artifact_type:
            parts.append(f"type {self.artifact_type}")
        if self.older_than_s is not None:
            parts.append(f"failed more than {format_age(self.older_than_s)} ago")
        return ", ".join(parts) or "every failed artifact"


@dataclass
class RequeueReport:
    dry_run: bool
    matched: int
    requeued: list[str] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    preview: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class CancelledArtifact:
    artifact_id: str
    was_running: bool
    lease_owner: str | None


@dataclass
class CancelReport:
    cancelled: list[CancelledArtifact] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)


@dataclass
class PruneReport:
    dry_run: bool
    cutoff: datetime
    artifacts: int
    notifications: int
    batches: int = 0


# -- reading ----------------------------------------------------------------


def list_artifacts(
    conn: psycopg.Connection,
    *,
    state: str | None = None,
    error_code: str | None = None,
    artifact_type: str | None = None,
    task_id: str | None = None,
    older_than_s: float | None = None,
    since_s: float | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Artifacts newest first, each with its notifications' channel and state."""
    params = {
        "state": state,
        "error_code": error_code,
        "artifact_type": artifact_type,
        "task_id": task_id,
        "older_than_s": older_than_s,
        "since_s": since_s,
        "limit": limit,
    }
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(queue.LIST_ARTIFACTS, params)
        return cur.fetchall()


def artifact_notifications(
    conn: psycopg.Connection, artifact_id: str
) -> list[dict[str, Any]]:
    """The outbox rows of one artifact, oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(queue.ARTIFACT_NOTIFICATIONS, {"artifact_id": artifact_id})
        return cur.fetchall()


def artifact_type_exists(conn: psycopg.Connection, artifact_type: str) -> bool:
    """Whether any artifact of this type was ever stored."""
    row = conn.execute(
        queue.ARTIFACT_TYPE_EXISTS, {"artifact_type": artifact_type}
    ).fetchone()
    return bool(row and row[0])


def queue_stats(conn: psycopg.Connection, *, since_s: float) -> dict[str, Any]:
    """Queue depth now, outcomes over the last ``since_s`` seconds, outbox states.

    Shape: ``{since_s, queue: {processing, in_flight, waiting, ready,
    retry_scheduled, expired_leases, oldest_waiting_s, llm_paused_for_s},
    outcomes: [{artifact_type, succeeded, failed, p50_ms, p95_ms,
    p50_wait_ms}], totals: {same without artifact_type}, errors:
    [{error_code, artifact_type, count, last_at}], notifications: [{channel,
    pending, sent, dead, oldest_pending_s}]}``. ``sent`` counts the window;
    ``pending`` and ``dead`` count every row.
    """
    params = {"since_s": since_s}
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(queue.STATS_QUEUE)
        depth = cur.fetchone() or {}
        cur.execute(queue.STATS_OUTCOMES, params)
        outcome_rows = cur.fetchall()
        cur.execute(queue.STATS_ERROR_CODES, params)
        errors = cur.fetchall()
        cur.execute(queue.STATS_NOTIFICATIONS, params)
        notifications = cur.fetchall()

    depth = dict(depth)
    depth["waiting"] = depth.get("processing", 0) - depth.get("in_flight", 0)
    outcomes = [_rounded(r) for r in outcome_rows if r["artifact_type"] is not None]
    totals = next(
        (_rounded(r) for r in outcome_rows if r["artifact_type"] is None),
        {
            "succeeded": 0,
            "failed": 0,
            "p50_ms": None,
            "p95_ms": None,
            "p50_wait_ms": None,
        },
    )
    totals.pop("artifact_type", None)
    return {
        "since_s": since_s,
        "queue": _rounded(depth),
        "outcomes": outcomes,
        "totals": totals,
        "errors": errors,
        "notifications": [_rounded(n) for n in notifications],
    }


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}


# -- requeue ----------------------------------------------------------------


def requeue_by_ids(
    conn: psycopg.Connection,
    ids: Sequence[str],
    *,
    where: RequeueFilter = RequeueFilter(),  # noqa: B008 - frozen, never mutated
    dry_run: bool = False,
) -> RequeueReport:
    """Requeue the named artifacts; each one that cannot be is refused with why.

    Only ``failed`` rows go back; ``where`` narrows further, and an id it
    excludes is refused saying which filter did.
    """
    valid, refused = _parse_ids(ids)
    rows = _rows_by_id(conn, valid)
    eligible: list[str] = []
    for artifact_id in valid:
        row = rows.get(artifact_id)
        reason = _requeue_refusal(row, where)
        if reason is None:
            eligible.append(artifact_id)
        else:
            refused.append(Refusal(artifact_id, row["state"] if row else None, reason))

    report = RequeueReport(dry_run=dry_run, matched=len(eligible), refused=refused)
    report.preview = [_preview(rows[i]) for i in eligible[:PREVIEW_LIMIT]]
    if dry_run or not eligible:
        return report

    report.requeued = _requeue(conn, eligible)
    done = set(report.requeued)
    for artifact_id in eligible:
        if artifact_id not in done:
            report.refused.append(
                Refusal(artifact_id, None, "changed while being requeued; look again")
            )
    log.info("artifacts.requeued", count=len(done), refused=len(report.refused))
    return report


def requeue_matching(
    conn: psycopg.Connection,
    where: RequeueFilter,
    *,
    limit: int | None = None,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
) -> RequeueReport:
    """Requeue failed rows matching ``where``, oldest failure first, in batches.

    Rows that fail again while this runs are not picked up a second time.
    """
    as_of = _database_now(conn)
    params: dict[str, Any] = {
        "as_of": as_of,
        "error_code": where.error_code,
        "artifact_type": where.artifact_type,
        "older_than_s": where.older_than_s,
    }
    count_row = conn.execute(queue.COUNT_REQUEUE_CANDIDATES, params).fetchone()
    matched = int(count_row[0]) if count_row else 0
    if limit is not None:
        matched = min(matched, limit)
    report = RequeueReport(dry_run=dry_run, matched=matched)
    if dry_run:
        report.preview = _candidates(conn, params, min(matched, PREVIEW_LIMIT))
        return report

    while len(report.requeued) < matched:
        size = min(batch_size, matched - len(report.requeued))
        ids = [row["id"] for row in _candidates(conn, params, size)]
        done = _requeue(conn, ids) if ids else []
        report.requeued.extend(done)
        if not done:
            break
    log.info("artifacts.requeued", count=len(report.requeued), filter=where.describe())
    return report


def _candidates(
    conn: psycopg.Connection, params: dict[str, Any], limit: int
) -> list[dict[str, Any]]:
    if limit <= 0:
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(queue.FIND_REQUEUE_CANDIDATES, {**params, "limit": limit})
        return cur.fetchall()


def _requeue(conn: psycopg.Connection, ids: list[str]) -> list[str]:
    requeued: list[str] = []
    for start in range(0, len(ids), BATCH_SIZE):
        with conn.transaction():
            rows = conn.execute(
                queue.REQUEUE_ARTIFACTS, {"ids": ids[start : start + BATCH_SIZE]}
            ).fetchall()
        requeued.extend(row[0] for row in rows)
    return requeued


def _requeue_refusal(row: dict[str, Any] | None, where: RequeueFilter) -> str | None:
    if row is None:
        return "no such artifact"
    if row["state"] == "processing":
        return "still processing (waiting or running); nothing to requeue"
    if row["state"] == "success":
        return "succeeded; only failed artifacts are requeued (regenerate for a new version)"
    if where.error_code and row["error_code"] != where.error_code:
        return f"failed with {row['error_code']}, not {where.error_code}"
    if where.artifact_type and row["artifact_type"] != where.artifact_type:
        return f"is a {row['artifact_type']}, not a {where.artifact_type}"
    age_s = row["finished_age_s"]
    if where.older_than_s is not None and (age_s is None or age_s < where.older_than_s):
        return f"failed less than {format_age(where.older_than_s)} ago"
    return None


def _preview(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "artifact_type": row["artifact_type"],
        "error_code": row["error_code"],
        "finished_at": row["finished_at"],
    }


# -- cancel -----------------------------------------------------------------


def cancel_artifacts(
    conn: psycopg.Connection,
    ids: Sequence[str],
    *,
    locale: str,
    channels: Iterable[str] = (),
) -> CancelReport:
    """Fail the named artifacts with CANCELLED; refuse those already final.

    A worker running one loses its lease token, so it stops at its next
    renewal and its result is never written. Each cancelled row gets an
    outbox row per channel, like any final state.
    """
    valid, refused = _parse_ids(ids)
    report = CancelReport(refused=refused)
    if not valid:
        return report

    content = error_content(ErrorCode.CANCELLED, locale)
    rows = conn.execute(
        queue.CANCEL_ARTIFACTS,
        {"ids": valid, "content": json.dumps(content), "channels": list(channels)},
    ).fetchall()
    report.cancelled = [CancelledArtifact(r[0], bool(r[2]), r[1]) for r in rows]

    done = {c.artifact_id for c in report.cancelled}
    missed = [i for i in valid if i not in done]
    existing = _rows_by_id(conn, missed)
    for artifact_id in missed:
        row = existing.get(artifact_id)
        if row is None:
            report.refused.append(Refusal(artifact_id, None, "no such artifact"))
        else:
            reason = f"already finished as {row['state']}; nothing to cancel"
            report.refused.append(Refusal(artifact_id, row["state"], reason))
    if report.cancelled:
        log.info(
            "artifacts.cancelled",
            count=len(report.cancelled),
            running=sum(c.was_running for c in report.cancelled),
            artifact_ids=sorted(done),
        )
    return report


# -- prune ------------------------------------------------------------------


def prune(
    conn: psycopg.Connection,
    *,
    older_than_s: float,
    states: Sequence[str] = FINAL_STATES,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
) -> PruneReport:
    """Delete finished artifacts and sent notifications older than the cutoff.

    Finished means ``finished_at`` is set: rows written before the queue
    existed have none and are kept. An artifact with a notification still
    pending is kept until it is delivered or dead. Deletes go in batches of
    ``batch_size`` rows, each its own transaction on an autocommit ``conn``.
    """
    if older_than_s < 0:
        raise ValueError("older_than_s must not be negative")
    bad = [s for s in states if s not in FINAL_STATES]
    if bad:
        raise ValueError(f"only finished states can be pruned, not {bad}")
    cutoff_row = conn.execute(
        queue.PRUNE_CUTOFF, {"older_than_s": older_than_s}
    ).fetchone()
    assert cutoff_row is not None
    cutoff: datetime = cutoff_row[0]
    states = list(states)

    if dry_run:
        artifacts = conn.execute(
            queue.COUNT_PRUNABLE_ARTIFACTS, {"cutoff": cutoff, "states": states}
        ).fetchone()
        notifications = conn.execute(
            queue.COUNT_PRUNABLE_NOTIFICATIONS, {"cutoff": cutoff}
        ).fetchone()
        return PruneReport(
            dry_run=True,
            cutoff=cutoff,
            artifacts=int(artifacts[0]) if artifacts else 0,
            notifications=int(notifications[0]) if notifications else 0,
        )

    # Notifications first, so fewer go by cascade inside the artifact batches.
    report = PruneReport(dry_run=False, cutoff=cutoff, artifacts=0, notifications=0)
    after_id = 0
    while True:
        with conn.transaction():
            ids = [
                r[0]
                for r in conn.execute(
                    queue.PRUNE_NOTIFICATIONS,
                    {"cutoff": cutoff, "after_id": after_id, "limit": batch_size},
                ).fetchall()
            ]
        report.batches += 1
        report.notifications += len(ids)
        if len(ids) < batch_size:
            break
        after_id = max(ids)

    after: datetime | None = None
    while True:
        with conn.transaction():
            finished = [
                r[0]
                for r in conn.execute(
                    queue.PRUNE_ARTIFACTS,
                    {
                        "cutoff": cutoff,
                        "states": states,
                        "after": after,
                        "limit": batch_size,
                    },
                ).fetchall()
            ]
        report.batches += 1
        report.artifacts += len(finished)
        log.debug("prune.batch", artifacts=len(finished))
        if len(finished) < batch_size:
            break
        after = max(finished)

    log.info(
        "artifacts.pruned",
        artifacts=report.artifacts,
        notifications=report.notifications,
        batches=report.batches,
        cutoff=cutoff.isoformat(),
    )
    return report


# -- shared helpers -----------------------------------------------------------


def _parse_ids(ids: Iterable[str]) -> tuple[list[str], list[Refusal]]:
    """Canonical UUID strings, each once; anything else is refused."""
    valid: list[str] = []
    refused: list[Refusal] = []
    for raw in ids:
        try:
            artifact_id = str(uuid.UUID(raw.strip()))
        except (ValueError, AttributeError):
            refused.append(Refusal(str(raw), None, "not an artifact id (a UUID)"))
            continue
        if artifact_id not in valid:
            valid.append(artifact_id)
    return valid, refused


def _rows_by_id(conn: psycopg.Connection, ids: list[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(queue.ARTIFACTS_BY_ID, {"ids": ids})
        return {row["id"]: row for row in cur.fetchall()}


def _database_now(conn: psycopg.Connection) -> datetime:
    row = conn.execute(queue.DATABASE_NOW).fetchone()
    assert row is not None
    now: datetime = row[0]
    return now


def format_age(seconds: float) -> str:
    """``90`` → ``1m30s``; ``93600`` → ``1d2h``: two units at most."""
    units = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))
    remaining = int(round(seconds))
    parts: list[str] = []
    for name, size in units:
        if remaining >= size or (name == "s" and not parts):
            count, remaining = divmod(remaining, size)
            parts.append(f"{count}{name}")
        if len(parts) == 2:
            break
    return "".join(parts)


def to_json(value: Any) -> Any:
    """Reports and rows as JSON-ready values (datetimes as ISO 8601 strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)
        }
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value
