"""Encode images with a logged autoencoder: codes (and optionally reconstructions) as .npy files.

``python -m aeexp.encode runs:/<run id>/model images.npy --out codes.npy [--reconstructions recon.npy]``
(or ``aeexp encode ...``). Images come from an IDX file (plain or gzipped), a ``.npy`` array or a folder of
PNG images; their size is checked against the model's before anything is computed. Each image's reconstruction
error, its percentile among the run's test images and whether it looks unlike the training data go to
``<out stem>.errors.csv`` (:mod:`aeexp.novelty`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aeexp import files, novelty
from aeexp.data.pixels import checked_pixels
from aeexp.errors import AeexpError, DataError, TrackingError

SUPPORTED = "an IDX file (plain or .gz), a .npy array, a PNG image or a folder of PNG images"
_NPY_MAGIC = b"\x93NUMPY"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_GZIP_MAGIC = b"\x1f\x8b"
_RUN_URI = re.compile(r"^runs:/([^/]+)(/.*)?$")


class EncodeError(AeexpError):
    """Images and model do not fit together, or an output cannot be written."""


@dataclass
class Images:
    """Images as read: ``array`` is uint8 (0..255) or float32 (0..1) in its stored shape; ``files`` names the
    PNG file of each image (None for arrays)."""

    array: np.ndarray
    source: Path
    files: list[str] | None = None

    def paths(self) -> list[Path]:
        """The files the images were read from."""
        if self.files is not None and self.source.is_dir():
            return [self.source / name for name in self.files]
        return [self.source]


# --- reading images ---------------------------------------------------------------------------------------


def _read_npy(path: Path) -> np.ndarray:
    """A ``.npy`` array, read only after its header's shape is checked against the file's size: the file is first
    mapped (which refuses a header that claims more data than the file holds, without reading or allocating it)."""
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(mapped, np.ndarray):  # an .npz archive under a .npy name
            mapped.close()
            raise DataError(f"{path} is an .npz archive, not one array; save the images with numpy.save")
        return np.array(mapped)
    except (OSError, ValueError, EOFError) as err:
        reason = str(err).splitlines()[0] if str(err) else repr(err)
        if "mmap length is greater than file size" in reason:
            reason = "its header declares more data than the file holds: it is truncated or not a .npy file"
        raise DataError(f"cannot read {path} as a .npy array ({reason})") from None


def _read_png(path: Path) -> np.ndarray:
    """One PNG as uint8: ``(H, W)`` for a grey one (16-bit scaled to 8 bits), ``(H, W, 3)`` for a colour one
    (alpha dropped); :func:`png_channels` fits them to the model."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    from aeexp.data.image_files import is_colour

    try:
        with warnings.catch_warnings(), Image.open(path) as image:
            # PIL warns of, then refuses, images of ~89M+ pixels (decompression bombs): both as one line here
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if image.format != "PNG":
                raise DataError(f"{path} is a {image.format} image, not a PNG")
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.round(np.asarray(image, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8)
            return np.array(image.convert("RGB" if is_colour(image) else "L"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as err:
        raise DataError(f"cannot read {path} as a PNG image ({err})") from None


def _read_png_folder(folder: Path) -> Images:
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file()),
                   key=lambda p: p.name)
    if not files:
        raise DataError(f"folder {folder} holds no .png files; put the images there as PNG files")
    arrays = [_read_png(files[0])]
    for path in files[1:]:
        array = _read_png(path)
        if array.shape[:2] != arrays[0].shape[:2]:
            raise DataError(f"{path} is {_hw(array.shape[:2])} but {files[0].name} is {_hw(arrays[0].shape[:2])}; all "
                            f"images in {folder} must have one size")
        arrays.append(array)
    if any(array.ndim == 3 for array in arrays):  # some in colour: all as RGB, the grey ones' channels equal
        arrays = [array if array.ndim == 3 else np.repeat(array[:, :, None], 3, axis=2) for array in arrays]
    return Images(np.stack(arrays), folder, [p.name for p in files])


def png_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """PNGs read as ``(N, H, W)`` grey or ``(N, H, W, 3)`` colour, made what a model of ``channels`` takes: colour
    converted to grey as Pillow does (ITU-R 601-2 luma) for a grey model, grey repeated in R, G and B for a colour
    one; as they are otherwise."""
    if channels == 1 and array.ndim == 4 and array.shape[3] == 3:
        weights = np.array([19595, 38470, 7471], dtype=np.uint32)  # Pillow's convert("L"), to the same values
        return ((array.astype(np.uint32) @ weights + 0x8000) >> 16).astype(np.uint8)
    if channels == 3 and array.ndim == 3:
        return np.repeat(array[..., None], 3, axis=3)
    return array


def read_images(path: Path) -> Images:
    """Read images from an IDX file, a ``.npy`` array, one PNG or a folder of PNGs (told apart by the folder,
    the ``.npy`` suffix, else the file's first bytes); values checked, shape as stored."""
    from aeexp.data import read_idx

    if path.is_dir():
        images = _read_png_folder(path)
        images.array = checked_pixels(images.array, path)
        return images
    if not path.exists():
        raise DataError(f"images {path} not found; give {SUPPORTED}")
    if not path.is_file():  # a device (/dev/zero never ends), a pipe, a socket
        raise DataError(f"{path} is not a regular file or folder; give {SUPPORTED}")
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    if path.suffix.lower() == ".npy" or head.startswith(_NPY_MAGIC):
        array = _read_npy(path)
    elif head.startswith(_PNG_MAGIC):
        return Images(_read_png(path)[None], path, [path.name])
    elif head.startswith(_GZIP_MAGIC) or (len(head) >= 4 and head[:2] == b"\0\0"):
        array = read_idx(path)  # its errors name the file and what is wrong with it
    else:
        raise DataError(f"{path} is not a supported image file; give {SUPPORTED}")
    return Images(checked_pixels(array, path), path)


# --- fitting images to the model -------------------------------------------------------------------------


def _hw(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _datasets_of(image_shape: tuple[int, ...]) -> str:
    """The shipped datasets of images ``(C, H, W)``, as ``mnist, fashion_mnist or kmnist``."""
    from aeexp.data import known_image_shapes

    names = [name for name, shape in known_image_shapes().items() if tuple(shape) == tuple(image_shape)]
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 2 else names)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _stored_shape(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """``(C, H, W)`` of a stack of grey or colour images, as stored (``(N, H, W)``, ``(N, C, H, W)`` or
    ``(N, H, W, C)``, C 1 or 3); None when the shape does not say."""
    if len(shape) == 3:
        return (1, *shape[1:])
    if len(shape) == 4 and shape[1] in (1, 3):
        return shape[1:]
    if len(shape) == 4 and shape[3] in (1, 3):
        return (shape[3], *shape[1:3])
    return None


def _describe(shape: tuple[int, ...]) -> str:
    stored = _stored_shape(shape)
    if stored is not None:
        return f"{_hw(stored[1:])}{' colour' if stored[0] == 3 else ''} ({_count(shape[0], 'image')})"
    if len(shape) == 2:
        return (f"an array of shape {shape} (one {_hw(shape)} image, or {shape[0]} flattened images of "
                f"{shape[1]} pixels)")
    return f"an array of shape {shape}"


def fit_to_model(array: np.ndarray, image_shape: Sequence[int]) -> np.ndarray | None:
    """``array`` as ``(N, C, H, W)`` for a model taking ``image_shape`` (C, H, W); None when it does not fit.

    Accepted: ``(N, H, W)``, ``(N, H*W)``, one ``(H, W)`` image, ``(N, 1, H, W)`` and ``(N, H, W, 1)`` (C = 1);
    ``(N, C, H, W)``, ``(N, H, W, C)``, ``(N, C*H*W)`` and one ``(C, H, W)`` or ``(H, W, C)`` image (C > 1).
    """
    channels, height, width = (int(s) for s in image_shape)
    shape = array.shape
    pixels = channels * height * width
    if channels == 1:
        if shape == (height, width):
            return array.reshape(1, 1, height, width)
        if array.ndim == 3 and shape[1:] == (height, width):
            return array[:, None]
        if array.ndim == 4 and shape[1:] == (1, height, width):
            return array
        if array.ndim == 4 and shape[1:] == (height, width, 1):
            return array[..., 0][:, None]
    elif array.ndim == 4 and shape[1:] == (channels, height, width):
        return array
    elif array.ndim == 4 and shape[1:] == (height, width, channels):
        return array.transpose(0, 3, 1, 2)
    elif shape in ((channels, height, width), (height, width, channels)):
        return fit_to_model(array[None], image_shape)
    if array.ndim == 2 and shape[1] == pixels:
        return array.reshape(shape[0], channels, height, width)
    return None


def _model_name(model_uri: str) -> str:
    match = _RUN_URI.match(model_uri)
    return f"the model of run {match.group(1)}" if match else f"the model {model_uri}"


def _run_id(model_uri: str) -> str | None:
    match = _RUN_URI.match(model_uri)
    return match.group(1) if match else None


def _reference_errors(model_uri: str) -> np.ndarray | None:
    """The test errors the model's run logged (``test_errors.npy``: from the active store, or beside a local model
    folder); None when there are none (a run logged before them, a model outside a run) or they cannot be read."""
    folder = _local_folder(model_uri)
    if folder is not None:
        return novelty.reference_beside(folder)
    run_id = _run_id(model_uri)
    if run_id is None:
        return None
    import tempfile

    from aeexp import tracking

    with tempfile.TemporaryDirectory(prefix="aeexp-encode-") as download:
        path = tracking.download_artifact(run_id, novelty.TEST_ERRORS, Path(download))
        return novelty.read_or_none(path) if path is not None else None


def _trained_on(model_uri: str) -> str | None:
    """The dataset the model's run trained on, if the model URI names a run that recorded it."""
    match = _RUN_URI.match(model_uri)
    if not match:
        return None
    from aeexp import tracking

    try:
        return tracking.get_run(match.group(1)).params.get("dataset.name")
    except AeexpError:
        return None


def mismatch_message(images: Images, image_shape: Sequence[int], model_uri: str, trained_on: str | None = None
                     ) -> str:
    """One line naming both shapes, the model's dataset (``trained_on``, when known) and what to do."""
    model_hw = _hw(image_shape[1:]) if int(image_shape[0]) == 1 else _hw(image_shape)
    same_size = _datasets_of(tuple(int(s) for s in image_shape))
    origin = f" (trained on {trained_on})" if trained_on else f" (the size of {same_size})" if same_size else ""
    stored = _stored_shape(images.array.shape)
    theirs = _datasets_of(stored) if stored is not None else ""
    other = f"a model trained on {theirs}" if theirs else "a model trained on images of their size"
    return (f"images in {images.source} are {_describe(images.array.shape)} but {_model_name(model_uri)} takes "
            f"{model_hw} images{origin}; give {model_hw} images, or use {other}")


# --- the model ---------------------------------------------------------------------------------------------


@dataclass
class Model:
    """A loaded autoencoder (a torch module on the CPU) and the dataset it was trained on, when known."""

    module: Any
    dataset: str | None = None

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.module.image_shape)


def _uses_store(model_uri: str) -> bool:
    return model_uri.startswith(("runs:/", "models:/"))


def _local_folder(model_uri: str) -> Path | None:
    """The folder a model URI names on this machine (``/path/to/model``, ``file:///path/to/model``), else None."""
    if model_uri.startswith("file://"):
        return Path(model_uri[len("file://"):])
    return None if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]+:", model_uri) else Path(model_uri).expanduser()


def _connect(model_uri: str, tracking_uri: str | None) -> str:
    """Point MLflow at the store that holds ``model_uri``; return where it is, for messages (`` from <uri>``)."""
    from aeexp import tracking

    if not (_uses_store(model_uri) or tracking_uri):
        return ""
    return f" from {tracking.redact(tracking.use_existing_store(tracking_uri, f'model {model_uri}'))}"


TRUST_HINT = ("--trust-pickle loads its pickled form instead, which runs any code the file holds: only for a model "
              "from a source you trust")


def _rebuilt(model_uri: str, tracking_uri: str | None) -> Model:
    """The model made from its config and weights (:mod:`aeexp.model_files`); nothing from its files is executed."""
    import tempfile

    from aeexp import model_files

    folder = _local_folder(model_uri)
    if folder is not None:
        if not folder.is_dir():
            problem = "is not a folder" if folder.exists() else "not found"
            raise TrackingError(f"model folder {folder} {problem}; give a model folder (with MLmodel and "
                                f"{model_files.FOLDER}/) or a logged model such as runs:/<run id>/model")
        if not model_files.present(folder / model_files.FOLDER):
            raise EncodeError(f"{folder} has no {model_files.FOLDER}/{model_files.WEIGHTS} (saved by an older aeexp or "
                              f"outside aeexp); {TRUST_HINT}")
        return _from_files(folder / model_files.FOLDER, model_uri)
    from aeexp import tracking  # (MLflow: not needed for a local folder)

    where = _connect(model_uri, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="aeexp-encode-") as download:
        try:
            files_folder = tracking.download_model_files(model_uri, Path(download))
        except tracking.NoModelFiles as err:
            raise EncodeError(f"{err}{where}; {TRUST_HINT}") from None
        return _from_files(files_folder, model_uri)


def _from_files(folder: Path, model_uri: str) -> Model:
    from aeexp import model_files

    rebuilt = model_files.load(folder, f"model {model_uri}")
    return Model(rebuilt.model, rebuilt.dataset)


def _unpickled(model_uri: str, tracking_uri: str | None) -> Model:
    """The model's pickled form, unpickled (``--trust-pickle``): runs the code its file holds."""
    from aeexp import tracking

    where = _connect(model_uri, tracking_uri)
    try:
        module = tracking.load_pickled_model(model_uri)
    except Exception as err:  # MLflow raises MlflowException or plain errors (unpickling, missing files)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrackingError(tracking.redact(f"cannot load model {model_uri}{where}: {first}; check the run id and "
                                            "that the run logged its model under model/ (e.g. runs:/<run id>/model)")
                            ) from None
    if not all(hasattr(module, name) for name in ("image_shape", "encode", "forward")):
        raise TrackingError(f"{model_uri} is a {type(module).__name__}, not an aeexp autoencoder (it needs "
                            "image_shape and encode)")
    return Model(module, _trained_on(model_uri))


def load_model(model_uri: str, tracking_uri: str | None, trust_pickle: bool = False) -> Model:
    """The autoencoder at ``model_uri`` on the CPU: by default made from its config and loaded with its weights only;
    with ``trust_pickle`` unpickled as MLflow logged it. A missing store, run or model is one clear line."""
    if trust_pickle:
        return _unpickled(model_uri, tracking_uri)
    return _rebuilt(model_uri, tracking_uri)


# --- encoding --------------------------------------------------------------------------------------------


def _batches(images: Any, batch_size: int) -> Iterator[Any]:
    """Float batches in [0, 1]: uint8 images divided by 255 (as in training), float images as they are."""
    import torch

    from aeexp.models.inference import batches

    if images.dtype == torch.uint8:
        yield from batches(images, batch_size)
        return
    for start in range(0, images.shape[0], batch_size):
        yield images[start:start + batch_size]


def encode(model: Any, array: np.ndarray, batch_size: int, reconstructions: bool
           ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Codes ``(N, bottleneck)`` of images ``(N, C, H, W)`` (uint8 or float in [0, 1]), when asked reconstructions
    ``(N, H, W)`` (``(N, C, H, W)`` for C > 1) in [0, 1], and each image's reconstruction error (the mean squared
    error per pixel, :func:`aeexp.novelty.image_errors`), all float32."""
    import torch

    images = torch.from_numpy(np.ascontiguousarray(array))
    codes, recons, errors = [], [], []
    model.eval()
    with torch.no_grad():
        for batch in _batches(images, batch_size):
            code = model.encode(batch)
            codes.append(code.float().cpu())
            recon = (model.decode(code) if hasattr(model, "decode") else model(batch)).float().cpu()
            errors.append(novelty.image_errors(batch.float().cpu().numpy(), recon.numpy()))
            if reconstructions:
                recons.append(recon)
    out_codes, out_errors = torch.cat(codes).numpy(), np.concatenate(errors)
    if not reconstructions:
        return out_codes, None, out_errors
    out_recons = torch.cat(recons).numpy()
    if out_recons.ndim == 4 and out_recons.shape[1] == 1:
        out_recons = out_recons[:, 0]
    return out_codes, out_recons, out_errors


# --- writing ---------------------------------------------------------------------------------------------


def files_list_path(out: Path) -> Path:
    """Where the PNG file order is written next to the codes: ``codes.npy`` -> ``codes.files.txt``."""
    return out.with_name(f"{out.stem if out.suffix else out.name}.files.txt")


def errors_path(out: Path) -> Path:
    """Where each image's reconstruction error and flag are written next to the codes: ``codes.errors.csv``."""
    return out.with_name(f"{out.stem if out.suffix else out.name}.errors.csv")


def _npy_writer(array: np.ndarray) -> files.Writer:
    return lambda handle: np.save(handle, array, allow_pickle=False)


def _check_outputs(out: Path, recon: Path | None) -> None:
    for flag, path in (("--out", out), ("--reconstructions", recon)):
        if path is not None and path.is_dir():
            raise EncodeError(f"{flag} {path} is a folder; give a file name such as {path / 'codes.npy'}")
    if recon is not None and out.resolve() == recon.resolve():
        raise EncodeError(f"--out and --reconstructions are both {out}; give two file names")


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (also through links); False when either does not exist."""
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def _check_not_inputs(images: Images, outputs: Sequence[tuple[str, Path]]) -> None:
    """Refuse an output (``(what, path)``: written or replaced) that is one of the files the images came from."""
    inputs = images.paths()
    for what, path in outputs:
        for source in inputs:
            if _same_file(path, source):
                raise EncodeError(f"{what} {path} is the input {source}: encoding would overwrite it; write the "
                                  "outputs to other files")


def run(model_uri: str, images_path: Path, out: Path, recon_path: Path | None, tracking_uri: str | None,
        batch_size: int, trust_pickle: bool = False) -> list[str]:
    """Read, check, encode, write; return the lines of the summary."""
    _check_outputs(out, recon_path)
    images = read_images(images_path)
    order = files_list_path(out)  # written for PNGs, else removed
    _check_not_inputs(images, [("--out", out), ("--reconstructions", recon_path or out), ("the file order", order),
                               ("the errors", errors_path(out))])
    if images.array.size == 0:
        raise DataError(f"{images.source} holds no images (its shape is {images.array.shape})")
    model = load_model(model_uri, tracking_uri, trust_pickle)
    array = images.array
    if images.files is not None:  # PNGs: grey or colour, made what the model takes
        array = png_channels(array, int(model.image_shape[0]))
    fitted = fit_to_model(array, model.image_shape)
    if fitted is None:
        raise EncodeError(mismatch_message(images, model.image_shape, model_uri, model.dataset))
    codes, recons, errors = encode(model.module, fitted, batch_size, recon_path is not None)
    reference = _reference_errors(model_uri)
    ranks = novelty.percentiles(errors, reference) if reference is not None else None
    table = novelty.table(errors, ranks, images.files)

    outputs: list[tuple[Path, files.Writer]] = [(out, _npy_writer(codes)),
                                                (errors_path(out), lambda handle: handle.write(table))]
    if recons is not None and recon_path is not None:
        outputs.append((recon_path, _npy_writer(recons)))
    if images.files is not None:
        names = "".join(f"{name}\n" for name in images.files).encode()
        outputs.append((order, lambda handle: handle.write(names)))
    try:
        files.write_atomically(outputs)
    except OSError as err:
        raise EncodeError(f"cannot write {err.filename}: {err.strerror or err}") from None
    lines = [f"encoded {_count(codes.shape[0], 'image')} of {_hw(model.image_shape[1:])} from {images.source} with "
             f"{_model_name(model_uri)}", f"codes {codes.shape} -> {out}"]
    if recons is not None:
        lines.append(f"reconstructions {recons.shape} in [0, 1] -> {recon_path}")
    lines.append(f"reconstruction error, its percentile among the run's test images, unlike_training -> "
                 f"{errors_path(out)}")
    lines.append(novelty.summary(ranks))
    if images.files is not None:
        lines.append(f"file of each row, in order -> {order}")
    elif order.is_file():
        order.unlink()  # it listed the files of earlier codes written to the same name
    return lines


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: encode images with a logged model; 0 on success, 1 with one ``error:`` line otherwise."""
    from aeexp.models.inference import EVAL_BATCH_SIZE

    parser = argparse.ArgumentParser(
        prog="aeexp encode", description=__doc__.splitlines()[0],
        epilog="Images: uint8 0..255 or floats in [0, 1]; .npy shapes (N, H, W), (N, H*W) or one (H, W) image, "
               "in colour (N, H, W, 3) or (N, 3, H, W); PNGs are read in file-name order (made grey or colour as "
               "the model takes them) and the order is written to <out stem>.files.txt. Codes and reconstructions "
               "are float32 .npy files.")
    parser.add_argument("model_uri", metavar="MODEL_URI", help="the logged model, e.g. runs:/<run id>/model")
    parser.add_argument("images", metavar="IMAGES", type=Path, help=SUPPORTED)
    parser.add_argument("--out", type=Path, required=True, help="where to write the codes (.npy, N x bottleneck)")
    parser.add_argument("--reconstructions", type=Path, default=None,
                        help="also write the reconstructions here (.npy, N x H x W, colour N x 3 x H x W, values "
                             "in [0, 1])")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLflow's default, MLFLOW_TRACKING_URI or "
                             "sqlite:///mlflow.db in the current folder)")
    parser.add_argument("--batch-size", type=_positive, default=EVAL_BATCH_SIZE,
                        help=f"images per forward pass (default {EVAL_BATCH_SIZE})")
    parser.add_argument("--allow-target", action="append", default=[], metavar="CLASS",
                        help="a class of your own (dotted path, e.g. mymodels.SparseAE) that the model's stored "
                             "config may build besides aeexp's models and datasets; repeat it for several")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="load the model's pickled form (mlflow.pytorch.load_model), which runs any code the "
                             "file holds, instead of making it from its config and weights: only for a model from a "
                             "source you trust")
    args = parser.parse_args(argv)
    from aeexp import stored_config

    try:
        with stored_config.allowing(args.allow_target):
            lines = run(args.model_uri, args.images, args.out, args.reconstructions, args.tracking_uri,
                        args.batch_size, args.trust_pickle)
    except AeexpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"error: not enough memory to encode {args.images}; split the images into smaller files",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    from aeexp.shutdown import run_and_exit

    run_and_exit(main)
