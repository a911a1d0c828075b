"""RSS of a real API process while both malformed corpora are sent to it many times.

Starts ``tumorsynth serve --no-worker`` on this machine (embedded Redis, a local-folder store, tiny untrained
models, an API key), sends every malformed request and every malformed file (as a job's mask) ``--rounds`` times
over a socket, and prints the API process's resident set size after each round. Checks on the way that every
answer was the expected 4xx problem+json, and at the end that nothing was stored or queued.

Run: `.venv/bin/python benchmarks/malformed_rss.py [--rounds 20]`. Prints a table; not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.hammer import ApiProcess, fire, rss_kib, shots
from tumorsynth.embedded.redis_server import free_port
from tumorsynth.jobs import keys
from tumorsynth.workers.celery_app import queue_lists

AUTH = {"Authorization": "Bearer bench-key"}


def tiny_models(root: Path) -> None:
    from tumorsynth.models.ldm.configs import create_untrained as ldm
    from tumorsynth.models.tavit.configs import create_untrained as tavit

    ldm(root / "ldm", preset="tiny", name="tiny", version="1", seed=0)
    tavit(root / "tavit", preset="tiny", name="tiny", version="1", seed=0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ts-rss-"))
    tiny_models(tmp / "models")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUMORSYNTH_")} | {
        "TUMORSYNTH_STORAGE_DIR": str(tmp / "storage"),
        "TUMORSYNTH_MODEL_DIR": str(tmp / "models"),
        "TUMORSYNTH_API_KEYS": "bench:bench-key",
        "TUMORSYNTH_MAX_REQUEST_BYTES": str(8 << 20),
        "TUMORSYNTH_MAX_FILE_BYTES": str(4 << 20),
        "TUMORSYNTH_MAX_DECOMPRESSED_BYTES": str(32 << 20),
    }
    api = ApiProcess(env, free_port(), tmp / "api.log").start()
    try:
        batch = shots(AUTH)
        sent = 0
        print(f"API pid {api.proc.pid}; {len(batch)} malformed requests per round; RSS in MiB")
        print(f"{'round':>5} {'requests':>9} {'seconds':>8} {'RSS':>8} {'peak':>8}")
        rss0, peak0 = rss_kib(api.proc.pid)
        print(f"{'start':>5} {0:>9} {'':>8} {rss0 / 1024:>8.1f} {peak0 / 1024:>8.1f}")
        after = []
        with httpx.Client(base_url=api.base_url, timeout=60) as client:
            for i in range(args.rounds + 1):
                t0 = time.perf_counter()
                wrong = fire(client, batch)
                if wrong:
                    raise SystemExit("unexpected answers:\n" + "\n".join(wrong))
                sent += len(batch)
                rss, peak = rss_kib(api.proc.pid)
                after.append(rss)
                label = "warm" if i == 0 else str(i)
                print(f"{label:>5} {sent:>9} {time.perf_counter() - t0:>8.1f} {rss / 1024:>8.1f} {peak / 1024:>8.1f}")
        stored = [p for p in (tmp / "storage").rglob("*") if p.is_file()]
        r = redis.Redis.from_url(re.search(r"embedded Redis on (redis://\S+)", (tmp / "api.log").read_text()).group(1))
        jobs = list(r.scan_iter(keys.job("*")))
        print(
            f"\nafter {sent} malformed requests: {len(stored)} objects stored, {len(jobs)} job records, "
            f"queue 'gpu' holds {sum(r.llen(q) for q in queue_lists('gpu'))}"
        )
        growth = (after[-1] - after[0]) / 1024
        print(
            f"RSS: {rss0 / 1024:.1f} MiB at start, {after[0] / 1024:.1f} after the warm-up round, "
            f"{after[-1] / 1024:.1f} after {args.rounds} more rounds: {growth:+.1f} MiB "
            f"({growth * 1024 / max(args.rounds, 1):+.0f} KiB per round of {len(batch)} requests)"
        )
    finally:
        api.stop()


if __name__ == "__main__":
    main()
