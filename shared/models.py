"""SQLAlchemy tables mirroring the schema that ``migrations/`` builds.

The migrations are the source of truth; these definitions let the API, the
CLI and the repository build queries without writing SQL strings. The
worker's hot path uses the named statements in ``shared.queue`` instead.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

metadata = sa.MetaData()

TS = sa.TIMESTAMP(timezone=True)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column(
        "id",
        sa.Text,
        primary_key=True,
        server_default=sa.text("gen_random_uuid()::text"),
    ),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("meeting_time", TS),
    sa.Column("note_type", sa.Text),
    sa.Column("language", sa.Text),
    sa.Column("transcript", sa.Text, nullable=False),
    sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
)

artifacts = sa.Table(
    "generated_artifacts",
    metadata,
    sa.Column(
        "id",
        pg.UUID(as_uuid=False),
        primary_key=True,
        server_default=sa.text("gen_random_uuid()"),
    ),
    sa.Column("task_id", sa.Text, nullable=False),
    sa.Column("artifact_type", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("state", sa.Text, nullable=False, server_default="success"),
    sa.Column("content", pg.JSONB),
    sa.Column(
        "metadata", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")
    ),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("run_after", TS, nullable=False, server_default=sa.func.now()),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False, server_default="5"),
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_token", pg.UUID(as_uuid=False)),
    sa.Column("lease_expires_at", TS),
    sa.Column("idempotency_key", sa.Text),
    sa.Column("batch_id", pg.UUID(as_uuid=False)),
    sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    sa.Column("started_at", TS),
    sa.Column("finished_at", TS),
    sa.UniqueConstraint("task_id", "artifact_type", "version"),
    sa.Index(
        "uq_generated_artifacts_idempotency_key",
        "idempotency_key",
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    ),
)

notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column(
        "artifact_id",
        pg.UUID(as_uuid=False),
        sa.ForeignKey("generated_artifacts.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", TS, nullable=False, server_default=sa.func.now()),
    sa.Column("last_error", sa.Text),
    sa.Column("locked_by", sa.Text),
    sa.Column("locked_until", TS),
    sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    sa.Column("sent_at", TS),
)

queue_controls = sa.Table(
    "queue_controls",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("paused_until", TS),
    sa.Column("reason", sa.Text),
    sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
)

# One row per message sent to a robot in the last minute or so: the sliding
# window behind the fleet-wide per-robot rate limit. ``rate_key`` is a hash of
# the robot's URL, never the URL (it carries the robot's key).
notification_rate = sa.Table(
    "notification_rate",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("rate_key", sa.Text, nullable=False),
    sa.Column("sent_at", TS, nullable=False, server_default=sa.func.now()),
)
