"""The Redis-backed job store: records, the tenant index, leases, idempotency keys and change events.

Every state change goes through ``update`` (optimistic WATCH/MULTI), so concurrent workers, reapers and API
processes never overwrite each other; worker writes carry the lease token (the attempt number) as a fence.
"""

from __future__ import annotations

import base64
import builtins
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import redis

from ..errors import InvalidRequest, LeaseLost, NotFound
from ..pacs import outbox as pacs_outbox
from . import keys, outbox, stats
from .records import JobRecord, Lease, is_id, now

LEASES = keys.LEASES
events_channel = keys.job_events  # the API's event streams subscribe to it


@dataclass(frozen=True)
class IdempotencyBinding:
    job_id: str
    pending: bool  # its submission is still under way: the job may not exist yet


@dataclass(frozen=True)
class Claim:
    record: JobRecord | None  # set when this worker now owns the job
    reason: str  # why not, when record is None


class JobStore:
    def __init__(self, client: redis.Redis):
        self.r = client

    # ----- reading -----------------------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        raw = self.r.get(keys.job(job_id))
        return None if raw is None else JobRecord.model_validate_json(raw)

    def get_for_tenant(self, tenant: str, job_id: str) -> JobRecord:
        """Another tenant's job is indistinguishable from a missing one."""
        rec = self.get(job_id) if isinstance(job_id, str) and len(job_id) < 80 else None
        if rec is None or rec.tenant != tenant:
            raise NotFound(f"no job '{job_id}'")
        return rec

    def list(
        self,
        tenant: str,
        *,
        status: str | None = None,
        model: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[JobRecord], str | None]:
        """Newest first. The cursor is the (created ms, id) of the last job returned."""
        max_score: str | float = "+inf"
        after_id = None
        if cursor:
            max_score, after_id = parse_cursor(cursor)
        out: list[JobRecord] = []
        seen_after = after_id is None
        offset = 0
        while len(out) < limit:
            ids = cast(
                builtins.list[bytes],
                self.r.zrevrangebyscore(keys.tenant_jobs(tenant), max_score, "-inf", start=offset, num=200),
            )
            if not ids:
                break
            offset += len(ids)
            for raw_id in ids:
                jid = raw_id.decode()
                if not seen_after:
                    seen_after = jid == after_id
                    continue
                rec = self.get(jid)
                if rec is None or (status and rec.status != status) or (model and rec.model != model):
                    continue
                out.append(rec)
                if len(out) == limit:
                    break
        next_cursor = None
        if len(out) == limit:
            last = out[-1]
            next_cursor = base64.urlsafe_b64encode(f"{last.created_at * 1000:.0f}:{last.id}".encode()).decode()
        return out, next_cursor

    # ----- writing -----------------------------------------------------------------------------------------------
    def create(self, rec: JobRecord) -> None:
        with self.r.pipeline() as p:
            p.set(keys.job(rec.id), rec.model_dump_json())
            p.zadd(keys.tenant_jobs(rec.tenant), {rec.id: round(rec.created_at * 1000)})
            stats.record_transition(p, None, rec)
            p.execute()
        self._publish(rec)

    def delete(self, rec: JobRecord) -> None:
        with self.r.pipeline() as p:
            p.delete(keys.job(rec.id))
            p.zrem(keys.tenant_jobs(rec.tenant), rec.id)
            p.zrem(LEASES, rec.id)
            stats.record_deletion(p, rec)
            p.execute()

    def update(self, job_id: str, fn: Callable[[JobRecord], JobRecord | None]) -> JobRecord | None:
        """Apply ``fn`` atomically. ``fn`` mutates and returns the record, or returns None to write nothing."""
        key = keys.job(job_id)
        while True:
            with self.r.pipeline() as p:
                try:
                    p.watch(key)
                    raw = p.get(key)
                    if raw is None:
                        return None
                    before = JobRecord.model_validate_json(raw)
                    was_terminal, was_status = before.terminal, before.status
                    rec = fn(before)
                    if rec is None:
                        p.unwatch()
                        return None
                    rec.updated_at = now()
                    p.multi()
                    p.set(key, rec.model_dump_json())
                    if rec.lease is not None:
                        p.zadd(LEASES, {rec.id: rec.lease.expires_at})
                    else:
                        p.zrem(LEASES, rec.id)
                    if rec.batch_id and rec.terminal and not was_terminal:
                        # counted in the same transaction as the transition: exactly once, never lost
                        p.hincrby(keys.batch_counts(rec.batch_id), rec.status, 1)
                    stats.record_transition(p, was_status, rec)
                    outbox.on_transition(p, was_status, rec)  # webhooks: in the transaction, never lost
                    pacs_outbox.on_transition(p, was_status, rec)  # and PACS deliveries
                    p.execute()
                except redis.WatchError:
                    continue
            self._publish(rec)
            return rec

    def _publish(self, rec: JobRecord) -> None:
        event = {
            "id": rec.id,
            "status": rec.status,
            "completed_steps": rec.completed_steps,
            "total_steps": rec.total_steps,
            "updated_at": rec.updated_at,
        }
        self.r.publish(events_channel(rec.id), json.dumps(event))

    # ----- the worker's side -------------------------------------------------------------------------------------
    def claim(self, job_id: str, owner: str, lease_seconds: float, max_attempts: int) -> Claim:
        """Take the job for one attempt, unless it is finished, canceled, or leased to a live worker."""
        reason = {"value": "missing"}

        def take(rec: JobRecord) -> JobRecord | None:
            t = now()
            if rec.terminal:
                reason["value"] = f"already {rec.status}"
                return None
            if rec.status in ("running", "canceling") and rec.lease and rec.lease.expires_at > t:
                reason["value"] = "leased to a live worker"
                return None
            if rec.status == "canceling":
                rec.move("canceled")
                reason["value"] = "canceled"
                return rec
            if rec.attempts >= max_attempts:
                rec.move("failed")
                rec.error = attempts_exhausted(rec.attempts)
                reason["value"] = "attempts exhausted"
                return rec
            if rec.status == "running":
                rec.move("queued")  # the lapsed attempt is over; this one starts afresh
            rec.move("running")
            rec.attempts += 1
            rec.lease = Lease(owner=owner, token=rec.attempts, expires_at=t + lease_seconds)
            rec.started_at = rec.started_at or t
            rec.queue_seconds = rec.queue_seconds if rec.queue_seconds is not None else t - rec.created_at
            rec.completed_steps = 0
            reason["value"] = "claimed"
            return rec

        rec = self.update(job_id, take)
        return Claim(rec if reason["value"] == "claimed" else None, reason["value"])

    def _fenced(self, job_id: str, token: int, fn: Callable[[JobRecord], None]) -> JobRecord:
        def guarded(rec: JobRecord) -> JobRecord:
            if rec.lease is None or rec.lease.token != token or rec.status not in ("running", "canceling"):
                raise LeaseLost(f"job {job_id}: attempt {token} no longer owns it (status {rec.status})")
            fn(rec)
            return rec

        rec = self.update(job_id, guarded)
        if rec is None:
            raise LeaseLost(f"job {job_id} disappeared")
        return rec

    def heartbeat(self, job_id: str, token: int, lease_seconds: float) -> JobRecord:
        def extend(rec: JobRecord) -> None:
            assert rec.lease is not None  # _fenced matched the token against it
            rec.lease = Lease(owner=rec.lease.owner, token=token, expires_at=now() + lease_seconds)

        return self._fenced(job_id, token, extend)

    def progress(self, job_id: str, token: int, completed: int, total: int, lease_seconds: float) -> JobRecord:
        """Write progress and extend the lease; the returned status tells the worker whether to stop."""

        def step(rec: JobRecord) -> None:
            rec.completed_steps, rec.total_steps = completed, total
            assert rec.lease is not None  # _fenced matched the token against it
            rec.lease = Lease(owner=rec.lease.owner, token=token, expires_at=now() + lease_seconds)

        return self._fenced(job_id, token, step)

    def finish(self, job_id: str, token: int, status: str, **fields) -> JobRecord:
        def done(rec: JobRecord) -> None:
            for k, v in fields.items():
                setattr(rec, k, v)
            rec.move(status)  # type: ignore[arg-type]
            if rec.started_at is not None and rec.completed_at is not None:
                rec.run_seconds = rec.completed_at - rec.started_at

        return self._fenced(job_id, token, done)

    # ----- the client's side -------------------------------------------------------------------------------------
    def cancel(self, tenant: str, job_id: str) -> JobRecord:
        self.get_for_tenant(tenant, job_id)

        def ask(rec: JobRecord) -> JobRecord | None:
            if rec.status == "queued":
                rec.move("canceled")
            elif rec.status == "running":
                rec.move("canceling")
            else:
                return None
            return rec

        return self.update(job_id, ask) or self.get_for_tenant(tenant, job_id)

    # ----- the reaper ------------------------------------------------------------------------------------------------
    def lapsed(self, at: float | None = None) -> builtins.list[str]:
        return [b.decode() for b in cast(builtins.list[bytes], self.r.zrangebyscore(LEASES, "-inf", at or now()))]

    def release_lapsed(self, job_id: str, max_attempts: int) -> JobRecord | None:
        """Requeue a job whose worker stopped heart-beating; fail it once it has used up its attempts."""

        def release(rec: JobRecord) -> JobRecord | None:
            if rec.status not in ("running", "canceling") or rec.lease is None or rec.lease.expires_at > now():
                return None
            if rec.status == "canceling":
                rec.move("canceled")
            elif rec.attempts >= max_attempts:
                rec.move("failed")
                rec.error = attempts_exhausted(rec.attempts)
            else:
                rec.move("queued")
                rec.lease = None
            return rec

        return self.update(job_id, release)

    def mark_resent(self, job_id: str, queued_before: float, max_resends: int) -> JobRecord | None:
        """Reconciliation: a job still ``queued`` since ``queued_before`` whose message is on no broker queue is
        counted as re-sent (the caller sends it) — or failed once it was re-sent ``max_resends`` times. None: it
        moved on meanwhile (claimed, canceled, queued afresh), so nothing is to be sent."""

        def resend(rec: JobRecord) -> JobRecord | None:
            if rec.status != "queued" or rec.lease is not None or rec.updated_at > queued_before:
                return None
            if rec.resends >= max_resends:
                rec.move("failed")
                rec.error = {
                    "code": "lost_in_queue",
                    "message": (
                        f"the job's queue message was lost {rec.resends} times (broker failures); it is not queued "
                        "again. Submit it again, or contact the operators."
                    ),
                }
                return rec
            rec.resends += 1
            return rec

        return self.update(job_id, resend)

    # ----- idempotency -------------------------------------------------------------------------------------------
    def reserve_idempotency(
        self, tenant: str, key: str, body_sha256: str, job_id: str, ttl: int
    ) -> IdempotencyBinding | None:
        """The binding already made for this key (same body), or None after binding the key to ``job_id``.

        The binding is one ``SET NX``, so of many concurrent requests exactly one gets None. It stays ``pending``
        until ``confirm_idempotency`` (the job is created and queued) and lapses after ``ttl`` until then (keep it
        short), so a submitter that died frees the key; the others wait for it to be confirmed or released.
        """
        if not key or len(key) > 255:
            raise InvalidRequest.for_field("Idempotency-Key", "use a key of 1 to 255 characters")
        rkey = keys.idempotency(tenant, key)
        value = json.dumps({"job_id": job_id, "body_sha256": body_sha256, "pending": True})
        while not self.r.set(rkey, value, nx=True, ex=ttl):
            raw = self.r.get(rkey)
            if raw is None:  # released or lapsed between the two calls: claim it again
                continue
            bound = json.loads(raw)
            if bound.get("body_sha256") != body_sha256:
                raise InvalidRequest.for_field(
                    "Idempotency-Key", "this key was already used with a different request body; use a new key"
                )
            return IdempotencyBinding(bound["job_id"], pending=bool(bound.get("pending")))
        return None

    def confirm_idempotency(self, tenant: str, key: str, body_sha256: str, job_id: str, ttl: int) -> None:
        """The job bound to the key exists and is queued: the binding holds for the full ``ttl``."""
        value = json.dumps({"job_id": job_id, "body_sha256": body_sha256})
        self.r.set(keys.idempotency(tenant, key), value, ex=ttl)

    def release_idempotency(self, tenant: str, key: str) -> None:
        self.r.delete(keys.idempotency(tenant, key))

    def ping(self) -> None:
        self.r.ping()


def parse_cursor(cursor: str) -> tuple[float, str]:
    """(created ms, job id) from a cursor this service issued; anything else (``nan``, ``inf``, ...) is a 422."""
    try:
        score, after_id = base64.urlsafe_b64decode(cursor.encode()).decode().split(":", 1)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest.for_field("cursor", "not a cursor this service issued") from exc
    if not (score.isascii() and score.isdigit() and len(score) <= 16) or not is_id("job", after_id):
        raise InvalidRequest.for_field("cursor", "not a cursor this service issued")
    return float(score), after_id


def attempts_exhausted(attempts: int) -> dict[str, str]:
    return {
        "code": "worker_lost",
        "message": (
            f"the worker running this job stopped {attempts} times (killed, out of memory, or the machine died); "
            "it is not retried again. Try fewer samples or a smaller model, or contact the operators."
        ),
    }
