"""Who holds something that a killed process may leave behind (a temporary file, a trial, a lock): this process as
``<host> <pid>``, and whether such a holder still runs."""

from __future__ import annotations

import os
import socket


def me() -> str:
    """This process, as ``<host> <pid>``."""
    return f"{socket.gethostname()} {os.getpid()}"


def running(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (this process included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, as another user's (PermissionError)
        return True
    return True


def alive(holder: str | None) -> bool:
    """Whether ``holder`` (``<host> <pid>``, see :func:`me`) may still run: a process of this machine that runs, or
    one of another machine (which cannot be asked); False for no holder."""
    host, _, pid = (holder or "").rpartition(" ")
    if not host or not pid.isdigit():
        return False
    return host != socket.gethostname() or running(int(pid))
