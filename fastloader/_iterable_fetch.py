"""torch's fetcher for iterable datasets, taking a batch at once where the iterator can.

An iterator with `take(n)` (fastloader.WebDataset's) gives up to n samples in one call,
fewer only at its end, where torch's fetcher calls `next()` once per sample. The batches,
the end of the stream and `drop_last` are torch's.
"""
from __future__ import annotations

from torch.utils.data._utils.fetch import _IterableDatasetFetcher


class IterableFetcher(_IterableDatasetFetcher):
    def fetch(self, possibly_batched_index):
        take = getattr(self.dataset_iter, "take", None) if self.auto_collation else None
        if take is None:
            return super().fetch(possibly_batched_index)
        if self.ended:
            raise StopIteration
        want = len(possibly_batched_index)
        data = take(want)
        if len(data) < want:
            self.ended = True
        if not data or (self.drop_last and len(data) < want):
            raise StopIteration
        return self.collate_fn(data)
