"""The delivery loop: runs in every worker's main process, beside the reaper, so no delivery holds up a job.

Deliveries are independent: the loop hands each due one to a free pool thread and claims more as threads free up,
never waiting for a batch, and every attempt has a whole-request deadline (``webhook_timeout_seconds``, from
connect to the response's status line), so a receiver that answers slowly, or trickles its headers, holds one
thread for at most that long and never delays another tenant's delivery.

Each attempt re-checks the target (DNS may have changed since submission) and sends to the checked address, signs
the fixed body with the tenant's secret and a fresh timestamp, and treats any 2xx as delivered. Anything else
(an error status, a redirect, a timeout, a refused connection) is retried with exponential backoff until
``webhook_max_attempts``; a target that is no longer allowed fails at once as ``refused``.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import httpx

from .. import __version__
from . import signing
from .claim_loop import run_claim_loop
from .deadline import DeadlineTransport, deadline
from .targets import TargetRefused, check_target, system_resolver

log = logging.getLogger(__name__)
PARALLEL = 8  # deliveries in flight per worker; each ends by its deadline


def backoff(settings, attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: base · 2^(attempts-1), capped."""
    return min(settings.webhook_backoff_seconds * 2 ** (attempts - 1), settings.webhook_backoff_max_seconds)


class DeliveryQueue(Protocol):
    """Where deliveries wait: ``jobs.outbox.Outbox`` (written with the job transitions, so it lives in ``jobs/``)."""

    def claim_due(self, claim_seconds: float, limit: int = 16) -> list[dict]: ...

    def save(self, d: dict) -> None: ...


class Deliverer:
    def __init__(self, outbox: DeliveryQueue, settings, resolve=system_resolver):
        self.settings, self.resolve = settings, resolve
        self.outbox = outbox
        self.client = httpx.Client(
            timeout=settings.webhook_timeout_seconds,
            follow_redirects=False,
            trust_env=False,
            transport=DeadlineTransport(max_connections=PARALLEL),
        )

    @property
    def claim_seconds(self) -> float:
        return 2 * self.settings.webhook_timeout_seconds + 30

    def deliver_due(self, pool: ThreadPoolExecutor | None = None) -> list[dict]:
        due = self.outbox.claim_due(self.claim_seconds)
        return list(pool.map(self.attempt, due)) if pool else [self.attempt(d) for d in due]

    def attempt(self, d: dict) -> dict:
        """One attempt at delivery ``d``; records and returns its outcome."""
        s = self.settings
        d["attempts"] += 1
        d["last_attempt_at"] = time.time()
        try:
            d["last_status"] = self._post(d)
            d["last_error"] = None if 200 <= d["last_status"] < 300 else f"HTTP {d['last_status']}"
        except TargetRefused as exc:
            d.update(state="refused", last_status=None, last_error=str(exc))
            log.warning("webhook %s for job %s refused: %s", d["id"], d["job_id"], exc)
            self.outbox.save(d)
            return d
        except httpx.HTTPError as exc:
            d.update(last_status=None, last_error=f"{type(exc).__name__}: {exc}"[:300])
        if d["last_error"] is None:
            d.update(state="delivered", delivered_at=time.time())
        elif d["attempts"] >= s.webhook_max_attempts:
            d["state"] = "failed"
            log.warning(
                "webhook %s for job %s failed after %d attempts: %s",
                d["id"],
                d["job_id"],
                d["attempts"],
                d["last_error"],
            )
        else:
            d["next_attempt_at"] = time.time() + backoff(s, d["attempts"])
        self.outbox.save(d)
        return d

    def _post(self, d: dict) -> int:
        secret = self.settings.webhook_secret_for(d["tenant"])
        if secret is None:
            raise TargetRefused("no webhook signing secret is configured for this tenant any more")
        target = check_target(d["url"], self.settings.webhook_allow_private_targets, self.resolve)
        body = d["body"].encode()
        headers = signing.headers(secret, d["id"], int(time.time()), body) | {
            "content-type": "application/json",
            "user-agent": f"tumorsynth-webhooks/{__version__}",
            "webhook-tenant": d["tenant"],
        }  # also inside the signed body, which is what a receiver should trust
        extensions = {}
        if target.address is not None:
            headers["host"] = target.host_header
            if target.scheme == "https":
                extensions["sni_hostname"] = target.host
        # The request goes to the address just checked, not to a fresh DNS answer; TLS still verifies the name.
        with (
            deadline(self.settings.webhook_timeout_seconds),
            self.client.stream(
                "POST", target.pinned_url(), content=body, headers=headers, extensions=extensions
            ) as resp,
        ):
            return resp.status_code

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Claim due deliveries as pool threads free up (``webhooks.claim_loop``)."""
        run_claim_loop(
            lambda limit: self.outbox.claim_due(self.claim_seconds, limit=limit),
            self.attempt,
            PARALLEL,
            self.settings.webhook_poll_seconds,
            "webhook",
            stop,
        )


def start_deliverer(outbox: DeliveryQueue, settings) -> threading.Thread:
    t = threading.Thread(target=Deliverer(outbox, settings).run_forever, name="tumorsynth-webhooks", daemon=True)
    t.start()
    return t
