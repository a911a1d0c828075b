"""Serving options (precision, batch invariance) reach a generator through its family's registration: the loader
passes a family the ``runtime_options`` it declares and drops the others, so a new family needs no loader edit."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from tumorsynth.models import loader
from tumorsynth.models.families import FAMILIES, family_names, get_family
from tumorsynth.models.family import SERVING_OPTIONS
from tumorsynth.models.ldm.configs import create_untrained
from tumorsynth.models.loader import load_generator


@pytest.mark.parametrize("name", family_names())
def test_each_declared_runtime_option_is_a_keyword_of_the_generator(name):
    family = get_family(name)
    signature = inspect.signature(family.generator_class())
    assert set(family.runtime_options) <= set(signature.parameters), (
        f"{name} declares {family.runtime_options}; {family.generator} takes {list(signature.parameters)}"
    )


def test_a_family_names_only_serving_options():
    ldm = get_family("ldm")
    assert set(ldm.runtime_options) == set(SERVING_OPTIONS)  # LDMGenerator takes both
    with pytest.raises(ValueError, match="precison"):
        dataclasses.replace(ldm, runtime_options=("precison",))


@pytest.fixture()
def ldm_entry(tmp_path):
    loader.clear_cache()
    yield create_untrained(tmp_path / "ldm", preset="tiny", seed=0)
    loader.clear_cache()


def test_the_loader_passes_what_the_registration_declares(ldm_entry):
    generator = load_generator(ldm_entry, "cpu", precision="bf16", batch_invariant=True, not_an_option=1)
    assert generator.dtype == torch.bfloat16 and generator.batch_invariant
    assert next(generator.network.parameters()).dtype == torch.bfloat16


def test_the_loader_drops_what_the_registration_does_not_declare(ldm_entry, monkeypatch):
    monkeypatch.setitem(FAMILIES, "ldm", dataclasses.replace(FAMILIES["ldm"], runtime_options=("batch_invariant",)))
    generator = load_generator(ldm_entry, "cpu", precision="bf16", batch_invariant=True)
    assert generator.dtype == torch.float32 and generator.batch_invariant  # precision not declared: the default


def test_families_without_runtime_options_take_none():
    # A registration without runtime_options: its generator is built as Class(entry, device).
    for family in FAMILIES.values():
        if not family.runtime_options:
            params = list(inspect.signature(family.generator_class()).parameters)
            assert params[:2] == ["entry", "device"], f"{family.name}: {params}"
