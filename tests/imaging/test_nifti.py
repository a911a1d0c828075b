"""The safe reader and the de-identifying writer."""

from __future__ import annotations

import gzip
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from tests.support.volumes import load, nifti_bytes, oblique_affine
from tumorsynth.errors import InvalidUpload, PayloadTooLarge
from tumorsynth.imaging.labels import to_brats2023, to_regions, validate_mask
from tumorsynth.imaging.nifti import VolumeLimits, read_volume, write_nifti, write_sidecar

from .malformed import CORPUS_LIMITS, _bomb, corpus, valid_variants


def outcome(raw: bytes, labels: bool = False) -> tuple[int, str]:
    try:
        vol = read_volume(raw, field="mask", limits=CORPUS_LIMITS, labels=labels)
        validate_mask(vol, field="mask")
    except (InvalidUpload, PayloadTooLarge) as exc:
        return exc.status, exc.message
    return 200, ""


def test_corpus_is_large_enough_and_named_uniquely():
    names = [c[0] for c in corpus()]
    assert len(names) >= 50 and len(set(names)) == len(names)


@pytest.mark.parametrize("name,raw,status", corpus(), ids=[c[0] for c in corpus()])
def test_malformed_upload_is_refused_with_a_message_naming_the_field(name, raw, status):
    got, message = outcome(raw)
    assert got == status, f"{name}: {got} {message}"
    assert message.startswith("mask: ") and len(message) > 20
    assert outcome(raw, labels=True) == (got, message), name  # read as uint8 labels: the same refusal


@pytest.mark.parametrize("name,raw,convention", valid_variants(), ids=[v[0] for v in valid_variants()])
def test_valid_variants_are_read(name, raw, convention):
    vol = read_volume(raw, field="mask", limits=CORPUS_LIMITS)
    assert vol.shape == (24, 20, 16) and np.isfinite(vol.affine).all()
    assert validate_mask(vol).convention == convention
    assert vol.compressed == (raw[:2] == b"\x1f\x8b") and vol.size == len(raw)
    as_labels = read_volume(raw, field="mask", limits=CORPUS_LIMITS, labels=True)
    assert as_labels.data.dtype == np.uint8 and np.array_equal(as_labels.data, np.rint(vol.data))
    assert validate_mask(as_labels).convention == convention and np.array_equal(as_labels.affine, vol.affine)


def test_a_float64_mask_is_read_as_labels_in_memory_of_its_voxel_count():
    """Issue 14 #6: memory follows the voxels (1 byte each as labels), not the declared float64 (8 bytes each)."""
    shape = (256, 256, 128)  # 8 Mi voxels: 64 MiB as float64, ~70 kB gzipped
    data = np.zeros(shape, np.float64)
    data[100:140, 90:150, 40:80] = 2.0
    data[110:130, 100:140, 50:70] = 1.0
    raw = nifti_bytes(data, np.eye(4))
    limits = VolumeLimits(max_decompressed_bytes=128 << 20, max_voxels=16 << 20, max_dim=512)
    tracemalloc.start()
    vol = read_volume(raw, field="mask", limits=limits, labels=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    voxels = int(np.prod(shape))
    assert vol.data.dtype == np.uint8 and validate_mask(vol).labels == [1, 2]
    assert peak < voxels + (12 << 20), f"peak {peak / 2**20:.1f} MiB for {voxels / 2**20:.0f} MiB of labels"


def test_gzip_bomb_is_refused_in_bounded_memory():
    bomb = _bomb((8, 8, 8), 200 << 20)  # 200 MB of zeros after a tiny header, ~200 kB on the wire
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    with pytest.raises(InvalidUpload):
        read_volume(bomb, field="mask", limits=CORPUS_LIMITS)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 << 20


def test_per_file_size_cap_is_413():
    with pytest.raises(PayloadTooLarge):
        read_volume(b"\x00" * (CORPUS_LIMITS.max_file_bytes + 1), field="mask", limits=CORPUS_LIMITS)


def test_written_nifti_keeps_geometry_and_drops_patient_fields():
    aff = oblique_affine()
    data = np.random.default_rng(0).random((10, 12, 8)).astype(np.float32)
    src = read_volume(nifti_bytes(np.ones((10, 12, 8), np.uint8), aff, descrip=b"PATIENT^JANE"), field="t1")
    img = load(write_nifti(data, aff, reference=src))
    hdr = img.header
    assert img.get_data_dtype() == np.float32 and img.shape == (10, 12, 8)
    np.testing.assert_allclose(img.get_sform(), aff, atol=1e-5)
    np.testing.assert_allclose(img.get_qform(), aff, atol=1e-4)
    assert int(hdr["sform_code"]) == 1 and int(hdr["qform_code"]) == 1
    for name in ("descrip", "aux_file", "db_name", "intent_name"):
        assert bytes(hdr[name]).strip(b"\x00") == b""
    assert len(hdr.extensions) == 0
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)


def test_writer_is_deterministic():
    data = np.zeros((4, 4, 4), np.float32)
    assert write_nifti(data, np.eye(4)) == write_nifti(data, np.eye(4))
    assert gzip.decompress(write_nifti(data, np.eye(4)))[344:348] == b"n+1\x00"


def test_sidecar_says_synthetic_first():
    body = write_sidecar({"Synthetic": False, "Model": "ldm/x@1"})
    assert body.startswith(b'{\n  "Synthetic": true') and b'"Model": "ldm/x@1"' in body


def test_label_conversions():
    m = np.array([0, 1, 2, 4], np.uint8)
    assert to_brats2023(m, "brats2019").tolist() == [0, 1, 2, 3]
    r = to_regions(np.array([0, 1, 2, 3]), "brats2023")
    assert r.tolist() == [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]]
    assert to_regions(np.array([0, 1]), "binary").tolist() == [[0, 1], [0, 0], [0, 0]]
    assert np.array_equal(to_regions(m, "brats2019"), r)


def test_extensions_in_the_upload_never_reach_the_output():
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"PATIENT NAME: DOE^JOHN"))
    src = read_volume(img.to_bytes(), field="t1")
    out = gzip.decompress(write_nifti(np.ones((4, 4, 4)), np.eye(4), reference=src))
    assert b"DOE^JOHN" not in out


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("hi", [1, 4, 15, 40])
def test_label_counts_match_a_plain_bincount_in_any_order_and_dtype(dtype, order, hi):
    from tumorsynth.imaging.labels import label_counts

    data = np.random.default_rng(hi).integers(0, hi + 1, size=(9, 7, 5)).astype(dtype, order=order)
    present, counts = label_counts(data, int(data.max()))
    expected = np.bincount(np.asarray(data, dtype=np.int64).ravel(), minlength=6)
    assert np.array_equal(present, np.flatnonzero(expected))
    assert np.array_equal(counts, expected)
