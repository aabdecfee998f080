"""Training that converges: early stopping on the validation loss with the best epoch's weights, the VAE's KL
warm-up, and fixed subsets of a dataset (the small-data case)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from aeexp import data, models
from aeexp.models import inference
from aeexp.training import checkpoint, early_stopping, loop, optim


def _dense(seed: int = 0) -> models.DenseAutoencoder:
    torch.manual_seed(seed)
    return models.DenseAutoencoder((1, 8, 8), widths=[32], bottleneck=4)


def test_early_stopping_counts_epochs_without_improvement_beyond_min_delta():
    model = _dense()
    stopping = early_stopping.EarlyStopping(patience=2, min_delta=0.01)
    for epoch, loss in enumerate([1.0, 0.9, 0.895, 0.85, 0.849, 0.848], start=1):
        stopping.update(epoch, loss, model)
        if epoch == 3:  # 0.895 is not 0.01 below 0.9: one bad epoch
            assert (stopping.best_epoch, stopping.bad_epochs, stopping.stopped) == (2, 1, False)
    assert (stopping.best_epoch, stopping.best_loss) == (4, 0.85)
    assert stopping.bad_epochs == 2 and stopping.stopped
    with pytest.raises(ValueError, match="patience"):
        early_stopping.EarlyStopping(patience=0)


def test_patience_one_from_a_fresh_start_and_an_equal_loss_is_no_improvement():
    """The smallest patience, 1: a fresh EarlyStopping has not stopped, has no best weights (its state holds none and
    restoring them changes nothing); the first epoch is an improvement, and an epoch with the same loss is not, so it
    stops there."""
    model = _dense()
    before = copy.deepcopy(model.state_dict())
    stopping = early_stopping.EarlyStopping(patience=1)
    assert (stopping.stopped, stopping.best_epoch, stopping.bad_epochs) == (False, 0, 0)
    state = stopping.state_dict()
    assert (state["best_weights"], state["best_epoch"], state["bad_epochs"]) == (None, 0, 0)
    stopping.restore_best(model)
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
    stopping.update(1, 0.5, model)
    assert (stopping.stopped, stopping.best_epoch, stopping.bad_epochs) == (False, 1, 0)
    stopping.update(2, 0.5, model)
    assert (stopping.stopped, stopping.best_epoch, stopping.bad_epochs) == (True, 1, 1)


def test_the_best_epochs_weights_are_kept_and_put_back():
    model = _dense()
    stopping = early_stopping.EarlyStopping(patience=5)
    stopping.update(1, 0.5, model)
    best = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    stopping.update(2, 0.7, model)  # worse: not kept
    stopping.restore_best(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, best[key]), key


def _fit(epochs: int, patience: int, history=None, state=None, seed: int = 0):
    digits = data.load(data.Digits())
    model = _dense(seed)
    optimizer = torch.optim.Adam(optim.parameter_groups(model), lr=3e-3, fused=True)
    schedule = optim.Schedule(optimizer)
    generator = torch.Generator().manual_seed(0)
    stopping = early_stopping.EarlyStopping(patience)
    if state is not None:
        history = checkpoint.restore(state, model, optimizer, schedule, generator, stopping)
    saved = []

    def hook(epoch, _metrics):
        saved.append(checkpoint.capture("run", epoch, "", model, optimizer, schedule, generator, history_box[0],
                                        stopping))

    history_box = [history if history is not None else loop.History()]
    loop.fit(model, digits.train, digits.val, epochs=epochs, batch_size=64, optimizer=optimizer, seed=0,
             schedule=schedule, early_stopping=stopping, history=history_box[0], generator=generator,
             progress=False, on_epoch_end=hook)
    return model, history_box[0], stopping, saved, digits


def test_fit_stops_once_validation_stops_improving_and_the_best_weights_score_best():
    model, history, stopping, _, digits = _fit(epochs=400, patience=3)
    assert len(history) < 400 and stopping.stopped
    val = history.val_loss
    best = int(np.argmin(val)) + 1
    assert stopping.best_epoch == best and stopping.best_loss == val[best - 1]
    assert all(loss >= stopping.best_loss for loss in val[best:])  # nothing better after it...
    assert len(history) == best + 3  # ...for exactly `patience` epochs
    stopping.restore_best(model)
    assert inference.evaluate_loss(model, digits.val.images) == pytest.approx(stopping.best_loss, rel=1e-6)


def test_early_stopping_resumes_bit_identical():
    straight, straight_history, straight_stopping, straight_saved, _ = _fit(epochs=400, patience=3)
    stopped_at = len(straight_history)
    _, _, _, saved, _ = _fit(epochs=stopped_at - 2, patience=3)  # interrupted two epochs before the stop
    resumed, resumed_history, resumed_stopping, _, _ = _fit(epochs=400, patience=3, state=saved[-1], seed=9)
    assert resumed_history.train_loss == straight_history.train_loss
    assert resumed_history.val_loss == straight_history.val_loss
    assert resumed_stopping.best_epoch == straight_stopping.best_epoch
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(a, b)
    for key, value in resumed_stopping.best_weights.items():
        assert torch.equal(value, straight_stopping.best_weights[key]), key
    # the last checkpoint of a run that had stopped: resuming it trains nothing more
    _, again, _, _, _ = _fit(epochs=400, patience=3, state=straight_saved[-1])
    assert len(again) == stopped_at


def test_vae_kl_warm_up_rises_linearly_and_is_logged_per_epoch():
    digits = data.load(data.Digits())
    torch.manual_seed(0)
    model = models.VariationalAutoencoder((1, 8, 8), widths=[32], bottleneck=4, beta=0.5, beta_warmup_epochs=4)
    optimizer = torch.optim.Adam(optim.parameter_groups(model), lr=1e-3, fused=True)
    seen = []
    loop.fit(model, digits.train, digits.val, epochs=6, batch_size=64, optimizer=optimizer, seed=0, progress=False,
             on_epoch_end=lambda epoch, metrics: seen.append(metrics))
    betas = [metrics["train_beta"] for metrics in seen]
    assert betas == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5, 0.5])
    for metrics, beta in zip(seen, betas, strict=True):
        assert metrics["train_loss"] == pytest.approx(metrics["train_recon"] + beta * metrics["train_kl"], rel=1e-5)
    x = inference.to_float(digits.val.images[:50])
    with torch.no_grad():  # validation uses the full beta, so that every epoch's val_loss compares
        mean, logvar = model.posterior(x)
        expected = models.pixel_loss(model.decode_logits(mean), x, "bce") + 0.5 * model.kl_per_pixel(mean, logvar)
        assert float(model.evaluation_loss(x)) == pytest.approx(float(expected), rel=1e-6)


def test_a_fixed_stratified_subset_of_the_splits():
    full = data.load(data.Digits())
    small = data.load(data.Digits(train_size=500, test_size=100), seed=3)
    other_seed = data.load(data.Digits(train_size=500, test_size=100), seed=4)
    assert len(small.train) + len(small.val) == 500 and len(small.test) == 100
    assert torch.equal(small.test.images, other_seed.test.images)  # the subset does not depend on the seed
    both = [torch.cat([d.train.labels, d.val.labels]) for d in (small, other_seed)]
    assert torch.equal(both[0].sort().values, both[1].sort().values)
    counts = np.bincount(both[0].numpy(), minlength=10)
    full_counts = np.bincount(torch.cat([full.train.labels, full.val.labels]).numpy(), minlength=10)
    assert np.abs(counts / 500 - full_counts / full_counts.sum()).max() < 0.01  # stratified
    assert math.isclose(len(data.load(data.Digits(train_size=10_000)).test), len(full.test))  # larger: all
