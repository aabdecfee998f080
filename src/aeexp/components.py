"""Components built from configs by ``_target_`` (models, datasets, optimizers, schedulers), checked first.

:func:`build` makes the object a config node describes with ``hydra.utils.instantiate``, after checking that the
target imports, that every key is one of its parameters, that no required one is missing and that each value fits
the parameter's type hint. The target checks the values themselves (:func:`aeexp.errors.require`). Every refusal
is one :class:`~aeexp.errors.ConfigError` naming the config key, e.g. ``model.bottleneck=1.5 is invalid: expected an
integer.``; a class of your own gets all of this from its ``__init__``'s signature and type hints.
"""

from __future__ import annotations

import collections.abc
import enum
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from aeexp.errors import AeexpError, ConfigError, InvalidParameter

HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


def _locate(path: str, key: str) -> Callable[..., Any]:
    """The class or function at dotted ``path`` (``torch.optim.AdamW``), else ConfigError naming ``key``."""
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise ConfigError(f"{key}._target_={path!r} is invalid: give a dotted path such as mymodels.SparseAE")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as err:  # perhaps a class inside a class: import the longest importable prefix
        parts = path.split(".")
        found = None
        for cut in range(len(parts) - 1, 0, -1):
            try:
                found = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for name in parts[cut:-1]:
                found = getattr(found, name, None)
            break
        if found is None:
            raise ConfigError(f"{key}._target_={path!r} cannot be imported ({err}); put its module on PYTHONPATH"
                              ) from None
    except Exception as err:  # the module itself fails (a syntax error, an exception at import): one line too
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        raise ConfigError(f"{key}._target_={path!r} cannot be imported: importing {module_name} raised {reason}"
                          ) from None
    target = getattr(found, attribute, None)
    if target is None:
        raise ConfigError(f"{key}._target_={path!r} is invalid: {module_name} has no class or function {attribute}")
    if not callable(target):
        raise ConfigError(f"{key}._target_={path!r} is invalid: {attribute} is not a class or function (its type "
                          f"is {type(target).__name__})")
    return target


def _signatures(target: Callable[..., Any]) -> list[tuple[inspect.Signature, dict[str, Any]]]:
    """The signature (and resolved type hints) of ``target``; for a class whose ``__init__`` passes ``**kwargs``
    on, also those of the base classes it passes them to, up to the first that takes no ``**kwargs``."""
    if not inspect.isclass(target):
        return [(inspect.signature(target), _hints(target))]
    found = []
    for cls in target.__mro__:
        if "__init__" not in vars(cls):
            continue
        if cls.__module__.startswith(("torch.nn.", "builtins")) and cls is not target:
            break  # nn.Module.__init__(*args, **kwargs) takes no parameters a config could give
        init = vars(cls)["__init__"]
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError):
            break
        found.append((signature, _hints(init)))
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            break
    return found


def _hints(function: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except Exception:  # hints that name things not importable here: check no types rather than fail
        return {}


def _parameters(target: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """Named parameters of ``target`` (see :func:`_signatures`), their type hints, and whether it takes any key (a
    function with ``**kwargs``; a class's ``**kwargs`` are its base classes' parameters)."""
    parameters: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    signatures = _signatures(target)
    for signature, signature_hints in signatures:
        for name, parameter in signature.parameters.items():
            if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            parameters.setdefault(name, parameter)
            if name in signature_hints:
                hints.setdefault(name, signature_hints[name])
    open_ended = not inspect.isclass(target) and any(
        p.kind is p.VAR_KEYWORD for p in signatures[0][0].parameters.values())
    return parameters, hints, open_ended


def parameter_names(target: Callable[..., Any]) -> set[str]:
    """The named parameters ``target`` takes; for a class, those its ``__init__`` passes ``**kwargs`` on to too."""
    return set(_parameters(target)[0])


def _runtime_only(hint: Any) -> bool:
    """Whether ``hint`` is a type no config value can be: a tensor (torch.optim's ``lr: float | Tensor``)."""
    return inspect.isclass(hint) and f"{hint.__module__}.{hint.__qualname__}" == "torch.Tensor"


def _expected(value: Any, hint: Any) -> str | None:
    """None when ``value`` fits type hint ``hint``, else what it should be (``an integer``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return None
    if hint is type(None):
        return None if value is None else "null"
    if origin in (typing.Union, types.UnionType):
        wanted = [_expected(value, arg) for arg in args if not _runtime_only(arg)]
        return None if None in wanted or not wanted else " or ".join(w for w in wanted if w)
    if origin is typing.Literal:
        return None if value in args else f"choose one of {', '.join(str(a) for a in args)}"
    if hint is bool:
        return None if isinstance(value, bool) else "expected true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "expected an integer"
    if hint is float:
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "expected a number"
    if hint is str:
        return None if isinstance(value, str) else "expected a string"
    sequence_origins = (list, tuple, collections.abc.Sequence, typing.Sequence)
    if origin in sequence_origins or hint in (list, tuple):
        if not isinstance(value, list | tuple):
            return "expected a list, e.g. [1,2]"
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return f"expected a list of {len(args)} values"
            items = list(zip(value, args, strict=True))
        else:
            items = [(item, args[0]) for item in value] if args else []
        for item, item_hint in items:
            wrong = _expected(item, item_hint)
            if wrong:
                return f"expected a list, each item {wrong.removeprefix('expected ')}"
        return None
    return None  # a type this check does not know (a tensor, a class of the user's): the target will judge


def _target_name(target: Callable[..., Any]) -> str:
    return f"{target.__module__}.{target.__qualname__}"


def check_parameters(target: Callable[..., Any], params: Mapping[str, Any], key: str,
                     given: Collection[str] = ()) -> None:
    """Refuse, naming ``key.<name>``, a key of ``params`` that is no parameter of ``target``, a value that does not
    fit its type hint, or a required parameter that neither ``params`` nor ``given`` (passed at build time) has."""
    parameters, hints, open_ended = _parameters(target)
    for name, value in params.items():
        if name not in parameters:
            if open_ended:
                continue
            known = ", ".join(n for n in parameters if n not in given) or "none"
            raise ConfigError(f"{key}.{name} is not a parameter of {_target_name(target)} (its parameters: {known}); "
                              f"remove it or fix its name")
        wrong = _expected(value, hints.get(name, inspect.Parameter.empty))
        if wrong:
            raise ConfigError(f"{key}.{name}={value!r} is invalid: {wrong}.")
    for name, parameter in parameters.items():
        required = parameter.default is parameter.empty and parameter.kind is not parameter.VAR_POSITIONAL
        if required and name not in params and name not in given:
            raise ConfigError(f"{key}.{name} is missing: {_target_name(target)} needs it (e.g. +{key}.{name}=...)")


def parameters_of(config: DictConfig | Mapping[str, Any], exclude: Collection[str] = ()) -> dict[str, Any]:
    """A config node as plain values (interpolations resolved), without Hydra's and the ``exclude`` keys."""
    plain = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config)
    assert isinstance(plain, dict)
    return {str(k): v for k, v in plain.items() if k not in HYDRA_KEYS and k not in exclude}


def arguments(config: DictConfig | Mapping[str, Any], key: str, exclude: Collection[str] = (), **given: Any
              ) -> dict[str, Any]:
    """The keyword arguments :func:`build` gives the target of ``config`` (found at ``key``), its defaults included:
    each named parameter of the target (see :func:`parameter_names`) with the config's value, else the ``given``
    one, else its default (none for a required one left to the call, as a partial's); then any other key of the
    config, for a function that takes ``**kwargs``."""
    values = {**parameters_of(config, exclude), **given}
    found: dict[str, Any] = {}
    for name, parameter in _parameters(target_of(config, key))[0].items():
        if name in values:
            found[name] = values[name]
        elif parameter.default is not parameter.empty:
            found[name] = parameter.default
    return found | {name: value for name, value in values.items() if name not in found}


def as_params(key: str, value: Any) -> dict[str, str]:
    """``value`` as MLflow params named from ``key``: a mapping's items under ``<key>.<name>`` (nested ones
    likewise; an empty one as ``{}``), any other value as its text, tuples as lists and enums as their values, as
    a config shows them (``[128, 64]``, ``auto``)."""
    if isinstance(value, Mapping) and value:
        return {dotted: text for name, item in value.items()
                for dotted, text in as_params(f"{key}.{name}" if key else str(name), item).items()}
    return {key: str(_as_config_shows(value))}


def _as_config_shows(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_as_config_shows(item) for item in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def target_of(config: DictConfig | Mapping[str, Any], key: str) -> Callable[..., Any]:
    """The class or function named by a config node's ``_target_``."""
    path = config.get("_target_")
    if not path:
        raise ConfigError(f"{key}._target_ is missing: name the class to build (e.g. {key}._target_=pkg.Class)")
    return _locate(str(path), key)


def build(config: DictConfig | Mapping[str, Any], key: str, *args: Any, exclude: Collection[str] = (),
          base: type | None = None, **given: Any) -> Any:
    """The object config node ``config`` (found at ``key``) describes, built with ``hydra.utils.instantiate``:
    ``target(*args, **params, **given)`` (a ``functools.partial`` of it with ``_partial_: true``).

    ``exclude``: keys of the node that are not parameters (a model's ``name``); ``base``: a class the target must
    be a subclass of. Every problem is a ConfigError naming the key (see the module's docstring).
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = target_of(config, key)
    if base is not None and not (inspect.isclass(target) and issubclass(target, base)):
        raise ConfigError(f"{key}._target_={config.get('_target_')} is invalid: it must be a subclass of "
                          f"{_target_name(base)}")
    params = parameters_of(config, exclude)
    partial = bool(config.get("_partial_", False))
    positional = [p for p in _parameters(target)[0].values() if p.kind is not p.KEYWORD_ONLY]
    given_names = {*given, *(p.name for p in positional[:len(args)])}
    check_parameters(target, params, key, given=given_names if not partial else {*given_names, *_required(target)})
    node = {"_target_": str(config.get("_target_")), "_partial_": partial, **params}
    try:
        return instantiate(node, *args, **given, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, InvalidParameter):
            raise ConfigError(f"{key}.{cause.name}={cause.value!r} is invalid: {cause.expected}.") from None
        if isinstance(cause, AeexpError):  # e.g. a dataset's DataError on reading a header: its own one line
            raise cause from None
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(err)
        raise ConstructionError(f"{key}: {_target_name(target)} refused its parameters ({reason.splitlines()[0]})"
                                ) from None


class ConstructionError(ConfigError):
    """A target raised something else than :class:`~aeexp.errors.InvalidParameter` while being built."""


def _required(target: Callable[..., Any]) -> list[str]:
    """Required parameters of ``target``: with ``_partial_`` they may be given later, at the call."""
    return [name for name, p in _parameters(target)[0].items() if p.default is p.empty]
