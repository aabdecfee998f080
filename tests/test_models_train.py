"""The dense autoencoder and the training loop on tiny real data."""

from __future__ import annotations

import pytest
import torch

from aeexp import data, models
from aeexp.models import inference
from aeexp.training import loop, optim


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_shapes_follow_the_dataset(shape):
    model = models.DenseAutoencoder(shape, widths=[32, 16], bottleneck=4)
    x = torch.rand(3, *shape)
    with torch.no_grad():
        assert model.encode(x).shape == (3, 4)
        out = model(x)
    assert out.shape == (3, *shape)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    first = model.encoder[0]
    assert first.in_features == shape[1] * shape[2]
    assert [m.out_features for m in model.decoder if isinstance(m, torch.nn.Linear)] == [16, 32, shape[1] * shape[2]]


def test_glorot_init_with_zero_biases():
    """Every weight matrix drawn from Glorot's uniform U(-a, a), a = sqrt(6 / (fan_in + fan_out)): inside the bounds,
    reaching them, centred, with its variance a^2 / 3 (within 6 standard errors of the sample variance), and not
    torch's default (kaiming-uniform, bound 1 / sqrt(fan_in)) nor zeros; biases zero."""
    torch.manual_seed(0)
    model = models.DenseAutoencoder((1, 28, 28), widths=[400, 200], bottleneck=25)
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) == 6
    for layer in layers:
        assert torch.count_nonzero(layer.bias) == 0
        weights = layer.weight.detach().double().flatten()
        n = weights.numel()
        limit = (6 / (layer.in_features + layer.out_features)) ** 0.5
        assert float(weights.abs().max()) <= limit
        assert float(weights.abs().max()) >= limit * (1 - 20 / n)  # n draws reach within ~1/n of the bound
        variance = limit**2 / 3
        assert abs(float(weights.mean())) < 6 * (variance / n) ** 0.5
        # The sample variance of n uniform draws has a relative standard error of sqrt(0.8 / n).
        assert float(weights.var()) == pytest.approx(variance, rel=6 * (0.8 / n) ** 0.5)
        # (For these shapes torch's default bound differs from Glorot's by far more than the tolerances above.)
        assert abs(limit - 1 / layer.in_features**0.5) > 0.1 * limit


@torch.no_grad()
def test_bce_loss_matches_the_definition():
    torch.manual_seed(0)
    model = models.DenseAutoencoder((1, 8, 8), widths=[16], bottleneck=4, loss="bce")
    twin = models.DenseAutoencoder((1, 8, 8), widths=[16], bottleneck=4, loss="mse")
    twin.load_state_dict(model.state_dict())
    x = torch.rand(5, 1, 8, 8)
    out = model(x).clamp(1e-7, 1 - 1e-7)
    expected = -(x * out.log() + (1 - x) * (1 - out).log()).mean()
    assert float(model.evaluation_loss(x)) == pytest.approx(float(expected), rel=1e-4)
    assert float(model.training_loss(x, x)[0]) == pytest.approx(float(expected), rel=1e-4)
    assert float(twin.evaluation_loss(x)) == pytest.approx(float(((model(x) - x) ** 2).mean()), rel=1e-5)
    assert float(twin.training_loss(x, x)[0]) == pytest.approx(float(((model(x) - x) ** 2).mean()), rel=1e-5)


def _fit(dataset: data.Dataset, seed: int, epochs: int = 3, lr: float = 1e-3, loss: str = "bce"):
    torch.manual_seed(seed)
    model = models.DenseAutoencoder(dataset.image_shape, widths=[64, 32], bottleneck=8, loss=loss)
    optimizer = torch.optim.Adam(optim.parameter_groups(model), lr=lr, fused=True)
    seen = []
    history = loop.fit(model, dataset.train, dataset.val, epochs=epochs, batch_size=64, optimizer=optimizer,
                       seed=seed, progress=False, on_epoch_end=lambda e, m: seen.append((e, m)))
    return model, history, seen


def test_fit_lowers_the_loss_and_calls_the_hook_each_epoch():
    digits = data.load(data.Digits())
    _, history, seen = _fit(digits, seed=0, epochs=4)
    assert [epoch for epoch, _ in seen] == [1, 2, 3, 4]
    assert set(seen[0][1]) == {"train_loss", "val_loss", "epoch_time", "lr"}
    assert [metrics for _, metrics in seen] == history.epochs and len(history) == 4
    assert history.series("lr") == [1e-3] * 4
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.val_loss[-1] < history.val_loss[0]


def test_fit_is_deterministic_for_a_seed():
    digits = data.load(data.Digits())
    first, h1, _ = _fit(digits, seed=5)
    second, h2, _ = _fit(digits, seed=5)
    _, h3, _ = _fit(digits, seed=6)
    assert h1.train_loss == h2.train_loss
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert h1.train_loss != h3.train_loss


def test_non_finite_loss_stops_with_the_setting_to_look_at():
    digits = data.load(data.Digits())
    model = models.DenseAutoencoder(digits.image_shape, widths=[16], bottleneck=4)
    optimizer = torch.optim.SGD(optim.parameter_groups(model), lr=1e20)
    with pytest.raises(loop.NonFiniteLossError, match=r"epoch 1.*optimizer\.lr \(now 1e\+20\)"):
        loop.fit(model, digits.train, digits.val, epochs=3, batch_size=64, optimizer=optimizer, seed=0,
                 progress=False)


def test_batches_cover_every_image_once_per_epoch():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    batches = list(loop.iterate_batches(images, 4, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4, 4, 2]
    values = sorted(round(float(v) * 255) for b in batches for v in b.flatten())
    assert values == list(range(10))
    assert batches[0].dtype == torch.float32


@torch.no_grad()
def test_evaluate_loss_weights_batches_by_size(monkeypatch):
    model = models.DenseAutoencoder((1, 8, 8), widths=[16], bottleneck=4, loss="mse")
    images = (torch.rand(9, 1, 8, 8) * 255).to(torch.uint8)
    whole = float(model.evaluation_loss(inference.to_float(images)))
    monkeypatch.setattr(inference, "EVAL_BATCH_SIZE", 4)
    sizes: list[int] = []
    own = model.evaluation_loss
    monkeypatch.setattr(model, "evaluation_loss", lambda x: (sizes.append(len(x)), own(x))[1])
    assert inference.evaluate_loss(model, images) == pytest.approx(whole, rel=1e-5)
    assert sizes == [4, 4, 1]
