"""Files written whole or not at all: each to a temporary file beside it, then renamed into place."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from aeexp import processes
from aeexp.errors import AeexpError

Writer = Callable[[IO[bytes]], None]

# What stops a write that the user can fix: a full disk (or quota, or a file-size limit), or a folder that is not
# writable (permissions, an immutable or read-only file system).
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class WriteError(AeexpError):
    """A file could not be written: its disk is full or its folder is not writable."""


def write_error(err: OSError) -> str | None:
    """What went wrong, in a line naming the file and what to do, when ``err`` is a full disk or an unwritable
    folder; None for any other error."""
    where = err.filename or "a file"
    if err.errno in _FULL:
        return (f"cannot write {where} ({err.strerror}): the disk is full or a size limit was reached; free some "
                "space there, or write elsewhere (hydra.run.dir=...)")
    if err.errno in _NOT_WRITABLE:
        return (f"cannot write {where} ({err.strerror}): its folder is not writable; make it writable, or write "
                "elsewhere (hydra.run.dir=...)")
    return None


# The temporary file a write goes to first: .<name>.<pid of the writer>.<8 hex digits>.tmp, beside the target.
_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def stale_temporaries(folder: Path, older_than_s: float) -> list[Path]:
    """The temporary files that writes under ``folder`` (at any depth) left behind: their writer's process no longer
    runs here and they have not changed for ``older_than_s`` seconds (a writer on another machine sharing the folder
    keeps changing its file while it writes). A live writer's file is never among them."""
    now = time.time()
    stale = []
    for path in folder.rglob(".*.tmp"):
        match = _TEMPORARY.match(path.name)
        try:
            old = now - path.stat().st_mtime > older_than_s
        except OSError:  # gone meanwhile
            continue
        if match and old and not processes.running(int(match.group("pid"))):
            stale.append(path)
    return stale


def _temporary_beside(target: Path) -> tuple[Path, IO[bytes]]:
    """A new, open temporary file in ``target``'s folder, with the permissions of any file made there (the umask's)."""
    while True:
        temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        return temporary, os.fdopen(descriptor, "wb")


def _os_error_behind(err: BaseException) -> OSError | None:
    """``err`` if it is an OSError, else the first one among the errors it was raised from or while handling. (A
    writer may hide the OSError: torch.save, stopped by a full disk, raises a RuntimeError from its zip writer's
    cleanup while handling it.)"""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


@contextlib.contextmanager
def _errors_naming(target: Path) -> Iterator[None]:
    """An OSError inside (or behind another error) re-raised as one naming ``target``, not a temporary file or a
    folder on the way."""
    try:
        yield
    except Exception as err:
        os_error = _os_error_behind(err)
        if os_error is None:
            raise
        raise OSError(os_error.errno, os_error.strerror or str(os_error), str(target)) from err


def write_atomically(outputs: Sequence[tuple[Path, Writer]], durable: bool = False) -> None:
    """Write each ``(path, write)`` of ``outputs``: ``write(file)`` fills a temporary file in the path's folder
    (created if missing); only when all are written are they renamed into place.

    A reader sees each path's old content or its new one, never a part. An error propagates (an OSError as one
    naming the path being written), leaves no temporary file and, when it comes before the renames, replaces no
    path.
    ``durable``: each file is flushed to disk (fsync) before its rename, so that a crash of the machine cannot
    leave an empty or partial file under the path either.
    """
    written: list[tuple[Path, Path]] = []
    try:
        for target, write in outputs:
            with _errors_naming(target):
                target.parent.mkdir(parents=True, exist_ok=True)
                temporary, file = _temporary_beside(target)
                written.append((temporary, target))
                with file:
                    write(file)
                    if durable:
                        file.flush()
                        os.fsync(file.fileno())
        for temporary, target in written:
            with _errors_naming(target):
                os.replace(temporary, target)
    finally:
        for temporary, _ in written:
            temporary.unlink(missing_ok=True)
