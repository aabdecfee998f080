"""Listeners of a run's epochs: code outside the run (such as an Optuna pruner) sees each epoch's metrics and may
stop the run early by raising :class:`RunPruned`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

EpochListener = Callable[[int, dict[str, float]], None]

_listeners: list[EpochListener] = []


class RunPruned(Exception):
    """A listener stopped the run on purpose after ``epoch``: the run ends KILLED with the tag ``pruned_at_epoch``."""

    run_status = "KILLED"

    def __init__(self, epoch: int, message: str) -> None:
        super().__init__(message)
        self.epoch = epoch


@contextlib.contextmanager
def listening(listener: EpochListener) -> Iterator[None]:
    """Call ``listener(epoch, metrics)`` after every epoch of the runs made inside the block (in this process)."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def epoch_ended(epoch: int, metrics: dict[str, float]) -> None:
    """Tell every listener that ``epoch`` ended with ``metrics`` (its checkpoint saved and metrics logged)."""
    for listener in list(_listeners):
        listener(epoch, metrics)
