from __future__ import annotations

import pytest

from tumorsynth.errors import InvalidRequest, StorageUnavailable
from tumorsynth.storage.retry import backoff_delay, with_retries


def flaky(failures: list[Exception], result="ok"):
    calls = []

    def fn():
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return result

    return fn, calls


def test_retries_transient_errors_until_success():
    fn, calls = flaky([StorageUnavailable("down"), StorageUnavailable("down")])
    seen = []
    assert with_retries(fn, attempts=3, base_delay=0.001, on_retry=lambda n, e, d: seen.append((n, type(e)))) == "ok"
    assert len(calls) == 3
    assert seen == [(1, StorageUnavailable), (2, StorageUnavailable)]


def test_reraises_the_last_transient_error():
    errors = [StorageUnavailable("first"), StorageUnavailable("last")]
    fn, calls = flaky(list(errors))
    with pytest.raises(StorageUnavailable, match="last"):
        with_retries(fn, attempts=2, base_delay=0.001)
    assert len(calls) == 2


@pytest.mark.parametrize("error", [InvalidRequest("bad"), ValueError("bug"), KeyError("k")])
def test_does_not_retry_permanent_errors(error):
    fn, calls = flaky([error])
    with pytest.raises(type(error)):
        with_retries(fn, attempts=5, base_delay=0.001)
    assert len(calls) == 1


def test_non_transient_instance_of_a_transient_class_is_not_retried():
    err = StorageUnavailable("bucket missing")
    err.transient = False
    fn, calls = flaky([err])
    with pytest.raises(StorageUnavailable):
        with_retries(fn, attempts=5, base_delay=0.001)
    assert len(calls) == 1


def test_backoff_grows_and_is_capped():
    for attempt in range(8):
        cap = min(1.0, 0.1 * 2**attempt)
        assert cap / 2 <= backoff_delay(attempt, 0.1, 1.0) <= cap


def test_attempts_must_be_positive():
    with pytest.raises(ValueError):
        with_retries(lambda: 1, attempts=0)
