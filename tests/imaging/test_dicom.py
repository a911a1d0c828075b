"""DICOM output: every file valid for dciodvfy, geometry equal to the NIfTI's (oblique too, read back by dicom2nifti,
an independent converter), the SEG's segments the BraTS labels, and synthetic markings with no uploader data."""

from __future__ import annotations

import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import MRImageStorage, SegmentationStorage

from tests.support.dicom import dciodvfy_errors
from tests.support.volumes import mask_array, oblique_affine
from tumorsynth.imaging.dicom import PATIENT_NAME, Study, mr_series, seg_of, volume_of
from tumorsynth.models.base import GeneratedVolume
from tumorsynth.workers.dicom_outputs import dicom_archive

ROOT = "1.2.826.0.1.3680043.10.1234."
SHA = "c0ffee" * 10 + "abcd"


def study() -> Study:
    return Study.new(ROOT, "job_0123456789abcdef0123456789abcdef", "ldm/tiny@1", SHA)


def write(datasets, folder):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        paths.append(folder / f"{i:04d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def volume(shape=(32, 36, 20), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def to_nifti(paths, out):
    """dicom2nifti on the files as written; it trips on empty (type 2) TR/TE, so those are dropped in its copy."""
    from dicom2nifti.convert_dicom import dicom_array_to_nifti

    datasets = [pydicom.dcmread(p) for p in paths]
    for ds in datasets:
        for name in ("RepetitionTime", "EchoTime"):
            if name in ds and ds.data_element(name).value in (None, ""):
                delattr(ds, name)
    dicom_array_to_nifti(datasets, str(out), False)
    return nib.load(out)


@pytest.mark.parametrize(
    "affine",
    [np.diag([-1.0, -1.0, 1.0, 1.0]), oblique_affine(), oblique_affine(spacing=(0.8, 1.1, 3.0), angle_deg=-33.0)],
    ids=["lps-axial", "oblique", "oblique-anisotropic"],
)
def test_series_geometry_and_values_round_trip(tmp_path, affine):
    data = volume()
    paths = write(mr_series(data, affine, study(), modality="t1", series_number=1, description="T1"), tmp_path / "s")
    img = to_nifti(paths, tmp_path / "back.nii.gz")
    assert img.shape == data.shape
    assert np.allclose(img.affine, affine, atol=1e-4), (img.affine, affine)
    slope = float(pydicom.dcmread(paths[0]).RescaleSlope)
    assert np.abs(img.get_fdata() - data).max() <= slope  # int16 with rescale: within one stored step


def test_scanner_scale_is_stored_as_it_is(tmp_path):
    data = np.random.default_rng(1).integers(0, 2000, size=(16, 16, 6)).astype(np.int16)
    (ds, *_) = mr_series(data, np.eye(4), study(), modality="flair", series_number=1, description="FLAIR")
    assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == 0.0
    assert np.array_equal(ds.pixel_array, data[:, :, 0].T)


def test_every_file_valid_marked_synthetic_and_seg_has_brats_segments(tmp_path):
    affine = oblique_affine()
    shape = (48, 52, 24)
    labels = mask_array(shape)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    vols = [(GeneratedVolume(m, 0, volume(shape, i), affine), volume(shape, i)) for i, m in enumerate(("t1", "flair"))]
    st = study()
    archive = dicom_archive(vols, (labels, affine, "brats2023"), st, tmp_path / "dicom.zip")
    names = zipfile.ZipFile(archive.path).namelist()
    assert archive.instances == 2 * shape[2] + 1 == len(names) and archive.series == 3
    assert "mask/SEG.dcm" in names and "sample-0/flair/IM00024.dcm" in names
    zipfile.ZipFile(archive.path).extractall(tmp_path / "x")
    files = sorted((tmp_path / "x").rglob("*.dcm"))
    for f in files:
        assert dciodvfy_errors(f) == [], f
    datasets = [pydicom.dcmread(f) for f in files]
    uids = {ds.SOPInstanceUID for ds in datasets}
    assert len(uids) == len(datasets) and all(u.startswith(ROOT) for u in uids)
    for ds in datasets:
        assert str(ds.PatientName) == PATIENT_NAME and ds.PatientID == st.job_id
        assert ds.SeriesDescription.startswith("SYNTHETIC") and ds.StudyInstanceUID == st.study_uid
        # the SEG also lists its source images' equipment (highdicom): ours is there beside it
        assert any(
            e.Manufacturer == "tumorsynth"
            and e.ManufacturerModelName == "ldm/tiny@1"
            and SHA in e.ContributionDescription
            for e in ds.ContributingEquipmentSequence
        )
        assert ds.FrameOfReferenceUID == st.frame_of_reference_uid
    images = [ds for ds in datasets if ds.SOPClassUID == MRImageStorage]
    assert all(list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"] and SHA in ds.DerivationDescription for ds in images)
    (seg,) = [ds for ds in datasets if ds.SOPClassUID == SegmentationStorage]
    assert [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence] == [
        (1, "NCR necrotic tumour core"),
        (2, "ED peritumoural oedema"),
        (3, "ET enhancing tumour"),
    ]
    assert seg.ImageType[0] == "DERIVED" and seg.SeriesDescription.startswith("SYNTHETIC")
    # the SEG read back by highdicom, on the mask's own grid, holds the mask's labels voxel for voxel
    import highdicom as hd

    vol = hd.seg.Segmentation.from_dataset(seg).get_volume(combine_segments=True)
    assert np.array_equal(
        vol.match_geometry(volume_of(labels, affine, st.frame_of_reference_uid)).array, np.transpose(labels, (2, 1, 0))
    )


def test_a_binary_mask_is_one_whole_tumour_segment(tmp_path):
    shape = (24, 24, 10)
    labels = (mask_array(shape) > 0).astype(np.uint8)
    st = study()
    source = mr_series(volume(shape), np.eye(4), st, modality="t1", series_number=1, description="T1")
    ds = seg_of(labels, np.eye(4), "binary", source, st, 100)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["WT whole tumour"]
    ds.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []


@pytest.mark.parametrize("shape", [(64, 48, 1), (64, 48)], ids=["slice-volume", "2d"])
def test_a_2d_output_is_a_one_image_series(tmp_path, shape):
    """StyleGAN2's slices: (H, W, 1) NIfTI volumes, one MR image each."""
    affine = np.diag([0.9, 0.9, 1.0, 1.0])
    (ds,) = mr_series(
        np.random.default_rng(2).random(shape, dtype=np.float32),
        affine,
        study(),
        modality="t1c",
        series_number=1,
        description="T1 post-contrast sample 0",
    )
    ds.save_as(tmp_path / "slice.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "slice.dcm") == []
    assert (ds.Rows, ds.Columns) == (48, 64) and ds.MRAcquisitionType == "2D"
