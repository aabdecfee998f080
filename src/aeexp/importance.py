"""What mattered in a sweep: each swept setting's importance for the sweep's objective, and a parallel-coordinates
figure of the settings against it (pure: values in, numbers and matplotlib Figures out).

Two methods, named in the report:

- an Optuna sweep: the study's own evaluator, ``optuna.importance.get_param_importances`` (Optuna's default, fANOVA),
  computed by the sweeper from the study (:func:`optuna_importances`);
- any other sweep (a grid): :func:`forest_importances`, the permutation importance of a random forest fitted to the
  runs' settings and objective (scikit-learn's ``RandomForestRegressor``, 300 trees, seed 0, and
  ``permutation_importance``, 20 repeats, seed 0): how much the forest's fit of the objective worsens when one
  setting's values are shuffled among the runs; negative values are clipped to 0 and the rest scaled to sum to 1.
  A setting of numbers is used as numbers, any other (``model=ae32``) as its values' order by name.

Only sweeps of :data:`MIN_RUNS` or more finished runs that vary :data:`MIN_SETTINGS` or more settings get them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aeexp.evaluation.figures import Figure, plain, plt

MIN_RUNS, MIN_SETTINGS = 8, 2
FOREST_METHOD = "random-forest permutation importance (scikit-learn, 300 trees, 20 repeats, seed 0)"
OPTUNA_METHOD = "the Optuna study's own importance evaluator (optuna.importance.get_param_importances, fANOVA)"


@dataclass
class Importance:
    """Each setting's importance (summing to 1, largest first) for ``objective``, and how it was found."""

    objective: str
    method: str
    values: dict[str, float]


def applies(n_runs: int, n_settings: int) -> bool:
    """Whether a sweep of ``n_runs`` finished runs varying ``n_settings`` settings gets an importance section."""
    return n_runs >= MIN_RUNS and n_settings >= MIN_SETTINGS


def numeric(values: Sequence[str]) -> np.ndarray:
    """A setting's values as numbers: themselves when all are numbers, else each one's rank among them by name."""
    try:
        return np.array([float(v) for v in values])
    except ValueError:
        order = {value: rank for rank, value in enumerate(sorted(set(values)))}
        return np.array([float(order[v]) for v in values])


def _normalised(raw: Mapping[str, float]) -> dict[str, float]:
    clipped = {key: max(0.0, float(value)) if math.isfinite(value) else 0.0 for key, value in raw.items()}
    total = sum(clipped.values())
    scaled = {key: value / total if total > 0 else 0.0 for key, value in clipped.items()}
    return dict(sorted(scaled.items(), key=lambda item: -item[1]))


def forest_importances(settings: Mapping[str, Sequence[str]], objective: Sequence[float]) -> dict[str, float]:
    """Each setting's permutation importance for ``objective`` (see the module's docstring), summing to 1 (all 0
    when the objective does not vary)."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance

    names = list(settings)
    x = np.column_stack([numeric(settings[name]) for name in names])
    y = np.asarray(objective, dtype=np.float64)
    forest = RandomForestRegressor(n_estimators=300, random_state=0, n_jobs=1).fit(x, y)
    found = permutation_importance(forest, x, y, n_repeats=20, random_state=0, n_jobs=1)
    return _normalised(dict(zip(names, found.importances_mean, strict=True)))


def optuna_importances(study: Any) -> dict[str, float]:
    """The study's own importances of its parameters (Optuna's default evaluator), summing to 1."""
    import optuna

    return _normalised(optuna.importance.get_param_importances(study))


def importance_figure(found: Importance) -> Figure:
    """Horizontal bars: each setting's importance, the largest on top."""
    names = list(found.values)[::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(names) + 1.4))
    ax.barh(range(len(names)), [found.values[name] for name in names], color="#4c72b0")
    ax.set_yticks(range(len(names)), [plain(name) for name in names])
    ax.set_xlim(0, 1)
    ax.set_xlabel(plain(f"importance for {found.objective}"))
    ax.set_title(plain(found.method), fontsize=8)
    fig.tight_layout()
    return fig


MAX_TICKS = 8  # a setting with more values (a searched interval) gets its lowest and highest labelled


def _axis_ticks(values: Sequence[str]) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """A setting's values placed on [0, 1] (numbers by value, names evenly by name) and the ticks to label."""
    placed = numeric(values)
    low, high = placed.min(), placed.max()
    scaled = (placed - low) / (high - low) if high > low else np.full(len(placed), 0.5)
    ticks = sorted({float(position): _short(value) for value, position in zip(values, scaled, strict=True)}.items())
    return scaled, ticks if len(ticks) <= MAX_TICKS else [ticks[0], ticks[-1]]


def _short(value: str) -> str:
    """A number in at most 4 significant digits; a name as it is."""
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def parallel_coordinates(settings: Mapping[str, Sequence[str]], objective: Sequence[float], name: str,
                         minimize: bool = True) -> Figure:
    """One vertical axis per setting and one for the objective; a line per run through its values, coloured by its
    objective (the best brightest)."""
    columns = [*settings, name]
    placed, ticks = zip(*(_axis_ticks(settings[key]) for key in settings), strict=True)
    y = np.asarray(objective, dtype=np.float64)
    spread = y.max() - y.min()
    objective_axis = (y - y.min()) / spread if spread > 0 else np.full(len(y), 0.5)
    lines = np.column_stack([*placed, objective_axis])
    colours = plt.get_cmap("viridis")(1.0 - objective_axis if minimize else objective_axis)
    fig, ax = plt.subplots(figsize=(2.0 * len(columns) + 1.5, 4.5))
    for row, colour in zip(lines, colours, strict=True):
        ax.plot(range(len(columns)), row, color=colour, alpha=0.8, linewidth=1.5)
    for i, axis_ticks in enumerate([*ticks, [(p, f"{v:.4g}") for p, v in zip((0.0, 1.0), (y.min(), y.max()),
                                                                           strict=True)]]):
        ax.axvline(i, color="#888", linewidth=0.8)
        for position, label in axis_ticks:
            ax.text(i + 0.03, position, plain(label), fontsize=7, va="center")
    ax.set_xticks(range(len(columns)), [plain(column) for column in columns], fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(columns) - 0.5)
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(plain(f"each run's settings and {name} ({'lower' if minimize else 'higher'} is better: brighter)"),
                 fontsize=9)
    fig.tight_layout()
    return fig
