"""aeexp.components.build: components of aeexp and of a user's own module, built from ``_target_`` configs with
every parameter checked first; each refusal is one ConfigError line naming the config key."""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator

import pytest
import torch
from omegaconf import OmegaConf

from aeexp import components, models
from aeexp.errors import ConfigError
from aeexp.models import DenseAutoencoder

USER = "aeexp_test_user_parts"  # a module of the user's own, written to a temp folder on sys.path
USER_SOURCE = '''
"""Components as a user writes them: type hints, require() for values, **kwargs passed on to a base class."""

from __future__ import annotations

from typing import Any, Literal

from aeexp.errors import ConfigError, require
from aeexp.models import DenseAutoencoder

NOT_CALLABLE = 3


class Part:
    def __init__(self, count: int, rate: float = 0.5, flag: bool = False, label: str = "x",
                 mode: Literal["fast", "slow"] = "fast", sizes: list[int] = (1, 2),
                 pair: tuple[int, float] = (1, 0.5), limit: float | None = None, anything=None) -> None:
        require(count >= 0, "count", count, "it must be >= 0")
        self.count, self.rate, self.flag, self.label, self.mode = count, rate, flag, label, mode
        self.sizes, self.pair, self.limit, self.anything = sizes, pair, limit, anything


class ScaledAE(DenseAutoencoder):
    """A model of the user's own: its parameter, then DenseAutoencoder's and Autoencoder's through **kwargs."""

    def __init__(self, *args: Any, gain: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        require(gain > 0, "gain", gain, "it must be positive")
        self.gain = gain


class DeepAE(ScaledAE):
    """Two levels of **kwargs, and a required parameter of its own."""

    def __init__(self, depth: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.depth = depth


class Grumpy:
    def __init__(self, x: int = 0) -> None:
        raise RuntimeError("the disk is full\\nand this is a second line")


class Strict:
    def __init__(self, x: int = 0) -> None:
        raise ConfigError("part.x: Strict says no")


def make_part(count: int, **extra: Any) -> dict:
    return {"count": count, **extra}
'''

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def user_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("user-module")
    (folder / f"{USER}.py").write_text(USER_SOURCE)
    (folder / "aeexp_test_broken.py").write_text("def f(:\n")
    (folder / "aeexp_test_raises.py").write_text("raise RuntimeError('boom at import\\nsecond line')\n")
    (folder / "aeexp_test_needs_dep.py").write_text("import aeexp_no_such_dependency\n")
    sys.path.insert(0, str(folder))
    yield USER
    sys.path.remove(str(folder))
    for name in (USER, "aeexp_test_broken", "aeexp_test_raises", "aeexp_test_needs_dep"):
        sys.modules.pop(name, None)


def _refused(config, key: str = "part", *args, **kwargs) -> str:
    """The message of the ConfigError that building ``config`` raises; it is always one line."""
    with pytest.raises(ConfigError) as info:
        components.build(config, key, *args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _part(**params) -> dict:
    return {"_target_": f"{USER}.Part", "count": 1, **params}


# --------------------------------------------------------------------------------------------- what is built


def test_builds_the_target_with_its_parameters_as_plain_values(user_module):
    part = components.build(_part(count=3, rate=2, flag=True, label="y", mode="slow", sizes=[4, 5], pair=[2, 0.25],
                                  limit=None, anything={"a": [1]}), "part")
    assert type(part).__module__ == USER and type(part).__name__ == "Part"
    assert (part.count, part.rate, part.flag, part.label, part.mode) == (3, 2, True, "y", "slow")
    assert part.sizes == [4, 5] and type(part.sizes) is list  # a plain list, not a ListConfig
    assert part.pair == [2, 0.25] and part.limit is None and part.anything == {"a": [1]}


def test_interpolations_are_resolved_and_positional_arguments_count_as_given(user_module):
    config = OmegaConf.create({"part": {"_target_": f"{USER}.Part", "rate": "${rate}"}, "rate": 0.125})
    part = components.build(config.part, "part", 7)  # count given positionally: not missing
    assert part.count == 7 and part.rate == 0.125


def test_models_build_makes_the_shipped_class_for_the_image_shape():
    model = models.build(OmegaConf.create({"_target_": "aeexp.models.DenseAutoencoder", "name": "ae",
                                           "widths": [16], "bottleneck": 3, "loss": "mse"}), SHAPE)
    assert type(model) is DenseAutoencoder
    assert model.image_shape == SHAPE and model.widths == [16] and model.bottleneck == 3 and model.loss == "mse"
    assert model.encode(torch.rand(2, *SHAPE)).shape == (2, 3)


# --------------------------------------------------------------------------------------------- keys and types


def test_unknown_key_names_the_class_and_its_parameters():
    with pytest.raises(ConfigError) as info:
        models.build({"_target_": "aeexp.models.DenseAutoencoder", "widths": [8], "bottleneck": 2, "foo": 1}, SHAPE)
    message = str(info.value)
    assert message.startswith("model.foo is not a parameter of aeexp.models.dense.DenseAutoencoder (its parameters: ")
    listed = message.split("(its parameters: ")[1].split(")")[0].split(", ")
    # image_shape is aeexp's to give
    assert listed == ["widths", "bottleneck", "code_norm", "loss", "noise", "noise_level"]
    assert message.endswith("remove it or fix its name") and "\n" not in message


@pytest.mark.parametrize(("params", "message"), [
    ({"count": 1.5}, "part.count=1.5 is invalid: expected an integer."),
    ({"count": True}, "part.count=True is invalid: expected an integer."),
    ({"count": "3"}, "part.count='3' is invalid: expected an integer."),
    ({"rate": "fast"}, "part.rate='fast' is invalid: expected a number."),
    ({"rate": False}, "part.rate=False is invalid: expected a number."),
    ({"flag": 1}, "part.flag=1 is invalid: expected true or false."),
    ({"flag": "yes"}, "part.flag='yes' is invalid: expected true or false."),
    ({"label": 5}, "part.label=5 is invalid: expected a string."),
    ({"mode": "medium"}, "part.mode='medium' is invalid: choose one of fast, slow."),
    ({"sizes": 3}, "part.sizes=3 is invalid: expected a list, e.g. [1,2]."),
    ({"sizes": [1, "a"]}, "part.sizes=[1, 'a'] is invalid: expected a list, each item an integer."),
    ({"sizes": [1, 2.5]}, "part.sizes=[1, 2.5] is invalid: expected a list, each item an integer."),
    ({"pair": [1]}, "part.pair=[1] is invalid: expected a list of 2 values."),
    ({"pair": [1, 0.5, 2]}, "part.pair=[1, 0.5, 2] is invalid: expected a list of 2 values."),
    ({"pair": [1.5, 0.5]}, "part.pair=[1.5, 0.5] is invalid: expected a list, each item an integer."),
    ({"pair": [1, "x"]}, "part.pair=[1, 'x'] is invalid: expected a list, each item a number."),
    ({"limit": "high"}, "part.limit='high' is invalid: expected a number or null."),
])
def test_a_value_that_does_not_fit_its_type_hint_is_refused(user_module, params, message):
    assert _refused(_part(**params)) == message


@pytest.mark.parametrize("params", [{"rate": 2}, {"limit": None}, {"limit": 3}, {"sizes": []}, {"pair": (3, 1)},
                                    {"anything": object()}, {"mode": "slow"}])
def test_values_that_fit_their_type_hints_are_accepted(user_module, params):
    part = components.build(_part(**params), "part")
    name, value = next(iter(params.items()))
    assert getattr(part, name) == (list(value) if isinstance(value, tuple) else value)


def test_a_missing_required_parameter_is_named(user_module):
    message = _refused({"_target_": f"{USER}.Part", "rate": 0.1})
    assert message == f"part.count is missing: {USER}.Part needs it (e.g. +part.count=...)"


def test_the_types_of_torch_classes_are_checked_too():
    adam = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01}
    assert _refused({**adam, "betas": [0.9]}, "optimizer") == \
        "optimizer.betas=[0.9] is invalid: expected a list of 2 values."
    assert _refused({**adam, "fused": "yes"}, "optimizer") == \
        "optimizer.fused='yes' is invalid: expected true or false or null."
    assert _refused({**adam, "lrr": 0.1}, "optimizer").startswith(
        "optimizer.lrr is not a parameter of torch.optim.adam.Adam (its parameters: lr, betas, eps")


# --------------------------------------------------------------------------------------------- _target_


@pytest.mark.parametrize(("target", "expected"), [
    ("aeexp_no_such_module.Thing", "cannot be imported (No module named 'aeexp_no_such_module'); put its module"),
    ("aeexp.no_such_module.Thing", "cannot be imported (No module named 'aeexp.no_such_module')"),
    ("aeexp_test_needs_dep.Thing", "cannot be imported (No module named 'aeexp_no_such_dependency')"),
    ("aeexp_test_broken.Thing", "cannot be imported: importing aeexp_test_broken raised SyntaxError"),
    ("aeexp_test_raises.Thing", "cannot be imported: importing aeexp_test_raises raised RuntimeError: boom at import"),
    (f"{USER}.Nothing", f"is invalid: {USER} has no class or function Nothing"),
    (f"{USER}.NOT_CALLABLE", "is invalid: NOT_CALLABLE is not a class or function (its type is int)"),
    ("Part", "is invalid: give a dotted path such as mymodels.SparseAE"),
])
def test_a_target_that_cannot_be_used_is_one_line_naming_the_key(user_module, target, expected):
    message = _refused({"_target_": target}, "part")
    assert message.startswith(f"part._target_={target!r} ")
    assert expected in message
    assert "second line" not in message


def test_a_missing_target_is_named():
    assert _refused({"count": 1}, "part").startswith("part._target_ is missing: name the class to build")


@pytest.mark.parametrize("target", [f"{USER}.Part", f"{USER}.make_part", "torch.nn.Linear"])
def test_a_model_target_must_be_an_autoencoder(user_module, target):
    with pytest.raises(ConfigError) as info:
        models.build({"_target_": target, "bottleneck": 2}, SHAPE)
    assert str(info.value) == (f"model._target_={target} is invalid: it must be a subclass of "
                               "aeexp.models.base.Autoencoder")


def test_a_function_target_is_built_when_no_base_is_required(user_module):
    made = components.build({"_target_": f"{USER}.make_part", "count": 2, "extra": "ok"}, "part")
    assert made == {"count": 2, "extra": "ok"}  # **extra: any key is its parameter
    assert _refused({"_target_": f"{USER}.make_part", "extra": 1}, "part").startswith("part.count is missing")


# --------------------------------------------------------------------------------------------- refusals by the target


def test_an_invalid_parameter_raised_by_the_target_names_its_key(user_module):
    assert _refused(_part(count=-1)) == "part.count=-1 is invalid: it must be >= 0."
    with pytest.raises(ConfigError) as info:
        models.build({"_target_": "aeexp.models.DenseAutoencoder", "widths": [8, -2], "bottleneck": 2}, SHAPE)
    assert str(info.value) == "model.widths[1]=-2 is invalid: widths must be positive integers."


def test_other_errors_of_the_target_are_one_line_naming_the_class(user_module):
    message = _refused({"_target_": f"{USER}.Grumpy"})
    assert message == f"part: {USER}.Grumpy refused its parameters (RuntimeError: the disk is full)"
    assert _refused({"_target_": f"{USER}.Strict"}) == "part.x: Strict says no"  # its own ConfigError, as it is


# --------------------------------------------------------------------------------------------- a user's subclass


def _scaled(**params) -> dict:
    return {"_target_": f"{USER}.ScaledAE", "name": "mine", "widths": [16, 8], "bottleneck": 4, **params}


def test_a_user_subclass_gets_every_parameter_of_its_bases(user_module):
    model = models.build(_scaled(gain=2.5, loss="mse", noise="masking", noise_level=0.5), SHAPE)
    assert type(model).__name__ == "ScaledAE" and isinstance(model, DenseAutoencoder)
    assert model.gain == 2.5 and model.widths == [16, 8] and model.bottleneck == 4  # own, then DenseAutoencoder's
    assert (model.loss, model.noise, model.noise_level) == ("mse", "masking", 0.5)  # Autoencoder's, keyword-only
    assert model.image_shape == SHAPE
    assert models.build(_scaled(), SHAPE).gain == 1.0


@pytest.mark.parametrize(("params", "message"), [
    ({"gain": "x"}, "model.gain='x' is invalid: expected a number."),  # the subclass's own hint
    ({"gain": 0}, "model.gain=0 is invalid: it must be positive."),  # its own require()
    ({"widths": ["a"]}, "model.widths=['a'] is invalid: expected a list, each item an integer."),  # Dense's
    ({"bottleneck": 1.5}, "model.bottleneck=1.5 is invalid: expected an integer."),
    ({"bottleneck": 64}, "model.bottleneck=64 is invalid: it must be smaller than the input size 64 of the dataset's "
                         "1x8x8 images."),
    ({"loss": "l1"}, "model.loss='l1' is invalid: choose one of bce, mse."),  # Autoencoder's Literal
    ({"noise": "pink"}, "model.noise='pink' is invalid: choose one of none, gaussian, masking, salt_pepper."),
    ({"noise_level": "high"}, "model.noise_level='high' is invalid: expected a number or null."),
])
def test_a_user_subclass_has_every_level_type_checked(user_module, params, message):
    with pytest.raises(ConfigError) as info:
        models.build(_scaled(**params), SHAPE)
    assert str(info.value) == message


def test_unknown_keys_of_a_user_subclass_list_the_parameters_of_every_level(user_module):
    with pytest.raises(ConfigError) as info:
        models.build({"_target_": f"{USER}.DeepAE", "depth": 2, "gian": 2.0}, SHAPE)
    message = str(info.value)
    assert message.startswith(f"model.gian is not a parameter of {USER}.DeepAE (its parameters: depth, gain, widths, "
                              "bottleneck, code_norm, loss, noise, noise_level)")
    with pytest.raises(ConfigError, match=rf"^model\.depth is missing: {USER}\.DeepAE needs it"):
        models.build({"_target_": f"{USER}.DeepAE", "gain": 2.0}, SHAPE)
    deep = models.build({"_target_": f"{USER}.DeepAE", "depth": 3, "gain": 0.5, "widths": [8], "bottleneck": 2},
                        SHAPE)
    assert (deep.depth, deep.gain, deep.widths, deep.bottleneck) == (3, 0.5, [8], 2)


# --------------------------------------------------------------------------------------------- _partial_


def test_a_partial_config_is_a_factory_missing_what_is_given_later():
    config = OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "momentum": 0.9})
    factory = components.build(config, "optimizer")
    assert isinstance(factory, functools.partial)
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = factory([weight])  # params, required by SGD, given at the call
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.param_groups[0]["lr"] == 0.1 and optimizer.param_groups[0]["momentum"] == 0.9
    weight.grad = torch.ones(3)
    optimizer.step()
    torch.testing.assert_close(weight.detach(), torch.full((3,), 0.9))


def test_a_partial_config_is_still_checked_and_a_full_one_needs_everything(user_module):
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    assert _refused({**sgd, "momentum": "high"}, "optimizer") == \
        "optimizer.momentum='high' is invalid: expected a number."
    assert _refused({**sgd, "moment": 0.9}, "optimizer").startswith("optimizer.moment is not a parameter of")
    assert _refused({**sgd, "_partial_": False}, "optimizer").startswith(
        "optimizer.params is missing: torch.optim.sgd.SGD needs it")
    make = components.build({"_target_": f"{USER}.Part", "_partial_": True, "rate": 0.25}, "part")
    part = make(count=4)
    assert (part.count, part.rate) == (4, 0.25)


# --- the params say what was built ---------------------------------------------------------------------------------


def test_arguments_are_the_config_s_values_and_the_class_s_defaults():
    config = OmegaConf.create({"_target_": "aeexp.models.DenseAutoencoder", "name": "mine", "widths": [16],
                               "bottleneck": 3})
    built = models.arguments(config, (1, 8, 8))
    assert built == {"image_shape": [1, 8, 8], "widths": [16], "bottleneck": 3, "code_norm": "none", "loss": "bce",
                     "noise": "none", "noise_level": None}  # Autoencoder's too, through **kwargs; no name
    model = models.build(config, (1, 8, 8))
    assert (model.code_norm, model.widths, model.loss) == ("none", [16], "bce")  # what build made
    partial = components.arguments({"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True,
                                    "step_size": 3}, "scheduler")
    assert partial == {"step_size": 3, "gamma": 0.1, "last_epoch": -1}  # the optimizer, given at the call: none


def test_as_params_writes_values_as_a_config_shows_them():
    assert components.as_params("model", {"widths": (128, 64), "code": {"norm": "batch", "of": {}}, "x": None}) == {
        "model.widths": "[128, 64]", "model.code.norm": "batch", "model.code.of": "{}", "model.x": "None"}
    assert components.as_params("optimizer.betas", (0.9, 0.999)) == {"optimizer.betas": "[0.9, 0.999]"}


def _run_parts(make_config, *overrides):
    from aeexp import data
    from aeexp.training import optim

    cfg = make_config(*overrides)
    model = models.build(cfg.model, data.build(cfg.dataset).image_shape)
    optimizer = optim.build_optimizer(cfg.optimizer, model)
    return cfg, model, optimizer, optim.build_schedule(cfg.scheduler, optimizer, cfg.trainer.epochs, 10)


def test_run_params_add_the_built_arguments_to_the_config(make_config):
    """The class defaults a config leaves out are params too (``model.code_norm=none`` for a dense AE without the
    key, ``batch`` for ae32, which sets it); what the config has keeps its value (a null T_max, the run's length)."""
    from aeexp.config import flatten
    from aeexp.params import run_params

    cfg, *parts = _run_parts(make_config, "scheduler=cosine")
    params = run_params(cfg, *parts)
    assert set(flatten(cfg).items()) <= set(params.items())
    assert params["model.code_norm"] == "batch" and params["model.image_shape"] == "[1, 8, 8]"
    assert params["optimizer.amsgrad"] == "False" and params["optimizer.betas"] == "[0.9, 0.999]"
    assert params["scheduler.T_max"] == "None" and params["scheduler.last_epoch"] == "-1"
    plain = run_params(*_run_parts(make_config, "~model.code_norm", "optimizer=sgd"))
    assert plain["model.code_norm"] == "none" and plain["optimizer.dampening"] == "0"
    assert not any(key.startswith("scheduler.") and key not in ("scheduler._target_", "scheduler.interval",
                                                                "scheduler.warmup_epochs") for key in plain)
