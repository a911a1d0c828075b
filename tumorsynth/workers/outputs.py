"""Generated volumes → the job's intensity scale → NIfTI + BIDS-style sidecars (and, when asked, one DICOM zip) →
object store. The outputs list is written last.

Each volume is encoded and uploaded by one of the worker's writer threads (``WorkerContext.writers``), in parallel
with the others and with the next batch's sampling: ISA-L's gzip, hashing and the S3 client's socket writes release
the GIL. The outputs are listed in the same order whatever order the threads finish in.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Executor, wait
from pathlib import Path

import numpy as np

from ..imaging.dicom import Study
from ..imaging.intensity import apply_scale, brain_region, native_scale
from ..imaging.labels import to_brats2023
from ..imaging.nifti import Volume, write_nifti, write_sidecar
from ..imaging.preview import slice_png
from ..jobs.records import JobRecord, StoredOutput
from ..models.base import GeneratedVolume, GenerationParams
from ..models.registry import ModelEntry
from ..storage.base import ObjectStore
from ..storage.keys import attempt_output_key, attempt_outputs_prefix, job_prefix
from ..storage.retry import with_retries
from .dicom_outputs import ARCHIVE_NAME, dicom_archive

log = logging.getLogger(__name__)


def provenance(rec: JobRecord, entry: ModelEntry, params: GenerationParams) -> dict:
    return {
        "GeneratedBy": [{"Name": "tumorsynth", "Model": entry.id, "CheckpointSha256": entry.weights_sha256}],
        "Model": entry.id,
        "CheckpointSha256": entry.weights_sha256,
        "ModelTrained": entry.trained,
        "TrainedOn": entry.trained_on,
        "Sampler": params.sampler,
        "Steps": params.steps,
        "Seed": params.seed,
        "JobId": rec.id,
        "RequestId": rec.id,
        "TumorClass": params.tumor_class,
        "OutputGrid": params.output_grid,
        "SamplingOptions": dict(params.options),
    } | ({"Truncation": params.options["truncation"]} if "truncation" in params.options else {})


def is_slice(data: np.ndarray) -> bool:
    """A 2D image: (X, Y) or a single-slice (X, Y, 1) volume."""
    return data.ndim == 2 or (data.ndim == 3 and data.shape[2] == 1)


def _spacing(affine: np.ndarray) -> list[float]:
    return [float(round(v, 6)) for v in np.linalg.norm(affine[:3, :3], axis=0)]


def intensity_of(rec: JobRecord, entry: ModelEntry) -> str:
    """The job's scale; records queued before ``intensity`` existed get the model's own."""
    return rec.request.get("intensity") or native_scale(entry.config)[0]


class OutputWriter:
    def __init__(
        self,
        store: ObjectStore,
        rec: JobRecord,
        entry: ModelEntry,
        params: GenerationParams,
        retries: int,
        pool: Executor | None = None,
        dicom_uid_root: str | None = None,
    ):
        self.store, self.rec, self.entry, self.params, self.retries = store, rec, entry, params, retries
        self.pool = pool  # None: one volume after the other, in this thread
        self.dicom_uid_root = dicom_uid_root
        self.written: list[StoredOutput] = []  # every upload, for discard(); listed in order by write()
        self._lock = threading.Lock()
        self.scale = intensity_of(rec, entry)
        self.formats = tuple(rec.request.get("formats") or ("nifti",))

    def _put(self, name: str, data: bytes, content_type: str, **fields) -> StoredOutput:
        key = attempt_output_key(self.rec.tenant, self.rec.id, self.rec.attempts, name)
        with_retries(lambda: self.store.put_bytes(key, data, content_type), attempts=self.retries)
        out = StoredOutput(name=name, key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest(), **fields)
        with self._lock:
            self.written.append(out)
        return out

    def _put_file(self, name: str, path: Path, content_type: str, **fields) -> StoredOutput:
        key = attempt_output_key(self.rec.tenant, self.rec.id, self.rec.attempts, name)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        with_retries(lambda: self.store.put_file(key, path, content_type), attempts=self.retries)
        out = StoredOutput(name=name, key=key, size=path.stat().st_size, sha256=digest.hexdigest(), **fields)
        with self._lock:
            self.written.append(out)
        return out

    def _volume(
        self,
        stem: str,
        data: np.ndarray,
        affine: np.ndarray,
        reference: Volume | None,
        *,
        modality: str,
        sample_index: int | None,
        kind: str,
        extra: dict | None = None,
    ) -> list[StoredOutput]:
        dtype = np.int16 if data.dtype == np.int16 else np.float32  # the "scanner" scale is int16
        nifti = write_nifti(data.astype(dtype, copy=False), affine, reference=reference, dtype=dtype)
        geo = {"shape": list(data.shape), "spacing": _spacing(affine)}
        image = self._put(
            f"{stem}.nii.gz", nifti, "application/gzip", modality=modality, sample_index=sample_index, kind=kind, **geo
        )
        side = provenance(self.rec, self.entry, self.params) | {"Modality": modality, "SampleIndex": sample_index}
        sidecar = self._put(
            f"{stem}.json",
            write_sidecar(side | (extra or {})),
            "application/json",
            modality=modality,
            sample_index=sample_index,
            kind="sidecar",
        )
        return [image, sidecar]

    def _image(self, v: GeneratedVolume, data: np.ndarray, fields: dict) -> list[StoredOutput]:
        stem = f"sample-{v.sample_index}_{v.modality}"
        out = self._volume(
            stem,
            data,
            v.affine,
            v.reference,
            modality=v.modality,
            sample_index=v.sample_index,
            kind="image",
            extra=fields,
        )
        if is_slice(v.data):  # 2D outputs also come as a PNG, for a glance or a 2D pipeline
            out.append(
                self._put(
                    f"{stem}.png",
                    slice_png(v.data),
                    "image/png",
                    modality=v.modality,
                    sample_index=v.sample_index,
                    kind="preview",
                    shape=list(v.data.shape[:2]),
                )
            )
        return out

    @staticmethod
    def _labels(vol: Volume, convention: str) -> tuple[np.ndarray, str]:
        out_convention = "binary" if convention == "binary" else "brats2023"
        return to_brats2023(np.asarray(vol.data), convention).astype(np.float32), out_convention

    def _mask(self, vol: Volume, convention: str) -> list[StoredOutput]:
        labels, out_convention = self._labels(vol, convention)
        return self._volume(
            "mask",
            labels,
            vol.affine,
            vol,
            modality="seg",
            sample_index=None,
            kind="mask",
            extra={
                "LabelConvention": out_convention,
                "SourceLabelConvention": convention,
                "IntensityScale": "labels",
                "IntensityUnits": f"label values ({out_convention})",
                "Description": f"the conditioning mask, labels {out_convention}",
            },
        )

    def write(self, volumes: list[GeneratedVolume], mask: tuple[Volume, str] | None) -> list[StoredOutput]:
        """Every volume (and the mask) with its sidecar. After a failure no volume not yet begun is written, and
        the failure is raised once every upload in flight has ended, so ``discard`` sees all that was stored."""
        scaled = self._scaled(volumes)
        tasks: list[tuple[Callable[..., list[StoredOutput]], tuple]] = [
            (self._image, (v, data, fields)) for v, (data, fields) in zip(volumes, scaled, strict=True)
        ]
        tasks += [(self._mask, mask)] if mask is not None else []
        if self.pool is None:
            parts = [fn(*args) for fn, args in tasks]
        else:
            failed = threading.Event()

            def run(fn, args):
                if failed.is_set():  # an earlier volume failed: the job fails, no more uploads
                    return []
                try:
                    return fn(*args)
                except BaseException:
                    failed.set()
                    raise

            futures = [self.pool.submit(run, fn, args) for fn, args in tasks]
            wait(futures)
            errors = [e for f in futures if (e := f.exception()) is not None]
            if errors:
                raise errors[0]
            parts = [f.result() for f in futures]
        self.written = [out for part in parts for out in part]
        if "dicom" in self.formats:
            dicom_mask = None
            if mask is not None:
                labels, out_convention = self._labels(*mask)
                dicom_mask = (labels, np.asarray(mask[0].affine), out_convention)
            self._dicom([(v, data) for v, (data, _) in zip(volumes, scaled, strict=True)], dicom_mask)
        return self.written

    def _scaled(self, volumes: list[GeneratedVolume]) -> list[tuple[np.ndarray, dict]]:
        """Each volume on the job's scale with its sidecar fields; one brain region per sample, for all contrasts."""
        regions: dict[int, np.ndarray] = {}
        if self.scale != "zscore" and native_scale(self.entry.config)[0] == "zscore":
            factor = native_scale(self.entry.config)[1]
            for i in sorted({v.sample_index for v in volumes}):
                regions[i] = brain_region([v.data * factor for v in volumes if v.sample_index == i])
        empty = np.zeros((1,), bool)
        return [
            apply_scale(v.data, self.scale, regions.get(v.sample_index, empty), v.modality, self.entry.config)
            for v in volumes
        ]

    def _dicom(self, items: list[tuple[GeneratedVolume, np.ndarray]], labels) -> None:
        if self.dicom_uid_root is None:
            raise ValueError("DICOM output needs an organisation UID root (TUMORSYNTH_DICOM_UID_ROOT)")
        study = Study.new(self.dicom_uid_root, self.rec.id, self.entry.id, self.entry.weights_sha256)
        with tempfile.TemporaryDirectory(prefix="tumorsynth-dicom-") as tmp:
            archive = dicom_archive(items, labels, study, Path(tmp) / ARCHIVE_NAME)
            self._put_file(
                ARCHIVE_NAME, archive.path, "application/zip", modality="dicom", sample_index=None, kind="dicom"
            )

    def sweep_other_attempts(self) -> None:
        """After this attempt owns the finished job: delete what earlier attempts (killed mid-upload) left behind."""
        own = attempt_outputs_prefix(self.rec.tenant, self.rec.id, self.rec.attempts)
        attempts = f"{job_prefix(self.rec.tenant, self.rec.id)}outputs/attempt-"
        try:
            for info in self.store.list(attempts):
                if not info.key.startswith(own):
                    self.store.delete(info.key)
        except Exception:  # best effort: those objects were never listed on the job
            log.warning("could not sweep earlier attempts' outputs of %s", self.rec.id, exc_info=True)

    def discard(self) -> None:
        """Remove what this attempt uploaded (a canceled or failed attempt leaves nothing listed or stored)."""
        for out in self.written:
            try:
                self.store.delete(out.key)
            except Exception:  # best effort: the outputs were never listed on the job
                log.warning("could not delete %s", out.key)
