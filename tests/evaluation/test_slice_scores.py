"""Inception Score / FID for slices with the in-house classifier: the score's bounds, and real beats untrained."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tumorsynth.evaluation.slice_scores import inception_score, score_slices, split_real, train_slice_classifier
from tumorsynth.models.stylegan2.configs import create_untrained


def synthetic_slices(n_per_class: int = 30, side: int = 16, seed: int = 0):
    """Three classes told apart by the height of a bright disc (top, middle, bottom: flips do not mix them)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    images, labels = [], []
    for k, cy in enumerate((4, 8, 12)):
        for _ in range(n_per_class):
            disc = np.hypot(yy - cy + rng.normal(0, 0.7), xx - 8 + rng.normal(0, 0.7)) < 3
            images.append(np.clip(0.3 * disc + 0.6 * disc * rng.random() + 0.1 * rng.random((side, side)), 0, 1))
            labels.append(k)
    return torch.tensor(np.array(images), dtype=torch.float32)[:, None], torch.tensor(labels)


def test_inception_score_bounds():
    confident = torch.eye(3).repeat(10, 1)
    assert inception_score(confident) == pytest.approx(3.0)
    assert inception_score(torch.tensor([[1.0, 0, 0]] * 30)) == pytest.approx(1.0)
    assert inception_score(torch.full((30, 3), 1 / 3)) == pytest.approx(1.0)


def test_classifier_training_is_seeded():
    images, labels = synthetic_slices(6)
    a, b, c = (train_slice_classifier(images, labels, 3, epochs=2, seed=s, batch_size=8) for s in (1, 1, 2))
    for (k, va), vb, _vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not all(torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))


def test_split_holds_out_each_class():
    labels = torch.tensor([0] * 10 + [1] * 4)
    train, held = split_real(labels, 0.5, seed=0)
    assert len(set(train) & set(held)) == 0 and len(train) + len(held) == 14
    assert (labels[held] == 0).sum() == 5 and (labels[held] == 1).sum() == 2


def test_real_slices_score_better_than_an_untrained_generator(tmp_path):
    entry = create_untrained(tmp_path / "stylegan2", preset="tiny", seed=0)
    images, labels = synthetic_slices()
    s = score_slices(entry, images, labels, "synthetic", samples=45, epochs=80, seed=0)
    assert s.real_heldout == 45 and s.generated == 45 and s.real_train == 45
    assert s.classifier_accuracy > 0.9
    assert s.inception_score["baseline"] > 2.0 and s.inception_score["baseline"] > s.inception_score["generator"]
    assert s.fid["generator"] > 5 * s.fid["baseline"]
    assert s.class_agreement["generator"] < s.class_agreement["baseline"]


def test_eval_command_prints_the_table_and_writes_json(tmp_path, monkeypatch):
    from tumorsynth.cli import app
    from tumorsynth.settings import get_settings

    create_untrained(tmp_path / "models" / "stylegan2", preset="tiny", name="t", seed=0)
    images, labels = synthetic_slices(8)
    names = ["meningioma", "glioma", "pituitary"]
    for i, (img, k) in enumerate(zip(images, labels)):
        (tmp_path / "data" / names[k]).mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[0].numpy() * 255).astype(np.uint8)).save(tmp_path / "data" / names[k] / f"{i}.png")
    monkeypatch.setenv("TUMORSYNTH_MODEL_DIR", str(tmp_path / "models"))
    get_settings.cache_clear()
    out = tmp_path / "scores.json"
    try:
        r = CliRunner().invoke(
            app,
            [
                "eval",
                "stylegan2",
                "stylegan2/t@1",
                "--data",
                str(tmp_path / "data"),
                "--samples",
                "12",
                "--epochs",
                "2",
                "--out",
                str(out),
                "--device",
                "cpu",
            ],
        )
    finally:
        get_settings.cache_clear()  # later tests see their own settings
    assert r.exit_code == 0, r.output
    assert "Inception Score" in r.output and "FID" in r.output
    saved = json.loads(out.read_text())
    assert saved["model"] == "stylegan2/t@1" and saved["generated"] == 12 and saved["real_heldout"] == 12


def test_montage_puts_each_class_generated_beside_real(tmp_path):
    from tumorsynth.data.slices import SliceSet
    from tumorsynth.evaluation.slice_montage import GAP, HEADER_H, LABEL_W, SCALE, stylegan2_montage

    entry = create_untrained(tmp_path / "stylegan2", preset="tiny", seed=0)
    images, labels = synthetic_slices(4)
    real = SliceSet(images=images, labels=labels, classes=list(entry.classes))
    out = stylegan2_montage(entry, real, tmp_path / "m.png", per_class=3)
    pic = np.asarray(Image.open(out))
    tile = 16 * SCALE
    assert pic.shape == (HEADER_H + 3 * (tile + GAP), LABEL_W + 2 * 3 * (tile + GAP) + 4 * GAP)
    real_x = LABEL_W + 3 * (tile + GAP) + 4 * GAP
    for k in range(3):  # the first real tile of each row is the class's first real slice, enlarged ×3
        y = HEADER_H + k * (tile + GAP)
        first = int(torch.nonzero(labels == k)[0])
        expected = (images[first, 0].numpy() * 255).round().astype(np.uint8).repeat(SCALE, 0).repeat(SCALE, 1)
        assert np.array_equal(pic[y : y + tile, real_x : real_x + tile], expected)
        assert pic[y : y + tile, LABEL_W : LABEL_W + tile].std() > 0  # a generated tile is there
