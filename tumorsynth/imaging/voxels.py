"""Voxel bytes → a checked array, a chunk at a time, so memory follows the voxel count and not the stored dtype.

Reading an upload the obvious way (decompress it whole, let nibabel build the array, check it) costs several
copies at the stored width: a 0.5 MB gzip of a float64 mask of 512 MiB took the API to 1.7 GB RSS (issue 14, #6).
Here the decompressed stream is consumed in chunks of ``CHUNK_VOXELS``, scaled as nibabel would scale it
(``scl_slope``/``scl_inter``) and written into the output array as it arrives:

* a mask becomes uint8 labels (1 byte a voxel), its values checked on the way: finite, whole, within 0…255;
* an image keeps its stored type when that is 4 bytes or fewer and unscaled, else becomes float32, checked finite.

So the peak is the output (at most ``max_voxels`` × 4 bytes, × 1 for a mask) plus one chunk, whatever the header
declares. nibabel has no chunked reader with a type conversion (its ArrayProxy reads whole slabs at the stored
width, then scales them in float64), which is why this is ours.
"""

from __future__ import annotations

import numpy as np

CHUNK_VOXELS = 1 << 18  # 256 Ki voxels: 2 MiB of float64 at a time


class VoxelSink:
    """Receives the voxel bytes in order (any chunking) and fills ``array`` (Fortran order, as NIfTI stores it)."""

    def __init__(self, dims: tuple[int, ...], dtype: np.dtype, slope: float | None, inter: float | None, labels: bool):
        self.dtype, self.labels = dtype, labels
        self.scaled = slope is not None and (slope, inter) != (1.0, 0.0)
        self.slope, self.inter = (slope or 1.0), (inter or 0.0)
        self.n = int(np.prod(dims, dtype=np.int64))
        self.array = np.empty(dims, dtype=self._target(), order="F")
        self._flat = self.array.reshape(-1, order="F")  # a view: the array is Fortran-contiguous
        self._pos = 0
        self._carry = b""
        self.nonfinite = 0
        self.fractional = False
        self.lo, self.hi = np.inf, -np.inf

    def _target(self) -> np.dtype:
        if self.labels:
            return np.dtype(np.uint8)
        if not self.scaled and self.dtype.itemsize <= 4:
            return self.dtype.newbyteorder("=")
        return np.dtype(np.float32)

    @property
    def complete(self) -> bool:
        return self._pos == self.n

    def feed(self, data: bytes | memoryview) -> None:
        """Take the next bytes of the voxel data; the caller passes exactly ``n × itemsize`` bytes in all."""
        size = self.dtype.itemsize
        buf = self._carry + bytes(data) if self._carry else data
        whole = len(buf) // size
        for start in range(0, whole, CHUNK_VOXELS):
            count = min(CHUNK_VOXELS, whole - start)
            values = np.frombuffer(buf, dtype=self.dtype, count=count, offset=start * size)
            self._put(values)
        self._carry = bytes(buf[whole * size :])

    def _put(self, raw: np.ndarray) -> None:
        values = raw.astype(np.float64) * self.slope + self.inter if self.scaled else raw
        if values.dtype.kind == "f":
            finite = np.isfinite(values)
            if not finite.all():
                self.nonfinite += int(values.size - np.count_nonzero(finite))
                values = np.where(finite, values, 0)
        if self.labels:
            self._check_labels(values)
            values = np.clip(values, 0, 255)  # refused later if clipped; no wrap-around meanwhile
        end = self._pos + values.size
        self._flat[self._pos : end] = values if self.labels else values.astype(self.array.dtype, copy=False)
        self._pos = end

    def _check_labels(self, values: np.ndarray) -> None:
        if values.dtype.kind == "f" and not self.fractional:
            self.fractional = not np.array_equal(values, np.round(values))
        if values.size:
            self.lo, self.hi = min(self.lo, float(values.min())), max(self.hi, float(values.max()))
