"""One attempt at storing a job's DICOM files at a destination: DIMSE C-STORE (pynetdicom) or DICOMweb STOW-RS.

Every failure is a ``DeliveryError`` with a message an operator can act on (which destination, what it answered);
the delivery loop retries it with backoff. A C-STORE answered with a warning status (0xB000–0xBFFF: stored with
coercion) counts as stored.
"""

from __future__ import annotations

import io
import secrets
import zipfile

import httpx
import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage, SegmentationStorage
from pynetdicom import AE
from pynetdicom.presentation import build_context

from .destinations import DimseDestination, StowDestination

TRANSFER_SYNTAXES: list[str | UID] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
SOP_CLASSES = [MRImageStorage, SegmentationStorage]  # what imaging/dicom.py writes
STOW_BATCH = 64


class DeliveryError(Exception):
    pass


def send(destination, archive: zipfile.ZipFile, timeout: float) -> int:
    """Store every ``.dcm`` of ``archive`` (read one at a time); the number stored, or ``DeliveryError``."""
    names = [n for n in archive.namelist() if n.endswith(".dcm")]
    if not names:
        raise DeliveryError("the job's DICOM archive holds no instances")
    if isinstance(destination, DimseDestination):
        return send_dimse(destination, archive, names, timeout)
    if isinstance(destination, StowDestination):
        return send_stow(destination, archive, names, timeout)
    raise DeliveryError(f"unknown destination kind {type(destination).__name__}")


def send_dimse(dest: DimseDestination, archive: zipfile.ZipFile, names: list[str], timeout: float) -> int:
    ae = AE(ae_title=dest.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.requested_contexts = [build_context(uid, TRANSFER_SYNTAXES) for uid in SOP_CLASSES]
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.called_ae)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
        raise DeliveryError(
            f"{dest.describe()}: association {why} (check host, port and the called AE title "
            f"{dest.called_ae!r}; calling AE {dest.calling_ae!r})"
        )
    try:
        for n, name in enumerate(names, start=1):
            status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(archive.read(name))))
            code = getattr(status, "Status", None)
            if code is None:
                raise DeliveryError(
                    f"{dest.describe()}: no C-STORE response for instance {n} of {len(names)} "
                    "(connection lost or timed out)"
                )
            if code != 0x0000 and not 0xB000 <= code <= 0xBFFF:
                raise DeliveryError(
                    f"{dest.describe()}: C-STORE of instance {n} of {len(names)} ({name}) failed "
                    f"with status 0x{code:04X}"
                )
    finally:
        if assoc.is_established:
            assoc.release()
    return len(names)


def send_stow(dest: StowDestination, archive: zipfile.ZipFile, names: list[str], timeout: float) -> int:
    """STOW-RS by hand on httpx (as the webhooks; a multipart/related body needs no more), STOW_BATCH instances
    per request so a large job never sits in memory whole."""
    auth = (dest.username, dest.password or "") if dest.username else None
    with httpx.Client(auth=auth, timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for start in range(0, len(names), STOW_BATCH):
            boundary = f"tumorsynth-{secrets.token_hex(12)}"
            body = b"".join(
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + archive.read(n) + b"\r\n"
                for n in names[start : start + STOW_BATCH]
            )
            headers = {
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            }
            try:
                resp = client.post(
                    f"{dest.url.rstrip('/')}/studies", content=body + f"--{boundary}--\r\n".encode(), headers=headers
                )
            except httpx.HTTPError as exc:
                raise DeliveryError(f"{dest.describe()}: {type(exc).__name__}: {exc}") from exc
            if resp.status_code != 200:
                raise DeliveryError(f"{dest.describe()}: HTTP {resp.status_code} {resp.text[:200]}")
    return len(names)
