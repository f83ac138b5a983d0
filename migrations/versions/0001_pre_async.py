"""The pre-async shape: tasks and artifacts written synchronously.

Before artifactd, artifacts were written by the request that asked for them,
so a row existed only once it was finished and had no state. Keeping this
shape as the first revision lets existing databases upgrade in place.

Revision ID: 0001_pre_async
Revises:
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001_pre_async"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column(
            "id",
            sa.Text,
            primary_key=True,
            server_default=sa.text("gen_random_uuid()::text"),
        ),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("meeting_time", sa.TIMESTAMP(timezone=True)),
        sa.Column("note_type", sa.Text),
        sa.Column("language", sa.Text),
        sa.Column("transcript", sa.Text, nullable=False),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
    )
    op.create_table(
        "generated_artifacts",
        sa.Column(
            "id", pg.UUID, primary_key=True, server_default=sa.text("gen_random_uuid()")
        ),
        sa.Column("task_id", sa.Text, nullable=False),
        sa.Column("artifact_type", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("content", pg.JSONB),
        sa.Column(
            "metadata", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column(
            "updated_at",
            sa.TIMESTAMP(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.UniqueConstraint(
            "task_id",
            "artifact_type",
            "version",
            name="uq_generated_artifacts_task_type_version",
        ),
    )


def downgrade() -> None:
    op.drop_table("generated_artifacts")
    op.drop_table("tasks")
