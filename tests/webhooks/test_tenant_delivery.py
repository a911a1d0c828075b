"""Webhooks between tenants, against real receivers on loopback and a real Redis.

The tenant is inside the signed body and in a ``webhook-tenant`` header; and one tenant's receiver that trickles
its response headers (a byte a second, so no single read ever times out) cannot delay another tenant's delivery:
each delivery runs on its own pool thread, with a whole-request deadline. (The delivery loop runs here in a thread
on a Redis database of its own, so the session worker's loop stays out of it.)
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import redis

from tests.conftest import WEBHOOK_SECRET
from tests.support.receiver import Receiver
from tumorsynth.jobs import keys
from tumorsynth.jobs.outbox import Outbox

from .test_webhooks import verify

DEADLINE = 2.0  # webhook_timeout_seconds: the whole request, not each read
TRICKLE_EVERY = 1.0  # under DEADLINE: a per-read timeout never fires


class TrickleReceiver:
    """Reads a request, then sends its status line one byte every ``TRICKLE_EVERY`` seconds, for ever."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.stop = threading.Event()
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            self.connections += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
                if self.stop.wait(TRICKLE_EVERY):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def job(tenant: str, url: str):
    from tumorsynth.jobs.records import JobRecord, new_id

    return JobRecord(
        id=new_id("job"),
        tenant=tenant,
        model="ldm/tiny@1",
        family="ldm",
        queue="parked",
        request={"model": "ldm/tiny@1", "seed": 1, "webhook": url},
    )


@pytest.fixture()
def loop(redis_server, settings):
    """A delivery loop on Redis database 6 with a 2 s whole-request deadline; yields (redis, job store)."""
    from tumorsynth.jobs.store import JobStore
    from tumorsynth.webhooks.deliver import Deliverer

    r = redis.Redis(port=redis_server.port, db=6)
    r.flushdb()
    s = settings.model_copy(
        update={"webhook_timeout_seconds": DEADLINE, "webhook_backoff_seconds": 60, "webhook_poll_seconds": 0.05}
    )
    stop = threading.Event()
    runner = threading.Thread(target=Deliverer(Outbox(r), s).run_forever, args=(stop,), daemon=True)
    runner.start()
    yield r, JobStore(r)
    stop.set()
    runner.join(DEADLINE + 5)
    r.flushdb()


def test_a_trickling_receiver_does_not_delay_another_tenants_delivery(loop):

    r, jobs = loop
    slow = TrickleReceiver()
    try:
        with Receiver() as fast:
            slow_jobs = [job("alpha", slow.url + "/a") for _ in range(3)]
            for rec in slow_jobs:
                jobs.create(rec)
                jobs.cancel("alpha", rec.id)  # job.canceled → a delivery to the trickling receiver
            deadline = time.monotonic() + 5
            while slow.connections < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert slow.connections == 3, "the slow deliveries are under way"
            other = job("beta", fast.url + "/b")
            jobs.create(other)
            sent = time.time()
            jobs.cancel("beta", other.id)
            (got,) = fast.wait(1, timeout=30)
            waited = got.at - sent
            assert waited < 1.0, f"beta's delivery waited {waited:.1f} s behind alpha's slow receiver"
            # and each slow attempt ended at its deadline, recorded as a timeout to retry
            time.sleep(DEADLINE + 0.5)
            states = [d for rec in slow_jobs for d in Outbox(r).for_job(rec.id)]
            assert all(
                d["attempts"] == 1 and d["state"] == "pending" and "Timeout" in (d["last_error"] or "") for d in states
            ), states
    finally:
        slow.close()


def test_the_tenant_is_signed_inside_the_body_and_sent_as_a_header(loop):
    _, jobs = loop
    with Receiver() as rx:
        for tenant in ("alpha", "beta"):
            rec = job(tenant, rx.url + f"/{tenant}")
            jobs.create(rec)
            jobs.cancel(tenant, rec.id)
        got = sorted(rx.wait(2, timeout=30), key=lambda g: g.path)
    for g, tenant in zip(got, ("alpha", "beta")):
        body = json.loads(g.body)
        assert body["tenant"] == tenant and g.headers["webhook-tenant"] == tenant
        assert verify(WEBHOOK_SECRET, g.headers, g.body)
        assert not verify(WEBHOOK_SECRET, g.headers, g.body.replace(f'"{tenant}"'.encode(), b'"gamma"'))


def test_a_pending_delivery_to_a_url_with_cr_lf_is_refused_once_not_retried(settings):
    """A URL stored before URLs were checked strictly: at delivery it is refused (no request, one warning), where it
    used to stay pending for ever with a traceback per retry."""
    from tumorsynth.webhooks.deliver import Deliverer

    from .test_webhooks import _delivery

    r = redis.Redis.from_url(settings.redis_url)
    d = Deliverer(Outbox(r), settings).attempt(_delivery("http://127.0.0.1:9/x\r\nX-Injected: 1"))
    assert d["state"] == "refused" and "U+000D" in d["last_error"] and d["attempts"] == 1
    assert r.zscore(keys.WEBHOOKS_DUE, d["id"]) is None
