"""Issue 14 #6, amplification: a 0.6 MB float64 mask of 512 MiB decompressed (within the default limits) took a
real API process to 1.7 GB RSS, and its 4-sample job took the workers to 6 GB. Now the API reads it as uint8 labels
chunk by chunk, so its peak growth is bounded by the voxel count (the limits), and a job whose outputs would exceed
``max_job_output_bytes`` is a 422 naming ``num_samples`` with nothing stored or queued.

The API's peak is read from /proc (VmHWM, reset through clear_refs just before each request).
``benchmarks/upload_memory.py`` prints before and after side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import redis

from tests.conftest import ALPHA, make_settings
from tests.support.hammer import ApiProcess, rss_kib
from tests.support.services import queue_depth, settings_env
from tests.support.volumes import float64_mask_gz
from tumorsynth.embedded.redis_server import free_port

MAX_VOXELS = 64 * 1024**2  # the default limit, which the upload fills
# uint8 labels (1 byte a voxel), the label count's byte-wide temporaries (1 more), and slack for the reader's
# chunks and the multipart parser; the old reader's float64 copies alone were 8 bytes a voxel, several times over
BOUND_MIB = 2 * MAX_VOXELS / 2**20 + 64


def post(client: httpx.Client, raw: bytes, samples: int) -> tuple[httpx.Response, float]:
    """The answer and the API's peak RSS growth while it handled the request, in MiB."""
    pid = client.pid  # type: ignore[attr-defined]
    before, _ = rss_kib(pid)
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak restarts from the current RSS
    files = {
        "request": (None, json.dumps({"model": "ldm/tiny@1", "num_samples": samples, "seed": 1}), "application/json"),
        "mask": ("m.nii.gz", raw, "application/octet-stream"),
    }
    r = client.post("/v1/jobs", files=files)
    _, peak = rss_kib(pid)
    return r, (peak - before) / 1024


def test_a_float64_mask_of_512_mib_is_read_in_bounded_memory(redis_server, s3_endpoint, model_dir, tmp_path):
    from tumorsynth.storage import make_store

    s = make_settings(
        redis_server,
        s3_endpoint,
        model_dir,
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/12",
        family_queues={"ldm": "parked-amplification"},
    )
    assert s.max_voxels == MAX_VOXELS and s.max_decompressed_bytes >= 512 * 1024**2  # within the default limits
    store = make_store(s)
    store.ensure_bucket()
    r = redis.Redis.from_url(s.redis_url)
    r.flushdb()
    raw = float64_mask_gz()
    assert len(raw) < 1_000_000
    api = ApiProcess(settings_env(s), free_port(), tmp_path / "api.log").start()
    try:
        with httpx.Client(base_url=api.base_url, timeout=300, headers=ALPHA) as client:
            client.pid = api.proc.pid  # type: ignore[attr-defined]
            big, grew_big = post(client, raw, samples=4)
            assert big.status_code == 422 and big.json()["code"] == "job_too_large", big.text[:300]
            assert big.json()["errors"][0]["field"] == "num_samples" and "at most 3 samples" in big.text
            assert store.list("") == [] and queue_depth(r, "parked-amplification") == 0
            one, grew_one = post(client, raw, samples=1)
            assert one.status_code == 202, one.text[:300]
            assert one.json()["inputs"][0]["shape"] == [512, 512, 256]
            assert queue_depth(r, "parked-amplification") == 1
    finally:
        api.stop()
        r.flushdb()
    assert max(grew_big, grew_one) < BOUND_MIB, f"the API grew {grew_big:.0f} / {grew_one:.0f} MiB"
