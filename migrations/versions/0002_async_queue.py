"""Artifacts become jobs: state, leases, retries, the outbox and wake-ups.

``state`` is added with server default ``success``, so every row written by
the synchronous code path reads as finished; new work is inserted as
``processing``. Adding a column with a constant default does not rewrite the
table on PostgreSQL 11+, so this is quick on a large table.

Revision ID: 0002_async_queue
Revises: 0001_pre_async
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0002_async_queue"
down_revision = "0001_pre_async"
branch_labels = None
depends_on = None

TS = sa.TIMESTAMP(timezone=True)


def upgrade() -> None:
    add = lambda *a, **k: op.add_column("generated_artifacts", sa.Column(*a, **k))  # noqa: E731
    add("state", sa.Text, nullable=False, server_default="success")
    add("priority", sa.Integer, nullable=False, server_default="0")
    add("run_after", TS, nullable=False, server_default=sa.text("now()"))
    add("attempts", sa.Integer, nullable=False, server_default="0")
    add("max_attempts", sa.Integer, nullable=False, server_default="5")
    add("lease_owner", sa.Text)
    add("lease_token", pg.UUID)
    add("lease_expires_at", TS)
    add("idempotency_key", sa.Text)
    add("batch_id", pg.UUID)
    add("started_at", TS)
    add("finished_at", TS)
    # Rows written synchronously were finished when written: give them the
    # times a finished row has, so stats and prune treat them like any other.
    op.execute(
        "UPDATE generated_artifacts SET started_at = created_at, finished_at = updated_at"
    )
    op.create_check_constraint(
        "ck_generated_artifacts_state",
        "generated_artifacts",
        "state IN ('processing', 'success', 'failed')",
    )
    op.create_unique_constraint(
        "uq_generated_artifacts_idempotency_key",
        "generated_artifacts",
        ["idempotency_key"],
    )
    # The claim walks this index in claim order; finished rows are not in it,
    # so claims cost the same with ten million finished rows as with none.
    op.execute(
        "CREATE INDEX ix_generated_artifacts_claimable ON generated_artifacts "
        "(priority DESC, created_at) WHERE state = 'processing'"
    )
    # Leased rows, for the fleet-wide concurrency count and lease renewal.
    op.execute(
        "CREATE INDEX ix_generated_artifacts_leased ON generated_artifacts "
        "(lease_expires_at) WHERE state = 'processing' AND lease_token IS NOT NULL"
    )
    op.execute(
        "CREATE INDEX ix_generated_artifacts_created ON generated_artifacts (created_at DESC)"
    )
    op.execute(
        "CREATE INDEX ix_generated_artifacts_finished ON generated_artifacts (finished_at) "
        "WHERE state <> 'processing'"
    )
    op.execute(
        "CREATE INDEX ix_generated_artifacts_error_code ON generated_artifacts "
        "((content->>'error_code')) WHERE state = 'failed'"
    )
    op.execute(
        "CREATE INDEX ix_generated_artifacts_batch ON generated_artifacts (batch_id) "
        "WHERE batch_id IS NOT NULL"
    )

    # A plain INSERT that leaves out version gets the next one for its pair.
    # NOT NULL is checked after BEFORE triggers, so the column keeps it.
    op.alter_column("generated_artifacts", "version", server_default=None)
    op.execute(
        """
        CREATE FUNCTION artifactd_assign_version() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.version IS NULL THEN
                SELECT coalesce(max(version), 0) + 1 INTO NEW.version
                FROM generated_artifacts
                WHERE task_id = NEW.task_id AND artifact_type = NEW.artifact_type;
            END IF;
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER generated_artifacts_assign_version BEFORE INSERT ON generated_artifacts "
        "FOR EACH ROW EXECUTE FUNCTION artifactd_assign_version()"
    )

    # Wake idle workers whoever inserts: one NOTIFY per statement, not per row.
    op.execute(
        """
        CREATE FUNCTION artifactd_notify_new() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM inserted WHERE state = 'processing') THEN
                PERFORM pg_notify('artifactd_new', '');
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER generated_artifacts_notify_new AFTER INSERT ON generated_artifacts "
        "REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT "
        "EXECUTE FUNCTION artifactd_notify_new()"
    )
    # Every change of state or progress, for the events stream and waiting CLIs.
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

    op.create_table(
        "notifications",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "artifact_id",
            pg.UUID,
            sa.ForeignKey("generated_artifacts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column(
            "next_attempt_at", TS, nullable=False, server_default=sa.text("now()")
        ),
        sa.Column("last_error", sa.Text),
        sa.Column("locked_by", sa.Text),
        sa.Column("locked_until", TS),
        sa.Column("created_at", TS, nullable=False, server_default=sa.text("now()")),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.text("now()")),
        sa.Column("sent_at", TS),
        sa.CheckConstraint(
            "event IN ('success', 'failed')", name="ck_notifications_event"
        ),
        sa.CheckConstraint(
            "state IN ('pending', 'sent', 'dead')", name="ck_notifications_state"
        ),
    )
    op.execute(
        "CREATE INDEX ix_notifications_due ON notifications (next_attempt_at) "
        "WHERE state = 'pending'"
    )
    op.execute("CREATE INDEX ix_notifications_artifact ON notifications (artifact_id)")
    op.execute(
        """
        CREATE FUNCTION artifactd_notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('artifactd_outbox', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER notifications_notify_outbox AFTER INSERT ON notifications "
        "FOR EACH STATEMENT EXECUTE FUNCTION artifactd_notify_outbox()"
    )

    # Fleet-wide switches every worker reads when it claims (e.g. an LLM pause).
    op.create_table(
        "queue_controls",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("paused_until", TS),
        sa.Column("reason", sa.Text),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.text("now()")),
    )


def downgrade() -> None:
    op.drop_table("queue_controls")
    op.drop_table("notifications")
    op.execute("DROP FUNCTION artifactd_notify_outbox()")
    op.execute("DROP TRIGGER generated_artifacts_notify_change ON generated_artifacts")
    op.execute("DROP FUNCTION artifactd_notify_change()")
    op.execute("DROP TRIGGER generated_artifacts_notify_new ON generated_artifacts")
    op.execute("DROP FUNCTION artifactd_notify_new()")
    op.execute("DROP TRIGGER generated_artifacts_assign_version ON generated_artifacts")
    op.execute("DROP FUNCTION artifactd_assign_version()")
    op.alter_column("generated_artifacts", "version", server_default="1")
    for index in ("claimable", "leased", "created", "finished", "error_code", "batch"):
        op.execute(f"DROP INDEX ix_generated_artifacts_{index}")
    op.drop_constraint("uq_generated_artifacts_idempotency_key", "generated_artifacts")
    op.drop_constraint("ck_generated_artifacts_state", "generated_artifacts")
    for column in (
        "state",
        "priority",
        "run_after",
        "attempts",
        "max_attempts",
        "lease_owner",
        "lease_token",
        "lease_expires_at",
        "idempotency_key",
        "batch_id",
        "started_at",
        "finished_at",
    ):
        op.drop_column("generated_artifacts", column)
