"""Forward passes take turns, in arrival order, and a fork waits for its turn too.

One forward pass already uses every core, so two at once would only slow both: the pipeline's
lock serialises them. It is a ticket lock, handed over in the order threads asked for it: a
thread that encodes batch after batch cannot take it again ahead of one that is waiting.

``os.fork()`` while a forward pass runs would copy BLAS's and numba's worker pools mid-flight into
the child, where they hang. Before a fork, the forking thread waits for its turn on every
pipeline's lock (so no forward pass is running), and releases them after it, in the parent; the
child starts with fresh locks.
"""

from __future__ import annotations

import os
import threading
import weakref


class TurnLock:
    """A lock handed over in arrival order (a ticket lock)."""

    def __init__(self):
        self._condition = threading.Condition(threading.Lock())
        self._next_ticket = 0
        self._now_serving = 0

    def acquire(self):
        with self._condition:
            ticket = self._next_ticket
            self._next_ticket += 1
            while self._now_serving != ticket:
                self._condition.wait()

    def release(self):
        with self._condition:
            if self._now_serving == self._next_ticket:
                raise RuntimeError("release of a TurnLock nobody holds")
            self._now_serving += 1
            self._condition.notify_all()

    def locked(self) -> bool:
        with self._condition:
            return self._now_serving != self._next_ticket

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


_HOLDERS: weakref.WeakSet = weakref.WeakSet()  # every object with a .lock that forward passes take
_HELD_FOR_FORK: list = []


def register(holder):
    """Make ``holder.lock`` (a TurnLock) one a fork waits for."""
    _HOLDERS.add(holder)


def _before_fork():
    for holder in sorted(_HOLDERS, key=id):  # one order for every forking thread
        holder.lock.acquire()
        _HELD_FOR_FORK.append(holder)


def _after_fork_in_parent():
    while _HELD_FOR_FORK:
        _HELD_FOR_FORK.pop().lock.release()


def _after_fork_in_child():
    for holder in _HELD_FOR_FORK:
        holder.lock = TurnLock()  # only this thread exists in the child, and it holds none
    _HELD_FOR_FORK.clear()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
