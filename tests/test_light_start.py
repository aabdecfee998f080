"""A run's fixed cost: what a run imports, and when. Each check runs in a fresh process, where imports are real."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch

from aeexp.training import compiler_free


def _fresh_process(code: str) -> str:
    """Run ``code`` in a new interpreter; its last line of output."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


# The default optimizer and the others the presets name, built from their configs as a run builds them, a fast-path
# fit and an autograd-free resume from its checkpoint: torch's compiler is never imported.
OPTIMIZERS_WITHOUT_THE_COMPILER = """
import sys
import torch
from hydra import compose, initialize_config_module
from aeexp import data, models
from aeexp.config import register_configs
from aeexp.training import checkpoint, loop, optim

register_configs()
images = torch.randint(0, 256, (300, 1, 8, 8), dtype=torch.uint8)
split = data.Split(images[:250], torch.arange(250) % 10)
val = data.Split(images[250:], torch.arange(50) % 10)
for preset in ("adamw", "adam", "sgd"):
    with initialize_config_module(config_module="aeexp.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"optimizer={preset}"])
    optim.check_optimizer(cfg.optimizer)
    model = models.build(cfg.model, (1, 8, 8))
    optimizer = optim.build_optimizer(cfg.optimizer, model)
    schedule = optim.build_schedule(cfg.scheduler, optimizer, 2, 4)
    step = loop.make_step(model, optimizer, torch.device("cpu"), False, True)
    assert step.path == "fast", step.path
    loop.fit(model, split, val, epochs=2, batch_size=64, optimizer=optimizer, seed=0, schedule=schedule, step=step,
             progress=False)
    saved = checkpoint.capture("run", 2, "", model, optimizer, schedule, torch.Generator(), loop.History(), None)
    again = optim.build_optimizer(cfg.optimizer, model)
    checkpoint.restore(saved, model, again, optim.build_schedule(cfg.scheduler, again, 2, 4), torch.Generator(), None)
    if preset != "sgd":  # (SGD steps through optimizer.step(), which imports it)
        assert "torch._dynamo" not in sys.modules, preset
print("torch._dynamo" in sys.modules)
"""


def test_making_saving_loading_and_stepping_the_fast_paths_optimizer_leaves_the_compiler_unimported():
    assert _fresh_process(OPTIMIZERS_WITHOUT_THE_COMPILER) == "True"  # SGD's optimizer.step() did import it


@pytest.mark.parametrize("make", [lambda p: torch.optim.Adam(p, lr=0.01, fused=True),
                                  lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, fused=True),
                                  lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)])
def test_the_optimizers_own_step_is_optimizer_step(make):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    twin = copy.deepcopy(model)
    ours, theirs = make(model.parameters()), make(twin.parameters())
    x = torch.randn(8, 6)
    for _ in range(3):
        for net in (model, twin):
            net.zero_grad()
            net(x).square().mean().backward()
        compiler_free.own_step(ours)
        theirs.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert str(ours.state_dict()) == str(theirs.state_dict())


def test_the_digits_are_scikit_learns_arrays_and_split_without_importing_it():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from aeexp.data.digits import Digits, read_digits

    digits = load_digits()
    images, labels = read_digits()
    np.testing.assert_array_equal(images, digits.images)
    np.testing.assert_array_equal(labels, digits.target)
    assert images.dtype == digits.images.dtype and labels.dtype == digits.target.dtype
    # What dataset=digits read before: scikit-learn's loader and split
    levels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    expected = train_test_split(levels, digits.target, test_size=0.2, stratify=digits.target, random_state=0)
    arrays = Digits().read()
    for ours, theirs in zip((arrays.train_images, arrays.test_images, arrays.train_labels, arrays.test_labels),
                            (expected[0], expected[1], expected[2], expected[3]), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert _fresh_process("import sys\nfrom aeexp.data.digits import Digits\nDigits().read()\n"
                          "print(sorted({'sklearn', 'scipy'} & set(sys.modules)))") == "[]"


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("sizes", [(5, 5, 5), (40, 3, 17, 2, 9), (100, 100, 2, 3)])
def test_the_stratified_split_is_scikit_learns(sizes, seed):
    from sklearn.model_selection import train_test_split

    from aeexp.data.digits import stratified_split

    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(sizes)), sizes))
    rows = np.arange(len(labels))
    n_test = max(len(sizes), len(labels) // 4)
    train, test = stratified_split(labels, n_test, seed)
    theirs = train_test_split(rows, test_size=n_test, stratify=labels, random_state=seed)
    np.testing.assert_array_equal(train, theirs[0])
    np.testing.assert_array_equal(test, theirs[1])
