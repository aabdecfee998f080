"""Optimizers and learning-rate schedules from configs, gradient clipping, and schedules across a resume."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from idx import synthetic_images

from aeexp import data, models
from aeexp.errors import ConfigError
from aeexp.training import checkpoint, fastpath, loop, optim

CPU = torch.device("cpu")


def _tiny(n: int = 128, size: int = 8, seed: int = 0) -> data.Split:
    images, labels = synthetic_images(n, seed, size=size)
    return data.Split(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long())


def _dense(seed: int = 0) -> models.DenseAutoencoder:
    torch.manual_seed(seed)
    return models.DenseAutoencoder((1, 8, 8), widths=[16], bottleneck=4)


def _conv(seed: int = 0) -> models.ConvAutoencoder:
    torch.manual_seed(seed)
    return models.ConvAutoencoder((1, 8, 8), widths=[4, 8], bottleneck=4)


# --- parameter groups and optimizers from configs ---------------------------------------------------------------


def test_parameter_groups_decay_the_weights_only():
    model = models.VQVAE((1, 8, 8), [4, 8], 8, kind="conv", codebook_size=8)
    model.decoder[0].bias.requires_grad_(False)  # a frozen parameter is in no group
    decayed, plain = optim.parameter_groups(model)
    assert set(decayed) == {"params"} and plain["weight_decay"] == 0.0
    named = dict(model.named_parameters())
    names = {id(p): name for name, p in named.items()}
    assert {names[id(p)] for p in decayed["params"]} == {n for n, p in named.items() if p.dim() >= 2}
    assert "codebook" in {names[id(p)] for p in decayed["params"]}  # matrices, kernels, codebooks
    assert {names[id(p)] for p in plain["params"]} == {n for n, p in named.items()
                                                       if p.dim() == 1 and n != "decoder.0.bias"}


def test_adamw_leaves_the_biases_undecayed(make_config):
    """With zero gradients an AdamW step is its weight decay alone: weights shrink by lr * weight_decay, biases
    stay, as a hand-made AdamW of the same two groups does."""
    model = _dense()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(-1, 1)  # biases start at zero: give the decay something to shrink
    optimizer = optim.build_optimizer(make_config("optimizer=adamw", "optimizer.lr=0.1",
                                                  "optimizer.weight_decay=0.5").optimizer, model)
    assert type(optimizer) is torch.optim.AdamW
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    twin, everything = copy.deepcopy(model), copy.deepcopy(model)
    weights = [p for p in twin.parameters() if p.dim() >= 2]
    biases = [p for p in twin.parameters() if p.dim() < 2]
    by_hand = torch.optim.AdamW([{"params": weights, "weight_decay": 0.5}, {"params": biases, "weight_decay": 0.0}],
                                lr=0.1)
    for m in (model, twin, everything):
        for p in m.parameters():
            p.grad = torch.zeros_like(p)
    optimizer.step()
    by_hand.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
        if p.dim() >= 2:
            torch.testing.assert_close(p.detach(), before[name] * (1 - 0.1 * 0.5))
        else:
            assert torch.equal(p.detach(), before[name]), name
    torch.optim.AdamW(everything.parameters(), lr=0.1, weight_decay=0.5).step()  # decay on every parameter:
    torch.testing.assert_close(everything.encoder[0].bias, model.encoder[0].bias * (1 - 0.1 * 0.5))  # biases too


@pytest.mark.parametrize(("preset", "kind", "settings"), [
    ("adam", torch.optim.Adam, {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "fused": True}),
    ("adamw", torch.optim.AdamW, {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05,
                                  "fused": True}),
    ("sgd", torch.optim.SGD, {"lr": 0.01, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}),
])
def test_shipped_optimizer_configs_build_torch_optimizers(make_config, preset, kind, settings):
    model = _dense()
    optimizer = optim.build_optimizer(make_config(f"optimizer={preset}").optimizer, model)
    assert type(optimizer) is kind and isinstance(optimizer, torch.optim.Optimizer)
    weights, biases = optimizer.param_groups
    for key, value in settings.items():
        got = tuple(weights[key]) if key == "betas" else weights[key]
        assert got == value, key
    assert biases["weight_decay"] == 0.0 and biases["lr"] == settings["lr"]
    assert len(weights["params"]) + len(biases["params"]) == len(list(model.parameters()))
    assert (fastpath.fused_adam_update(optimizer) is not None) == (preset != "sgd")
    changed = optim.build_optimizer(make_config(f"optimizer={preset}", "optimizer.lr=0.05",
                                                "optimizer.weight_decay=0.2").optimizer, model)
    assert changed.param_groups[0]["lr"] == 0.05 and changed.param_groups[0]["weight_decay"] == 0.2
    assert changed.param_groups[1]["weight_decay"] == 0.0
    momentum = optim.build_optimizer(make_config("optimizer=sgd", "optimizer.momentum=0.9",
                                                 "optimizer.nesterov=true").optimizer, model)
    assert momentum.param_groups[0]["momentum"] == 0.9 and momentum.param_groups[0]["nesterov"] is True


def test_any_torch_optimizer_by_target(make_config):
    model = _dense()
    optimizer = optim.build_optimizer(make_config("optimizer._target_=torch.optim.RAdam",
                                                  "optimizer.lr=0.01").optimizer, model)
    assert type(optimizer) is torch.optim.RAdam and optimizer.param_groups[0]["lr"] == 0.01
    split = _tiny(64)
    history = loop.fit(model, split, split, epochs=2, batch_size=32, optimizer=optimizer, seed=0, progress=False)
    assert history.train_loss[1] < history.train_loss[0]


@pytest.mark.parametrize(("overrides", "message"), [
    (["+optimizer.foo=1"], r"optimizer\.foo is not a parameter of torch\.optim\.adamw\.AdamW"),
    (["optimizer=sgd", "+optimizer.betas=[0.9,0.99]"], r"optimizer\.betas is not a parameter of torch\.optim"),
    (["optimizer.betas=[0.9]"], r"optimizer\.betas=\[0\.9\] is invalid: expected a list of 2 values"),
    (["optimizer._target_=torch.optim.Nope"], r"optimizer\._target_='torch\.optim\.Nope' is invalid"),
    (["optimizer.lr=-1.0"], r"optimizer: torch\.optim\.AdamW refused its settings \(Invalid learning rate"),
])
def test_bad_optimizer_settings_name_the_key(make_config, overrides, message):
    with pytest.raises(ConfigError, match=message) as raised:
        optim.build_optimizer(make_config(*overrides).optimizer, _dense())
    assert "\n" not in str(raised.value)


# --- schedules --------------------------------------------------------------------------------------------------


def _drive(schedule: optim.Schedule, epochs: int, steps_per_epoch: int, val_losses=None) -> list[float]:
    """The learning rate of every step of ``epochs`` epochs, stepping ``schedule`` as :func:`loop.fit` does."""
    lrs = []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            lrs.append(schedule.lr())
            schedule.after_step()
        schedule.after_epoch(1.0 if val_losses is None else val_losses[epoch])
    return lrs


def _schedule(make_config, *overrides: str, epochs: int, steps_per_epoch: int, lr: float = 0.1):
    config = make_config(f"optimizer.lr={lr}", *overrides)
    optimizer = optim.build_optimizer(config.optimizer, _dense())
    return optim.build_schedule(config.scheduler, optimizer, epochs, steps_per_epoch)


def test_warm_up_then_cosine_over_the_rest_of_the_run(make_config):
    schedule = _schedule(make_config, "scheduler=cosine", "scheduler.warmup_epochs=1", "scheduler.eta_min=0.001",
                         epochs=4, steps_per_epoch=5)
    assert schedule.scheduler.T_max == 15 and schedule.warmup_steps == 5  # the run after the warm-up, in steps
    lrs = _drive(schedule, 4, 5)
    assert lrs[:5] == pytest.approx([0.1 * (i + 1) / 5 for i in range(5)], rel=1e-12)  # linear, up to the start
    cosine = [0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * k / 15)) / 2 for k in range(15)]
    assert lrs[5:] == pytest.approx(cosine, rel=1e-9)
    assert lrs[-1] > 0.001 and schedule.lr() == pytest.approx(0.001, rel=1e-9)  # eta_min after the last step
    assert _drive(schedule, 2, 5) == pytest.approx([0.001] * 10, rel=1e-9)  # trained further: it stays there
    for group in schedule.optimizer.param_groups:  # both groups follow the schedule
        assert group["lr"] == pytest.approx(0.001, rel=1e-9)


def test_epoch_cosine_after_a_warm_up_starts_at_the_start_lr_and_uses_every_epoch(make_config):
    schedule = _schedule(make_config, "scheduler=cosine", "scheduler.interval=epoch", "scheduler.warmup_epochs=2",
                         epochs=5, steps_per_epoch=2)
    lrs = _drive(schedule, 5, 2)
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    per_epoch = lrs[4::2]
    assert lrs[5::2] == per_epoch  # constant within an epoch
    assert per_epoch == pytest.approx([0.1 * (1 + math.cos(math.pi * k / 3)) / 2 for k in range(3)])
    assert per_epoch[-1] > 0 and schedule.lr() == pytest.approx(0.0, abs=1e-12)


def test_onecycle_stops_at_its_end(make_config):
    schedule = _schedule(make_config, "scheduler=onecycle", epochs=3, steps_per_epoch=4)
    assert schedule.scheduler.total_steps == 12
    lrs = _drive(schedule, 6, 4)  # trained for twice the planned epochs (e.g. resumed with more)
    assert max(lrs) == pytest.approx(0.1, rel=0.01) and lrs.index(max(lrs)) == 3  # the peak at pct_start
    assert lrs[0] == pytest.approx(0.1 / 25)
    final = 0.1 / 25 / 10000
    assert lrs[11] == pytest.approx(final)
    assert lrs[11:] == [lrs[11]] * 13 and schedule.lr() == lrs[11]  # never rises again past its end


def test_plateau_lowers_the_lr_after_patience_epochs_without_improvement(make_config):
    schedule = _schedule(make_config, "scheduler=plateau", "scheduler.patience=2", epochs=8, steps_per_epoch=3)
    val = [1.0, 0.8, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7]
    lrs = _drive(schedule, 8, 3, val)
    per_epoch = lrs[::3]
    # Epochs 3-4 do not improve: 2 epochs of patience; epoch 5 is the third, after which the lr halves.
    assert per_epoch == pytest.approx([0.1] * 5 + [0.05] * 3)
    assert lrs[1::3] == per_epoch  # nothing happens between epochs
    assert schedule.lr() == pytest.approx(0.05)


def test_step_lr_every_step_size_epochs(make_config):
    schedule = _schedule(make_config, "scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.5",
                         epochs=5, steps_per_epoch=3)
    per_epoch = _drive(schedule, 5, 3)[::3]
    assert per_epoch == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_no_scheduler_is_a_constant_lr_with_an_optional_warm_up(make_config):
    assert _drive(_schedule(make_config, epochs=2, steps_per_epoch=3), 2, 3) == [0.1] * 6
    warm = _schedule(make_config, "scheduler.warmup_epochs=0.5", epochs=2, steps_per_epoch=4)
    assert _drive(warm, 2, 4) == pytest.approx([0.05, 0.1] + [0.1] * 6)


@pytest.mark.parametrize(("overrides", "message"), [
    (["scheduler=plateau", "scheduler.interval=step"], r"scheduler\.interval=step is invalid: ReduceLROnPlateau"),
    (["scheduler=cosine", "scheduler.warmup_epochs=3"], r"scheduler\.warmup_epochs=3 is invalid: .* below "
                                                        r"trainer\.epochs=3"),
    (["scheduler.warmup_epochs=5"], r"scheduler\.warmup_epochs=5 is invalid"),
    (["scheduler=cosine", "scheduler.interval=hourly"], r"scheduler\.interval='hourly' is invalid"),
    (["scheduler=step", "+scheduler.foo=1"], r"scheduler\.foo is not a parameter of torch\.optim\.lr_scheduler"),
    (["scheduler=step", "scheduler.step_size=2.5"], r"scheduler\.step_size=2\.5 is invalid: expected an integer"),
])
def test_bad_scheduler_settings_are_refused_before_training(make_config, overrides, message):
    config = make_config(*overrides)
    with pytest.raises(ConfigError, match=message):
        optim.check_scheduler(config.scheduler, 3)
    optimizer = optim.build_optimizer(config.optimizer, _dense())
    with pytest.raises(ConfigError, match=message):
        optim.build_schedule(config.scheduler, optimizer, 3, 4)


def test_a_fit_follows_its_schedule(make_config):
    """loop.fit steps the schedule after every batch and epoch: its lr metric is the lr of each epoch's last step."""
    split = _tiny(96)
    config = make_config("optimizer.lr=0.01", "scheduler=cosine", "scheduler.warmup_epochs=1")
    model = _dense()
    optimizer = optim.build_optimizer(config.optimizer, model)
    schedule = optim.build_schedule(config.scheduler, optimizer, 3, 3)
    expected = _drive(optim.build_schedule(config.scheduler, optim.build_optimizer(config.optimizer, _dense()), 3, 3),
                      3, 3)
    step = loop.make_step(model, optimizer, CPU)
    assert step.path == "fast" and step.update != optimizer.step  # the kernel call after the first step
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = loop.fit(model, split, split, epochs=3, batch_size=32, optimizer=optimizer, schedule=schedule,
                           seed=0, step=step, progress=False)
    # torch's warning about a scheduler stepped before its optimizer does not apply to the fast path: not shown
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert history.series("lr") == pytest.approx(expected[2::3], rel=1e-12)
    assert schedule.steps == 9 and schedule.lr() == pytest.approx(0.0, abs=1e-12)


# --- a schedule across a checkpoint -----------------------------------------------------------------------------


def _run(make_config, family, epochs: int, stop: int | None = None, path=None):
    """Train ``family()`` with fused Adam and cosine after a warm-up for ``epochs``: straight, or to ``stop`` with
    a checkpoint at ``path`` from which a fresh model, optimizer and schedule carry on to ``epochs``."""
    config = make_config("optimizer.lr=0.01", "scheduler=cosine", "scheduler.warmup_epochs=1",
                         "scheduler.eta_min=0.0001")
    split, val = _tiny(96), _tiny(32, seed=1)

    def start(seed: int):
        model = family(seed)
        optimizer = optim.build_optimizer(config.optimizer, model)
        return model, optimizer, optim.build_schedule(config.scheduler, optimizer, epochs, 3)

    def fit(model, optimizer, schedule, until, history=None, generator=None):
        step = loop.make_step(model, optimizer, CPU)
        return step.path, loop.fit(model, split, val, epochs=until, batch_size=32, optimizer=optimizer, seed=0,
                                   schedule=schedule, step=step, progress=False, history=history,
                                   generator=generator)

    model, optimizer, schedule = start(0)
    if stop is None:
        path_taken, history = fit(model, optimizer, schedule, epochs)
        return model, optimizer, schedule, history, path_taken
    generator = torch.Generator().manual_seed(0)
    _, history = fit(model, optimizer, schedule, stop, generator=generator)
    checkpoint.save(checkpoint.capture("run", stop, "", model, optimizer, schedule, generator, history), path)
    model, optimizer, schedule = start(1)  # other weights: all that counts comes from the checkpoint
    generator = torch.Generator().manual_seed(1)
    history = checkpoint.restore(checkpoint.load(path), model, optimizer, schedule, generator)
    path_taken, history = fit(model, optimizer, schedule, epochs, history, generator)
    return model, optimizer, schedule, history, path_taken


@pytest.mark.parametrize("stop", [1, 2], ids=["at-the-warm-up-end", "mid-cosine"])
@pytest.mark.parametrize(("family", "path"), [(_dense, "fast"), (_conv, "autograd")], ids=["fast", "autograd"])
def test_a_resumed_schedule_gives_the_straight_run(make_config, tmp_path, family, path, stop):
    straight, straight_optimizer, straight_schedule, expected, taken = _run(make_config, family, 4)
    assert taken == path
    resumed, optimizer, schedule, got, taken = _run(make_config, family, 4, stop, tmp_path / checkpoint.FILENAME)
    assert taken == path
    assert len(got) == 4
    assert got.series("lr") == expected.series("lr") and len(set(got.series("lr"))) == 4
    assert got.train_loss == expected.train_loss and got.val_loss == expected.val_loss
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert schedule.state_dict() == straight_schedule.state_dict()
    assert schedule.lr() == straight_schedule.lr() == pytest.approx(0.0001)
    assert optimizer.state_dict()["param_groups"] == straight_optimizer.state_dict()["param_groups"]


# --- gradient clipping ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "path"), [(_dense, "fast"), (_conv, "autograd")], ids=["fast", "autograd"])
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_grad_clip_bounds_each_update(family, path, kind):
    """loop.fit with grad_clip gives the updates of clip_grad_norm_ applied by hand before each optimizer step;
    with plain SGD each update is then at most lr * clip long."""
    split = _tiny(64)
    clip, lr, epochs, batch_size = 1e-3, 0.5 if kind == "sgd" else 1e-3, 2, 16

    def make(model):
        if kind == "sgd":
            return torch.optim.SGD(optim.parameter_groups(model), lr=lr)
        return torch.optim.Adam(optim.parameter_groups(model), lr=lr, fused=True)

    def flat(model) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    start = family()
    model = copy.deepcopy(start)
    optimizer = make(model)
    step = loop.make_step(model, optimizer, CPU)
    assert step.path == path
    loop.fit(model, split, split, epochs=epochs, batch_size=batch_size, optimizer=optimizer, seed=0, step=step,
             grad_clip=clip, progress=False)

    by_hand = copy.deepcopy(start)
    optimizer = make(by_hand)
    generator = torch.Generator().manual_seed(0)
    norms = []
    for _ in range(epochs):
        for batch in loop.iterate_batches(split.images, batch_size, generator):
            optimizer.zero_grad(set_to_none=True)
            by_hand.training_loss(batch, batch)[0].backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(list(by_hand.parameters()), clip)))
            before = flat(by_hand)
            optimizer.step()
            if kind == "sgd":
                assert float((flat(by_hand) - before).norm()) <= lr * clip * (1 + 1e-4)
    assert min(norms) > 10 * clip  # the clip did cut every step
    for a, b in zip(model.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    moved = float((flat(model) - flat(start)).norm())
    unclipped = copy.deepcopy(start)
    loop.fit(unclipped, split, split, epochs=epochs, batch_size=batch_size, optimizer=make(unclipped), seed=0,
             progress=False)
    assert not torch.allclose(flat(unclipped), flat(model))
    if kind == "sgd":
        assert moved <= len(norms) * lr * clip * (1 + 1e-4)
        assert float((flat(unclipped) - flat(start)).norm()) > 10 * moved
