"""An upload the client abandons mid-body is one INFO/WARNING line in the API's log, not an ERROR traceback.

The attack logged 6,500 lines / 460 KB of tracebacks for 50 such uploads; a real API process takes 10 here.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import ALPHA, make_settings
from tests.support.hammer import ApiProcess
from tests.support.services import settings_env
from tumorsynth.embedded.redis_server import free_port

from .bad_requests import BOUNDARY

ABORTS = 10


@pytest.fixture()
def api(redis_server, s3_endpoint, model_dir, tmp_path):
    s = make_settings(redis_server, s3_endpoint, model_dir, redis_url=redis_server.url.rsplit("/", 1)[0] + "/14")
    proc = ApiProcess(settings_env(s), free_port(), tmp_path / "api.log").start()
    yield proc
    proc.stop()


def abort_upload(port: int, path: str, ctype: str, sent: int = 14_000, declared: int = 1_000_000) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {ALPHA['Authorization']}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {declared}\r\n\r\n"
            ).encode()
        )
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="mask"; filename="m.nii.gz"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        s.sendall(head + b"\x1f" * (sent - len(head)))
        time.sleep(0.1)


def test_aborted_uploads_log_one_line_each_and_no_traceback(api):
    before = api.log_path.read_text()
    form = f"multipart/form-data; boundary={BOUNDARY}"
    for i in range(ABORTS):
        path, ctype = [("/v1/jobs", form), ("/v1/masks", form), ("/v1/batches", "application/json")][i % 3]
        abort_upload(api.port, path, ctype)
    time.sleep(1.0)
    new = api.log_path.read_text()[len(before) :]
    lines = [line for line in new.splitlines() if line.strip()]
    assert "Traceback" not in new and "ERROR" not in new, new[:3000]
    aborted = [line for line in lines if "aborted" in line]
    assert len(aborted) == ABORTS and all(("INFO" in line or "WARNING" in line) for line in aborted), lines
    assert len(lines) <= ABORTS, lines
