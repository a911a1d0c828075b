"""Retry what may succeed on a second try (errors marked ``transient``), and nothing else."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def backoff_delay(attempt: int, base_delay: float, max_delay: float) -> float:
    """Exponential backoff with equal jitter: half the cap is fixed, half random, so retries spread out."""
    cap = min(max_delay, base_delay * (2**attempt))
    return cap / 2 + random.uniform(0, cap / 2)


def with_retries(
    fn: Callable[[], T],
    *,
    attempts: int,
    base_delay: float = 0.2,
    max_delay: float = 5.0,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """Call ``fn`` up to ``attempts`` times; ``on_retry(attempt, error, delay)`` runs before each wait."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if not getattr(exc, "transient", False) or attempt == attempts - 1:
                raise
            delay = backoff_delay(attempt, base_delay, max_delay)
            if on_retry is not None:
                on_retry(attempt + 1, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
