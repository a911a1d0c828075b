"""benchmarks/worker_scaling.py with tiny N: 1 and 2 worker processes (no supervisor) on one Redis and one S3 run
every job once; workers holding only the LDM announce and consume the LDM's queue alone (per-family routing), and
a VQGAN job stays queued for a worker that has the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tumorsynth.settings import REPO_ROOT


@pytest.mark.timeout(900)  # a whole cluster started, killed and drained: beyond the suite's 300 s
def test_workers_scale_out_and_take_only_their_models_queues(tmp_path):
    out = tmp_path / "scaling.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUMORSYNTH_")} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "worker_scaling.py"),
            "--workers",
            "1,2",
            "--jobs",
            "6",
            "--timeout",
            "600",
            "--json",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
    )
    assert out.exists(), proc.stdout + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert [row["workers"] for row in r["rows"]] == [1, 2]
    assert all(row["succeeded"] == 6 and row["attempts_not_1"] == 0 for row in r["rows"]), proc.stdout
    assert r["routed"], proc.stdout
    worker = r["announced"][0]
    assert worker["queues"] == ["scale.ldm"] and [m["id"] for m in worker["models"]] == ["ldm/tiny@1"]
    assert worker["versions"]["tumorsynth"] and isinstance(worker["gpus"], list)
    assert "jobs/s" in proc.stdout and "queue→start p50 / p99" in proc.stdout and proc.returncode == 0
