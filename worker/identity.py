"""Who a worker process is: unique per process start.

Host name and pid alone repeat after a restart (systemd reuses pids inside a
container), so a short random suffix keeps a restarted worker from mistaking
its predecessor's leases for its own.
"""

from __future__ import annotations

import os
import secrets
import socket


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
