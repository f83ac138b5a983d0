"""Lighter claims and final writes: fewer index entries, one NOTIFY per statement.

Every claim and every final write is an update PostgreSQL cannot do in place
(it changes indexed columns), so each one adds an entry to every index whose
predicate the new row version meets. Three changes cut that work:

- The idempotency key's unique constraint becomes a unique index over the
  rows that have a key. Most rows have none, and NULLs never conflict, so
  the old index only grew with entries that could never matter.
- The claim index holds rows waiting for a worker (``processing`` with no
  lease) instead of every ``processing`` row. A claimed row leaves it, so a
  claim no longer steps over the rows other claims hold; rows whose lease
  expired are found through ``ix_generated_artifacts_leased`` instead.
- The per-row ``artifactd_notify_change`` trigger goes. It sent one NOTIFY
  per changed row and evaluated its condition on every update, claims and
  lease renewals included; the statements that change a state or progress
  now send one ``artifactd_events`` NOTIFY for all their rows (see
  ``shared/queue.py``). The payload becomes a JSON array of the objects the
  trigger sent one by one.

Revision ID: 0004_lighter_writes
Revises: 0003_notification_rate
Create Date: 2026-12-03
"""

from alembic import op

revision = "0004_lighter_writes"
down_revision = "0003_notification_rate"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint("uq_generated_artifacts_idempotency_key", "generated_artifacts")
    op.execute(
        "CREATE UNIQUE INDEX uq_generated_artifacts_idempotency_key "
        "ON generated_artifacts (idempotency_key) WHERE idempotency_key IS NOT NULL"
    )
    op.execute("DROP INDEX ix_generated_artifacts_claimable")
    op.execute(
        "CREATE INDEX ix_generated_artifacts_claimable ON generated_artifacts "
        "(priority DESC, created_at) WHERE state = 'processing' AND lease_token IS NULL"
    )
    op.execute("DROP TRIGGER generated_artifacts_notify_change ON generated_artifacts")
    op.execute("DROP FUNCTION artifactd_notify_change()")


def downgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION artifactd_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify(
                'artifactd_events',
                json_build_object('artifact_id', NEW.id, 'state', NEW.state)::text
            );
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER generated_artifacts_notify_change AFTER UPDATE ON generated_artifacts "
        "FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state "
        "OR OLD.metadata->'progress' IS DISTINCT FROM NEW.metadata->'progress') "
        "EXECUTE FUNCTION artifactd_notify_change()"
    )
    op.execute("DROP INDEX ix_generated_artifacts_claimable")
    op.execute(
        "CREATE INDEX ix_generated_artifacts_claimable ON generated_artifacts "
        "(priority DESC, created_at) WHERE state = 'processing'"
    )
    op.execute("DROP INDEX uq_generated_artifacts_idempotency_key")
    op.create_unique_constraint(
        "uq_generated_artifacts_idempotency_key",
        "generated_artifacts",
        ["idempotency_key"],
    )
