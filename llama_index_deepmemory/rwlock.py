"""A phase-fair readers-writer lock, re-entrant per thread (the embedded store's lock)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class ReadWriteLock:
    """Many readers or one writer; re-entrant per thread (a writer may also read).

    Phase-fair: a waiting writer holds back new readers, but readers already waiting when a
    writer releases all get in before the next writer, so neither side starves.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._waiting_writers = 0
        self._waiting_readers = 0
        self._releases = 0  # writer releases so far
        self._readers_owed = 0  # readers that waited through the last release and must go first
        self._local = threading.local()

    @contextmanager
    def read(self) -> Iterator[None]:
        me = threading.get_ident()
        depth = getattr(self._local, "depth", 0)
        if self._writer == me or depth:
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth -= 1
            return
        with self._cond:
            arrived = self._releases
            self._waiting_readers += 1
            while self._writer is not None or (self._waiting_writers and self._releases == arrived):
                self._cond.wait()
            self._waiting_readers -= 1
            if self._releases != arrived and self._readers_owed:
                self._readers_owed -= 1
            self._readers += 1
        self._local.depth = 1
        try:
            yield
        finally:
            self._local.depth = 0
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._writer == me:  # re-entered by the writer: it already holds the lock
            yield
            return
        if getattr(self._local, "depth", 0):
            raise RuntimeError("cannot write to the store while this thread is reading it")
        with self._cond:
            self._waiting_writers += 1
            while self._writer is not None or self._readers or self._readers_owed:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = me
        try:
            yield
        finally:
            with self._cond:
                self._writer = None
                self._releases += 1
                self._readers_owed = self._waiting_readers
                self._cond.notify_all()
