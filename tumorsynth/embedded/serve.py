"""``tumorsynth serve``: the API, and when nothing is configured an embedded Redis and a supervised worker.

The embedded default runs the same code paths as the distributed set-up: a real Redis broker and job store, a
real Celery worker in its own process, and the object store (a local folder unless an S3 endpoint is set).
"""

from __future__ import annotations

import logging
import os
import re
import signal
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from ..settings import Settings
from .http import guarded_h11
from .redis_server import RedisServer
from .supervisor import WorkerSupervisor

log = logging.getLogger(__name__)


def redis_data_dir(settings: Settings) -> Path:
    """The embedded Redis's folder: the setting, else beside the storage folder and named after it, so two services
    with different storage folders under one parent never share a Redis (it used to be ``<parent>/redis``)."""
    if settings.redis_data_dir is not None:
        return settings.redis_data_dir
    folder = settings.storage_dir.with_name(settings.storage_dir.name + "-redis")
    legacy = settings.storage_dir.parent / "redis"
    if not folder.exists() and (legacy / "appendonlydir").exists():
        log.warning(
            "the embedded Redis now keeps its data in %s; the shared folder %s used before is left as it "
            "was: move it to %s (with no service running) to keep its jobs",
            folder,
            legacy,
            folder,
        )
    return folder


@contextmanager
def embedded_backends(settings: Settings, with_worker: bool = True):
    """Start what the settings leave out; yield the settings the API and workers should use."""
    redis_server = None
    env = dict(os.environ)
    if not settings.redis_url:
        redis_server = RedisServer(redis_data_dir(settings)).start().supervise()
        env["TUMORSYNTH_REDIS_URL"] = redis_server.url
        log.info("embedded Redis on %s (append-only file in %s)", redis_server.url, redis_server.data_dir)
    env["TUMORSYNTH_STORAGE_DIR"] = str(settings.storage_dir)
    env["TUMORSYNTH_MODEL_DIR"] = str(settings.model_dir)
    env["TUMORSYNTH_PUBLIC_URL"] = settings.public_url
    if not settings.url_signing_key:
        env["TUMORSYNTH_URL_SIGNING_KEY"] = os.urandom(32).hex()  # shared by API and worker for this run
    effective = Settings(
        **{
            **settings.model_dump(),
            "redis_url": env.get("TUMORSYNTH_REDIS_URL"),
            "url_signing_key": env.get("TUMORSYNTH_URL_SIGNING_KEY", settings.url_signing_key),
        }
    )
    supervisor = WorkerSupervisor(env).start() if with_worker else None
    try:
        yield effective
    finally:
        if supervisor:
            supervisor.stop()
        if redis_server:
            redis_server.stop()


def serve(settings: Settings, host: str, port: int, with_worker: bool = True) -> None:
    settings.check_safe_to_serve(host)
    from ..api.app import create_app

    if settings.public_url == Settings.model_fields["public_url"].default:
        settings = Settings(**{**settings.model_dump(), "public_url": f"http://{host}:{port}"})
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; with the default handler that would end the
    # process before the worker and Redis are stopped, leaving them orphaned. Exit through ``finally`` instead.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    with embedded_backends(settings, with_worker) as effective:
        config = uvicorn.Config(
            create_app(effective),
            host=host,
            port=port,
            log_level="info",
            http=guarded_h11(effective.header_timeout_seconds),
            limit_concurrency=effective.max_connections,
        )
        logging.getLogger("uvicorn.access").addFilter(RedactLinkSignatures())  # after uvicorn set its logging up
        uvicorn.Server(config).run()


class RedactLinkSignatures(logging.Filter):
    """A signed download link is a credential until it expires: the access log keeps the path, not the signature."""

    PATTERN = re.compile(r"((?:^|[?&])(?:signature|X-Amz-Signature|X-Amz-Credential)=)[^&\s]*", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
            args = list(record.args)
            args[2] = self.PATTERN.sub(r"\1<redacted>", record.args[2])
            record.args = tuple(args)
        return True


def _exit_cleanly(signum, frame) -> None:
    raise SystemExit(128 + signum)
