"""The embedded parts as one unit (``tumorsynth serve`` with its own Redis; no worker, to start fast):

* a Redis killed with SIGKILL is restarted, its append-only file replayed: queued jobs are still there;
* a ``serve`` killed with SIGKILL takes its Redis with it (no orphan to share the folder with the next start);
* a second ``serve`` on the same storage folder is refused while the first (or its Redis) lives;
* two services whose storage folders share a parent do not share a Redis.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.support.services import wait_for
from tests.support.volumes import mask_bytes
from tumorsynth.embedded.redis_server import free_port

from .test_serve import alive


class Serve:
    def __init__(self, storage: Path, model_dir: Path, log: Path):
        self.port, self.log = free_port(), log
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUMORSYNTH_")}
        env |= {"TUMORSYNTH_STORAGE_DIR": str(storage), "TUMORSYNTH_MODEL_DIR": str(model_dir)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tumorsynth.cli", "serve", "--port", str(self.port), "--no-worker"],
            env=env,
            stdout=open(log, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.base = f"http://127.0.0.1:{self.port}"

    def wait_live(self) -> Serve:
        def live() -> bool:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                return httpx.get(f"{self.base}/livez", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(live, timeout=120, what="/livez")
        return self

    def redis(self) -> redis.Redis:
        found = re.search(r"embedded Redis on (redis://\S+)", self.log.read_text())
        assert found, self.log.read_text()[-2000:]
        return redis.Redis.from_url(found.group(1), socket_connect_timeout=1, socket_timeout=2)

    def submit(self) -> str:
        files = {
            "request": (None, json.dumps({"model": "ldm/tiny@1"}), "application/json"),
            "mask": ("m.nii.gz", mask_bytes((24, 28, 20)), "application/octet-stream"),
        }
        r = httpx.post(f"{self.base}/v1/jobs", files=files, timeout=30)
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def status(self, job_id: str) -> int:
        try:
            return httpx.get(f"{self.base}/v1/jobs/{job_id}", timeout=10).status_code
        except httpx.HTTPError:
            return 0

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture()
def serves(tmp_path):
    started: list[Serve] = []
    yield started
    for s in started:
        s.close()


def start(serves: list, storage: Path, model_dir: Path, name: str) -> Serve:
    s = Serve(storage, model_dir, storage.parent / f"{name}.log")
    serves.append(s)
    return s


def test_a_killed_redis_is_restarted_with_its_jobs(serves, tmp_path, model_dir):
    a = start(serves, tmp_path / "storage", model_dir, "a").wait_live()
    job = a.submit()
    r = a.redis()
    pid = r.info()["process_id"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: a.status(job) == 200, timeout=30, what="job readable again")
    assert r.info()["process_id"] != pid
    assert httpx.get(f"{a.base}/v1/jobs/{job}", timeout=10).json()["status"] == "queued"
    assert "embedded Redis restarted" in a.log.read_text()


def test_a_killed_serve_takes_its_redis_with_it(serves, tmp_path, model_dir):
    a = start(serves, tmp_path / "storage", model_dir, "a").wait_live()
    pid = a.redis().info()["process_id"]
    os.kill(a.proc.pid, signal.SIGKILL)  # the API process only, as the attack did
    a.proc.wait(10)
    wait_for(lambda: not alive(pid), timeout=15, what="the embedded Redis gone")


def test_a_second_serve_on_the_same_storage_folder_is_refused(serves, tmp_path, model_dir):
    a = start(serves, tmp_path / "storage", model_dir, "a").wait_live()
    job = a.submit()
    b = start(serves, tmp_path / "storage", model_dir, "b")
    assert b.proc.wait(120) != 0
    assert "is in use by another Redis" in " ".join(b.log.read_text().split()), b.log.read_text()[-2000:]
    assert a.status(job) == 200


def test_storage_folders_under_one_parent_do_not_share_a_redis(serves, tmp_path, model_dir):
    a = start(serves, tmp_path / "a", model_dir, "a").wait_live()
    job = a.submit()  # before b starts: b used to load a's append-only file from the shared <parent>/redis
    time.sleep(1.5)  # appendfsync everysec
    b = start(serves, tmp_path / "b", model_dir, "b").wait_live()
    assert b.status(job) == 404
    assert httpx.get(f"{b.base}/v1/jobs", timeout=10).json()["jobs"] == []
    assert a.redis().info()["process_id"] != b.redis().info()["process_id"]
