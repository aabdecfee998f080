"""Datasets kept as standard files under a root folder: found in the folders torchvision and people put them in, or
downloaded by torchvision; missing files are one message naming them, the folders searched and where to get them.

A subclass says which files it needs (:meth:`StandardFiles.file_names`), where to look (:meth:`candidates`), how
torchvision downloads them (:meth:`fetch`) and how to read them (``read``, after :meth:`locate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from aeexp.data.dataset import ImageDataset
from aeexp.errors import DataError


class StandardFiles(ImageDataset):
    """A dataset of fixed files under ``root``; ``download``: fetch missing ones with torchvision; ``also_in``:
    other folders to look in; ``source``: where to get the files by hand (for the message)."""

    folder: str = ""  # the folder torchvision downloads into, under the root (e.g. MNIST)
    suffixes: tuple[str, ...] = ("",)  # each file is also found with these added (e.g. ".gz")

    def __init__(self, name: str, root: str = "./data", download: bool = True, also_in: Sequence[str] = (),
                 source: str = "", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.root, self.download = Path(root).expanduser(), download
        self.also_in, self.source = [Path(p) for p in also_in], source

    def file_names(self) -> dict[str, str]:
        """The files needed, by what they hold (``train_images``: ``train-images-idx3-ubyte``)."""
        raise NotImplementedError

    def candidates(self) -> list[Path]:
        """The folders searched for the files, in order."""
        root = self.root
        return [root / self.folder / "raw", root / self.folder, root / self.name / "raw", root / self.name, root,
                *self.also_in]

    def fetch(self, torchvision: ModuleType) -> None:
        """Download the files with torchvision into :attr:`root` (raises whatever torchvision raises)."""
        raise NotImplementedError

    def _find_in(self, directory: Path) -> dict[str, Path] | None:
        found: dict[str, Path] = {}
        for key, name in self.file_names().items():
            for candidate in (directory / f"{name}{suffix}" for suffix in self.suffixes):
                if candidate.is_file():
                    found[key] = candidate
                    break
            else:
                return None
        return found

    def find_files(self) -> dict[str, Path] | None:
        """The files from the first folder that holds all of them, else None."""
        for directory in self.candidates():
            found = self._find_in(directory)
            if found:
                return found
        return None

    def _download(self) -> str | None:
        """Fetch the files with torchvision; return why it failed, or None."""
        from aeexp.tv import torchvision

        try:
            self.fetch(torchvision())
        except Exception as err:  # network errors come in many types; all mean "not downloaded"
            return f"{type(err).__name__}: {err}".splitlines()[0][:300]
        return None

    def _missing_message(self, why: str | None) -> str:
        listed = "[.gz]" if ".gz" in self.suffixes else ""
        files = ", ".join(f"{name}{listed}" for name in self.file_names().values())
        places = ", ".join(str(d) for d in self.candidates())
        tried = f"download failed ({why}). " if self.download else "download is off (dataset.download=false). "
        source = f" (from {self.source})" if self.source else ""
        return (f"dataset {self.name}: files not found. Expected {files} in one of: {places}. {tried}"
                f"Put the files in {self.root}{source}, or point dataset.root at a folder that holds them.")

    def locate(self) -> dict[str, Path]:
        """The files, downloaded first when missing and :attr:`download` is on; DataError when they cannot be had."""
        if self.root.exists() and not self.root.is_dir():
            raise DataError(f"dataset.root={str(self.root)!r} is a file, not a folder; point it at a folder")
        files = self.find_files()
        if files is None and self.download:
            why = self._download()
            files = self.find_files()
            if files is None:
                raise DataError(self._missing_message(why))
        if files is None:
            raise DataError(self._missing_message(None))
        return files
