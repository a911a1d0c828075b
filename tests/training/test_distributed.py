"""``training.distributed.World``'s collectives on two real gloo processes: what every trainer's DDP path relies on."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tumorsynth.training.distributed import World


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        world = World(rank=rank, size=2)
        used, unused = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
        used.grad = torch.full((3,), float(rank + 1))
        if rank == 0:  # a gradient only one rank has counts as zero on the other
            unused.grad = torch.ones(2)
        world.average_gradients([used, unused])
        stats, steps = torch.full((2,), 10.0 * rank), torch.tensor(rank)
        world.average_([stats, steps])
        mine = torch.full((2,), float(rank))
        world.broadcast_([mine])
        record = {
            "agree_one_false": world.all_agree(rank == 0),
            "agree_all_true": world.all_agree(True),
            "used": used.grad.tolist(),
            "unused": unused.grad.tolist(),
            "stats": stats.tolist(),
            "steps": int(steps),
            "broadcast": mine.tolist(),
            "shared": world.share(f"from rank {rank}"),
            "mean": world.mean(float(rank)),
            "shard": [int(b) for b in world.shard(list(range(5)))],
        }
        (Path(out) / f"{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def test_collectives_give_every_rank_the_same_answer(tmp_path):
    mp.spawn(_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2))
    # a branch one rank would skip is skipped by both (else the other would wait in an all-reduce forever)
    assert r0["agree_one_false"] is r1["agree_one_false"] is False
    assert r0["agree_all_true"] is r1["agree_all_true"] is True
    for r in (r0, r1):
        assert r["used"] == [1.5, 1.5, 1.5] and r["unused"] == [0.5, 0.5]
        assert r["stats"] == [5.0, 5.0] and r["broadcast"] == [0.0, 0.0] and r["shared"] == "from rank 0"
        assert r["mean"] == 0.5
    assert (r0["steps"], r1["steps"]) == (0, 1)  # integer counters are left alone
    assert r0["shard"] == [0, 2] and r1["shard"] == [1, 3]  # the same count on each rank; the odd one out dropped


def test_one_process_world_changes_nothing():
    world = World()
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    world.average_gradients([p])
    assert world.all_agree(False) is False and world.all_agree(True) is True
    assert p.grad.tolist() == [1.0, 1.0] and world.mean(3.0) == 3.0 and world.share("x") == "x"
    assert world.shard([1, 2, 3]) == [1, 2, 3]
