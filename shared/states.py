"""The states an artifact and a notification can be in, as the schema spells them.

Kept apart from ``shared.models`` so that processes which only need the names
(the worker, the notifier) never import SQLAlchemy.
"""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    PROCESSING = "processing"
    SUCCESS = "success"
    FAILED = "failed"


class NotificationState(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"
