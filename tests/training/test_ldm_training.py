"""LDM training on phantoms with the tiny preset: loss falls, resume is exact, the checkpoint is servable."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tumorsynth.data.phantoms import generate_phantoms
from tumorsynth.models.base import GenerationParams
from tumorsynth.models.checkpoints import load_state_dict
from tumorsynth.models.ldm.runner import LDMGenerator
from tumorsynth.models.registry import ModelRegistry
from tumorsynth.training.ldm import LDMTrainConfig, Trainer


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    generate_phantoms(root, 6, seed=3, shape=(96, 96, 62))
    return root


def config(**kw) -> LDMTrainConfig:
    base = LDMTrainConfig.load("ldm-tiny")
    return replace(base, **kw)


class Interrupt(Exception):
    pass


def test_autoencoder_loss_falls(phantom_dir, tmp_path):
    rows = []
    cfg = config(ae_epochs=6, adv_start_epoch=99, ae_lr=1e-3, diffusion_epochs=1, ssim_weight=0.2)
    Trainer(cfg, phantom_dir, tmp_path / "ldm" / "t@1", tmp_path / "work", on_epoch=rows.append).run()
    l1 = [r["l1"] for r in rows if r["stage"] == "autoencoder"]
    assert len(l1) == 6 and np.mean(l1[-2:]) < 0.85 * l1[0], l1


def test_resume_continues_where_it_stopped_and_matches_an_uninterrupted_run(phantom_dir, tmp_path):
    cfg = config(ae_epochs=2, diffusion_epochs=3)
    straight = Trainer(cfg, phantom_dir, tmp_path / "a" / "ldm" / "x@1", tmp_path / "a-work").run()

    seen = []

    def stop_in_diffusion(row):
        seen.append((row["stage"], row["epoch"]))
        if row["stage"] == "diffusion" and row["epoch"] == 2:
            raise Interrupt

    work = tmp_path / "b-work"
    with pytest.raises(Interrupt):
        Trainer(cfg, phantom_dir, tmp_path / "b" / "ldm" / "x@1", work, on_epoch=stop_in_diffusion).run()
    resumed_rows = []
    resumed = Trainer(cfg, phantom_dir, tmp_path / "b" / "ldm" / "x@1", work, on_epoch=resumed_rows.append).run(
        resume=True
    )
    # the autoencoder was not retrained; diffusion went on from the last saved epoch
    assert [(r["stage"], r["epoch"]) for r in resumed_rows] == [("diffusion", 2), ("diffusion", 3)]
    a, b = load_state_dict(straight.entry), load_state_dict(resumed.entry)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_round_trips_and_is_served(phantom_dir, tmp_path):
    cfg = config(ae_epochs=1, diffusion_epochs=1, name="served")
    Trainer(cfg, phantom_dir, tmp_path / "models" / "ldm" / "served@1", tmp_path / "work").run()
    entry = ModelRegistry(tmp_path / "models").get("ldm/served@1")
    info = entry.info()
    assert info["trained"] is True and "phantom" in info["checkpoint"]["trained_on"]
    assert entry.config["training"]["subjects"]["train"] + entry.config["training"]["subjects"]["val"] == 6
    assert (entry.path / "MODEL_CARD.md").read_text().count("demonstration only") == 1
    # the "scanner" intensity scale: each contrast's typical brain mean and SD, from the training subjects only
    scanner = entry.config["intensity"]["scanner"]
    assert sorted(scanner) == sorted(entry.modalities)
    assert all(v["subjects"] == entry.config["training"]["subjects"]["train"] for v in scanner.values())
    assert all(v["mean"] > 3 * v["std"] > 0 for v in scanner.values())  # phantoms: positive, brain-like contrast
    scale = float(load_state_dict(entry)["scale_factor"])
    assert scale > 0 and scale != 1.0  # 1 / std of the training latents, set by stage 2
    gen = LDMGenerator(entry, "cpu")

    class Mask:
        data = np.zeros((40, 44, 30), np.uint8)
        affine = np.diag([2.0, 2.0, 3.0, 1.0])

    Mask.data[15:25, 18:28, 10:20] = 2
    Mask.data[18:22, 21:25, 13:17] = 3
    params = GenerationParams(num_samples=1, seed=0, sampler="dpm++", steps=5, modalities=("flair",))
    out = gen.generate(params, {"mask": Mask}, lambda done, total: None)
    assert len(out) == 1 and out[0].data.shape == (40, 44, 30) and np.isfinite(out[0].data).all()


def test_evaluation_reports_the_papers_metrics(phantom_dir, tmp_path):
    from tumorsynth.evaluation.ldm_eval import evaluate_ldm, format_report

    cfg = config(ae_epochs=1, diffusion_epochs=1, name="evaluated")
    entry = Trainer(cfg, phantom_dir, tmp_path / "ldm" / "evaluated@1", tmp_path / "work").run().entry
    report = evaluate_ldm(entry, phantom_dir, subjects=2, samples=2, steps=5, fidelity_epochs=1)
    assert set(report["reconstruction"]) == {"t1", "t1c", "t2", "flair"}
    for row in report["reconstruction"].values():
        assert np.isfinite([row["psnr"], row["ssim"], row["mae"]]).all() and row["mae"] > 0
    assert 0 < report["samples"]["ms_ssim_between_samples"] <= 1
    assert set(report["samples"]["mmd_vs_real"]) == {"t1", "t1c", "t2", "flair"}
    assert set(report["mask_fidelity_dice"]["synthetic"]) == {"WT", "TC", "ET"}
    assert "PSNR" in format_report(report) and "mask fidelity" in format_report(report)
    assert np.isfinite(report["mask_contrast"]["flair_edema_vs_shell"])
    assert "mask contrast" in format_report(report)


def test_evaluation_takes_fid_features_from_local_medicalnet_weights(phantom_dir, tmp_path):
    from monai.networks.nets import resnet10
    from monai.networks.nets.resnet import get_medicalnet_pretrained_resnet_args

    from tumorsynth.evaluation.ldm_eval import evaluate_ldm, format_report

    bias, shortcut = get_medicalnet_pretrained_resnet_args(10)
    net = resnet10(spatial_dims=3, n_input_channels=1, feed_forward=False, shortcut_type=shortcut, bias_downsample=bias)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "resnet_10.pth")
    cfg = config(ae_epochs=1, diffusion_epochs=1, name="medicalnet")
    entry = Trainer(cfg, phantom_dir, tmp_path / "ldm" / "medicalnet@1", tmp_path / "work").run().entry
    report = evaluate_ldm(
        entry, phantom_dir, subjects=2, samples=1, steps=5, feature_weights=str(tmp_path / "resnet_10.pth")
    )
    assert report["fid_features"].startswith("MedicalNet") and np.isfinite(report["fid"]) and report["fid"] >= 0
    assert "MedicalNet" in format_report(report)


def test_tumour_centred_crops_hold_tumour_and_stay_inside_the_grid():
    from tumorsynth.training.ldm import random_crops

    images = torch.randn(6, 4, 32, 32, 16)
    regions = torch.zeros(6, 3, 32, 32, 16)
    regions[:, 0, 28:31, 1:4, 13:15] = 1  # a tumour in a corner: the window must be clamped, not shifted off-grid
    x, r = random_crops(images, regions, (16, 16, 8), 1.0, np.random.default_rng(0))
    assert x.shape == (6, 4, 16, 16, 8) and r.shape == (6, 3, 16, 16, 8)
    assert all(r[i, 0].sum() == 18 for i in range(6))  # the whole tumour is inside every crop
    assert torch.equal(x[0], images[0, :, 16:32, 0:16, 8:16])
    with pytest.raises(ValueError, match="larger than the model grid"):
        random_crops(images, regions, (40, 16, 8), 1.0, np.random.default_rng(0))


def test_region_weights_add_per_region_and_all_zero_is_the_plain_mean():
    from tumorsynth.training.ldm import region_weights, weighted_mean

    regions = torch.zeros(1, 3, 2, 1, 1)
    regions[0, :, 0] = torch.tensor([[[1.0]], [[1.0]], [[1.0]]])  # voxel 0 is enhancing (so in WT, TC and ET)
    w = region_weights(regions, (10, 10, 30))
    assert w.flatten().tolist() == [51.0, 1.0]
    values = torch.rand(1, 4, 2, 1, 1)
    assert torch.allclose(weighted_mean(values, region_weights(regions, (0, 0, 0))), values.mean())


def test_autoencoder_trains_on_weighted_tumour_crops(phantom_dir, tmp_path):
    rows = []
    cfg = config(
        ae_epochs=4,
        adv_start_epoch=99,
        ae_lr=1e-3,
        diffusion_epochs=1,
        ssim_weight=0.2,
        ae_crop=(16, 16, 8),
        ae_region_weights=(10, 10, 30),
    )
    result = Trainer(cfg, phantom_dir, tmp_path / "ldm" / "c@1", tmp_path / "work", on_epoch=rows.append).run()
    l1 = [r["l1"] for r in rows if r["stage"] == "autoencoder"]
    assert np.isfinite(l1).all() and l1[-1] < l1[0], l1
    card = (result.entry.path / "MODEL_CARD.md").read_text()
    assert "16×16×8 crops" in card and "10·WT" in card


def test_init_from_a_checkpoint_keeps_its_autoencoder_and_serves_the_ema_unet(phantom_dir, tmp_path):
    first = Trainer(
        config(ae_epochs=1, diffusion_epochs=1), phantom_dir, tmp_path / "m" / "ldm" / "a@1", tmp_path / "wa"
    ).run()
    rows = []
    cfg = config(diffusion_epochs=2, init_from=str(first.entry.path), init_skip_autoencoder=True, ema_decay=0.9)
    trainer = Trainer(cfg, phantom_dir, tmp_path / "m" / "ldm" / "b@1", tmp_path / "wb", on_epoch=rows.append)
    second = trainer.run()
    assert [r["stage"] for r in rows] == ["diffusion", "diffusion"]  # stage 1 skipped: weights alone were enough
    a, b = load_state_dict(first.entry), load_state_dict(second.entry)
    for k in a:
        if k.startswith("autoencoder."):
            assert torch.equal(a[k], b[k]), k
    # the stored UNet is the moving average, not the last optimiser step
    ema = trainer.ema.module.state_dict()
    assert all(torch.equal(b[f"unet.{k}"], v) for k, v in ema.items())
    assert all(torch.equal(b[f"unet.{k}"], v) for k, v in trainer.net.unet.state_dict().items())
    assert second.entry.config["training"]["autoencoder_from"]["sha256"] == first.entry.weights_sha256
    assert "taken unchanged" in (second.entry.path / "MODEL_CARD.md").read_text()


def test_torchrun_two_cpu_processes_train_one_checkpoint_with_ddp(phantom_dir, tmp_path):
    """``torchrun --nproc_per_node=2`` on gloo: each rank trains on half of each epoch's batches, gradients are
    averaged, rank 0 alone writes metrics and the checkpoint."""
    import json
    import os
    import subprocess
    import sys

    out, work = tmp_path / "models" / "ldm" / "ddp@1", tmp_path / "work"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps(
            LDMTrainConfig.load("ldm-tiny").__dict__
            | {"ae_epochs": 1, "diffusion_epochs": 2, "name": "ddp", "batch_size": 1, "diffusion_batch_size": 2}
        )
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "tumorsynth.cli",
            "train",
            "ldm",
            "--data",
            str(phantom_dir),
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--work",
            str(work),
            "--device",
            "cpu",
            "--threads",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in rows] == [("autoencoder", 1), ("diffusion", 1), ("diffusion", 2)]
    entry = ModelRegistry(tmp_path / "models").get("ldm/ddp@1")
    assert entry.config["training"]["processes"] == 2
    LDMGenerator(entry, "cpu")  # servable


def test_v_prediction_is_trained_stored_in_the_schedule_and_sampled(phantom_dir, tmp_path):
    cfg = config(ae_epochs=1, diffusion_epochs=1, name="v", prediction_type="v_prediction")
    result = Trainer(cfg, phantom_dir, tmp_path / "models" / "ldm" / "v@1", tmp_path / "work").run()
    entry = ModelRegistry(tmp_path / "models").get("ldm/v@1")
    assert entry.config["schedule"]["prediction_type"] == "v_prediction"
    gen = LDMGenerator(entry, "cpu")
    assert (
        gen._scheduler(
            GenerationParams(num_samples=1, seed=0, sampler="dpm++", steps=5, modalities=())
        ).config.prediction_type
        == "v_prediction"
    )
    assert result.metrics[-1]["mse"] > 0
    with pytest.raises(ValueError, match="prediction_type"):
        Trainer(config(prediction_type="x0"), phantom_dir, tmp_path / "x", tmp_path / "wx")


def test_ema_warmup_follows_the_weights_early_and_settles_to_the_decay():
    from tumorsynth.training.ldm import ema_with_warmup

    avg = ema_with_warmup(0.999)
    a, cur = torch.zeros(1), torch.ones(1)
    for n in range(1, 101):
        a = avg(a, cur, torch.tensor(n))
    assert float(a) > 0.99  # a plain 0.999 average would still be at 1 − 0.999^100 ≈ 0.095
    assert avg(torch.zeros(1), torch.ones(1), torch.tensor(10**7)).item() == pytest.approx(0.001, rel=1e-3)


def test_torchrun_ranks_hold_identical_weights_and_rank_0_alone_writes(phantom_dir, tmp_path):
    """Two gloo ranks, the adversarial loss on from the first epoch: autoencoder, discriminator, UNet, its EMA and
    every optimiser agree across ranks after training, and rank 1 writes nothing."""
    from tests.support.ddp import (
        assert_ranks_agree_and_only_rank_0_wrote,
        run_two_ranks,
    )

    cfg = config(
        ae_epochs=1, adv_start_epoch=0, diffusion_epochs=1, batch_size=1, diffusion_batch_size=2, name="ddp-same"
    )
    records = run_two_ranks("ldm", cfg, phantom_dir, tmp_path / "ddp")
    assert_ranks_agree_and_only_rank_0_wrote(records, tmp_path / "ddp")
    assert any(k.startswith("ema.") for k in records[0]["after"])


def test_enhancement_l1_is_the_t1c_minus_t1_error_alone():
    from tumorsynth.training.ldm import enhancement_l1

    x = torch.randn(2, 4, 6, 6, 4)
    ones = torch.ones(2, 1, 6, 6, 4)
    assert float(enhancement_l1(x, x, ones)) == 0.0
    shifted = x.clone()
    shifted[:, [0, 1]] += 1.0  # T1 and T1C both off by one: the enhancement is intact
    assert float(enhancement_l1(shifted, x, ones)) == pytest.approx(0.0, abs=1e-6)
    flat = x.clone()
    flat[:, 1] = flat[:, 0] + 0.5  # T1C − T1 = 0.5 everywhere
    target = x.clone()
    target[:, 1] = target[:, 0] + 2.0
    assert float(enhancement_l1(flat, target, ones)) == pytest.approx(1.5, rel=1e-5)


def test_a_decoder_only_fine_tune_keeps_the_encoder_scale_and_unet(phantom_dir, tmp_path):
    first = Trainer(
        config(ae_epochs=1, diffusion_epochs=1), phantom_dir, tmp_path / "m" / "ldm" / "a@1", tmp_path / "wa"
    ).run()
    rows = []
    cfg = config(
        ae_epochs=2,
        diffusion_epochs=0,
        init_from=str(first.entry.path),
        ae_freeze_encoder=True,
        ae_enhancement_weight=2.0,
        ae_region_weights=(1.0, 1.0, 3.0),
        ae_lr=1e-3,
        ema_decay=0.0,
    )
    second = Trainer(cfg, phantom_dir, tmp_path / "m" / "ldm" / "b@1", tmp_path / "wb", on_epoch=rows.append).run()
    assert [r["stage"] for r in rows] == ["autoencoder", "autoencoder"]
    a, b = load_state_dict(first.entry), load_state_dict(second.entry)
    frozen = (
        "autoencoder.encoder.",
        "autoencoder.quant_conv_mu.",
        "autoencoder.quant_conv_log_sigma.",
        "unet.",
        "scale_factor",
    )
    for k in a:
        if k.startswith(frozen):
            assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("autoencoder.decoder."))
    with pytest.raises(ValueError, match="init_from"):
        Trainer(config(ae_freeze_encoder=True), phantom_dir, tmp_path / "c", tmp_path / "wc")


def test_a_spade_decoder_fine_tune_from_a_plain_checkpoint_is_served_from_the_mask(phantom_dir, tmp_path):
    first = Trainer(
        config(ae_epochs=1, diffusion_epochs=1), phantom_dir, tmp_path / "m" / "ldm" / "a@1", tmp_path / "wa"
    ).run()
    cfg = config(
        ae_epochs=2,
        diffusion_epochs=0,
        init_from=str(first.entry.path),
        ae_freeze_encoder=True,
        ae_decoder="spade",
        ae_spade_channels=8,
        ae_region_weights=(1.0, 1.0, 3.0),
        ae_lr=1e-3,
        ema_decay=0.0,
    )
    second = Trainer(cfg, phantom_dir, tmp_path / "m" / "ldm" / "b@1", tmp_path / "wb").run()
    assert second.entry.config["network"]["ae_decoder"] == "spade"
    card = (second.entry.path / "MODEL_CARD.md").read_text()
    assert "SPADEAutoencoderKL" in card and "only the decoder was trained" in card
    assert second.entry.config["training"]["decoder_trained_from"]["sha256"] == first.entry.weights_sha256
    assert "autoencoder_from" not in second.entry.config["training"]  # its card would say the decoder was kept
    a, b = load_state_dict(first.entry), load_state_dict(second.entry)
    for k in a:  # encoder, UNet and scale kept; the plain decoder's norms became SPADE modulations
        if k.startswith(("autoencoder.encoder.", "autoencoder.quant_conv_mu.", "unet.", "scale_factor")):
            assert torch.equal(a[k], b[k]), k
    assert any(".mlp_gamma." in k for k in b) and not any(".mlp_gamma." in k for k in a)
    assert any(not torch.equal(b[k], torch.zeros_like(b[k])) for k in b if ".mlp_gamma.conv.weight" in k)

    gen = LDMGenerator(second.entry, "cpu")

    class Mask:
        data = np.zeros((40, 44, 30), np.uint8)
        affine = np.diag([2.0, 2.0, 3.0, 1.0])

    Mask.data[15:25, 18:28, 10:20] = 2
    Mask.data[18:22, 21:25, 13:17] = 3

    def t1c(tumor_class):
        params = GenerationParams(2, 1, "dpm++", 5, modalities=("t1c",), tumor_class=tumor_class)
        outs = gen.generate(params, {"mask": Mask}, lambda done, total: None)
        assert len(outs) == 2 and all(np.isfinite(o.data).all() for o in outs)
        return outs[0].data

    assert not np.array_equal(t1c("HGG"), t1c(None))


def test_a_spade_fine_tune_refuses_a_plain_checkpoint_of_other_sizes(phantom_dir, tmp_path):
    first = Trainer(config(ae_epochs=1, diffusion_epochs=0), phantom_dir, tmp_path / "a@1", tmp_path / "wa").run()
    with pytest.raises(ValueError, match="network differs"):
        Trainer(
            config(preset="demo", init_from=str(first.entry.path), ae_freeze_encoder=True, ae_decoder="spade"),
            phantom_dir,
            tmp_path / "b@1",
            tmp_path / "wb",
        )
