"""check_options: the one check of a request's ``options``, shared by the API and the runners."""

from __future__ import annotations

import math

import pytest

from tumorsynth.errors import InvalidRequest
from tumorsynth.models.options import OptionSpec, check_options, checkpoint_options, family_options

SPECS = (
    OptionSpec("temperature", "float", 1.0, 0.0, 10.0),
    OptionSpec("top_k", "int", None, 1, 64, nullable=True),
    OptionSpec("steps_bias", "int", 3, min=0),
)
MODEL = "fam/x@1"


def field_of(given) -> list[str]:
    with pytest.raises(InvalidRequest) as err:
        check_options(SPECS, given, MODEL)
    assert err.value.status == 422
    return [e.field for e in err.value.errors]


def test_defaults_fill_what_is_not_given_and_given_values_are_kept():
    assert check_options(SPECS, None, MODEL) == {"temperature": 1.0, "top_k": None, "steps_bias": 3}
    assert check_options(SPECS, {"temperature": 2, "top_k": 8}, MODEL) == {
        "temperature": 2.0,
        "top_k": 8,
        "steps_bias": 3,
    }
    out = check_options(SPECS, {"temperature": 0}, MODEL)
    assert isinstance(out["temperature"], float) and out["temperature"] == 0.0  # an int is a float option's number
    assert check_options(SPECS, {"top_k": None}, MODEL)["top_k"] is None  # nullable: null is "off"
    assert check_options((), {}, MODEL) == {}


@pytest.mark.parametrize(
    "given,fields",
    [
        ({"cfg": 2.0}, ["options.cfg"]),  # unknown names are refused, named
        ({"temperature": True}, ["options.temperature"]),  # a bool is not a number
        ({"top_k": False}, ["options.top_k"]),
        ({"temperature": "0.5"}, ["options.temperature"]),
        ({"top_k": 8.0}, ["options.top_k"]),  # an int option takes integers only
        ({"top_k": 8.5}, ["options.top_k"]),
        ({"temperature": math.nan}, ["options.temperature"]),
        ({"temperature": math.inf}, ["options.temperature"]),
        ({"temperature": 10**400}, ["options.temperature"]),  # an int no double holds
        ({"top_k": 10**400}, ["options.top_k"]),
        ({"temperature": -0.1}, ["options.temperature"]),  # bounds are inclusive
        ({"temperature": 10.5}, ["options.temperature"]),
        ({"top_k": 0}, ["options.top_k"]),
        ({"steps_bias": -1}, ["options.steps_bias"]),
        ({"temperature": None}, ["options.temperature"]),  # null only where nullable
        ({"cfg": 1, "top_k": 99}, ["options.cfg", "options.top_k"]),  # every problem, in the order given
    ],
)
def test_bad_options_are_refused_naming_each_field(given, fields):
    assert field_of(given) == fields


def test_bounds_are_inclusive_and_one_sided_bounds_work():
    assert check_options(SPECS, {"temperature": 0.0, "top_k": 64, "steps_bias": 10**6}, MODEL)["top_k"] == 64
    assert check_options(SPECS, {"temperature": 10.0, "top_k": 1}, MODEL)["temperature"] == 10.0


def test_messages_say_what_to_change():
    with pytest.raises(InvalidRequest) as err:
        check_options(SPECS, {"cfg": 1}, MODEL)
    assert "temperature, top_k, steps_bias" in err.value.errors[0].message and MODEL in err.value.message
    with pytest.raises(InvalidRequest) as err:
        check_options(SPECS, {"temperature": 11}, MODEL)
    assert "[0.0, 10.0]" in err.value.errors[0].message
    with pytest.raises(InvalidRequest) as err:
        check_options((), {"truncation": 0.5}, MODEL)
    assert "no options" in err.value.errors[0].message


def test_options_that_are_not_an_object_are_refused():
    with pytest.raises(InvalidRequest) as err:
        check_options(SPECS, [1, 2], MODEL)
    assert err.value.errors[0].field == "options"


def test_a_spec_must_be_coherent():
    with pytest.raises(ValueError, match="type"):
        OptionSpec("x", "str", 1)
    with pytest.raises(ValueError, match="nullable"):
        OptionSpec("x", "float", None)


def test_a_spec_round_trips_through_config_json():
    for spec in SPECS:
        assert OptionSpec.from_config(spec.as_config()) == spec


def test_checkpoint_options_come_from_config_json_else_the_family_with_sampling_defaults():
    written = {"family": "vqgan", "options": [SPECS[0].as_config()], "sampling": {"temperature": 0.7}}
    assert checkpoint_options(written) == (SPECS[0].with_default(0.7),)
    older = {"family": "vqgan", "sampling": {"temperature": 0.9, "top_k": 16}}  # written before "options"
    specs = {s.name: s for s in checkpoint_options(older)}
    assert set(specs) == {"temperature", "choice_temperature", "guidance", "top_k"}
    assert specs["temperature"].default == 0.9 and specs["top_k"].default == 16
    assert specs["guidance"].default == family_options("vqgan")[2].default
    assert [s.name for s in checkpoint_options({"family": "stylegan2"})] == ["truncation"]
    assert checkpoint_options({"family": "tavit"}) == ()
    assert [s.name for s in checkpoint_options({"family": "ldm"})] == ["guidance"]
    assert checkpoint_options({"family": "../etc"}) == () and checkpoint_options({"family": "nosuch"}) == ()
