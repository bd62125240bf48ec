"""What fastloader.DataLoader adds to torch's: stats(), device prefetch, thread workers
driving the compiled image pipeline."""
from __future__ import annotations

import os
import time
import warnings

import pytest
import torch
import torch.utils.data as tud

import fastloader

from _loader_data import RichDataset, SquareDataset, assert_same


@pytest.mark.parametrize("num_workers,worker_type", [(0, "process"), (2, "process"), (2, "thread")])
def test_stats_count_the_pass(num_workers, worker_type):
    loader = fastloader.DataLoader(SquareDataset(40), batch_size=4, num_workers=num_workers,
                                   worker_type=worker_type)
    assert loader.stats() == {}
    for _ in loader:
        pass
    s = loader.stats()  # kept after the iterator is gone
    assert s["batches"] == 10 and s["workers"] == num_workers
    assert s["time_to_first_batch_s"] > 0 and s["wait_s"] >= 0 and s["fetch_s"] > 0
    if num_workers:
        assert sum(s["batches_per_worker"].values()) == 10
        assert s["worker_type"] == worker_type


def test_device_cpu_prefetch_gives_the_same_batches_and_state():
    ds = RichDataset(random_draws=False)
    plain = list(fastloader.DataLoader(ds, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(1)))
    loader = fastloader.DataLoader(ds, batch_size=5, shuffle=True, num_workers=2, device="cpu",
                                   generator=torch.Generator().manual_seed(1))
    it = iter(loader)
    got = [next(it) for _ in range(4)]
    state = loader.state_dict()  # the position the user saw, not the prefetch's
    assert state["yielded_prefix"] == 4
    got += list(it)
    assert_same(got, plain)
    resumed = fastloader.DataLoader(ds, batch_size=5, shuffle=True, device="cpu",
                                    generator=torch.Generator().manual_seed(1))
    resumed.load_state_dict(state)
    assert_same(list(resumed), plain[4:])


def test_cuda_device_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no CUDA device"):
        fastloader.DataLoader(SquareDataset(), device="cuda")


def test_pin_memory_without_accelerator_warns_like_torch():
    def warned(cls):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            out = list(cls(SquareDataset(8), batch_size=4, pin_memory=True))
        return [str(x.message) for x in w], out

    ours, theirs = warned(fastloader.DataLoader), warned(tud.DataLoader)
    assert ours[0] == theirs[0]
    assert_same(ours[1], theirs[1])


def test_thread_workers_drive_the_image_pipeline(photos):
    from PIL import Image

    from _images import EncodedImages, encode_jpeg
    from fastloader.vision import CenterCrop, ImagePipeline, Resize, ToDtype

    datas = [encode_jpeg(Image.fromarray(photos[k]).convert("RGB"), quality=90) for k in sorted(photos)][:6] * 2
    pipe = ImagePipeline([Resize(72), CenterCrop(64), ToDtype(torch.float32, scale=True)], num_threads=1)
    loader = fastloader.DataLoader(EncodedImages(datas), batch_size=4, num_workers=2, worker_type="thread",
                                   collate_fn=pipe)
    batches = list(loader)
    assert [tuple(b.shape) for b in batches] == [(4, 3, 64, 64)] * 3
    ref = [pipe(datas[i:i + 4]) for i in range(0, 12, 4)]
    assert all(torch.equal(a, b) for a, b in zip(batches, ref))


def test_loader_benchmark_measures_both(capsys):
    from fastloader.bench import loader as bench

    rows = bench.run(repeats=1, ttfb_repeats=1, datasets=("tensors",), workers=(0,))
    out = capsys.readouterr().out
    assert "torch b/s" in out and "fl b/s" in out
    (row,) = rows
    for impl in ("torch", "fastloader"):
        assert row[impl]["batches_per_s"] > 0 and row[impl]["ttfb_ms"] > 0 and row[impl]["peak_rss_mb"] > 0


def test_loader_benchmark_finds_the_whole_process_tree(monkeypatch):
    """The RSS watcher's walk of the tree's own /proc entries finds what a scan of all of
    /proc finds (its fallback): a child and a grandchild (a worker's own subprocess)."""
    import subprocess
    import sys

    from fastloader.bench import loader as bench

    code = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import time; time.sleep(30)'])"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(200):  # until the grandchild exists
            grandchildren = bench._all_children().get(child.pid, [])
            if grandchildren:
                break
            time.sleep(0.05)
        assert len(grandchildren) == 1
        assert bench._kernel_lists_children()
        assert sorted(bench._tree_pids(child.pid)) == sorted([child.pid, *grandchildren])
        assert {child.pid, *grandchildren} <= set(bench._tree_pids(os.getpid()))
        monkeypatch.setattr(bench, "_kernel_lists_children", lambda: False)
        assert sorted(bench._tree_pids(child.pid)) == sorted([child.pid, *grandchildren])
        assert bench._tree_rss(child.pid) > 0
    finally:
        for pid in bench._all_children().get(child.pid, []):
            os.kill(pid, 9)
        child.kill()
        child.wait()


def test_shard_benchmark_counts_the_cpu_of_the_whole_tree_ended_processes_included():
    """_tree_cpu: a process's own CPU time, its live children's, and that of children it
    has reaped (a DataLoader joins its workers when the epoch ends), each once."""
    import subprocess
    import sys

    from fastloader.bench import loader as bench

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"
    code = (f"import subprocess, sys, time; subprocess.run([sys.executable, '-c', {burn!r}]); "
            f"exec({burn!r}); print('done', flush=True); time.sleep(30)")  # 0.4 s each
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "done"  # the grandchild has ended and been reaped
        assert not bench._all_children().get(child.pid)
        assert 0.78 <= bench._tree_cpu(child.pid) <= 0.8 + 0.4  # + two interpreters' start-up
        assert bench._tree_cpu(os.getpid()) >= bench._tree_cpu(child.pid)
    finally:
        child.kill()
        child.wait()


class _BlobDataset(tud.Dataset):
    """Samples with large and small bytes (as shard readers yield) and a tensor."""

    def __len__(self):
        return 40

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        big = torch.randint(0, 256, (40_000 + 997 * i,), dtype=torch.uint8, generator=g).numpy().tobytes()
        return {"big": big, "small": big[:100], "t": torch.full((3,), i), "nested": [(big[::7], i)]}


@pytest.mark.parametrize("batch_size", [None, 4])
def test_large_bytes_cross_from_process_workers_unchanged(batch_size):
    collate = (lambda b: b) if batch_size else None
    kwargs = dict(batch_size=batch_size, num_workers=2, collate_fn=collate)
    ours = list(fastloader.DataLoader(_BlobDataset(), **kwargs))
    theirs = list(tud.DataLoader(_BlobDataset(), **kwargs))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        for x, y in zip(a if batch_size else [a], b if batch_size else [b]):
            assert type(x["big"]) is bytes and x["big"] == y["big"] and x["small"] == y["small"]
            assert torch.equal(x["t"], y["t"]) and x["nested"] == y["nested"]
