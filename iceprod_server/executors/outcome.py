"""What a caller may be told about a unit of work that changes the database.

A caller stops waiting when its ``db_timeout`` runs out, but the thread running its unit
goes on (it is blocked in the driver). Whether the caller hears -32005 ("nothing was
committed, nor will be") or -32006 ("outcome unknown") must then be true, so the caller
and the thread settle it once, under a lock, in a :class:`Ticket`:

- the thread, just before COMMIT, asks :meth:`Ticket.begin_commit`; once the caller has
  given up it is refused and rolls the unit back, so -32005 was true;
- the caller, when its time runs out, asks :meth:`Ticket.abandon`; once the thread is
  committing it is refused, and the caller is told -32006: the COMMIT may land after the
  answer.

A COMMIT that the database refused (SQLite busy, a deadlock found at commit) committed
nothing: :meth:`Ticket.commit_refused` puts the ticket back, so the unit may run again
(unless its caller was already answered).
"""

from __future__ import annotations

import threading

PENDING = "pending"
COMMITTING = "committing"
ABANDONED = "abandoned"


class Ticket:
    """The state of one unit of work between its caller and the thread that runs it."""

    __slots__ = ("_gone", "_lock", "state")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.state = PENDING
        self._gone = False  # the caller was answered while the unit was committing

    @property
    def abandoned(self) -> bool:
        return self.state == ABANDONED

    def begin_commit(self) -> bool:
        """The thread is about to COMMIT: False if the caller has given up (roll back)."""
        with self._lock:
            if self.state == ABANDONED:
                return False
            self.state = COMMITTING
            return True

    def commit_refused(self) -> None:
        """The database refused the COMMIT: nothing was committed. The unit may run
        again, unless its caller has already been answered."""
        with self._lock:
            if self.state == COMMITTING:
                self.state = ABANDONED if self._gone else PENDING

    def abandon(self) -> bool:
        """The caller stops waiting: True if nothing will be committed, False if the
        unit is already committing (its outcome is unknown)."""
        with self._lock:
            if self.state == COMMITTING:
                self._gone = True
                return False
            self.state = ABANDONED
            return True
