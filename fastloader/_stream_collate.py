"""`default_collate` done while a map-style batch is fetched.

torch fetches every sample of a batch, then `default_collate` stacks them: 64 decoded
images live at once, each written to fresh memory and read back from memory by the stack.
Here each large array / tensor of a sample is copied into its batch tensor as soon as the
sample is fetched, while it is still in cache, and the sample can be freed at once (the
next sample's array then reuses the same, already mapped, memory). The rest of the
samples (labels, strings, small arrays) is collated at the end by torch's own `collate`,
around the filled tensors, so the batch is the one `default_collate` makes.

Used only where that is certain to give torch's batch: the collate_fn is
`default_collate`, its registry has torch's entries for arrays and tensors and none that
would see the samples' containers, the dataset has no `__getitems__` (or is a `Subset` of
one that has none), and every sample has the first one's structure (tuples, lists, dicts,
namedtuples) with arrays / tensors of the same type, dtype and shape. A sample that differs, or a container the dataset still holds
(it may refill it), sends the batch back to torch's way: the samples already copied go to
`default_collate` as views of their rows (same values), so the result or the error is
torch's. An array whose bytes anything else can still reach (an array the dataset keeps,
a view of one, a tensor sharing its storage) is copied at the end, as torch copies it.
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from torch.utils.data import Subset
from torch.utils.data._utils import collate as torch_collate
from torch.utils.data._utils.fetch import _MapDatasetFetcher
from torch.utils.data.dataloader import _DatasetKind

from . import _C, _collate_hook
from ._iterable_fetch import IterableFetcher
from ._storage import storage_users

# Rows smaller than this gain nothing over one stack at the end (they stay in cache anyway).
MIN_ROW_BYTES = 32 << 10
_MAX_DEPTH = 4


def create_fetcher(kind, dataset, auto_collation, collate_fn, drop_last):
    """torch's fetcher, or for a map-style dataset batched by `default_collate` one that
    collates as it fetches, or for an iterable one that can take whole batches one that
    does (`_iterable_fetch`)."""
    if kind == _DatasetKind.Map and auto_collation and collate_fn is torch_collate.default_collate:
        return StreamingMapFetcher(dataset, auto_collation, collate_fn, drop_last)
    if kind == _DatasetKind.Iterable:
        return IterableFetcher(dataset, auto_collation, collate_fn, drop_last)
    return _DatasetKind.create_fetcher(kind, dataset, auto_collation, collate_fn, drop_last)


class _Mismatch(Exception):
    """A sample unlike the batch's first: the batch is collated torch's way."""


def _holders(container, key) -> int:
    value = container[key]
    return sys.getrefcount(value)


def _base_holders(array) -> int:
    base = array.base
    return sys.getrefcount(base)


# What these report for a value only its container holds, a base only its view holds, and
# the storage of a tensor nothing else uses.
_ONLY_CONTAINER = _holders([object()], 0)
_ONLY_VIEW = _base_holders(np.zeros(1)[:])
_ONLY_TENSOR = storage_users(torch.zeros(1))  # None where torch's counter is gone: never private


def _private(value) -> bool:
    """Only this array / tensor reaches its bytes, so nothing can change them before the
    batch is stacked: an array owning them, or viewing arrays nothing else holds, down to
    one owning them or to an immutable bytes object; a tensor on a torch-allocated storage
    nothing else uses."""
    if type(value) is torch.Tensor:
        return (_ONLY_TENSOR is not None and value._base is None and value.untyped_storage().resizable()
                and storage_users(value) == _ONLY_TENSOR)
    while value.base is not None:
        if _base_holders(value) > _ONLY_VIEW:
            return False
        value = value.base
        if type(value) is bytes:
            return True
        if type(value) is not np.ndarray:
            return False
    return True


class _Rows:
    """One large array / tensor position of the samples and the batch tensor it fills.
    It stands for that position in every sample until torch's collate takes the batch."""

    __slots__ = ("is_array", "dtype", "shape", "out", "fd", "offset", "late")

    def __init__(self, leaf, tensor_dtype: torch.dtype, n: int):
        self.is_array = type(leaf) is np.ndarray
        self.dtype, self.shape = leaf.dtype, tuple(leaf.shape)
        self.out, self.fd, self.offset = _collate_hook.batch_tensor((n, *self.shape), tensor_dtype)
        self.late: dict[int, object] = {}  # row -> sample value, copied in finish()

    @staticmethod
    def plan(leaf, n: int) -> _Rows | None:
        if leaf.nbytes < MIN_ROW_BYTES:
            return None
        if type(leaf) is np.ndarray:
            if leaf.dtype.kind not in "biufc" or not leaf.flags.c_contiguous:
                return None
            try:
                tensor_dtype = torch.as_tensor(leaf).dtype  # no copy
            except (TypeError, ValueError, RuntimeError):  # byte-swapped, or a dtype torch lacks
                return None
            return _Rows(leaf, tensor_dtype, n)
        t: torch.Tensor = leaf
        if (t.device.type != "cpu" or t.layout != torch.strided or t.is_nested or t.is_quantized
                or t.requires_grad or t.is_conj() or t.is_neg() or not t.is_contiguous()):
            return None
        return _Rows(t, t.dtype, n)

    def take(self, container, key, row: int) -> _Rows:
        shared = _holders(container, key) > _ONLY_CONTAINER
        value = container[key]
        self._check(value)
        if shared or not _private(value) or not _C.write_row(self.out, row, value, self.is_array, self.fd, self.offset):
            self.late[row] = value
        return self

    def _check(self, value) -> None:
        if type(value) is not (np.ndarray if self.is_array else torch.Tensor):
            raise _Mismatch
        if value.dtype != self.dtype or tuple(value.shape) != self.shape:
            raise _Mismatch

    def finish(self) -> None:
        for row, value in self.late.items():
            self._check(value)  # the dataset may have changed what it kept
            if _C.write_row(self.out, row, value, self.is_array, self.fd, self.offset):
                continue
            if not self.is_array:
                raise _Mismatch  # a tensor autograd must see, a lazy conjugate, ...: torch's way
            self.out[row].copy_(torch.as_tensor(value))  # a strided array

    def types(self) -> set:
        return set()

    def restore(self, _skeleton, row: int):
        if row in self.late:
            return self.late[row]
        return self.out[row].numpy() if self.is_array else self.out[row]


class _Seq:
    """A tuple, list or namedtuple position; nodes[k] None: element k is taken as it is."""

    __slots__ = ("type", "nodes", "make")

    def __init__(self, kind: type, nodes: list):
        self.type, self.nodes = kind, nodes
        self.make = tuple if kind is tuple else list if kind is list else kind._make

    def _sample(self, container, key):
        """container[key], a container of this position's type and size only it holds."""
        if _holders(container, key) > _ONLY_CONTAINER:
            raise _Mismatch  # the dataset may change it before torch would collate it
        sample = container[key]
        if type(sample) is not self.type or len(sample) != len(self.nodes):
            raise _Mismatch
        return sample

    def take(self, container, key, row: int):
        sample = self._sample(container, key)
        return self.make([n.take(sample, k, row) if n is not None else sample[k] for k, n in enumerate(self.nodes)])

    def restore(self, skeleton, row: int):
        return self.make([n.restore(s, row) if n is not None else s for s, n in zip(skeleton, self.nodes)])

    def finish(self) -> None:
        for n in self.nodes:
            if n is not None:
                n.finish()

    def types(self) -> set:
        """The container types of the samples, which torch's collate looks up."""
        return {self.type}.union(*(n.types() for n in self.nodes if n is not None))


class _Dict(_Seq):
    """A dict position, its keys in the first sample's order."""

    __slots__ = ("keys",)

    def __init__(self, keys: list, nodes: list):
        self.type, self.nodes, self.make, self.keys = dict, nodes, dict, keys

    def take(self, container, key, row: int):
        sample = self._sample(container, key)
        try:
            return {k: n.take(sample, k, row) if n is not None else sample[k] for k, n in zip(self.keys, self.nodes)}
        except KeyError:
            raise _Mismatch from None

    def restore(self, skeleton, row: int):
        return {k: n.restore(skeleton[k], row) if n is not None else skeleton[k] for k, n in zip(self.keys, self.nodes)}


def _plan(value, n: int, depth: int = 0):
    """The node that streams value's large arrays / tensors, or None (taken as it is)."""
    kind = type(value)
    if kind is np.ndarray or kind is torch.Tensor:
        return _Rows.plan(value, n)
    if depth >= _MAX_DEPTH:
        return None
    if kind is tuple or kind is list or (isinstance(value, tuple) and hasattr(value, "_fields") and hasattr(kind, "_make")):
        nodes = [_plan(v, n, depth + 1) for v in value]
        return _Seq(kind, nodes) if any(node is not None for node in nodes) else None
    if kind is dict:
        nodes = [_plan(v, n, depth + 1) for v in value.values()]
        return _Dict(list(value), nodes) if any(node is not None for node in nodes) else None
    return None


def _filled(batch, *, collate_fn_map=None):
    return batch[0].out


def _streaming_on() -> bool:
    registry = torch_collate.default_collate_fn_map
    return (
        _collate_hook._fetching()
        and _collate_hook._compiled_ok()
        and registry.get(np.ndarray) is torch_collate.collate_numpy_array_fn
        and registry.get(torch.Tensor) is _collate_hook.collate_tensor_fn
    )


def _plan_or_none(sample, n: int):
    try:
        plan = _plan(sample, n)
    except Exception:  # an unusual array or tensor (a nested one, ...), or no memory for n rows
        return None
    return plan if plan is not None and _collate_hook.registry_leaves_alone(plan.types()) else None


_TAKEN = object()  # a sample already taken apart into its skeleton


def _one_by_one(dataset):
    """How torch's fetch gets a batch's samples where it gets them one at a time:
    `dataset[i]` (no `__getitems__`), or for a `Subset` of such a dataset
    `dataset.dataset[dataset.indices[i]]` (what `Subset.__getitems__` then does); None
    where a `__getitems__` makes the whole batch."""
    if not getattr(dataset, "__getitems__", None):
        return lambda i: dataset[i]
    if type(dataset) is Subset and not callable(getattr(dataset.dataset, "__getitems__", None)):
        inner, positions = dataset.dataset, dataset.indices
        return lambda i: inner[positions[i]]
    return None


class StreamingMapFetcher(_MapDatasetFetcher):
    def fetch(self, possibly_batched_index):
        index = possibly_batched_index
        get = _one_by_one(self.dataset) if _streaming_on() else None
        try:
            n = len(index) if get is not None else 0
        except Exception:  # no len(), or a broken one: torch's way (which only iterates it)
            n = 0
        if not isinstance(n, int) or n <= 0:
            return super().fetch(index)
        indices = iter(index)
        for first in indices:
            break
        else:
            return self.collate_fn([])
        holder = [get(first)]  # the sample being taken apart, held only here
        plan = _plan_or_none(holder[0], n)
        if plan is None:
            data = [holder.pop()]
            data += [get(i) for i in indices]  # a list comprehension, as torch's
            return _collate_hook.collate_batch(data)  # self.collate_fn: default_collate
        skeletons = []
        try:
            skeletons.append(_guarded(plan.take, holder, 0, 0))
            holder[0] = _TAKEN  # freed before the next sample is made
            for i in indices:
                holder[0] = get(i)
                if len(skeletons) == n:
                    raise _Mismatch  # more indices than len() said
                skeletons.append(_guarded(plan.take, holder, 0, len(skeletons)))
                holder[0] = _TAKEN
            if len(skeletons) != n:
                raise _Mismatch
            _guarded(plan.finish)
        except _Mismatch:
            data = [plan.restore(s, row) for row, s in enumerate(skeletons)]
            if holder[0] is not _TAKEN:
                data.append(holder[0])
            holder.clear()
            data += [get(i) for i in indices]
            return _collate_hook.collate_batch(data)  # self.collate_fn: default_collate
        return torch_collate.collate(skeletons, collate_fn_map={**torch_collate.default_collate_fn_map, _Rows: _filled})


def _guarded(step, *args):
    """A step of the plan; whatever it raises is a mismatch (the dataset is not called in
    it, so none of the dataset's own errors is caught)."""
    try:
        return step(*args)
    except _Mismatch:
        raise
    except Exception as e:  # an odd value (a nested tensor's shape, a negative stride, ...)
        raise _Mismatch from e
