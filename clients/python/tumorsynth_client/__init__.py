"""A small Python client for the tumorsynth API: submit masks and batches, wait, download.

Its own distribution (``tumorsynth-client``, needing only httpx), so a pipeline that only submits jobs does not
install torch, MONAI or the service stack; the service's CLI uses it too (``tumorsynth.client`` re-exports it).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import httpx

__version__ = "0.1.0"
__all__ = ["TERMINAL", "ApiError", "Client"]

TERMINAL = {"succeeded", "failed", "canceled"}


class ApiError(RuntimeError):
    def __init__(self, response: httpx.Response):
        try:
            body = response.json()
            detail = body.get("detail", response.text)
        except ValueError:
            body, detail = None, response.text
        super().__init__(f"HTTP {response.status_code}: {detail}")
        self.status, self.body = response.status_code, body


class Client:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 60.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, follow_redirects=True)

    def _check(self, r: httpx.Response) -> httpx.Response:
        if r.status_code >= 400:
            raise ApiError(r)
        return r

    def models(self) -> list[dict]:
        return self._check(self.http.get("/v1/models")).json()["models"]

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the service was not ready within {timeout:.0f}s")
            time.sleep(0.5)

    def submit(
        self, request: dict, files: dict[str, Path | bytes] | None = None, idempotency_key: str | None = None
    ) -> dict:
        parts: dict[str, tuple[str | None, str | bytes, str]] = {
            "request": (None, json.dumps(request), "application/json")
        }
        for name, f in (files or {}).items():
            data = f if isinstance(f, bytes) else Path(f).read_bytes()
            parts[name] = (f"{name}.nii.gz", data, "application/octet-stream")
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._check(self.http.post("/v1/jobs", files=parts, headers=headers)).json()

    def job(self, job_id: str) -> dict:
        return self._check(self.http.get(f"/v1/jobs/{job_id}")).json()

    def cancel(self, job_id: str) -> dict:
        return self._check(self.http.post(f"/v1/jobs/{job_id}/cancel")).json()

    def wait(self, job_id: str, timeout: float = 3600.0, poll: float = 0.5, on_update=None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_update:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f}s")
            time.sleep(poll)

    def fetch(self, path: str) -> bytes:
        """An output; a 307 to a presigned URL is followed without our bearer key (the URL is its own credential)."""
        r = self.http.get(path, follow_redirects=False)
        if r.status_code in (301, 302, 303, 307, 308):
            r = httpx.get(r.headers["location"], timeout=60.0)
        return self._check(r).content

    def download(self, job: dict, out_dir: Path) -> list[Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for out in job["outputs"]:
            path = out_dir / Path(out["name"]).name
            path.write_bytes(self.fetch(f"/v1/jobs/{job['id']}/outputs/{out['name']}"))
            paths.append(path)
        return paths

    # ----- batches -------------------------------------------------------------------------------------------------
    def submit_batch(self, request: dict, masks: list[Path | bytes] | None = None) -> dict:
        if not masks:
            return self._check(self.http.post("/v1/batches", json=request)).json()
        parts: list[tuple[str, tuple[str | None, str | bytes, str]]] = [
            ("request", (None, json.dumps(request), "application/json"))
        ]
        for i, m in enumerate(masks):
            data = m if isinstance(m, bytes) else Path(m).read_bytes()
            parts.append(("mask", (f"mask-{i}.nii.gz", data, "application/octet-stream")))
        return self._check(self.http.post("/v1/batches", files=parts)).json()

    def batch(self, batch_id: str) -> dict:
        return self._check(self.http.get(f"/v1/batches/{batch_id}")).json()

    def wait_batch(self, batch_id: str, timeout: float = 24 * 3600.0, poll: float = 1.0, on_update=None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            batch = self.batch(batch_id)
            if on_update:
                on_update(batch)
            if batch["manifest"] is not None or batch["status"] in ("canceled", "failed"):
                return batch
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} still {batch['status']} after {timeout:.0f}s")
            time.sleep(poll)

    def download_batch(self, batch: dict, out_dir: Path, layout: str = "bids") -> Path:
        """The batch in ``out_dir`` with ``manifest.csv``/``.json`` whose ``image``/``mask`` are absolute paths there,
        loadable as they stand by ``monai.data.Dataset`` and ``torchio.SubjectsDataset``.

        ``layout="bids"`` (the default): ``out_dir/bids`` is the batch's BIDS derivatives dataset
        (``sub-<label>/anat/sub-<label>_desc-synthetic_<T1w|T2w|FLAIR>.nii.gz``, ``_dseg`` masks, sidecars,
        ``dataset_description.json``), which BIDS tools read as it is; the manifests sit beside it.
        ``layout="flat"``: the earlier ``out_dir/<subject_id>/<output name>`` folders, for scripts written for them."""
        if layout not in ("bids", "flat"):
            raise ValueError(f"layout is 'bids' or 'flat', not {layout!r}")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if layout == "flat":
            return self._download_flat(batch, out_dir)
        index = self._check(self.http.get(f"/v1/batches/{batch['id']}/dataset")).json()["files"]
        root = out_dir.resolve()
        for f in index:
            path = (root / f["path"]).resolve()
            if not path.is_relative_to(root):  # the index comes from the server; still, write nowhere else
                raise ValueError(f"dataset path {f['path']!r} leaves {root}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.fetch(f["url"]))
        rows = json.loads((root / "manifest.json").read_text())  # paths relative to out_dir
        local = [
            row | {"image": str(root / row["image"]), "mask": str(root / row["mask"]) if row["mask"] else ""}
            for row in rows
        ]
        return self._write_manifest(local, root)

    def _download_flat(self, batch: dict, out_dir: Path) -> Path:
        rows = self._check(self.http.get(f"/v1/batches/{batch['id']}/manifest.json")).json()
        written: dict[str, str] = {}
        for row in rows:
            for col in ("image", "mask"):
                key = row[col]
                if not key or key in written:
                    continue
                job_id = key.split("/jobs/", 1)[1].split("/", 1)[0]
                name = key.rsplit("/", 1)[-1]
                folder = out_dir / row["subject_id"]
                folder.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(self.fetch(f"/v1/jobs/{job_id}/outputs/{name}"))
                written[key] = str((folder / name).resolve())
        local = [row | {"image": written.get(row["image"], ""), "mask": written.get(row["mask"], "")} for row in rows]
        return self._write_manifest(local, out_dir)

    @staticmethod
    def _write_manifest(local: list[dict], out_dir: Path) -> Path:
        (out_dir / "manifest.json").write_text(json.dumps(local, indent=1))
        with open(out_dir / "manifest.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(local[0]) if local else ["subject_id"])
            w.writeheader()
            w.writerows({k: ("true" if v is True else v) for k, v in row.items()} for row in local)
        return out_dir / "manifest.csv"
