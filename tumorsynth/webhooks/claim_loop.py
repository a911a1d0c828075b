"""The loop both outboxes (webhooks, PACS deliveries) run in a worker's main process: claim what is due as pool
threads free up, never waiting for one delivery before starting another; a delivery whose result could not be
recorded (Redis out of reach) is only logged: its claim lapses and it is due again."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)


def run_claim_loop(
    claim_due: Callable[[int], list[dict]],
    attempt: Callable[[dict], object],
    parallel: int,
    poll_seconds: float,
    name: str,
    stop: threading.Event | None = None,
) -> None:
    """``claim_due(limit)`` → deliveries claimed for this worker; ``attempt(d)`` makes and records one."""
    stop = stop or threading.Event()
    in_flight: set[Future] = set()

    def logged(d: dict) -> None:
        try:
            attempt(d)
        except Exception as exc:
            log.warning(
                "%s delivery for job %s: attempt not recorded (%s: %s)", name, d.get("job_id"), type(exc).__name__, exc
            )

    with ThreadPoolExecutor(parallel, thread_name_prefix=name) as pool:
        while not stop.is_set():
            in_flight = {f for f in in_flight if not f.done()}
            free = parallel - len(in_flight)
            try:
                for d in claim_due(free) if free else []:
                    in_flight.add(pool.submit(logged, d))
            except Exception:
                log.warning("%s delivery loop failed; retrying", name, exc_info=True)
            stop.wait(poll_seconds)
