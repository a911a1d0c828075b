"""Property tests of the safe reader: whatever the bytes, the only way out is a Volume or a typed refusal.

Arbitrary bytes, valid files with random bytes overwritten, and valid headers with one field set to an arbitrary
value of its own type (hypothesis draws the value from the field's numpy dtype, NaN, infinities and extremes
included). Every call runs under tracemalloc with small limits, so a header that talks the reader into a big
allocation fails the memory bound even when it is refused in the end.
"""

from __future__ import annotations

import gzip
import os
import tracemalloc

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import from_dtype

from tumorsynth.errors import InvalidUpload, PayloadTooLarge
from tumorsynth.imaging.labels import validate_mask
from tumorsynth.imaging.nifti import Volume, VolumeLimits, read_volume

from .malformed import valid_bytes

# Small limits: a 1 MiB decompressed cap, so anything near 8 MiB of allocation is the reader going past its bounds.
LIMITS = VolumeLimits(max_file_bytes=1024**2, max_decompressed_bytes=1024**2, max_dim=256, max_voxels=256**2 * 4)
PEAK_BYTES = 8 * 1024**2
# CI runs a fixed 200 examples per test; TUMORSYNTH_FUZZ_EXAMPLES=5000 searches deeper, with fresh randomness.
DEEP = int(os.environ.get("TUMORSYNTH_FUZZ_EXAMPLES", "0"))
SETTINGS = settings(
    max_examples=DEEP or 200,
    deadline=None,
    derandomize=not DEEP,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NIFTI1 = valid_bytes()
NIFTI2 = valid_bytes(klass=nib.Nifti2Image)
SEEDS = {
    "nifti1": NIFTI1,
    "nifti2": NIFTI2,
    "nifti1.gz": gzip.compress(NIFTI1, mtime=0),
    "nifti2.gz": gzip.compress(NIFTI2, mtime=0),
}
HEADER_DTYPES = {"nifti1": nib.nifti1.header_dtype, "nifti2": nib.nifti2.header_dtype}


def read_bounded(raw: bytes) -> Volume | Exception:
    """The reader's result or its typed refusal; any other exception propagates and fails the test."""
    tracemalloc.start()
    try:
        vol = read_volume(raw, field="mask", limits=LIMITS)
        validate_mask(vol, field="mask")
        result: Volume | Exception = vol
    except (InvalidUpload, PayloadTooLarge) as exc:
        assert exc.message.startswith("mask: ") and exc.errors[0].field == "mask"
        assert 400 <= exc.status < 500
        result = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"peak allocation {peak} bytes for a {len(raw)}-byte upload"
    return result


def assert_sound(vol: Volume | Exception) -> None:
    if isinstance(vol, Volume):
        assert len(vol.shape) == 3 and min(vol.shape) >= 1 and max(vol.shape) <= LIMITS.max_dim
        assert np.isfinite(vol.affine).all() and abs(np.linalg.det(vol.affine[:3, :3])) > 0
        assert vol.data.nbytes <= LIMITS.max_decompressed_bytes


@SETTINGS
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(raw):
    assert_sound(read_bounded(raw))


@SETTINGS
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_behind_gzip_and_nifti_magic(tail):
    for raw in (b"\x1f\x8b" + tail, gzip.compress(tail, mtime=0), gzip.compress(NIFTI1[:352] + tail, mtime=0)):
        assert_sound(read_bounded(raw))


@SETTINGS
@given(st.sampled_from(sorted(SEEDS)), st.data())
def test_valid_files_with_bytes_overwritten(seed, data):
    raw = bytearray(SEEDS[seed])
    limit = 352 if not seed.endswith(".gz") else len(raw)
    edits = data.draw(st.lists(st.tuples(st.integers(0, limit - 1), st.integers(0, 255)), min_size=1, max_size=8))
    for pos, value in edits:
        raw[pos] = value
    assert_sound(read_bounded(bytes(raw)))


@SETTINGS
@given(st.sampled_from(["nifti1", "nifti2"]), st.sampled_from([False, True]), st.data())
def test_one_header_field_set_to_any_value_of_its_type(version, compress, data):
    dtype = HEADER_DTYPES[version]
    name = data.draw(st.sampled_from(dtype.names))
    raw = bytearray(SEEDS[version])
    hdr = np.frombuffer(raw[: dtype.itemsize], dtype=dtype.newbyteorder("<")).copy()
    field_dtype = dtype.fields[name][0]
    base = field_dtype.base.newbyteorder("<")
    value = data.draw(
        st.lists(
            from_dtype(base),
            min_size=field_dtype.shape[0] if field_dtype.shape else 1,
            max_size=field_dtype.shape[0] if field_dtype.shape else 1,
        )
    )
    hdr[0][name] = value if field_dtype.shape else value[0]
    raw[: dtype.itemsize] = hdr.tobytes()
    out = bytes(raw)
    assert_sound(read_bounded(gzip.compress(out, mtime=0) if compress else out))


@SETTINGS
@given(st.lists(st.integers(-(2**15), 2**15 - 1), min_size=8, max_size=8), st.integers(-(2**15), 2**15 - 1))
def test_any_dims_and_datatype_with_the_data_left_as_it_is(dim, datatype):
    raw = bytearray(NIFTI1)
    raw[40:56] = np.asarray(dim, "<i2").tobytes()
    raw[70:72] = np.asarray([datatype], "<i2").tobytes()
    assert_sound(read_bounded(bytes(raw)))
