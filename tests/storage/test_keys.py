from __future__ import annotations

import pytest

from tumorsynth.errors import InvalidRequest
from tumorsynth.storage import keys


def test_layout():
    assert keys.input_key("alpha", "j1", "mask.nii.gz") == "tenants/alpha/jobs/j1/inputs/mask.nii.gz"
    assert keys.output_key("alpha", "j1", "sample-0_t1.nii.gz") == "tenants/alpha/jobs/j1/outputs/sample-0_t1.nii.gz"
    assert keys.job_prefix("alpha", "j1") == "tenants/alpha/jobs/j1/"
    assert keys.attempt_output_key("alpha", "j1", 2, "mask.json") == "tenants/alpha/jobs/j1/outputs/attempt-2/mask.json"
    with pytest.raises(ValueError):
        keys.attempt_outputs_prefix("alpha", "j1", 0)
    assert keys.mask_bank_key("alpha", "m1", "mask.nii.gz") == "tenants/alpha/masks/m1/mask.nii.gz"
    assert keys.batch_key("alpha", "b1", "manifest.csv") == "tenants/alpha/batches/b1/manifest.csv"


BAD = ["../x", "..", "a/b", ".hidden", "", "a\x00b", "x" * 200, "a..b", "a\\b", "-lead", "sp ace", "ü"]


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("position", ["tenant", "job_id", "filename"])
def test_refuses_unsafe_components(bad, position):
    args = {"tenant": "alpha", "job_id": "j1", "filename": "f.json"} | {position: bad}
    with pytest.raises(InvalidRequest) as err:
        keys.output_key(**args)
    assert err.value.errors[0].field == position


def test_accepts_the_longest_component():
    assert keys.input_key("a" * 128, "j", "n").startswith("tenants/" + "a" * 128)
    with pytest.raises(InvalidRequest):
        keys.input_key("a" * 129, "j", "n")


def test_tenant_of():
    assert keys.tenant_of(keys.output_key("beta", "j1", "f.json")) == "beta"
    assert keys.tenant_of(keys.job_prefix("beta", "j1")) == "beta"
    for key in ["tenants/", "tenants/beta", "tenants/beta/", "other/beta/x", "tenants/../x", "tenants/.b/x", ""]:
        assert keys.tenant_of(key) is None, key


def test_object_kind_tags_for_lifecycle_rules():
    from tumorsynth.storage.keys import batch_key, input_key, mask_bank_key, object_kind, output_key

    assert object_kind(input_key("t", "job_1", "mask.nii.gz")) == "input"
    assert object_kind(output_key("t", "job_1", "sample-0_t1.nii.gz")) == "output"
    assert object_kind(mask_bank_key("t", "mask_1", "mask.nii.gz")) == "mask"
    assert object_kind(batch_key("t", "batch_1", "manifest.csv")) == "manifest"
    assert object_kind("elsewhere/x") is None
