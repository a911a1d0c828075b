"""The options contract, for every family's tiny preset: the checkpoint declares its options in config.json, the
registry entry reads them, check_options resolves the declared defaults, and a non-default option reaches generate()."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

from tumorsynth.errors import InvalidRequest
from tumorsynth.models.base import GenerationParams
from tumorsynth.models.families import FAMILIES
from tumorsynth.models.loader import load_generator
from tumorsynth.models.options import OptionSpec, check_options, family_options
from tumorsynth.models.registry import ModelRegistry


def non_default(spec: OptionSpec) -> float | int:
    """A value inside the bounds that differs from the default."""
    low = spec.min if spec.min is not None else (spec.default or 0) - 1
    high = spec.max if spec.max is not None else (spec.default or 0) + 1
    if spec.default is None:
        value = low
    elif spec.default > low:
        value = (low + spec.default) / 2
    else:
        value = (spec.default + high) / 2
    return int(value) if spec.type == "int" else float(value)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny(request, tmp_path_factory):
    family = request.param
    configs = importlib.import_module(f"tumorsynth.models.{family}.configs")
    root = tmp_path_factory.mktemp(family)
    written = configs.create_untrained(root / family, preset="tiny")
    return ModelRegistry(root).get(written.id)


def test_config_json_declares_the_family_options_and_the_registry_serves_them(tiny):
    config = json.loads((tiny.path / "config.json").read_text())
    if "options" in config:
        assert [OptionSpec.from_config(o) for o in config["options"]] == list(tiny.options)
    else:  # a preset that does not write them yet (stylegan2's, while it is retrained): the family's declaration
        assert tiny.family == "stylegan2"
    assert [o.name for o in tiny.options] == [o.name for o in family_options(tiny.family)]
    listed = tiny.info()["options"]
    assert [o["name"] for o in listed] == [o.name for o in tiny.options]
    assert all({"name", "type", "default", "min", "max", "description"} <= set(o) for o in listed)


def test_declared_defaults_pass_the_check_and_unknown_options_do_not(tiny):
    defaults = {o.name: o.default for o in tiny.options}
    sampling = tiny.config.get("sampling") or {}
    assert all(defaults[k] == sampling[k] for k in defaults if k in sampling)  # the checkpoint's defaults
    assert check_options(tiny.options, {}, tiny.id) == check_options(tiny.options, defaults, tiny.id)
    with pytest.raises(InvalidRequest) as err:
        check_options(tiny.options, {"no_such_option": 1.0}, tiny.id)
    assert err.value.errors[0].field == "options.no_such_option"


def params_for(entry, **options) -> GenerationParams:
    sampler = entry.sampler(None)
    return GenerationParams(
        num_samples=1,
        seed=7,
        sampler=sampler.name,
        steps=sampler.default_steps,
        modalities=entry.modalities,
        tumor_class=entry.classes[0] if entry.classes else None,
        output_grid="model",
        options=options,
    )


def test_a_non_default_option_reaches_generate(tiny):
    if not tiny.options:
        pytest.skip(f"{tiny.family} declares no options")
    if tiny.inputs:
        pytest.skip(f"{tiny.family} needs input volumes; its runner tests cover generation")
    spec = tiny.options[0]
    generator = load_generator(tiny, "cpu")
    nothing = lambda done, total: None
    default = generator.generate(params_for(tiny), {}, nothing)
    changed = generator.generate(params_for(tiny, **{spec.name: non_default(spec)}), {}, nothing)
    assert not np.array_equal(default[0].data, changed[0].data), f"{spec.name}={non_default(spec)} changed nothing"
    with pytest.raises(InvalidRequest) as err:
        generator.generate(params_for(tiny, no_such_option=1.0), {}, nothing)
    assert err.value.errors[0].field == "options.no_such_option"
