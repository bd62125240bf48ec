"""Batching tokenized samples for `torch.compile`: padding to a few fixed shapes, or
packing several sequences per row.

A sample is a dict with a 1-D `input_ids` (and optionally `token_type_ids`, per-token
`labels` of the same length, or any other value, collated as torch does)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import default_collate

from .. import _C

IGNORE_INDEX = -100  # the label of padding, as torch's cross_entropy ignores by default


def _as_ids(sample: dict, key: str = "input_ids") -> torch.Tensor:
    if not isinstance(sample, dict) or key not in sample:
        raise TypeError(f"a sample must be a dict with {key!r}, got {type(sample).__name__}")
    ids = torch.as_tensor(sample[key])
    if ids.dim() != 1:
        raise ValueError(f"{key} must be 1-D, got shape {tuple(ids.shape)}")
    return ids.long()


def _token_aligned(samples: list[dict], key: str, lengths: list[int]) -> bool:
    return all(torch.as_tensor(s[key]).dim() == 1 and len(s[key]) == n for s, n in zip(samples, lengths))


def _token_values(values) -> torch.Tensor:
    """Per-token values as a tensor: floats as they are (soft labels), integers as int64
    (what the losses take, and room for the -100 of padding)."""
    t = torch.as_tensor(values)
    return t if t.is_floating_point() else t.long()


def padding_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(N, width) bool: True on the first lengths[i] places of row i."""
    return torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)


def scatter_padded(flat: torch.Tensor, mask: torch.Tensor, fill: int) -> torch.Tensor:
    """The ragged values `flat` laid into the True places of `mask`, `fill` elsewhere."""
    out = torch.full(mask.shape, fill, dtype=flat.dtype)
    out[mask] = flat
    return out


class _PaddingStats:
    def __init__(self) -> None:
        self.tokens = 0
        self.slots = 0
        self.padding_fraction = 0.0  # of the last batch

    def count(self, tokens: int, slots: int) -> None:
        self.tokens += tokens
        self.slots += slots
        self.padding_fraction = 1 - tokens / slots if slots else 0.0

    @property
    def total_padding_fraction(self) -> float:
        """Padding over every batch collated so far."""
        return 1 - self.tokens / self.slots if self.slots else 0.0


class PadCollator(_PaddingStats):
    """Pads `input_ids` (with `pad_token_id`), `token_type_ids` (0) and per-token `labels`
    (-100; float labels keep their dtype, integer ones become int64) on the right, and
    adds `attention_mask` (a sample's own is replaced).

    `pad_to="longest"` pads to the longest sample of the batch; an int pads every batch to
    that length; `buckets=(64, 128, 256)` pads to the smallest bucket that holds the
    longest, so a compiled model sees at most len(buckets) shapes."""

    def __init__(self, pad_to: str | int = "longest", buckets: Sequence[int] | None = None,
                 pad_token_id: int = 0) -> None:
        super().__init__()
        if buckets is not None:
            if not buckets or any(int(b) < 1 for b in buckets):
                raise ValueError(f"buckets must be positive lengths, got {buckets!r}")
            self.buckets = sorted(int(b) for b in buckets)
        else:
            self.buckets = None
            if pad_to != "longest" and not (isinstance(pad_to, int) and pad_to > 0):
                raise ValueError(f"pad_to must be 'longest' or a positive int, got {pad_to!r}")
        self.pad_to = pad_to
        self.pad_token_id = pad_token_id

    def _width(self, longest: int) -> int:
        if self.buckets is not None:
            for b in self.buckets:
                if longest <= b:
                    return b
            raise ValueError(f"a sample has {longest} tokens, more than the largest bucket ({self.buckets[-1]}): "
                             "truncate when tokenizing")
        if self.pad_to == "longest":
            return longest
        if longest > self.pad_to:
            raise ValueError(f"a sample has {longest} tokens, more than pad_to={self.pad_to}")
        return int(self.pad_to)

    def __call__(self, samples: list[dict]) -> dict[str, Any]:
        ids = [_as_ids(s) for s in samples]
        lengths = [len(x) for x in ids]
        width = self._width(max(lengths, default=0))
        n = len(ids)
        mask = padding_mask(torch.tensor(lengths, dtype=torch.int64), width)
        flat = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int64)
        out: dict[str, Any] = {"input_ids": scatter_padded(flat, mask, self.pad_token_id),
                               "attention_mask": mask.long()}
        for key, fill in (("token_type_ids", 0), ("labels", IGNORE_INDEX)):
            if samples and key in samples[0] and _token_aligned(samples, key, lengths):
                out[key] = scatter_padded(torch.cat([_token_values(s[key]) for s in samples]), mask, fill)
        rest = [k for k in (samples[0] if samples else {}) if k not in out]
        if rest:
            out.update(default_collate([{k: s[k] for k in rest} for s in samples]))
        self.count(sum(lengths), n * width)
        return out


class PackCollator(_PaddingStats):
    """Packs the batch's sequences into rows of `max_tokens` (first-fit decreasing, in
    C++): `input_ids`, `position_ids` (restarting at each sequence), `attention_mask`,
    `sequence_ids` (which sequence of the batch each token belongs to; -1 on padding),
    `cu_seqlens` / `max_seqlen` (the sequences' boundaries in the packed tokens, the
    layout of variable-length attention kernels) and `sequence_index` (the sample each
    packed sequence came from). Other per-token values (`token_type_ids`, `labels`) are
    packed alongside (0, or -100 for labels, on padding); per-sequence values (a class
    label) are collated in packed order; a sample's own values under the names above
    (`attention_mask`, `position_ids`...) are replaced by the packed ones. `token_keys`
    names the keys that may hold per-token values (packed when their length matches the ids)."""

    def __init__(self, max_tokens: int, pad_token_id: int = 0,
                 token_keys: Sequence[str] = ("token_type_ids", "labels")) -> None:
        super().__init__()
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
        self.max_tokens = max_tokens
        self.pad_token_id = pad_token_id
        self.token_keys = tuple(token_keys)

    def __call__(self, samples: list[dict]) -> dict[str, Any]:
        ids = [_as_ids(s) for s in samples]
        lengths = torch.tensor([len(x) for x in ids], dtype=torch.int64)
        if len(ids) and int(lengths.max()) > self.max_tokens:
            raise ValueError(f"a sample has {int(lengths.max())} tokens, more than max_tokens={self.max_tokens}: "
                             "truncate when tokenizing")
        rows = _C.pack_first_fit_decreasing(lengths, self.max_tokens)
        n_rows = int(rows.max()) + 1 if len(ids) else 0
        order = torch.argsort(rows * (len(ids) + 1) + torch.arange(len(ids)))  # by row, then sample order
        width = self.max_tokens
        input_ids = torch.full((n_rows, width), self.pad_token_id, dtype=torch.int64)
        position_ids = torch.zeros((n_rows, width), dtype=torch.int64)
        sequence_ids = torch.full((n_rows, width), -1, dtype=torch.int64)
        keys = [k for k in (samples[0] if samples else {}) if k != "input_ids"]
        aligned = {}
        for k in self.token_keys:
            if k in keys and _token_aligned(samples, k, lengths.tolist()):
                dtype = _token_values(samples[0][k]).dtype
                aligned[k] = torch.full((n_rows, width), IGNORE_INDEX if k == "labels" else 0, dtype=dtype)
        fill = [0] * n_rows
        for packed, i in enumerate(order.tolist()):
            r, n, at = int(rows[i]), int(lengths[i]), fill[int(rows[i])]
            input_ids[r, at:at + n] = ids[i]
            position_ids[r, at:at + n] = torch.arange(n)
            sequence_ids[r, at:at + n] = packed
            for k, values in aligned.items():
                values[r, at:at + n] = torch.as_tensor(samples[i][k])
            fill[r] += n
        packed_lengths = lengths[order]
        cu = torch.zeros(len(ids) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(packed_lengths, 0)
        out: dict[str, Any] = {
            "input_ids": input_ids, "position_ids": position_ids, "attention_mask": (sequence_ids >= 0).long(),
            "sequence_ids": sequence_ids, "cu_seqlens": cu,
            "max_seqlen": int(packed_lengths.max()) if len(ids) else 0, "sequence_index": order,
        }
        out.update(aligned)  # token-aligned values packed like the ids (labels: -100 on padding)
        rest = [k for k in keys if k not in out]  # a sample's own attention_mask... is recomputed
        if rest:  # per-sequence values, in packed order
            out.update(default_collate([{k: samples[i][k] for k in rest} for i in order.tolist()]))
        self.count(int(lengths.sum()), n_rows * width)
        return out
