"""The per-tenant mask bank: masks uploaded for augmentation, and plausible new masks made from them.

Stored masks live at ``tenants/{tenant}/masks/{mask_id}/mask.nii.gz`` with their class in the object metadata. A
batch asks for ``n`` masks of a class: the sources are the tenant's masks of that class, else built-in phantom
masks of that class; each new mask is a source randomly placed inside a template brain, rotated, scaled and
elastically deformed (``imaging.maskbank``), seeded by (batch seed, index). Bank masks live on the BraTS grid
(240×240×155, 1 mm) that the template brain is on.
"""

from __future__ import annotations

import builtins
import functools
import threading
import zlib

import numpy as np

from ..errors import InvalidRequest, InvalidUpload, NotFound
from ..imaging.labels import to_brats2023, validate_mask
from ..imaging.nifti import VolumeLimits, read_volume, write_nifti
from ..storage.keys import mask_bank_key, tenant_prefix
from ..storage.retry import with_retries
from .records import new_id

BANK_SHAPE = (240, 240, 155)
# A whole tumour larger than this cannot be placed inside the template brain (about 1,900 ml) with room to move;
# no real glioma comes close (the largest are a few hundred ml). Bank masks are on a 1 mm grid: voxels are mm³.
MAX_TUMOUR_ML = 500.0
_lock = threading.Lock()


class MaskBank:
    def __init__(self, store, limits: VolumeLimits):
        self.store, self.limits = store, limits

    def add(self, tenant: str, tumor_class: str, raw: bytes) -> dict:
        vol = read_volume(raw, field="mask", limits=self.limits, labels=True)
        info = validate_mask(vol, field="mask")
        if vol.shape != BANK_SHAPE:
            raise InvalidUpload.for_field(
                "mask",
                f"bank masks are on the BraTS grid {list(BANK_SHAPE)} (1 mm); this "
                f"one is {list(vol.shape)}: resample it to the BraTS grid first",
            )
        if info.convention == "binary":
            raise InvalidUpload.for_field(
                "mask", "bank masks need tumour sub-regions (BraTS 2019 or 2023 labels), not a binary mask"
            )
        if (ml := info.tumour_voxels / 1000) > MAX_TUMOUR_ML:
            raise InvalidUpload.for_field(
                "mask",
                f"the tumour is {ml:.0f} ml, more than the {MAX_TUMOUR_ML:.0f} ml "
                "that can be placed inside the template brain; upload a real "
                "tumour mask, not a brain or head mask",
            )
        mask_id = new_id("mask")
        key = mask_bank_key(tenant, mask_id, "mask.nii.gz")
        labels = to_brats2023(np.asarray(vol.data), info.convention)
        with_retries(
            lambda: self.store.put_bytes(
                key, write_nifti(labels.astype(np.float32), vol.affine), "application/gzip", {"class": tumor_class}
            ),
            attempts=4,
        )
        return {
            "id": mask_id,
            "class": tumor_class,
            "label_convention": info.convention,
            "tumour_voxels": info.tumour_voxels,
        }

    def list(self, tenant: str) -> list[dict]:
        """The tenant's bank masks: id, class and size (one stat per mask: S3 listings carry no metadata)."""
        out = []
        for obj in self.store.list(f"{tenant_prefix(tenant)}masks/"):
            mask_id = obj.key.split("/")[-2]
            info = self.store.stat(obj.key)
            out.append({"id": mask_id, "class": (info.metadata or {}).get("class") if info else None, "size": obj.size})
        return out

    def delete(self, tenant: str, mask_id: str) -> None:
        """Remove one of the tenant's masks; another tenant's, or a missing one, is ``NotFound``."""
        key = mask_bank_key(tenant, mask_id, "mask.nii.gz")
        if self.store.stat(key) is None:
            raise NotFound(f"no bank mask '{mask_id}'")
        with_retries(lambda: self.store.delete(key), attempts=4)

    def sources(self, tenant: str, tumor_class: str) -> builtins.list[np.ndarray]:
        out = []
        for obj in self.store.list(f"{tenant_prefix(tenant)}masks/"):
            info = self.store.stat(obj.key)  # S3 listings carry no user metadata
            if info is None or (info.metadata or {}).get("class") != tumor_class:
                continue
            vol = read_volume(self.store.get_bytes(obj.key), field="mask", limits=self.limits, labels=True)
            out.append(np.rint(np.asarray(vol.data)).astype(np.uint8))
        return out

    def make(self, tenant: str, tumor_class: str, n: int, seed: int) -> builtins.list[bytes]:
        from ..imaging.maskbank import generate_bank_masks
        from ..imaging.templates import brats_grid_affine

        sources = self.sources(tenant, tumor_class) or builtin_sources(tumor_class)
        placeable = [m for m in sources if np.count_nonzero(m) / 1000 <= MAX_TUMOUR_ML]
        if not placeable:  # masks banked before the size check: refuse at once rather than after every try
            raise ValueError(
                f"every bank mask of class {tumor_class} has a tumour over {MAX_TUMOUR_ML:.0f} ml, "
                "too large to place inside the template brain"
            )
        sources = placeable
        brain, spacing = template_brain()
        masks = generate_bank_masks(sources, brain, spacing, n, seed)
        affine = brats_grid_affine()
        return [write_nifti(m.astype(np.float32), affine) for m in masks]


def check_class(tumor_class: object, declared: set[str]) -> str:
    """A bank class is one some installed model declares, so a class name is never free text that reaches
    object metadata, a manifest or a log (control characters, NUL, bidi overrides)."""
    if not isinstance(tumor_class, str) or not 0 < len(tumor_class) <= 64:
        raise InvalidRequest.for_field("tumor_class", 'send {"tumor_class": "<class>"} as the request field')
    if not tumor_class.isprintable() or tumor_class != tumor_class.strip():
        raise InvalidRequest.for_field(
            "tumor_class",
            f"has control, format or space characters; send a class name as the models list it: {sorted(declared)}",
        )
    if tumor_class not in declared:
        raise InvalidRequest.for_field(
            "tumor_class", f"no installed model makes class {tumor_class!r}; use one of {sorted(declared)}"
        )
    return tumor_class


@functools.lru_cache(maxsize=1)
def template_brain() -> tuple[np.ndarray, np.ndarray]:
    from ..imaging.templates import load_templates

    t = load_templates()
    return np.asarray(t.brain_mask, dtype=bool), np.asarray(t.spacing, dtype=np.float64)


@functools.lru_cache(maxsize=4)
def builtin_sources(tumor_class: str, n: int = 4) -> list[np.ndarray]:
    """Masks of phantom subjects of ``tumor_class`` (made at 2.5 mm, brought to the 1 mm grid with nearest)."""
    from scipy import ndimage

    from ..data.phantoms import make_subject
    from ..imaging.templates import load_templates

    with _lock:
        small = load_templates((96, 96, 62))
        out = []
        for i in range(n):
            rng = np.random.default_rng([7919, i, zlib.crc32(tumor_class.encode())])
            subject = make_subject(small, rng, tumor_class)
            zoom = [b / s for b, s in zip(BANK_SHAPE, subject["seg"].shape)]
            out.append(ndimage.zoom(subject["seg"], zoom, order=0)[: BANK_SHAPE[0], : BANK_SHAPE[1], : BANK_SHAPE[2]])
        return out
