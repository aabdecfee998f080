"""Every speed path gives the answer of the plain path it replaces (within float tolerance); no timings here."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import make_blobs

from aeexp import data, models, threads
from aeexp.evaluation import lists, metrics, views
from aeexp.models import inference
from aeexp.training import checkpoint, fastpath, loop, optim

CPU = torch.device("cpu")


def _dense(shape=(1, 8, 8), widths=(16,), bottleneck=4, loss="bce", seed=0, code_norm="none"
           ) -> models.DenseAutoencoder:
    torch.manual_seed(seed)
    return models.DenseAutoencoder(shape, widths=list(widths), bottleneck=bottleneck, loss=loss, code_norm=code_norm)


def _adam(model: torch.nn.Module, lr: float = 1e-3, **kwargs) -> torch.optim.Adam:
    """The optimizer the shipped ``optimizer=adam`` config builds: fused Adam over the two parameter groups."""
    return torch.optim.Adam(optim.parameter_groups(model), lr=lr, fused=True, **kwargs)


@pytest.mark.parametrize("scale", [0.1, 3.0, 50.0, 500.0])
def test_fast_path_bce_matches_torch_in_value_and_gradient(scale):
    # Logits of every size, up to saturated ones (the fast path's BCE sums logs of products of sigmoids).
    model = _dense()
    with torch.no_grad():
        model.decoder[-1].weight.mul_(scale)
        model.decoder[-1].bias.normal_(generator=torch.Generator().manual_seed(1)).mul_(scale)
    twin = copy.deepcopy(model)
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x[:16] = 0.0  # blank pixels, as in real images
    x[16:24] = 1.0
    theirs = F.binary_cross_entropy_with_logits(model.decode_logits(model.encode(x)), x)
    theirs.backward()
    ours = fastpath.loss_and_grads(twin, x, x)
    assert torch.isfinite(ours)
    assert float(ours) == pytest.approx(float(theirs.detach()), rel=1e-5, abs=1e-7)
    for a, b in zip(twin.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-9)


def test_sum_of_logs_of_halves_and_the_pixel_loss_off_the_fast_path():
    g = torch.Generator().manual_seed(0)
    for n in (64 * 5, 64 * 5 + 17, 13):  # whole chunks, a tail, only a tail
        values = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
        values[:8] = 0.5  # the smallest values a chunk's product can take
        got = fastpath.sum_of_logs_of_halves(values.float())
        assert float(got) == pytest.approx(float(values.log().sum()), rel=1e-5)
    x = torch.rand(8, 1, 8, 8)
    z = torch.randn(8, 1, 8, 8)
    expected = float(F.binary_cross_entropy_with_logits(z, x))
    with torch.no_grad():
        assert float(models.pixel_loss(z, x, "bce")) == pytest.approx(expected, rel=1e-5)
    strided = torch.randn(8, 1, 8, 16)[..., ::2]  # not contiguous
    assert float(models.pixel_loss(strided, x, "bce")) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(strided, x)), rel=1e-6)
    assert float(models.pixel_loss(z.double(), x.double(), "bce")) == pytest.approx(expected, rel=1e-5)
    assert float(models.pixel_loss(z, x, "mse")) == pytest.approx(float(F.mse_loss(torch.sigmoid(z), x)), rel=1e-6)
    with pytest.raises(ValueError, match="unknown loss"):
        models.pixel_loss(z, x, "l1")


def _grads_into(model: torch.nn.Module, twin: torch.nn.Module, x: torch.Tensor) -> None:
    """Autograd's gradients of ``model``'s loss on ``x``, and the very same values as ``twin``'s gradients."""
    model.zero_grad(set_to_none=True)
    model.training_loss(x, x)[0].backward()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        q.grad = p.grad.clone()


def _assert_same(a, b, where: str = "state") -> None:
    """``a`` and ``b`` (nested dicts/lists of tensors and values) identical: same types, dtypes, bits."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("scheduled", [False, True], ids=["constant-lr", "cosine-lr"])
@pytest.mark.parametrize(("kind", "weight_decay"),
                         [(torch.optim.Adam, 0.0), (torch.optim.Adam, 0.05), (torch.optim.AdamW, 0.01),
                          (torch.optim.AdamW, 0.2)], ids=["adam", "adam-l2", "adamw", "adamw-strong"])
def test_fused_adam_update_is_optimizer_step_bit_for_bit(kind, weight_decay, scheduled):
    """The direct kernel call gives the parameters and the whole state_dict that ``optimizer.step()`` gives: over
    many steps, two parameter groups (weights with decay, biases without), a learning rate a torch scheduler
    changes between steps, and a later ``optimizer.step()`` that carries on from its state."""
    model = _dense(widths=(16, 8))
    twin = copy.deepcopy(model)
    ours = kind(optim.parameter_groups(model), lr=3e-2, weight_decay=weight_decay, fused=True)
    theirs = kind(optim.parameter_groups(twin), lr=3e-2, weight_decay=weight_decay, fused=True)
    assert len(ours.param_groups) == 2 and ours.param_groups[1]["weight_decay"] == 0.0
    update = fastpath.fused_adam_update(ours)
    assert update is not None
    schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=40, eta_min=1e-4) for o in (ours, theirs)]
    generator = torch.Generator().manual_seed(0)
    lrs = set()
    for step in range(50):
        x = torch.rand(32, 1, 8, 8, generator=generator)
        _grads_into(twin, model, x)
        if step < 40:
            update()
        else:  # the optimizer's own step carries on from the state the kernel call left
            ours.step()
        theirs.step()
        if scheduled:
            with warnings.catch_warnings():  # (in case torch counts the kernel call's steps as none)
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
                for scheduler in schedulers:
                    scheduler.step()
        lrs.add(ours.param_groups[0]["lr"])
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            assert torch.equal(a, b), f"step {step}"
    assert (len(lrs) > 40) == scheduled and (len(lrs) == 1) != scheduled
    _assert_same(ours.state_dict(), theirs.state_dict())
    assert float(ours.state_dict()["state"][0]["step"]) == 50
    if scheduled:
        _assert_same(schedulers[0].state_dict(), schedulers[1].state_dict())
    start = _dense(widths=(16, 8))
    assert all(not torch.equal(a, b) for a, b in zip(model.parameters(), start.parameters(), strict=True))


def test_fused_adam_update_follows_a_state_loaded_after_it_was_made():
    """``load_state_dict`` replaces the optimizer's state and groups: the kernel call made before it must update the
    loaded state (a resumed run), as ``optimizer.step()`` does, not the tensors it saw first."""
    model = _dense(widths=(16, 8))
    twin = copy.deepcopy(model)
    ours, theirs = (torch.optim.Adam(optim.parameter_groups(m), lr=3e-2, fused=True) for m in (model, twin))
    update = fastpath.fused_adam_update(ours)
    generator = torch.Generator().manual_seed(0)
    for step in range(12):
        x = torch.rand(32, 1, 8, 8, generator=generator)
        _grads_into(twin, model, x)
        update()
        theirs.step()
        if step == 5:  # a checkpoint taken and put back, as a resume does
            ours.load_state_dict(copy.deepcopy(ours.state_dict()))
            theirs.load_state_dict(copy.deepcopy(theirs.state_dict()))
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    _assert_same(ours.state_dict(), theirs.state_dict())
    assert float(ours.state_dict()["state"][0]["step"]) == 12


def test_fused_adam_update_leaves_the_state_to_torch():
    """The first call is ``optimizer.step()`` itself, which makes Adam's state in torch's own format; the kernel
    calls after it update that state."""
    model = _dense(widths=(16, 8))
    optimizer = _adam(model, lr=3e-2)
    update = fastpath.fused_adam_update(optimizer)
    calls = []
    optimizer.register_step_post_hook(lambda *_: calls.append("step"))
    x = torch.rand(32, 1, 8, 8)
    for _ in range(3):
        optimizer.zero_grad()
        model.training_loss(x, x)[0].backward()
        update()
    assert calls == ["step"]  # the first update only: step hooks do not run on the kernel calls
    assert all(float(optimizer.state[p]["step"]) == 3 for p in model.parameters())


@pytest.mark.parametrize("code_norm", ["none", "batch"])
def test_written_out_backward_without_torch_internals_gives_the_same_bits(monkeypatch, code_norm):
    """Where a torch build lacks ATen's threshold_backward or ``_foreach_add_``, their public fallbacks give the same
    gradients and the same Adam steps, bit for bit."""
    model = _dense((1, 28, 28), (64, 32), 8, code_norm=code_norm)
    twin = copy.deepcopy(model)
    optimizers = [_adam(m, lr=1e-2) for m in (model, twin)]
    updates = [fastpath.fused_adam_update(o) for o in optimizers]
    generator = torch.Generator().manual_seed(0)
    batches = [torch.rand(40, 1, 28, 28, generator=generator) for _ in range(3)]
    for x in batches:
        fastpath.loss_and_grads(model, x, x)
        updates[0]()
    monkeypatch.setattr(fastpath, "_THRESHOLD_BACKWARD", None)
    for i, x in enumerate(batches):
        fastpath.loss_and_grads(twin, x, x)
        updates[1]()
        if i == 0:  # after the first update, torch's own optimizer.step(), which needs it
            monkeypatch.delattr(torch, "_foreach_add_")
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b) and torch.equal(a.grad, b.grad)
    _assert_same(optimizers[0].state_dict(), optimizers[1].state_dict())


class _OwnAdam(torch.optim.Adam):
    """A subclass may step differently: never replaced by the kernel call."""


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.Adam(ps, lr=1e-3),
    lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
    lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=False),
    lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=False),
    lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True, amsgrad=True),
    lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True, amsgrad=True),
    lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True, maximize=True),
    lambda ps: torch.optim.Adam(ps, lr=torch.tensor(1e-3), fused=True),
    lambda ps: _OwnAdam(ps, lr=1e-3, fused=True),
    lambda ps: torch.optim.SGD(ps, lr=0.1),
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: torch.optim.RAdam(ps, lr=1e-3),
], ids=["adam-default", "adam-foreach", "adam-for-loop", "adamw-unfused", "adam-amsgrad", "adamw-amsgrad",
        "adam-maximize", "adam-tensor-lr", "adam-subclass", "sgd", "sgd-momentum", "radam"])
def test_fused_adam_update_only_for_exact_fused_adam(make):
    model = _dense()
    optimizer = make(optim.parameter_groups(model))
    assert fastpath.fused_adam_update(optimizer) is None
    step = loop.make_step(model, optimizer, CPU)
    assert step.path == "fast" and step.update == optimizer.step  # the fast path, with optimizer.step()
    fused = _adam(model)
    assert fastpath.fused_adam_update(fused) is not None
    assert loop.make_step(model, fused, CPU).update != fused.step


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fast_path_with_torch_sgd_trains_like_autograd(momentum):
    digits = data.load(data.Digits())

    def fit_once(fast: bool):
        model = _dense(digits.image_shape, (32,), 8)
        optimizer = torch.optim.SGD(optim.parameter_groups(model), lr=0.5, momentum=momentum)
        step = (loop.make_step(model, optimizer, CPU) if fast
                else loop.AutogradStep(model, optimizer, CPU, compiled=False, mixed_precision=False))
        assert step.path == ("fast" if fast else "autograd")
        history = loop.fit(model, digits.train, digits.val, epochs=2, batch_size=64, optimizer=optimizer, seed=0,
                           step=step, progress=False)
        return model, history

    fast_model, fast = fit_once(True)
    autograd_model, autograd = fit_once(False)
    assert fast.train_loss[1] < fast.train_loss[0]
    np.testing.assert_allclose(fast.train_loss, autograd.train_loss, rtol=1e-5)
    for a, b in zip(fast_model.parameters(), autograd_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fit_still_takes_any_torch_optim_optimizer():
    digits = data.load(data.Digits())
    model = _dense(digits.image_shape, (32,), 8)
    history = loop.fit(model, digits.train, digits.val, epochs=2, batch_size=64,
                       optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), seed=0, progress=False)
    assert history.train_loss[1] < history.train_loss[0]


def test_uint8_gather_gives_the_float_batches_of_the_images():
    images = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    batches = list(loop.iterate_batches(images, 16, torch.Generator().manual_seed(3)))
    order = torch.randperm(50, generator=torch.Generator().manual_seed(3))
    expected = images.float()[order] / 255.0
    torch.testing.assert_close(torch.cat(batches), expected)


def test_compile_setting():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not loop.should_compile(None, cpu)
    assert loop.should_compile(None, cuda)
    assert loop.should_compile(True, cpu)
    assert not loop.should_compile(False, cuda)


def _fit_tiny(compile_: bool):
    digits = data.load(data.Digits())
    tiny = data.Split(digits.train.images[:256], digits.train.labels[:256])  # 4 full batches: one graph
    model = _dense(digits.image_shape, (16,), 4)
    optimizer = _adam(model, 1e-2)
    step = loop.make_step(model, optimizer, CPU, compile=compile_)
    assert step.path == ("autograd" if compile_ else "fast")  # the fast path is never compiled
    history = loop.fit(model, tiny, digits.val, epochs=2, batch_size=64, optimizer=optimizer, seed=0, step=step,
                       progress=False)
    return model, history


def test_compiled_training_gives_the_eager_losses():
    eager_model, eager = _fit_tiny(False)
    compiled_model, compiled = _fit_tiny(True)
    np.testing.assert_allclose(compiled.train_loss, eager.train_loss, rtol=1e-4)
    np.testing.assert_allclose(compiled.val_loss, eager.val_loss, rtol=1e-4)
    for a, b in zip(compiled_model.parameters(), eager_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.fixture(scope="module")
def clusters():
    x, y = make_blobs(n_samples=1500, centers=6, n_features=24, cluster_std=2.0, random_state=1)
    return x.astype(np.float32), y


@pytest.mark.parametrize("n", [300, views.FFT_MIN_POINTS], ids=["barnes-hut", "fft"])
def test_embedding_keeps_clusters_as_well_as_sklearn(clusters, n):
    from sklearn.manifold import TSNE

    x, y = clusters[0][:n], clusters[1][:n]
    ours = lists.shipped("tsne").views["tsne"](codes=x, seed=0)  # as a run makes it
    theirs = TSNE(random_state=0).fit_transform(x)
    assert ours.shape == (n, 2) and ours.dtype == np.float32 and np.isfinite(ours).all()
    assert metrics.cv_knn_accuracy(ours, y) >= metrics.cv_knn_accuracy(theirs, y) - 0.02
    assert metrics.trustworthiness(x, ours) >= metrics.trustworthiness(x, theirs) - 0.005
    assert metrics.trustworthiness(x, ours) > 0.9


def test_embedding_is_deterministic_for_a_seed(clusters):
    x = clusters[0][:1200]
    tsne = lists.shipped("tsne").views["tsne"]
    np.testing.assert_array_equal(tsne(codes=x, seed=3), tsne(codes=x, seed=3))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=["grey", "colour"])
@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_written_out_backward_gives_autograds_loss_and_gradients(loss, shape):
    model = _dense(shape, (64, 32), 8, loss=loss)
    twin = copy.deepcopy(model)
    x = torch.rand(40, *shape)
    x[:10] = 0.0
    expected, parts = model.training_loss(x, x)
    assert parts == {}
    expected.backward()
    assert fastpath.applies_to(twin)
    got = fastpath.loss_and_grads(twin, x, x)
    assert float(got) == pytest.approx(float(expected.detach()), rel=1e-6)
    for a, b in zip(twin.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("bf16", [False, True])
def test_written_out_backward_of_equal_widths_keeps_each_layers_buffers_apart(bf16):
    """Every hidden layer 256 wide (784-256-256-256 and back): each layer's outputs, products and gradients have
    the same shapes, so only their workspace keys keep them apart; biases that are not 0; twice."""
    model = _dense((1, 28, 28), (256, 256), 256)
    with torch.no_grad():  # biases away from their initial zeros, as after some training
        for bias in (p for p in model.parameters() if p.dim() == 1):
            bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(bias.numel()))
    twin = copy.deepcopy(model)
    tolerance = {"rtol": 2e-2, "atol": 1e-4} if bf16 else {"rtol": 1e-4, "atol": 1e-7}
    for seed in (0, 1):
        x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
        model.zero_grad()
        expected, _ = model.training_loss(x, x)
        expected.backward()
        got = fastpath.loss_and_grads(twin, x, x, bf16=bf16)
        assert float(got) == pytest.approx(float(expected.detach()), rel=tolerance["rtol"] / 10)
        for (name, a), b in zip(twin.named_parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad, **tolerance, msg=name)


@pytest.mark.parametrize("batch", [40, 1])
@pytest.mark.parametrize("bf16", [False, True])
def test_written_out_backward_of_a_batch_normalised_code_gives_autograds(batch, bf16):
    model = _dense((1, 28, 28), (256, 32), 8, code_norm="batch")
    model.train()
    with torch.no_grad():  # running statistics away from their start (0 and 1), as after some training
        model.encoder[-1].running_mean.uniform_(-1, 1)
        model.encoder[-1].running_var.uniform_(0.5, 2)
        model.encoder[-1].running_var[0] = 1e-4  # a unit that barely varies: its eps weighs (a tenth of its 1 / std)
    twin = copy.deepcopy(model)
    x = torch.rand(batch, 1, 28, 28)
    expected, _ = model.training_loss(x, x)
    expected.backward()
    assert fastpath.applies_to(twin)
    got = fastpath.loss_and_grads(twin, x, x, bf16=bf16)
    tolerance = {"rtol": 2e-2, "atol": 1e-4} if bf16 else {"rtol": 1e-4, "atol": 1e-7}
    assert float(got) == pytest.approx(float(expected.detach()), rel=tolerance["rtol"] / 10)
    for (name, a), b in zip(twin.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, **tolerance, msg=name)
    assert model.encoder[-2].bias is None  # the normalisation cancels a bias: the code layer has none
    for (name, a), b in zip(twin.named_buffers(), model.buffers(), strict=True):  # running statistics alike
        torch.testing.assert_close(a, b, **tolerance, msg=name)


@pytest.mark.parametrize("code_norm", ["none", "batch"])
def test_fit_with_the_written_out_backward_trains_like_autograd(code_norm):
    digits = data.load(data.Digits())

    def fit_once(fast: bool):
        model = _dense(digits.image_shape, (32, 16), 4, code_norm=code_norm)
        # With a normalised code, the bias of a unit that stays active over a batch only shifts the code's mean,
        # which the normalisation removes: its gradient is 0 but for rounding. Adam would make lr-sized steps of
        # that rounding, different on the two paths; SGD's steps of it stay at rounding's size.
        optimizer = (_adam(model) if code_norm == "none"
                     else torch.optim.SGD(optim.parameter_groups(model), lr=0.05, momentum=0.9))
        step = (loop.make_step(model, optimizer, CPU) if fast
                else loop.AutogradStep(model, optimizer, CPU, compiled=False, mixed_precision=False))
        assert step.path == ("fast" if fast else "autograd")
        history = loop.fit(model, digits.train, digits.val, epochs=2, batch_size=64, optimizer=optimizer, seed=0,
                           step=step, progress=False)
        return model, history

    manual_model, manual = fit_once(True)
    autograd_model, autograd = fit_once(False)
    np.testing.assert_allclose(manual.train_loss, autograd.train_loss, rtol=1e-5)
    np.testing.assert_allclose(manual.val_loss, autograd.val_loss, rtol=1e-5)
    assert manual.train_loss[-1] < manual.train_loss[0]
    for a, b in zip(manual_model.parameters(), autograd_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(manual_model.buffers(), autograd_model.buffers(), strict=True):  # running statistics
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_models_of_other_layers_keep_autograd():
    model = _dense()
    assert fastpath.applies_to(model) and loop.make_step(model, _adam(model), CPU).path == "fast"
    model.encoder.append(torch.nn.Tanh())
    assert not fastpath.applies_to(model)
    assert loop.make_step(model, _adam(model), CPU).path == "autograd"
    frozen = _dense()
    frozen.encoder[0].weight.requires_grad_(False)
    assert not fastpath.applies_to(frozen)
    assert loop.make_step(frozen, _adam(frozen), CPU).path == "autograd"
    doubled = _dense().double()
    assert not fastpath.applies_to(doubled)


def test_written_out_backward_with_a_reused_workspace():
    model = _dense(widths=(16, 8))
    twin = copy.deepcopy(model)
    workspace = fastpath.Workspace()
    for size in (32, 32, 7, 32):  # a smaller last batch, then the full size again
        x = torch.rand(size, 1, 8, 8)
        model.zero_grad(set_to_none=True)
        expected = model.training_loss(x, x)[0]
        expected.backward()
        got = fastpath.loss_and_grads(twin, x, x, workspace)
        assert float(got) == pytest.approx(float(expected.detach()), rel=1e-6)
        for a, b in zip(twin.parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-10)


def test_training_batches_are_the_shuffled_batches():
    images = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    plain = [b.clone() for b in loop.iterate_batches(images, 16, torch.Generator().manual_seed(3))]
    reused = [b.clone() for b in fastpath.gather_batches(images, 16, torch.Generator().manual_seed(3),
                                                         fastpath.Workspace())]
    assert len(reused) == len(plain) == 4
    for a, b in zip(plain, reused, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_tsne_with_its_own_neighbour_index_gives_opentsne_s_exact_path(clusters):
    from openTSNE import TSNEEmbedding, affinity, initialization

    x = np.ascontiguousarray(clusters[0][:400], dtype=np.float64)
    ours = views.tsne(x, 2, perplexity=30, n_iter=60, early_exaggeration_iter=30)
    # openTSNE left to build the index itself (method="exact"), then the same optimisation as views.tsne
    p = affinity.PerplexityBasedNN(x, perplexity=30, method="exact", n_jobs=threads.current(), random_state=2)
    theirs = TSNEEmbedding(initialization.pca(x, random_state=2), p, n_jobs=threads.current(), random_state=2,
                           negative_gradient_method="bh")
    theirs = theirs.optimize(n_iter=30, exaggeration=views.EARLY_EXAGGERATION, momentum=0.8,
                             learning_rate=max(1.0, 400 / views.EARLY_EXAGGERATION))
    theirs = theirs.optimize(n_iter=60, momentum=0.8, learning_rate=400.0)
    np.testing.assert_array_equal(ours, np.asarray(theirs, dtype=np.float32))


def test_tsne_does_not_import_numba():
    import subprocess
    import sys

    code = ("import sys, numpy as np; from aeexp.evaluation import views; "
            "views.tsne(np.random.default_rng(0).normal(size=(200, 8)), 0, perplexity=30, n_iter=10, "
            "early_exaggeration_iter=10); print(sorted({'numba', 'pynndescent'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def _wide_model() -> models.DenseAutoencoder:
    return _dense((1, 28, 28), (64, 32), 8)  # 784x64 = 50,176 weights: large enough for bf16 products


def test_bf16_products_only_for_the_large_layers():
    layers = [m for m in _wide_model().modules() if isinstance(m, torch.nn.Linear)]
    assert [fastpath.bf16_pays(layer, 64) for layer in layers] == [True, False, False, False, False, True]
    assert not any(fastpath.bf16_pays(layer, 16) for layer in layers)  # 16 x 784 x 64: too small a product


def _smooth_images(n: int, seed: int) -> data.Split:
    """``n`` 28x28 uint8 images with some structure (a random rank-6 pattern each), random labels."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.sigmoid(torch.randn(n, 6, generator=g) @ torch.randn(6, 784, generator=g))
    images = (pixels * 255).round().to(torch.uint8).view(n, 1, 28, 28)
    return data.Split(images, torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_written_out_backward_in_bf16_is_close_to_float32(loss):
    model = _dense((1, 28, 28), (64, 32), 8, loss=loss)
    x = inference.to_float(_smooth_images(64, 0).images)
    exact = float(fastpath.loss_and_grads(model, x, x))
    exact_grads = [p.grad.clone() for p in model.parameters()]
    low = float(fastpath.loss_and_grads(model, x, x, fastpath.Workspace(), bf16=True))
    assert low == pytest.approx(exact, rel=1e-4)
    assert not torch.equal(model.encoder[0].weight.grad, exact_grads[0])  # the bf16 products ran
    for p, expected in zip(model.parameters(), exact_grads, strict=True):
        assert p.grad.dtype == torch.float32
        # bf16 keeps 8 significant bits; at initialisation the gradients agree within 1-4% (as a whole)
        assert float((p.grad - expected).norm()) <= 0.05 * float(expected.norm())


def _fit_wide(mixed_precision: bool) -> loop.History:
    model = _wide_model()
    optimizer = _adam(model)
    step = loop.make_step(model, optimizer, CPU, mixed_precision=mixed_precision)
    assert step.path == "fast"
    assert step.bf16 == (mixed_precision and fastpath.cpu_has_bf16_products())
    return loop.fit(model, _smooth_images(640, 0), _smooth_images(128, 1), epochs=3, batch_size=64,
                    optimizer=optimizer, seed=0, step=step, progress=False)


def test_fit_with_bf16_products_trains_like_float32(monkeypatch):
    monkeypatch.setattr(fastpath, "cpu_has_bf16_products", lambda: True)  # the bf16 path, on any CPU
    low, exact = _fit_wide(True), _fit_wide(False)
    assert low.train_loss != exact.train_loss
    np.testing.assert_allclose(low.train_loss, exact.train_loss, rtol=5e-3)
    np.testing.assert_allclose(low.val_loss, exact.val_loss, rtol=5e-3)


def test_bf16_products_only_where_the_cpu_has_them(monkeypatch):
    monkeypatch.setattr(fastpath, "cpu_has_bf16_products", lambda: False)
    assert _fit_wide(True).train_loss == _fit_wide(False).train_loss


def test_cpu_without_a_capability_probe_means_no_bf16(monkeypatch):
    monkeypatch.delattr(torch._C._cpu, "_get_cpu_capability")
    assert fastpath.cpu_has_bf16_products() is False


def test_training_with_bf16_products_resumes_bit_identical(monkeypatch, tmp_path):
    monkeypatch.setattr(fastpath, "cpu_has_bf16_products", lambda: True)
    train_split, val_split = _smooth_images(640, 0), _smooth_images(128, 1)

    def start() -> tuple[models.DenseAutoencoder, torch.optim.Optimizer, optim.Schedule, torch.Generator]:
        model = _wide_model()
        optimizer = _adam(model)
        return model, optimizer, optim.Schedule(optimizer), torch.Generator().manual_seed(0)

    def fit(model, optimizer, schedule, generator, epochs, history=None) -> loop.History:
        step = loop.make_step(model, optimizer, CPU)
        assert step.path == "fast" and step.bf16
        return loop.fit(model, train_split, val_split, epochs=epochs, batch_size=64, optimizer=optimizer, seed=0,
                        schedule=schedule, step=step, progress=False, history=history, generator=generator)

    straight, *straight_state = start()
    expected = fit(straight, *straight_state, 2)

    first, first_optimizer, first_schedule, first_generator = start()
    history = fit(first, first_optimizer, first_schedule, first_generator, 1)
    path = tmp_path / checkpoint.FILENAME
    checkpoint.save(checkpoint.capture("run", 1, "", first, first_optimizer, first_schedule, first_generator,
                                       history), path)
    resumed, *resumed_state = start()
    history = checkpoint.restore(checkpoint.load(path), resumed, *resumed_state)
    got = fit(resumed, *resumed_state, 2, history)

    assert got.train_loss == expected.train_loss and got.val_loss == expected.val_loss
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(a, b)


def _cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them, read without torch."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    pytest.fail("/proc/cpuinfo lists no flags")


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads Linux's /proc/cpuinfo")
def test_bf16_detection_agrees_with_the_cpus_own_flags():
    """The real detection (nothing forced), against an independent reading: bf16 dot products in hardware are
    AVX512-BF16 or AMX-BF16."""
    has_them = bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
    assert fastpath.cpu_has_bf16_products() is has_them
    for mixed_precision in (True, False):  # and what the training step makes of it, on this CPU
        model = _dense()
        step = loop.make_step(model, _adam(model), CPU, mixed_precision=mixed_precision)
        assert step.path == "fast" and step.bf16 is (mixed_precision and has_them)


@pytest.mark.parametrize("mixed_precision", [True, False])
def test_mixed_precision_setting_reaches_the_training_step_of_a_run(make_config, tracking_uri, monkeypatch, tmp_path,
                                                                    mixed_precision):
    """On a CPU with bf16 products (the detection answering yes, as it does on Zen 4 or Sapphire Rapids), a run's
    trainer.mixed_precision decides whether its training step multiplies in bf16; the run's tag train.bf16 is that
    step's ``bf16``."""
    from mlflow.tracking import MlflowClient

    from aeexp import experiment

    monkeypatch.setattr(fastpath, "cpu_has_bf16_products", lambda: True)
    cfg = make_config(f"tracking.uri={tracking_uri}", "trainer.epochs=1", "trainer.progress=false", "embed=pca",
                      "embed.n_samples=100", f"trainer.mixed_precision={mixed_precision}")
    result = experiment.run(cfg, tmp_path / "out")
    tags = MlflowClient(tracking_uri).get_run(result.run_id).data.tags
    assert tags["train.path"] == "fast" and tags["train.bf16"] == str(mixed_precision).lower()
