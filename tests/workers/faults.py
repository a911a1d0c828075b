"""What the fault tests share: a service stack on its own queue, job requests, worker-log attempts, S3 counts."""

from __future__ import annotations

import re
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient

from tests.api.helpers import submit
from tests.conftest import make_settings
from tests.support.services import wait_for
from tests.support.volumes import mask_bytes
from tumorsynth.settings import Settings

MODEL = "ldm/tiny@1"
SHAPE = (40, 44, 30)
OUTPUTS_PER_JOB = 4  # FLAIR and the mask, each with a sidecar


def request(steps: int = 5, sampler: str = "dpm++") -> dict:
    return {"model": MODEL, "modalities": ["flair"], "seed": 3, "sampler": {"name": sampler, "steps": steps}}


def slow(steps: int) -> dict:
    """DDPM with this many steps: about a second per 5 steps on a busy 2-core machine, long enough to interrupt."""
    return request(steps, "ddpm")


@dataclass
class Stack:
    settings: Settings
    client: TestClient
    services: object

    def submit(self, req: dict) -> dict:
        r = submit(self.client, req, {"mask": mask_bytes(SHAPE)})
        assert r.status_code == 202, r.text
        return r.json()

    def stored(self, job_id: str, tenant: str = "alpha") -> list[str]:
        """Object keys under the job's output prefix, as S3 lists them (not as the job claims)."""
        return [o.key for o in self.services.store.list(f"tenants/{tenant}/jobs/{job_id}/outputs/")]


@contextmanager
def stack(redis_server, s3_endpoint, model_dir, **overrides):
    """The API in-process on its own Celery queue, so a test's workers see only that test's jobs."""
    from tumorsynth.api.app import create_app
    from tumorsynth.storage import make_store

    overrides.setdefault("family_queues", {"ldm": f"faults-{uuid.uuid4().hex[:8]}"})
    # 5 s, not the suite's 3 s: a fresh pool process loading torch on a busy 2-core machine can miss beats for
    # seconds, and a spurious lapse would add an attempt that these tests count.
    overrides.setdefault("lease_seconds", 5.0)
    settings = make_settings(redis_server, s3_endpoint, model_dir, **overrides)
    make_store(settings).ensure_bucket()
    app = create_app(settings)
    with TestClient(app) as client:
        yield Stack(settings, client, app.state.services)


ATTEMPT = re.compile(r"job (\S+) attempt (\d+) (started|ended \((\w+)\)) on (\S+) at ([\d.]+)")


@dataclass(frozen=True)
class Attempt:
    job_id: str
    number: int
    worker: str
    start: float
    end: float | None
    outcome: str | None


def attempts_in_logs(*logs: Path) -> list[Attempt]:
    """Every attempt the workers logged, start and end paired by (job, attempt number, worker)."""
    starts: dict[tuple, float] = {}
    ends: dict[tuple, tuple[float, str]] = {}
    for path in logs:
        for m in ATTEMPT.finditer(path.read_text(errors="replace")):
            key = (m.group(1), int(m.group(2)), m.group(5))
            if m.group(3) == "started":
                assert key not in starts, f"attempt {key} started twice"
                starts[key] = float(m.group(6))
            else:
                ends[key] = (float(m.group(6)), m.group(4))
    return [Attempt(k[0], k[1], k[2], t, *ends.get(k, (None, None))) for k, t in starts.items()]


def settled_attempts(*logs: Path, jobs: list[str], timeout: float = 30.0) -> list[Attempt]:
    """The logged attempts, once the latest attempt of every job in ``jobs`` has ended: the end line is written
    after the job record's last change, so a test that has just seen a job finish must wait for it."""

    def ready() -> list[Attempt] | None:
        ran = attempts_in_logs(*logs)
        latest = {}
        for a in sorted(ran, key=lambda a: a.number):
            latest[a.job_id] = a
        return ran if all(j in latest and latest[j].outcome for j in jobs) else None

    return wait_for(ready, timeout=timeout, what="the attempts' end lines in the worker logs")
