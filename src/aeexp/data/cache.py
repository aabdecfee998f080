"""aeexp's cache folder, and images decoded once: uint8 arrays kept there as memory-mapped ``.npy`` files.

An entry is a ``<key>.npy`` (the images, ``(N, C, H, W)`` uint8) beside a ``<key>.json`` (their shape and a CRC-32 of
their bytes), written together, whole or not at all. The key is the caller's: a hash of everything the images depend
on (a folder's file list, sizes and modification times, the settings that decode them). A missing, unreadable,
corrupt or unwritable entry only means decoding again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from aeexp import files

log = logging.getLogger(__name__)

IMAGES_FOLDER = "images"


STALE_AFTER_S = 300  # a temporary file unchanged this long, whose writer's process is gone, is removed


def cache_dir() -> Path:
    """Where computed things are kept: ``$AEEXP_CACHE_DIR``, else ``$XDG_CACHE_HOME/aeexp`` (``~/.cache/aeexp``).
    The first use in a process removes the temporary files that killed writers left there."""
    if os.environ.get("AEEXP_CACHE_DIR"):
        folder = Path(os.environ["AEEXP_CACHE_DIR"])
    else:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aeexp"
    _clean_once(str(folder))
    return folder


@functools.cache
def _clean_once(folder: str) -> None:
    """Remove the temporary files of writes to the cache whose process was killed (:func:`files.stale_temporaries`);
    a live writer's are left alone."""
    if not os.path.isdir(folder):
        return
    for path in files.stale_temporaries(Path(folder), STALE_AFTER_S):
        try:
            path.unlink()
        except OSError:
            continue
        log.info("removed %s, left in the cache by a writer that was killed", path)


def key_of(parts: Iterable[str]) -> str:
    """A short hex key naming everything in ``parts`` (in order)."""
    digest = hashlib.blake2b(digest_size=20)
    for part in parts:
        digest.update(part.encode("utf-8", "surrogateescape"))
        digest.update(b"\0")
    return digest.hexdigest()


def _paths(key: str) -> tuple[Path, Path]:
    folder = cache_dir() / IMAGES_FOLDER
    return folder / f"{key}.npy", folder / f"{key}.json"


def _checksum(images: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(images)).cast("B"))


def cached_shape(key: str) -> tuple[int, ...] | None:
    """The shape of the images cached under ``key`` as its entry says (nothing else read), else None."""
    try:
        meta = json.loads(_paths(key)[1].read_text(encoding="utf-8"))
        shape = tuple(int(s) for s in meta["shape"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return shape if len(shape) == 4 and all(s > 0 for s in shape) else None


def load_images(key: str) -> np.ndarray | None:
    """The images cached under ``key``, memory-mapped and checked against their shape and checksum; None when there
    is no such entry or it is damaged."""
    images_path, meta_path = _paths(key)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        images = np.load(images_path, mmap_mode="r", allow_pickle=False)
        intact = (images.dtype == np.uint8 and list(images.shape) == list(meta["shape"])
                  and _checksum(images) == int(meta["crc32"]))
    except (OSError, ValueError, KeyError, TypeError, EOFError) as err:
        if images_path.exists() or meta_path.exists():
            log.info("the image cache %s cannot be read (%s): decoding again", images_path, err)
        return None
    if not intact:
        log.info("the image cache %s is damaged: decoding again", images_path)
        return None
    return images


def store_images(key: str, images: np.ndarray) -> Path | None:
    """Keep ``images`` under ``key`` (both files written whole or not at all); where it went, or None when the cache
    cannot be written (noted in the log, nothing else happens)."""
    images_path, meta_path = _paths(key)
    meta = json.dumps({"shape": list(images.shape), "crc32": _checksum(images)}).encode()
    try:
        files.write_atomically([(images_path, lambda handle: np.save(handle, images, allow_pickle=False)),
                                (meta_path, lambda handle: handle.write(meta))])
    except OSError as err:
        log.info("could not keep the decoded images in the cache (%s); the next run decodes them again", err)
        return None
    return images_path
