"""The VQGAN family through the job API: class in, tumour ROI out; the class is required and checked."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from tests.conftest import ALPHA
from tests.support.volumes import load, mask_bytes

from .helpers import submit, wait_status

MODEL = "vqgan/tiny@1"


def roi(client, job, name) -> np.ndarray:
    r = client.get(f"/v1/jobs/{job['id']}/outputs/{name}", headers=ALPHA, follow_redirects=False)
    if r.status_code == 307:
        import httpx

        return load(httpx.get(r.headers["location"]).content).get_fdata()
    return load(r.content).get_fdata()


def test_vqgan_is_listed_as_class_to_roi(client):
    (m,) = [m for m in client.get("/v1/models", headers=ALPHA).json()["models"] if m["id"] == MODEL]
    assert m["task"] == "class_to_roi" and m["classes"] == ["LGG", "HGG"] and m["inputs"] == []
    assert {s["name"] for s in m["samplers"]} == {"maskgit", "ar"}


@pytest.mark.parametrize("tumor_class", ["LGG", "HGG"])
def test_class_jobs_succeed_and_seeds_differ(client, worker, tumor_class):
    jobs = [
        submit(client, {"model": MODEL, "tumor_class": tumor_class, "num_samples": 2, "seed": s}).json() for s in (1, 2)
    ]
    done = [wait_status(client, j["id"], {"succeeded", "failed"}) for j in jobs]
    assert all(d["status"] == "succeeded" for d in done), [d["error"] for d in done]
    a = [roi(client, d, "sample-0_flair.nii.gz") for d in done]
    assert a[0].shape == a[1].shape and len(a[0].shape) == 3
    assert not np.array_equal(a[0], a[1])
    assert len([o for o in done[0]["outputs"] if o["kind"] == "image"]) == 2
    side = client.get(f"/v1/jobs/{done[0]['id']}/outputs/sample-0_flair.json", headers=ALPHA, follow_redirects=False)
    assert side.status_code in (200, 307)


@pytest.mark.parametrize(
    "body,files,field",
    [
        ({"model": MODEL}, {}, "tumor_class"),
        ({"model": MODEL, "tumor_class": "meningioma"}, {}, "tumor_class"),
        ({"model": MODEL, "tumor_class": "LGG"}, {"mask": mask_bytes((20, 20, 20))}, "mask"),
        ({"model": MODEL, "tumor_class": "LGG", "sampler": {"name": "ddpm"}}, {}, "sampler.name"),
    ],
)
def test_vqgan_requests_are_checked(client, body, files, field):
    r = submit(client, body, files)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field


# ----- options (SPEC.md: declared in GET /v1/models, sent as ``options``, checked before anything is stored) --------
def test_the_listing_declares_the_vqgan_options_with_the_checkpoint_defaults(client):
    models = {m["id"]: m for m in client.get("/v1/models", headers=ALPHA).json()["models"]}
    for model_id in (MODEL, "vqgan/demo-phantom@1"):  # written in config.json; the demo's from the family
        options = {o["name"]: o for o in models[model_id]["options"]}
        assert list(options) == ["temperature", "choice_temperature", "guidance", "top_k"], model_id
        assert options["temperature"] | {"description": ""} == {
            "name": "temperature",
            "type": "float",
            "default": 1.0,
            "min": 0.0,
            "max": 10.0,
            "nullable": False,
            "description": "",
        }
        assert options["top_k"]["type"] == "int" and options["top_k"]["default"] is None
        assert options["top_k"]["nullable"] and options["top_k"]["min"] == 1
        assert all(o["description"] for o in options.values())
    assert [o["name"] for o in models["stylegan2/demo-phantom@1"]["options"]] == ["truncation"]
    assert [o["name"] for o in models["ldm/tiny@1"]["options"]] == ["guidance"]
    assert models["tavit/tiny@1"]["options"] == []


def test_options_reach_the_sampler_through_the_api(client, worker):
    base = {"model": MODEL, "tumor_class": "HGG", "seed": 21}
    jobs = [
        submit(client, base).json(),
        submit(client, base | {"options": {"temperature": 0.5, "top_k": 8}}).json(),
        submit(client, base | {"options": {"temperature": 1.0}}).json(),
    ]
    done = [wait_status(client, j["id"], {"succeeded", "failed"}) for j in jobs]
    assert [d["status"] for d in done] == ["succeeded"] * 3, [d["error"] for d in done]
    default, cooler, explicit_default = (roi(client, d, "sample-0_flair.nii.gz") for d in done)
    assert not np.array_equal(default, cooler)  # the same seed, another temperature: other tokens
    np.testing.assert_array_equal(default, explicit_default)  # the default, given or not, is the same job
    assert done[1]["request"]["options"] == {"temperature": 0.5, "choice_temperature": 4.5, "guidance": 0.0, "top_k": 8}
    assert done[0]["request"]["options"]["temperature"] == 1.0  # the record states every option it ran with
    r = client.get(f"/v1/jobs/{done[1]['id']}/outputs/sample-0_flair.json", headers=ALPHA, follow_redirects=False)
    side = json.loads(httpx.get(r.headers["location"]).content if r.status_code == 307 else r.content)
    assert side["SamplingOptions"] == done[1]["request"]["options"]  # and so does every sidecar


@pytest.mark.parametrize(
    "options,field",
    [
        ({"temprature": 0.5}, "options.temprature"),
        ({"top_k": 0}, "options.top_k"),
        ({"temperature": True}, "options.temperature"),
    ],
)
def test_bad_vqgan_options_are_refused_and_nothing_is_queued(client, options, field):
    def listed() -> list[str]:
        return [j["id"] for j in client.get("/v1/jobs", headers=ALPHA).json()["jobs"]]

    before = listed()
    r = submit(client, {"model": MODEL, "tumor_class": "LGG", "options": options})
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]
    assert listed() == before  # the byte-for-byte check of Redis and S3 is tests/api/test_bad_input.py's
