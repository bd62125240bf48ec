"""Typed errors that name the sample they came from."""
from __future__ import annotations

from typing import Any


def check_state_type(state: Any) -> None:
    """load_state_dict's argument must be a dict from state_dict() (a checkpoint's)."""
    if not isinstance(state, dict):
        raise TypeError(f"load_state_dict takes the dict state_dict() returned, got {type(state).__name__}")


class DecodeError(ValueError):
    """An image could not be decoded: corrupt, truncated, too large or of the wrong type.

    ``index`` is the sample's position in its batch (None for a single decode), ``key``
    the sample key when one was given, ``reason`` what went wrong.
    """

    def __init__(self, reason: str, *, index: int | None = None, key: object = None) -> None:
        self.reason = reason
        self.index = index
        self.key = key
        where = []
        if index is not None:
            where.append(f"sample {index}")
        if key is not None:
            where.append(f"key {key!r}")
        super().__init__(f"{' '.join(where)}: {reason}" if where else reason)


class ShardError(ValueError):
    """A shard could not be read: an unreadable URL, a damaged tar, a sample missing data.

    ``url`` names the shard, ``offset`` the byte offset of the damage (when known),
    ``key`` the sample key (when known), ``reason`` what went wrong.
    """

    def __init__(self, reason: str, *, url: str | None = None, offset: int | None = None, key: str | None = None) -> None:
        self.reason = reason
        self.url = url
        self.offset = offset
        self.key = key
        where = [str(url)] if url is not None else []
        if offset is not None:
            where.append(f"byte offset {offset}")
        if key is not None:
            where.append(f"key {key!r}")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)

    def __reduce__(self):  # survives the trip from a worker process
        return (_rebuild_shard_error, (self.reason, self.url, self.offset, self.key))


def _rebuild_shard_error(reason, url, offset, key) -> ShardError:
    return ShardError(reason, url=url, offset=offset, key=key)
