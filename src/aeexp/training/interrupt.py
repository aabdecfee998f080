"""Ctrl-C and SIGTERM as a request to stop at the next safe point, not an exception at an arbitrary line.

A ``KeyboardInterrupt`` raised by a signal handler can land inside an MLflow or SQLite call and leave a
transaction open (a locked store) or a file half-written. With :func:`install`, a Ctrl-C/SIGTERM that arrives
inside a :func:`deferred` block (a run) only records the request; the training loop and the run's stages call
:func:`check` between steps and stop there, raising :class:`Interrupted`. Outside such a block (e.g. a sweep's
main process waiting for its parallel jobs), and at a second signal, it stops at once (``KeyboardInterrupt``).
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


class Interrupted(KeyboardInterrupt):
    """A stop was requested (Ctrl-C or SIGTERM) and taken at a safe point."""


class RunInterrupted(Interrupted):
    """A run stopped on request; the message says where it stopped and how to continue it."""


def _handle(signum: int, frame: FrameType | None) -> None:
    global _requested
    name = signal.Signals(signum).name
    if _deferring == 0:
        raise KeyboardInterrupt(f"{name} received")
    if _requested is not None:
        raise KeyboardInterrupt(f"{name} received twice")
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
    if _requested is not None:
        raise Interrupted(f"{_requested} received")


def reset() -> None:
    """Forget a request (for a process that goes on after handling it, e.g. tests)."""
    global _requested
    _requested = None
