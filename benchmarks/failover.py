"""Failover: kill -9 the Redis primary while jobs are submitted and run; count jobs lost, doubled, and the outage.

Run: `.venv/bin/python benchmarks/failover.py [--jobs 200] [--kill-after 60] [--workers 2] [--json out.json]`. It
starts a Redis primary + replica + three sentinels on loopback, S3 (moto server), the API (`tumorsynth serve
--no-worker` with `TUMORSYNTH_REDIS_URL=sentinel://...`) and worker processes (tiny LDM). Submitting threads POST
jobs; after `--kill-after` of them were answered 202 the replication link is cut for `--replica-lag` seconds (the
replica falls behind), then the primary is SIGKILLed and restarted `--restart-after` seconds later (as an
orchestrator would: it rejoins as a replica). A 503 is retried after a short pause. Then every 202-answered job is
followed to its end.

Figures: lost (202 but not succeeded), doubled (a job whose attempt ended `succeeded` more than once in the worker
logs), re-run (more than one attempt), phantom (a job listed that no 202 announced), 5xx other than 503 and
connection errors (must be 0), 503 answers, and the unavailability: from the kill to the first 202 of a request sent
after it. `--baseline` runs the same again without WAIT (`TUMORSYNTH_REDIS_ACK_REPLICAS=0`: acknowledged once on the
primary only) and prints both side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.s3 import start_moto_server
from tests.support.sentinel import SentinelGroup
from tests.support.services import WorkerProcess, settings_env
from tumorsynth.embedded.redis_server import free_port
from tumorsynth.imaging.examples import affine_1mm, example_mask
from tumorsynth.imaging.nifti import write_nifti
from tumorsynth.settings import Settings

SHAPE = (40, 44, 30)
TERMINAL = {"succeeded", "failed", "canceled"}
ENDED = re.compile(r"job (job_[0-9a-f]+) attempt \d+ ended \(succeeded\)")


def small_mask() -> bytes:
    return write_nifti(example_mask(SHAPE, centre=(22, 24, 16), radius_mm=7).astype(np.float32), affine_1mm(SHAPE))


class Submissions:
    """Every answer the API gave, with its time; the ids of 202-answered jobs."""

    def __init__(self):
        self.lock = threading.Lock()
        self.answers: list[tuple[float, float, int]] = []  # (sent, answered, status; 0 = no HTTP answer)
        self.accepted: list[str] = []

    def add(self, sent: float, status: int, job_id: str | None) -> None:
        with self.lock:
            self.answers.append((sent, time.time(), status))
            if job_id:
                self.accepted.append(job_id)


def submit(url: str, n: int, threads: int, request: dict, mask: bytes, subs: Submissions) -> None:
    counter = iter(range(n))
    lock = threading.Lock()

    def loop() -> None:
        http = httpx.Client(base_url=url, timeout=30)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            while True:
                sent = time.time()
                try:
                    r = http.post(
                        "/v1/jobs",
                        data={"request": json.dumps(request | {"seed": i})},
                        files={"mask": ("mask.nii.gz", mask)},
                    )
                except httpx.HTTPError:
                    subs.add(sent, 0, None)
                    time.sleep(0.2)
                    continue
                subs.add(sent, r.status_code, r.json()["id"] if r.status_code == 202 else None)
                if r.status_code == 202:
                    break
                if r.status_code != 503:
                    raise RuntimeError(f"job {i}: {r.status_code} {r.text[:300]}")
                time.sleep(min(0.2, float(r.headers.get("retry-after", 1))))

    ts = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def follow(url: str, ids: list[str], timeout: float) -> dict[str, dict]:
    http, done, deadline = httpx.Client(base_url=url, timeout=30), {}, time.monotonic() + timeout
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        try:
            while pending:
                job = http.get(f"/v1/jobs/{pending[0]}")
                if job.status_code == 404:
                    done[pending.pop(0)] = {"status": "missing", "attempts": 0}
                    continue
                job = job.raise_for_status().json()
                if job["status"] not in TERMINAL:
                    break
                done[pending.pop(0)] = job
        except httpx.HTTPError:
            pass
        if pending:
            time.sleep(0.5)
    return done


def listed(url: str) -> list[str]:
    http, ids, cursor = httpx.Client(base_url=url, timeout=30), [], None
    while True:
        page = http.get("/v1/jobs", params={"limit": 200} | ({"cursor": cursor} if cursor else {}))
        page = page.raise_for_status().json()
        ids += [j["id"] for j in page["jobs"]]
        if not (cursor := page.get("next_cursor")):
            return ids


def start_api(settings: Settings, work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tumorsynth.cli", "serve", "--port", str(port), "--no-worker"],
        env=settings_env(settings),
        stdout=open(work / "api.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/livez", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"API did not start; see {work / 'api.log'}")


def summarise(
    subs: Submissions, done: dict, listed_ids: list[str], logs: list[Path], t_kill: float, t_failover: float
) -> dict:
    ids = subs.accepted
    statuses = Counter(done.get(i, {"status": "unfinished"})["status"] for i in ids)
    ended = Counter(m.group(1) for p in logs for m in ENDED.finditer(p.read_text(errors="replace")))
    codes = Counter(status for _, _, status in subs.answers)
    after = [answered for sent, answered, status in subs.answers if status == 202 and sent >= t_kill]
    return {
        "accepted": len(ids),
        "statuses": dict(statuses),
        "lost": len(ids) - statuses["succeeded"],
        "doubled": sum(1 for i in ids if ended[i] > 1),
        "rerun": sum(1 for i in ids if done.get(i, {}).get("attempts", 0) > 1),
        "phantom": len(set(listed_ids) - set(ids)),
        "answers": {str(k): v for k, v in sorted(codes.items())},
        "server_errors": sum(v for k, v in codes.items() if k == 0 or (k >= 500 and k != 503)),
        "answers_503": codes.get(503, 0),
        "unavailable_s": (min(after) - t_kill) if after else float("nan"),
        "sentinel_failover_s": t_failover - t_kill,
    }


def passed(r: dict) -> bool:
    return (
        r["lost"] == r["doubled"] == r["phantom"] == r["server_errors"] == 0
        and r["unavailable_s"] < 120
        and r["accepted"] == r["requested"]
    )


def table(results: list[dict], args) -> str:
    """One column per run: WAIT for a replica (ours), then without it (the baseline), when run."""
    rows = [
        ("jobs answered 202", lambda r: r["accepted"]),
        ("ended", lambda r: r["statuses"]),
        ("lost (202 but not succeeded)", lambda r: r["lost"]),
        ("doubled (succeeded twice)", lambda r: r["doubled"]),
        ("re-run (attempts > 1, ended once)", lambda r: r["rerun"]),
        ("phantom (listed, never 202)", lambda r: r["phantom"]),
        ("answers by status", lambda r: r["answers"]),
        ("500s / connection errors", lambda r: r["server_errors"]),
        ("503 answers (retried)", lambda r: r["answers_503"]),
        ("sentinel failover (kill → new primary)", lambda r: f"{r['sentinel_failover_s']:.2f} s"),
        ("unavailable (kill → first 202 sent after it)", lambda r: f"{r['unavailable_s']:.2f} s"),
        ("result", lambda r: "PASS" if r["passed"] else "FAIL"),
    ]
    names = ["WAIT 1 replica (ours)", "no WAIT (baseline)"][: len(results)]
    width = max(len(k) for k, _ in rows)
    cells = [[str(f(r)) for r in results] for _, f in rows]
    col = max(max(len(c) for row in cells for c in row), *(len(n) for n in names))
    head = (
        f"failover: {args.jobs} jobs, {args.threads} submitting threads, {args.workers} workers, kill -9 the "
        f"primary after {args.kill_after} accepted (replication link cut {args.replica_lag} s before), back "
        f"{args.restart_after} s later as a replica"
    )
    lines = [head, "-" * len(head), f"{'':<{width}}  " + "  ".join(f"{n:<{col}}" for n in names)]
    lines += [f"{k:<{width}}  " + "  ".join(f"{c:<{col}}" for c in row) for (k, _), row in zip(rows, cells)]
    return "\n".join(lines)


def run(args, ack_replicas: int) -> dict:
    """One whole run: fresh Redis group, S3, workers and API; the kill; the figures."""
    from tumorsynth.models.ldm.configs import create_untrained

    work = Path(tempfile.mkdtemp(prefix="ts-failover-"))
    create_untrained(work / "models" / "ldm", preset="tiny", name="tiny", version="1", seed=0)
    group = SentinelGroup(work / "redis").start()
    moto, endpoint = start_moto_server()
    settings = Settings(
        redis_url=group.url,
        s3_endpoint=endpoint,
        s3_access_key="test",
        s3_secret_key="test-secret",
        s3_bucket="failover",
        model_dir=work / "models",
        lease_seconds=6.0,
        heartbeat_seconds=1.0,
        reaper_interval_seconds=1.0,
        url_signing_key="benchmark-signing-key-0123456789",
        redis_ack_replicas=ack_replicas,
        max_active_jobs_per_tenant=100_000,
    )  # this measures failover, not the per-tenant cap
    from tumorsynth.storage import make_store

    make_store(settings).ensure_bucket()
    workers = [
        WorkerProcess(settings, work / f"worker-{i}.log", extra_env={"OMP_NUM_THREADS": "1"})
        for i in range(args.workers)
    ]
    api, finished, restarted = None, threading.Event(), threading.Event()
    try:
        for w in workers:
            w.start()
        api, url = start_api(settings, work)
        subs = Submissions()
        request = {"model": "ldm/tiny@1", "modalities": ["flair"], "sampler": {"name": "dpm++", "steps": args.steps}}
        killed: dict = {}

        def killer() -> None:
            while len(subs.accepted) < args.kill_after:
                time.sleep(0.02)
            replica = group.nodes[next(p for p in group.data_ports if p != group.primary_port())].proc
            if args.replica_lag:  # the replication link breaks (a network blip) just before the primary dies
                os.kill(replica.pid, signal.SIGSTOP)  # so that it cannot reconnect at once
                redis.Redis(port=group.primary_port()).client_kill_filter(_type="replica")
                time.sleep(args.replica_lag)
            killed["t"] = time.time()
            port = group.kill_primary()
            if args.replica_lag:
                os.kill(replica.pid, signal.SIGCONT)
            killed["new"] = group.wait_failover(port)
            killed["t_failover"] = time.time()
            time.sleep(max(0.0, args.restart_after - (time.time() - killed["t"])))
            group.restart(port)
            restarted.set()
            finished.wait()  # the restarted node dies with the thread that started it (PR_SET_PDEATHSIG)

        threading.Thread(target=killer, daemon=True).start()
        submit(url, args.jobs, args.threads, request, small_mask(), subs)
        restarted.wait(120)
        done = follow(url, list(subs.accepted), args.timeout)
        r = summarise(subs, done, listed(url), [w.log_path for w in workers], killed["t"], killed["t_failover"])
    finally:
        for w in workers:
            w.stop()
        if api is not None:
            api.send_signal(signal.SIGTERM)
            try:
                api.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(api.pid, signal.SIGKILL)
        moto.stop()
        group.stop()
        finished.set()
    r["requested"] = args.jobs
    return r | {"ack_replicas": ack_replicas, "logs": str(work), "passed": passed(r)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--kill-after", type=int, default=60, help="kill the primary after this many 202 answers")
    ap.add_argument("--restart-after", type=float, default=5.0, help="seconds before the killed node returns")
    ap.add_argument(
        "--replica-lag",
        type=float,
        default=0.5,
        help="seconds the replication link is down (the replica frozen, its link closed) before the "
        "kill: what the primary accepted meanwhile dies with it (below Sentinel's 1 s down-after)",
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument(
        "--baseline",
        action="store_true",
        help="also run without WAIT (TUMORSYNTH_REDIS_ACK_REPLICAS=0) and print both side by side",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log

    results = [run(args, 1)] + ([run(args, 0)] if args.baseline else [])
    print(table(results, args))
    for r in results:
        print(f"logs (ack_replicas={r['ack_replicas']}) in {r['logs']}")
    if args.json:
        args.json.write_text(json.dumps(results[0] | ({"baseline": results[1]} if args.baseline else {}), indent=2))
    return 0 if results[0]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
