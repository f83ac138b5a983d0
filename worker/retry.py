"""How long a row waits before its next attempt.

Exponential in the attempt number with full jitter, capped, and never
shorter than a ``retry-after`` the upstream asked for. Inside one attempt
tenacity retries separately (see ``worker.generators.anthropic``); this is
the queue-level wait between attempts, during which the row holds no slot.
"""

from __future__ import annotations

import random

BASE_DELAY_S = 2.0
MAX_DELAY_S = 600.0


def retry_delay_s(
    attempt: int,
    retry_after_s: float | None = None,
    *,
    base_s: float = BASE_DELAY_S,
    cap_s: float = MAX_DELAY_S,
    rng: random.Random | None = None,
) -> float:
    """Seconds until attempt ``attempt + 1`` may start.

    Full jitter over ``[base/2, base * 2**(attempt-1)]`` keeps a burst of
    failures from coming back in lockstep.
    """
    draw = rng.random() if rng is not None else random.random()
    ceiling = min(cap_s, base_s * 2.0 ** max(attempt - 1, 0))
    delay = base_s / 2 + draw * max(ceiling - base_s / 2, 0.0)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, cap_s))
    return delay
