"""docker-compose.yml as Debian's docker-compose reads it (``config -q`` with the example .env), and the monitoring
it provisions: Prometheus with the alert rules, Grafana with the dashboard on the Prometheus datasource."""

from __future__ import annotations

import json
import shutil
import subprocess

import yaml

from .paths import COMPOSE, DASHBOARD, DEPLOY, ROOT


def test_docker_compose_config_accepts_the_file_with_the_example_env():
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose (Debian package; `make test` installs it)"
    r = subprocess.run(
        [exe, "-f", str(COMPOSE), "--env-file", str(ROOT / ".env.example"), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_docker_compose_config_refuses_a_missing_secret(tmp_path):
    env = tmp_path / ".env"
    env.write_text(
        "\n".join(
            line
            for line in (ROOT / ".env.example").read_text().splitlines()
            if not line.startswith("GRAFANA_ADMIN_PASSWORD=")
        )
    )
    r = subprocess.run(
        [shutil.which("docker-compose"), "-f", str(COMPOSE), "--env-file", str(env), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in r.stdout + r.stderr


def test_monitoring_is_provisioned_from_the_repository():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    mounts = {
        m.split(":")[0]: m.split(":")[1]
        for s in ("prometheus", "grafana")
        for m in services[s]["volumes"]
        if m.startswith("./")
    }
    for src in mounts:
        assert (ROOT / src).is_dir(), src
    assert mounts["./deploy/prometheus"] == "/etc/prometheus/tumorsynth"
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/tumorsynth/alerts.yml"]
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["api:8000"]
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    ds = datasource["datasources"][0]
    assert ds["url"] == "http://prometheus:9090" and ds["type"] == "prometheus"
    dashboard = json.loads(DASHBOARD.read_text())
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/tumorsynth.yml").read_text())
    assert mounts["./deploy/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == ds["uid"], panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == ds["uid"] for t in panel["targets"])
