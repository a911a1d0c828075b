"""benchmarks/load.py with a small N against the embedded default: a correctness check (none lost, none doubled,
all succeeded, outputs in storage as listed), not a timing assertion."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tumorsynth.settings import REPO_ROOT

N = 30


def test_load_benchmark_loses_and_doubles_nothing(tmp_path, model_dir):
    out = tmp_path / "load.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUMORSYNTH_")}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "load.py"),
            "--n",
            str(N),
            "--threads",
            "8",
            "--model-dir",
            str(model_dir),
            "--json",
            str(out),
            "--timeout",
            "600",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["passed"] and r["n"] == N and r["succeeded"] == N and r["statuses"] == {"succeeded": N}
    assert r["lost"] == r["doubled_attempts"] == r["listed_twice"] == r["listed_extra"] == r["outputs_mismatch"] == 0
    assert "submit latency p50 / p99" in proc.stdout and "throughput" in proc.stdout
