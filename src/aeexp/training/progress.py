"""How a fit shows its progress: one live bar for the whole fit in a terminal, a log line now and then elsewhere.

With ``trainer.progress`` true (the default), in a terminal (stderr is a TTY) one bar counts the epochs, with the
latest losses beside it, and log lines printed meanwhile go above it; elsewhere (a log file, a batch job) a line with
the losses is logged every ``ceil(epochs / LINES)`` epochs, after any epoch ending ``INTERVAL_S`` or more after the
last line, and after the last epoch: at most ~``LINES`` lines for a fit of fast epochs, a line a minute at least for
slow ones. With ``trainer.progress=false`` there is no bar and a line after every epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Iterator

log = logging.getLogger("aeexp.training.loop")

LINES = 20  # log lines over a whole fit of fast epochs
INTERVAL_S = 60.0  # the longest silence between two log lines, epochs permitting


def in_terminal() -> bool:
    """Whether a person watches: the progress bar's stream (stderr) is a terminal."""
    return sys.stderr.isatty()


class Progress:
    """The progress of one fit from epoch ``done + 1`` to ``epochs``: :meth:`epoch_done` after each epoch."""

    def __init__(self, epochs: int, done: int, bar: bool, every_epoch: bool = False) -> None:
        self.epochs, self.every = epochs, 1 if every_epoch else max(1, math.ceil(epochs / LINES))
        self.last_line = time.monotonic()
        self.bar = None
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=epochs, initial=done, desc="training", unit="epoch", dynamic_ncols=True,
                            leave=True)

    def epoch_done(self, epoch: int, train_loss: float, val_loss: float, epoch_time: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(train_loss=f"{train_loss:.4f}", val_loss=f"{val_loss:.4f}", refresh=False)
            self.bar.update(1)
            return
        now = time.monotonic()
        if epoch % self.every == 0 or epoch == self.epochs or now - self.last_line >= INTERVAL_S:
            self.last_line = now
            log.info("epoch %d/%d: train_loss %.4f  val_loss %.4f  (%.2f s)", epoch, self.epochs, train_loss,
                     val_loss, epoch_time)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def shown(epochs: int, done: int, wanted: bool) -> Iterator[Progress]:
    """The fit's :class:`Progress` for the block: a bar when ``wanted`` and in a terminal (log lines printed
    meanwhile go above it), else log lines now and then; a line after every epoch when not ``wanted``."""
    bar = wanted and in_terminal()
    progress = Progress(epochs, done, bar, every_epoch=not wanted)
    try:
        if bar:
            from tqdm.contrib.logging import logging_redirect_tqdm

            with logging_redirect_tqdm():
                yield progress
        else:
            yield progress
    finally:
        progress.close()
