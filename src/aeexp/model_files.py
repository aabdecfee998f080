"""A trained model as files that rebuild it without running code from them: config, weights and image shape.

Every run logs these beside the pickled MLflow model, in the model's ``extra_files/`` folder: ``config.yaml`` (the
run's resolved config), ``weights.pt`` (the model's ``state_dict``, read back with ``torch.load(weights_only=True)``,
which refuses anything but tensors and plain values) and ``model.json`` (the image shape, which the dataset may not
be there to give). :func:`load` makes the model from its config's ``model._target_`` and puts the weights in, so a
model folder from someone else can at worst hold wrong numbers; only its class's own code runs: one of aeexp's
models, or a class of your own that you allowed (:mod:`aeexp.stored_config`), importable here.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aeexp.errors import AeexpError

FOLDER = "extra_files"  # where MLflow puts a model's extra files
WEIGHTS = "weights.pt"
CONFIG = "config.yaml"
INFO = "model.json"
FORMAT_VERSION = 1


class ModelFilesError(AeexpError):
    """A model's files are missing, unreadable, or do not make the model their config describes."""


@dataclass
class Rebuilt:
    """A model made from its files: the torch module (on the CPU, in eval mode) and the dataset it was trained on."""

    model: Any
    dataset: str | None


def write(folder: Path, model: Any, config_yaml: str) -> list[Path]:
    """Write the three files of ``model`` (an :class:`aeexp.models.Autoencoder`) and its run's resolved config into
    ``folder``; return their paths."""
    import torch

    import aeexp

    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    torch.save(state, folder / WEIGHTS)
    (folder / CONFIG).write_text(config_yaml, encoding="utf-8")
    info = {"format_version": FORMAT_VERSION, "image_shape": [int(s) for s in model.image_shape],
            "aeexp": aeexp.__version__}
    (folder / INFO).write_text(json.dumps(info), encoding="utf-8")
    return [folder / WEIGHTS, folder / CONFIG, folder / INFO]


def present(folder: Path) -> bool:
    """Whether ``folder`` holds the three files."""
    return all((folder / name).is_file() for name in (WEIGHTS, CONFIG, INFO))


def _image_shape(folder: Path, name: str) -> tuple[int, ...]:
    try:
        info = json.loads((folder / INFO).read_text(encoding="utf-8"))
        shape = tuple(int(s) for s in info["image_shape"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelFilesError(f"{name}: {folder / INFO} is unreadable ({type(err).__name__}: {err})") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ModelFilesError(f"{name}: {folder / INFO} gives the image shape {list(shape)}; expected [C, H, W]")
    return shape


def _model_config(folder: Path, name: str) -> Any:
    """The model's config, read as data (:mod:`aeexp.stored_config`: no interpolation resolved anywhere in it, no
    target in its model section but aeexp's own or an allowed one: the model is all that is built from it, never the
    run's metric, view or health lists)."""
    from omegaconf import DictConfig, OmegaConf

    from aeexp import stored_config

    try:
        text = (folder / CONFIG).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ModelFilesError(f"{name}: {folder / CONFIG} is unreadable ({type(err).__name__}: {err})") from None
    where = f"{name}'s {FOLDER}/{CONFIG}"
    try:
        config = stored_config.parse(text, where)
        if not isinstance(config.get("model"), DictConfig):
            raise ModelFilesError(f"{name}: {folder / CONFIG} has no model section; it is not an aeexp run's config")
        stored_config.check_targets(OmegaConf.masked_copy(config, ["model"]), where)
    except stored_config.StoredConfigError as err:
        raise ModelFilesError(str(err)) from None
    return config


def _weights(folder: Path, name: str) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        # weights_only=True refuses anything but tensors and plain values: its error says so in many lines
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        raise ModelFilesError(f"{name}: {folder / WEIGHTS} is not a plain state_dict of tensors ({reason})") from None
    if not isinstance(state, dict):
        raise ModelFilesError(f"{name}: {folder / WEIGHTS} holds a {type(state).__name__}, not a state_dict")
    return state


def load(folder: Path, name: str) -> Rebuilt:
    """The model whose files are in ``folder`` (``name`` says which model in messages), made from its config on the
    CPU with its weights loaded; nothing in the files is executed. ModelFilesError (one line) when a file is
    missing or bad, the class cannot be imported here, or the weights do not fit it."""
    from aeexp import models

    missing = [n for n in (WEIGHTS, CONFIG, INFO) if not (folder / n).is_file()]
    if missing:
        raise ModelFilesError(f"{name}: {folder} lacks {', '.join(missing)}")
    config = _model_config(folder, name)
    image_shape = _image_shape(folder, name)
    try:
        model = models.build(config.model, image_shape)
    except AeexpError as err:
        raise ModelFilesError(f"{name} cannot be made here from its config: {err}") from None
    try:
        model.load_state_dict(_weights(folder, name))
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFilesError(f"{name}: the weights in {folder / WEIGHTS} do not fit the model its config describes "
                              f"({reason})") from None
    model.eval()
    dataset = config.get("dataset")
    return Rebuilt(model, str(dataset.get("name")) if dataset is not None and dataset.get("name") else None)
