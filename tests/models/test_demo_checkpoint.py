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
