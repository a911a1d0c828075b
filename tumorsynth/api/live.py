"""The preview montage of a job's outputs (event streams are in ``events.py``)."""

from __future__ import annotations

import numpy as np


def render_preview(rec, store, settings) -> bytes:
    from ..imaging.nifti import VolumeLimits, read_volume
    from ..imaging.preview import montage

    limits = VolumeLimits.from_settings(settings)
    images = [o for o in rec.outputs if o.kind == "image" and (o.sample_index or 0) == 0]
    mask_out = next((o for o in rec.outputs if o.kind == "mask"), None)
    volumes = []
    for o in images:
        vol = read_volume(store.get_bytes(o.key), field=o.name, limits=limits)
        volumes.append((o.modality or o.name, np.asarray(vol.data, dtype=np.float32), vol.spacing))
    mask = None
    if mask_out is not None:
        mask = np.asarray(read_volume(store.get_bytes(mask_out.key), field="mask", limits=limits).data)
    return montage(volumes, mask)
