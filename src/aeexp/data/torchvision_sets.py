"""CIFAR-10, SVHN and EMNIST: downloaded by torchvision when ``download`` is on and they are missing, read from their
standard files here (without torchvision's checksums: any intact copy works, as for the IDX datasets).

CIFAR-10's python batches are pickles; they are read with an unpickler that builds only what such a batch holds
(dicts, lists, strings and numpy arrays), so that a tampered file cannot run code. SVHN's ``.mat`` files are read
with scipy; EMNIST's are IDX files, shown upright (the files store each image transposed).
"""

from __future__ import annotations

import pickle
import string
from pathlib import Path
from types import ModuleType

import numpy as np

from aeexp.data.dataset import Arrays
from aeexp.data.downloads import StandardFiles
from aeexp.data.idx import IdxDataset
from aeexp.errors import DataError, require

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_FOLDER = "cifar-10-batches-py"  # what torchvision extracts the archive into
CIFAR10_TRAIN_BATCHES = 5
DIGITS = [str(d) for d in range(10)]
_BALANCED = [*DIGITS, *string.ascii_uppercase, *"abdefghnqrt"]  # EMNIST merges the look-alike lowercase letters
EMNIST_CLASSES = {
    "balanced": _BALANCED,
    "byclass": [*DIGITS, *string.ascii_uppercase, *string.ascii_lowercase],
    "bymerge": _BALANCED,
    "digits": DIGITS,
    "letters": list(string.ascii_lowercase),  # upper and lower case together, labelled 1..26 in the files
    "mnist": DIGITS,
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR-10 batch holds and nothing else: a pickle may call any function it names."""

    ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                         ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 batch does not hold")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: images uint8 ``(N, 3, 32, 32)`` and labels ``(N,)``."""
    try:
        with path.open("rb") as handle:
            batch = _BatchUnpickler(handle, encoding="latin1").load()
        images, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, AttributeError,
            IndexError) as err:
        raise DataError(f"cannot read {path} as a CIFAR-10 batch ({type(err).__name__}: {err}); fetch it again"
                        ) from None
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path} holds {images.dtype} images of shape {images.shape}, not CIFAR-10's (N, 3072) "
                        "bytes; fetch it again")
    _check_labels(path, labels, len(images), len(CIFAR10_CLASSES))
    return images.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _check_labels(path: Path, labels: np.ndarray, n_images: int, n_classes: int) -> None:
    if labels.shape != (n_images,) or labels.dtype.kind not in "iu":
        raise DataError(f"{path} holds labels of shape {labels.shape} ({labels.dtype}) for {n_images} images; "
                        "fetch it again")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{path} holds label {labels.max()}; there are {n_classes} classes; fetch it again")


class Cifar10(StandardFiles):
    """CIFAR-10: 60,000 32x32 colour images of 10 classes (50,000 train, 10,000 test), its python batches under
    ``root`` (torchvision's ``cifar-10-batches-py``)."""

    folder = "CIFAR10"

    def __init__(self, name: str = "cifar10", root: str = "./data", download: bool = True,
                 val_fraction: float = 0.1, train_size: int | None = None, test_size: int | None = None) -> None:
        super().__init__(name, root, download, (), "https://www.cs.toronto.edu/~kriz/cifar.html",
                         val_fraction=val_fraction, train_size=train_size, test_size=test_size)
        self.image_shape = (3, 32, 32)
        self.class_names = list(CIFAR10_CLASSES)

    def file_names(self) -> dict[str, str]:
        batches = [f"data_batch_{i}" for i in range(1, CIFAR10_TRAIN_BATCHES + 1)]
        return {name: name for name in [*batches, "test_batch"]}

    def candidates(self) -> list[Path]:
        root = self.root
        return [root / CIFAR10_FOLDER, root / self.folder / CIFAR10_FOLDER, root / self.name / CIFAR10_FOLDER,
                root / self.name, root]

    def fetch(self, torchvision: ModuleType) -> None:
        torchvision.datasets.CIFAR10(str(self.root), train=True, download=True)  # one archive holds both splits

    def read(self) -> Arrays:
        files = self.locate()
        train = [read_cifar_batch(files[f"data_batch_{i}"]) for i in range(1, CIFAR10_TRAIN_BATCHES + 1)]
        test_images, test_labels = read_cifar_batch(files["test_batch"])
        return Arrays(np.concatenate([images for images, _ in train]), np.concatenate([labels for _, labels in train]),
                      test_images, test_labels)


def read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN ``.mat`` file: images uint8 ``(N, 3, 32, 32)`` and digit labels ``(N,)`` (its label 10 is a 0)."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
        images, labels = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    except Exception as err:  # scipy's parser raises many kinds on a damaged file (IndexError among them)
        raise DataError(f"cannot read {path} as an SVHN .mat file ({type(err).__name__}: {err}); fetch it again"
                        ) from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise DataError(f"{path} holds {images.dtype} images of shape {images.shape}, not SVHN's (32, 32, 3, N) "
                        "bytes; fetch it again")
    _check_labels(path, labels, images.shape[3], 11)
    if labels.size and labels.min() < 1:
        raise DataError(f"{path} holds label {labels.min()}; SVHN's labels are 1..10; fetch it again")
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1)), labels.astype(np.int64) % 10


class Svhn(StandardFiles):
    """SVHN (cropped digits): 32x32 colour images of house numbers, 73,257 train and 26,032 test, its
    ``train_32x32.mat`` and ``test_32x32.mat`` under ``root`` (where torchvision puts them)."""

    folder = "SVHN"

    def __init__(self, name: str = "svhn", root: str = "./data", download: bool = True,
                 val_fraction: float = 0.1, train_size: int | None = None, test_size: int | None = None) -> None:
        super().__init__(name, root, download, (), "http://ufldl.stanford.edu/housenumbers/",
                         val_fraction=val_fraction, train_size=train_size, test_size=test_size)
        self.image_shape = (3, 32, 32)
        self.class_names = list(DIGITS)

    def file_names(self) -> dict[str, str]:
        return {"train": "train_32x32.mat", "test": "test_32x32.mat"}

    def fetch(self, torchvision: ModuleType) -> None:
        for split in ("train", "test"):
            torchvision.datasets.SVHN(str(self.root), split=split, download=True)

    def read(self) -> Arrays:
        files = self.locate()
        return Arrays(*read_svhn(files["train"]), *read_svhn(files["test"]))


class Emnist(IdxDataset):
    """EMNIST: 28x28 handwritten characters in IDX files, one ``split`` of them: ``balanced`` (47 classes),
    ``byclass`` (62), ``bymerge`` (47), ``digits`` (10), ``letters`` (26) or ``mnist`` (10)."""

    def __init__(self, split: str = "balanced", name: str = "emnist", root: str = "./data", download: bool = True,
                 val_fraction: float = 0.1, train_size: int | None = None, test_size: int | None = None) -> None:
        require(split in EMNIST_CLASSES, "split", split, f"choose one of {', '.join(EMNIST_CLASSES)}")
        super().__init__(name, "EMNIST", EMNIST_CLASSES[split], (28, 28), root, download, (),
                         "https://www.nist.gov/itl/products-and-services/emnist-dataset", val_fraction=val_fraction,
                         train_size=train_size, test_size=test_size)
        self.split = split
        self.label_offset = 1 if split == "letters" else 0

    def file_names(self) -> dict[str, str]:
        return {key: f"emnist-{self.split}-{key.replace('_', '-')}-idx{3 if 'images' in key else 1}-ubyte"
                for key in ("train_images", "train_labels", "test_images", "test_labels")}

    def fetch(self, torchvision: ModuleType) -> None:
        torchvision.datasets.EMNIST(str(self.root), split=self.split, train=True, download=True)  # every split

    def read(self) -> Arrays:
        arrays = super().read()
        return Arrays(arrays.train_images.swapaxes(2, 3), arrays.train_labels, arrays.test_images.swapaxes(2, 3),
                      arrays.test_labels)
