"""benchmarks/failover.py, shortened: kill -9 the Redis primary (Sentinel, one replica) while jobs are submitted and
run. Every 202-answered job ends succeeded exactly once, the API answers 503 (never 500) during the switch and
accepts jobs again by itself, and no 503-answered submission runs as a job."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tumorsynth.settings import REPO_ROOT


@pytest.mark.timeout(900)  # a whole cluster started, killed and drained: beyond the suite's 300 s
def test_failover_loses_doubles_and_500s_nothing(tmp_path):
    out = tmp_path / "failover.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUMORSYNTH_")} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "failover.py"),
            "--jobs",
            "30",
            "--kill-after",
            "10",
            "--workers",
            "1",
            "--threads",
            "3",
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
    assert r["accepted"] == 30 and r["statuses"] == {"succeeded": 30}, proc.stdout
    assert r["lost"] == r["doubled"] == r["phantom"] == r["server_errors"] == 0, proc.stdout
    assert r["answers_503"] > 0, "the kill fell between submissions: nothing tested the switch\n" + proc.stdout
    assert r["unavailable_s"] < 60 and r["passed"], proc.stdout
    assert proc.returncode == 0
