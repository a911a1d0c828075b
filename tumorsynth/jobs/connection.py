"""Redis connections from ``TUMORSYNTH_REDIS_URL``: one Redis (``redis://``) or a Sentinel-watched primary.

``sentinel://[[user]:password@]host:26379,host2:26379,host3:26379/mymaster[/db]`` names the sentinels and the
master group; clients ask the sentinels where the primary is (redis-py's ``Sentinel.master_for``) and find the new
one after a failover by themselves. The password, if any, is the data nodes' (primary and replicas); sentinels are
reached without one. Celery's broker gets the same sentinels through kombu's own ``sentinel://`` transport
(``master_name`` in its transport options), so the job store and the queue always follow the same primary.

Every client is built here, so the API, the workers, the event streams and the tests cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from . import keys

SCHEME = "sentinel"


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: list[tuple[str, int]]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel(url: str) -> SentinelTarget | None:
    """The sentinels and master of a ``sentinel://`` URL; None for any other URL. A malformed one is a ValueError
    naming what to change (``Settings`` reports it at start-up)."""
    if not url.startswith(f"{SCHEME}://"):
        return None
    rest = url[len(SCHEME) + 3 :]
    userinfo, at, hosts_and_path = rest.rpartition("@")
    if not at:
        userinfo, hosts_and_path = "", rest
    hosts, _, path = hosts_and_path.partition("/")
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise ValueError(
            f"TUMORSYNTH_REDIS_URL {redacted(url)!r}: name the master group after the sentinels, "
            "e.g. sentinel://h1:26379,h2:26379,h3:26379/mymaster (optionally /db after it)"
        )
    sentinels = []
    for item in filter(None, hosts.split(",")):
        split = urlsplit(f"//{item}")
        if not split.hostname:
            raise ValueError(f"TUMORSYNTH_REDIS_URL: {item!r} is not host:port")
        sentinels.append((split.hostname, split.port or 26379))
    if not sentinels:
        raise ValueError("TUMORSYNTH_REDIS_URL: list at least one sentinel as host:port before the master group")
    if len(parts) == 2 and not parts[1].isdigit():
        raise ValueError(f"TUMORSYNTH_REDIS_URL: database {parts[1]!r} after the master group must be a number")
    user, _, password = userinfo.partition(":")
    return SentinelTarget(
        sentinels,
        unquote(parts[0]),
        int(parts[1]) if len(parts) == 2 else 0,
        unquote(user) or None,
        unquote(password) or None,
    )


def redacted(url: str) -> str:
    head, at, tail = url.rpartition("@")
    return f"{head.split('://')[0]}://***@{tail}" if at else url


def is_sentinel(url: str | None) -> bool:
    return url is not None and url.startswith(f"{SCHEME}://")


def _sentinel_kwargs(kw: dict) -> dict:
    """Sentinels answer quickly or are skipped for the next one: the same timeouts as the data connections."""
    return {k: kw[k] for k in ("socket_timeout", "socket_connect_timeout") if k in kw}


def connect(url: str, **kw) -> redis.Redis:
    """A client for the primary: ``redis.Redis.from_url`` for one Redis, a sentinel-managed one otherwise."""
    target = parse_sentinel(url)
    if target is None:
        return redis.Redis.from_url(url, **kw)
    sentinel = Sentinel(target.sentinels, sentinel_kwargs=_sentinel_kwargs(kw))
    return sentinel.master_for(target.master, db=target.db, username=target.username, password=target.password, **kw)


def connect_async(url: str, **kw) -> aioredis.Redis:
    target = parse_sentinel(url)
    if target is None:
        return aioredis.Redis.from_url(url, **kw)
    sentinel = AsyncSentinel(target.sentinels, sentinel_kwargs=_sentinel_kwargs(kw))
    return sentinel.master_for(target.master, db=target.db, username=target.username, password=target.password, **kw)


def celery_broker(url: str, timeout_seconds: float) -> tuple[str, dict]:
    """(broker URL, extra transport options) for Celery: kombu's ``sentinel://h1:p;sentinel://h2:p`` form with
    ``master_name``, and socket timeouts so a publish to a dead primary fails in seconds (a 503), not minutes."""
    target = parse_sentinel(url)
    if target is None:
        return url, {}
    auth = ""
    if target.password:
        auth = f"{target.username or ''}:{target.password}@"
    broker = ";".join(f"{SCHEME}://{auth}{h}:{p}/{target.db}" for h, p in target.sentinels)
    options = {
        "master_name": target.master,
        "socket_timeout": timeout_seconds,
        "socket_connect_timeout": timeout_seconds,
        "sentinel_kwargs": {"socket_timeout": timeout_seconds, "socket_connect_timeout": timeout_seconds},
    }
    return broker, options


def wait_for_replicas(client: redis.Redis, replicas: int, timeout_seconds: float) -> int:
    """How many replicas hold every write made so far on the primary, waiting at most ``timeout_seconds``.

    ``WAIT`` covers the calling connection's writes; a fresh write on it (a counter) comes after every write other
    connections already made (Celery's queue push included), so its replication offset covers them too.
    """
    if replicas <= 0:
        return 0
    with client.pipeline(transaction=False) as p:
        p.incr(keys.REPLICATION_FENCE)
        p.execute_command("WAIT", replicas, max(1, int(timeout_seconds * 1000)))
        return int(p.execute()[1])
