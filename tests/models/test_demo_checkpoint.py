"""The shipped demo checkpoint follows the mask on a mask it never saw, in the geometry the outputs are mapped to."""

from __future__ import annotations

import numpy as np
import pytest

from tumorsynth.imaging.nifti import read_volume
from tumorsynth.models.base import GenerationParams
from tumorsynth.models.ldm.runner import LDMGenerator
from tumorsynth.models.registry import ModelRegistry
from tumorsynth.settings import REPO_ROOT
from tumorsynth.training.evaluate import follows_mask

DEMO = "ldm/demo-phantom@1"
EXAMPLE = REPO_ROOT / "examples" / "masks" / "example_brats2023_mask.nii.gz"


@pytest.fixture(scope="module")
def demo():
    entry = ModelRegistry(REPO_ROOT / "checkpoints").get(DEMO)  # shipped in the repository: absent is a failure
    assert entry.trained and "phantom" in entry.trained_on
    assert entry.weights_path.stat().st_size <= 25 * 1024**2
    return entry


def test_demo_model_card_says_phantoms_and_demonstration(demo):
    card = (demo.path / "MODEL_CARD.md").read_text()
    assert "phantom" in card and "demonstration only" in card


def test_demo_outputs_follow_an_unseen_mask(demo):
    mask = read_volume(EXAMPLE.read_bytes(), field="mask")
    gen = LDMGenerator(demo, "cpu")
    params = GenerationParams(num_samples=2, seed=11, sampler="dpm++", steps=20, modalities=("t1c", "flair"))
    outs = gen.generate(params, {"mask": mask}, lambda done, total: None)
    labels = np.asarray(mask.data)
    stats = [follows_mask({o.modality: o.data}, labels, mask.affine) for o in outs]
    mean = {k: float(np.mean([s[k] for s in stats if k in s])) for s in stats for k in s}
    assert all(o.data.shape == labels.shape for o in outs)
    assert mean["flair_edema"] > mean["flair_shell"] + 0.3, mean  # z-score units
    assert mean["t1c_enhancing"] > mean["t1c_necrosis"] + 0.3, mean
