"""Lower bounds of a metric's or view's parameters, declared in its type hints and checked when its list is built.

``perplexity: Positive`` or ``k: Annotated[int, AtLeast(3)]``: a value below the bound is refused before training,
naming its config key (``embed.views.tsne.perplexity=0 is invalid: it must be above 0.``), as a model refuses its own
parameters. The type itself (int, float) is checked as for any component (:mod:`aeexp.components`).
"""

from __future__ import annotations

import collections.abc
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from aeexp.errors import InvalidParameter


@dataclass(frozen=True)
class AtLeast:
    """A lower bound: ``value >= low`` (``value > low`` when ``strict``)."""

    low: float
    strict: bool = False

    def check(self, name: str, value: Any) -> None:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and (value < self.low or (self.strict and value == self.low)):
            raise InvalidParameter(name, value, f"it must be {'above' if self.strict else 'at least'} {self.low:g}")


Positive = Annotated[float, AtLeast(0, strict=True)]
NonNegative = Annotated[float, AtLeast(0)]
PositiveInt = Annotated[int, AtLeast(1)]
NonNegativeInt = Annotated[int, AtLeast(0)]


def _bounds(hint: Any) -> list[AtLeast]:
    """The bounds in a type hint: ``Annotated[..., AtLeast(...)]``, also inside ``X | None``."""
    if typing.get_origin(hint) is Annotated:
        return [bound for bound in hint.__metadata__ if isinstance(bound, AtLeast)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [bound for arg in typing.get_args(hint) for bound in _bounds(arg)]
    return []


def _check(name: str, value: Any, hint: Any) -> None:
    for bound in _bounds(hint):
        bound.check(name, value)
    if typing.get_origin(hint) in (list, collections.abc.Sequence) and isinstance(value, list | tuple):
        (item_hint,) = typing.get_args(hint) or (Any,)
        for i, item in enumerate(value):
            _check(f"{name}[{i}]", item, item_hint)


def check_bounds(function: Callable[..., Any], values: dict[str, Any]) -> None:
    """Raise :class:`~aeexp.errors.InvalidParameter` for the first of ``values`` below its parameter's bound (or an
    item of a list below the bound of the list's items: ``ks: Sequence[PositiveInt]``)."""
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception:  # hints naming what is not importable here: aeexp.components checks no types then either
        return
    for name, value in values.items():
        _check(name, value, hints.get(name))
