"""``sentinel://`` URLs: parsed for redis-py and kombu alike; malformed ones refused at start-up, naming the fix."""

from __future__ import annotations

import pytest

from tumorsynth.jobs.connection import celery_broker, parse_sentinel, redacted
from tumorsynth.settings import Settings


def test_sentinel_url_names_sentinels_master_db_and_password():
    t = parse_sentinel("sentinel://:s3cret%21@h1:26379,h2,10.0.0.3:26380/mymaster/2")
    assert t.sentinels == [("h1", 26379), ("h2", 26379), ("10.0.0.3", 26380)]
    assert (t.master, t.db, t.username, t.password) == ("mymaster", 2, None, "s3cret!")
    assert parse_sentinel("redis://127.0.0.1:6379/0") is None


def test_celery_gets_kombus_form_and_the_master_name():
    broker, options = celery_broker("sentinel://h1:26379,h2:26380/mymaster", 2.0)
    assert broker == "sentinel://h1:26379/0;sentinel://h2:26380/0"
    assert options["master_name"] == "mymaster" and options["socket_timeout"] == 2.0
    assert celery_broker("redis://x:6379/0", 2.0) == ("redis://x:6379/0", {})


@pytest.mark.parametrize(
    "url, says",
    [
        ("sentinel://h1:26379", "name the master group"),
        ("sentinel:///mymaster", "at least one sentinel"),
        ("sentinel://h1:26379/mymaster/x", "must be a number"),
    ],
)
def test_malformed_sentinel_urls_are_refused_with_the_fix(url, says):
    with pytest.raises(ValueError, match=says):
        Settings(redis_url=url)


def test_acknowledgement_waits_for_a_replica_behind_sentinel_only():
    assert Settings(redis_url="sentinel://h:26379/m").ack_replicas == 1
    assert Settings(redis_url="redis://h:6379/0").ack_replicas == 0
    assert Settings(redis_url="sentinel://h:26379/m", redis_ack_replicas=2).ack_replicas == 2
    assert "s3cret" not in redacted("sentinel://:s3cret@h:26379/m")
