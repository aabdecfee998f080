"""Whether a model's training fits in memory, judged from its parameter count before anything is built."""

from __future__ import annotations

import os
from pathlib import Path

from aeexp.errors import ConfigError

# Training holds, per parameter, its weight, its gradient and an optimizer's state (Adam: two moments), in float32:
# at least 16 bytes. (Activations, the data and the checkpoint's copy come on top.)
BYTES_PER_PARAMETER = 16


def _cgroup_limit() -> int | None:
    """The memory this process's cgroup (v2) may still take, when it has a limit (a container, a Slurm job)."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
    except OSError:
        return None
    return int(limit) - int(used) if limit.isdigit() and used.isdigit() else None


def available_host_memory() -> int | None:
    """Bytes of memory available to this process now (``MemAvailable``, within any cgroup limit); None where
    unknown."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None and hasattr(os, "sysconf"):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            available = None
    limit = _cgroup_limit()
    return min(available, limit) if available is not None and limit is not None else available or limit


def _gigabytes(size: float) -> str:
    return f"{size / 1e9:,.1f} GB"


def check_fits(parameters: int, available: int | None, where: str, model_settings: str) -> None:
    """ConfigError naming the model's settings and the figures when training ``parameters`` parameters needs more
    than ``available`` bytes of ``where`` memory (``None``: unknown, nothing is refused)."""
    needed = parameters * BYTES_PER_PARAMETER
    if available is None or needed <= available:
        return
    raise ConfigError(
        f"{model_settings}: the model has {parameters:,} parameters, and training it needs at least "
        f"{_gigabytes(needed)} of memory ({BYTES_PER_PARAMETER} bytes each: weight, gradient and the optimizer's "
        f"state), more than the {_gigabytes(available)} of {where} memory available; choose smaller model.widths "
        "or model.bottleneck")
