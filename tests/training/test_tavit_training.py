"""TA-ViT training on phantoms with the tiny preset: losses fall, resume is exact, the checkpoint is servable and
evaluated per region."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tumorsynth.data.brats import find_subjects
from tumorsynth.data.phantoms import generate_phantoms
from tumorsynth.models.base import GenerationParams
from tumorsynth.models.checkpoints import load_state_dict
from tumorsynth.models.registry import ModelRegistry
from tumorsynth.models.tavit.runner import TAViTGenerator
from tumorsynth.training.tavit import TAViTTrainConfig, Trainer


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    generate_phantoms(root, 6, seed=3, shape=(96, 96, 62))
    return root


def config(**kw) -> TAViTTrainConfig:
    return replace(TAViTTrainConfig.load("tavit-tiny"), **kw)


@pytest.fixture(scope="module")
def trained(phantom_dir, tmp_path_factory):
    """Three epochs, uninterrupted; the checkpoint lands in a model folder as the service reads it."""
    root = tmp_path_factory.mktemp("trained")
    rows = []
    result = Trainer(
        config(epochs=3, name="served"),
        phantom_dir,
        root / "models" / "tavit" / "served@1",
        root / "work",
        on_epoch=rows.append,
    ).run()
    return root, result, rows


class Interrupt(Exception):
    pass


def test_losses_fall_and_metrics_are_logged(trained):
    root, _, rows = trained
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["l1"] < 0.8 * rows[0]["l1"], rows
    assert rows[-1]["seg"] < rows[0]["seg"], rows
    assert all(0 <= r["val_dice_wt"] <= 1 and r["val_l1"] > 0 for r in rows)
    logged = (root / "work" / "metrics.jsonl").read_text().splitlines()
    assert len(logged) == 3


def test_resume_matches_an_uninterrupted_run(phantom_dir, trained, tmp_path):
    _, straight, _ = trained

    def stop_after_two(row):
        if row["epoch"] == 2:
            raise Interrupt

    out, work = tmp_path / "tavit" / "served@1", tmp_path / "work"
    cfg = config(epochs=3, name="served")
    with pytest.raises(Interrupt):
        Trainer(cfg, phantom_dir, out, work, on_epoch=stop_after_two).run()
    rows = []
    resumed = Trainer(cfg, phantom_dir, out, work, on_epoch=rows.append).run(resume=True)
    # the interrupt came before epoch 2 was saved, so the run went on from epoch 1
    assert [r["epoch"] for r in rows] == [2, 3]
    a, b = load_state_dict(straight.entry), load_state_dict(resumed.entry)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_round_trips_through_the_registry_and_is_served(phantom_dir, trained):
    root, _, _ = trained
    entry = ModelRegistry(root / "models").get("tavit/served@1")
    info = entry.info()
    assert info["trained"] is True and "phantom" in info["checkpoint"]["trained_on"]
    assert info["task"] == "contrast_synthesis" and info["modalities"] == ["t1c"] and info["classes"] == []
    assert [(i["name"], i["required"]) for i in info["inputs"]] == [("t1", True), ("flair", True), ("mask", False)]
    assert info["default_sampler"] == "direct"
    assert entry.config["training"]["subjects"]["train"] + entry.config["training"]["subjects"]["val"] == 6
    assert (entry.path / "MODEL_CARD.md").read_text().count("demonstration only") == 1

    subject = find_subjects(phantom_dir)[0]

    class Upload:
        def __init__(self, path):
            img = nib.load(path)
            self.data, self.affine = img.get_fdata(dtype=np.float32), img.affine
            self.shape = self.data.shape

    inputs = {"t1": Upload(subject.paths["t1"]), "flair": Upload(subject.paths["flair"])}
    params = GenerationParams(num_samples=1, seed=0, sampler="direct", steps=1, modalities=("t1c",))
    out = TAViTGenerator(entry, "cpu").generate(params, inputs, lambda done, total: None)
    assert out[0].data.shape == (96, 96, 62) and np.isfinite(out[0].data).all()
    np.testing.assert_array_equal(out[0].affine, inputs["t1"].affine)


def test_evaluation_reports_per_region_metrics(phantom_dir, trained):
    from tumorsynth.evaluation.tavit_eval import evaluate_tavit, format_report

    _, result, _ = trained
    report = evaluate_tavit(result.entry, phantom_dir, subjects=2)
    assert len(report["per_subject"]) >= 1 and report["segmentation"] == "predicted"
    for region in ("tumour", "healthy"):
        row = report["summary"][region]
        assert set(row) == {"nmse", "psnr", "ncc", "ssim"}
        assert row["nmse"]["n"] >= 1 and row["nmse"]["mean"] > 0 and np.isfinite(row["psnr"]["mean"])
        assert -1 <= row["ncc"]["mean"] <= 1 and -1 <= row["ssim"]["mean"] <= 1
    assert "PSNR" in format_report(report) and "tumour" in format_report(report)
    # the baseline beside it: the T1 copied as the T1C, scored the same way
    for region in ("tumour", "healthy"):
        assert set(report["baseline"][region]) == {"nmse", "psnr", "ncc", "ssim"}
        assert report["baseline"][region]["nmse"]["mean"] > 0
    assert "T1 copy" in format_report(report) and "enhancing rim" in format_report(report)
    assert "ssim_map" in format_report(report)


def test_held_out_subjects_come_from_the_validation_ids_only_in_the_training_folder(phantom_dir, trained, tmp_path):
    from tumorsynth.evaluation.tavit_eval import held_out

    _, result, _ = trained
    val_ids = result.entry.config["training"]["validation_ids"]
    assert [s.id for s in held_out(result.entry, phantom_dir, 6)] == val_ids
    other = tmp_path / "other"  # another folder whose subjects happen to share the names
    other.mkdir()
    for s in find_subjects(phantom_dir):
        (other / s.id).symlink_to(s.paths["t1"].parent)
    assert [s.id for s in held_out(result.entry, other, 3)] == [s.id for s in find_subjects(other)][:3]


def test_tumour_slices_are_all_kept_and_healthy_ones_thinned(phantom_dir):
    from tumorsynth.models.tavit.configs import model_config
    from tumorsynth.training.tavit import prepare

    data = prepare(phantom_dir, model_config("tiny"), max_subjects=2, min_brain_fraction=0.15)
    tumour = (data.labels > 0).flatten(1).any(1).numpy()
    chosen = data.selection([0, 1], healthy_step=3)
    assert set(np.flatnonzero(tumour)) <= set(chosen)
    assert len(set(chosen) - set(np.flatnonzero(tumour))) == sum(1 for i in np.flatnonzero(~tumour) if i % 3 == 0)
    # each slice sees its neighbours, within its own subject
    x = data.network_inputs(chosen[:4])
    assert x.shape[1] == 3 * data.inputs.shape[1] and x.dtype == torch.float32
    assert (data.subject[data.context] == data.subject[:, None]).all()


def test_torchrun_two_cpu_processes_hold_identical_weights_and_rank_0_alone_writes(phantom_dir, tmp_path):
    """``torchrun --nproc_per_node=2`` on gloo: gradients averaged by hand, batch-norm statistics averaged, every
    skip decided together; the segmenter, TA-ViT (its running statistics included) and AdamW agree across ranks."""
    from tests.support.ddp import (
        assert_ranks_agree_and_only_rank_0_wrote,
        run_two_ranks,
    )

    records = run_two_ranks("tavit", config(epochs=2, name="ddp"), phantom_dir, tmp_path / "ddp")
    assert_ranks_agree_and_only_rank_0_wrote(records, tmp_path / "ddp")
    assert any(k.endswith("running_mean") for k in records[0]["after"])  # the averaged statistics were compared
    entry = ModelRegistry(tmp_path / "ddp" / "rank0" / "out").get("tavit/ddp@1")
    assert entry.config["training"]["processes"] == 2
    assert "2 process(es)" in (entry.path / "MODEL_CARD.md").read_text()
    TAViTGenerator(entry, "cpu")  # servable


def test_init_from_a_checkpoint_starts_from_its_weights_and_refuses_another_network(phantom_dir, tmp_path):
    from tumorsynth.models.tavit.configs import create_untrained

    source = create_untrained(tmp_path / "src", preset="tiny", seed=7)
    trainer = Trainer(
        config(epochs=1, name="init", init_from=str(source.path)),
        phantom_dir,
        tmp_path / "models" / "tavit" / "init@1",
        tmp_path / "work",
    )
    stored = load_state_dict(source)
    assert all(torch.equal(v, stored[k].to(v.dtype)) for k, v in trainer.net.state_dict().items())
    result = trainer.run()
    assert result.entry.config["training"]["init_from"]["sha256"] == source.weights_sha256
    assert "starting from the weights of" in (result.entry.path / "MODEL_CARD.md").read_text()
    with pytest.raises(ValueError, match="network differs"):
        Trainer(config(flair=False, init_from=str(source.path)), phantom_dir, tmp_path / "x", tmp_path / "wx")


def test_cli_passes_init_from_to_the_trainer(phantom_dir, tmp_path):
    from typer.testing import CliRunner

    from tumorsynth.cli import app
    from tumorsynth.models.tavit.configs import create_untrained

    t1_only = create_untrained(tmp_path / "src", preset="tiny", flair=False)  # tavit-tiny wants T1 + FLAIR
    r = CliRunner().invoke(
        app,
        [
            "train",
            "tavit",
            "--data",
            str(phantom_dir),
            "--config",
            "tavit-tiny",
            "--init-from",
            str(t1_only.path),
            "--out",
            str(tmp_path / "out"),
            "--work",
            str(tmp_path / "work"),
            "--device",
            "cpu",
        ],
    )
    assert isinstance(r.exception, ValueError) and "network differs" in str(r.exception), r.output
    assert not (tmp_path / "out").exists()


def test_enhancing_voxels_and_labels_weigh_what_the_config_says(phantom_dir, tmp_path):
    """``enhancing_weight`` adds to the L1's weight of label-3 voxels only; ``seg_class_weights`` reaches the
    segmenter's Dice + CE, and a list of the wrong length is refused naming the setting."""
    plain = Trainer(config(tumour_weight=1.0), phantom_dir, tmp_path / "a", tmp_path / "wa")
    rim = Trainer(
        config(tumour_weight=1.0, enhancing_weight=8.0, seg_class_weights=[1.0, 1.0, 1.0, 5.0]),
        phantom_dir,
        tmp_path / "b",
        tmp_path / "wb",
    )
    labels = torch.tensor([[[0, 2], [1, 3]]])  # background, oedema, necrosis, enhancing
    y = torch.zeros(1, 1, 2, 2)
    pred = torch.tensor([[[[1.0, 1.0], [1.0, 2.0]]]])  # the enhancing voxel is the one most wrong
    _, _, w_plain = plain._l1(pred, y, labels)
    _, _, w_rim = rim._l1(pred, y, labels)
    assert float(w_plain) == pytest.approx((1 + 2 + 2 + 2 * 2) / 7)  # weights 1, 2, 2, 2
    assert float(w_rim) == pytest.approx((1 + 2 + 2 + 10 * 2) / 15)  # the enhancing voxel 1 + 1 + 8
    for weight in (rim.seg_loss.cross_entropy.weight, rim.seg_loss.dice.class_weight):
        assert torch.equal(weight, torch.tensor([1.0, 1.0, 1.0, 5.0]))
    assert plain.seg_loss.cross_entropy.weight is None
    with pytest.raises(ValueError, match="seg_class_weights needs 4"):
        Trainer(config(seg_class_weights=[1.0, 5.0]), phantom_dir, tmp_path / "c", tmp_path / "wc")
