"""The import graph points down: the import-linter contracts in pyproject.toml hold, and Redis key strings are
spelled only in jobs/keys.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([exe, "--no-cache", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_the_layer_contracts_hold():
    result = lint_imports()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"Contracts: (\d+) kept, 0 broken", result.stdout)


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The check can fail: a copy of the package where jobs/ imports the API is refused."""
    copy = tmp_path / "tumorsynth"
    shutil.copytree(ROOT / "tumorsynth", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "jobs" / "upward.py").write_text("from ..api import app\n")
    config = tmp_path / ".importlinter"
    config.write_text(
        "[importlinter]\nroot_package = tumorsynth\n\n[importlinter:contract:layers]\n"
        "name = layers\ntype = layers\nlayers =\n    tumorsynth.api\n    tumorsynth.jobs\n"
    )
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    result = subprocess.run(
        [exe, "--no-cache", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
        timeout=600,
    )
    assert result.returncode != 0 and "tumorsynth.jobs.upward -> tumorsynth.api" in result.stdout


def test_redis_keys_are_spelled_in_one_module():
    spelled = re.compile(r"""[bf]?["']ts:""")
    offenders = [
        f"{p.relative_to(ROOT)}:{n}"
        for base in ("tumorsynth", "tests", "benchmarks")
        for p in sorted((ROOT / base).rglob("*.py"))
        if p.name != "keys.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if spelled.search(line)
    ]
    assert offenders == [], f"build Redis keys with tumorsynth.jobs.keys, not by hand: {offenders}"
