"""Ctrl-C and SIGTERM as a request to stop at the next safe point, not an exception at an arbitrary line.

A ``KeyboardInterrupt`` raised by a signal handler can land inside an MLflow or SQLite call and leave a
transaction open (a locked store) or a file half-written. With :func:`install`, a Ctrl-C/SIGTERM that arrives
inside a :func:`deferred` block (a run) only records the request; the training loop and the run's stages call
:func:`check` between steps and stop there, raising :class:`Interrupted`. Outside such a block (e.g. a sweep's
main process waiting for its parallel jobs), and at a second signal, it stops at once (``KeyboardInterrupt``).
Once the process is stopping (either way), further signals are only noted: what follows records the stop (the
run's checkpoint, its status KILLED), which a signal cutting it short would leave half-done (a run left RUNNING).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from types import FrameType

log = logging.getLogger(__name__)

_requested: str | None = None
_deferring = 0
_stopping = False  # a stop was taken (Interrupted or KeyboardInterrupt raised): the process is on its way out
_noted = False  # a signal after it was noted (once)


class Interrupted(KeyboardInterrupt):
    """A stop was requested (Ctrl-C or SIGTERM) and taken at a safe point."""


class RunInterrupted(Interrupted):
    """A run stopped on request: where it stopped (the message), its MLflow run and the command that continues it."""

    def __init__(self, stopped: str, run_id: str, go_on: str) -> None:
        super().__init__(stopped)
        self.run_id, self.go_on = run_id, go_on

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # (pickled by a sweep's worker processes)
        return type(self), (str(self), self.run_id, self.go_on)

    def line(self, marked_killed: bool) -> str:
        """The one line to show, saying whether the run was ``marked_killed`` in MLflow (asked of the store)."""
        marked = ("was marked KILLED" if marked_killed else
                  "could not be marked KILLED (see above; MLflow may show it RUNNING until it is resumed)")
        return f"{self}; the MLflow run {self.run_id} {marked}; continue with `{self.go_on}`"


def _handle(signum: int, frame: FrameType | None) -> None:
    global _requested, _stopping, _noted
    name = signal.Signals(signum).name
    if _stopping:
        if not _noted:
            _noted = True
            log.warning("%s received: already stopping, once the stop is recorded in MLflow (kill -9 ends the "
                        "process at once)", name)
        return
    if _deferring == 0 or _requested is not None:
        _stopping = True
        raise KeyboardInterrupt(f"{name} received" + (" twice" if _requested is not None else ""))
    _requested = name
    log.warning("%s received: stopping after the current step (send it again to stop at once)", name)


def install() -> None:
    """Handle SIGINT and SIGTERM by requesting a stop (call from the main thread)."""
    signal.signal(signal.SIGINT, _handle)
    signal.signal(signal.SIGTERM, _handle)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block a signal only requests a stop; a request still pending at its end is raised there."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    check()


def requested() -> bool:
    """Whether a stop was requested."""
    return _requested is not None


def check() -> None:
    """Raise :class:`Interrupted` if a stop was requested."""
    global _stopping
    if _requested is not None:
        _stopping = True
        raise Interrupted(f"{_requested} received")


def reset() -> None:
    """Forget a request and a stop (for a process that goes on after handling it, e.g. tests)."""
    global _requested, _stopping, _noted
    _requested, _stopping, _noted = None, False, False
