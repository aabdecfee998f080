"""Convolutional and variational autoencoders, denoising, and their config keys: real models on tiny data."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from idx import synthetic_images

from aeexp import data, models
from aeexp.errors import ConfigError, InvalidParameter
from aeexp.models import inference, noise
from aeexp.models.conv import conv_sizes, max_conv_layers
from aeexp.training import checkpoint, fastpath, loop, optim

SHAPES = [(1, 8, 8), (1, 28, 28)]
KINDS = [("conv", False), ("dense", True), ("conv", True)]  # the new models: conv AE, dense VAE, conv VAE
DIGITS_SHAPE = (1, 8, 8)
MNIST_SHAPE = (1, 28, 28)


def _tiny(n: int = 256, size: int = 8, seed: int = 0) -> data.Split:
    images, labels = synthetic_images(n, seed, size=size)
    return data.Split(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long())


def _build(shape, kind: str, variational: bool, widths=(8, 16), bottleneck: int = 4, beta: float = 1.0, **kwargs):
    if variational:
        return models.VariationalAutoencoder(shape, list(widths), bottleneck, kind=kind, beta=beta, **kwargs)
    family = models.ConvAutoencoder if kind == "conv" else models.DenseAutoencoder
    return family(shape, list(widths), bottleneck, **kwargs)


def _adam(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(optim.parameter_groups(model), lr=lr, fused=True)


@pytest.mark.parametrize("shape", SHAPES, ids=["8x8", "28x28"])
@pytest.mark.parametrize(("kind", "variational"), KINDS, ids=["conv", "vae-dense", "vae-conv"])
def test_every_model_has_the_interface_and_exact_shapes(shape, kind, variational):
    x = torch.rand(3, *shape)
    for loss in ("bce", "mse"):
        torch.manual_seed(0)
        model = _build(shape, kind, variational, loss=loss)
        with torch.no_grad():
            code = model.encode(x)
            out = model(x)
            logits = model.decode_logits(code)
        assert model.image_shape == shape and model.bottleneck == 4 and model.loss == loss
        assert code.shape == (3, 4)
        assert out.shape == logits.shape == (3, *shape)
        assert float(out.min()) >= 0 and float(out.max()) <= 1
        torch.testing.assert_close(model.decode(code), out)
        assert model.evaluation_loss(x).shape == ()
        total, parts = model.training_loss(x, x)
        assert total.shape == () and torch.isfinite(total)
        assert set(parts) == ({"recon", "kl", "beta"} if variational else set())
        if not variational:  # deterministic: the evaluation loss is the training loss
            torch.testing.assert_close(model.evaluation_loss(x), total, rtol=0, atol=0)
            torch.testing.assert_close(total, models.pixel_loss(logits, x, loss))


def test_conv_layers_halve_the_image_and_transposed_ones_restore_it():
    model = models.ConvAutoencoder((1, 28, 28), [32, 64], 32)
    convs = [m for m in model.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64] and all(c.stride == (2, 2) for c in convs)
    sizes = []
    h = torch.rand(2, 1, 28, 28)
    for module in model.encoder:
        h = module(h)
        if isinstance(module, torch.nn.Conv2d):
            sizes.append(h.shape[-1])
    assert sizes == [14, 7]
    assert conv_sizes(8, 3) == [8, 4, 2, 1] and max_conv_layers(8) == 3
    assert max_conv_layers(28) == 5
    odd = models.ConvAutoencoder((1, 9, 13), [4, 4, 4], 3)  # odd sides: output padding per axis
    assert odd(torch.rand(2, 1, 9, 13)).shape == (2, 1, 9, 13)
    with pytest.raises(InvalidParameter, match="at most 3") as raised:
        models.ConvAutoencoder((1, 8, 8), [4, 4, 4, 4], 3)
    assert raised.value.name == "widths"
    with pytest.raises(InvalidParameter, match="choose one of dense, conv") as raised:
        models.VariationalAutoencoder((1, 8, 8), [4], 3, kind="rnn")
    assert raised.value.name == "kind"
    with pytest.raises(InvalidParameter, match="choose one of dense, conv"):
        models.VQVAE((1, 8, 8), [4], 4, kind="rnn")


def test_build_makes_each_family_from_its_config(make_config):
    plain = models.build(make_config().model, DIGITS_SHAPE)
    assert type(plain) is models.DenseAutoencoder and fastpath.applies_to(plain)
    # digits' 4-d code (conf/dataset_model/digits.yaml); the preset's own 32 on other datasets
    assert plain.widths == [128, 64] and plain.bottleneck == 4 and plain.loss == "bce"
    assert make_config("dataset=mnist").model.bottleneck == 32
    conv = models.build(make_config("model=conv").model, DIGITS_SHAPE)
    assert type(conv) is models.ConvAutoencoder and not fastpath.applies_to(conv)
    vae = models.build(make_config("model=vae", "model.beta=0.5").model, DIGITS_SHAPE)
    assert isinstance(vae, models.VariationalAutoencoder) and vae.beta == 0.5 and vae.kind == "dense"
    sparse = models.build(make_config("model=sparse", "model.l1=0.2").model, DIGITS_SHAPE)
    assert type(sparse) is models.SparseAutoencoder and sparse.l1 == 0.2 and not fastpath.applies_to(sparse)
    vq = models.build(make_config("model=vqvae", "model.kind=conv").model, DIGITS_SHAPE)
    assert type(vq) is models.VQVAE and vq.kind == "conv" and vq.codebook.shape == (256, 1)  # digits: vector_size 1


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
    with pytest.raises(InvalidParameter, match=r"\[0, 1\]") as raised:
        noise.checked_level("masking", 1.5)
    assert raised.value.name == "noise_level"
    with pytest.raises(InvalidParameter, match="choose one of none, gaussian") as raised:
        noise.checked_level("speckle", 0.1)
    assert raised.value.name == "noise"
    with pytest.raises(InvalidParameter, match=r"\[0, 1\]"):  # a model refuses it when made
        models.DenseAutoencoder((1, 8, 8), [16], 4, noise="masking", noise_level=1.5)
    assert noise.checked_level("gaussian", 1.5) == 1.5  # a std may exceed 1
    assert noise.checked_level("gaussian", None) == noise.DEFAULT_LEVELS["gaussian"]


class _Identity(models.Autoencoder):
    """A model whose output is its input (logits of it): its loss is 0 exactly when inputs are the targets."""

    def __init__(self, **kwargs) -> None:
        super().__init__((1, 8, 8), 63, loss="mse", **kwargs)
        self.bottleneck = 64  # the code is the image itself (the base refuses a code as large as the input)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) * self.scale

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return torch.logit(z.clamp(1e-6, 1 - 1e-6)).view(-1, *self.image_shape)


def test_noise_goes_into_the_inputs_only():
    images = data.Split((torch.rand(64, 1, 8, 8) > 0.5).to(torch.uint8) * 255, torch.zeros(64, dtype=torch.long))
    seen: list[dict[str, float]] = []
    model = _Identity()
    loop.fit(model, images, images, epochs=1, batch_size=16, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
             seed=0, progress=False, on_epoch_end=lambda e, m: seen.append(m))
    assert seen[0]["train_loss"] < 1e-9 and seen[0]["val_loss"] < 1e-9  # clean: a perfect copy
    seen.clear()
    noisy = _Identity(noise="masking", noise_level=0.5)
    loop.fit(noisy, images, images, epochs=1, batch_size=16, optimizer=torch.optim.SGD(noisy.parameters(), lr=0.0),
             seed=0, progress=False, on_epoch_end=lambda e, m: seen.append(m))
    # Half the pixels zeroed, half of those were 1: the copy of the noisy input misses 1/4 of the pixels by 1.
    assert seen[0]["train_loss"] == pytest.approx(0.25, abs=0.04)
    assert seen[0]["val_loss"] < 1e-9  # validation on clean images


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_denoising_on_the_written_out_backward_matches_autograd(loss):
    torch.manual_seed(0)
    model = models.DenseAutoencoder((1, 8, 8), [16, 8], 4, loss=loss, noise="gaussian", noise_level=0.3)
    twin = copy.deepcopy(model)
    clean = torch.rand(32, 1, 8, 8)
    noisy = model.corrupt(clean)
    assert not torch.equal(noisy, clean)
    expected, _ = model.training_loss(noisy, clean)
    expected.backward()
    got = fastpath.loss_and_grads(twin, noisy, clean, fastpath.Workspace())
    assert float(got) == pytest.approx(float(expected.detach()), rel=1e-6)
    for a, b in zip(twin.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-10)
    own = copy.deepcopy(model)  # the noisy inputs as their own targets: other gradients
    fastpath.loss_and_grads(own, noisy, noisy)
    assert not torch.allclose(own.decoder[-1].weight.grad, twin.decoder[-1].weight.grad)


def test_vae_kl_is_positive_and_reported_each_epoch():
    split = _tiny(192)
    torch.manual_seed(0)
    model = models.VariationalAutoencoder((1, 8, 8), [32], 4, beta=2.0)
    seen: list[dict[str, float]] = []
    loop.fit(model, split, split, epochs=2, batch_size=64, optimizer=_adam(model, 1e-3), seed=0, progress=False,
             on_epoch_end=lambda e, m: seen.append(m))
    for metrics in seen:
        assert set(metrics) == {"train_loss", "val_loss", "epoch_time", "lr", "train_recon", "train_kl", "train_beta"}
        assert metrics["train_beta"] == 2.0  # no warm-up
        assert metrics["train_kl"] > 0
        assert metrics["train_loss"] == pytest.approx(metrics["train_recon"] + 2.0 * metrics["train_kl"], rel=1e-5)
    x = inference.to_float(split.images[:50])
    with torch.no_grad():
        mean, logvar = model.posterior(x)
        expected = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).sum(1).mean() / 64
        assert float(model.kl_per_pixel(mean, logvar)) == pytest.approx(float(expected), rel=1e-5)
        recon = float(models.pixel_loss(model.decode_logits(mean), x, "bce"))
    assert float(expected) > 0
    # val/test loss is the objective at the mean code; the pure reconstruction loss leaves the KL out
    objective = inference.evaluate_loss(model, split.images[:50])
    assert objective == pytest.approx(recon + 2.0 * float(expected), rel=1e-5)
    assert recon < objective


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_vae_codes_and_evaluation_are_deterministic(kind):
    torch.manual_seed(0)
    model = models.VariationalAutoencoder((1, 8, 8), [8, 16], 4, kind=kind)
    x = torch.rand(10, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x), model.posterior(x)[0], rtol=0, atol=0)
        assert torch.equal(model.encode(x), model.encode(x))
        assert torch.equal(model.evaluation_loss(x), model.evaluation_loss(x))
        first, _ = model.training_loss(x, x)
        second, _ = model.training_loss(x, x)
    assert not torch.equal(first, second)  # training samples a code


@pytest.mark.parametrize(("kind", "variational", "noisy"),
                         [("conv", False, False), ("dense", True, False), ("conv", True, False), ("conv", False, True),
                          ("dense", False, True)],
                         ids=["conv", "vae-dense", "vae-conv", "conv-denoising", "dense-denoising"])
def test_each_new_model_learns_on_tiny_data(kind, variational, noisy):
    split = _tiny(256)
    torch.manual_seed(0)
    model = _build((1, 8, 8), kind, variational, widths=(16, 32), bottleneck=8,
                   noise="gaussian" if noisy else "none", noise_level=0.2)
    history = loop.fit(model, split, _tiny(128, seed=1), epochs=4, batch_size=32, optimizer=_adam(model, 3e-3),
                       seed=0, progress=False)
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.val_loss[-1] < history.val_loss[0]


@pytest.mark.parametrize("path", ["fast", "autograd"])
def test_a_batch_normalised_code_has_zero_mean_and_unit_variance(path):
    split = _tiny(161)  # 5 batches of 32 and a last batch of one image: it trains too
    torch.manual_seed(0)
    model = models.DenseAutoencoder(DIGITS_SHAPE, [16], 4, code_norm="batch")
    optimizer = _adam(model, 3e-3)
    step = (loop.make_step(model, optimizer, torch.device("cpu")) if path == "fast"
            else loop.AutogradStep(model, optimizer, torch.device("cpu"), compiled=False, mixed_precision=False))
    assert step.path == path
    images = inference.to_float(split.images)

    model.train()
    codes = model.encode(images)
    assert torch.allclose(codes.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(codes.var(0, unbiased=False), torch.ones(4), atol=1e-3)
    running = model.encoder[-1].running_mean.clone()
    one = model.encode(images[:1])  # no batch variance: the running statistics, left as they are
    assert torch.isfinite(one).all() and torch.equal(model.encoder[-1].running_mean, running)

    batches_before = int(model.encoder[-1].num_batches_tracked)
    history = loop.fit(model, split, _tiny(64, seed=1), epochs=4, batch_size=32, optimizer=optimizer, seed=0,
                       step=step, progress=False)
    assert history.val_loss[-1] < history.val_loss[0]
    # 4 epochs of 5 batches of 32 counted; their batches of one left the statistics alone
    assert int(model.encoder[-1].num_batches_tracked) - batches_before == 4 * 5
    model.eval()  # after training: the running statistics, the same code for an image alone or in a batch
    assert torch.allclose(model.encode(images[:1]), model.encode(images)[:1], atol=1e-6)


def _fit_noisy_vae(epochs: int, state: checkpoint.Checkpoint | None = None, keep: list | None = None):
    """A conv VAE with masking noise, fitted on tiny data to ``epochs``; optionally resumed from ``state``."""
    split = _tiny(96)
    torch.manual_seed(123 if state is None else 999)  # a resumed model starts from other weights and RNG
    model = models.VariationalAutoencoder((1, 8, 8), [8, 16], 4, kind="conv", beta=0.5, noise="masking",
                                          noise_level=0.3)
    optimizer = _adam(model, 3e-3)
    schedule = optim.Schedule(optimizer)
    generator = torch.Generator().manual_seed(7)
    history = loop.History()
    if state is not None:
        history = checkpoint.restore(state, model, optimizer, schedule, generator)

    def hook(epoch: int, _metrics: dict[str, float]) -> None:
        if keep is not None:
            keep.append(checkpoint.capture("run", epoch, "", model, optimizer, schedule, generator, history))

    loop.fit(model, split, split, epochs=epochs, batch_size=32, optimizer=optimizer, seed=7, schedule=schedule,
             progress=False, on_epoch_end=hook, history=history, generator=generator)
    return model, history


def test_noisy_vae_resumed_from_a_checkpoint_is_bit_identical():
    straight, straight_history = _fit_noisy_vae(2)
    saved: list[checkpoint.Checkpoint] = []
    _fit_noisy_vae(1, keep=saved)
    assert [state.epoch for state in saved] == [1] and len(saved[0].history) == 1
    resumed, resumed_history = _fit_noisy_vae(2, state=saved[0])
    assert len(resumed_history) == 2
    assert resumed_history.train_loss == straight_history.train_loss
    assert resumed_history.val_loss == straight_history.val_loss
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=vae", "model.beta=-1.0"], "model.beta=-1.0 is invalid: it must be >= 0"),
        (["model=sparse", "model.l1=-0.5"], "model.l1=-0.5 is invalid: it must be >= 0"),
        (["model.noise=masking", "model.noise_level=1.5"],
         "model.noise_level=1.5 is invalid: with model.noise=masking"),
        (["model.noise=salt_pepper", "model.noise_level=2.0"], "model.noise_level=2.0 is invalid"),
        (["model.noise_level=-0.1"], "model.noise_level=-0.1 is invalid: it must be >= 0"),
        (["model.noise=speckle"], "model.noise='speckle' is invalid: choose one of none, gaussian"),
        (["model.loss=l1"], "model.loss='l1' is invalid: choose one of bce, mse"),
        (["model.bottleneck=1.5"], "model.bottleneck=1.5 is invalid: expected an integer"),
        (["model.bottleneck=64"], "model.bottleneck=64 is invalid: it must be smaller than the input size 64"),
        (["model.widths=[]"], "model.widths=[] is invalid: give at least one hidden width"),
        (["model.code_norm=layer"], "model.code_norm='layer' is invalid: choose one of none, batch"),
        (["+model.beta=1.0"], "model.beta is not a parameter of aeexp.models.dense.DenseAutoencoder"),
        (["model=conv", "model.widths=[8,8,8,8]"], "model.widths=[8, 8, 8, 8] is invalid: .* allow at most 3"),
        (["model=conv", "model.widths=[8,-8]"], r"model.widths\[1\]=-8"),
        (["model=vae", "model.kind=rnn"], "model.kind='rnn' is invalid: choose one of dense, conv"),
        (["model=vqvae", "model.vector_size=3"], "model.vector_size=3 is invalid: it must divide the bottleneck 4"),
        (["model=vqvae", "model.codebook_size=1"], "model.codebook_size=1 is invalid: it must be at least 2"),
    ],
)
def test_invalid_model_settings_name_the_key(make_config, overrides, message):
    config = make_config(*overrides)
    with pytest.raises(ConfigError, match=message.replace("[8", r"\[8").replace("8]", r"8\]").replace("[]", r"\[\]")
                       ) as raised:
        models.build(config.model, DIGITS_SHAPE)
    assert "\n" not in str(raised.value)
    assert str(raised.value).startswith("model.")


def test_new_presets_and_valid_settings(make_config):
    conv = make_config("model=conv", "dataset=fashion_mnist")
    assert conv.model._target_ == "aeexp.models.ConvAutoencoder"
    assert list(conv.model.widths) == [32, 64] and conv.model.bottleneck == 32
    assert isinstance(models.build(conv.model, MNIST_SHAPE), models.ConvAutoencoder)
    models.build(make_config("model=conv", "model.widths=[8,8,8]").model, DIGITS_SHAPE)  # 8 -> 4 -> 2 -> 1 fits
    deep = models.build(make_config("dataset=mnist", "model=conv", "model.widths=[8,8,8,8,8]").model, MNIST_SHAPE)
    assert deep(torch.rand(2, *MNIST_SHAPE)).shape == (2, *MNIST_SHAPE)
    vae = make_config("model=vae")
    assert vae.model._target_ == "aeexp.models.VariationalAutoencoder"
    assert vae.model.kind == "dense" and vae.model.beta == 0.1
    noisy = models.build(make_config("model=vae", "model.kind=conv", "model.noise=salt_pepper",
                                     "model.noise_level=0.2").model, DIGITS_SHAPE)
    assert noisy.kind == "conv" and noisy.noise == "salt_pepper" and noisy.noise_level == 0.2
    assert models.build(make_config("model.noise=gaussian", "model.noise_level=1.5").model,
                        DIGITS_SHAPE).noise_level == 1.5  # a std may exceed 1
    default = make_config()
    assert default.model._target_ == "aeexp.models.DenseAutoencoder"
    assert default.model.noise == "none" and default.model.noise_level is None
    plain = models.build(default.model, DIGITS_SHAPE)
    assert plain.noise == "none" and plain.noise_level == 0.0
    for kind in ("gaussian", "masking", "salt_pepper"):  # a noise without a level gets the kind's default
        model = models.build(make_config(f"model.noise={kind}").model, DIGITS_SHAPE)
        assert model.noise == kind and model.noise_level == noise.DEFAULT_LEVELS[kind] > 0
    assert noise.DEFAULT_LEVELS["gaussian"] == 0.3
    model = models.build(vae.model, DIGITS_SHAPE)
    assert isinstance(model, models.VariationalAutoencoder)
    codes = inference.encode_all(model, torch.from_numpy(synthetic_images(10, 0, size=8)[0]).unsqueeze(1))
    assert codes.shape == (10, 4) and np.isfinite(codes.numpy()).all()  # digits' 4-d code
