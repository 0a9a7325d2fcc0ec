"""The one retry loop over database calls: run a step, and while it fails in a way worth waiting
for, wait with exponential backoff and run it again.

Used by the store's own creation steps (``Store``: creation races, a database away at start-up)
and by ``nas.workers.wait_for_database`` (a worker riding out an outage); each says which errors
are worth a retry, how long it waits and what it says meanwhile.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["retry"]

T = TypeVar("T")


def retry(fn: Callable[[], T], *, retryable: Callable[[Exception], bool], delay: float, max_delay: float,
          attempts: int | None = None, max_wait: float | None = None, jitter: bool = False,
          give_up: Callable[[float], bool] | None = None,
          on_retry: Callable[[Exception], None] | None = None) -> T:
    """Run ``fn``; when it raises an exception that ``retryable`` accepts, sleep and run it again.

    Args:
        retryable: whether an error is worth waiting for; any other is raised at once.
        delay: the first pause (seconds); each next one doubles, up to ``max_delay``.
        attempts: runs of ``fn`` at most (None: no limit).
        max_wait: seconds after the first run past which the last error is raised, and no pause
            goes beyond (None: no limit).
        jitter: pause ``delay x U(1, 2)`` rather than ``delay`` (processes racing on one database
            do not retry in step).
        give_up: called with the seconds waited so far; true raises the last error.
        on_retry: called with each error that is retried, before the pause.

    Raises:
        The last error of ``fn``, when it is not retryable or the attempts or the time are spent.
    """
    start = time.monotonic()
    for attempt in itertools.count(1):
        try:
            return fn()
        except Exception as e:
            waited = time.monotonic() - start
            if not retryable(e) or (attempts is not None and attempt >= attempts) \
                    or (max_wait is not None and waited >= max_wait) or (give_up is not None and give_up(waited)):
                raise
            if on_retry is not None:
                on_retry(e)
            pause = delay * (1 + random.random()) if jitter else delay
            time.sleep(min(pause, max_wait - waited) if max_wait is not None else pause)
            delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")  # pragma: no cover
