"""``GET /v1/masks`` lists a tenant's bank masks and ``DELETE /v1/masks/{id}`` removes one; another tenant's mask
answers 404 exactly as a missing one, and an id not shaped as a mask id never reaches a storage key."""

from __future__ import annotations

import json

from tests.conftest import ALPHA, BETA
from tests.support.volumes import mask_bytes


def add(client, tumor_class: str, mask: bytes, headers=ALPHA) -> dict:
    r = client.post(
        "/v1/masks",
        headers=headers,
        files={
            "request": (None, json.dumps({"tumor_class": tumor_class}), "application/json"),
            "mask": ("m.nii.gz", mask, "application/octet-stream"),
        },
    )
    assert r.status_code == 201, r.text
    return r.json()


def test_list_and_delete_bank_masks_per_tenant(client, app):
    from tumorsynth.jobs.maskbank import BANK_SHAPE

    mask = mask_bytes(BANK_SHAPE)
    mine = [add(client, "LGG", mask), add(client, "HGG", mask)]
    theirs = add(client, "LGG", mask, BETA)
    listed = client.get("/v1/masks", headers=ALPHA).json()["masks"]
    by_id = {m["id"]: m for m in listed}
    assert {m["id"] for m in mine} <= set(by_id) and theirs["id"] not in by_id
    assert by_id[mine[0]["id"]]["class"] == "LGG" and by_id[mine[1]["id"]]["class"] == "HGG"
    assert all(by_id[m["id"]]["size"] > 0 for m in mine)
    assert client.delete(f"/v1/masks/{theirs['id']}", headers=ALPHA).status_code == 404  # beta's: not found
    assert client.delete(f"/v1/masks/{mine[0]['id']}", headers=ALPHA).status_code == 204
    assert client.delete(f"/v1/masks/{mine[0]['id']}", headers=ALPHA).status_code == 404  # gone
    after = {m["id"] for m in client.get("/v1/masks", headers=ALPHA).json()["masks"]}
    assert mine[0]["id"] not in after and mine[1]["id"] in after
    assert theirs["id"] in {m["id"] for m in client.get("/v1/masks", headers=BETA).json()["masks"]}
    for bad in ("mask_x", "..", f"{mine[1]['id']}%2Fmask.nii.gz", mine[1]["id"].upper()):
        r = client.delete(f"/v1/masks/{bad}", headers=ALPHA)
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json", bad
    assert mine[1]["id"] in {m["id"] for m in client.get("/v1/masks", headers=ALPHA).json()["masks"]}
    for m in [mine[1], theirs]:
        client.delete(f"/v1/masks/{m['id']}", headers=ALPHA if m is mine[1] else BETA)
