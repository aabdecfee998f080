"""Evaluation never loses a trained run: each metric, view and figure is tried on its own, and one that cannot be
computed on this data is skipped with one warning line and its reason, kept for the tag ``skipped.<name>``."""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from aeexp.evaluation.lists import Component

log = logging.getLogger(__name__)

T = TypeVar("T")
REASON_LENGTH = 300  # characters of a reason kept (a tag, a log line)
METRIC_NAME = re.compile(r"[A-Za-z0-9_][\w.\- ]{0,199}")  # what MLflow takes everywhere (its names: 250 at most)


def reason_of(err: BaseException) -> str:
    """An error as one short line: ``ValueError: n_samples=2 should be >= n_clusters=3.``."""
    if isinstance(err, MemoryError):
        return "not enough memory"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")[:REASON_LENGTH]


def finite(array: Any) -> bool:
    """Whether every value of ``array`` is a finite number."""
    return bool(np.isfinite(np.asarray(array, dtype=np.float64)).all())


class Skips:
    """What could not be computed, by name (``test_kmeans``, ``tsne``, ``interpolation.png``), with the reason."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}

    def skip(self, name: str, reason: str) -> None:
        """Record ``name`` as skipped and say so in one warning line."""
        log.warning("skipped %s: %s", name, reason)
        self.reasons[name] = reason

    def attempt(self, name: str, compute: Callable[[], T]) -> T | None:
        """``compute()``, or None with ``name`` skipped when it raises (a stop request, a KeyboardInterrupt, goes
        on up). Warnings it raises (scikit-learn's, numpy's) are one debug line each, not text on stderr."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                return compute()
            except Exception as err:
                self.skip(name, reason_of(err))
                return None
            finally:
                for warning in {str(w.message).splitlines()[0] for w in caught if str(w.message)}:
                    log.debug("%s: %s", name, warning)

    def tags(self) -> dict[str, str]:
        """The tags saying what was skipped and why: ``skipped.<name>``."""
        return {f"skipped.{name}": reason for name, reason in self.reasons.items()}


def measure(metrics: Mapping[str, Component], inputs: Mapping[str, Any], prefix: str, skips: Skips
            ) -> dict[str, float]:
    """Each metric of ``metrics`` that can run on ``inputs`` (those that take labels only when there are labels),
    its values named ``<prefix>_<name>`` (``<name>`` for an empty ``prefix``); one that fails, or returns what is not
    ``{name: finite number}``, is skipped as ``<prefix>_<metric>``."""
    labelled = inputs.get("test_labels") is not None and inputs.get("train_labels") is not None
    results: dict[str, float] = {}
    for metric in metrics.values():
        if metric.needs_labels and not labelled:
            continue
        name = _prefixed(prefix, metric.name)
        if not all(finite(inputs[key]) for key in ("train_codes", "test_codes") if key in metric.needs):
            skips.skip(name, "the codes hold NaN or infinite values")
            continue
        values = skips.attempt(name, lambda metric=metric: metric(**inputs))
        if values is not None:
            results.update(_checked_values(values, name, prefix, skips))
    return results


def _prefixed(prefix: str, name: str) -> str:
    return f"{prefix}_{name}" if prefix else name


def _checked_values(values: Any, name: str, prefix: str, skips: Skips) -> dict[str, float]:
    """A metric's ``{name: value}`` as ``{<prefix>_<name>: float}``, leaving out (skipped) what is not a finite
    number; all of it skipped as ``name`` when it is not a mapping."""
    if not isinstance(values, Mapping):
        skips.skip(name, f"it returned a {type(values).__name__}, not a {{name: value}} dict")
        return {}
    kept = {}
    for key, value in values.items():
        if not isinstance(key, str) or not METRIC_NAME.fullmatch(key):
            skips.skip(name, f"it returned a value named {key!r}: a metric's name is letters, digits, _ - . and spaces")
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            skips.skip(_prefixed(prefix, key), f"its value is a {type(value).__name__}, not a number")
            continue
        if not math.isfinite(number):
            skips.skip(_prefixed(prefix, key), f"it came out {number}")
            continue
        kept[_prefixed(prefix, key)] = number
    return kept
