"""`Turns`: a lock that serves threads in the order they asked, so replies sharing one model take
turns step by step (a long run cannot starve a short one), and no two forward passes overlap.

Re-entrant per thread: a caller may hold it around several forward passes (attention maps hold it
while their hooks are on the model) and each pass takes it again.
"""

from __future__ import annotations

import threading


class Turns:
    """A first-come, first-served (ticket) lock, re-entrant per thread."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._next = 0  # the ticket the next newcomer takes
        self._serving = 0  # the ticket whose holder may run
        self._abandoned: set[int] = set()  # tickets whose waiters left (an exception while waiting)
        self._owner: int | None = None
        self._depth = 0

    def __reduce__(self):  # a copied or pickled model gets its own, free lock
        return (Turns, ())

    def acquire(self) -> None:
        me = threading.get_ident()
        with self._changed:
            if self._owner == me:
                self._depth += 1
                return
            ticket, self._next = self._next, self._next + 1
            try:
                while self._serving != ticket:
                    self._changed.wait()
            except BaseException:
                self._abandoned.add(ticket)
                self._advance()
                raise
            self._owner, self._depth = me, 1

    def release(self) -> None:
        with self._changed:
            if self._owner != threading.get_ident():
                raise RuntimeError("released a turn this thread does not hold.")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._serving += 1
                self._advance()

    def _advance(self) -> None:
        """Skip abandoned tickets, then wake the waiters (the one whose ticket is up runs)."""
        if self._owner is None:
            while self._serving in self._abandoned:
                self._abandoned.discard(self._serving)
                self._serving += 1
        self._changed.notify_all()

    def waiting(self) -> int:
        """Threads queued behind the current holder (for status lines and tests)."""
        with self._changed:
            return self._next - self._serving - len(self._abandoned) - (self._owner is not None)

    def __enter__(self) -> Turns:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
