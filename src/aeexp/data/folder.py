"""A folder of PNG or JPEG images as a dataset (``dataset=folder dataset.path=DIR``), decoded once into the cache.

Layouts: class subfolders (``DIR/cat/*.png``, ``DIR/dog/*.png``: torchvision's ImageFolder; the labels and class
names come from the folder names) or images directly in ``DIR`` (no labels). The test split is ``DIR/test`` when
``DIR/train`` and ``DIR/test`` both exist (each in either layout), else a seeded, fixed share of the images
(``test_fraction``, stratified by class when labelled). Making the source lists the files and reads their headers (or
finds them in the cache): a bad folder is refused before anything else happens. ``read`` takes the images from the
cache, or decodes them once, with a progress bar, and keeps them there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aeexp.data import cache
from aeexp.data.dataset import Arrays, ImageDataset
from aeexp.data.image_files import Header, decode, is_image_name, quiet, read_header
from aeexp.errors import DataError, require

log = logging.getLogger(__name__)

CACHE_VERSION = "folder-2"  # part of every cache key: change it when decoding (or the key) changes
SPLIT_SEED = 0  # the test split is the same in every run, so that runs compare on the same images
MIN_TRAIN, MIN_TEST = 2, 3  # a validation image and a training image; trustworthiness needs three test images


@dataclass
class Listing:
    """The images of a folder: paths relative to it, in order, with what tells whether each changed (size,
    modification and change times, inode), labels (None: unlabelled), class names, and how many of the files, at
    the end, are ``test/``'s (None: no such folder)."""

    root: Path
    files: list[str]
    stats: list[tuple[int, ...]]
    labels: np.ndarray | None
    class_names: list[str]
    n_test_folder: int | None

    def description(self) -> str:
        """What the decoded images depend on, as far as the files go: names, and each file's size, modification
        time, change time and inode. A file rewritten (even with its modification time put back: its change time,
        which no user can set, moves), or swapped with another by renaming, changes it."""
        rows = zip(self.files, self.stats, strict=True)
        return "\n".join(f"{name}|{'|'.join(map(str, stat))}" for name, stat in rows)


Found = list[tuple[str, os.DirEntry[str]]]  # image files: their path relative to the dataset's folder, and entry


def _identity(path: str | Path) -> tuple[int, int]:
    """What tells a folder apart however it is reached (through symbolic links): its device and inode."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _kind(entry: os.DirEntry[str]) -> str:
    """``dir``, ``file`` or ``other`` (links followed); DataError for a symbolic link that loops on itself."""
    try:
        return "dir" if entry.is_dir() else "file" if entry.is_file() else "other"
    except OSError as err:
        raise DataError(f"{entry.path} is a symbolic link that cannot be followed ({err.strerror}); remove it or "
                        "point it at an image or a folder") from None


def _images_in(folder: Path, recursive: bool, prefix: str, outer: tuple[tuple[int, int], ...] = ()) -> Found:
    """The PNG and JPEG files in ``folder`` (and its subfolders, when ``recursive``) by path, each named
    ``prefix`` + its path in ``folder``. ``outer``: the folders it is inside, to refuse a link back into one."""
    found: Found = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
        inside = (*outer, _identity(folder))
    except OSError as err:
        raise DataError(f"cannot list {folder}: {err.strerror or err}") from None
    for entry in entries:
        kind = _kind(entry)
        if kind == "dir" and recursive and not entry.name.startswith("."):
            if _identity(entry.path) in inside:
                raise DataError(f"{entry.path} links back to a folder it is in (a symbolic-link loop); remove the "
                                "link, or point it outside the dataset's folder")
            found += _images_in(Path(entry.path), recursive, f"{prefix}{entry.name}/", inside)
        elif kind == "file" and is_image_name(entry.name):
            found.append((prefix + entry.name, entry))
    return found


def _layout(folder: Path, prefix: str = "") -> tuple[Found, list[int] | None, list[str]]:
    """The images of ``folder``: in class subfolders (with a label each, and the class names) or loose (no labels)."""
    loose = _images_in(folder, False, prefix)
    subfolders = sorted((e for e in os.scandir(folder) if _kind(e) == "dir" and not e.name.startswith(".")),
                        key=lambda e: e.name)
    outer = (_identity(folder),)
    classes = [(e.name, found) for e in subfolders
               if (found := _images_in(Path(e.path), True, f"{prefix}{e.name}/", outer))]
    if classes and loose:
        raise DataError(f"{folder} holds both class folders ({', '.join(n for n, _ in classes[:3])}) and loose "
                        f"images ({loose[0][1].name}); move the images into class folders, or the folders out")
    if not classes:
        if not loose:
            others = [e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")]
            seen = f" (it holds other files, e.g. {sorted(others)[0]})" if others else ""
            raise DataError(f"{folder} holds no PNG or JPEG images{seen}; put the images there, loose or in one "
                            "folder per class")
        return loose, None, []
    entries = [entry for _, found in classes for entry in found]
    labels = [c for c, (_, found) in enumerate(classes) for _ in found]
    return entries, labels, [name for name, _ in classes]


def _relabel(labels: list[int], names: list[str], to: list[str], folder: Path) -> list[int]:
    """``labels`` into the class names ``to`` (the training folder's); refuse a class that is not among them."""
    unknown = [n for n in names if n not in to]
    if unknown:
        raise DataError(f"{folder} has a class folder {unknown[0]!r} that the training folder does not have; "
                        "give both the same classes")
    index = {name: to.index(name) for name in names}
    return [index[names[label]] for label in labels]


def scan(root: Path) -> Listing:
    """The images under ``root`` in one of the layouts (see the module's docstring)."""
    train, test = root / "train", root / "test"
    if not (train.is_dir() and test.is_dir()):
        entries, labels, names = _layout(root)
        n_test = None
    else:
        entries, labels, names = _layout(train, "train/")
        test_entries, test_labels, test_names = _layout(test, "test/")
        if (labels is None) != (test_labels is None):
            raise DataError(f"{train if labels is None else test} holds loose images but "
                            f"{test if labels is None else train} class folders; give both the same layout")
        if labels is not None and test_labels is not None:
            labels = labels + _relabel(test_labels, test_names, names, test)
        entries, n_test = entries + test_entries, len(test_entries)
    files, stats = [], []
    for name, entry in entries:
        stat = entry.stat()
        files.append(name)
        stats.append((stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino))
    return Listing(root, files, stats, None if labels is None else np.asarray(labels, dtype=np.int64), names,
                   n_test)


def _checked_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = [image_size] * 2 if isinstance(image_size, int) else list(image_size)
    require(len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size), "image_size", image_size,
            "give one positive size (32) or [height, width]")
    return int(size[0]), int(size[1])


# Headers read in this process, by cache key: the command line makes the source twice (a check, then the run).
_shapes_seen: dict[str, tuple[int, int, int]] = {}


def _shape_from_headers(listing: Listing, channels: int | None, size: tuple[int, int] | None
                        ) -> tuple[int, int, int]:
    """The images' shape (C, H, W) from their headers: ``channels`` (else 3 when any file is colour, 1 when none
    is) and ``size`` (else the files' one size; files of different sizes are refused, naming two)."""
    headers: list[Header] = [read_header(listing.root / name) for name in listing.files]
    if size is None:
        first = headers[0]
        for name, header in zip(listing.files, headers, strict=True):
            if (header.width, header.height) != (first.width, first.height):
                raise DataError(f"images in {listing.root} differ in size: {listing.files[0]} is {first.size} but "
                                f"{name} is {header.size}; give dataset.image_size={first.height} (or [height,width])"
                                " to resize them all")
        size = (first.height, first.width)
    return channels or (3 if any(h.colour for h in headers) else 1), size[0], size[1]


def _test_share(labels: np.ndarray | None, n: int, fraction: float) -> np.ndarray:
    """A seeded choice of ``fraction`` of ``n`` images as the test split (of each class, when labelled): a mask."""
    rng = np.random.default_rng(SPLIT_SEED)
    mask = np.zeros(n, dtype=bool)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for members in groups:
        mask[rng.permutation(members)[:round(len(members) * fraction)]] = True
    return mask


class FolderDataset(ImageDataset):
    """The PNG and JPEG images in the folder ``path`` (see the module's docstring for its layouts).

    ``channels``: 1 (grey) or 3 (colour); None: what the files are (3 when any file is colour). ``image_size``: one
    size or [height, width] to resize every image to; None: the files' own size, which must then be the same for
    all. ``test_fraction``: the share of images held out for the test split when there is no ``test/`` folder.
    """

    def __init__(self, path: str | None = None, name: str = "folder", channels: int | None = None,
                 image_size: int | Sequence[int] | None = None, test_fraction: float = 0.2,
                 **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        require(path is not None and bool(str(path).strip()), "path", path,
                "give the folder of images: dataset.path=DIR")
        require(channels in (None, 1, 3), "channels", channels, "choose 1 (grey) or 3 (colour), or null: what the "
                "files are")
        require(0.0 < test_fraction < 1.0, "test_fraction", test_fraction, "it must lie strictly between 0 and 1")
        self.size = _checked_size(image_size)
        self.channels, self.test_fraction = channels, float(test_fraction)
        root = Path(str(path)).expanduser()
        require(root.exists(), "path", str(path), "there is no such folder; give a folder of PNG or JPEG images")
        require(root.is_dir(), "path", str(path), "it is a file; give the folder that holds the images")
        self.listing = scan(root)
        self.cache_key = cache.key_of([CACHE_VERSION, str(root.resolve()), f"channels={channels}",
                                       f"size={self.size}", self.listing.description()])
        self.image_shape = self._shape()
        self.class_names = list(self.listing.class_names)
        self.test_mask = self._test_mask()

    def _shape(self) -> tuple[int, int, int]:
        """From the cache's entry when there is one (nothing read), else from the files' headers."""
        if self.cache_key not in _shapes_seen:
            cached = cache.cached_shape(self.cache_key)
            if cached is not None and cached[0] == len(self.listing.files):
                _shapes_seen[self.cache_key] = cached[1:]  # type: ignore[assignment]
            else:
                _shapes_seen[self.cache_key] = _shape_from_headers(self.listing, self.channels, self.size)
        return _shapes_seen[self.cache_key]

    def _test_mask(self) -> np.ndarray:
        listing, n = self.listing, len(self.listing.files)
        if listing.n_test_folder is not None:
            mask = np.arange(n) >= n - listing.n_test_folder
        else:
            mask = _test_share(listing.labels, n, self.test_fraction)
        n_test = int(mask.sum())
        if n - n_test < MIN_TRAIN or n_test < MIN_TEST:
            fix = "add images" if listing.n_test_folder is not None else "add images or change dataset.test_fraction"
            raise DataError(f"{listing.root} gives {n - n_test} training and {n_test} test images; a run needs at "
                            f"least {MIN_TRAIN} and {MIN_TEST}: {fix}")
        return mask

    def read(self) -> Arrays:
        images, labels, test = self._images(), self.listing.labels, self.test_mask
        return Arrays(images[~test], None if labels is None else labels[~test], images[test],
                      None if labels is None else labels[test])

    def _images(self) -> np.ndarray:
        """All images, in the listing's order: from the cache, else decoded (and then kept in the cache)."""
        cached = cache.load_images(self.cache_key)
        if cached is not None and cached.shape == (len(self.listing.files), *self.image_shape):
            return cached
        images = self._decode_all()
        where = cache.store_images(self.cache_key, images)
        if where is not None:
            log.info("decoded %d images of %s once; the next runs read them from %s", len(images),
                     self.listing.root, where)
        return images

    def _decode_all(self) -> np.ndarray:
        from tqdm import tqdm

        listing, shape = self.listing, self.image_shape
        images = np.empty((len(listing.files), *shape), dtype=np.uint8)
        bar = tqdm(listing.files, desc=f"decoding {listing.root.name or listing.root}", unit=" images",
                   disable=None, leave=False, mininterval=0.5)
        with quiet():
            for i, name in enumerate(bar):
                pixels = decode(listing.root / name, shape[0], self.size)
                if pixels.shape != shape:  # only without image_size: the file changed since its header was read
                    raise DataError(f"{listing.root / name} is {pixels.shape[1]}x{pixels.shape[2]}, not "
                                    f"{shape[1]}x{shape[2]} as its header said when the run started; run again")
                images[i] = pixels
        return images
