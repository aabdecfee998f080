"""The PCA baseline of large images (#25 item 14): above baseline.EXACT_MAX_VALUES values per image a randomized PCA
that never holds a values x values covariance, as good as the exact one; the preflight refuses a run whose
baseline would not fit in memory, in one line, before any data is read."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from aeexp import preflight
from aeexp.errors import ConfigError
from aeexp.evaluation import baseline


def _low_rank_images(n: int, side: int, seed: int = 0) -> np.ndarray:
    """uint8 images (n, 1, side, side): 12 directions of decreasing weight plus pixel noise."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(12, side * side)) * np.linspace(3, 0.3, 12)[:, None]
    values = rng.normal(size=(n, 12)) @ directions + rng.normal(scale=0.3, size=(n, side * side))
    return np.clip(values * 20 + 128, 0, 255).astype(np.uint8).reshape(n, 1, side, side)


def test_the_randomized_pca_finds_the_exact_pcas_axes_and_error():
    images = _low_rank_images(400, 48)  # 2,304 values: the exact PCA by default, the randomized one when forced
    train, test = torch.from_numpy(images[:300]), torch.from_numpy(images[300:])
    assert baseline.EXACT_MAX_VALUES >= 48 * 48
    exact = baseline.fit_pca(train, 8)
    randomized = baseline.fit_pca(train, 8, exact_max_values=0)
    reference = PCA(n_components=8).fit(images[:300].reshape(300, -1) / 255.0)
    for pca in (exact, randomized):  # the same 8-dimensional subspace as scikit-learn's: every principal angle ~0
        cosines = np.linalg.svd(reference.components_ @ pca.components.double().numpy().T, compute_uv=False)
        assert cosines.min() > 1 - 1e-6
    flat_test = images[300:].reshape(100, -1) / 255.0
    expected = np.mean((reference.inverse_transform(reference.transform(flat_test)) - flat_test) ** 2)
    assert baseline.pca_mse(randomized, test) == pytest.approx(expected, rel=1e-5)
    assert baseline.pca_mse(exact, test) == pytest.approx(expected, rel=1e-5)
    again = baseline.fit_pca(train, 8, exact_max_values=0)
    assert torch.equal(again.components, randomized.components)  # seeded: the same baseline every run


@pytest.mark.parametrize("exact_max_values", [baseline.EXACT_MAX_VALUES, 0], ids=["exact", "randomized"])
def test_colour_images_read_a_few_at_a_time_give_scikit_learns_pca(monkeypatch, exact_max_values):
    """Colour images (3 x 8 x 8: 192 values each) read 7 rows at a time, 3 at a time where a chunk's values are
    capped, and one at a time where one image passes the cap: the mean, the axes and the error of scikit-learn's PCA
    of all of them at once."""
    rng = np.random.default_rng(1)
    directions = rng.normal(size=(6, 192)) * np.linspace(3, 0.5, 6)[:, None]
    values = rng.normal(size=(130, 6)) @ directions + rng.normal(scale=0.3, size=(130, 192))
    images = np.clip(values * 20 + 128, 0, 255).astype(np.uint8).reshape(130, 3, 8, 8)
    train, test = torch.from_numpy(images[:100]), torch.from_numpy(images[100:])
    flat_train, flat_test = images[:100].reshape(100, -1) / 255.0, images[100:].reshape(30, -1) / 255.0
    reference = PCA(n_components=5).fit(flat_train)
    expected = np.mean((reference.inverse_transform(reference.transform(flat_test)) - flat_test) ** 2)
    for chunk, chunk_values, rows in ((7, baseline.CHUNK_VALUES, 7), (baseline.CHUNK, 3 * 192 + 5, 3),
                                      (baseline.CHUNK, 100, 1)):
        monkeypatch.setattr(baseline, "CHUNK", chunk)
        monkeypatch.setattr(baseline, "CHUNK_VALUES", chunk_values)
        sizes = [len(c) for c in baseline._chunks(train)]
        assert sizes == [rows] * (100 // rows) + ([100 % rows] if 100 % rows else []), sizes
        pca = baseline.fit_pca(train, 5, exact_max_values=exact_max_values)
        assert pca.mean.dtype == torch.float32
        np.testing.assert_allclose(pca.mean.numpy(), reference.mean_, atol=1e-6)
        cosines = np.linalg.svd(reference.components_ @ pca.components.double().numpy().T, compute_uv=False)
        assert cosines.min() > 1 - 1e-6
        assert baseline.pca_mse(pca, test) == pytest.approx(expected, rel=1e-5)


FIT_LARGE = textwrap.dedent("""
    import torch
    from aeexp.evaluation import baseline
    images = torch.randint(0, 256, (40, 1, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pca = baseline.fit_pca(images, 8)
    print(tuple(pca.components.shape), baseline.pca_mse(pca, images[:10]) > 0)
""")


def test_the_baseline_of_256x256_images_fits_in_a_few_gigabytes():
    """The issue's case: 256 x 256 grey images, whose covariance alone would take 32 GiB (65,536 squared float64s).
    In a process limited to 6 GiB of address space the baseline is fit all the same."""
    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    done = subprocess.run([sys.executable, "-c", FIT_LARGE], capture_output=True, text=True, timeout=600,
                          preexec_fn=limited, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["(8,", "65536)", "True"]
    assert baseline.memory_needed((1, 256, 256), 32) < 1 << 30 < 8 * 65536**2


def test_the_preflight_counts_the_baseline_in_memory():
    """The check before any data is read: the baseline's memory against what is available; one line that names the
    image size and the figures when it does not fit, nothing when it does or when the memory is unknown."""
    needed = baseline.memory_needed((3, 32, 32), 16)
    assert needed >= 3 * 8 * 3072**2  # the exact PCA's covariance (and LAPACK's copies) of 3,072 values
    preflight.check_baseline_fits((3, 32, 32), 16, needed)
    preflight.check_baseline_fits((3, 32, 32), 16, None)
    with pytest.raises(ConfigError) as info:
        preflight.check_baseline_fits((3, 32, 32), 16, needed - 1)
    message = str(info.value)
    assert "\n" not in message and "PCA baseline" in message and "3x32x32" in message and "dataset" in message
