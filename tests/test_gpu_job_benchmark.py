"""benchmarks/gpu_job.py on the CPU as a correctness run (issue 15): every family's section runs and its checks
(our path against the previous one, outputs read back, batched against unbatched) hold. Its timings are printed,
never tested."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_job_runs_every_section_on_the_cpu_and_its_checks_hold():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "benchmarks/gpu_job.py", "--device", "cpu", "--jobs", "2", "--repeat", "1", "--clock", "cpu"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert "check: previous and our outputs agree" in out  # LDM
    assert "check: previous and our fp32 T1C agree" in out  # TA-ViT
    assert "check: ours fp32 vs previous" in out and "equal" in out  # StyleGAN2
    assert "jobs/s" in out
