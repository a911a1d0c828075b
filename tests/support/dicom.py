"""DICOM checks for the tests: Debian's ``dciodvfy`` (dicom3tools) and a real Orthanc on loopback."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy prints for one file (it exits 0 either way). Warnings are allowed."""
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy missing: apt-get install dicom3tools (make test does)"
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """Debian's Orthanc with a generated config: DICOM and REST ports on loopback, its own storage, the called AE
    title checked (so a wrong AE title is refused, as a hospital PACS does)."""

    def __init__(self, root: Path, aet: str = "ORTHANC", plugins: list[Path] | None = None):
        self.root, self.aet, self.plugins = root, aet, [str(p) for p in plugins or []]
        self.dicom_port, self.http_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, wait: float = 60.0) -> Orthanc:
        exe = shutil.which("Orthanc")
        assert exe, "Orthanc missing: apt-get install orthanc (make test does)"
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "tumorsynth-test",
            "StorageDirectory": str(self.root / "db"),
            "IndexDirectory": str(self.root / "db"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "HttpServerEnabled": True,
            "Plugins": self.plugins,
            "StableAge": 1,
        }
        (self.root / "orthanc.json").write_text(json.dumps(config))
        self.log = open(self.root / "orthanc.log", "ab")
        self.proc = subprocess.Popen(
            [exe, str(self.root / "orthanc.json")], stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/system", timeout=1).status_code == 200 and self._dicom_open():
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("Orthanc did not start")

    def _dicom_open(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.dicom_port)) == 0

    def get(self, path: str):
        r = httpx.get(f"{self.url}{path}", timeout=10)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
