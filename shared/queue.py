"""Every statement the queue runs, named and in one place.

Placeholders are psycopg's ``%(name)s``; the same text runs on sync and
async connections. Invariants the statements keep:

- Time comes from the database (``now()``), never a worker's clock.
- A row is written by its holder only: every write after a claim matches
  ``lease_token``, so a worker whose lease expired changes nothing.
- Final states insert their outbox rows in the same statement, so a
  notification exists exactly when the final state committed.
- Claims take rows with ``FOR UPDATE SKIP LOCKED`` in claim order (priority,
  then age) over the partial index of waiting rows, plus any whose lease
  expired over the partial index of leased rows.
- A statement that changes rows' state or progress notifies listeners of
  all of them in the same statement (``artifactd_events``); there is no
  per-row trigger for it.
"""

from __future__ import annotations

import functools

from psycopg import sql

# Serialises claims only when a fleet-wide cap is set, so the count of leased
# rows and the claim that depends on it see each other's commits.
FLEET_CLAIM_LOCK = 7_245_019_312

LLM_CONTROL = "llm"

NEW_CHANNEL = "artifactd_new"
EVENTS_CHANNEL = "artifactd_events"
OUTBOX_CHANNEL = "artifactd_outbox"

# One NOTIFY on ``artifactd_events`` per statement that moves rows to a new
# state or progress (not one per row: at commit each NOTIFY costs the server
# a queue entry, and a trigger per row cost every update its condition). The
# payload is a JSON array of ``{"artifact_id", "state"}``, split into chunks
# that stay well under NOTIFY's 8,000-byte limit. Used as a CTE over the
# statement's changed rows (columns ``id``, ``state``); a CTE that only
# selects runs when read, so each statement reads it through ``count(*)``.
_EVENTS_PER_NOTIFY = 80
_EVENTS = f"""
    SELECT pg_notify(
        '{EVENTS_CHANNEL}',
        json_agg(json_build_object('artifact_id', id, 'state', state))::text)
    FROM (SELECT id, state, (row_number() OVER () - 1) / {_EVENTS_PER_NOTIFY} AS chunk
          FROM {{rows}}) changed
    GROUP BY chunk
"""  # noqa: S608 - composed from this module's constants


_READY = """
    state = 'processing'
    AND run_after <= now()
    AND attempts < max_attempts
    AND NOT EXISTS (
        SELECT 1 FROM queue_controls
        WHERE name = 'llm' AND paused_until > now()
    )
"""

# Rows come from two partial indexes: ``waiting`` (no lease, the usual case,
# in claim order over ix_generated_artifacts_claimable) and ``expired`` (a
# worker died holding them, over ix_generated_artifacts_leased; almost always
# empty). A claimed row leaves the claim index, so a claim never steps over
# rows other claims hold. ``expired`` remembers who held the lease, so a
# takeover is logged as one. The task is joined in the same round trip; a
# LEFT JOIN so a missing task still claims the row and fails it with
# INPUT_NOT_FOUND. ``{limit}`` is the most rows to claim.
_CLAIM = f"""
WITH expired AS (
    SELECT id, lease_owner AS lost_owner, priority, created_at
    FROM generated_artifacts
    WHERE {_READY}
      AND lease_token IS NOT NULL AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT {{limit}}
    FOR UPDATE SKIP LOCKED
), waiting AS (
    SELECT id, NULL::text AS lost_owner, priority, created_at
    FROM generated_artifacts
    WHERE {_READY}
      AND lease_token IS NULL
    ORDER BY priority DESC, created_at
    LIMIT {{limit}}
    FOR UPDATE SKIP LOCKED
), candidates AS (
    SELECT id, lost_owner
    FROM (SELECT * FROM expired UNION ALL SELECT * FROM waiting) c
    ORDER BY priority DESC, created_at
    LIMIT {{limit}}
), claimed AS (
    UPDATE generated_artifacts a
    SET lease_owner = %(worker_id)s,
        lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => %(lease_s)s),
        attempts = a.attempts + 1,
        started_at = coalesce(a.started_at, now()),
        updated_at = now()
    FROM candidates c
    WHERE a.id = c.id
    RETURNING a.id, a.task_id, a.artifact_type, a.attempts, a.max_attempts,
              a.lease_token, c.lost_owner, a.priority, a.created_at
)
SELECT c.id::text AS id, c.task_id, c.artifact_type, c.attempts, c.max_attempts,
       c.lease_token::text AS lease_token, c.lost_owner,
       t.id IS NOT NULL AS task_exists, t.name AS task_name, t.meeting_time,
       t.language, t.transcript
FROM claimed c
LEFT JOIN tasks t ON t.id = c.task_id
ORDER BY c.priority DESC, c.created_at
"""  # noqa: S608 - composed from this module's constants

CLAIM_BATCH = _CLAIM.replace("{limit}", "%(limit)s")


@functools.lru_cache(maxsize=256)
def claim_batch_for(limit: int) -> str:
    """``CLAIM_BATCH`` with ``limit`` written into its text: the worker's form.

    A prepared claim with ``LIMIT $1`` has two plans to choose from: one
    made for each run with the real number, planned again every time, and
    a generic one for an unknown limit, which the planner costs at a tenth
    of the waiting rows. On a large table that guess prices the generic
    plan far above the real one, so PostgreSQL keeps planning every claim
    anew (about a third of a claim's time with a million finished rows).
    With the number in the text there is one plan, made once per
    connection and limit; a worker asks for at most half its slots.
    """
    return sql.SQL(_CLAIM).format(limit=sql.Literal(int(limit))).as_string(None)


LOCK_FLEET_CLAIMS = f"SELECT pg_advisory_xact_lock({FLEET_CLAIM_LOCK})"

# Run after LOCK_FLEET_CLAIMS in the same transaction (a new statement, so a
# new snapshot that sees every claim committed before the lock was granted).
# The budget is what the cap leaves after the live leases, counted over the
# small index of leased rows.
_BUDGET = """budget AS (
    SELECT greatest(0, least(%(limit)s, %(fleet_cap)s - (
        SELECT count(*) FROM generated_artifacts
        WHERE state = 'processing' AND lease_token IS NOT NULL
          AND lease_expires_at > now()
    ))) AS n
), """
CLAIM_BATCH_CAPPED = _CLAIM.replace("{limit}", "(SELECT n FROM budget)").replace(
    "WITH expired AS", "WITH " + _BUDGET + "expired AS", 1
)

RENEW_LEASES = """
UPDATE generated_artifacts a
SET lease_expires_at = now() + make_interval(secs => %(lease_s)s)
FROM unnest(%(ids)s::uuid[], %(tokens)s::uuid[]) AS h(id, token)
WHERE a.id = h.id AND a.lease_token = h.token AND a.state = 'processing'
RETURNING a.id::text
"""

# Final states. ``error`` (nullable) is appended to metadata.errors; the outbox
# gets one row per channel per finished artifact. ``{input}`` is one of the two
# input forms below.
_FINISH = """
WITH input AS (
    {input}
), finished AS (
    UPDATE generated_artifacts a
    SET state = i.state,
        content = i.content,
        metadata = a.metadata || i.metadata || CASE
            WHEN i.error IS NULL THEN '{}'::jsonb
            ELSE jsonb_build_object(
                'errors', coalesce(a.metadata->'errors', '[]'::jsonb)
                          || jsonb_build_array(i.error))
        END,
        lease_owner = NULL,
        lease_token = NULL,
        lease_expires_at = NULL,
        finished_at = now(),
        updated_at = now()
    FROM input i
    WHERE a.id = i.id AND a.lease_token = i.token AND a.state = 'processing'
    RETURNING a.id, a.state, i.token
), outbox AS (
    INSERT INTO notifications (artifact_id, event, channel)
    SELECT f.id, f.state, ch.channel
    FROM finished f CROSS JOIN unnest(%(channels)s::text[]) AS ch(channel)
), events AS ({events})
SELECT f.id::text, f.token::text
FROM finished f, (SELECT count(*) FROM events) notified
""".replace("{events}", _EVENTS.replace("{rows}", "finished"))

FINISH_ARTIFACTS = _FINISH.replace(
    "{input}",
    """SELECT *
    FROM unnest(
        %(ids)s::uuid[], %(tokens)s::uuid[], %(states)s::text[],
        %(contents)s::jsonb[], %(metadata)s::jsonb[], %(errors)s::jsonb[]
    ) AS i(id, token, state, content, metadata, error)""",
)

# The worker's batched form: ``batch`` is one JSON array of {id, token, state,
# content, metadata, error} objects (JSON null = no error). psycopg quotes each
# element of a text[] or jsonb[] parameter in Python, which took about a fifth
# of an echo worker's CPU; one json.dumps of the whole batch runs in C.
FINISH_ARTIFACTS_JSON = _FINISH.replace(
    "{input}",
    """SELECT *
    FROM jsonb_to_recordset(%(batch)s::jsonb)
        AS i(id uuid, token uuid, state text, content jsonb, metadata jsonb, error jsonb)""",
)

# A transient failure with attempts left: free the row until run_after.
RELEASE_FOR_RETRY = """
UPDATE generated_artifacts a
SET lease_owner = NULL,
    lease_token = NULL,
    lease_expires_at = NULL,
    run_after = now() + make_interval(secs => i.delay_s),
    metadata = a.metadata || jsonb_build_object(
        'errors', coalesce(a.metadata->'errors', '[]'::jsonb)
                  || jsonb_build_array(i.error)),
    updated_at = now()
FROM unnest(%(ids)s::uuid[], %(tokens)s::uuid[], %(delays_s)s::float8[],
            %(errors)s::jsonb[]) AS i(id, token, delay_s, error)
WHERE a.id = i.id AND a.lease_token = i.token AND a.state = 'processing'
RETURNING a.id::text, i.token::text
"""

# After a write whose connection failed, the retry finds the tokens of any
# outcome the lost commit did write already gone. Which of ``batch`` (objects
# of {id, attempt, state, content, metadata, error}; state null for a retry
# release) are in the row as this very attempt left them: a final state with
# this content and metadata at this attempt, or this attempt's error in the
# history. The error carries the attempt and worker, and every claim counts
# an attempt, so another attempt's write does not match. Returns ``id``.
ALREADY_WRITTEN = """
SELECT a.id::text
FROM jsonb_to_recordset(%(batch)s::jsonb) AS i(
        id uuid, attempt int, state text, content jsonb, metadata jsonb, error jsonb)
    JOIN generated_artifacts a ON a.id = i.id
WHERE (i.error IS NULL
       OR coalesce(a.metadata->'errors', '[]'::jsonb) @> jsonb_build_array(i.error))
  AND (i.state IS NULL
       OR (a.state = i.state AND a.attempts = i.attempt
           AND a.content = i.content AND a.metadata @> i.metadata))
"""

# Shutdown: hand unfinished rows back at once. The attempt is not counted
# against the row, since the worker stopped, not the job.
RELEASE_ON_SHUTDOWN = """
WITH released AS (
    UPDATE generated_artifacts a
    SET lease_owner = NULL,
        lease_token = NULL,
        lease_expires_at = NULL,
        attempts = greatest(a.attempts - 1, 0),
        run_after = now(),
        updated_at = now()
    FROM unnest(%(ids)s::uuid[], %(tokens)s::uuid[]) AS h(id, token)
    WHERE a.id = h.id AND a.lease_token = h.token AND a.state = 'processing'
    RETURNING a.id
)
SELECT id::text, pg_notify('artifactd_new', '') FROM released
"""

UPDATE_PROGRESS = """
UPDATE generated_artifacts
SET metadata = jsonb_set(metadata, '{progress}', %(progress)s::jsonb),
    updated_at = now()
WHERE id = %(id)s AND lease_token = %(token)s AND state = 'processing'
RETURNING id::text, pg_notify(
    'artifactd_events',
    json_build_array(json_build_object('artifact_id', id, 'state', state))::text)
"""

# Rows whose last lease expired with no attempts left: a worker died on them
# max_attempts times. Fail them so one poison input cannot kill workers forever.
FAIL_LOST_ARTIFACTS = """
WITH lost AS (
    SELECT id, created_at FROM generated_artifacts
    WHERE state = 'processing' AND lease_token IS NOT NULL
      AND attempts >= max_attempts
      AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), stranded AS (
    -- No lease and no attempts left: only a hand edit of attempts or
    -- max_attempts leaves a row so, but it would wait forever.
    SELECT id, created_at FROM generated_artifacts
    WHERE state = 'processing' AND lease_token IS NULL
      AND attempts >= max_attempts
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), failed AS (
    UPDATE generated_artifacts a
    SET state = 'failed',
        content = %(content)s::jsonb,
        metadata = a.metadata || jsonb_build_object(
            'errors', coalesce(a.metadata->'errors', '[]'::jsonb)
                      || jsonb_build_array(%(error)s::jsonb)),
        lease_owner = NULL,
        lease_token = NULL,
        lease_expires_at = NULL,
        finished_at = now(),
        updated_at = now()
    FROM (SELECT id FROM lost UNION ALL SELECT id FROM stranded) l
    WHERE a.id = l.id
    RETURNING a.id, a.state
), outbox AS (
    INSERT INTO notifications (artifact_id, event, channel)
    SELECT f.id, f.state, ch.channel
    FROM failed f CROSS JOIN unnest(%(channels)s::text[]) AS ch(channel)
), events AS ({events})
SELECT f.id::text FROM failed f, (SELECT count(*) FROM events) notified
""".replace("{events}", _EVENTS.replace("{rows}", "failed"))

# Operator or API cancel. A worker running the row loses its token and stops
# at its next renewal or write. The first CTE locks the rows and remembers who
# held them, since the UPDATE's RETURNING sees the lease already cleared. A row
# that finishes while we wait for its lock drops out when the lock is granted
# (PostgreSQL rechecks ``state`` on the newest version), so a success is never
# overwritten. Returns ``id, lease_owner, was_running`` per cancelled row.
CANCEL_ARTIFACTS = """
WITH target AS (
    SELECT id, lease_owner,
           lease_token IS NOT NULL AND lease_expires_at > now() AS was_running
    FROM generated_artifacts
    WHERE id = ANY(%(ids)s::uuid[]) AND state = 'processing'
    FOR UPDATE
), cancelled AS (
    UPDATE generated_artifacts a
    SET state = 'failed',
        content = %(content)s::jsonb,
        metadata = (a.metadata - 'progress') || jsonb_build_object(
            'cancelled', jsonb_build_object(
                'at', now(), 'attempts', a.attempts, 'lease_owner', t.lease_owner)),
        lease_owner = NULL,
        lease_token = NULL,
        lease_expires_at = NULL,
        finished_at = now(),
        updated_at = now()
    FROM target t
    WHERE a.id = t.id AND a.state = 'processing'
    RETURNING a.id, a.state, t.lease_owner, t.was_running
), outbox AS (
    INSERT INTO notifications (artifact_id, event, channel)
    SELECT c.id, c.state, ch.channel
    FROM cancelled c CROSS JOIN unnest(%(channels)s::text[]) AS ch(channel)
), events AS ({events})
SELECT c.id::text, c.lease_owner, c.was_running
FROM cancelled c, (SELECT count(*) FROM events) notified
""".replace("{events}", _EVENTS.replace("{rows}", "cancelled"))

# Failed rows back to work, attempts reset; the failure stays in metadata
# (``previous_failures``: the failed content plus when it started, finished and
# how many attempts it took). ``started_at`` is cleared so the next run's
# duration is its own; stale progress and the cancel record go with it.
REQUEUE_ARTIFACTS = """
WITH requeued AS (
    UPDATE generated_artifacts a
    SET state = 'processing',
        attempts = 0,
        run_after = now(),
        metadata = (a.metadata - 'progress' - 'cancelled') || jsonb_build_object(
            'previous_failures', coalesce(a.metadata->'previous_failures', '[]'::jsonb)
                || jsonb_build_array(coalesce(a.content, '{}'::jsonb)
                    || jsonb_build_object(
                        'started_at', a.started_at,
                        'finished_at', a.finished_at,
                        'attempts', a.attempts,
                        'requeued_at', now()))),
        content = NULL,
        lease_owner = NULL,
        lease_token = NULL,
        lease_expires_at = NULL,
        started_at = NULL,
        finished_at = NULL,
        updated_at = now()
    WHERE a.id = ANY(%(ids)s::uuid[]) AND a.state = 'failed'
    RETURNING a.id, a.state
), events AS ({events})
SELECT r.id::text, pg_notify('artifactd_new', '')
FROM requeued r, (SELECT count(*) FROM events) notified
""".replace("{events}", _EVENTS.replace("{rows}", "requeued"))

PAUSE_FLEET = """
INSERT INTO queue_controls (name, paused_until, reason, updated_at)
VALUES (%(name)s, now() + make_interval(secs => %(seconds)s), %(reason)s, now())
ON CONFLICT (name) DO UPDATE
SET paused_until = greatest(queue_controls.paused_until, excluded.paused_until),
    reason = excluded.reason,
    updated_at = now()
RETURNING extract(epoch FROM paused_until - now())::float8
"""

FLEET_PAUSE_REMAINING = """
SELECT extract(epoch FROM paused_until - now())::float8
FROM queue_controls
WHERE name = %(name)s AND paused_until > now()
"""

# Rows still ``processing``, as the union of the two partial indexes that hold
# them (waiting: no lease; leased), so a read of unfinished rows never scans
# the finished ones. No index covers ``state = 'processing'`` alone.
_PROCESSING_ROWS = """(
    SELECT id, created_at, run_after, lease_token, lease_expires_at
    FROM generated_artifacts WHERE state = 'processing' AND lease_token IS NULL
    UNION ALL
    SELECT id, created_at, run_after, lease_token, lease_expires_at
    FROM generated_artifacts WHERE state = 'processing' AND lease_token IS NOT NULL
)"""

COUNT_UNFINISHED = f"SELECT count(*) FROM {_PROCESSING_ROWS} p"  # noqa: S608

# Seconds until the earliest waiting retry becomes claimable (and the fleet
# pause, if any, has ended), so an idle worker sleeps exactly that long instead
# of a whole poll interval. NULL when nothing waits: greatest() skips NULLs, so
# clamping at 0 in SQL turned "nothing to wait for" into "claim again now" and
# idle workers polled every 10 ms; the caller clamps instead.
NEXT_RUN_AFTER = """
SELECT greatest(
    (SELECT extract(epoch FROM min(run_after) - now())
     FROM generated_artifacts
     WHERE state = 'processing' AND lease_token IS NULL),
    (SELECT extract(epoch FROM paused_until - now())
     FROM queue_controls
     WHERE name = 'llm' AND paused_until > now())
)::float8
"""

QUEUE_DEPTH = f"""
SELECT count(*) FILTER (WHERE lease_token IS NULL OR lease_expires_at < now()),
       count(*) FILTER (WHERE lease_token IS NOT NULL AND lease_expires_at >= now())
FROM {_PROCESSING_ROWS} p
"""  # noqa: S608 - composed from this module's constants

# -- operator statements: list, show, requeue, stats, prune -------------------
# Read by the CLI and the API through ``shared.ops``; never on the claim path.

# Newest first over ix_generated_artifacts_created. Every filter is optional
# (NULL: not applied); ages are seconds before now().
LIST_ARTIFACTS = """
SELECT a.id::text AS id, a.task_id, t.name AS task_name, a.artifact_type, a.version,
       a.state, a.attempts, a.max_attempts, a.content->>'error_code' AS error_code,
       a.created_at, a.finished_at,
       round(extract(epoch FROM a.finished_at - a.started_at) * 1000)::float8
           AS duration_ms,
       coalesce(n.notifications, '[]'::jsonb) AS notifications
FROM generated_artifacts a
LEFT JOIN tasks t ON t.id = a.task_id
LEFT JOIN LATERAL (
    SELECT jsonb_agg(jsonb_build_object('channel', channel, 'state', state)
                     ORDER BY id) AS notifications
    FROM notifications
    WHERE artifact_id = a.id
) n ON true
WHERE (%(state)s::text IS NULL OR a.state = %(state)s)
  AND (%(error_code)s::text IS NULL
       OR (a.state = 'failed' AND a.content->>'error_code' = %(error_code)s))
  AND (%(artifact_type)s::text IS NULL OR a.artifact_type = %(artifact_type)s)
  AND (%(task_id)s::text IS NULL OR a.task_id = %(task_id)s)
  AND (%(older_than_s)s::float8 IS NULL
       OR a.created_at < now() - make_interval(secs => %(older_than_s)s))
  AND (%(since_s)s::float8 IS NULL
       OR a.created_at >= now() - make_interval(secs => %(since_s)s))
ORDER BY a.created_at DESC
LIMIT %(limit)s
"""

ARTIFACT_NOTIFICATIONS = """
SELECT id, channel, event, state, attempts, next_attempt_at, last_error,
       created_at, sent_at
FROM notifications
WHERE artifact_id = %(artifact_id)s::uuid
ORDER BY id
"""

ARTIFACT_TYPE_EXISTS = """
SELECT EXISTS (SELECT 1 FROM generated_artifacts WHERE artifact_type = %(artifact_type)s)
"""

# What requeue and cancel need to explain a refusal, for the ids asked about.
ARTIFACTS_BY_ID = """
SELECT id::text AS id, state, artifact_type, content->>'error_code' AS error_code,
       finished_at, extract(epoch FROM now() - finished_at)::float8 AS finished_age_s
FROM generated_artifacts
WHERE id = ANY(%(ids)s::uuid[])
"""

DATABASE_NOW = "SELECT now()"

# Failed rows an operator's filters match, oldest failure first. ``as_of``
# keeps a requeue from chasing rows that failed again after it started.
_REQUEUE_MATCH = """
    state = 'failed'
    AND updated_at <= %(as_of)s
    AND (%(error_code)s::text IS NULL OR content->>'error_code' = %(error_code)s)
    AND (%(artifact_type)s::text IS NULL OR artifact_type = %(artifact_type)s)
    AND (%(older_than_s)s::float8 IS NULL
         OR finished_at < now() - make_interval(secs => %(older_than_s)s))
"""

FIND_REQUEUE_CANDIDATES = f"""
SELECT id::text AS id, task_id, artifact_type, content->>'error_code' AS error_code,
       attempts, finished_at
FROM generated_artifacts
WHERE {_REQUEUE_MATCH}
ORDER BY finished_at, id
LIMIT %(limit)s
"""  # noqa: S608 - built from this module's constants

COUNT_REQUEUE_CANDIDATES = f"""
SELECT count(*) FROM generated_artifacts WHERE {_REQUEUE_MATCH}
"""  # noqa: S608 - built from this module's constants

# Stats. Rows still processing are split by where they are: leased and alive
# (in flight), waiting to be claimed (a retry may still be backing off), or
# holding an expired lease (a worker died; the row is claimable again).
STATS_QUEUE = f"""
SELECT count(*) AS processing,
       count(*) FILTER (WHERE lease_token IS NOT NULL AND lease_expires_at >= now())
           AS in_flight,
       count(*) FILTER (WHERE lease_token IS NULL AND run_after <= now()) AS ready,
       count(*) FILTER (WHERE lease_token IS NULL AND run_after > now())
           AS retry_scheduled,
       count(*) FILTER (WHERE lease_token IS NOT NULL AND lease_expires_at < now())
           AS expired_leases,
       extract(epoch FROM now() - min(created_at) FILTER (
           WHERE lease_token IS NULL OR lease_expires_at < now()))::float8
           AS oldest_waiting_s,
       (SELECT extract(epoch FROM paused_until - now())::float8
        FROM queue_controls
        WHERE name = 'llm' AND paused_until > now()) AS llm_paused_for_s
FROM {_PROCESSING_ROWS} p
"""  # noqa: S608 - composed from this module's constants

# Finished in the window, per type plus one total row (artifact_type NULL).
# Durations are first claim to final write, over successes only.
STATS_OUTCOMES = """
SELECT artifact_type,
       count(*) FILTER (WHERE state = 'success') AS succeeded,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM finished_at - started_at)::float8 * 1000)
           FILTER (WHERE state = 'success') AS p50_ms,
       percentile_cont(0.95) WITHIN GROUP (
           ORDER BY extract(epoch FROM finished_at - started_at)::float8 * 1000)
           FILTER (WHERE state = 'success') AS p95_ms,
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM started_at - created_at)::float8 * 1000)
           FILTER (WHERE state = 'success') AS p50_wait_ms
FROM generated_artifacts
WHERE state <> 'processing'
  AND finished_at >= now() - make_interval(secs => %(since_s)s)
GROUP BY GROUPING SETS ((artifact_type), ())
ORDER BY artifact_type NULLS LAST
"""

STATS_ERROR_CODES = """
SELECT content->>'error_code' AS error_code, artifact_type, count(*) AS count,
       max(finished_at) AS last_at
FROM generated_artifacts
WHERE state = 'failed'
  AND finished_at >= now() - make_interval(secs => %(since_s)s)
GROUP BY 1, 2
ORDER BY count DESC, error_code, artifact_type
"""

# Pending and dead are counted whenever they were made (they need attention);
# sent only within the window.
STATS_NOTIFICATIONS = """
SELECT channel,
       count(*) FILTER (WHERE state = 'pending') AS pending,
       count(*) FILTER (WHERE state = 'sent'
                        AND coalesce(sent_at, updated_at)
                            >= now() - make_interval(secs => %(since_s)s)) AS sent,
       count(*) FILTER (WHERE state = 'dead') AS dead,
       extract(epoch FROM now() - min(created_at) FILTER (WHERE state = 'pending'))::float8
           AS oldest_pending_s
FROM notifications
GROUP BY channel
ORDER BY channel
"""

# Prune. One cutoff, taken once from the database clock, serves every batch.
# Each batch is its own short transaction of at most %(limit)s rows, and
# SKIP LOCKED steps around rows someone holds, so a large table is never
# locked for long. Batches walk forward (finished_at, notification id) so
# rows that stay (an undelivered notification) are not scanned again.
PRUNE_CUTOFF = "SELECT now() - make_interval(secs => %(older_than_s)s)"

# ``state <> 'processing'`` lets the planner use ix_generated_artifacts_finished.
# An artifact whose notification is still pending stays until it is delivered
# or dead; its notifications go with it (ON DELETE CASCADE).
_PRUNABLE_ARTIFACT = """
    a.state <> 'processing'
    AND a.state = ANY(%(states)s::text[])
    AND a.finished_at < %(cutoff)s
    AND NOT EXISTS (
        SELECT 1 FROM notifications n
        WHERE n.artifact_id = a.id AND n.state = 'pending'
    )
"""

COUNT_PRUNABLE_ARTIFACTS = f"""
SELECT count(*) FROM generated_artifacts a WHERE {_PRUNABLE_ARTIFACT}
"""  # noqa: S608 - built from this module's constants

PRUNE_ARTIFACTS = f"""
WITH doomed AS (
    SELECT a.id FROM generated_artifacts a
    WHERE {_PRUNABLE_ARTIFACT}
      AND (%(after)s::timestamptz IS NULL OR a.finished_at >= %(after)s)
    ORDER BY a.finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM generated_artifacts a
USING doomed d
WHERE a.id = d.id
RETURNING a.finished_at
"""  # noqa: S608 - built from this module's constants

_PRUNABLE_NOTIFICATION = """
    state = 'sent' AND coalesce(sent_at, updated_at) < %(cutoff)s
"""

COUNT_PRUNABLE_NOTIFICATIONS = f"""
SELECT count(*) FROM notifications WHERE {_PRUNABLE_NOTIFICATION}
"""  # noqa: S608 - built from this module's constants

PRUNE_NOTIFICATIONS = f"""
WITH doomed AS (
    SELECT id FROM notifications
    WHERE {_PRUNABLE_NOTIFICATION}
      AND id > %(after_id)s
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM notifications n
USING doomed d
WHERE n.id = d.id
RETURNING n.id
"""  # noqa: S608 - built from this module's constants


# -- the notification outbox ----------------------------------------------------
# Run by worker/notifier.py. A notifier claims due rows with a short lock
# (locked_by/locked_until) and every later write matches locked_by, so two
# notifiers never send one row twice.

_CLAIM_NOTIFICATIONS = """
WITH due AS (
    SELECT id
    FROM notifications
    WHERE state = 'pending'
      AND next_attempt_at <= now()
      AND (locked_until IS NULL OR locked_until < now())
      AND channel = ANY({channels}::text[])
    ORDER BY next_attempt_at, id
    LIMIT {limit}
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE notifications n
    SET locked_by = %(notifier_id)s,
        locked_until = now() + make_interval(secs => %(lock_s)s),
        updated_at = now()
    FROM due
    WHERE n.id = due.id
    RETURNING n.id, n.artifact_id, n.event, n.channel, n.attempts
)
SELECT c.id, c.artifact_id::text AS artifact_id, c.event, c.channel, c.attempts,
       a.artifact_type, a.task_id,
       coalesce(a.content->>'error_code',
                a.metadata->'previous_failures'->-1->>'error_code') AS error_code,
       t.name AS task_name, t.meeting_time, t.note_type
FROM claimed c
JOIN generated_artifacts a ON a.id = c.artifact_id
LEFT JOIN tasks t ON t.id = a.task_id
ORDER BY c.id
"""

CLAIM_NOTIFICATIONS = _CLAIM_NOTIFICATIONS.replace("{limit}", "%(limit)s").replace(
    "{channels}", "%(channels)s"
)


@functools.lru_cache(maxsize=16)
def claim_notifications_for(limit: int, channels: tuple[str, ...]) -> str:
    """``CLAIM_NOTIFICATIONS`` with the batch size and channels in its text.

    A notifier's limit and channels never change, so as with
    ``claim_batch_for`` there is one plan per connection. Passed as
    parameters, the unknown channel array alone made PostgreSQL price the
    generic plan above the per-run one, and every claim was planned anew
    (25 custom plans of 25 prepared runs beside 2,000 pending rows).
    """
    return (
        sql.SQL(_CLAIM_NOTIFICATIONS)
        .format(limit=sql.Literal(int(limit)), channels=sql.Literal(list(channels)))
        .as_string(None)
    )


# Both run in one transaction; the reservation is a statement of its own so
# its snapshot sees every slot committed before the lock was granted.
LOCK_RATE_KEY = "SELECT pg_advisory_xact_lock(%(lock_class)s, hashtext(%(rate_key)s))"

RESERVE_RATE_SLOT = """
WITH pruned AS (
    DELETE FROM notification_rate
    WHERE rate_key = %(rate_key)s
      AND sent_at <= statement_timestamp() - make_interval(secs => %(window_s)s)
), recent AS (
    SELECT count(*) AS used, min(sent_at) AS oldest
    FROM notification_rate
    WHERE rate_key = %(rate_key)s
      AND sent_at > statement_timestamp() - make_interval(secs => %(window_s)s)
), reserved AS (
    INSERT INTO notification_rate (rate_key, sent_at)
    SELECT %(rate_key)s, statement_timestamp()
    FROM recent
    WHERE used < %(per_minute)s
    RETURNING id
)
SELECT EXISTS (SELECT 1 FROM reserved) AS reserved,
       greatest(extract(epoch FROM oldest + make_interval(secs => %(window_s)s)
                                   - statement_timestamp()), 0)::float8 AS wait_s
FROM recent
"""

# The robot's budget is spent: try again when its oldest slot leaves the
# window. Not an attempt, so it does not count toward the cap.
DEFER_NOTIFICATION = """
UPDATE notifications
SET next_attempt_at = now() + make_interval(secs => %(delay_s)s),
    locked_by = NULL,
    locked_until = NULL,
    updated_at = now()
WHERE id = %(id)s AND locked_by = %(notifier_id)s AND state = 'pending'
RETURNING id
"""

RECORD_SENT = """
UPDATE notifications
SET state = 'sent',
    attempts = attempts + 1,
    sent_at = now(),
    locked_by = NULL,
    locked_until = NULL,
    updated_at = now()
WHERE id = %(id)s AND locked_by = %(notifier_id)s AND state = 'pending'
RETURNING state
"""

# A failed attempt: retried after delay_s, or dead once the cap is reached.
RECORD_RETRY = """
UPDATE notifications
SET attempts = attempts + 1,
    state = CASE WHEN attempts + 1 >= %(max_attempts)s THEN 'dead' ELSE 'pending' END,
    next_attempt_at = now() + make_interval(secs => %(delay_s)s),
    last_error = %(error)s,
    locked_by = NULL,
    locked_until = NULL,
    updated_at = now()
WHERE id = %(id)s AND locked_by = %(notifier_id)s AND state = 'pending'
RETURNING state
"""

RECORD_DEAD = """
UPDATE notifications
SET state = 'dead',
    attempts = attempts + 1,
    last_error = %(error)s,
    locked_by = NULL,
    locked_until = NULL,
    updated_at = now()
WHERE id = %(id)s AND locked_by = %(notifier_id)s AND state = 'pending'
RETURNING state
"""

# Claimed rows this notifier will not get to (it is stopping): free them now
# instead of when their lock runs out.
RELEASE_NOTIFICATIONS = """
UPDATE notifications
SET locked_by = NULL, locked_until = NULL, updated_at = now()
WHERE id = ANY(%(ids)s::bigint[]) AND locked_by = %(notifier_id)s AND state = 'pending'
"""

# Seconds until the next row of these channels is due, so an idle notifier
# sleeps no longer than that.
NEXT_NOTIFICATION_DUE = """
SELECT greatest(extract(epoch FROM min(
           greatest(next_attempt_at, coalesce(locked_until, next_attempt_at))
       ) - now()), 0)::float8
FROM notifications
WHERE state = 'pending' AND channel = ANY(%(channels)s::text[])
"""

# Operator's retry: dead rows back to pending with a fresh attempt budget.
# ``last_error`` stays as the record of why they died.
RETRY_DEAD_NOTIFICATIONS = """
WITH revived AS (
    UPDATE notifications
    SET state = 'pending',
        attempts = 0,
        next_attempt_at = now(),
        locked_by = NULL,
        locked_until = NULL,
        updated_at = now()
    WHERE state = 'dead'
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND (%(artifact_id)s::uuid IS NULL OR artifact_id = %(artifact_id)s::uuid)
      AND (%(channel)s::text IS NULL OR channel = %(channel)s)
    RETURNING id, artifact_id, channel, last_error
)
SELECT id, artifact_id::text AS artifact_id, channel, last_error,
       pg_notify('artifactd_outbox', '') AS notified
FROM revived
ORDER BY id
"""

FIND_DEAD_NOTIFICATIONS = """
SELECT id, artifact_id::text AS artifact_id, channel, last_error
FROM notifications
WHERE state = 'dead'
  AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
  AND (%(artifact_id)s::uuid IS NULL OR artifact_id = %(artifact_id)s::uuid)
  AND (%(channel)s::text IS NULL OR channel = %(channel)s)
ORDER BY id
"""
