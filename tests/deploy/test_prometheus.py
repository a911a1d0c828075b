"""The alert rules and the dashboard against the real thing: Debian's ``promtool`` checks and unit-tests the rules and
lints a real ``/metrics`` scrape, every metric they read is one the service exports, and a real Prometheus on
loopback scrapes a running API with the shipped config and rules and answers a query for the jobs count.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.api.helpers import submit, wait_status
from tests.support.services import uvicorn_in_thread, wait_for
from tests.support.volumes import mask_bytes
from tumorsynth.embedded.redis_server import free_port
from tumorsynth.workers import gpu_memory

from .paths import DASHBOARD, PROMETHEUS

MODEL = "ldm/tiny@1"
PROMTOOL = shutil.which("promtool") or "promtool"  # Debian's prometheus package; `make test` installs it
METRIC = re.compile(r"\b((?:tumorsynth|celery)_[a-z0-9_]+)")
HISTOGRAM_PARTS = re.compile(r"_(bucket|count|sum)$")


@pytest.fixture(scope="module")
def scrape(client, worker, settings) -> str:
    """``/metrics`` and ``/metrics/api`` after a job ran and with a GPU reading (removed after the scrape: other tests
    share this Redis and expect a CPU worker's none)."""
    import redis

    job = submit(
        client,
        {"model": MODEL, "seed": 11, "sampler": {"name": "dpm++", "steps": 5}},
        {"mask": mask_bytes((40, 44, 30))},
    ).json()
    wait_status(client, job["id"], {"succeeded"})
    r = redis.Redis.from_url(settings.redis_url)
    gpu_memory.publish(r, "gpuhost:1", 2, [{"device": "cuda:0", "allocated": 1, "reserved": 2, "total": 8}], 60)
    try:
        text = client.get("/metrics").text + client.get("/metrics/api").text
    finally:
        r.delete(gpu_memory.gpu_key("gpuhost:1", 2))
        r.zrem(gpu_memory.INDEX, gpu_memory.gpu_key("gpuhost:1", 2))
    assert "tumorsynth_worker_gpu_memory_bytes{" in text
    return text


@pytest.fixture(scope="module")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


def test_rules_pass_promtool_check_and_their_unit_tests():
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        r = subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "SUCCESS" in r.stdout


def test_promtool_check_metrics_on_a_real_scrape(scrape):
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=scrape, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def exported_names(scrape: str) -> set[str]:
    """Series names the scrape declares: a counter with no sample yet (no job failed) is still declared."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    names = set()
    for fam in text_string_to_metric_families(scrape):
        names |= {s.name for s in fam.samples} | {fam.name + x for x in suffixes.get(fam.type, ("",))}
    return names


def test_every_metric_the_rules_and_the_dashboard_read_is_exported(scrape):
    exported = exported_names(scrape)
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    read = {m for e in exprs for m in METRIC.findall(e)}
    assert read and read <= exported, sorted(read - exported)
    assert "tumorsynth_redis_up" in read and "tumorsynth_webhook_oldest_overdue_seconds" in read
    # a panel for each thing ops watch
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for what in ("queue", "throughput", "latency", "fail", "gpu"):
        assert what in titles, what


def succeeded_count(text: str) -> float:
    return next(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "tumorsynth_jobs" and s.labels == {"model": MODEL, "status": "succeeded"}
    )


def test_prometheus_scrapes_a_running_api_and_answers_for_the_jobs_count(app, scrape, tmp_path):
    assert succeeded_count(scrape) >= 1
    with uvicorn_in_thread(app) as base, open(tmp_path / "prometheus.log", "wb") as log:
        config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(PROMETHEUS / "alerts.yml")]
        for job in config["scrape_configs"]:  # /metrics and /metrics/api of the one API
            job["static_configs"] = [{"targets": [base.removeprefix("http://")]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        before = succeeded_count(httpx.get(f"{base}/metrics").text)  # Prometheus scrapes only after this
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as prom:

                def ready() -> bool:
                    assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
                    try:
                        return prom.get("/-/ready").status_code == 200
                    except httpx.HTTPError:
                        return False

                def query(q: str) -> list:
                    body = prom.get("/api/v1/query", params={"query": q}).json()
                    return body["data"]["result"] if body.get("status") == "success" else []

                wait_for(ready, timeout=60, interval=0.2, what="Prometheus to start")
                q = f'tumorsynth_jobs{{job="tumorsynth-api",model="{MODEL}",status="succeeded"}}'
                result = wait_for(lambda: query(q), timeout=60, interval=0.5, what="Prometheus to scrape the API")
                after = succeeded_count(httpx.get(f"{base}/metrics").text)  # jobs of earlier tests may still end
                assert before <= float(result[0]["value"][1]) <= after, (before, result, after)
                assert float(query('up{job="tumorsynth-api"}')[0]["value"][1]) == 1
                # the second job scrapes on its own clock: wait for its first scrape too
                self_up = wait_for(
                    lambda: query('up{job="tumorsynth-api-self"}'), timeout=60, interval=0.5, what="the self scrape"
                )
                assert float(self_up[0]["value"][1]) == 1
                assert float(query('tumorsynth_redis_up{job="tumorsynth-api-self"}')[0]["value"][1]) == 1
                # every dashboard query is PromQL this Prometheus accepts
                dashboard = json.loads(DASHBOARD.read_text())
                for expr in (t["expr"] for p in dashboard["panels"] for t in p["targets"]):
                    body = prom.get("/api/v1/query", params={"query": expr}).json()
                    assert body["status"] == "success", (expr, body)

                # the shipped rules load and evaluate against the real series without an error
                def evaluated() -> list:
                    rules = [r for g in prom.get("/api/v1/rules").json()["data"]["groups"] for r in g["rules"]]
                    return rules if rules and all(r["health"] != "unknown" for r in rules) else []

                rules = wait_for(evaluated, timeout=30, interval=0.5, what="the rules to be evaluated")
                assert len(rules) == 8 and all(r["health"] == "ok" for r in rules), rules
                # and the outage alerts' conditions are false on a healthy service with a worker online
                for rule in (
                    r
                    for r in rules
                    if r["name"] in {"TumorsynthRedisDown", "TumorsynthApiDown", "TumorsynthNoWorkerForQueue"}
                ):
                    assert prom.get("/api/v1/query", params={"query": rule["query"]}).json()["data"]["result"] == [], (
                        rule["name"]
                    )
        finally:
            proc.terminate()
            proc.wait(20)
