"""A job's preview is drawn once, however many first requests arrive together: the others wait for it and read
the stored PNG. (Drawn in the API, three concurrent first requests of large outputs used to take the API from 852
to 3,739 MiB: each drew its own.)"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.conftest import ALPHA
from tests.support.volumes import mask_bytes

from .helpers import submit, wait_status

CONCURRENT = 4


def test_concurrent_first_preview_requests_draw_it_once(client, app, worker):
    job = submit(
        client,
        {"model": "ldm/tiny@1", "seed": 9, "sampler": {"name": "dpm++", "steps": 5}},
        {"mask": mask_bytes((40, 44, 30))},
    ).json()
    done = wait_status(client, job["id"], {"succeeded", "failed"}, timeout=180)
    assert done["status"] == "succeeded", done["error"]
    store = app.state.services.store
    writes: list[str] = []
    put_bytes = store.put_bytes

    def counting_put(key, *args, **kw):
        writes.append(key)
        return put_bytes(key, *args, **kw)

    store.put_bytes = counting_put
    try:
        with ThreadPoolExecutor(CONCURRENT) as pool:
            answers = list(
                pool.map(lambda _: client.get(f"/v1/jobs/{job['id']}/preview.png", headers=ALPHA), range(CONCURRENT))
            )
    finally:
        del store.put_bytes
    assert all(a.status_code == 200 and a.content.startswith(b"\x89PNG") for a in answers)
    assert len({a.content for a in answers}) == 1
    assert [k for k in writes if k.endswith("preview.png")] == [writes[0]] and len(writes) == 1, writes
