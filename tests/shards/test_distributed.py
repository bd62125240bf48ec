"""Under torch.distributed, ranks come from the process group and a loader's state_dict()
gathers every rank's position, so one rank's checkpoint resumes the whole run elastically."""
from __future__ import annotations

import torch
import torch.multiprocessing as mp

import fastloader

from _dist_run import _keys_of, run_rank
from _shard_data import keys, make_samples, write_with_webdataset


def test_gathered_state_resumes_on_another_world_size(tmp_path):
    samples = make_samples(90, seed=9)
    paths = write_with_webdataset(tmp_path / "shards", samples, per_shard=25)
    mp.spawn(run_rank, args=(2, str(tmp_path / "init"), paths, str(tmp_path)), nprocs=2, join=True)
    saved = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    delivered = saved[0]["delivered"] + saved[1]["delivered"]
    assert len(delivered) == 25
    state = saved[0]["state"]
    assert state["dataset"]["ranks"] == [0, 1] and state["dataset"] == saved[1]["state"]["dataset"]
    ds = fastloader.WebDataset(paths, shuffle=True, seed=4, rank=0, world_size=1)
    loader = fastloader.DataLoader(ds, batch_size=5, num_workers=2, collate_fn=_keys_of)
    loader.load_state_dict(state)
    delivered += [k for b in loader for k in b]
    assert sorted(delivered) == sorted(keys(samples))


def test_the_epoch_is_over_only_where_every_rank_has_ended(tmp_path):
    """Rank 1 has read its share to the end, rank 0 has one sample left: rank 1's
    checkpoint (its loader alone has finished) resumes rank 0's last sample, and delivers
    nothing twice. The dataset was made before init_process_group."""
    from _dist_run import run_rank_unequal

    samples = make_samples(11, seed=3)
    paths = write_with_webdataset(tmp_path / "shards", samples, per_shard=4)
    mp.spawn(run_rank_unequal, args=(2, str(tmp_path / "init"), paths, str(tmp_path)), nprocs=2, join=True)
    saved = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [len(s["delivered"]) for s in saved] == [5, 5]
    state = saved[1]["state"]
    assert state["dataset"]["ranks"] == [0, 1] and not state["finished"]
    delivered = saved[0]["delivered"] + saved[1]["delivered"]
    for rank in range(2):
        ds = fastloader.WebDataset(paths, shuffle=True, seed=6, rank=rank, world_size=2)
        loader = fastloader.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=_keys_of)
        loader.load_state_dict(state)
        delivered += [k for b in loader for k in b]
    assert sorted(delivered) == sorted(keys(samples))
