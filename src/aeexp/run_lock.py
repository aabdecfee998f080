"""One process at a time on a run's final metrics: an exclusive lock (``flock``) on a file named for the tracking store
and the run, under the cache folder (``<cache>/locks/``), held while ``aeexp evaluate`` measures and logs to it. A
second process on the same machine waits for it, then finds the metrics logged and adds none. The kernel releases
the lock however its holder ends; the empty lock files stay."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator

from aeexp.data.cache import cache_dir

log = logging.getLogger(__name__)


def lock_path(tracking_uri: str, run_id: str) -> os.PathLike[str]:
    """The lock file of run ``run_id`` of the store at ``tracking_uri``."""
    name = hashlib.sha256(f"{tracking_uri}\n{run_id}".encode()).hexdigest()[:24]
    return cache_dir() / "locks" / f"run-{name}.lock"


@contextlib.contextmanager
def holding(tracking_uri: str, run_id: str, on_wait: Callable[[], None]) -> Iterator[None]:
    """Inside the block this process alone holds run ``run_id``'s lock; ``on_wait()`` is called once before waiting
    for another holder. Where no lock can be made (an unwritable cache, no ``flock``), the block runs unlocked, with
    a warning line."""
    import fcntl

    path = lock_path(tracking_uri, run_id)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        log.warning("cannot make the lock file %s (%s): two processes on run %s at once would not be stopped", path,
                    err, run_id)
        yield
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError as err:  # a file system without flock
            log.warning("cannot lock %s (%s): two processes on run %s at once would not be stopped", path, err,
                        run_id)
        yield
    finally:
        os.close(descriptor)
