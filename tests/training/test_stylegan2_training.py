"""StyleGAN2 training with the tiny preset: both data layouts, the phantom slice set, finite losses, exact resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from tumorsynth.data.phantom_slices import build_slice_set
from tumorsynth.data.phantoms import generate_phantoms
from tumorsynth.data.slices import load_slices, prepare
from tumorsynth.models.base import GenerationParams
from tumorsynth.models.registry import ModelRegistry
from tumorsynth.models.stylegan2.runner import StyleGAN2Generator
from tumorsynth.training.stylegan2 import StyleGAN2TrainConfig, Trainer


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    generate_phantoms(root, 3, seed=5, shape=(96, 96, 62))
    return root


@pytest.fixture(scope="module")
def slice_dir(phantom_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slices")
    build_slice_set(phantom_dir, out, per_class=6, seed=0)
    return out


def config(**kw) -> StyleGAN2TrainConfig:
    return replace(StyleGAN2TrainConfig.load("stylegan2-tiny"), **kw)


class Interrupt(Exception):
    pass


def test_configs_load_and_refuse_unknown_settings(tmp_path):
    for name in ("stylegan2-tiny", "stylegan2-demo", "stylegan2-paper"):
        cfg = StyleGAN2TrainConfig.load(name)
        assert cfg.preset == name.split("-")[1] and cfg.betas == (0.0, 0.99)
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochs": 1, "vq_epochs": 3}')
    with pytest.raises(ValueError, match="vq_epochs"):
        StyleGAN2TrainConfig.load(bad)
    bad.write_text('{"augment": ["translation", "flip"]}')
    with pytest.raises(ValueError, match="flip"):
        StyleGAN2TrainConfig.load(bad)


def test_slice_folders_of_png_and_nifti(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("pituitary", "glioma"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray((rng.random((40, 30)) * 200).astype(np.uint8)).save(tmp_path / c / f"{i}.png")
    nib.save(nib.Nifti1Image(rng.random((24, 24, 1)).astype(np.float32), np.eye(4)), tmp_path / "glioma" / "n.nii.gz")
    data = load_slices(tmp_path, 16)
    assert data.layout == "folders" and data.classes == ["glioma", "pituitary"]  # the paper's order
    assert data.images.shape == (5, 1, 16, 16) and data.labels.tolist() == [0, 0, 0, 1, 1]
    assert float(data.images.min()) >= 0 and float(data.images.max()) == pytest.approx(1.0)
    nib.save(nib.Nifti1Image(np.ones((8, 8, 3), np.float32), np.eye(4)), tmp_path / "glioma" / "vol.nii.gz")
    with pytest.raises(ValueError, match="2D slices"):
        load_slices(tmp_path, 16)


def test_prepare_pads_to_a_square_and_scales_to_the_slice():
    x = np.zeros((20, 10), np.float32)
    x[5:15, 2:8] = 50.0
    out = prepare(x, 8)
    assert out.shape == (8, 8) and out.max() == pytest.approx(1.0)
    assert out[:, 0].max() == 0 and out[:, -1].max() == 0  # the padding stays background


def test_brats_volumes_are_sliced_through_the_tumour_and_labelled_glioma(phantom_dir):
    data = load_slices(phantom_dir, 16, per_subject=3)
    assert data.layout == "brats" and data.classes == ["glioma"]
    assert len(data.labels) == 9 and all(":z=" in s for s in data.sources)
    mapped = load_slices(phantom_dir, 16, per_subject=2, class_map={"HGG": "hgg-glioma", "LGG": "lgg-glioma"})
    assert set(mapped.classes) <= {"hgg-glioma", "lgg-glioma"} and len(mapped.labels) == 6


def test_phantom_slice_set_has_three_labelled_classes(slice_dir):
    note = json.loads((slice_dir / "SLICES.json").read_text())
    assert note["counts"] == {"meningioma": 6, "glioma": 6, "pituitary": 6}
    assert note["classes"]["meningioma"].startswith("SIMULATED")
    data = load_slices(slice_dir, 16)
    assert data.classes == ["meningioma", "glioma", "pituitary"] and len(data.labels) == 18


def test_training_steps_are_finite_and_the_checkpoint_is_servable(slice_dir, tmp_path):
    rows = []
    result = Trainer(
        config(epochs=2), slice_dir, tmp_path / "models" / "stylegan2" / "t@1", tmp_path / "work", on_epoch=rows.append
    ).run()
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert r["cpu_seconds"] > 0
        for k in ("loss_g", "loss_d", "r1", "pl_penalty"):
            assert np.isfinite(r[k]), (k, r)
    assert rows[-1]["images_seen"] == 2 * 16  # 18 slices, batches of 4, the last partial batch dropped
    entry = ModelRegistry(tmp_path / "models").get(result.entry.id)
    assert entry.classes == ("meningioma", "glioma", "pituitary") and entry.trained
    assert "NOT patients" in entry.trained_on
    card = (entry.path / "MODEL_CARD.md").read_text()
    assert "phantoms for demonstration only" in card and "SIMULATED" in card and "under-trained" in card
    runner = StyleGAN2Generator(entry, "cpu")
    params = GenerationParams(num_samples=2, seed=1, sampler="direct", steps=1, modalities=(), tumor_class="pituitary")
    out = runner.generate(params, {}, lambda d, t: None)
    assert out[0].data.shape == (16, 16, 1) and np.isfinite(out[0].data).all()
    assert (runner.network.mapping.w_avg.abs().sum(1) > 0).all()  # tracked for every class while training


def test_resume_is_exact(slice_dir, tmp_path):
    straight = Trainer(config(epochs=2), slice_dir, tmp_path / "a", tmp_path / "wa")
    straight.run()

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        Trainer(config(epochs=2), slice_dir, tmp_path / "b", tmp_path / "wb", on_epoch=stop_after_first).run()
    resumed = Trainer(config(epochs=2), slice_dir, tmp_path / "b", tmp_path / "wb")
    resumed.run(resume=True)
    assert resumed.state["epoch"] == 2 and [r["epoch"] for r in resumed.state["metrics"]] == [1, 2]
    for name in ("G_ema", "D"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def test_training_on_brats_volumes_makes_a_glioma_model_and_says_how_it_labelled(phantom_dir, tmp_path):
    result = Trainer(config(epochs=1, slices_per_subject=3), phantom_dir, tmp_path / "sg" / "g@1", tmp_path / "w").run()
    assert result.entry.classes == ("glioma",) and result.metrics[0]["images_seen"] == 8
    assert "axial slices of phantom subjects" in result.entry.trained_on
    card = (result.entry.path / "MODEL_CARD.md").read_text()
    assert '"HGG": "glioma"' in card and "LGG and HGG are both gliomas" in card


def test_augment_puts_every_image_d_sees_through_diff_augment(slice_dir, tmp_path, monkeypatch):
    import tumorsynth.training.stylegan2 as sg

    seen = []

    def spy(img, policy):
        seen.append((len(img), tuple(policy)))
        return img

    monkeypatch.setattr(sg, "diff_augment", spy)
    trainer = Trainer(
        config(epochs=1, augment=["color", "translation"], d_reg_interval=1), slice_dir, tmp_path / "o", tmp_path / "w"
    )
    trainer.state["step"] = 0
    real = trainer.data.images[:4] * 2 - 1
    trainer.g_step()
    trainer.d_step(real, trainer.data.labels[:4])
    assert seen == [(4, ("color", "translation"))] * 4  # G's fakes; D's reals and fakes; the R1 reals
    seen.clear()
    Trainer(config(epochs=1), slice_dir, tmp_path / "o2", tmp_path / "w2").d_step(real, trainer.data.labels[:4])
    assert seen == []  # off by default


def test_the_checkpoint_keeps_the_ema_generator_not_the_trained_one(slice_dir, tmp_path):
    trainer = Trainer(
        config(epochs=2, ema_kimg=1.0, ema_rampup=None), slice_dir, tmp_path / "stylegan2" / "e@1", tmp_path / "w"
    )
    result = trainer.run()
    ema, raw = trainer.G_ema.state_dict(), trainer.G.state_dict()
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)  # an average over the run, not the last weights
    saved = StyleGAN2Generator(ModelRegistry(tmp_path).get(result.entry.id), "cpu").network.state_dict()
    for k in ema:
        assert torch.equal(saved[k], ema[k]), k


def test_torchrun_two_cpu_processes_hold_identical_weights_and_rank_0_alone_writes(slice_dir, tmp_path):
    """``torchrun --nproc_per_node=2`` on gloo with lazy R1 and path length every 2nd step: gradients averaged by
    hand after every backward, the mean w and path-length mean averaged; G, G_ema, D and both Adams agree."""
    from tests.support.ddp import (
        assert_ranks_agree_and_only_rank_0_wrote,
        run_two_ranks,
    )

    records = run_two_ranks("stylegan2", config(epochs=2, name="ddp"), slice_dir, tmp_path / "ddp")
    assert_ranks_agree_and_only_rank_0_wrote(records, tmp_path / "ddp")
    assert any(k.endswith("w_avg") and k.startswith("G_ema") for k in records[0]["after"])
    entry = ModelRegistry(tmp_path / "ddp" / "rank0" / "out").get("stylegan2/ddp@1")
    training = entry.config["training"]
    assert training["processes"] == 2
    assert training["images_seen"] == 2 * 2 * 2 * 4  # epochs × ranks × batches per rank × batch
    assert "2 process(es)" in (entry.path / "MODEL_CARD.md").read_text()
    StyleGAN2Generator(entry, "cpu")  # servable


def test_init_from_a_checkpoint_starts_g_and_its_ema_from_its_weights(slice_dir, tmp_path):
    from tumorsynth.models.checkpoints import load_state_dict
    from tumorsynth.models.stylegan2.configs import create_untrained

    source = create_untrained(tmp_path / "src", preset="tiny", seed=7)
    trainer = Trainer(
        config(epochs=1, name="init", init_from=str(source.path)),
        slice_dir,
        tmp_path / "models" / "stylegan2" / "init@1",
        tmp_path / "work",
    )
    stored = load_state_dict(source)
    for net in (trainer.G, trainer.G_ema):
        assert all(torch.equal(v, stored[k].to(v.dtype)) for k, v in net.state_dict().items())
    result = trainer.run()
    assert result.entry.config["training"]["init_from"]["sha256"] == source.weights_sha256
    assert "G starting from the weights of" in (result.entry.path / "MODEL_CARD.md").read_text()


def test_a_wider_discriminator_comes_from_the_config_and_leaves_g_as_the_preset_makes_it(slice_dir, tmp_path):
    wide = StyleGAN2TrainConfig.load("stylegan2-demo-ac")
    assert (wide.preset, wide.d_channel_base, wide.d_channel_max, wide.ac_weight) == ("demo", 1024, 128, 1.0)
    plain = Trainer(config(epochs=1, name="plain"), slice_dir, tmp_path / "plain", tmp_path / "w0")
    trainer = Trainer(
        config(epochs=1, name="wide", d_channel_base=1024, d_channel_max=64),
        slice_dir,
        tmp_path / "models" / "stylegan2" / "wide@1",
        tmp_path / "w1",
    )
    # tiny preset: min(256 / 16, 32) = 16 channels at 16 px; here min(1024 / 16, 64) = 64
    assert plain.D.blocks[0].fromrgb.weight.shape[0] == 16 and trainer.D.blocks[0].fromrgb.weight.shape[0] == 64
    assert {k: v.shape for k, v in trainer.G.state_dict().items()} == {
        k: v.shape for k, v in plain.G.state_dict().items()
    }
    entry = trainer.run().entry
    assert entry.config["discriminator"]["channel_base"] == 1024 and entry.config["network"]["channel_base"] == 256
    assert "discriminator (training only) channels min(1024 / r, 64)" in (entry.path / "MODEL_CARD.md").read_text()
    StyleGAN2Generator(entry, "cpu")  # servable


def test_ac_gan_head_classifies_reals_and_scores_g_on_its_classes(slice_dir, tmp_path):
    trainer = Trainer(
        config(epochs=1, name="ac", ac_weight=1.0),
        slice_dir,
        tmp_path / "models" / "stylegan2" / "ac@1",
        tmp_path / "work",
    )
    assert trainer.D.aux is not None and trainer.D.aux.weight.shape[0] == len(trainer.data.classes)
    real = trainer.data.images[:4] * 2 - 1
    logits = trainer.D(real, trainer.data.labels[:4])
    assert logits.shape == (4,) and trainer.D.last_class_logits.shape == (4, len(trainer.data.classes))
    result = trainer.run()
    row = result.metrics[-1]
    assert all(np.isfinite(row[k]) and row[k] > 0 for k in ("ac_d", "ac_g"))
    assert result.entry.config["discriminator"]["aux_classifier"] is True
    assert "trained on reals, weight 1; G scored on it, weight 1)" in (result.entry.path / "MODEL_CARD.md").read_text()
    plain = Trainer(config(epochs=1, name="plain"), slice_dir, tmp_path / "plain", tmp_path / "w0")
    assert plain.D.aux is None and "aux_classifier" not in plain.model_config["discriminator"]
    StyleGAN2Generator(result.entry, "cpu")  # servable: the head is D's, and D is not in the checkpoint
