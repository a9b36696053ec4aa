"""The index's readers-writer lock: hnswlib allows parallel searches but not a search during an insert."""

from __future__ import annotations

import threading
from collections.abc import Callable


class RWLock:
    """Many readers or one writer. A waiting writer holds back new readers, so writes never starve.

    Not re-entrant: a thread that holds either side must not ask again (the index's public methods
    take the lock once and call unlocked helpers inside).
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        # guards hold no state, so one of each serves every thread (and saves an allocation per search)
        self._read_guard = _Guard(self.acquire_read, self.release_read)
        self._write_guard = _Guard(self.acquire_write, self.release_write)

    def acquire_read(self) -> None:
        with self._mutex:  # the common case, nobody writing: no Condition machinery on the hot path
            if not self._writer and not self._writers_waiting:
                self._readers += 1
                return
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._mutex:
            self._readers -= 1
            # only a writer ever waits for readers to leave; readers wait for writers
            if self._readers == 0 and self._writers_waiting:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True

    def release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()

    def read(self) -> _Guard:
        """Context manager holding the read side."""
        return self._read_guard

    def write(self) -> _Guard:
        """Context manager holding the write side."""
        return self._write_guard


class _Guard:
    __slots__ = ("_enter", "_exit")

    def __init__(self, enter: Callable[[], None], exit_: Callable[[], None]) -> None:
        self._enter, self._exit = enter, exit_

    def __enter__(self) -> None:
        self._enter()

    def __exit__(self, *exc: object) -> None:
        self._exit()
