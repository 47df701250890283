"""Worker threads that survive ``os.fork()`` and ``close()``.

A process forked from one that had started threads (gunicorn ``--preload``, uWSGI without
``lazy-apps``, multiprocessing's ``fork`` start method) holds copies of their objects but none of
the threads: a ``ThreadPoolExecutor`` copied with idle workers starts no new one and its tasks wait
forever, and a lock held by another thread at the fork stays held. Objects registered with
:func:`renew_after_fork` get their ``_after_fork()`` called in the child (``os.register_at_fork``),
where they replace such state and start their threads again on first use.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

_RENEWED: "weakref.WeakSet" = weakref.WeakSet()


def renew_after_fork(obj) -> None:
    """Call ``obj._after_fork()`` in every child this process forks from now on, while ``obj``
    lives (a weak reference: it does not keep ``obj`` alive)."""
    _RENEWED.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_RENEWED):
        obj._after_fork()


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


class LazyPool:
    """A ``ThreadPoolExecutor`` made on first use, made again in a forked child, refused after
    :meth:`close`.

    Args:
        workers: its threads; below 2, :meth:`use` gives ``None`` (work in the calling thread).
        thread_name_prefix: the threads' name prefix.
        closed_error: makes the exception :meth:`use` raises after :meth:`close`.
    """

    def __init__(self, workers: int, thread_name_prefix: str, closed_error: Callable[[], Exception]):
        self.workers = workers
        self.thread_name_prefix = thread_name_prefix
        self.closed_error = closed_error
        self.closed = False
        self._after_fork()
        renew_after_fork(self)

    def _after_fork(self) -> None:
        # (the parent's pool, lock and count of callers mean nothing in a child: none of their threads exists)
        self._pool: ThreadPoolExecutor | None = None
        self._idle = threading.Condition()
        self._users = 0

    @contextlib.contextmanager
    def use(self) -> Iterator[ThreadPoolExecutor | None]:
        """The pool (``None`` with fewer than 2 workers) for the ``with`` block; :meth:`close`
        waits for the blocks in progress.

        Raises:
            Exception: ``closed_error()``, after :meth:`close`.
        """
        with self._idle:
            if self.closed:
                raise self.closed_error()
            if self._pool is None and self.workers >= 2:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=self.thread_name_prefix)
            self._users += 1
            pool = self._pool
        try:
            yield pool
        finally:
            with self._idle:
                self._users -= 1
                self._idle.notify_all()

    def close(self) -> None:
        """Refuse new :meth:`use` blocks, wait for those in progress, stop the threads (idempotent)."""
        with self._idle:
            self.closed = True
            self._idle.wait_for(lambda: self._users == 0)
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
