"""Where the deployment files live (deploy/ at the repository root)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tumorsynth.json"
COMPOSE = ROOT / "docker-compose.yml"
