"""Installed security-relevant packages are past their known advisories: the offline stand-in for pip-audit.

pip-audit cannot run here: it looks every package up in a vulnerability service over the network (the PyPI JSON
API or OSV) and has no offline database. So this table names, for the packages that parse untrusted input or load
untrusted files, the first release past each advisory we track, and the test fails on an older installed version.
Keep it current when an advisory lands (and run pip-audit where the network allows).
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]

# package: (first safe version, why, required: installed by `pip install -e .` and so must be present)
MINIMUMS: dict[str, tuple[str, str, bool]] = {
    "python-multipart": (
        "0.0.31",
        "multipart parsing advisories (CVE-2024-24762, CVE-2024-53981 and later); issue 8's floor",
        True,
    ),
    "starlette": ("0.49.1", "CVE-2025-62727 (Range header DoS), CVE-2025-54121 (multipart rollover)", True),
    "fastapi": ("0.109.1", "CVE-2024-24762 (form parsing ReDoS)", True),
    "h11": ("0.16.0", "CVE-2025-43859 (chunked-encoding request smuggling)", True),
    "urllib3": ("2.5.0", "CVE-2025-50181, CVE-2025-50182 (redirect control)", True),
    "requests": ("2.32.4", "CVE-2024-47081 (.netrc credential leak)", False),
    "pillow": ("11.3.0", "CVE-2025-48379 (DDS heap overflow)", True),
    "torch": ("2.6.0", "CVE-2025-32434 (torch.load weights_only code execution)", True),
    "jinja2": ("3.1.6", "CVE-2025-27516 (sandbox escape)", False),
    "idna": ("3.7", "CVE-2024-3651 (encode() DoS)", False),
    "certifi": ("2024.7.4", "CVE-2024-39689 (GLOBALTRUST roots)", False),
    "pyyaml": ("5.4", "CVE-2020-14343 (full_load code execution)", False),
    "zipp": ("3.19.1", "CVE-2024-5569 (infinite loop)", False),
    "setuptools": ("78.1.1", "CVE-2025-47273 (path traversal)", False),
    "werkzeug": ("3.0.6", "CVE-2024-49766, CVE-2024-49767 (test S3 server's HTTP layer)", False),
    "cryptography": ("44.0.1", "CVE-2024-12797 (bundled OpenSSL)", False),
}


def installed(name: str) -> Version | None:
    try:
        return Version(version(name))
    except PackageNotFoundError:
        return None


@pytest.mark.parametrize("name", sorted(MINIMUMS))
def test_installed_version_is_past_known_advisories(name):
    floor, why, required = MINIMUMS[name]
    have = installed(name)
    if have is None:
        assert not required, f"{name} is a dependency of tumorsynth but is not installed"
        pytest.skip(f"{name} not installed")
    assert have >= Version(floor), f"{name} {have} < {floor}: {why}; upgrade it"


def test_pyproject_floors_keep_fresh_installs_past_them():
    """A fresh install resolves at or above each floor, not only this environment."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = {Requirement(d).name.lower(): Requirement(d) for d in deps}
    for name in ("python-multipart", "starlette", "torch", "pillow"):
        spec = reqs[name].specifier
        floor = Version(MINIMUMS[name][0])
        lows = [Version(s.version) for s in spec if s.operator in (">=", "==", "~=")]
        assert lows and min(lows) >= floor, f"pyproject allows {name}{spec}, below {floor}"
        assert not any(s.operator == "<" and Version(s.version) <= floor for s in spec)


def test_every_advisory_names_a_cve_or_the_issue():
    for name, (floor, why, _) in MINIMUMS.items():
        assert re.search(r"CVE-\d{4}-\d+|issue \d+", why), name
        Version(floor)
