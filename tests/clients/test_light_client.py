"""The light client installs without torch: its wheel (built from clients/python) goes into a fresh venv that holds
only it and its declared dependencies (httpx's closure, linked from this environment: the machine is offline), and
from there it submits a job to a running service and waits for it to succeed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import ALPHA
from tests.support.services import uvicorn_in_thread
from tests.support.volumes import mask_bytes

ROOT = Path(__file__).resolve().parents[2]


# The fresh venv must not see this checkout or this environment's packages through the environment either.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, env=CLEAN_ENV, **kw)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def dependency_closure(requirements: list[str]) -> set[str]:
    """Distribution names needed by ``requirements`` (markers evaluated here), transitively."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = req.name.lower().replace("_", "-")
        if name not in seen:
            seen.add(name)
            todo.extend(Requirement(r) for r in metadata.requires(name) or [])
    return seen


def top_level_paths(dist_name: str) -> set[Path]:
    dist = metadata.distribution(dist_name)
    roots = {Path(str(f)).parts[0] for f in dist.files or []}
    return {
        Path(dist.locate_file(r))
        for r in roots
        if not r.endswith((".dist-info", ".pth")) and r != ".." and not r.startswith("__")
    }


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("light-client")
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        work / "wheels",
        ROOT / "clients" / "python",
    )
    (wheel,) = (work / "wheels").glob("tumorsynth_client-*.whl")
    run(sys.executable, "-m", "venv", work / "venv")
    py = work / "venv" / "bin" / "python"
    run(py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)
    declared = metadata.PathDistribution.at(
        next((work / "venv").glob("lib/python*/site-packages/tumorsynth_client-*.dist-info"))
    ).requires
    assert [Requirement(r).name for r in declared or []] == ["httpx"]
    deps = work / "deps"
    deps.mkdir()
    for name in dependency_closure(declared or []):
        for path in top_level_paths(name):
            (deps / path.name).symlink_to(path)
    site = run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    (Path(site) / "light-deps.pth").write_text(f"{deps}\n")
    return py


def test_the_venv_has_the_client_and_no_heavy_package(light_venv):
    probe = "import importlib.util as u; print([m for m in %r if u.find_spec(m)])"
    present = run(
        light_venv,
        "-c",
        probe % ["tumorsynth_client", "httpx", "torch", "numpy", "monai", "fastapi", "celery", "redis", "tumorsynth"],
        cwd="/",
    ).stdout
    assert json.loads(present.replace("'", '"')) == ["tumorsynth_client", "httpx"]


def test_the_light_client_submits_a_job_that_succeeds(light_venv, app, worker, tmp_path):
    mask = tmp_path / "mask.nii.gz"
    mask.write_bytes(mask_bytes((40, 44, 30)))
    key = re.sub(r"^Bearer ", "", ALPHA["Authorization"])
    script = textwrap.dedent(f"""
        import json, sys
        from tumorsynth_client import Client
        assert "torch" not in sys.modules
        client = Client(sys.argv[1], api_key={key!r})
        job = client.submit({{"model": "ldm/tiny@1", "seed": 3, "sampler": {{"name": "ddim", "steps": 5}}}},
                            {{"mask": {str(mask)!r}}})
        done = client.wait(job["id"], timeout=240)
        print(json.dumps({{"status": done["status"], "kinds": sorted({{o["kind"] for o in done["outputs"]}})}}))
    """)
    with uvicorn_in_thread(app, log_level="warning") as url:
        out = run(light_venv, "-c", script, url, cwd="/").stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "succeeded" and "image" in result["kinds"], result
