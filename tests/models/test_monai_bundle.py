"""``tumorsynth models export ldm/... --format monai-bundle``: the bundle is read and run through monai.bundle's own
API (ConfigParser, ``monai.bundle run``) with tumorsynth unimportable, and holds the checkpoint's exact weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tumorsynth.models.checkpoints import load_into, save_checkpoint
from tumorsynth.models.ldm.configs import build_network, create_untrained

ENV = os.environ | {"OMP_NUM_THREADS": "1"}


def cli(*args, model_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tumorsynth.cli", "models", *args],
        capture_output=True,
        text=True,
        env=ENV | {"TUMORSYNTH_MODEL_DIR": str(model_dir)},
        timeout=300,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    entry = create_untrained(root / "models" / "ldm", preset="tiny", name="tiny", version="1", seed=0)
    # MONAI zero-initialises the UNet's output layer: an untrained UNet predicts 0 whatever its class or mask. Fill
    # every all-zero weight so that the condition and the class change the sample, and use a scale factor other
    # than 1 so that a bundle dropping it would decode other images.
    net = load_into(build_network(entry.config), entry)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        net.scale_factor.fill_(0.7)
    config = {k: v for k, v in entry.config.items() if k not in ("weights", "format_version")}
    entry = save_checkpoint(entry.path, config=config, module=net, card="# tiny\n\nA test card: untrained.\n")
    done = cli("export", "ldm/tiny@1", "--format", "monai-bundle", str(root / "out"), model_dir=root / "models")
    assert done.returncode == 0, done.stderr
    return entry, root / "out"


def run_bundle(bundle, tmp_path, name, **overrides) -> nib.Nifti1Image:
    """``monai.bundle run`` in a fresh interpreter where importing tumorsynth fails."""
    args = {
        "run_id": "run",
        "config_file": str(bundle / "configs/inference.json"),
        "meta_file": str(bundle / "configs/metadata.json"),
        "bundle_root": str(bundle),
        "output_dir": str(tmp_path / name),
        "num_inference_steps": 5,
    } | overrides
    code = f"import sys; sys.modules['tumorsynth'] = None\nfrom monai.bundle import run\nrun(**{args!r})\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return nib.load(tmp_path / name / "mask_synthetic.nii.gz")


def test_the_bundle_has_the_specified_layout_metadata_and_card(exported):
    entry, bundle = exported
    for path in (
        "configs/metadata.json",
        "configs/inference.json",
        "models/model.pt",
        "models/model_autoencoder.pt",
        "docs/README.md",
        "sample_data/mask.nii.gz",
    ):
        assert (bundle / path).is_file(), path
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["spatial_shape"] == list(entry.output_shape)
    assert fmt["outputs"]["pred"]["num_channels"] == 4 and fmt["outputs"]["pred"]["channel_def"]["1"] == "T1C"
    assert meta["tumorsynth"] == {
        "model": "ldm/tiny@1",
        "checkpoint_sha256": entry.weights_sha256,
        "trained": False,
        "synthetic": True,
    }
    assert "A test card: untrained." in (bundle / "docs/README.md").read_text()


def test_configparser_builds_the_networks_with_the_checkpoint_s_weights(exported):
    from monai.bundle import ConfigParser

    entry, bundle = exported
    parser = ConfigParser()
    parser.read_meta(bundle / "configs/metadata.json")
    parser.read_config(bundle / "configs/inference.json")
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    parser.get_parsed_content("load_network")
    parser.get_parsed_content("load_autoencoder")
    ours = load_file(str(entry.weights_path))
    for prefix, net in (
        ("unet.", parser.get_parsed_content("network")),
        ("autoencoder.", parser.get_parsed_content("autoencoder")),
    ):
        state = net.state_dict()
        assert set(state) == {k.removeprefix(prefix) for k in ours if k.startswith(prefix)}
        assert all(torch.equal(state[k.removeprefix(prefix)], v) for k, v in ours.items() if k.startswith(prefix))
    assert parser.get_parsed_content("scale_factor") == pytest.approx(float(ours["scale_factor"]))
    regions = parser.get_parsed_content("regions")  # the sample mask's WT, TC, ET on the model grid
    assert tuple(regions.shape) == (3, *entry.output_shape) and regions[0].sum() >= regions[1].sum() > 0


def test_monai_bundle_run_writes_a_seeded_class_conditioned_volume(exported, tmp_path):
    entry, bundle = exported
    first = run_bundle(bundle, tmp_path, "a", seed=3, tumor_class="HGG")
    again = run_bundle(bundle, tmp_path, "b", seed=3, tumor_class="HGG")
    other = run_bundle(bundle, tmp_path, "c", seed=3, tumor_class="LGG")
    data = first.get_fdata()
    assert data.shape == (*entry.output_shape, 4) and np.isfinite(data).all() and np.abs(data).max() <= 10
    assert np.allclose(first.header.get_zooms()[:3], entry.output_spacing)
    assert np.array_equal(data, again.get_fdata())  # the seed fixes the sample
    assert not np.array_equal(data, other.get_fdata())  # the class reaches the UNet


def test_export_refuses_other_families_a_used_folder_and_other_formats(exported, tmp_path):
    entry, bundle = exported
    models = entry.path.parent.parent
    used = cli("export", "ldm/tiny@1", str(bundle), model_dir=models)
    assert used.returncode != 0 and "not empty" in used.stderr
    fmt = cli("export", "ldm/tiny@1", str(tmp_path / "x"), "--format", "onnx", model_dir=models)
    assert fmt.returncode != 0 and "monai-bundle" in fmt.stderr
    missing = cli("export", "ldm/nope@1", str(tmp_path / "y"), model_dir=models)
    assert missing.returncode != 0 and "ldm/tiny@1" in missing.stderr  # names what is installed
    from tumorsynth.models.vqgan.configs import create_untrained as create_vqgan

    create_vqgan(models / "vqgan", preset="tiny", name="tiny", version="1", seed=0)
    vq = cli("export", "vqgan/tiny@1", str(tmp_path / "z"), model_dir=models)
    assert vq.returncode != 0 and "only LDM" in vq.stderr and not (tmp_path / "z").exists()


def test_a_spade_decoder_is_exported_as_monai_s_spade_autoencoder_and_decodes_as_ours(tmp_path):
    from monai.bundle import ConfigParser

    root = tmp_path / "models"
    entry = create_untrained(root / "ldm", preset="tiny", name="spade", version="1", seed=0)
    config = {k: v for k, v in entry.config.items() if k not in ("weights", "format_version")}
    config["network"] |= {"ae_decoder": "spade", "ae_spade_channels": 8}
    net = build_network(config)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # non-zero modulations, so that the regions and the class change the decoding
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    entry = save_checkpoint(entry.path, config=config, module=net, card="# spade\n\nA test card: untrained.\n")
    done = cli("export", "ldm/spade@1", "--format", "monai-bundle", str(tmp_path / "out"), model_dir=root)
    assert done.returncode == 0, done.stderr
    bundle = tmp_path / "out"
    parser = ConfigParser()
    parser.read_meta(bundle / "configs/metadata.json")
    parser.read_config(bundle / "configs/inference.json")
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    parser["tumor_class"] = "LGG"
    parser.get_parsed_content("plain_modulation")
    parser.get_parsed_content("load_autoencoder")
    ae = parser.get_parsed_content("autoencoder")
    assert type(ae).__name__ == "SPADEAutoencoderKL"
    regions = parser.get_parsed_content("regions").as_tensor()[None]
    z = torch.randn(1, 8, *net.latent_shape(entry.output_shape), generator=gen)
    with torch.no_grad():
        theirs = ae.decode(z, parser.get_parsed_content("decoder_labels"))
        ours = net.eval().decode_unscaled(z, regions, torch.tensor([1]))  # LGG: class index 1
    torch.testing.assert_close(theirs, ours)
    image = run_bundle(bundle, tmp_path, "a", seed=3, tumor_class="HGG")
    assert image.shape == (*entry.output_shape, 4) and np.isfinite(image.get_fdata()).all()
