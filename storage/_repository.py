"""The base of the store's repositories: what each needs of the one engine."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session


class Repository:
    """A repository is a group of a :class:`storage.Store`'s methods over some of its tables; the
    store is every repository over one engine. Each uses only :meth:`session` and :meth:`lock`."""

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction on the store's engine (committed on exit)."""
        raise NotImplementedError
        yield  # pragma: no cover

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """The store's named lock (across threads and processes)."""
        raise NotImplementedError
        yield  # pragma: no cover
