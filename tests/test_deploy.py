"""The distributed deployment's files: the compose file validates, and what it and the Dockerfiles run exists."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tumorsynth.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


def test_compose_file_validates_against_the_compose_spec():
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    r = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_long_running_service_has_a_healthcheck_and_pinned_image():
    spec = yaml.safe_load(COMPOSE.read_text())
    for name, svc in spec["services"].items():
        if svc.get("restart") != "no":
            assert "healthcheck" in svc, name
        image = svc.get("image", "")
        assert image and ":" in image and not image.endswith(":latest"), name
    assert "--appendonly" in spec["services"]["redis"]["command"]
    gpu = spec["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and len(gpu["device_ids"]) == 1


def test_settings_named_in_compose_exist():
    names = set(re.findall(r"TUMORSYNTH_([A-Z0-9_]+):", COMPOSE.read_text()))
    fields = {f.upper() for f in Settings.model_fields}
    assert names and names <= fields, names - fields


def test_commands_the_images_run_exist():
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        cmd = re.search(r"^CMD \[(.*)\]$", dockerfile.read_text(), re.M).group(1)
        argv = [a.strip().strip('"') for a in cmd.split(",")]
        assert argv[0] == "tumorsynth"
        r = subprocess.run([sys.executable, "-m", "tumorsynth.cli", argv[1], "--help"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        for opt in (a for a in argv[2:] if a.startswith("--")):
            assert opt in r.stdout, f"{dockerfile.name}: {argv[1]} has no {opt}"
    assert (ROOT / "docker" / "minio-init.sh").stat().st_mode & 0o111
