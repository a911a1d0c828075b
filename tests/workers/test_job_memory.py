"""The worker's side of issue 14 #6: a job whose planned outputs exceed the worker's ``MAX_JOB_OUTPUT_BYTES`` fails
``job_too_large`` before sampling (the API checks too, but a worker may be configured tighter, or the record may
come from elsewhere), leaving no output; and the planned size itself."""

from __future__ import annotations

import pytest

from tests.api.helpers import wait_status
from tests.support.services import WorkerProcess
from tumorsynth.jobs.memory import JobTooLarge, check_output_memory, output_shape, planned_output_bytes

from .faults import SHAPE, request, stack


def test_planned_output_bytes_and_the_refusal_say_how_many_samples_fit():
    assert planned_output_bytes((512, 512, 256), 4, 4) == 64 * 2**20 * 4 * 17  # 16 images and the mask
    assert output_shape([(40, 44, 30)], "input", (64, 64, 64)) == (40, 44, 30)
    assert output_shape([(40, 44, 30)], "model", (64, 64, 64)) == (64, 64, 64)
    assert output_shape([], "input", (16, 16, 1)) == (16, 16, 1)
    check_output_memory((512, 512, 256), 4, 3, 4 * 2**30)  # 3.25 GiB: accepted
    with pytest.raises(JobTooLarge) as err:
        check_output_memory((512, 512, 256), 4, 4, 4 * 2**30)
    assert err.value.status == 422 and err.value.errors[0].field == "num_samples"
    assert "at most 3 samples" in err.value.message


def test_a_worker_refuses_a_job_over_its_output_memory_limit(redis_server, s3_endpoint, model_dir, tmp_path):
    with stack(redis_server, s3_endpoint, model_dir) as st:
        w = WorkerProcess(
            st.settings,
            tmp_path / "worker.log",
            queues=st.settings.queue_for("ldm"),
            extra_env={"TUMORSYNTH_MAX_JOB_OUTPUT_BYTES": str(planned_output_bytes(SHAPE, 1, 2) - 1)},
        )
        w.start()
        try:
            one = st.submit(request())  # 1 sample of FLAIR and the mask: fits
            two = st.submit({**request(), "num_samples": 2})  # one volume more than the worker allows
            assert wait_status(st.client, one["id"], {"succeeded", "failed"}, timeout=120)["status"] == "succeeded"
            done = wait_status(st.client, two["id"], {"succeeded", "failed"}, timeout=120)
            assert done["status"] == "failed" and done["error"]["code"] == "job_too_large", done["error"]
            assert "at most 1 samples" in done["error"]["message"] and st.stored(two["id"]) == []
        finally:
            w.stop()
