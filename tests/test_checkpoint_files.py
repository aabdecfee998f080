"""Checkpoint files read back in this process: every way a file can be incomplete or malformed is one CheckpointError
naming what is wrong, and a checkpoint's early-stopping state restores into a run with or without early stopping.
(The CLI's resume tests are in test_resume.py; these are what mutation testing of checkpoint loading can see.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from aeexp import models
from aeexp.training import checkpoint, loop, optim
from aeexp.training.early_stopping import EarlyStopping


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.DenseAutoencoder((1, 8, 8), widths=[16], bottleneck=4)


def _parts(model: torch.nn.Module) -> tuple[torch.optim.Optimizer, optim.Schedule, torch.Generator]:
    optimizer = torch.optim.Adam(optim.parameter_groups(model), lr=1e-3)
    return optimizer, optim.Schedule(optimizer), torch.Generator().manual_seed(0)


def _saved(path: Path, stopping: EarlyStopping | None) -> checkpoint.Checkpoint:
    """A checkpoint after one epoch of a small model, saved to ``path``."""
    model = _model()
    history = loop.History([{"train_loss": 1.0, "val_loss": 0.9, "epoch_time": 0.1, "lr": 1e-3}])
    if stopping is not None:
        stopping.update(1, 0.9, model)
    state = checkpoint.capture("run", 1, "seed: 0\n", model, *_parts(model), history, stopping)
    checkpoint.save(state, path)
    return state


def _edited(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """Rewrite a saved checkpoint's payload with ``change`` (tensors and plain values only)."""
    def edit(path: Path) -> None:
        payload = torch.load(path, weights_only=True)
        change(payload)
        torch.save(payload, path)

    return edit


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda payload: payload.__setitem__(key, value)


# (how the payload is edited, the start of the one line that names the file and what is wrong)
EDITED = [
    (lambda p: (p.pop("history"), p.pop("model")), "checkpoint {path} is incomplete (no history, model): it was not "
                                                    "written whole by aeexp"),
    (lambda p: p.update(surprise=1, other=2), "checkpoint {path} is incomplete (unknown other, surprise): it was not "
                                              "written whole by aeexp"),
    (_set("epoch", "1"), "checkpoint {path} is malformed (its run, epoch, config, weights or history)"),
    (_set("run_id", 7), "checkpoint {path} is malformed"),
    (_set("config", 7), "checkpoint {path} is malformed"),
    (_set("model", [1.0]), "checkpoint {path} is malformed"),
    (_set("history", {"epochs": "all of them"}), "checkpoint {path} is malformed"),
    (_set("history", {"epochs": [1.0]}), "checkpoint {path} is malformed"),
    (_set("history", []), "checkpoint {path} is malformed"),
]


@pytest.mark.parametrize(("change", "message"), EDITED, ids=["two-missing", "unknown-key", "epoch", "run-id", "config",
                                                              "weights", "epochs-not-a-list", "epoch-not-a-dict",
                                                              "history-not-a-dict"])
def test_an_incomplete_or_malformed_checkpoint_is_one_line_naming_what_is_wrong(tmp_path, change, message):
    path = tmp_path / checkpoint.FILENAME
    _saved(path, EarlyStopping(3))
    _edited(change)(path)
    with pytest.raises(checkpoint.CheckpointError) as refused:
        checkpoint.load(path)
    assert str(refused.value).startswith(message.format(path=path)) and "\n" not in str(refused.value)


def test_a_missing_checkpoint_is_named():
    with pytest.raises(checkpoint.CheckpointError, match=r"^no checkpoint at /nowhere/checkpoint\.pt$"):
        checkpoint.load(Path("/nowhere/checkpoint.pt"))


def test_a_checkpoint_comes_back_as_it_was_saved(tmp_path):
    path = tmp_path / checkpoint.FILENAME
    saved = _saved(path, EarlyStopping(3))
    loaded = checkpoint.load(path)
    assert (loaded.run_id, loaded.epoch, loaded.config, loaded.history) == ("run", 1, "seed: 0\n", saved.history)
    assert loaded.model.keys() == saved.model.keys()
    assert all(torch.equal(loaded.model[key], saved.model[key]) for key in saved.model)
    assert loaded.early_stopping["best_epoch"] == 1 and loaded.early_stopping["best_loss"] == 0.9


@pytest.mark.parametrize(("saved_with", "restored_with"), [(True, False), (False, True), (True, True)],
                         ids=["stopping-then-patience-null", "none-then-stopping", "stopping-both"])
def test_early_stopping_state_restores_into_a_run_with_or_without_it(tmp_path, saved_with, restored_with):
    """A resume may switch early stopping on or off (trainer.early_stopping.patience is changeable): the checkpoint's
    state goes into the run's EarlyStopping when both have one, and is otherwise left out without an error."""
    path = tmp_path / checkpoint.FILENAME
    _saved(path, EarlyStopping(3) if saved_with else None)
    model = _model()
    stopping = EarlyStopping(5) if restored_with else None
    history = checkpoint.restore(checkpoint.load(path), model, *_parts(model), stopping)
    assert len(history) == 1
    if stopping is not None:
        assert (stopping.best_epoch, stopping.patience) == ((1, 5) if saved_with else (0, 5))


def test_a_checkpoint_that_does_not_fit_the_model_is_one_line():
    state = checkpoint.capture("run", 1, "", _model(), *_parts(_model()), loop.History())
    other = models.DenseAutoencoder((1, 8, 8), widths=[8], bottleneck=4)
    with pytest.raises(checkpoint.CheckpointError) as refused:
        checkpoint.restore(state, other, *_parts(other))
    assert str(refused.value) == ("the checkpoint of run run (epoch 1) does not fit the model and optimizer of its own "
                                  "config (RuntimeError): it is damaged")
