"""Early stopping on the validation loss, keeping the weights of the best epoch (``trainer.early_stopping``)."""

from __future__ import annotations

import math
from typing import Any

import torch


class EarlyStopping:
    """Stop training once ``val_loss`` has not improved by more than ``min_delta`` for ``patience`` epochs in a row,
    and keep a copy of the weights of the best epoch so far, to be put back before the model is evaluated.

    Its state (:meth:`state_dict`) goes into each checkpoint, so that a resumed run stops where an uninterrupted
    one would.
    """

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ValueError(f"patience must be at least 1, not {patience}")
        self.patience, self.min_delta = patience, float(min_delta)
        self.best_loss = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    @property
    def stopped(self) -> bool:
        """Whether training should stop (``patience`` epochs without improvement)."""
        return self.bad_epochs >= self.patience

    def update(self, epoch: int, val_loss: float, model: torch.nn.Module) -> None:
        """Take epoch ``epoch``'s validation loss; a new best keeps a copy of ``model``'s weights."""
        if val_loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch, self.bad_epochs = float(val_loss), epoch, 0
            self.best_weights = {key: value.detach().clone() for key, value in model.state_dict().items()}
        else:
            self.bad_epochs += 1

    def restore_best(self, model: torch.nn.Module) -> None:
        """Put the best epoch's weights back into ``model`` (nothing if no epoch was better than none)."""
        if self.best_weights is not None:
            model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"patience": self.patience, "min_delta": self.min_delta, "best_loss": self.best_loss,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "best_weights": None if self.best_weights is None else
                {key: value.detach().cpu().clone() for key, value in self.best_weights.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The saved progress; the patience and min_delta stay this object's (a resume may change them)."""
        self.best_loss, self.best_epoch = float(state["best_loss"]), int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.best_weights = state["best_weights"]
