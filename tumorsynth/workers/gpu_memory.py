"""GPU memory per worker: pool processes write ``torch.cuda`` readings to Redis, ``/metrics`` reads them.

Only the process that runs the model knows its CUDA memory, and a prefork parent must never touch CUDA, so each pool
process publishes its own readings (``ts:gpu:{worker}:{pid}``, expiring) under its parent's worker id. Nothing here
imports torch: ``sample()`` looks at it only if the job code already imported it, and the API only reads Redis.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time

from ..jobs.keys import GPU_READING as P
from ..jobs.keys import GPU_READINGS, gpu_reading

log = logging.getLogger(__name__)
INDEX = GPU_READINGS
KINDS = ("allocated", "reserved", "total")  # total: the device's memory, so an alert can say "near full"


gpu_key = gpu_reading


def parent_worker_id() -> str:
    """The id the worker's main process announces (``host:pid``), seen from one of its pool processes."""
    return f"{socket.gethostname()}:{os.getppid()}"


def sample() -> list[dict]:
    """``[{device, allocated, reserved}]`` for each CUDA device this process initialised; [] on CPU."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    # get_device_properties reads the size without creating a CUDA context (mem_get_info would, on every device)
    return [
        {
            "device": f"cuda:{i}",
            "allocated": int(torch.cuda.memory_allocated(i)),
            "reserved": int(torch.cuda.memory_reserved(i)),
            "total": int(torch.cuda.get_device_properties(i).total_memory),
        }
        for i in range(torch.cuda.device_count())
    ]


def publish(r, worker_id: str, pid: int, readings: list[dict], ttl_seconds: float) -> None:
    """Store one process's readings; they expire unless refreshed, so a dead worker's memory disappears."""
    if readings:
        ttl = max(1, int(ttl_seconds))
        with r.pipeline() as p:
            p.set(gpu_key(worker_id, pid), json.dumps(readings), ex=ttl)
            p.zadd(INDEX, {gpu_key(worker_id, pid): time.time() + ttl})
            p.execute()


def read_all(r) -> dict[tuple[str, str, str], float]:
    """(worker, device, kind) → bytes, summed over a worker's pool processes (the device's total: the largest)."""
    r.zremrangebyscore(INDEX, "-inf", time.time())
    keys = r.zrange(INDEX, 0, -1)
    out: dict[tuple[str, str, str], float] = {}
    for key, raw in zip(keys, r.mget(keys) if keys else []):
        if not raw:
            continue
        worker = key.decode()[len(P) :].rsplit(":", 1)[0]
        for reading in json.loads(raw):
            for kind in (k for k in KINDS if k in reading):  # a worker of an older version sends no total
                k, n = (worker, str(reading["device"]), kind), float(reading[kind])
                out[k] = max(out.get(k, 0.0), n) if kind == "total" else out.get(k, 0.0) + n
    return out


def start_publisher(r, interval_seconds: float, ttl_seconds: float) -> threading.Thread:
    """In a pool process: publish this process's CUDA memory every ``interval_seconds`` (nothing on CPU)."""
    worker, pid = parent_worker_id(), os.getpid()

    def loop() -> None:
        while True:
            time.sleep(interval_seconds)
            try:
                publish(r, worker, pid, sample(), ttl_seconds)
            except Exception:  # a Redis blip: the next beat writes again
                log.debug("GPU memory reading not published", exc_info=True)

    t = threading.Thread(target=loop, name="tumorsynth-gpu-memory", daemon=True)
    t.start()
    return t
