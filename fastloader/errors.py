"""Typed errors that name the sample they came from."""
from __future__ import annotations


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
