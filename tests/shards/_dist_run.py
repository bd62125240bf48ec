"""A rank of a 2-process gloo run (started by test_distributed.py with spawn)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

import fastloader


def _keys_of(batch):
    return [s["__key__"] for s in batch]


def run_rank(rank: int, world: int, init_file: str, urls: list[str], out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ds = fastloader.WebDataset(urls, shuffle=True, seed=4)  # rank and world from torch.distributed
        loader = fastloader.DataLoader(ds, batch_size=5, num_workers=1, collate_fn=_keys_of)
        it = iter(loader)
        delivered = [k for _ in range(2 + rank) for k in next(it)]
        state = loader.state_dict()  # a collective: every rank's position is gathered
        torch.save({"delivered": delivered, "state": state}, os.path.join(out_dir, f"rank{rank}.pt"))
        del it
    finally:
        dist.destroy_process_group()


def run_rank_unequal(rank: int, world: int, init_file: str, urls: list[str], out_dir: str) -> None:
    """11 samples over 2 ranks: rank 1 reads its 5 to the end, rank 0 stops after 5 of its
    6. The dataset is made before the process group (it must still gather)."""
    ds = fastloader.WebDataset(urls, shuffle=True, seed=6)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))  # as torchrun sets them
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        loader = fastloader.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=_keys_of)
        it = iter(loader)
        delivered = [k for b in (it if rank == 1 else [next(it) for _ in range(5)]) for k in b]
        state = loader.state_dict()
        torch.save({"delivered": delivered, "state": state}, os.path.join(out_dir, f"rank{rank}.pt"))
        del it
    finally:
        dist.destroy_process_group()
