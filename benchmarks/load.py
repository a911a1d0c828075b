"""Load: N tiny-model jobs submitted concurrently against the embedded default; all must succeed, once each.

Run: `.venv/bin/python benchmarks/load.py [--n 1000] [--threads 16] [--json out.json]`. It starts `tumorsynth serve`
in a subprocess (its own Redis, a local storage folder, one supervised worker) unless `--url` names a running
service, submits the jobs from a thread pool (one HTTP client per thread), waits for all of them, then checks
that none was lost (every job listed once and finished), none doubled (one attempt each, objects in storage =
outputs listed) and all succeeded. Prints a table; exit status 1 if a check fails. A benchmark, not a timed test:
the CI test runs it with a small N and checks only the correctness figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tumorsynth.client import Client
from tumorsynth.embedded.redis_server import free_port
from tumorsynth.imaging.examples import affine_1mm, example_mask
from tumorsynth.imaging.nifti import write_nifti

SHAPE = (40, 44, 30)
TERMINAL = {"succeeded", "failed", "canceled"}


def small_mask() -> bytes:
    return write_nifti(example_mask(SHAPE, centre=(22, 24, 16), radius_mm=7).astype(np.float32), affine_1mm(SHAPE))


def tiny_model_dir(root: Path) -> Path:
    from tumorsynth.models.ldm.configs import create_untrained

    create_untrained(root / "ldm", preset="tiny", name="tiny", version="1", seed=0)
    return root


@contextmanager
def embedded_service(work: Path, model_dir: Path, timeout: float):
    """`tumorsynth serve` as a user starts it, with nothing configured but a storage folder and the model folder."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUMORSYNTH_")}
    env |= {
        "TUMORSYNTH_STORAGE_DIR": str(work / "storage"),
        "TUMORSYNTH_MODEL_DIR": str(model_dir),
        # the whole load is one tenant's: the per-tenant cap (100 outstanding jobs) would refuse most of it
        "TUMORSYNTH_MAX_ACTIVE_JOBS_PER_TENANT": "1000000",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tumorsynth.cli", "serve", "--port", str(port)],
        env=env,
        stdout=open(work / "serve.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        Client(url).wait_ready(timeout)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def submit_all(url: str, api_key: str | None, n: int, threads: int, request: dict, mask: bytes):
    """Submit n jobs from ``threads`` threads; returns [(job id, submit seconds)] in submission order."""
    local = threading.local()

    def one(i: int) -> tuple[str, float]:
        if not hasattr(local, "client"):
            local.client = Client(url, api_key)
        t0 = time.perf_counter()
        job = local.client.submit(request | {"seed": i}, {"mask": mask})
        return job["id"], time.perf_counter() - t0

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(n)))


def wait_all(url: str, api_key: str | None, ids: list[str], timeout: float, progress) -> dict[str, dict]:
    """Poll in submission order, stopping at the first unfinished job each round: about one GET per job."""
    client, done, deadline = Client(url, api_key), {}, time.monotonic() + timeout
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        while pending:
            job = client.job(pending[0])
            if job["status"] not in TERMINAL:
                break
            done[pending.pop(0)] = job
        progress(len(done), len(ids))
        if pending:
            time.sleep(1.0)
    return done


def listed_ids(url: str, api_key: str | None) -> list[str]:
    """Every job the service lists for the tenant, page by page (a job listed twice would show here)."""
    http, ids, cursor = Client(url, api_key).http, [], None
    while True:
        params = {"limit": 200} | ({"cursor": cursor} if cursor else {})
        page = http.get("/v1/jobs", params=params).raise_for_status().json()
        ids += [j["id"] for j in page["jobs"]]
        cursor = page.get("next_cursor")
        if not cursor:
            return ids


def stored_outputs(storage: Path | None, job: dict, tenant: str) -> int | None:
    if storage is None:
        return None
    folder = storage / "tenants" / tenant / "jobs" / job["id"] / "outputs"
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")) if folder.exists() else 0


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def summarise(submitted, done, listed, storage, tenant, expected_outputs, wall) -> dict:
    ids = [i for i, _ in submitted]
    jobs = [done[i] for i in ids if i in done]
    statuses = Counter(j["status"] for j in jobs)
    stored = {j["id"]: stored_outputs(storage, j, tenant) for j in jobs}
    submit_s = [s for _, s in submitted]
    queue_s = [j["metrics"]["queue_seconds"] for j in jobs if j["metrics"].get("queue_seconds") is not None]
    run_s = [j["metrics"]["run_seconds"] for j in jobs if j["metrics"].get("run_seconds") is not None]
    finished = [ts(j["completed_at"]) for j in jobs if j.get("completed_at")]
    created = [ts(j["created_at"]) for j in jobs]
    span = (max(finished) - min(created)) if finished else float("nan")
    return {
        "n": len(ids),
        "succeeded": statuses["succeeded"],
        "statuses": dict(statuses),
        "lost": len(ids) - len(jobs) + len(set(ids) - set(listed)),
        "listed_extra": len(set(listed) - set(ids)),
        "listed_twice": len(listed) - len(set(listed)),
        "doubled_attempts": sum(j["attempts"] != 1 for j in jobs),
        "outputs_mismatch": sum(
            len(j["outputs"]) != expected_outputs
            or len({o["name"] for o in j["outputs"]}) != len(j["outputs"])
            or (stored[j["id"]] is not None and stored[j["id"]] != len(j["outputs"]))
            for j in jobs
        ),
        "submit_ms": {"p50": pct(submit_s, 50) * 1e3, "p99": pct(submit_s, 99) * 1e3, "max": max(submit_s) * 1e3},
        "queue_to_start_s": {"p50": pct(queue_s, 50), "p99": pct(queue_s, 99), "max": max(queue_s, default=0)},
        "run_s": {"p50": pct(run_s, 50), "p99": pct(run_s, 99)},
        "throughput_jobs_per_s": len(jobs) / span if span and span > 0 else float("nan"),
        "first_submit_to_last_finish_s": span,
        "wall_s": wall,
    }


def passed(r: dict) -> bool:
    return (
        r["succeeded"] == r["n"]
        and r["lost"] == 0
        and r["listed_extra"] == 0
        and r["listed_twice"] == 0
        and r["doubled_attempts"] == 0
        and r["outputs_mismatch"] == 0
    )


def table(r: dict, args) -> str:
    rows = [
        ("jobs submitted", f"{r['n']}"),
        ("succeeded", f"{r['succeeded']}  {r['statuses']}"),
        ("lost (not finished or not listed)", f"{r['lost']}"),
        (
            "doubled (attempts != 1 / listed twice / extra)",
            f"{r['doubled_attempts']} / {r['listed_twice']} / {r['listed_extra']}",
        ),
        ("outputs mismatched (listed vs expected vs stored)", f"{r['outputs_mismatch']}"),
        ("submit latency p50 / p99 / max", "{p50:.0f} / {p99:.0f} / {max:.0f} ms".format(**r["submit_ms"])),
        ("queue→start p50 / p99 / max", "{p50:.1f} / {p99:.1f} / {max:.1f} s".format(**r["queue_to_start_s"])),
        ("run time p50 / p99", "{p50:.2f} / {p99:.2f} s".format(**r["run_s"])),
        ("throughput", f"{r['throughput_jobs_per_s']:.2f} jobs/s over {r['first_submit_to_last_finish_s']:.0f} s"),
        ("result", "PASS" if passed(r) else "FAIL"),
    ]
    width = max(len(k) for k, _ in rows)
    head = (
        f"load: {r['n']} jobs, {args.threads} submitting threads, {args.model} {args.sampler}×{args.steps}, "
        f"{'/'.join(args.modalities)}, mask {'×'.join(map(str, SHAPE))}, {args.url or 'embedded default'}"
    )
    return "\n".join([head, "-" * len(head)] + [f"{k:<{width}}  {v}" for k, v in rows])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="jobs")
    ap.add_argument("--threads", type=int, default=16, help="concurrent submitting clients")
    ap.add_argument("--model", default="ldm/tiny@1")
    ap.add_argument("--model-dir", type=Path, help="holding MODEL (default: a fresh untrained tiny LDM)")
    ap.add_argument("--sampler", default="dpm++")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--modalities", nargs="+", default=["flair"])
    ap.add_argument("--url", help="a running service (default: start the embedded one)")
    ap.add_argument("--api-key")
    ap.add_argument("--tenant", default="local", help="the API key's tenant (storage counts, embedded only)")
    ap.add_argument("--timeout", type=float, default=3 * 3600, help="seconds to wait for all jobs")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the embedded service's folder (logs, storage)")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="ts-load-"))
    request = {
        "model": args.model,
        "modalities": args.modalities,
        "sampler": {"name": args.sampler, "steps": args.steps},
    }
    expected_outputs = 2 * (len(args.modalities) + 1)  # each volume and the mask, each with a sidecar
    try:
        with _service(args, work) as (url, storage):
            t0 = time.monotonic()
            submitted = submit_all(url, args.api_key, args.n, args.threads, request, small_mask())
            print(f"submitted {len(submitted)} jobs in {time.monotonic() - t0:.1f} s", file=sys.stderr)
            done = wait_all(url, args.api_key, [i for i, _ in submitted], args.timeout, Progress())
            wall = time.monotonic() - t0
            listed = listed_ids(url, args.api_key)
            result = summarise(submitted, done, listed, storage, args.tenant, expected_outputs, wall)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(table(result, args))
    if args.json:
        args.json.write_text(json.dumps(result | {"passed": passed(result)}, indent=2))
    return 0 if passed(result) else 1


@contextmanager
def _service(args, work: Path):
    if args.url:
        yield args.url, None
        return
    model_dir = args.model_dir or tiny_model_dir(work / "models")
    with embedded_service(work, model_dir, timeout=300) as url:
        yield url, work / "storage"


class Progress:
    """A line on stderr every 10 s and at the end."""

    def __init__(self):
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if time.monotonic() - self.last > 10 or done == total:
            self.last = time.monotonic()
            print(f"  {done}/{total} finished", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
