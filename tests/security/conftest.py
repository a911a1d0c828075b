"""What the security tests share: one finished job of tenant alpha made from a mask whose header names a (fake)
patient, with every log record written while it was submitted and run."""

from __future__ import annotations

import logging

import nibabel as nib
import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import submit, wait_status
from tests.support.volumes import mask_array, oblique_affine

# A fake patient, in every header field that can carry free text, and in an extension.
PATIENT = {
    "descrip": b"DOE^JOHNATHAN 1961-02-03",
    "aux_file": b"MRN-7731-DOE",
    "db_name": b"DOEJDB-7731",
    "intent_name": b"DOE^JOHNATHAN",
}
PATIENT_STRINGS = ["DOE^JOHNATHAN", "MRN-7731", "DOEJDB-7731", "1961-02-03", "EXT-DOE-SECRET"]
SHAPE = (40, 44, 30)


def patient_mask() -> bytes:
    import gzip

    aff = oblique_affine()
    img = nib.Nifti1Image(mask_array(SHAPE), aff)
    for name, value in PATIENT.items():
        img.header[name] = value
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"Patient: EXT-DOE-SECRET"))
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    return gzip.compress(img.to_bytes())


class LogCapture(logging.Handler):
    """Every record from every logger, at DEBUG, formatted with its traceback."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def __enter__(self) -> LogCapture:
        root = logging.getLogger()
        self._level = root.level
        root.addHandler(self)
        root.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._level)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(scope="session")
def sec_client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="session")
def alpha_job(sec_client, worker):
    """(job JSON, the API's log text) for a finished alpha job made from ``patient_mask()``."""
    with LogCapture() as logs:
        r = submit(
            sec_client,
            {
                "model": "ldm/tiny@1",
                "seed": 3,
                "sampler": {"name": "dpm++", "steps": 5},
                "metadata": {"study": "security"},
            },
            {"mask": patient_mask()},
        )
        assert r.status_code == 202, r.text
        job = wait_status(sec_client, r.json()["id"], {"succeeded", "failed"}, timeout=180)
    assert job["status"] == "succeeded", job["error"]
    return job, logs.text
