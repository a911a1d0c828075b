"""One attempt at storing a job's DICOM files at a destination: DIMSE C-STORE (pynetdicom) or DICOMweb STOW-RS.

Every failure is a ``DeliveryError`` with a message an operator can act on (which destination, what it answered);
the delivery loop retries it with backoff. A C-STORE answered with a warning status (0xB000–0xBFFF: stored with
coercion) counts as stored.
"""

from __future__ import annotations

import io
import secrets

import httpx
import pydicom
from pynetdicom import AE
from pynetdicom.presentation import build_context

from .destinations import DimseDestination, StowDestination

TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]  # explicit, implicit VR little endian


class DeliveryError(Exception):
    pass


def send(destination, files: list[bytes], timeout: float) -> int:
    """Store ``files`` (DICOM Part 10 bytes); the number stored, or ``DeliveryError``."""
    if not files:
        raise DeliveryError("the job's DICOM archive holds no instances")
    if isinstance(destination, DimseDestination):
        return send_dimse(destination, files, timeout)
    if isinstance(destination, StowDestination):
        return send_stow(destination, files, timeout)
    raise DeliveryError(f"unknown destination kind {type(destination).__name__}")


def send_dimse(dest: DimseDestination, files: list[bytes], timeout: float) -> int:
    datasets = [pydicom.dcmread(io.BytesIO(f)) for f in files]
    ae = AE(ae_title=dest.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.requested_contexts = [build_context(uid, TRANSFER_SYNTAXES)
                             for uid in sorted({str(ds.SOPClassUID) for ds in datasets})]
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.called_ae)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
        raise DeliveryError(f"{dest.describe()}: association {why} (check host, port and the called AE title "
                            f"{dest.called_ae!r}; calling AE {dest.calling_ae!r})")
    try:
        for n, ds in enumerate(datasets, start=1):
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                raise DeliveryError(f"{dest.describe()}: no C-STORE response for instance {n} of {len(datasets)} "
                                    "(connection lost or timed out)")
            if code != 0x0000 and not 0xB000 <= code <= 0xBFFF:
                raise DeliveryError(f"{dest.describe()}: C-STORE of instance {n} of {len(datasets)} failed with "
                                    f"status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    return len(datasets)


def send_stow(dest: StowDestination, files: list[bytes], timeout: float) -> int:
    """STOW-RS by hand on httpx (as the webhooks): the body is the files as they are, each a part."""
    boundary = f"tumorsynth-{secrets.token_hex(12)}"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n"
                    for f in files) + f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    auth = (dest.username, dest.password or "") if dest.username else None
    try:
        resp = httpx.post(f"{dest.url.rstrip('/')}/studies", content=body, headers=headers, auth=auth,
                          timeout=timeout, follow_redirects=False, trust_env=False)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{dest.describe()}: {type(exc).__name__}: {exc}") from exc
    if resp.status_code != 200:
        raise DeliveryError(f"{dest.describe()}: HTTP {resp.status_code} {resp.text[:200]}")
    return len(files)
