"""The one bounded cache of ``nas``: least recently used entries dropped past a limit, thread-safe.

Every in-memory cache of the package is one (architectures by hash, parameter shapes, the API's data
shapes and exported files, a Ray worker's study contexts), so none grows without bound, and none that
holds a study's data is keyed by its name alone: a study deleted and created again under its name is
another study, so such caches key by the study's identity (name and creation time).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any, TypeVar

__all__ = ["LRUCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(OrderedDict[K, V]):
    """Entries by key, least recently used first, at most ``limit`` of them; shared by threads (the
    request threads of ``nas serve``, a worker's heartbeat).

    Every operation holds one lock, and iteration walks a copy, so concurrent users never see the
    order half updated. An entry that another thread evicted meanwhile is simply gone: touching it
    (``move_to_end``) or deleting it does nothing, where a plain ``OrderedDict`` raises ``KeyError``.
    :meth:`put` stores, touches and evicts in one step; :meth:`get` touches what it finds.
    """

    def __init__(self, items: Any = (), *, limit: int) -> None:
        self._lock = threading.RLock()
        self.limit = limit
        super().__init__(items)

    def get(self, key: K, default: Any = None) -> Any:
        with self._lock:
            hit = super().get(key, default)
            if hit is not default:
                super().move_to_end(key)
            return hit

    def put(self, key: K, value: V) -> V:
        """Store ``value`` as the most recently used entry, evicting the least recently used past
        ``limit``; returns ``value``."""
        with self._lock:
            super().__setitem__(key, value)
            super().move_to_end(key)
            while len(self) > self.limit:
                super().popitem(last=False)
            return value

    def get_or_put(self, key: K, make: Callable[[], V]) -> V:
        """The entry of ``key``, or ``make()`` stored under it (made outside the lock: two threads
        missing one key may both make it; the cache keeps the last)."""
        hit = self.get(key, _MISSING)
        if hit is _MISSING:
            return self.put(key, make())
        return hit  # type: ignore[no-any-return]

    def drop_where(self, pred: Callable[[K], bool]) -> None:
        """Remove the entries whose key satisfies ``pred``."""
        with self._lock:
            for key in [k for k in super().__iter__() if pred(k)]:
                super().__delitem__(key)

    def __setitem__(self, key: K, value: V) -> None:
        with self._lock:
            super().__setitem__(key, value)

    def __delitem__(self, key: K) -> None:
        with self._lock:
            if super().__contains__(key):
                super().__delitem__(key)

    def pop(self, key: K, *default: Any) -> Any:
        with self._lock:
            return super().pop(key, *default)

    def popitem(self, last: bool = True) -> tuple[K, V]:
        with self._lock:
            return super().popitem(last=last)

    def move_to_end(self, key: K, last: bool = True) -> None:
        with self._lock:
            if super().__contains__(key):
                super().move_to_end(key, last=last)

    def clear(self) -> None:
        with self._lock:
            super().clear()

    def __iter__(self) -> Iterator[K]:
        with self._lock:
            return iter(list(super().__iter__()))


_MISSING: Any = object()
