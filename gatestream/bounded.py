"""A map with a size bound, for caches whose keys come from input (schema ids read from
events: a stream of made-up ids must not grow memory without limit).

When full, the oldest entry (by insertion) makes room. Lookups are a plain ``dict.get``,
so a cache on a per-event path costs no more than the dict it replaces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._items: dict[K, V] = {}
        self.get: Callable[[K], V | None] = self._items.get

    def put(self, key: K, value: V) -> None:
        items = self._items
        if key not in items and len(items) >= self.maxsize:
            del items[next(iter(items))]
        items[key] = value

    def pop(self, key: K) -> None:
        self._items.pop(key, None)

    def keys(self) -> list[K]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items
