"""How the domain queues a job, without knowing the queue: ``JobService`` and the reaper call a ``Dispatcher``;
``workers.celery_app.CeleryDispatcher`` implements it on Celery. The domain layer thus imports no Celery (and tests
can dispatch to anything with a ``send``)."""

from __future__ import annotations

from typing import Protocol


class Dispatcher(Protocol):
    def send(self, job_id: str, family: str, queue: str | None = None, priority: int = 0) -> None:
        """Queue ``job_id`` (its record already written) on ``queue``, else the queue of its model ``family``;
        ``priority`` 0 runs first, 9 last (``jobs.fairness``)."""
        ...

    def send_plan(self, batch_id: str, family: str) -> None:
        """Queue the planning of batch ``batch_id`` (its record already written) on its model family's queue."""
        ...
