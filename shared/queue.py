"""Every statement the queue runs, named and in one place.

Placeholders are psycopg's ``%(name)s``; the same text runs on sync and
async connections. Invariants the statements keep:

- Time comes from the database (``now()``), never a worker's clock.
- A row is written by its holder only: every write after a claim matches
  ``lease_token``, so a worker whose lease expired changes nothing.
- Final states insert their outbox rows in the same statement, so a
  notification exists exactly when the final state committed.
- Claims take rows with ``FOR UPDATE SKIP LOCKED`` in claim order (priority,
  then age) over the partial index of ``processing`` rows.
"""

from __future__ import annotations

# Serialises claims only when a fleet-wide cap is set, so the count of leased
# rows and the claim that depends on it see each other's commits.
FLEET_CLAIM_LOCK = 7_245_019_312

LLM_CONTROL = "llm"

NEW_CHANNEL = "artifactd_new"
EVENTS_CHANNEL = "artifactd_events"
OUTBOX_CHANNEL = "artifactd_outbox"

_CLAIMABLE = """
    state = 'processing'
    AND run_after <= now()
    AND (lease_expires_at IS NULL OR lease_expires_at < now())
    AND attempts < max_attempts
    AND NOT EXISTS (
        SELECT 1 FROM queue_controls
        WHERE name = 'llm' AND paused_until > now()
    )
"""

# The candidates CTE remembers who held an expired lease, so a takeover is
# logged as one. The task is joined in the same round trip; a LEFT JOIN so a
# missing task still claims the row and fails it with INPUT_NOT_FOUND.
_CLAIM = f"""
WITH candidates AS (
    SELECT id, lease_owner AS lost_owner
    FROM generated_artifacts
    WHERE {_CLAIMABLE}
    ORDER BY priority DESC, created_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
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
              a.lease_token, c.lost_owner, a.created_at
)
SELECT c.id::text AS id, c.task_id, c.artifact_type, c.attempts, c.max_attempts,
       c.lease_token::text AS lease_token, c.lost_owner,
       t.id IS NOT NULL AS task_exists, t.name AS task_name, t.meeting_time,
       t.language, t.transcript
FROM claimed c
LEFT JOIN tasks t ON t.id = c.task_id
ORDER BY c.created_at
"""

CLAIM_BATCH = _CLAIM

LOCK_FLEET_CLAIMS = f"SELECT pg_advisory_xact_lock({FLEET_CLAIM_LOCK})"

# Run after LOCK_FLEET_CLAIMS in the same transaction (a new statement, so a
# new snapshot that sees every claim committed before the lock was granted).
CLAIM_BATCH_CAPPED = _CLAIM.replace(
    "LIMIT %(limit)s",
    """LIMIT greatest(0, least(%(limit)s, %(fleet_cap)s - (
        SELECT count(*) FROM generated_artifacts
        WHERE state = 'processing' AND lease_token IS NOT NULL
          AND lease_expires_at > now()
    )))""",
    1,
)

RENEW_LEASES = """
UPDATE generated_artifacts a
SET lease_expires_at = now() + make_interval(secs => %(lease_s)s)
FROM unnest(%(ids)s::uuid[], %(tokens)s::uuid[]) AS h(id, token)
WHERE a.id = h.id AND a.lease_token = h.token AND a.state = 'processing'
RETURNING a.id::text
"""

# Final states. ``error`` (nullable) is appended to metadata.errors; the outbox
# gets one row per channel per finished artifact.
FINISH_ARTIFACTS = """
WITH input AS (
    SELECT *
    FROM unnest(
        %(ids)s::uuid[], %(tokens)s::uuid[], %(states)s::text[],
        %(contents)s::jsonb[], %(metadata)s::jsonb[], %(errors)s::jsonb[]
    ) AS i(id, token, state, content, metadata, error)
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
    RETURNING a.id, a.state
), outbox AS (
    INSERT INTO notifications (artifact_id, event, channel)
    SELECT f.id, f.state, ch.channel
    FROM finished f CROSS JOIN unnest(%(channels)s::text[]) AS ch(channel)
)
SELECT id::text FROM finished
"""

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
RETURNING a.id::text
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
RETURNING id::text
"""

# Rows whose last lease expired with no attempts left: a worker died on them
# max_attempts times. Fail them so one poison input cannot kill workers forever.
FAIL_LOST_ARTIFACTS = """
WITH lost AS (
    SELECT id FROM generated_artifacts
    WHERE state = 'processing'
      AND attempts >= max_attempts
      AND (lease_expires_at IS NULL OR lease_expires_at < now())
    ORDER BY created_at
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
    FROM lost l
    WHERE a.id = l.id
    RETURNING a.id, a.state
), outbox AS (
    INSERT INTO notifications (artifact_id, event, channel)
    SELECT f.id, f.state, ch.channel
    FROM failed f CROSS JOIN unnest(%(channels)s::text[]) AS ch(channel)
)
SELECT id::text FROM failed
"""

# Operator or API cancel. A worker running the row loses its token and stops
# at its next renewal or write.
CANCEL_ARTIFACTS = """
WITH cancelled AS (
    UPDATE generated_artifacts a
    SET state = 'failed',
        content = %(content)s::jsonb,
        lease_owner = NULL,
        lease_token = NULL,
        lease_expires_at = NULL,
        finished_at = now(),
        updated_at = now()
    WHERE a.id = ANY(%(ids)s::uuid[]) AND a.state = 'processing'
    RETURNING a.id, a.state
), outbox AS (
    INSERT INTO notifications (artifact_id, event, channel)
    SELECT c.id, c.state, ch.channel
    FROM cancelled c CROSS JOIN unnest(%(channels)s::text[]) AS ch(channel)
)
SELECT id::text FROM cancelled
"""

# Failed rows back to work, attempts reset; the failure stays in metadata.
REQUEUE_ARTIFACTS = """
WITH requeued AS (
    UPDATE generated_artifacts a
    SET state = 'processing',
        attempts = 0,
        run_after = now(),
        metadata = a.metadata || jsonb_build_object(
            'previous_failures', coalesce(a.metadata->'previous_failures', '[]'::jsonb)
                || jsonb_build_array(coalesce(a.content, '{}'::jsonb)
                    || jsonb_build_object('finished_at', a.finished_at))),
        content = NULL,
        lease_owner = NULL,
        lease_token = NULL,
        lease_expires_at = NULL,
        finished_at = NULL,
        updated_at = now()
    WHERE a.id = ANY(%(ids)s::uuid[]) AND a.state = 'failed'
    RETURNING a.id
)
SELECT id::text, pg_notify('artifactd_new', '') FROM requeued
"""

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

COUNT_UNFINISHED = "SELECT count(*) FROM generated_artifacts WHERE state = 'processing'"

# Seconds until the earliest waiting retry becomes claimable, so an idle
# worker sleeps exactly that long instead of a whole poll interval.
NEXT_RUN_AFTER = """
SELECT greatest(extract(epoch FROM min(run_after) - now()), 0)::float8
FROM generated_artifacts
WHERE state = 'processing' AND lease_token IS NULL
"""

QUEUE_DEPTH = """
SELECT count(*) FILTER (WHERE lease_token IS NULL OR lease_expires_at < now()),
       count(*) FILTER (WHERE lease_token IS NOT NULL AND lease_expires_at >= now())
FROM generated_artifacts
WHERE state = 'processing'
"""
