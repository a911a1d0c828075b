"""``tumorsynth serve`` as a user runs it: embedded Redis + supervised worker, and nothing left behind on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import httpx
import redis

from tests.support.services import wait_for
from tumorsynth.embedded.redis_server import free_port
from tumorsynth.jobs import keys


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is gone for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_serve_embedded_then_sigterm_stops_worker_and_redis(tmp_path, model_dir):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUMORSYNTH_")}
    env |= {"TUMORSYNTH_STORAGE_DIR": str(tmp_path / "storage"), "TUMORSYNTH_MODEL_DIR": str(model_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tumorsynth.cli", "serve", "--port", str(port)],
        env=env,
        stdout=open(tmp_path / "serve.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(base), timeout=180, what="/readyz 200")
        models = httpx.get(f"{base}/v1/models").json()["models"]
        assert "ldm/tiny@1" in [m["id"] for m in models]
        r = _embedded_redis(tmp_path / "serve.log")
        workers = [json.loads(r.get(keys.worker(w.decode()))) for w in r.zrange(keys.WORKERS, 0, -1)]
        pids = [w["pid"] for w in workers]
        assert pids and all(alive(p) for p in pids)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        wait_for(lambda: not any(alive(p) for p in pids), timeout=30, what="worker gone")
        try:
            r.ping()
            raise AssertionError("the embedded Redis still answers after serve stopped")
        except redis.ConnectionError:
            pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _embedded_redis(log_path) -> redis.Redis:
    """The embedded server's address, as serve logs it."""
    found = re.search(r"embedded Redis on (redis://\S+)", log_path.read_text())
    assert found, "serve did not log its embedded Redis address"
    return redis.Redis.from_url(found.group(1), socket_connect_timeout=2)


def test_batch_command_against_the_embedded_service(tmp_path, model_dir):
    from typer.testing import CliRunner

    from tests.support.volumes import mask_bytes
    from tumorsynth.cli import app

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUMORSYNTH_")}
    env |= {"TUMORSYNTH_STORAGE_DIR": str(tmp_path / "storage"), "TUMORSYNTH_MODEL_DIR": str(model_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tumorsynth.cli", "serve", "--port", str(port)],
        env=env,
        stdout=open(tmp_path / "serve.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(base), timeout=180, what="/readyz 200")
        mask = tmp_path / "mask.nii.gz"
        mask.write_bytes(mask_bytes((40, 44, 30)))
        out = tmp_path / "aug"
        r = CliRunner().invoke(
            app,
            [
                "batch",
                "--counts",
                "LGG=1,HGG=2",
                "--model",
                "ldm/tiny@1",
                "--mask",
                str(mask),
                "--modalities",
                "flair",
                "--sampler",
                "dpm++",
                "--steps",
                "5",
                "--url",
                base,
                "--out",
                str(out),
                "--timeout",
                "300",
            ],
        )
        assert r.exit_code == 0, r.output
        rows = json.loads((out / "manifest.json").read_text())
        assert len(rows) == 1 and rows[0]["class"] == "LGG" and os.path.isfile(rows[0]["image"])
        assert (out / "manifest.csv").read_text().startswith("subject_id,class,modality,image,mask")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
