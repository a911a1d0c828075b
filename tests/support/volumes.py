"""Test volumes written with nibabel directly, independent of the service's own writer."""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np

from tumorsynth.imaging.examples import example_mask


def oblique_affine(spacing=(1.2, 0.9, 2.0), angle_deg: float = 17.0, origin=(-80.0, -95.0, -40.0)) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ np.array(
        [[1, 0, 0], [0, np.cos(a / 2), -np.sin(a / 2)], [0, np.sin(a / 2), np.cos(a / 2)]]
    )
    aff = np.eye(4)
    aff[:3, :3] = rot * np.asarray(spacing)
    aff[:3, 3] = origin
    return aff


def mask_array(shape=(64, 72, 40), convention: str = "brats2023", seed: int = 0) -> np.ndarray:
    m = example_mask(shape, centre=tuple(n * 0.55 for n in shape), radius_mm=min(shape) / 6, seed=seed)
    if convention == "brats2019":
        m = np.where(m == 3, 4, m)
    elif convention == "binary":
        m = (m > 0).astype(np.uint8)
    return m.astype(np.int16)


def nifti_bytes(data: np.ndarray, affine: np.ndarray, *, gz: bool = True, descrip: bytes = b"") -> bytes:
    img = nib.Nifti1Image(data, affine)
    img.header["descrip"] = descrip
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    raw = img.to_bytes()
    return gzip.compress(raw) if gz else raw


def mask_bytes(shape=(64, 72, 40), convention: str = "brats2023", affine=None, seed: int = 0) -> bytes:
    return nifti_bytes(
        mask_array(shape, convention, seed),
        oblique_affine() if affine is None else affine,
        descrip=b"PATIENT^JANE 1970-01-01",
    )


def load(data: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)


def as_file(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


def float64_mask_gz(shape=(512, 512, 256)) -> bytes:
    """Issue 14 #6's hostile upload: a float64 mask whose voxels fill ``max_voxels`` (64 Mi at 512×512×256, 512 MiB
    decompressed) and gzip to ~0.5 MB. Written slice by slice, so making it costs a slice of memory, not 512 MiB."""
    import zlib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float64)
    hdr.set_sform(np.eye(4), code=1)
    hdr.set_qform(np.eye(4), code=1)
    hdr.set_xyzt_units("mm", "sec")
    hdr["vox_offset"] = 352
    gz = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [gz.compress(hdr.binaryblock + b"\0" * 4)]
    x, y, z = shape
    for k in range(z):
        plane = np.zeros((x, y), np.float64)
        if z // 3 <= k < 2 * z // 3:
            plane[x // 3 : 2 * x // 3, y // 3 : 2 * y // 3] = 2.0  # oedema
            plane[x // 3 + 8 : 2 * x // 3 - 8, y // 3 + 8 : 2 * y // 3 - 8] = 1.0  # and a core
        out.append(gz.compress(plane.tobytes(order="F")))
    out.append(gz.flush())
    return b"".join(out)
