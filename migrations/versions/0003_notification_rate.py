"""A fleet-wide send log per chat robot, for its rate limit.

A robot takes a fixed number of messages a minute (WeCom: 20), however many
notifier processes talk to it. Each notifier reserves a slot here before it
sends; a reservation counts the slots of the last 60 seconds under an
advisory lock held per robot, so the window is exact across processes. Rows
older than the window are deleted as new ones arrive. ``rate_key`` is a hash
of the robot's URL, never the URL, which carries the robot's key.

Revision ID: 0003_notification_rate
Revises: 0002_async_queue
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_notification_rate"
down_revision = "0002_async_queue"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notification_rate",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("rate_key", sa.Text, nullable=False),
        sa.Column(
            "sent_at",
            sa.TIMESTAMP(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
    )
    op.create_index(
        "ix_notification_rate_key_sent", "notification_rate", ["rate_key", "sent_at"]
    )


def downgrade() -> None:
    op.drop_table("notification_rate")
