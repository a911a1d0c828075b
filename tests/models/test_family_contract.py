"""The Family contract, for every registered family's tiny preset: the registration matches what the family's
folder provides (presets, task, options), ``create_untrained`` writes a checkpoint the registry serves, the network
builder rebuilds the saved weights from config.json alone, and the generator the family names loads it and writes
the modalities it declares, seeded and in the shapes it declares."""

from __future__ import annotations

import importlib
from typing import ClassVar

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.support.volumes import mask_array, nifti_bytes, oblique_affine
from tumorsynth.imaging.nifti import read_volume
from tumorsynth.models.base import GenerationParams
from tumorsynth.models.families import FAMILIES, family_names, get_family
from tumorsynth.models.family import Family
from tumorsynth.models.loader import load_generator
from tumorsynth.models.registry import ModelRegistry


@pytest.fixture(scope="module", params=family_names())
def tiny(request, tmp_path_factory):
    family = get_family(request.param)
    root = tmp_path_factory.mktemp(family.name)
    written = family.create_untrained(root / family.name, preset="tiny")
    return family, ModelRegistry(root).get(written.id)


def test_the_registration_matches_the_family_folder(tiny):
    family, entry = tiny
    configs = importlib.import_module(family.configs)
    assert set(family.presets) == set(configs.PRESETS)
    assert entry.family == family.name and entry.task == family.task
    assert [o.name for o in entry.options] == [o.name for o in family.options]
    assert importlib.import_module(f"tumorsynth.models.{family.name}.family").FAMILY is family
    assert family.trainer_class().__name__ == "Trainer"
    cfg = family.train_config_class().load(f"{family.name}-tiny")  # training/configs/{family}-tiny.json
    assert cfg.name and cfg.version


def test_the_network_builder_rebuilds_the_saved_weights(tiny):
    family, entry = tiny
    network = family.build_network(entry.config)
    saved = load_file(str(entry.weights_path))
    own = network.state_dict()
    assert set(saved) <= set(own) and saved, "config.json alone must rebuild every saved tensor"
    assert all(own[k].shape == v.shape for k, v in saved.items())


def brain_inputs(entry) -> dict:
    """Volumes for each input the model declares: a mask from the test helpers, images as smooth noise."""
    affine = oblique_affine()
    mask = mask_array((40, 44, 30))
    rng = np.random.default_rng(0)
    out = {}
    for spec in entry.inputs:
        data = mask if spec.kind == "mask" else (rng.normal(size=mask.shape) + 2 * (mask > 0)).astype(np.float32)
        out[spec.name] = read_volume(nifti_bytes(data, affine), spec.name)
    return out


def generate(entry, seed: int):
    sampler = entry.sampler(None)
    params = GenerationParams(
        num_samples=1,
        seed=seed,
        sampler=sampler.name,
        steps=sampler.min_steps,
        modalities=entry.modalities,
        tumor_class=entry.classes[0] if entry.classes else None,
        output_grid="model",
    )
    steps = []
    out = load_generator(entry, "cpu").generate(params, brain_inputs(entry), lambda d, t: steps.append((d, t)))
    return out, steps


def test_the_named_generator_writes_every_declared_modality_seeded(tiny):
    _, entry = tiny
    torch.manual_seed(0)
    first, steps = generate(entry, seed=3)
    again, _ = generate(entry, seed=3)
    images = [v for v in first if v.modality in entry.modalities]
    assert sorted({v.modality for v in images}) == sorted(entry.modalities)
    assert steps and steps[-1][0] == steps[-1][1]
    for v, w in zip(first, again, strict=True):
        assert v.data.dtype == np.float32 and np.isfinite(v.data).all()
        np.testing.assert_array_equal(v.data, w.data)
        if v.modality in entry.modalities and not entry.inputs:
            assert v.data.shape[: len(entry.output_shape)] == tuple(entry.output_shape)


def test_a_family_must_name_its_parts_and_a_tiny_preset():
    with pytest.raises(ValueError, match="tiny"):
        Family(
            name="five", task="x", presets=("demo",), configs="m", generator="m:G", trainer="t:T", train_config="t:C"
        )
    with pytest.raises(ValueError, match="lower-case"):
        Family(
            name="Five/x", task="x", presets=("tiny",), configs="m", generator="m:G", trainer="t:T", train_config="t:C"
        )
    assert set(FAMILIES) == {"ldm", "vqgan", "tavit", "stylegan2"}


def test_the_cli_offers_the_registered_families(tmp_path):
    from typer.testing import CliRunner

    from tumorsynth.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["models", "create-untrained", "--family", "five", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and all(name in bad.output for name in family_names())
    bad_preset = runner.invoke(
        app, ["models", "create-untrained", "--family", "vqgan", "--preset", "huge", "--out", str(tmp_path)]
    )
    assert bad_preset.exit_code == 2 and "tiny, demo, paper" in bad_preset.output
    ok = runner.invoke(app, ["models", "create-untrained", "--family", "stylegan2", "--out", str(tmp_path)])
    assert ok.exit_code == 0 and (tmp_path / "untrained-tiny@1" / "config.json").is_file()


class FakeConfig:
    """A trainer config as ``training/*.py`` write them: ``load(spec, **overrides)``."""

    def __init__(self, spec: str, name: str, version: str):
        self.spec, self.name, self.version = spec, name, version

    @classmethod
    def load(cls, spec, name=None, version=None):
        return cls(spec, name or "fake-net", version or "1")


class FakeTrainer:
    """Records what the CLI hands a trainer and writes nothing."""

    calls: ClassVar[list] = []

    def __init__(self, cfg, data, out, work, device, on_epoch=None, progress=None):
        FakeTrainer.calls.append((cfg.spec, cfg.name, data, out, device))
        self.out = out

    def run(self, resume):
        from types import SimpleNamespace

        return SimpleNamespace(entry=SimpleNamespace(id="five/fake-net@1", path=self.out))


def test_a_new_family_trains_from_the_cli_without_a_command_of_its_own(tmp_path):
    import typer
    from typer.testing import CliRunner

    from tumorsynth import cli
    from tumorsynth.models import families

    five = Family(
        name="five",
        task="class_to_roi",
        presets=("tiny",),
        configs="unused",
        generator="unused:G",
        trainer=f"{__name__}:FakeTrainer",
        train_config=f"{__name__}:FakeConfig",
    )
    families.register(five)
    try:
        train = typer.Typer()
        cli.add_train_command(train, "five")
        train.command("other")(lambda: None)  # a group of two, as `tumorsynth train` is
        result = CliRunner().invoke(
            train, ["five", "--data", str(tmp_path), "--device", "cpu", "--out", str(tmp_path / "ckpt")]
        )
    finally:
        families.FAMILIES.pop("five")
    assert result.exit_code == 0, result.output
    assert FakeTrainer.calls == [("five-demo", "fake-net", tmp_path, tmp_path / "ckpt", "cpu")]
    assert {c.name for c in cli.train_app.registered_commands} >= set(family_names())
