"""Intensity scales: what each writes inside and outside the brain, and which checkpoints can write which."""

from __future__ import annotations

import numpy as np
import pytest

from tumorsynth.imaging.intensity import apply_scale, brain_region, native_scale, scale_errors

LDM = {
    "name": "x",
    "intensity": {
        "background": 0.0,
        "scanner": {"t1": {"mean": 600.0, "std": 130.0}, "flair": {"mean": 1000.0, "std": 240.0}},
    },
}
VQGAN = {"name": "v", "intensity": {"z_clip": 5.0, "range": [-1.0, 1.0]}}
STYLEGAN2 = {"name": "s", "intensity": {"range": [0.0, 1.0]}}


def brain(shape=(40, 40, 30), seed=0):
    """z-scores inside a ball, 0 outside (the models' convention)."""
    rng = np.random.default_rng(seed)
    idx = np.indices(shape)
    inside = sum(((i - n / 2) / (n / 3)) ** 2 for i, n in zip(idx, shape)) < 1
    z = rng.normal(size=shape).astype(np.float32)
    z = (z - z[inside].mean()) / z[inside].std()
    return np.where(inside, z, 0).astype(np.float32), inside


def test_region_is_the_brain_shared_by_the_sample():
    z, inside = brain()
    region = brain_region([z, z * 0.5])
    assert (region == inside).mean() > 0.99  # voxels at z≈0 inside the brain are kept (holes filled)


def test_zscore_is_the_model_output_and_says_so():
    z, inside = brain()
    out, fields = apply_scale(z, "zscore", inside, "t1", LDM)
    assert np.array_equal(out, z) and fields["IntensityScale"] == "zscore" and "z-score" in fields["IntensityUnits"]


def test_unit_maps_brain_percentiles_to_0_1_and_background_to_0():
    z, inside = brain()
    out, fields = apply_scale(z, "unit", inside, "t1", LDM)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert np.all(out[~inside] == 0)
    lo, hi = np.percentile(z[inside], [0.5, 99.5])
    assert fields["IntensityParameters"]["LowZ"] == pytest.approx(lo, abs=1e-5)
    assert fields["IntensityParameters"]["HighZ"] == pytest.approx(hi, abs=1e-5)
    assert np.mean(out[inside] == 1.0) < 0.01  # only the top 0.5 % saturates


def test_scanner_is_nonnegative_int16_with_the_checkpoint_mean_and_sd():
    z, inside = brain()
    out, fields = apply_scale(z, "scanner", inside, "flair", LDM)
    assert out.dtype == np.int16 and out.min() >= 0 and np.all(out[~inside] == 0)
    assert out[inside].mean() == pytest.approx(1000.0, rel=0.01) and out[inside].std() == pytest.approx(240, rel=0.02)
    assert fields["IntensityParameters"]["Mean"] == 1000.0 and fields["IntensityScale"] == "scanner"


def test_vqgan_outputs_are_turned_back_into_zscores():
    z, inside = brain()
    out, fields = apply_scale(np.clip(z, -5, 5) / 5, "zscore", inside, "flair", VQGAN)
    assert np.allclose(out, np.clip(z, -5, 5), atol=1e-5) and fields["IntensityParameters"]["ClippedAt"] == 5.0


def test_which_checkpoint_can_write_which_scale():
    assert native_scale(LDM) == ("zscore", 1.0) and native_scale(STYLEGAN2)[0] == "unit"
    assert scale_errors(LDM, "ldm/x@1", "scanner", ["t1", "flair"]) is None
    why = scale_errors(LDM, "ldm/x@1", "scanner", ["t1", "t2"])
    assert "ldm/x@1" in why and "['t2']" in why and "'zscore' or 'unit'" in why
    assert "ldm/v@1" in scale_errors(VQGAN, "ldm/v@1", "scanner", ["flair"])
    assert "'unit'" in scale_errors(STYLEGAN2, "stylegan2/s@1", "zscore", ["flair"])
    assert scale_errors(STYLEGAN2, "stylegan2/s@1", "unit", ["flair"]) is None
