"""default_collate inside fastloader's fetches (stack by memcpy, numbers straight into a
tensor) against torch's own default_collate, case by case: same tensors, same errors."""
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

import fastloader
from fastloader import _C, _collate_hook, _shm


def ours(batch, collate=default_collate):
    was = _collate_hook.mark_fetching(True)
    try:
        return collate(batch)
    finally:
        _collate_hook.mark_fetching(was)


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape
        assert a.stride() == b.stride() and a.requires_grad == b.requires_grad
        assert torch.equal(a.resolve_conj(), b.resolve_conj())
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    else:
        assert a == b


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) * 100).to(dtype)


CASES = {
    "float tensors": lambda: [rand(32, seed=i) for i in range(64)],
    "int64 and bool": lambda: [(rand(3, 2, dtype=torch.int64, seed=i), rand(4, seed=i) > 50) for i in range(9)],
    "complex": lambda: [torch.complex(rand(5, seed=i), rand(5, seed=i + 1)) for i in range(4)],
    "scalars": lambda: [torch.tensor(float(i)) for i in range(7)],
    "empty": lambda: [torch.zeros(0, 3) for _ in range(5)],
    "non-contiguous": lambda: [rand(4, 6, seed=i).t() for i in range(5)],
    "channels_last": lambda: [rand(1, 3, 4, 4, seed=i).contiguous(memory_format=torch.channels_last)[0]
                              for i in range(3)],
    "mixed dtypes": lambda: [rand(3), rand(3, dtype=torch.float64)],
    "conj": lambda: [torch.complex(rand(3, seed=i), rand(3)).conj() for i in range(3)],
    "parameters": lambda: [torch.nn.Parameter(rand(3, seed=i), requires_grad=False) for i in range(3)],
    "ints": lambda: [(i, -i * 7919, 2**62 + i) for i in range(10)],
    "bools": lambda: [True, False, True],
    "ints then a float": lambda: [1, 2, 3.5],
    "floats": lambda: [0.5 * i for i in range(10)],
    "floats then an int": lambda: [0.5, 2],
    "numpy": lambda: [np.full((2, 3), i, dtype=np.int16) for i in range(4)],
    "dicts": lambda: [{"x": rand(2, seed=i), "y": i, "z": float(i)} for i in range(6)],
    "large": lambda: [rand(64, 64, 64, seed=i) for i in range(5)],  # over 1 MB: a pooled block
    "large, odd rows": lambda: [rand(70001, seed=i).to(torch.uint8) for i in range(64)],  # streamed, unaligned
    "many items": lambda: [rand(4, seed=i) for i in range(2500)],  # a worker's pwritev takes 1024 at a time
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_as_torch(case):
    assert_same(ours(CASES[case]()), default_collate(CASES[case]()))


@pytest.fixture
def in_worker_arena(monkeypatch):
    """Collation as in a worker process: tensors stacked into its shared-memory arena."""
    arena = _shm.WorkerArena(0)
    monkeypatch.setattr(_collate_hook, "_process_arena", arena)
    yield arena
    arena.abandon_batch()


def torch_in_a_worker(batch):
    """torch's default_collate as it runs in one of torch's workers (stacking into a
    shared-memory tensor of the first item's dtype)."""
    from torch.utils.data._utils import collate, worker

    fn_map = {**collate.default_collate_fn_map, **_collate_hook._torch_fns}
    was, worker._worker_info = worker._worker_info, object()  # get_worker_info() is not None
    try:
        return collate.collate(batch, collate_fn_map=fn_map)
    finally:
        worker._worker_info = was


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_as_torch_in_a_worker_arena(case, monkeypatch):
    if case == "conj":  # torch's worker fails to make its shared storage ("DispatchKey Conjugate
        with pytest.raises(RuntimeError, match="Conjugate"):  # doesn't correspond to a device");
            torch_in_a_worker(CASES[case]())
        theirs = default_collate(CASES[case]())  # ours gives what torch gives elsewhere
    else:
        theirs = torch_in_a_worker(CASES[case]())
    arena = _shm.WorkerArena(0)
    monkeypatch.setattr(_collate_hook, "_process_arena", arena)
    try:
        assert_same(ours(CASES[case]()), theirs)
    finally:
        arena.abandon_batch()


def _shmem_resident() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("RssShmem:"))


def test_a_worker_writes_its_batch_through_the_segment_fd_unmapped(in_worker_arena):
    """A stacked batch goes into the segment with pwritev: none of its pages is mapped
    (faulted, counted in RSS) in the worker; reading it there still gives the batch."""
    batch = [rand(100, 100, 10, seed=i) for i in range(16)]  # 6.4 MB
    before = _shmem_resident()
    stacked = ours(batch)
    assert _shmem_resident() - before < 256 << 10
    assert in_worker_arena._find(stacked) is not None  # it lives in the arena
    assert torch.equal(stacked, torch.stack(batch))
    assert _shmem_resident() - before >= 6 << 20  # now read, so mapped


def test_autograd_is_recorded_as_torch_does():
    batch = [rand(3, seed=i).requires_grad_() for i in range(4)]
    fast = ours(batch)
    assert fast.requires_grad and fast.grad_fn is not None
    fast.sum().backward()
    assert all(torch.equal(t.grad, torch.ones(3)) for t in batch)
    with torch.no_grad():
        assert_same(ours(batch), default_collate(batch))


def test_zero_tensors_and_forward_mode_tangents_as_torch():
    zeros = [torch._efficientzerotensor(3) for _ in range(4)]
    assert_same(ours(zeros), default_collate(zeros))
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        duals = [fwAD.make_dual(rand(3, seed=i), torch.full((3,), float(i))) for i in range(4)]
        mine, theirs = fwAD.unpack_dual(ours(duals)), fwAD.unpack_dual(default_collate(duals))
        assert torch.equal(mine.primal, theirs.primal) and torch.equal(mine.tangent, theirs.tangent)


def test_modes_see_torch_calls():
    """A default device (a torch function mode) makes the numbers' tensors there."""
    batch = [(rand(3, seed=i), i, float(i)) for i in range(4)]
    with torch.device("meta"):
        mine, theirs = ours(batch), default_collate(batch)
    assert [t.device.type for t in mine] == [t.device.type for t in theirs] == ["cpu", "meta", "meta"]


def test_empty_lists_as_torch():
    for kind in (int, float):
        fn = torch.utils.data._utils.collate.default_collate_fn_map[kind]
        was = _collate_hook.mark_fetching(True)
        try:
            assert_same(fn([]), torch.tensor([], dtype=torch.float64 if kind is float else None))
        finally:
            _collate_hook.mark_fetching(was)


@pytest.mark.parametrize("batch", [
    [torch.zeros(3), torch.zeros(4)],
    [torch.zeros(3), torch.zeros(3, device="meta")],
    [2**63, 1],
])
def test_same_errors_as_torch(batch):
    with pytest.raises(Exception) as theirs:
        default_collate(batch)
    with pytest.raises(type(theirs.value)) as mine:
        ours(batch)
    assert str(mine.value) == str(theirs.value)


def test_fast_paths_take_the_plain_cases_only():
    plain = [rand(2, 3, seed=i) for i in range(4)]
    assert torch.equal(_C.stack_plain(plain), torch.stack(plain))
    out = torch.empty(4, 2, 3)
    assert _C.stack_plain(tuple(plain), out) is not None and torch.equal(out, torch.stack(plain))
    assert _C.stack_plain(plain, torch.empty(4, 6)) is None  # out of another shape
    assert _C.stack_plain([plain[0], plain[1].t()]) is None
    assert _C.stack_plain([plain[0], torch.nn.Parameter(plain[1])]) is None
    assert _C.stack_plain([plain[0], plain[1].double()]) is None
    with pytest.raises(ValueError, match="needs the tensor"):
        _C.stack_plain(plain, None, 0, 0)
    with pytest.raises(OSError):  # not a file
        _C.stack_plain(plain, torch.empty(4, 2, 3), -5 + 2**31 - 1, 0)
    assert torch.equal(_C.tensor_of_numbers([1, -2, 2**63 - 1], False), torch.tensor([1, -2, 2**63 - 1]))
    assert _C.tensor_of_numbers([1, True], False) is None and _C.tensor_of_numbers([2**63], False) is None
    assert _C.tensor_of_numbers([1.5, 2], True) is None


def _large_batch(seed: int, n: int = 8):
    return [rand(256, 256, 2, seed=seed + i) for i in range(n)]  # 512 KB each


def test_large_batches_reuse_a_freed_batch_block():
    """Batches of 1 MB or more go into pooled blocks: a freed batch's block serves the next
    batch of its size; one still viewed (here by numpy) is never handed out."""
    first = _C.stack_plain(_large_batch(0))
    assert torch.equal(first, torch.stack(_large_batch(0)))
    ptr = first.data_ptr()
    del first
    assert _C.batch_pool_kept_bytes() >= 4 << 20  # the newest block is the last let go
    second = _C.stack_plain(_large_batch(1))
    assert second.data_ptr() == ptr and torch.equal(second, torch.stack(_large_batch(1)))
    view = second.numpy()
    del second
    third = _C.stack_plain(_large_batch(2))
    assert third.data_ptr() != ptr and torch.equal(torch.from_numpy(view), torch.stack(_large_batch(1)))
    third.resize_(20, 256, 256, 2)  # still an ordinary, resizable tensor
    third[19] = 1
    assert torch.equal(third[:8], torch.stack(_large_batch(2))) and bool((third[19] == 1).all())


def test_a_slightly_smaller_batch_reuses_a_block():
    eight = _C.stack_plain(_large_batch(0, n=16))  # 8 MB
    ptr = eight.data_ptr()
    del eight
    seven = _C.stack_plain(_large_batch(0, n=14))  # 7 MB: an 8 MB block is at most 1/4 more
    assert seven.data_ptr() == ptr and torch.equal(seven, torch.stack(_large_batch(0, n=14)))


def test_the_batch_pool_keeps_a_bounded_amount():
    """64 MB, or two blocks of the size given back last: larger batches are let go once
    the sizes drop again."""
    batches = [_C.stack_plain(_large_batch(0, n=32)) for _ in range(8)]  # 16 MB each
    del batches
    assert 32 << 20 <= _C.batch_pool_kept_bytes() <= 64 << 20
    large = _C.stack_plain(_large_batch(0, n=140))  # 70 MB
    del large
    assert _C.batch_pool_kept_bytes() >= 70 << 20  # kept for the next such batch
    small = _C.stack_plain(_large_batch(0, n=8))  # then a 4 MB batch given back
    del small
    assert _C.batch_pool_kept_bytes() <= 64 << 20


def test_torch_dataloader_keeps_torch_functions(monkeypatch):
    """Outside fastloader's fetches the hook hands every call to torch unchanged."""
    called = []
    monkeypatch.setattr(_C, "stack_plain", lambda *a: called.append(a))
    monkeypatch.setattr(_C, "tensor_of_numbers", lambda *a: called.append(a))
    data = [(rand(3, seed=i), i, float(i)) for i in range(8)]
    list(torch.utils.data.DataLoader(data, batch_size=4))
    assert called == []
    list(fastloader.DataLoader(data, batch_size=4))
    assert called


class _Pair(tuple):
    pass


_TUPLE_CASES = {
    "pairs": lambda: [(rand(4, seed=i), i, float(i)) for i in range(9)],
    "nested": lambda: [((rand(2, seed=i), i), [i, i + 1]) for i in range(5)],
    "empty tuples": lambda: [() for _ in range(3)],
    "one sample": lambda: [(rand(3), 7)],
    "lengths differ": lambda: [(1, 2), (3,)],
    "a list among tuples": lambda: [(1, 2), [3, 4]],
    "tuple subclass": lambda: [_Pair((i, i)) for i in range(3)],
    "subclass after a tuple": lambda: [(1, 2), _Pair((3, 4))],
    "tensors then a string": lambda: [(rand(2), 1), ("a", 2)],
}


@pytest.mark.parametrize("case", sorted(_TUPLE_CASES))
def test_collate_batch_is_default_collate(case):
    """The fetch's collate_batch (plain tuples transposed in C++) against torch's
    default_collate: same result or same error."""
    try:
        theirs = default_collate(_TUPLE_CASES[case]())
    except Exception as e:
        with pytest.raises(type(e)) as mine:
            _collate_in_fetch(_TUPLE_CASES[case]())
        assert str(mine.value) == str(e)
        return
    assert_same(_collate_in_fetch(_TUPLE_CASES[case]()), theirs)


def _collate_in_fetch(batch):
    return ours(batch, _collate_hook.collate_batch)


def test_collate_batch_lets_a_registry_entry_for_tuples_see_them(monkeypatch):
    from torch.utils.data._utils import collate as torch_collate

    seen = []
    monkeypatch.setitem(torch_collate.default_collate_fn_map, tuple,
                        lambda batch, *, collate_fn_map: seen.append(batch) or "mine")
    batch = [(1, 2), (3, 4)]
    assert _collate_in_fetch(batch) == "mine" and seen == [batch]


def test_transpose_tuples_is_zip_for_plain_tuples_only():
    batch = [(i, str(i), None) for i in range(300)]
    assert _C.transpose_tuples(batch) == list(zip(*batch))
    assert _C.transpose_tuples([(), ()]) == []
    for odd in ([], [(1, 2), (3,)], [(1,), [2]], [_Pair((1,))], [(1,), _Pair((2,))], ((1,), (2,)), "ab"):
        assert _C.transpose_tuples(odd) is None
