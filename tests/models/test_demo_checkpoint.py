"""The shipped demo LDM checkpoint: present, small, trained on phantoms and labelled so."""

from __future__ import annotations

import pytest

from tumorsynth.models.registry import ModelRegistry
from tumorsynth.settings import REPO_ROOT

DEMO = "ldm/demo-phantom@1"


@pytest.fixture(scope="module")
def demo():
    entry = ModelRegistry(REPO_ROOT / "checkpoints").get(DEMO)  # shipped in the repository: absent is a failure
    assert entry.trained and "phantom" in entry.trained_on
    assert entry.weights_path.stat().st_size <= 25 * 1024**2
    return entry


def test_demo_model_card_says_phantoms_and_demonstration(demo):
    card = (demo.path / "MODEL_CARD.md").read_text()
    assert "phantom" in card and "demonstration only" in card


def _follows(entry, tumor_class: str, seeds=(0, 1, 2)) -> dict[str, float]:
    """Region means of demo outputs for the example mask (never a training mask: its best Dice with any of the 40
    demo phantoms' masks is 0.47), mapped back to the mask's 1 mm grid, averaged over ``seeds``."""
    import nibabel as nib
    import numpy as np

    from tumorsynth.demo import EXAMPLE_MASK
    from tumorsynth.models.base import GenerationParams
    from tumorsynth.models.ldm.runner import LDMGenerator
    from tumorsynth.training.evaluate import GridMask, mask_contrast

    img = nib.load(EXAMPLE_MASK)
    labels = np.rint(np.asarray(img.dataobj)).astype(np.int16)
    gen = LDMGenerator(entry, "cpu")
    rows = []
    for seed in seeds:
        params = GenerationParams(num_samples=1, seed=seed, sampler="dpm++", steps=20, modalities=("t1c", "flair"),
                                  tumor_class=tumor_class)
        outs = gen.generate(params, {"mask": GridMask(labels, img.affine)}, lambda done, total: None)
        rows.append(mask_contrast({o.modality: o.data for o in outs}, labels, img.affine))
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


@pytest.mark.parametrize("tumor_class", ["HGG", "LGG"])
def test_demo_follows_an_unseen_mask_on_flair(demo, tumor_class):
    """Issue 3's bar, FLAIR half: oedema clearly brighter (z-scores) than the tissue 3–15 mm around the tumour.

    (The phantoms' own contrast is 1.4–2.2 z against −0.3–0.4; the first demo checkpoint reached 0.07.)"""
    regions = _follows(demo, tumor_class)
    assert regions["flair_edema_vs_shell"] > 0.3, regions


def test_demo_shows_the_enhancing_rim_of_an_unseen_mask_on_t1c(demo):
    """Issue 3's bar, T1C half: the enhancing rim brighter than the necrotic core (the phantoms: about +3.6 z).

    Met for the example mask's large core; on thin rims the demo's 4 mm grid loses it (see its model card)."""
    regions = _follows(demo, "HGG")
    assert regions["t1c_enhancing_vs_necrosis"] > 0.2, regions
