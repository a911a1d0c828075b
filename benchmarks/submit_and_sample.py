"""Submit latency (p50/p99, 1 MB mask) and one LDM job per sampler, against the embedded default on this machine.

Run: `.venv/bin/python benchmarks/submit_and_sample.py [--n 200] [--model ldm/...]`. Prints a table; not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tumorsynth.client import Client
from tumorsynth.demo import ensure_model
from tumorsynth.embedded.redis_server import free_port
from tumorsynth.imaging.examples import affine_1mm, example_mask
from tumorsynth.imaging.nifti import write_nifti
from tumorsynth.settings import Settings


def one_mb_mask() -> bytes:
    """An uncompressed 100³ uint8 NIfTI (1.0 MB) with BraTS 2023 labels."""
    import nibabel as nib

    m = example_mask((100, 100, 100), centre=(55, 50, 50), radius_mm=12).astype(np.uint8)
    return nib.Nifti1Image(m, affine_1mm((100, 100, 100))).to_bytes()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200, help="submissions timed")
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ts-bench-"))
    ensure_model(Settings())  # an untrained tiny LDM when no checkpoint is installed (said loudly)
    port = free_port()
    env = dict(os.environ, TUMORSYNTH_STORAGE_DIR=str(tmp / "storage"))
    server = subprocess.Popen(
        [sys.executable, "-m", "tumorsynth.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        client = Client(f"http://127.0.0.1:{port}")
        client.wait_ready(240)
        models = [m for m in client.models() if m["task"] == "mask_to_volume"]
        model = (
            next(m for m in models if m["id"] == args.model)
            if args.model
            else sorted(models, key=lambda m: (not m["trained"], m["id"]))[0]
        )
        mask = one_mb_mask()
        lat = []
        for i in range(args.n):
            t0 = time.perf_counter()
            job = client.submit({"model": model["id"], "seed": i}, {"mask": mask})
            lat.append(time.perf_counter() - t0)
            client.cancel(job["id"])  # keep the queue empty: this times submission, not sampling
        lat_ms = np.asarray(lat) * 1000
        print(f"\nsubmit latency, {len(mask) / 1e6:.2f} MB uncompressed mask, n={args.n}, model {model['id']}")
        print(
            f"  p50 {np.percentile(lat_ms, 50):7.1f} ms   p99 {np.percentile(lat_ms, 99):7.1f} ms   "
            f"mean {lat_ms.mean():7.1f} ms"
        )
        example = write_nifti(example_mask().astype(np.float32), affine_1mm())
        rows = []
        for s in model["samplers"]:
            job = client.submit({"model": model["id"], "seed": 1, "sampler": {"name": s["name"]}}, {"mask": example})
            job = client.wait(job["id"], timeout=7200, poll=0.2)
            rows.append((s["name"], s["default_steps"], job["status"], job["metrics"].get("run_seconds", float("nan"))))
        base = next((r[3] for r in rows if r[0] == "ddpm"), rows[0][3])
        print(f"\none LDM job per sampler (1 sample, 240×240×155 mask, {model['id']}, trained={model['trained']}, CPU)")
        print(f"  {'sampler':8} {'steps':>5} {'status':>9} {'run s':>8} {'× faster than ddpm':>19}")
        for name, steps, status, secs in rows:
            print(f"  {name:8} {steps:5d} {status:>9} {secs:8.2f} {base / secs:19.1f}")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
