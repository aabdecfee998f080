"""Training checkpoints: everything needed to continue a run bit for bit, written atomically."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aeexp import files
from aeexp.errors import AeexpError
from aeexp.training.early_stopping import EarlyStopping
from aeexp.training.loop import History
from aeexp.training.optim import Schedule

FILENAME = "checkpoint.pt"
# The tag naming the run's latest whole checkpoint in MLflow (``checkpoint/epoch-<k>/checkpoint.pt``); runs of
# aeexp before it logged only ``checkpoint/checkpoint.pt``, at their end.
ARTIFACT_TAG = "aeexp.checkpoint.logged"
LEGACY_ARTIFACT = f"checkpoint/{FILENAME}"
FORMAT_VERSION = 3  # 2: a torch.optim optimizer, a schedule, per-epoch dicts of history; 3: early stopping


class CheckpointError(AeexpError):
    """A checkpoint is missing, unreadable or belongs to another run."""


@dataclass
class Checkpoint:
    """The state after ``epoch`` completed epochs of run ``run_id`` (``config``: its resolved YAML)."""

    run_id: str
    epoch: int
    config: str
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    early_stopping: dict[str, Any] | None
    generator: torch.Tensor
    history: History
    torch_rng: torch.Tensor
    numpy_rng: dict[str, Any]
    cuda_rng: list[torch.Tensor] | None = None


def capture(run_id: str, epoch: int, config: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            schedule: Schedule, generator: torch.Generator, history: History,
            early_stopping: EarlyStopping | None = None) -> Checkpoint:
    """A checkpoint of the current state (tensors copied to the CPU)."""
    return Checkpoint(
        run_id=run_id, epoch=epoch, config=config,
        model={key: value.detach().cpu().clone() for key, value in model.state_dict().items()},
        optimizer=_to_cpu(optimizer.state_dict()),
        schedule=_to_cpu(schedule.state_dict()),
        early_stopping=early_stopping.state_dict() if early_stopping is not None else None,
        generator=generator.get_state(),
        history=History([dict(metrics) for metrics in history.epochs]),
        torch_rng=torch.get_rng_state(),
        numpy_rng=_numpy_state(),
        cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    )


def restore(checkpoint: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
            generator: torch.Generator, early_stopping: EarlyStopping | None = None) -> History:
    """Put a checkpoint's state back into ``model``, ``optimizer``, ``schedule``, ``generator`` and the global RNGs
    (the optimizer and schedule freshly made from the run's config), and the early-stopping state into
    ``early_stopping``. CheckpointError if its state does not fit them.
    """
    try:
        model.load_state_dict(checkpoint.model)
        optimizer.load_state_dict(checkpoint.optimizer)  # moves the state to the parameters' device
        schedule.load_state_dict(checkpoint.schedule)
        if early_stopping is not None and checkpoint.early_stopping is not None:
            early_stopping.load_state_dict(checkpoint.early_stopping)
        generator.set_state(checkpoint.generator)
        torch.set_rng_state(checkpoint.torch_rng)
        if checkpoint.cuda_rng is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint.cuda_rng)
        state = checkpoint.numpy_rng
        np.random.set_state((state["kind"], np.asarray(state["keys"], dtype=np.uint32), state["pos"],
                             state["has_gauss"], state["cached_gaussian"]))
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
        raise CheckpointError(f"the checkpoint of run {checkpoint.run_id} (epoch {checkpoint.epoch}) does not fit the "
                              f"model and optimizer of its own config ({type(err).__name__}): it is damaged") from None
    return History([dict(metrics) for metrics in checkpoint.history.epochs])


def save(checkpoint: Checkpoint, path: Path) -> None:
    """Write ``checkpoint`` to ``path`` whole or not at all, flushed to disk before it replaces the last one."""
    payload = asdict(checkpoint)
    payload["format_version"] = FORMAT_VERSION
    files.write_atomically([(path, lambda file: torch.save(payload, file))], durable=True)


def local_path(output_dir: Path, run_id: str) -> Path:
    """Where run ``run_id`` keeps its checkpoint in ``output_dir``: in a folder named by the run, so that two runs
    sharing an output folder do not overwrite each other's."""
    return output_dir / "checkpoints" / run_id / FILENAME


def artifact_folder(epoch: int) -> str:
    """The MLflow artifact folder of the checkpoint after ``epoch``: each upload has its own, so that a copy being
    uploaded never replaces the last whole one."""
    return f"checkpoint/epoch-{epoch}"


def load(path: Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save`; CheckpointError (one line naming the file) if it is missing,
    unreadable or not a whole aeexp checkpoint."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({err.strerror}); make it readable") from None
    except Exception as err:  # torch's unpickler raises many kinds of error
        # Not torch's message: it suggests weights_only=False, i.e. running whatever code the file holds.
        raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not an aeexp checkpoint of format {FORMAT_VERSION}")
    return _from_payload(payload, path)


_FIELDS = {f.name for f in fields(Checkpoint)}
_REQUIRED = {f.name for f in fields(Checkpoint) if f.default is MISSING and f.default_factory is MISSING}


def _from_payload(payload: dict[str, Any], path: Path) -> Checkpoint:
    """The :class:`Checkpoint` a loaded payload holds; CheckpointError naming what is missing or malformed."""
    values = {key: value for key, value in payload.items() if key != "format_version"}
    missing = sorted(_REQUIRED - values.keys())
    unknown = sorted(values.keys() - _FIELDS)
    if missing or unknown:
        what = f"no {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}"
        raise CheckpointError(f"checkpoint {path} is incomplete ({what}): it was not written whole by aeexp")
    history = values["history"]
    epochs = history.get("epochs") if isinstance(history, dict) else None
    if not (isinstance(epochs, list) and all(isinstance(metrics, dict) for metrics in epochs)
            and isinstance(values["epoch"], int) and isinstance(values["run_id"], str)
            and isinstance(values["config"], str) and isinstance(values["model"], dict)):
        raise CheckpointError(f"checkpoint {path} is malformed (its run, epoch, config, weights or history)")
    values["history"] = History([dict(metrics) for metrics in epochs])
    return Checkpoint(**values)


def _numpy_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def _map_tensors(value: Any, move: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return move(value)
    if isinstance(value, dict):
        return {key: _map_tensors(item, move) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_map_tensors(item, move) for item in value)
    return value


def _to_cpu(value: Any) -> Any:
    return _map_tensors(value, lambda tensor: tensor.detach().cpu().clone())
