"""Convolutional and variational autoencoders, denoising, and their config keys: real models on tiny data."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from idx import synthetic_images

from aeexp import checkpoint, data, models, noise, train
from aeexp.config import validate
from aeexp.errors import ConfigError

SHAPES = [(1, 8, 8), (1, 28, 28)]
KINDS = [("conv", False), ("dense", True), ("conv", True)]  # the new models: conv AE, dense VAE, conv VAE


def _tiny(n: int = 256, size: int = 8, seed: int = 0) -> data.Split:
    images, labels = synthetic_images(n, seed, size=size)
    return data.Split(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long())


def _build(shape, kind: str, variational: bool, widths=(8, 16), bottleneck: int = 4, beta: float = 1.0):
    return models.build(shape, list(widths), bottleneck, kind=kind, variational=variational, beta=beta)


@pytest.mark.parametrize("shape", SHAPES, ids=["8x8", "28x28"])
@pytest.mark.parametrize(("kind", "variational"), KINDS, ids=["conv", "vae-dense", "vae-conv"])
def test_every_model_has_the_interface_and_exact_shapes(shape, kind, variational):
    torch.manual_seed(0)
    model = _build(shape, kind, variational)
    x = torch.rand(3, *shape)
    with torch.no_grad():
        code = model.encode(x)
        out = model(x)
        logits = model.decode_logits(code)
    assert model.image_shape == shape and model.bottleneck == 4
    assert code.shape == (3, 4)
    assert out.shape == logits.shape == (3, *shape)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    torch.testing.assert_close(model.decode(code), out)
    for loss in ("bce", "mse"):
        assert model.reconstruction_loss(x, loss).shape == ()
        total, parts = model.training_loss(x, x, loss)
        assert total.shape == () and torch.isfinite(total)
        assert set(parts) == ({"recon", "kl"} if variational else set())


def test_conv_layers_halve_the_image_and_transposed_ones_restore_it():
    model = models.build((1, 28, 28), [32, 64], 32, kind="conv")
    convs = [m for m in model.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64] and all(c.stride == (2, 2) for c in convs)
    sizes = []
    h = torch.rand(2, 1, 28, 28)
    for module in model.encoder:
        h = module(h)
        if isinstance(module, torch.nn.Conv2d):
            sizes.append(h.shape[-1])
    assert sizes == [14, 7]
    assert models.conv_sizes(8, 3) == [8, 4, 2, 1] and models.max_conv_layers(8) == 3
    assert models.max_conv_layers(28) == 5
    odd = models.build((1, 9, 13), [4, 4, 4], 3, kind="conv")  # odd sides: output padding per axis
    assert odd(torch.rand(2, 1, 9, 13)).shape == (2, 1, 9, 13)
    with pytest.raises(ValueError, match="at most 3"):
        models.build((1, 8, 8), [4, 4, 4, 4], 3, kind="conv")
    with pytest.raises(ValueError, match="unknown model kind"):
        models.build((1, 8, 8), [4], 3, kind="rnn")


def test_build_keeps_the_dense_autoencoder_for_the_plain_dense_case():
    plain = models.build((1, 8, 8), [16], 4)
    assert type(plain) is models.DenseAutoencoder and plain.supports_manual_backward()
    assert isinstance(models.build((1, 8, 8), [16], 4, kind="conv"), models.ConvAutoencoder)
    vae = models.build((1, 8, 8), [16], 4, variational=True, beta=0.5)
    assert isinstance(vae, models.VariationalAutoencoder) and vae.beta == 0.5


@pytest.mark.parametrize(("kind", "level"), [("gaussian", 0.1), ("gaussian", 0.5), ("masking", 0.1),
                                             ("masking", 0.6), ("salt_pepper", 0.1), ("salt_pepper", 0.5)])
def test_corruption_statistics(kind, level):
    torch.manual_seed(0)
    x = torch.full((200, 1, 28, 28), 0.5)
    before = x.clone()
    y = noise.corrupt(x, kind, level)
    assert torch.equal(x, before), "the clean batch must not change"
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    if kind == "gaussian":  # 0.5 + level * N(0, 1), clamped to [0, 1]
        expected = torch.randn(10**6).mul_(level).add_(0.5).clamp_(0, 1)
        assert float(y.std()) == pytest.approx(float(expected.std()), rel=0.02)
        assert float(y.mean()) == pytest.approx(0.5, abs=0.005)
    elif kind == "masking":
        assert float((y == 0).float().mean()) == pytest.approx(level, abs=0.01)
        assert set(torch.unique(y).tolist()) <= {0.0, 0.5}
    else:
        assert float((y == 0).float().mean()) == pytest.approx(level / 2, abs=0.01)
        assert float((y == 1).float().mean()) == pytest.approx(level / 2, abs=0.01)
        assert float((y == 0.5).float().mean()) == pytest.approx(1 - level, abs=0.01)


def test_corruption_uses_the_global_rng_and_none_is_the_identity():
    x = torch.rand(4, 1, 8, 8)
    assert noise.corrupt(x, "none", 0.0) is x
    torch.manual_seed(3)
    first = noise.corrupt(x, "salt_pepper", 0.3)
    torch.manual_seed(3)
    assert torch.equal(noise.corrupt(x, "salt_pepper", 0.3), first)
    with pytest.raises(ValueError, match="unknown noise"):
        noise.corrupt(x, "speckle", 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        noise.corrupt(x, "masking", 1.5)


class _Identity(models.Autoencoder):
    """A model whose output is its input (logits of it): its loss is 0 exactly when inputs are the targets."""

    def __init__(self) -> None:
        super().__init__((1, 8, 8), 64)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) * self.scale

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return torch.logit(z.clamp(1e-6, 1 - 1e-6)).view(-1, *self.image_shape)


def test_noise_goes_into_the_inputs_only():
    images = data.Split((torch.rand(64, 1, 8, 8) > 0.5).to(torch.uint8) * 255, torch.zeros(64, dtype=torch.long))
    model = _Identity()
    seen: list[dict[str, float]] = []
    optimizer = train.make_optimizer(model, "sgd", 0.0, 0.0)
    train.fit(model, images, images, epochs=1, batch_size=16, optimizer=optimizer, loss="mse", seed=0,
              progress=False, on_epoch_end=lambda e, m: seen.append(m))
    assert seen[0]["train_loss"] < 1e-9 and seen[0]["val_loss"] < 1e-9  # clean: a perfect copy
    seen.clear()
    train.fit(model, images, images, epochs=1, batch_size=16, optimizer=optimizer, loss="mse", seed=0,
              progress=False, on_epoch_end=lambda e, m: seen.append(m), noise="masking", noise_level=0.5)
    # Half the pixels zeroed, half of those were 1: the copy of the noisy input misses 1/4 of the pixels by 1.
    assert seen[0]["train_loss"] == pytest.approx(0.25, abs=0.04)
    assert seen[0]["val_loss"] < 1e-9  # validation on clean images


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_denoising_on_the_written_out_backward_matches_autograd(loss):
    torch.manual_seed(0)
    model = models.build((1, 8, 8), [16, 8], 4)
    twin = copy.deepcopy(model)
    clean = torch.rand(32, 1, 8, 8)
    noisy = noise.corrupt(clean, "gaussian", 0.3)
    expected, _ = model.training_loss(noisy, clean, loss)
    expected.backward()
    got = twin.loss_and_grads(noisy, loss, models.Workspace(), targets=clean)
    assert float(got) == pytest.approx(float(expected.detach()), rel=1e-6)
    for a, b in zip(twin.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-10)
    own = copy.deepcopy(model)  # without targets the noisy inputs are their own targets: other gradients
    own.loss_and_grads(noisy, loss)
    assert not torch.allclose(own.decoder[-1].weight.grad, twin.decoder[-1].weight.grad)


def test_vae_kl_is_positive_and_reported_each_epoch():
    split = _tiny(192)
    torch.manual_seed(0)
    model = models.build((1, 8, 8), [32], 4, variational=True, beta=2.0)
    seen: list[dict[str, float]] = []
    train.fit(model, split, split, epochs=2, batch_size=64, optimizer=train.make_optimizer(model, "adam", 1e-3, 0.0),
              loss="bce", seed=0, progress=False, on_epoch_end=lambda e, m: seen.append(m))
    for metrics in seen:
        assert set(metrics) == {"train_loss", "val_loss", "epoch_time", "train_recon", "train_kl"}
        assert metrics["train_kl"] > 0
        assert metrics["train_loss"] == pytest.approx(metrics["train_recon"] + 2.0 * metrics["train_kl"], rel=1e-5)
    x = train.to_float(split.images[:50])
    with torch.no_grad():
        mean, logvar = model.posterior(x)
        expected = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).sum(1).mean() / 64
        assert float(model.kl_per_pixel(mean, logvar)) == pytest.approx(float(expected), rel=1e-5)
    assert float(expected) > 0
    # val/test loss is the objective at the mean code; the pure reconstruction loss leaves the KL out
    objective = train.evaluate_loss(model, split.images[:50], "bce")
    assert objective == pytest.approx(float(model.reconstruction_loss(x, "bce").detach() + 2.0 * expected), rel=1e-5)
    assert train.evaluate_loss(model, split.images[:50], "bce", objective=False) < objective


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_vae_codes_and_evaluation_are_deterministic(kind):
    torch.manual_seed(0)
    model = models.build((1, 8, 8), [8, 16], 4, kind=kind, variational=True)
    x = torch.rand(10, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x), model.posterior(x)[0], rtol=0, atol=0)
        assert torch.equal(model.encode(x), model.encode(x))
        assert torch.equal(model.evaluation_loss(x, "bce"), model.evaluation_loss(x, "bce"))
        first, _ = model.training_loss(x, x, "bce")
        second, _ = model.training_loss(x, x, "bce")
    assert not torch.equal(first, second)  # training samples a code


@pytest.mark.parametrize(("kind", "variational", "noisy"),
                         [("conv", False, False), ("dense", True, False), ("conv", True, False), ("conv", False, True),
                          ("dense", False, True)],
                         ids=["conv", "vae-dense", "vae-conv", "conv-denoising", "dense-denoising"])
def test_each_new_model_learns_on_tiny_data(kind, variational, noisy):
    split = _tiny(256)
    torch.manual_seed(0)
    model = _build((1, 8, 8), kind, variational, widths=(16, 32), bottleneck=8)
    optimizer = train.make_optimizer(model, "adam", 3e-3, 0.0)
    history = train.fit(model, split, _tiny(128, seed=1), epochs=4, batch_size=32, optimizer=optimizer, loss="bce",
                        seed=0, progress=False, noise="gaussian" if noisy else "none", noise_level=0.2)
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.val_loss[-1] < history.val_loss[0]


def _fit_noisy_vae(epochs: int, state: checkpoint.Checkpoint | None = None, keep: list | None = None):
    """A conv VAE with masking noise, fitted on tiny data to ``epochs``; optionally resumed from ``state``."""
    split = _tiny(96)
    torch.manual_seed(123 if state is None else 999)  # a resumed model starts from other weights and RNG
    model = models.build((1, 8, 8), [8, 16], 4, kind="conv", variational=True, beta=0.5)
    optimizer = train.make_optimizer(model, "adam", 3e-3, 0.0)
    generator = torch.Generator().manual_seed(7)
    history = None
    if state is not None:
        history = checkpoint.restore(state, model, optimizer, generator)

    def hook(epoch: int, _metrics: dict[str, float]) -> None:
        if keep is not None:
            keep.append(checkpoint.capture("run", epoch, "", model, optimizer, generator, history_box[0]))

    history_box = [history if history is not None else train.History()]
    train.fit(model, split, split, epochs=epochs, batch_size=32, optimizer=optimizer, loss="bce", seed=7,
              progress=False, on_epoch_end=hook, history=history_box[0], generator=generator,
              noise="masking", noise_level=0.3)
    return model, history_box[0]


def test_noisy_vae_resumed_from_a_checkpoint_is_bit_identical():
    straight, straight_history = _fit_noisy_vae(2)
    saved: list[checkpoint.Checkpoint] = []
    _fit_noisy_vae(1, keep=saved)
    resumed, resumed_history = _fit_noisy_vae(2, state=saved[0])
    assert resumed_history.train_loss == straight_history.train_loss
    assert resumed_history.val_loss == straight_history.val_loss
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.beta=-1"], "model.beta=-1.0 is invalid: it must be >= 0"),
        (["model.noise=gaussian"], "model.noise_level=0.0 is invalid: model.noise=gaussian needs a noise level > 0"),
        (["model.noise=masking", "model.noise_level=1.5"],
         "model.noise_level=1.5 is invalid: with model.noise=masking"),
        (["model.noise=salt_pepper", "model.noise_level=2"], "model.noise_level=2.0 is invalid"),
        (["model.noise_level=-0.1"], "model.noise_level=-0.1 is invalid: it must be >= 0"),
        (["model=conv", "model.widths=[8,8,8,8]"], "model.widths=[8, 8, 8, 8] is invalid: .* allow at most 3"),
        (["model=conv", "model.widths=[8,-8]"], r"model.widths\[1\]=-8"),
    ],
)
def test_invalid_model_settings_name_the_key(make_config, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[8", r"\[8").replace("8]", r"8\]")) as raised:
        validate(make_config(*overrides))
    assert "\n" not in str(raised.value)


def test_new_presets_and_valid_settings(make_config):
    conv = make_config("model=conv", "dataset=fashion_mnist")
    assert conv.model.kind.value == "conv" and list(conv.model.widths) == [32, 64] and conv.model.bottleneck == 32
    validate(conv)
    validate(make_config("model=conv", "model.widths=[8,8,8]"))  # 8 -> 4 -> 2 -> 1 fits digits
    validate(make_config("dataset=mnist", "model=conv", "model.widths=[8,8,8,8,8]"))
    vae = make_config("model=vae")
    assert vae.model.variational and vae.model.kind.value == "dense" and vae.model.beta == 0.1
    validate(vae)
    validate(make_config("model=vae", "model.kind=conv", "model.noise=salt_pepper", "model.noise_level=0.2"))
    validate(make_config("model.noise=gaussian", "model.noise_level=1.5"))  # a std may exceed 1
    default = make_config()
    assert default.model.kind.value == "dense" and not default.model.variational
    assert default.model.noise.value == "none" and default.model.noise_level == 0.0
    model = models.build((1, 8, 8), vae.model.widths, vae.model.bottleneck, kind=vae.model.kind,
                         variational=vae.model.variational, beta=vae.model.beta)
    assert isinstance(model, models.VariationalAutoencoder)
    codes = train.encode_all(model, torch.from_numpy(synthetic_images(10, 0, size=8)[0]).unsqueeze(1))
    assert codes.shape == (10, 32) and np.isfinite(codes.numpy()).all()
