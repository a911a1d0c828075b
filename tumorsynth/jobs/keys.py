"""Every Redis key the service writes, spelled once. Jobs, batches, stats, the webhook outbox, worker supervision,
GPU readings, the API's metrics and the tests all build keys here, so a rename or a new tenant rule is one edit
and ``redis-cli --scan --pattern 'ts:*'`` finds everything.

Ids reaching these functions were checked by ``records.is_id`` (or are the service's own), so a key cannot be
steered into another's namespace by a client.
"""

from __future__ import annotations

import hashlib

PREFIX = "ts:"

# jobs (jobs/store.py)
LEASES = f"{PREFIX}leases"  # zset: job id → lease expiry


def job(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def tenant_jobs(tenant: str) -> str:
    return f"{PREFIX}tenant:{tenant}:jobs"  # zset: job id → created (ms)


def idempotency(tenant: str, key: str) -> str:
    return f"{PREFIX}idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"


def job_events(job_id: str) -> str:
    return f"{PREFIX}events:{job_id}"  # pub/sub channel of the job's changes


def preview_lock(job_id: str) -> str:
    return f"{PREFIX}preview-lock:{job_id}"


# batches (jobs/batches.py)
def batch(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}"


def batch_counts(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}:counts"  # hash: terminal status → jobs


def batch_manifest_lock(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}:manifest-lock"


def tenant_batches(tenant: str) -> str:
    return f"{PREFIX}tenant:{tenant}:batches"


BATCHES_PLANNING = f"{PREFIX}batches:planning"  # zset: batch id → when it was queued for planning (reconciliation)


# operational statistics (jobs/stats.py)
STATS_STATUS = f"{PREFIX}stats:status"  # hash "model\tstatus" → jobs now in that status
STATS_FAILURES = f"{PREFIX}stats:failures"  # hash "model\tcode" → failed jobs
STATS_REDELIVERIES = f"{PREFIX}stats:redeliveries"  # hash model → attempts started again after a lost worker
STATS_STEPS = f"{PREFIX}stats:steps"  # hash model → sampling steps completed by finished jobs


def stats_histogram(name: str, model: str) -> str:
    return f"{PREFIX}stats:hist:{name}:{model}"


REPLICATION_FENCE = f"{PREFIX}replication-fence"  # counter written before WAIT (jobs/connection.py)


def tenant_load(tenant: str) -> str:
    return f"{PREFIX}load:{tenant}"  # hash: jobs, work (samples × steps) of the tenant's queued and running jobs


def queued(queue: str) -> str:
    return f"{PREFIX}queued:{queue}"  # zset: job id → when it was queued


# PACS deliveries (pacs/outbox.py)
PACS_DUE = f"{PREFIX}pacs:due"  # zset: job id → when its delivery is next due
PACS_COUNTS = f"{PREFIX}pacs:counts"  # hash outcome/result → count, for /metrics


def pacs_delivery(job_id: str) -> str:
    return f"{PREFIX}pacs:{job_id}"


# the webhook outbox (jobs/outbox.py)
WEBHOOKS_DUE = f"{PREFIX}webhooks:due"  # zset: delivery id → when it is next due


def webhook(delivery_id: str) -> str:
    return f"{PREFIX}webhook:{delivery_id}"


def job_webhooks(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:webhooks"  # list of the job's delivery ids


# workers (workers/supervision.py, workers/gpu_memory.py)
WORKERS = f"{PREFIX}workers"  # zset: worker id → last heartbeat
GPU_READINGS = f"{PREFIX}gpu-readings"  # zset: reading key → when it expires (no keyspace scans at scrape time)


def worker(worker_id: str) -> str:
    return f"{PREFIX}worker:{worker_id}"


GPU_READING = f"{PREFIX}gpu:"  # + "{worker id}:{pid}": one process's readings


def gpu_reading(worker_id: str, pid: int) -> str:
    return f"{GPU_READING}{worker_id}:{pid}"
