"""Two-process torchrun (gloo, CPU) training of one family, for the DDP tests.

``run_two_ranks`` launches ``python -m torch.distributed.run --nproc_per_node=2`` on this file. Each rank builds the
family's trainer with its own output and work folders (``ROOT/rank<r>/``), trains, and records in
``ROOT/rank<r>.json`` a digest of every tensor of its training state (networks, EMA copies, optimisers) before and
after, and the checkpoint folder that ``run`` returned. The test then compares the ranks: identical state after
training, and only rank 0's folders written (rank 1's is never created; both ranks return rank 0's checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch

TRAINERS = {
    "vqgan": ("tumorsynth.training.vqgan", "VQGANTrainConfig"),
    "tavit": ("tumorsynth.training.tavit", "TAViTTrainConfig"),
    "stylegan2": ("tumorsynth.training.stylegan2", "StyleGAN2TrainConfig"),
    "ldm": ("tumorsynth.training.ldm", "LDMTrainConfig"),
}


def digest(trainer) -> dict[str, str]:
    """sha256 of every tensor in the state a resume needs (the ``_resumable`` parts), by name, and the trainer's
    own running figures (``state`` without the per-epoch rows, whose timings differ by rank)."""
    out = {f"state.{k}": repr(v) for k, v in trainer.state.items() if k != "metrics"}
    for part, obj in trainer._resumable().items():
        flat = _tensors(obj.state_dict(), part)
        for name, t in flat.items():
            out[name] = hashlib.sha256(
                t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            ).hexdigest()
    return out


def _tensors(obj, prefix: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _tensors(val, f"{prefix}.{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, val in enumerate(obj) for k, v in _tensors(val, f"{prefix}.{i}").items()}
    return {}


def run_two_ranks(family: str, cfg, data: Path, root: Path, timeout: int = 900) -> list[dict]:
    """Train ``cfg`` on two gloo ranks; return each rank's record (``rank<r>.json``)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(asdict(cfg)))
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")])
        ),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            __file__,
            family,
            str(data),
            str(root),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]


def assert_ranks_agree_and_only_rank_0_wrote(records: list[dict], root: Path) -> None:
    """Identical training state on both ranks, changed by training, and rank 0's
    folders alone written (both ranks return rank 0's checkpoint)."""
    first, second = records
    assert first["world_size"] == second["world_size"] == 2
    assert first["before"] == second["before"]  # DDP starts from rank 0's weights; so does this run's seed
    assert first["after"] == second["after"], sorted(
        k for k in first["after"] if first["after"][k] != second["after"].get(k)
    )[:10]
    changed = [k for k in first["after"] if first["after"][k] != first["before"].get(k)]
    assert len(changed) > len(first["after"]) // 4, "training changed too little to tell the ranks apart"
    assert first["checkpoint"] == second["checkpoint"] and "rank0" in first["checkpoint"]
    assert (root / "rank0" / "work" / "state.pt").is_file() and (root / "rank0" / "work" / "metrics.jsonl").is_file()
    assert not (root / "rank1").exists()  # rank 1 wrote nothing: no state, no metrics, no checkpoint


def main(family: str, data: str, root: str) -> None:
    import importlib

    torch.set_num_threads(1)
    module_name, config_name = TRAINERS[family]
    module = importlib.import_module(module_name)
    root_path = Path(root)
    cfg = getattr(module, config_name).load(root_path / "config.json")
    rank = int(os.environ["RANK"])
    mine = root_path / f"rank{rank}"
    trainer = module.Trainer(
        cfg, Path(data), mine / "out" / family / f"{cfg.name}@{cfg.version}", mine / "work", device="cpu"
    )
    before = digest(trainer)
    result = trainer.run()
    record = {
        "rank": rank,
        "world_size": trainer.world.size,
        "before": before,
        "after": digest(trainer),
        "checkpoint": str(result.entry.path),
        "epochs_logged": len(trainer.state["metrics"]),
    }
    (root_path / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:4])
