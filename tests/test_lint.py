"""Static checks in the test run, each with zero findings: ruff (the rules in pyproject.toml) on the package, the
tests and the benchmarks; mypy on the package. Import layering is tests/test_layers.py. After merging new code,
run the same commands by hand: ``ruff format .``, ``ruff check --fix .`` then ``ruff check .`` and ``mypy``
(see README)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*cmd: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_ruff_finds_nothing():
    result = run(
        str(BIN / "ruff"),
        "check",
        "--no-cache",
        "--output-format",
        "concise",
        "tumorsynth",
        "tests",
        "benchmarks",
        "examples",
        "clients",
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_ruff_format_would_change_nothing():
    result = run(
        str(BIN / "ruff"), "format", "--check", "--no-cache", "tumorsynth", "tests", "benchmarks", "examples", "clients"
    )
    assert result.returncode == 0, (
        "run `.venv/bin/ruff format tumorsynth tests benchmarks examples clients`:\n"
        + result.stdout[-6000:]
        + result.stderr[-2000:]
    )


def test_mypy_finds_nothing():
    # The cache (gitignored under var/) turns a 3-minute cold run into ~30 s.
    result = run(sys.executable, "-m", "mypy", "--cache-dir", str(ROOT / "var" / "mypy-cache"))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout


def test_the_package_declares_its_types():
    assert (ROOT / "tumorsynth" / "py.typed").is_file()
