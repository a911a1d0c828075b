"""The evaluation protocols on tiny phantom-like 16³ volumes: utility benchmark, features and FID, mask Dice."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tumorsynth.evaluation.features import (
    extract_features,
    fid,
    load_medicalnet,
    train_feature_classifier,
)
from tumorsynth.evaluation.fidelity import dice_per_region, mask_dice, train_segmenter
from tumorsynth.evaluation.utility import (
    ARMS,
    METRICS,
    classification_metrics,
    run_utility,
    stratified_folds,
    write_report,
)

GRID = (16, 16, 16)


def _phantoms(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(N, 1, 16, 16, 16) images, (N, 16, 16, 16) BraTS 2023 labels, classes: HGG has an enhancing rim."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in GRID], indexing="ij"))
    images, labels, classes = [], [], []
    for i in range(n):
        tumour_class = ("LGG", "HGG")[i % 2]
        centre = rng.uniform(6, 10, 3).astype(np.float32)
        r = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
        seg = np.zeros(GRID, np.uint8)
        seg[r < 5] = 2
        seg[r < 3] = 3 if tumour_class == "HGG" else 1
        seg[r < 1.5] = 1
        image = 1.0 + np.where(seg == 2, 0.5, 0) + np.where(seg == 3, 1.5, 0) + np.where(seg == 1, -0.4, 0)
        images.append((image + 0.1 * rng.standard_normal(GRID))[None].astype(np.float32))
        labels.append(seg)
        classes.append(tumour_class)
    return np.stack(images), np.stack(labels), classes


@pytest.fixture(scope="module")
def data():
    real_x, real_seg, real_y = _phantoms(8, seed=1)
    synth_x, _, synth_y = _phantoms(4, seed=2)
    return real_x, real_seg, real_y, synth_x, synth_y


@pytest.fixture(scope="module")
def result(data):
    real_x, _, real_y, synth_x, synth_y = data
    return run_utility(real_x, real_y, synth_x, synth_y, folds=2, epochs=2, seed=0, channels=(4, 8, 8, 8))


def test_both_arms_report_every_metric_over_the_folds(result):
    assert set(result["arms"]) == set(ARMS)
    for arm in ARMS:
        for metric in METRICS:
            stat = result["arms"][arm][metric]
            assert len(stat["folds"]) == 2
            assert all(0.0 <= v <= 1.0 for v in stat["folds"])
            assert 0.0 <= stat["mean"] <= 1.0 and stat["std"] >= 0.0
            assert stat["mean"] == pytest.approx(np.mean(stat["folds"]))
    protocol = result["protocol"]
    assert protocol["n_real"] == 8 and protocol["n_synthetic"] == 4
    assert protocol["real_per_class"] == {"LGG": 4, "HGG": 4}
    tested = sorted(i for fold in protocol["test_folds"] for i in fold)
    assert tested == list(range(8))  # every real subject tested once, no synthetic one


def test_same_seed_same_result(data, result):
    real_x, _, real_y, synth_x, synth_y = data
    again = run_utility(real_x, real_y, synth_x, synth_y, folds=2, epochs=2, seed=0, channels=(4, 8, 8, 8))
    assert again["arms"] == result["arms"]


def test_report_is_written(result, tmp_path):
    paths = write_report(result, tmp_path / "report")
    written = json.loads(paths["json"].read_text())
    assert written["arms"]["real_plus_synthetic"]["auc"]["mean"] == pytest.approx(
        result["arms"]["real_plus_synthetic"]["auc"]["mean"]
    )
    with Image.open(paths["png"]) as chart:
        assert chart.format == "PNG" and chart.size[0] > 400
        assert len(chart.getcolors(1 << 16)) > 3  # bars, axes and text, not a blank canvas


def test_folds_are_stratified_and_disjoint():
    labels = np.array([0] * 7 + [1] * 5)
    splits = stratified_folds(labels, 3, seed=4)
    assert sorted(np.concatenate(splits).tolist()) == list(range(12))
    for test in splits:
        assert set(labels[test]) == {0, 1}
        assert 3 <= len(test) <= 5
    assert [s.tolist() for s in splits] == [s.tolist() for s in stratified_folds(labels, 3, seed=4)]


def test_classification_metrics():
    perfect = classification_metrics([0.1, 0.2, 0.9, 0.8], [0, 0, 1, 1])
    assert perfect == {"auc": 1.0, "f1": 1.0, "accuracy": 1.0, "precision": 1.0, "recall": 1.0}
    none_positive = classification_metrics([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1])
    assert none_positive["auc"] == 1.0 and none_positive["accuracy"] == 0.5
    assert none_positive["precision"] == 0.0 and none_positive["recall"] == 0.0 and none_positive["f1"] == 0.0


def test_refuses_too_few_subjects_per_class(data):
    real_x, _, real_y, synth_x, synth_y = data
    with pytest.raises(ValueError, match="per class"):
        run_utility(real_x[:3], real_y[:3], synth_x, synth_y, folds=2, epochs=1)
    with pytest.raises(ValueError, match="unknown class"):
        run_utility(real_x, ["GBM"] * 8, synth_x, synth_y, folds=2, epochs=1)


def test_fid_of_identical_and_shifted_features():
    features = np.random.default_rng(0).standard_normal((64, 8))
    assert fid(features, features) == pytest.approx(0.0, abs=1e-6)
    assert fid(features, features + 1.0) == pytest.approx(8.0, rel=1e-3)  # |Δμ|² with equal covariances
    with pytest.raises(ValueError, match="same D"):
        fid(features, features[:, :4])


def test_trained_feature_classifier_is_seeded_and_extracts_features(data):
    real_x, _, real_y, _, _ = data
    labels = [("LGG", "HGG").index(c) for c in real_y]
    a = train_feature_classifier(real_x, labels, epochs=1, seed=3, channels=(4, 8, 8, 8))
    b = train_feature_classifier(real_x, labels, epochs=1, seed=3, channels=(4, 8, 8, 8))
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    features = extract_features(a, real_x)
    assert features.shape == (8, a.feature_dim) and torch.isfinite(features).all()


def test_medicalnet_weights_load_from_a_local_file(tmp_path):
    from monai.networks.nets import resnet10

    source = resnet10(spatial_dims=3, n_input_channels=1, feed_forward=False, shortcut_type="B", bias_downsample=False)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.zeros(2)  # MedicalNet's segmentation head is dropped
    torch.save({"state_dict": state}, tmp_path / "resnet_10.pth")
    net = load_medicalnet(tmp_path / "resnet_10.pth")
    for (name, p), q in zip(net.state_dict().items(), source.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    assert extract_features(net, torch.zeros(2, 2, *GRID)).shape == (2, 2 * 512)  # one image per contrast
    torch.save({"fc.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a MedicalNet"):
        load_medicalnet(tmp_path / "other.pth")


class _Oracle(torch.nn.Module):
    """A perfect segmenter for images that are the regions themselves: logits ±10."""

    def forward(self, x):
        return (x - 0.5) * 20


def test_dice_of_a_perfect_segmentation_is_one(data):
    _, real_seg, _, _, _ = data
    from tumorsynth.imaging.labels import to_regions

    regions = np.stack([to_regions(s, "brats2023") for s in real_seg])
    dice = mask_dice(_Oracle(), regions, real_seg)
    assert dice == pytest.approx({"WT": 1.0, "TC": 1.0, "ET": 1.0})
    lgg_only = real_seg[0::2]  # no enhancing tumour: ET Dice is undefined, not 0
    dice = dice_per_region(np.stack([to_regions(s, "brats2023") for s in lgg_only]), lgg_only)
    assert dice["WT"] == 1.0 and math.isnan(dice["ET"])
    shifted = np.roll(regions, 2, axis=2)
    assert dice_per_region(shifted, real_seg)["WT"] < 1.0


def test_segmenter_trains_on_the_grid(data):
    real_x, real_seg, _, _, _ = data
    net = train_segmenter(real_x, real_seg, epochs=1, seed=0, channels=(4, 8, 8))
    dice = mask_dice(net, real_x, real_seg)
    assert set(dice) == {"WT", "TC", "ET"}
    assert all(0.0 <= v <= 1.0 for v in dice.values())
    with pytest.raises(ValueError, match="divisible"):
        train_segmenter(real_x[..., :15], real_seg[..., :15], epochs=1)
