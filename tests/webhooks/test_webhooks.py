"""Job webhooks against a real HTTP receiver: Standard Webhooks signatures checked by an independent verifier,
retries with backoff after 500s, and private targets refused unless the operators allow them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import time

import pytest
import redis

from tests.api.helpers import submit, wait_status
from tests.conftest import ALPHA, BETA, WEBHOOK_SECRET, make_settings
from tests.support.receiver import Receiver
from tests.support.volumes import mask_bytes
from tumorsynth.jobs import keys
from tumorsynth.jobs.outbox import Outbox

MODEL = "ldm/tiny@1"


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance: float = 300) -> bool:
    """The receiver's side, written from the spec: HMAC-SHA256 over "{id}.{timestamp}.{body}", any v1 entry."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(ts)) > tolerance:
        return False
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    return any(
        version == "v1" and hmac.compare_digest(sig, expected)
        for version, _, sig in (entry.partition(",") for entry in headers["webhook-signature"].split())
    )


def job_request(url: str, **extra) -> dict:
    return {"model": MODEL, "seed": 5, "sampler": {"name": "dpm++", "steps": 5}, "webhook": url} | extra


def test_signer_matches_the_standard_webhooks_test_vector():
    from tumorsynth.webhooks.signing import sign

    assert (
        sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            b'{"test": 2432232314}',
        )
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_start_and_completion_webhooks_are_signed(client, worker):
    with Receiver() as rx:
        job = submit(
            client,
            job_request(
                f"{rx.url}/hooks/a?x=1", webhook_events=["job.started", "job.succeeded"], metadata={"study": "w1"}
            ),
            {"mask": mask_bytes((40, 44, 30))},
        ).json()
        wait_status(client, job["id"], {"succeeded"})
        got = rx.wait(2)
    assert all(r.path == "/hooks/a?x=1" and r.headers["content-type"] == "application/json" for r in got)
    assert all(verify(WEBHOOK_SECRET, r.headers, r.body) for r in got)
    assert not verify(WEBHOOK_SECRET, got[0].headers, got[0].body + b" ")  # the verifier can say no
    bodies = {json.loads(r.body)["type"]: json.loads(r.body) for r in got}
    assert set(bodies) == {"job.started", "job.succeeded"}
    assert len({r.headers["webhook-id"] for r in got}) == 2
    done = bodies["job.succeeded"]["data"]
    assert done["id"] == job["id"] and done["status"] == "succeeded" and done["metadata"] == {"study": "w1"}
    assert {o["modality"] for o in done["outputs"] if o["kind"] == "image"} == {"t1", "t1c", "t2", "flair"}
    assert bodies["job.started"]["data"]["status"] == "running"
    state = client.get(f"/v1/jobs/{job['id']}/webhooks", headers=ALPHA).json()["deliveries"]
    assert sorted((d["type"], d["state"], d["attempts"]) for d in state) == [
        ("job.started", "delivered", 1),
        ("job.succeeded", "delivered", 1),
    ]
    assert client.get(f"/v1/jobs/{job['id']}/webhooks", headers=BETA).status_code == 404


def test_retried_with_backoff_until_the_receiver_accepts(client, worker, settings):
    with Receiver(statuses=[500, 500]) as rx:
        job = submit(client, job_request(f"{rx.url}/flaky"), {"mask": mask_bytes((40, 44, 30))}).json()
        wait_status(client, job["id"], {"succeeded"})
        got = rx.wait(3)
        time.sleep(0.5)
        assert len(rx.received) == 3, "delivered once accepted, not again"
    assert len({r.headers["webhook-id"] for r in got}) == 1 and len({r.body for r in got}) == 1
    assert all(verify(WEBHOOK_SECRET, r.headers, r.body) for r in got)
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    base = settings.webhook_backoff_seconds
    assert gaps[0] >= 0.9 * base and gaps[1] >= 0.9 * 2 * base, gaps  # doubled after each failure
    (d,) = client.get(f"/v1/jobs/{job['id']}/webhooks", headers=ALPHA).json()["deliveries"]
    assert d["type"] == "job.succeeded" and d["state"] == "delivered" and d["attempts"] == 3
    assert d["last_status"] == 200 and d["delivered_at"]


@pytest.fixture()
def strict_client(redis_server, s3_endpoint, model_dir):
    """An API with the shipped default: private webhook targets refused."""
    from fastapi.testclient import TestClient

    from tumorsynth.api.app import create_app

    s = make_settings(redis_server, s3_endpoint, model_dir, webhook_allow_private_targets=False)
    with TestClient(create_app(s)) as c:
        yield c, s


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost:8080/hook",
        "http://10.0.0.7/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:192.168.1.1]/",
        "ftp://example.com/hook",
    ],
)
def test_private_or_non_http_targets_refused_at_submission(strict_client, url):
    client, s = strict_client
    r = redis.Redis.from_url(s.redis_url)
    before = r.zcard(keys.tenant_jobs("alpha"))
    resp = submit(client, job_request(url), {"mask": mask_bytes((40, 44, 30))})
    assert resp.status_code == 422 and resp.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in resp.json()["errors"]] == ["webhook"]
    assert r.zcard(keys.tenant_jobs("alpha")) == before, "nothing stored or queued"


def test_webhook_needs_a_secret_and_events_need_a_webhook(redis_server, s3_endpoint, model_dir):
    from fastapi.testclient import TestClient

    from tumorsynth.api.app import create_app

    s = make_settings(redis_server, s3_endpoint, model_dir, webhook_secret=None)
    with TestClient(create_app(s)) as c:
        resp = submit(c, job_request("http://127.0.0.1:9/hook"), {"mask": mask_bytes((40, 44, 30))})
        assert resp.status_code == 422 and "secret" in resp.json()["errors"][0]["message"]
        req = job_request("x", webhook_events=["job.started"])
        del req["webhook"]
        resp = submit(c, req, {"mask": mask_bytes((40, 44, 30))})
        assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "webhook_events"


def _delivery(url: str, attempts: int = 0) -> dict:
    return {
        "id": f"msg_test{time.time_ns()}",
        "job_id": "job_test",
        "tenant": "alpha",
        "url": url,
        "type": "job.succeeded",
        "body": '{"type":"job.succeeded"}',
        "state": "pending",
        "attempts": attempts,
        "created_at": time.time(),
        "next_attempt_at": time.time(),
        "last_status": None,
        "last_error": None,
        "delivered_at": None,
    }


def test_delivery_rechecks_the_target_and_gives_up_after_the_last_attempt(settings):
    """At delivery time a target that is (now) private is refused without a request; attempts are bounded."""
    from tumorsynth.webhooks.deliver import Deliverer

    r = redis.Redis.from_url(settings.redis_url)
    with Receiver(statuses=[503]) as rx:
        strict = Deliverer(Outbox(r), settings.model_copy(update={"webhook_allow_private_targets": False}))
        d = strict.attempt(_delivery(rx.url + "/x"))
        assert d["state"] == "refused" and "non-public" in d["last_error"] and rx.received == []
        lenient = Deliverer(Outbox(r), settings.model_copy(update={"webhook_max_attempts": 3}))
        d = lenient.attempt(_delivery(rx.url + "/y", attempts=2))
        assert d["state"] == "failed" and d["attempts"] == 3 and d["last_status"] == 503
        assert len(rx.received) == 1 and verify(WEBHOOK_SECRET, rx.received[0].headers, rx.received[0].body)
    assert r.zscore(keys.WEBHOOKS_DUE, d["id"]) is None


def test_cancel_webhook_survives_a_deliverer_that_died_mid_delivery(redis_server, settings):
    """A queued job canceled through the store makes a job.canceled delivery in the same transaction; a deliverer
    that claimed it and died leaves it due again after the claim timeout, and the next one delivers it.
    (Its own Redis database, so the session worker's delivery loop stays out of it.)"""
    from tumorsynth.jobs.outbox import DUE
    from tumorsynth.jobs.records import JobRecord
    from tumorsynth.jobs.store import JobStore
    from tumorsynth.webhooks.deliver import Deliverer

    r = redis.Redis(port=redis_server.port, db=7)
    r.flushdb()
    jobs = JobStore(r)
    with Receiver() as rx:
        rec = JobRecord(
            id=f"job_cancel{time.time_ns()}",
            tenant="alpha",
            model=MODEL,
            family="ldm",
            queue="gpu",
            request={"model": MODEL, "seed": 1, "webhook": rx.url + "/c"},
        )
        jobs.create(rec)
        assert r.zcard(DUE) == 0, "no event for a queued job"
        jobs.cancel("alpha", rec.id)
        (claimed,) = Outbox(r).claim_due(claim_seconds=0.6)  # this deliverer now dies without sending
        nxt = Deliverer(Outbox(r), settings)
        assert nxt.deliver_due() == [], "a claimed delivery is not sent twice at once"
        time.sleep(0.7)
        (d,) = nxt.deliver_due()
        got = rx.wait(1)
    assert d["id"] == claimed["id"] and d["state"] == "delivered" and d["attempts"] == 1
    body = json.loads(got[0].body)
    assert body["type"] == "job.canceled" and body["data"]["id"] == rec.id and body["data"]["status"] == "canceled"
    assert got[0].headers["webhook-id"] == claimed["id"] and verify(WEBHOOK_SECRET, got[0].headers, got[0].body)
    assert r.zcard(DUE) == 0
    r.flushdb()


def test_checked_address_is_the_one_connected_to():
    from tumorsynth.webhooks.targets import TargetRefused, check_target

    public = lambda host, port: ["93.184.215.14"]
    t = check_target("https://hooks.example:8443/in?q=1", False, public)
    assert t.pinned_url() == "https://93.184.215.14:8443/in?q=1" and t.host_header == "hooks.example:8443"
    with pytest.raises(TargetRefused, match=r"10\.0\.0\.1"):  # one private answer among public ones is enough
        check_target("https://hooks.example/", False, lambda h, p: ["93.184.215.14", "10.0.0.1"])


def test_a_name_that_now_resolves_privately_is_refused_at_delivery(settings):
    """DNS rebinding: the host passed the check at submission but resolves to loopback when the delivery is due."""
    from tumorsynth.webhooks.deliver import Deliverer

    r = redis.Redis.from_url(settings.redis_url)
    with Receiver() as rx:
        port = rx.url.rsplit(":", 1)[1]
        rebound = Deliverer(
            Outbox(r),
            settings.model_copy(update={"webhook_allow_private_targets": False}),
            resolve=lambda host, p: ["127.0.0.1"],
        )
        d = rebound.attempt(_delivery(f"http://hooks.example:{port}/x"))
        time.sleep(0.2)
        assert d["state"] == "refused" and "127.0.0.1" in d["last_error"] and rx.received == []
