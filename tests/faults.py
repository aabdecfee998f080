"""Real OS faults for the tests: a folder tree made read-only while a run writes into it, a full disk (a file-size
limit of the process, RLIMIT_FSIZE: its writes past the limit fail with EFBIG, as they fail with ENOSPC on a full
disk)."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def _writable(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _immutable(folders: list[Path], on: bool) -> None:
    """``chattr +i`` / ``-i``: what stops root (whom permissions do not), where the file system and capabilities
    allow it."""
    chattr = shutil.which("chattr")
    if chattr and folders:
        subprocess.run([chattr, "+i" if on else "-i", *map(str, folders)], capture_output=True, check=False)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` and every folder in it unwritable inside the block, then as before.

    Permissions first (``chmod a-w``); for root, whom they do not stop, also the immutable attribute. Where neither
    takes (root without CAP_LINUX_IMMUTABLE), the test cannot make the fault: it fails under CI and is skipped
    elsewhere, saying why.
    """
    folders = [folder, *(path for path in folder.rglob("*") if path.is_dir())]
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in folders}
    for path, mode in modes.items():
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    if os.geteuid() == 0:
        _immutable(folders, on=True)
    try:
        if any(_writable(path) for path in folders):
            reason = f"cannot make {folder} read-only here (root without chattr +i)"
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
        yield
    finally:
        if os.geteuid() == 0:
            _immutable(folders, on=False)
        for path, mode in modes.items():
            path.chmod(mode)


def file_size_limit(size: int) -> Callable[[], None]:
    """A ``preexec_fn`` that keeps the child from writing any file past ``size`` bytes (a full disk for it)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit
