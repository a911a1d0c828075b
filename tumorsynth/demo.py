"""The main job on the embedded default (``make run``): serve, submit the example mask, write four contrasts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from .client import Client
from .imaging.examples import affine_1mm, example_mask
from .imaging.nifti import write_nifti
from .models.registry import ModelRegistry
from .settings import REPO_ROOT, Settings

console = Console(stderr=True)
EXAMPLE_MASK = REPO_ROOT / "examples" / "masks" / "example_brats2023_mask.nii.gz"


def ensure_example_mask(path: Path = EXAMPLE_MASK) -> Path:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(write_nifti(example_mask().astype("float32"), affine_1mm()))
    return path


def ensure_model(settings: Settings) -> None:
    entries = [e for e in ModelRegistry(settings.model_dir).list() if e.task == "mask_to_volume"]
    if not entries:
        from .models.ldm.configs import create_untrained

        create_untrained(settings.model_dir / "ldm", preset="tiny", name="untrained-tiny", seed=0)
        entries = [e for e in ModelRegistry(settings.model_dir).list() if e.task == "mask_to_volume"]
    if not any(e.trained for e in entries):
        console.print("[bold red]" + "!" * 78)
        console.print(
            "[bold red]WARNING: no trained mask-to-volume checkpoint is installed. The demo runs an "
            "UNTRAINED network:\nits outputs are noise in the mask's geometry. They show the plumbing, "
            "not the method.\nTrain one with `make demo-models` / `tumorsynth train ldm`."
        )
        console.print("[bold red]" + "!" * 78)


def run_demo(settings: Settings, out: Path, port: int, samples: int = 1) -> list[Path]:
    ensure_model(settings)
    mask = ensure_example_mask()
    env = dict(
        os.environ, TUMORSYNTH_STORAGE_DIR=str(settings.storage_dir), TUMORSYNTH_MODEL_DIR=str(settings.model_dir)
    )
    log_path = Path(settings.storage_dir).parent / "demo-serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    server = subprocess.Popen(
        [sys.executable, "-m", "tumorsynth.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        client = Client(f"http://127.0.0.1:{port}")
        console.print(
            f"starting the service on port {port} (embedded Redis, local storage, one worker; log: {log_path})…"
        )
        client.wait_ready(timeout=240)
        model = sorted(
            (m for m in client.models() if m["task"] == "mask_to_volume"), key=lambda m: (not m["trained"], m["id"])
        )[0]
        job = client.submit({"model": model["id"], "num_samples": samples, "seed": 7}, {"mask": mask})
        console.print(f"submitted {job['id']} to {model['id']} with {mask.name}; sampling…")
        job = client.wait(job["id"], timeout=1800)
        if job["status"] != "succeeded":
            raise RuntimeError(f"demo job {job['status']}: {job['error']}")
        console.print(f"done in {job['metrics'].get('run_seconds', 0):.1f}s")
        return client.download(job, out)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
