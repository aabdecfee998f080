"""Every speed path gives the answer of the plain path it replaces (within float tolerance); no timings here."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import make_blobs

from aeexp import data, embed, metrics, models, train


@pytest.mark.parametrize("scale", [0.1, 3.0, 50.0, 500.0])
def test_fused_bce_matches_torch_in_value_and_gradient(scale):
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(64, 1, 8, 8, generator=generator) * scale).requires_grad_()
    target = torch.rand(64, 1, 8, 8, generator=generator)
    target[:16] = 0.0  # blank pixels, as in real images
    target[16:24] = 1.0
    reference = logits.detach().clone().requires_grad_()
    ours = models.bce_with_logits(logits, target)
    theirs = F.binary_cross_entropy_with_logits(reference, target)
    ours.backward()
    theirs.backward()
    assert torch.isfinite(ours)
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(logits.grad, reference.grad, rtol=1e-5, atol=1e-9)


def test_fused_bce_without_grad_and_off_the_fast_path():
    x = torch.rand(8, 1, 8, 8)
    z = torch.randn(8, 1, 8, 8)
    expected = float(F.binary_cross_entropy_with_logits(z, x))
    with torch.no_grad():
        assert float(models.bce_with_logits(z, x)) == pytest.approx(expected, rel=1e-5)
    strided = torch.randn(8, 1, 8, 16)[..., ::2]  # not contiguous: falls back to torch's own
    assert float(models.bce_with_logits(strided, x)) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(strided, x)), rel=1e-6)
    assert float(models.bce_with_logits(z.double(), x.double())) == pytest.approx(expected, rel=1e-5)


def _train_pair(ours, theirs, model, twin, steps=25, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.rand(32, 1, 8, 8, generator=generator)
        for m, optimizer in ((model, ours), (twin, theirs)):
            optimizer.zero_grad(set_to_none=True)
            m.reconstruction_loss(x, "bce").backward()
            optimizer.step()


@pytest.mark.parametrize("fused", [True, False], ids=["fused-kernel", "foreach-fallback"])
def test_adam_matches_torch_optim_adam(fused):
    torch.manual_seed(0)
    model = models.build((1, 8, 8), [16], 4)
    twin = copy.deepcopy(model)
    ours = train.make_optimizer(model, "adam", 1e-2, 0.0)
    ours._fused = fused and ours._fused
    _train_pair(ours, torch.optim.Adam(twin.parameters(), lr=1e-2), model, twin)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_matches_torch_optim_sgd(momentum):
    torch.manual_seed(0)
    model = models.build((1, 8, 8), [16], 4)
    twin = copy.deepcopy(model)
    ours = train.make_optimizer(model, "sgd", 0.1, momentum)
    _train_pair(ours, torch.optim.SGD(twin.parameters(), lr=0.1, momentum=momentum), model, twin)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fit_still_takes_a_torch_optim_optimizer():
    digits = data.load("digits")
    torch.manual_seed(0)
    model = models.build(digits.image_shape, [32], 8)
    history = train.fit(model, digits.train, digits.val, epochs=2, batch_size=64,
                        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), loss="bce", seed=0, progress=False)
    assert history.train_loss[1] < history.train_loss[0]


def test_uint8_gather_gives_the_float_batches_of_the_images():
    images = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    batches = list(train.iterate_batches(images, 16, torch.Generator().manual_seed(3)))
    order = torch.randperm(50, generator=torch.Generator().manual_seed(3))
    expected = images.float()[order] / 255.0
    torch.testing.assert_close(torch.cat(batches), expected)


def test_compile_setting():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not train.should_compile(None, cpu)
    assert train.should_compile(None, cuda)
    assert train.should_compile(True, cpu)
    assert not train.should_compile(False, cuda)


def _fit_tiny(compile_: bool):
    digits = data.load("digits")
    tiny = data.Split(digits.train.images[:256], digits.train.labels[:256])  # 4 full batches: one graph
    torch.manual_seed(0)
    model = models.build(digits.image_shape, [16], 4)
    optimizer = train.make_optimizer(model, "adam", 1e-2, 0.0)
    history = train.fit(model, tiny, digits.val, epochs=2, batch_size=64, optimizer=optimizer, loss="bce", seed=0,
                        progress=False, compile=compile_)
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


@pytest.mark.parametrize("n", [300, embed.FFT_MIN_POINTS], ids=["barnes-hut", "fft"])
def test_embedding_keeps_clusters_as_well_as_sklearn(clusters, n):
    from sklearn.manifold import TSNE

    x, y = clusters[0][:n], clusters[1][:n]
    ours = embed.embed_2d(x, "tsne", perplexity=30, seed=0)
    theirs = TSNE(random_state=0).fit_transform(x)
    assert ours.shape == (n, 2) and ours.dtype == np.float32 and np.isfinite(ours).all()
    assert metrics.cv_knn_accuracy(ours, y) >= metrics.cv_knn_accuracy(theirs, y) - 0.02
    assert metrics.trustworthiness(x, ours) >= metrics.trustworthiness(x, theirs) - 0.005
    assert metrics.trustworthiness(x, ours) > 0.9


def test_embedding_is_deterministic_for_a_seed(clusters):
    x = clusters[0][:1200]
    np.testing.assert_array_equal(embed.embed_2d(x, seed=3), embed.embed_2d(x, seed=3))


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_written_out_backward_gives_autograds_loss_and_gradients(loss):
    torch.manual_seed(0)
    model = models.build((1, 28, 28), [64, 32], 8)
    twin = copy.deepcopy(model)
    x = torch.rand(40, 1, 28, 28)
    x[:10] = 0.0
    expected = model.reconstruction_loss(x, loss)
    expected.backward()
    assert twin.supports_manual_backward()
    got = twin.loss_and_grads(x, loss)
    assert float(got) == pytest.approx(float(expected.detach()), rel=1e-6)
    for a, b in zip(twin.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-10)


def test_fit_with_the_written_out_backward_trains_like_autograd(monkeypatch):
    digits = data.load("digits")

    def fit_once():
        torch.manual_seed(0)
        model = models.build(digits.image_shape, [32, 16], 4)
        optimizer = train.make_optimizer(model, "adam", 1e-3, 0.0)
        history = train.fit(model, digits.train, digits.val, epochs=2, batch_size=64, optimizer=optimizer,
                            loss="bce", seed=0, progress=False)
        return model, history

    manual_model, manual = fit_once()
    monkeypatch.setattr(models.DenseAutoencoder, "supports_manual_backward", lambda self: False)
    autograd_model, autograd = fit_once()
    np.testing.assert_allclose(manual.train_loss, autograd.train_loss, rtol=1e-5)
    for a, b in zip(manual_model.parameters(), autograd_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_models_of_other_layers_keep_autograd():
    model = models.build((1, 8, 8), [16], 4)
    model.encoder.append(torch.nn.Tanh())
    assert not model.supports_manual_backward()
    frozen = models.build((1, 8, 8), [16], 4)
    frozen.encoder[0].weight.requires_grad_(False)
    assert not frozen.supports_manual_backward()


def test_written_out_backward_with_a_reused_workspace():
    torch.manual_seed(0)
    model = models.build((1, 8, 8), [16, 8], 4)
    twin = copy.deepcopy(model)
    workspace = models.Workspace()
    for size in (32, 32, 7, 32):  # a smaller last batch, then the full size again
        x = torch.rand(size, 1, 8, 8)
        model.zero_grad(set_to_none=True)
        expected = model.reconstruction_loss(x, "bce")
        expected.backward()
        got = twin.loss_and_grads(x, "bce", workspace)
        assert float(got) == pytest.approx(float(expected.detach()), rel=1e-6)
        for a, b in zip(twin.parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-10)


def test_training_batches_are_the_shuffled_batches():
    images = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    plain = [b.clone() for b in train.iterate_batches(images, 16, torch.Generator().manual_seed(3))]
    reused = [b.clone() for b in train._gather_batches(images, 16, torch.Generator().manual_seed(3),
                                                       models.Workspace())]
    for a, b in zip(plain, reused, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_tsne_with_its_own_neighbour_index_gives_opentsne_s_exact_path(clusters):
    from openTSNE import TSNEEmbedding, affinity, initialization

    x = np.ascontiguousarray(clusters[0][:400], dtype=np.float64)
    ours = embed.embed_2d(x, "tsne", perplexity=30, seed=2, n_iter=60, early_exaggeration_iter=30)
    # openTSNE left to build the index itself (method="exact"), then the same optimisation as embed.tsne_2d
    p = affinity.PerplexityBasedNN(x, perplexity=30, method="exact", n_jobs=embed._n_jobs(), random_state=2)
    theirs = TSNEEmbedding(initialization.pca(x, random_state=2), p, n_jobs=embed._n_jobs(), random_state=2,
                           negative_gradient_method="bh")
    theirs = theirs.optimize(n_iter=30, exaggeration=embed.EARLY_EXAGGERATION, momentum=0.8,
                             learning_rate=max(1.0, 400 / embed.EARLY_EXAGGERATION))
    theirs = theirs.optimize(n_iter=60, momentum=0.8, learning_rate=400.0)
    np.testing.assert_array_equal(ours, np.asarray(theirs, dtype=np.float32))


def test_tsne_does_not_import_numba():
    import subprocess
    import sys

    code = ("import sys, numpy as np; from aeexp import embed; "
            "embed.embed_2d(np.random.default_rng(0).normal(size=(200, 8)), 'tsne', n_iter=10, "
            "early_exaggeration_iter=10); print(sorted({'numba', 'pynndescent'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def _wide_model() -> models.DenseAutoencoder:
    torch.manual_seed(0)
    return models.build((1, 28, 28), [64, 32], 8)  # 784x64 = 50,176 weights: large enough for bf16 products


def test_bf16_products_only_for_the_large_layers():
    layers = [m for m in _wide_model().modules() if isinstance(m, torch.nn.Linear)]
    assert [models.bf16_pays(layer, 64) for layer in layers] == [True, False, False, False, False, True]
    assert not any(models.bf16_pays(layer, 16) for layer in layers)  # 16 x 784 x 64: too small a product


def _smooth_images(n: int, seed: int) -> data.Split:
    """``n`` 28x28 uint8 images with some structure (a random rank-6 pattern each), random labels."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.sigmoid(torch.randn(n, 6, generator=g) @ torch.randn(6, 784, generator=g))
    images = (pixels * 255).round().to(torch.uint8).view(n, 1, 28, 28)
    return data.Split(images, torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_written_out_backward_in_bf16_is_close_to_float32(loss):
    model = _wide_model()
    x = train.to_float(_smooth_images(64, 0).images)
    exact = float(model.loss_and_grads(x, loss))
    exact_grads = [p.grad.clone() for p in model.parameters()]
    low = float(model.loss_and_grads(x, loss, models.Workspace(), bf16=True))
    assert low == pytest.approx(exact, rel=1e-4)
    assert not torch.equal(model.encoder[0].weight.grad, exact_grads[0])  # the bf16 products ran
    for p, expected in zip(model.parameters(), exact_grads, strict=True):
        assert p.grad.dtype == torch.float32
        # bf16 keeps 8 significant bits; at initialisation the gradients agree within 1-4% (as a whole)
        assert float((p.grad - expected).norm()) <= 0.05 * float(expected.norm())


def _fit_wide(mixed_precision: bool) -> train.History:
    model = _wide_model()
    optimizer = train.make_optimizer(model, "adam", 1e-3, 0.0)
    return train.fit(model, _smooth_images(640, 0), _smooth_images(128, 1), epochs=3, batch_size=64,
                     optimizer=optimizer, loss="bce", seed=0, progress=False, mixed_precision=mixed_precision)


def test_fit_with_bf16_products_trains_like_float32(monkeypatch):
    monkeypatch.setattr(train, "cpu_has_bf16_products", lambda: True)  # the bf16 path, on any CPU
    low, exact = _fit_wide(True), _fit_wide(False)
    assert low.train_loss != exact.train_loss
    np.testing.assert_allclose(low.train_loss, exact.train_loss, rtol=5e-3)
    np.testing.assert_allclose(low.val_loss, exact.val_loss, rtol=5e-3)


def test_bf16_products_only_where_the_cpu_has_them(monkeypatch):
    monkeypatch.setattr(train, "cpu_has_bf16_products", lambda: False)
    assert _fit_wide(True).train_loss == _fit_wide(False).train_loss


def test_cpu_without_a_capability_probe_means_no_bf16(monkeypatch):
    monkeypatch.delattr(torch._C._cpu, "_get_cpu_capability")
    assert models.cpu_has_bf16_products() is False


def test_training_with_bf16_products_resumes_bit_identical(monkeypatch, tmp_path):
    from aeexp import checkpoint

    monkeypatch.setattr(train, "cpu_has_bf16_products", lambda: True)
    train_split, val_split = _smooth_images(640, 0), _smooth_images(128, 1)

    def start() -> tuple[models.DenseAutoencoder, train.StepOptimizer, torch.Generator]:
        model = _wide_model()
        return model, train.make_optimizer(model, "adam", 1e-3, 0.0), torch.Generator().manual_seed(0)

    def fit(model, optimizer, generator, epochs, history=None) -> train.History:
        return train.fit(model, train_split, val_split, epochs=epochs, batch_size=64, optimizer=optimizer,
                         loss="bce", seed=0, progress=False, history=history, generator=generator)

    straight, straight_optimizer, straight_generator = start()
    expected = fit(straight, straight_optimizer, straight_generator, 2)

    first, first_optimizer, first_generator = start()
    history = fit(first, first_optimizer, first_generator, 1)
    path = tmp_path / checkpoint.FILENAME
    checkpoint.save(checkpoint.capture("run", 1, "", first, first_optimizer, first_generator, history), path)
    resumed, resumed_optimizer, resumed_generator = start()
    history = checkpoint.restore(checkpoint.load(path), resumed, resumed_optimizer, resumed_generator)
    got = fit(resumed, resumed_optimizer, resumed_generator, 2, history)

    assert got.train_loss == expected.train_loss and got.val_loss == expected.val_loss
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(a, b)
