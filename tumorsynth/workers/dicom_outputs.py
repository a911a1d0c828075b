"""A job's DICOM output: every generated volume as an MR series and the mask as a SEG, zipped as one object.

Layout inside ``dicom.zip``: ``sample-<i>/<modality>/IM00001.dcm`` … and ``mask/SEG.dcm``. One study per job
(one placeholder patient), one series per volume. The SEG annotates sample 0's first series and is written when the
mask shares that series' grid (it does unless the job asked for ``output_grid: "model"``, where the mask stays on its
own grid and the SEG is left out: the NIfTI mask is still listed).
"""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from ..imaging.dicom import CONTRAST_NAMES, Study, mr_series, seg_of
from ..models.base import GeneratedVolume

log = logging.getLogger(__name__)
ARCHIVE_NAME = "dicom.zip"


@dataclass
class DicomArchive:
    path: Path
    instances: int
    series: int


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def dicom_archive(
    items: list[tuple[GeneratedVolume, np.ndarray]],
    mask: tuple[np.ndarray, np.ndarray, str] | None,
    study: Study,
    path: Path,
) -> DicomArchive:
    """Write the zip to ``path`` (a file, not memory: 64 samples on the BraTS grid are ~40,000 instances).

    ``items``: each generated volume with its data on the job's intensity scale; ``mask``: (labels, affine,
    "brats2023" | "binary"). One series' datasets are held at a time."""
    instances = series = 0
    first: tuple[list, GeneratedVolume] | None = None
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for number, (v, data) in enumerate(items, start=1):
            name = CONTRAST_NAMES.get(v.modality, v.modality)
            datasets = mr_series(
                data,
                v.affine,
                study,
                modality=v.modality,
                series_number=number,
                description=f"{name} sample {v.sample_index}",
            )
            for k, ds in enumerate(datasets, start=1):
                zf.writestr(f"sample-{v.sample_index}/{v.modality}/IM{k:05d}.dcm", _bytes(ds))
            instances, series = instances + len(datasets), series + 1
            first = first or (datasets, v)
        if mask is not None and first is not None:
            labels, affine, convention = mask
            source, v = first
            if labels.shape[:3] == np.shape(v.data)[:3] and np.allclose(affine, v.affine, atol=1e-4):
                zf.writestr("mask/SEG.dcm", _bytes(seg_of(labels, affine, convention, source, study, 100)))
                instances, series = instances + 1, series + 1
            else:
                log.info("job %s: mask not on the outputs' grid; no DICOM SEG", study.job_id)
    return DicomArchive(Path(path), instances, series)
