"""Model families beyond the plain ones: a user's subclass with its own loss, the sparse AE and the VQ-VAE."""

from __future__ import annotations

import copy

import pytest
import torch
from idx import synthetic_images

from aeexp import data, models
from aeexp.errors import InvalidParameter
from aeexp.models import inference
from aeexp.training import fastpath, loop, optim

CPU = torch.device("cpu")


def _tiny(n: int = 256, size: int = 8, seed: int = 0) -> data.Split:
    images, labels = synthetic_images(n, seed, size=size)
    return data.Split(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long())


def _adam(model: torch.nn.Module, lr: float = 3e-3) -> torch.optim.Adam:
    return torch.optim.Adam(optim.parameter_groups(model), lr=lr, fused=True)


class PenalisedAutoencoder(models.DenseAutoencoder):
    """A user's model: the dense AE with a penalty on its codes added to the loss (and nothing else changed)."""

    def training_loss(self, inputs: torch.Tensor, targets: torch.Tensor
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        codes = self.encode(inputs)
        recon = models.pixel_loss(self.decode_logits(codes), targets, self.loss)
        return recon + 10 * codes.abs().mean(), {}


def _pair(shape=(1, 8, 8)) -> tuple[models.DenseAutoencoder, PenalisedAutoencoder]:
    """A dense AE and a penalised one with the very same weights."""
    torch.manual_seed(0)
    parent = models.DenseAutoencoder(shape, widths=[32], bottleneck=8)
    child = PenalisedAutoencoder(shape, widths=[32], bottleneck=8)
    child.load_state_dict(parent.state_dict())
    return parent, child


def test_a_subclass_with_its_own_loss_trains_on_that_loss():
    """The issue's case: a subclass of DenseAutoencoder must not be trained by the fast path, which computes the
    parent's loss: its train_loss and its updates are those of its own training_loss."""
    parent, child = _pair()
    assert loop.make_step(parent, _adam(parent), CPU).path == "fast"
    assert loop.make_step(child, _adam(child), CPU).path == "autograd"
    split, val = _tiny(128), _tiny(64, seed=1)
    x = inference.to_float(split.images)
    with torch.no_grad():
        own = float(child.training_loss(x, x)[0])
        recon = float(parent.training_loss(x, x)[0])
    assert own > recon + 0.01  # the penalty is worth something at the start

    # One epoch of one batch: train_loss is the loss at the starting weights, over all the training images.
    one = copy.deepcopy(child)
    history = loop.fit(one, split, val, epochs=1, batch_size=len(split), optimizer=_adam(one), seed=0,
                       progress=False)
    assert history.train_loss[0] == pytest.approx(own, rel=1e-5)
    other = copy.deepcopy(parent)
    parents = loop.fit(other, split, val, epochs=1, batch_size=len(split), optimizer=_adam(other), seed=0,
                       progress=False)
    assert parents.train_loss[0] == pytest.approx(recon, rel=1e-5)

    # The same steps from the same weights: other weights, since the gradients are those of the penalised loss.
    child_history = loop.fit(child, split, val, epochs=3, batch_size=32, optimizer=_adam(child), seed=0,
                             progress=False)
    loop.fit(parent, split, val, epochs=3, batch_size=32, optimizer=_adam(parent), seed=0, progress=False)
    for a, b in zip(child.parameters(), parent.parameters(), strict=True):
        assert not torch.allclose(a, b)
    assert child_history.val_loss[-1] == pytest.approx(inference.evaluate_loss(child, val.images), rel=1e-6)
    with torch.no_grad():
        child_codes = float(child.encode(x).abs().mean())
        parent_codes = float(parent.encode(x).abs().mean())
    assert child_codes < parent_codes  # the penalty did its work


def test_the_fast_path_is_for_the_exact_dense_autoencoder_only():
    parent, child = _pair()
    assert fastpath.applies_to(parent)
    assert not fastpath.applies_to(child)
    assert not fastpath.applies_to(models.SparseAutoencoder((1, 8, 8), [16], 4))
    frozen = copy.deepcopy(parent)
    frozen.decoder[0].bias.requires_grad_(False)
    assert not fastpath.applies_to(frozen)
    assert loop.make_step(frozen, _adam(frozen), CPU).path == "autograd"
    extra = copy.deepcopy(parent)
    extra.encoder.insert(1, torch.nn.Dropout(0.1))
    assert not fastpath.applies_to(extra)
    assert loop.make_step(extra, _adam(extra), CPU).path == "autograd"
    squashed = copy.deepcopy(parent)
    squashed.decoder.append(torch.nn.Tanh())
    assert not fastpath.applies_to(squashed)
    # Neither on a compiled step: the fast path is never compiled.
    assert fastpath.select(parent, _adam(parent), CPU, compiled=True, mixed_precision=False) is None
    assert fastpath.select(parent, _adam(parent), CPU, compiled=False, mixed_precision=False) is not None


def test_sparse_autoencoder_loss_and_parts():
    torch.manual_seed(0)
    model = models.SparseAutoencoder((1, 8, 8), [16], 4, l1=0.3)
    x = torch.rand(16, 1, 8, 8)
    loss, parts = model.training_loss(x, x)
    assert set(parts) == {"recon", "l1"}
    codes = model.encode(x)
    torch.testing.assert_close(parts["l1"], codes.abs().mean())
    torch.testing.assert_close(parts["recon"], models.pixel_loss(model.decode_logits(codes), x, "bce"))
    torch.testing.assert_close(loss, parts["recon"] + 0.3 * parts["l1"])
    with pytest.raises(InvalidParameter, match="must be >= 0") as raised:
        models.SparseAutoencoder((1, 8, 8), [16], 4, l1=-1.0)
    assert raised.value.name == "l1"


def test_sparse_penalty_shrinks_the_codes():
    split, val = _tiny(256), _tiny(64, seed=1)

    def mean_code(l1: float) -> float:
        torch.manual_seed(0)
        model = models.SparseAutoencoder((1, 8, 8), [32], 8, l1=l1)
        seen: list[dict[str, float]] = []
        loop.fit(model, split, val, epochs=5, batch_size=32, optimizer=_adam(model, 1e-2), seed=0, progress=False,
                 on_epoch_end=lambda e, m: seen.append(m))
        assert {"train_recon", "train_l1"} <= set(seen[-1])
        assert seen[-1]["train_loss"] == pytest.approx(seen[-1]["train_recon"] + l1 * seen[-1]["train_l1"], rel=1e-5)
        return float(inference.encode_all(model, val.images).abs().mean())

    free, sparse = mean_code(0.0), mean_code(1.0)
    assert sparse < 0.2 * free


VQ_CASES = [("dense", (1, 8, 8)), ("conv", (1, 8, 8)), ("dense", (1, 28, 28)), ("conv", (1, 28, 28))]
VQ_IDS = ["dense-8x8", "conv-8x8", "dense-28x28", "conv-28x28"]


def _vqvae(kind: str, shape, codebook_size: int = 16, seed: int = 0) -> models.VQVAE:
    torch.manual_seed(seed)
    return models.VQVAE(shape, [8, 16], 8, kind=kind, codebook_size=codebook_size, vector_size=4)


def _rows_of(vectors: torch.Tensor, codebook: torch.Tensor) -> bool:
    """Whether every row of ``vectors`` is (exactly) a row of ``codebook``."""
    return bool((vectors[:, None, :] == codebook[None, :, :]).all(-1).any(-1).all())


@pytest.mark.parametrize(("kind", "shape"), VQ_CASES, ids=VQ_IDS)
def test_vqvae_codes_are_codebook_vectors(kind, shape):
    model = _vqvae(kind, shape)
    x = torch.rand(6, *shape)
    assert not bool(model.initialised)
    model.train()
    loss, parts = model.training_loss(x, x)
    assert bool(model.initialised)
    assert set(parts) == {"recon", "codebook", "commit", "perplexity"}
    assert 1.0 <= float(parts["perplexity"]) <= model.codebook_size
    torch.testing.assert_close(loss, parts["recon"] + parts["codebook"] + 0.25 * parts["commit"])
    loss.backward()
    assert model.codebook.grad is not None and float(model.codebook.grad.abs().sum()) > 0
    first = next(m for m in model.encoder if isinstance(m, torch.nn.Linear | torch.nn.Conv2d))
    assert float(first.weight.grad.abs().sum()) > 0  # the gradient passes the quantisation straight through
    with torch.no_grad():
        codes = model.encode(x)
        out = model(x)
    assert codes.shape == (6, 8) and out.shape == (6, *shape)
    vectors = codes.reshape(-1, 4)
    assert _rows_of(vectors, model.codebook.detach())
    features = model.encoder(x).detach().reshape(-1, 4)
    distances = torch.cdist(features, model.codebook.detach())
    torch.testing.assert_close(vectors, model.codebook.detach()[distances.argmin(1)])  # the nearest entry


def test_vqvae_refuses_a_vector_size_that_does_not_divide_the_bottleneck():
    with pytest.raises(InvalidParameter, match="divide the bottleneck 8") as raised:
        models.VQVAE((1, 8, 8), [16], 8, vector_size=3)
    assert raised.value.name == "vector_size"
    with pytest.raises(InvalidParameter) as raised:
        models.VQVAE((1, 8, 8), [16], 8, codebook_size=1)
    assert raised.value.name == "codebook_size"
    with pytest.raises(InvalidParameter) as raised:
        models.VQVAE((1, 8, 8), [16], 8, commitment=-0.1)
    assert raised.value.name == "commitment"


def test_vqvae_codebook_starts_from_the_first_training_batch_and_is_saved():
    model = _vqvae("dense", (1, 8, 8))
    x = inference.to_float(_tiny(32).images)
    before = model.codebook.detach().clone()
    model.eval()
    with torch.no_grad():
        model.training_loss(x, x)  # evaluation does not start the codebook
    assert not bool(model.initialised) and torch.equal(model.codebook.detach(), before)
    model.train()
    with torch.no_grad():
        model.training_loss(x, x)
        features = model.encoder(x).reshape(-1, 4)
    assert bool(model.initialised)
    started = model.codebook.detach().clone()
    assert _rows_of(started, features)  # every entry is one of the batch's encoder output vectors
    with torch.no_grad():
        model.training_loss(x[:8], x[:8])  # the next step keeps it
    assert torch.equal(model.codebook.detach(), started)

    state = model.state_dict()
    assert {"codebook", "initialised"} <= set(state) and bool(state["initialised"])
    fresh = _vqvae("dense", (1, 8, 8), seed=1)
    fresh.load_state_dict(state)
    assert bool(fresh.initialised) and torch.equal(fresh.codebook.detach(), started)
    fresh.train()
    with torch.no_grad():
        fresh.training_loss(x, x)  # a loaded codebook is not started again
    assert torch.equal(fresh.codebook.detach(), started)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_vqvae_learns_on_tiny_data(kind):
    split, val = _tiny(256), _tiny(128, seed=1)
    model = _vqvae(kind, (1, 8, 8), codebook_size=32)
    seen: list[dict[str, float]] = []
    # 8 epochs: on such tiny data the codebook and commitment losses first grow for a few epochs (the encoder's
    # outputs move faster than the codebook follows), then fall with the reconstruction loss.
    history = loop.fit(model, split, val, epochs=8, batch_size=32, optimizer=_adam(model, 3e-3), seed=0,
                       progress=False, on_epoch_end=lambda e, m: seen.append(m))
    assert history.val_loss[-1] < 0.8 * history.val_loss[0]
    assert history.train_loss[-1] < history.train_loss[0]
    assert {"train_recon", "train_codebook", "train_commit", "train_perplexity"} <= set(seen[-1])
    assert 1.0 < seen[-1]["train_perplexity"] <= 32
    assert bool(model.initialised)
