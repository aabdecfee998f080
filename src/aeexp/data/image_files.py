"""PNG and JPEG files: their size and colour from the header alone, and their pixels as uint8 ``(C, H, W)``.

A PNG's header is read by hand (its IHDR chunk: ~5 us a file, where opening it with Pillow takes ~75 us); JPEGs and
palette PNGs go through Pillow. Every problem is a :class:`~aeexp.errors.DataError` naming the file.
"""

from __future__ import annotations

import contextlib
import struct
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aeexp.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_GREY, _PNG_COLOUR, _PNG_PALETTE = (0, 4), (2, 6), 3  # IHDR colour types (grey+alpha 4, RGBA 6)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")


@dataclass(frozen=True)
class Header:
    """What an image file's header says: its size and whether it holds colour."""

    width: int
    height: int
    colour: bool

    @property
    def size(self) -> str:
        return f"{self.height}x{self.width}"


def is_image_name(name: str) -> bool:
    """Whether a file name is one of a PNG or JPEG (by its suffix, any case; hidden files are not)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _unreadable(path: Path, why: object) -> DataError:
    return DataError(f"cannot read {path} as a PNG or JPEG image ({why}); replace or remove it")


def read_header(path: Path) -> Header:
    """Size and colour of the image at ``path`` from its header (the pixels are not decoded)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(33)
    except OSError as err:
        raise _unreadable(path, err.strerror or err) from None
    if head.startswith(_PNG_MAGIC):
        if len(head) < 33 or head[12:16] != b"IHDR":
            raise _unreadable(path, "a PNG without its IHDR header: truncated or corrupt")
        width, height = struct.unpack(">II", head[16:24])
        if head[25] in _PNG_GREY + _PNG_COLOUR and width and height:
            return Header(width, height, head[25] in _PNG_COLOUR)
    return _header_by_pillow(path)


def _header_by_pillow(path: Path) -> Header:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.format not in ("PNG", "JPEG", "MPO"):  # MPO: a JPEG with extra frames (some cameras')
                raise _unreadable(path, f"it is a {image.format} image")
            return Header(image.width, image.height, is_colour(image))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from None


def is_colour(image: object) -> bool:
    """Whether a Pillow image holds colour: its mode, or for a palette image whether any palette entry does."""
    mode = image.mode  # type: ignore[attr-defined]
    if mode in ("1", "L", "LA", "La", "F", *_SIXTEEN_BIT):
        return False
    if mode in ("P", "PA"):
        palette = np.asarray(image.getpalette() or [], dtype=np.uint8)  # type: ignore[attr-defined]
        rgb = palette[: len(palette) // 3 * 3].reshape(-1, 3)
        return bool((rgb != rgb[:, :1]).any())
    return True


def decode(path: Path, channels: int, size: Sequence[int] | None = None) -> np.ndarray:
    """The pixels of the image at ``path`` as uint8 ``(channels, H, W)``: grey (1) or RGB (3), alpha dropped,
    16-bit scaled to 8 bits; resized to ``size`` ``[H, W]`` (bilinear, antialiased) when given. (Pillow may warn, e.g.
    about a palette's transparency: see :func:`quiet`.)"""
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as image:
            if image.mode in _SIXTEEN_BIT:
                image = Image.fromarray(np.round(np.asarray(image, dtype=np.float64) / 257.0).clip(0, 255)
                                        .astype(np.uint8))
            if image.mode != mode:
                image = image.convert(mode)
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Pillow's warnings silenced (e.g. "palette images with transparency ... should be converted to RGBA": they
    are converted all the same), once around many :func:`decode` calls rather than in each."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
