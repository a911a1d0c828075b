"""The preview montage of a job's outputs (event streams are in ``events.py``).

A preview is drawn once per job and stored beside its outputs. Drawing reads every image of sample 0 into memory,
so one API process draws one preview at a time (its memory is bounded by one job's outputs, not by the number of
requests), and a Redis lock per job makes concurrent first requests, in any API process, wait for the one drawing
it and then read what it stored.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from ..errors import ServiceUnavailable
from ..jobs import keys
from ..storage.keys import output_key

log = logging.getLogger(__name__)
_drawing = threading.Lock()  # one preview drawn at a time in this process
WAIT_SECONDS = 60


def cached_preview(rec, store, settings, r) -> bytes:
    """The stored preview of a succeeded job, drawn first if nobody has yet."""
    key = output_key(rec.tenant, rec.id, "preview.png")
    if store.stat(key) is None:
        lock = r.lock(keys.preview_lock(rec.id), timeout=5 * WAIT_SECONDS, blocking_timeout=WAIT_SECONDS)
        if not lock.acquire():
            raise ServiceUnavailable(f"the preview of job {rec.id} is still being drawn; retry in a moment")
        try:
            if store.stat(key) is None:
                with _drawing:
                    png = render_preview(rec, store, settings)
                store.put_bytes(key, png, "image/png")
                log.info("preview of job %s drawn (%d bytes)", rec.id, len(png))
        finally:
            lock.release()
    return store.get_bytes(key)


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
        mask = np.asarray(read_volume(store.get_bytes(mask_out.key), field="mask", limits=limits, labels=True).data)
    return montage(volumes, mask)
