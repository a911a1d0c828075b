"""A frozen broker on submit (issue 14): the publish times out and the submission is a prompt 503 with Retry-After,
nothing kept; before, Celery's publish waited on the stopped Redis for good and the request hung.

The job store stays up: only the broker (a real Redis of the test's own, SIGSTOPped) is frozen. The dispatcher is
the one ``Services.from_settings`` builds for that broker URL, so the API's own wiring is what is tested.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from tests.api.helpers import submit
from tests.conftest import ALPHA
from tests.support.volumes import mask_bytes
from tumorsynth.api.services import Services
from tumorsynth.embedded.redis_server import RedisServer

from ..workers.faults import SHAPE, request, stack

ANSWER_WITHIN = 10.0  # two publish tries of the 2 s socket timeout, and a loaded machine's slack


def test_submit_to_a_frozen_broker_is_a_prompt_503_and_keeps_nothing(redis_server, s3_endpoint, model_dir, tmp_path):
    broker = RedisServer(tmp_path / "broker").start()
    try:
        with stack(redis_server, s3_endpoint, model_dir) as st:
            frozen = st.settings.model_copy(update={"redis_url": broker.url})
            st.services.submissions.dispatcher = Services.from_settings(frozen).dispatcher
            assert submit(st.client, request(), {"mask": mask_bytes(SHAPE)}).status_code == 202  # broker alive
            listed = [j["id"] for j in st.client.get("/v1/jobs", headers=ALPHA).json()["jobs"]]
            stored = sorted(o.key for o in st.services.store.list("tenants/alpha/"))
            os.kill(broker.proc.pid, signal.SIGSTOP)
            answer: dict = {}

            def call() -> None:
                started = time.monotonic()
                answer["response"] = submit(st.client, request(), {"mask": mask_bytes(SHAPE)})
                answer["seconds"] = time.monotonic() - started

            t = threading.Thread(target=call, daemon=True)
            t.start()
            t.join(60)
            assert "response" in answer, "the submission hung on the frozen broker for 60 s"
            r = answer["response"]
            assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text[:300]
            assert r.headers["content-type"] == "application/problem+json"
            assert answer["seconds"] < ANSWER_WITHIN, f"answered after {answer['seconds']:.1f} s"
            assert [j["id"] for j in st.client.get("/v1/jobs", headers=ALPHA).json()["jobs"]] == listed
            assert sorted(o.key for o in st.services.store.list("tenants/alpha/")) == stored
    finally:
        if broker.proc and broker.proc.poll() is None:
            os.kill(broker.proc.pid, signal.SIGCONT)
        broker.stop()
