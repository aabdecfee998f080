"""``dataset=folder``: real PNG and JPEG files written to temp folders, in every layout, decoded once into the real
cache (a memory-mapped .npy under ``AEEXP_CACHE_DIR``); changed files, a damaged or unwritable cache, bad folders."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from idx import synthetic_images
from image_sets import colour_images, write_class_folders, write_flat_folder, write_image

from aeexp import data
from aeexp.data import FolderDataset, cache
from aeexp.errors import AeexpError, ConfigError, DataError


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder of the test's own: what one test caches, another does not find."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("AEEXP_CACHE_DIR", str(folder))
    return folder


def folder_source(path: Path, **settings: object) -> FolderDataset:
    source = data.preset("folder", path=str(path), **settings)
    assert isinstance(source, FolderDataset)
    return source


def _rows(images: np.ndarray, labels: np.ndarray | None = None) -> Counter:
    """Images (and labels) as a multiset, to compare splits regardless of order."""
    flat = images.reshape(len(images), -1)
    return Counter((row.tobytes(), None if labels is None else int(label))
                   for row, label in zip(flat, labels if labels is not None else [None] * len(flat), strict=True))


def cached_files(cache_folder: Path) -> list[str]:
    return sorted(p.name for p in (cache_folder / cache.IMAGES_FOLDER).iterdir())


# --------------------------------------------------------------------------------------------- layouts


def test_class_folders_give_labels_class_names_and_the_exact_pixels(tmp_path):
    images, labels = write_class_folders(tmp_path / "pets", n=60, size=16, classes=3)
    source = folder_source(tmp_path / "pets")
    assert source.image_shape == (3, 16, 16)  # colour files: three channels
    assert source.class_names == ["class0", "class1", "class2"]
    ds = data.load(source, seed=0)
    assert ds.labelled and ds.class_names == ["class0", "class1", "class2"]
    assert len(ds.train) + len(ds.val) + len(ds.test) == 60
    everything = [ds.train, ds.val, ds.test]
    got = sum((_rows(s.images.numpy(), s.labels.numpy()) for s in everything), Counter())
    assert got == _rows(images.transpose(0, 3, 1, 2), labels)  # PNG is lossless: every pixel, with its class
    # The test split: 20% of each class, the same whatever the run's seed.
    assert np.bincount(ds.test.labels.numpy()).tolist() == [4, 4, 4]
    again = data.load(folder_source(tmp_path / "pets"), seed=5)
    assert _rows(again.test.images.numpy()) == _rows(ds.test.images.numpy())


def test_a_flat_folder_is_unlabelled(tmp_path):
    images = write_flat_folder(tmp_path / "flat", n=40, size=12)
    (tmp_path / "flat" / "notes.txt").write_text("not an image")  # other files are left alone
    (tmp_path / "flat" / ".hidden.png").write_bytes(b"")
    source = folder_source(tmp_path / "flat")
    assert source.image_shape == (1, 12, 12) and source.class_names == []
    ds = data.load(source)
    assert not ds.labelled and ds.train.labels is None and ds.test.labels is None
    assert len(ds.test) == 8  # test_fraction 0.2
    got = sum((_rows(s.images.numpy()) for s in (ds.train, ds.val, ds.test)), Counter())
    assert got == _rows(images[:, None])


def test_train_and_test_folders_are_the_splits(tmp_path):
    train_images, train_labels = write_class_folders(tmp_path / "set" / "train", n=30, size=8, classes=3)
    test_images, test_labels = write_class_folders(tmp_path / "set" / "test", n=12, size=8, classes=3, seed=9)
    ds = data.load(folder_source(tmp_path / "set"))
    assert _rows(ds.test.images.numpy(), ds.test.labels.numpy()) == _rows(test_images.transpose(0, 3, 1, 2),
                                                                          test_labels)
    trained_on = _rows(ds.train.images.numpy(), ds.train.labels.numpy()) + _rows(ds.val.images.numpy(),
                                                                                  ds.val.labels.numpy())
    assert trained_on == _rows(train_images.transpose(0, 3, 1, 2), train_labels)


def test_a_test_class_the_training_folder_lacks_is_refused(tmp_path):
    write_class_folders(tmp_path / "set" / "train", n=20, size=8, classes=2)
    write_class_folders(tmp_path / "set" / "test", n=9, size=8, classes=3)
    with pytest.raises(DataError, match="has a class folder 'class2' that the training folder does not have"):
        folder_source(tmp_path / "set")


def test_channels_default_to_what_the_files_are(tmp_path):
    grey, _ = synthetic_images(20, 0, 8)
    for i, pixels in enumerate(grey):
        write_image(tmp_path / "mix" / f"{i:02d}.png", pixels)
    assert folder_source(tmp_path / "mix").image_shape == (1, 8, 8)
    write_image(tmp_path / "mix" / "99.png", colour_images(1, 0, 8)[0][0])  # one colour file among grey ones
    assert folder_source(tmp_path / "mix").image_shape == (3, 8, 8)
    ds = data.load(folder_source(tmp_path / "mix", channels=1))  # forced grey: colour converted as Pillow does
    assert ds.image_shape == (1, 8, 8)
    colour = data.load(folder_source(tmp_path / "mix"))
    everything = np.concatenate([colour.train.images.numpy(), colour.val.images.numpy(), colour.test.images.numpy()])
    grey_ones = [image for image in everything if (image == image[:1]).all()]
    assert len(grey_ones) == 20  # the grey files: three equal channels


def test_jpeg_and_palette_files_are_read(tmp_path):
    from PIL import Image

    colour = colour_images(12, 1, 16)[0]
    for i, pixels in enumerate(colour):
        write_image(tmp_path / "jpegs" / f"{i:02d}.JPG", pixels)
    Image.fromarray(colour[0]).convert("P").save(tmp_path / "jpegs" / "palette.png")
    ds = data.load(folder_source(tmp_path / "jpegs"))
    assert ds.image_shape == (3, 16, 16)
    decoded = np.concatenate([ds.train.images.numpy(), ds.val.images.numpy(), ds.test.images.numpy()])
    assert len(decoded) == 13 and decoded.std() > 10


def test_image_size_resizes_files_of_any_size(tmp_path):
    for i, size in enumerate([8, 12, 20, 9, 30] * 3):
        write_image(tmp_path / "sizes" / f"{i:02d}.png", np.full((size, size + 1), 10 * i, dtype=np.uint8))
    for setting, shape in ((10, (1, 10, 10)), ([6, 14], (1, 6, 14))):
        ds = data.load(folder_source(tmp_path / "sizes", image_size=setting))
        assert ds.image_shape == shape
        images = np.concatenate([s.images.numpy() for s in (ds.train, ds.val, ds.test)])
        assert (images == images[:, :, :1, :1]).all()  # flat images stay flat when resized
        assert sorted(images[:, 0, 0, 0].tolist()) == [10 * i for i in range(15)]


# --------------------------------------------------------------------------------------------- the cache


def test_decoded_once_then_read_from_the_cache_without_decoding(tmp_path, own_cache, caplog):
    images = write_flat_folder(tmp_path / "flat", n=30, size=8)
    with caplog.at_level("INFO", logger="aeexp.data.folder"):
        first = data.load(folder_source(tmp_path / "flat"))
        assert [n.rsplit(".", 1)[1] for n in cached_files(own_cache)] == ["json", "npy"]
        assert "decoded 30 images" in caplog.text
        caplog.clear()
        again = data.load(folder_source(tmp_path / "flat"))
        assert "decoded" not in caplog.text  # the files are not read again
    for a, b in zip((first.train, first.val, first.test), (again.train, again.val, again.test), strict=True):
        assert np.array_equal(a.images.numpy(), b.images.numpy())
    assert _rows(np.concatenate([s.images.numpy() for s in (again.train, again.val, again.test)])) == \
        _rows(images[:, None])


@pytest.mark.parametrize("change", ["changed", "added", "removed"])
def test_a_changed_added_or_removed_file_means_decoding_again(tmp_path, own_cache, change):
    write_flat_folder(tmp_path / "flat", n=30, size=8)
    data.load(folder_source(tmp_path / "flat"))
    target = tmp_path / "flat" / "0003.png"
    if change == "changed":
        write_image(target, np.full((8, 8), 200, dtype=np.uint8))
        os.utime(target, ns=(1, 1))  # a new modification time, as any edit gives
    elif change == "added":
        write_image(tmp_path / "flat" / "new.png", np.full((8, 8), 200, dtype=np.uint8))
    else:
        target.unlink()
    ds = data.load(folder_source(tmp_path / "flat"))
    everything = np.concatenate([s.images.numpy() for s in (ds.train, ds.val, ds.test)])
    assert len(everything) == (29 if change == "removed" else 31 if change == "added" else 30)
    assert (everything == 200).all(axis=(1, 2, 3)).sum() == (change != "removed")
    assert len(cached_files(own_cache)) == 4  # a second entry: the folder as it is now


def test_a_file_edited_to_the_same_size_means_decoding_again(tmp_path, own_cache):
    """The README: the cache is keyed by every file's name, size *and* modification time. An edit that keeps the
    file's size (here one grey level for another) changes only its time, and must not be read from the stale entry.
    (The same-size swap with the time put back is the next test's: the change time.)"""
    write_flat_folder(tmp_path / "flat", n=30, size=8)
    target = write_image(tmp_path / "flat" / "0003.png", np.full((8, 8), 100, dtype=np.uint8))
    before = target.stat()
    data.load(folder_source(tmp_path / "flat"))
    write_image(target, np.full((8, 8), 200, dtype=np.uint8))
    assert target.stat().st_size == before.st_size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))  # edited a second later
    ds = data.load(folder_source(tmp_path / "flat"))
    everything = np.concatenate([s.images.numpy() for s in (ds.train, ds.val, ds.test)])
    assert (everything == 200).all(axis=(1, 2, 3)).sum() == 1 and not (everything == 100).all(axis=(1, 2, 3)).any()
    assert len(cached_files(own_cache)) == 4  # a second entry: the folder as it is now


def test_files_swapped_with_their_modification_times_put_back_are_decoded_again(tmp_path, own_cache):
    """Two same-size files swapped, each with its size and modification time as it was, one of the test split and
    one not: the test split holds the images as the files now are, not the stale cache entry's."""
    from aeexp.data.image_files import decode

    folder = tmp_path / "flat"
    write_flat_folder(folder, n=30, size=8)
    source = folder_source(folder)
    before = _rows(data.load(source).test.images.numpy())
    paths = [folder / name for name in source.listing.files]
    a = next(p for p, test in zip(paths, source.test_mask, strict=True) if test)
    b = next(p for p, test in zip(paths, source.test_mask, strict=True) if not test and p.stat().st_size ==
             a.stat().st_size)
    stats, contents = (a.stat(), b.stat()), (a.read_bytes(), b.read_bytes())
    a.write_bytes(contents[1])
    b.write_bytes(contents[0])
    for path, stat in ((a, stats[0]), (b, stats[1])):
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert [(p.stat().st_size, p.stat().st_mtime_ns) for p in (a, b)] == [(s.st_size, s.st_mtime_ns) for s in stats]
    after = data.load(folder_source(folder)).test.images.numpy()
    now = np.stack([decode(p, 1) for p, test in zip(paths, source.test_mask, strict=True) if test])
    assert _rows(after) == _rows(now) != before
    assert len(cached_files(own_cache)) == 4  # a second entry: the files as they now are


@pytest.mark.parametrize("damage", ["truncated", "bit-flip", "not-npy"])
def test_a_damaged_cache_only_means_decoding_again(tmp_path, own_cache, damage):
    images = write_flat_folder(tmp_path / "flat", n=30, size=8)
    data.load(folder_source(tmp_path / "flat"))
    npy = next((own_cache / cache.IMAGES_FOLDER).glob("*.npy"))
    content = npy.read_bytes()
    if damage == "truncated":
        npy.write_bytes(content[: len(content) // 2])
    elif damage == "bit-flip":
        npy.write_bytes(content[:-5] + bytes([content[-5] ^ 0xFF]) + content[-4:])
    else:
        npy.write_text("not an array")
    ds = data.load(folder_source(tmp_path / "flat"))
    assert _rows(np.concatenate([s.images.numpy() for s in (ds.train, ds.val, ds.test)])) == _rows(images[:, None])
    assert npy.read_bytes() == content  # written anew, whole


def test_an_unwritable_cache_only_means_decoding_every_time(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("where the cache folder should be")
    monkeypatch.setenv("AEEXP_CACHE_DIR", str(tmp_path / "a-file" / "cache"))  # cannot be made, even by root
    images = write_flat_folder(tmp_path / "flat", n=30, size=8)
    for _ in range(2):
        ds = data.load(folder_source(tmp_path / "flat"))
        assert _rows(np.concatenate([s.images.numpy() for s in (ds.train, ds.val, ds.test)])) == \
            _rows(images[:, None])


# --------------------------------------------------------------------------------------------- bad folders


def _corrupt(folder: Path) -> None:
    write_flat_folder(folder, n=20, size=8)
    (folder / "0004.png").write_bytes(b"this is no image")


def _truncated(folder: Path) -> None:
    write_flat_folder(folder, n=20, size=8)
    content = (folder / "0006.png").read_bytes()
    (folder / "0006.png").write_bytes(content[: len(content) - 30])  # the header intact, the pixels cut


def _mixed_sizes(folder: Path) -> None:
    write_flat_folder(folder, n=20, size=8)
    write_image(folder / "0005.png", np.zeros((9, 8), dtype=np.uint8))


def _empty(folder: Path) -> None:
    folder.mkdir()
    (folder / "readme.txt").write_text("no pictures")


def _loose_and_classes(folder: Path) -> None:
    write_class_folders(folder, n=20, size=8, classes=2)
    write_image(folder / "stray.png", np.zeros((8, 8), dtype=np.uint8))


def _too_few(folder: Path) -> None:
    write_flat_folder(folder, n=4, size=8)


BAD_FOLDERS = [
    (_empty, "holds no PNG or JPEG images (it holds other files, e.g. readme.txt); put the images there"),
    (_corrupt, "cannot read {folder}/0004.png as a PNG or JPEG image"),
    (_truncated, "cannot read {folder}/0006.png as a PNG or JPEG image"),
    (_mixed_sizes, "images in {folder} differ in size: 0000.png is 8x8 but 0005.png is 9x8; give "
                   "dataset.image_size=8 (or [height,width]) to resize them all"),
    (_loose_and_classes, "holds both class folders (class0, class1) and loose images (stray.png)"),
    (_too_few, "gives 3 training and 1 test images; a run needs at least 2 and 3"),
]


@pytest.mark.parametrize(("make", "message"), BAD_FOLDERS, ids=[m.__name__.strip("_") for m, _ in BAD_FOLDERS])
def test_a_bad_folder_is_one_message_naming_what_is_wrong(tmp_path, own_cache, make, message):
    folder = tmp_path / "images"
    make(folder)
    with pytest.raises(DataError) as info:
        data.load(folder_source(folder))
    assert message.format(folder=folder) in str(info.value) and "\n" not in str(info.value)
    assert not (own_cache / cache.IMAGES_FOLDER).exists() or cached_files(own_cache) == []  # nothing half-kept


@pytest.mark.parametrize(("settings", "message"), [
    ({"path": None}, "dataset.path=None is invalid: give the folder of images: dataset.path=DIR."),
    ({"path": "{tmp}/nowhere"}, "dataset.path='{tmp}/nowhere' is invalid: there is no such folder"),
    ({"path": "{tmp}/a-file"}, "dataset.path='{tmp}/a-file' is invalid: it is a file"),
    ({"channels": 2}, "dataset.channels=2 is invalid: choose 1 (grey) or 3 (colour)"),
    ({"image_size": [0, 4]}, "dataset.image_size=[0, 4] is invalid: give one positive size (32) or [height, width]."),
    ({"test_fraction": 1.0}, "dataset.test_fraction=1.0 is invalid: it must lie strictly between 0 and 1."),
])
def test_bad_settings_name_the_key(tmp_path, settings, message):
    (tmp_path / "a-file").write_text("not a folder")
    write_flat_folder(tmp_path / "ok", n=10, size=8)
    settings = {"path": str(tmp_path / "ok"), **settings}
    settings = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in settings.items()}
    with pytest.raises(ConfigError) as info:
        data.preset("folder", **settings)
    assert str(info.value).startswith(message.format(tmp=tmp_path)), str(info.value)


def test_refusals_are_aeexp_errors_so_the_cli_prints_one_line(tmp_path):
    _empty(tmp_path / "empty")
    with pytest.raises(AeexpError):
        data.build({"_target_": "aeexp.data.FolderDataset", "name": "x", "path": str(tmp_path / "empty")})


def test_two_processes_decoding_the_same_folder_at_once_leave_an_intact_cache(tmp_path, own_cache):
    import subprocess
    import sys

    images = write_flat_folder(tmp_path / "flat", n=300, size=16)
    load = ("import sys; from aeexp import data; ds = data.load(data.preset('folder', path=sys.argv[1])); "
            "print(len(ds.train) + len(ds.val) + len(ds.test))")
    env = {**os.environ, "AEEXP_CACHE_DIR": str(own_cache)}
    both = [subprocess.Popen([sys.executable, "-c", load, str(tmp_path / "flat")], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in both:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0 and out.strip() == "300", err[-2000:]
    assert [n.rsplit(".", 1)[1] for n in cached_files(own_cache)] == ["json", "npy"]  # one entry, no leftovers
    assert cache.load_images(next(iter(_keys(own_cache)))) is not None  # intact: shape and checksum agree
    ds = data.load(folder_source(tmp_path / "flat"))
    assert _rows(np.concatenate([s.images.numpy() for s in (ds.train, ds.val, ds.test)])) == _rows(images[:, None])


def _keys(cache_folder: Path) -> set[str]:
    return {p.name.split(".")[0] for p in (cache_folder / cache.IMAGES_FOLDER).iterdir()}


@pytest.mark.parametrize("link", ["back to the dataset's folder", "to itself"])
def test_a_symbolic_link_loop_is_one_short_line_naming_the_link(tmp_path, link):
    write_class_folders(tmp_path / "pets", n=12, size=8, classes=2)
    target, name = ("..", "back") if link.startswith("back") else ("self", "self")
    (tmp_path / "pets" / "class0" / name).symlink_to(target)
    with pytest.raises(DataError) as info:
        folder_source(tmp_path / "pets")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'pets' / 'class0' / name} ")
    assert ("links back to a folder it is in" if name == "back" else "cannot be followed") in message
    assert len(message) < 250 and "\n" not in message


KILLED_WRITER = """
import sys, time
from pathlib import Path
from aeexp import files

def write(handle):
    handle.write(b"part of an entry")
    handle.flush()
    print("writing", flush=True)
    time.sleep(600)

files.write_atomically([(Path(sys.argv[1]), write)])
"""


def test_temporary_files_of_a_killed_cache_writer_are_removed_on_the_next_start_a_live_ones_kept(tmp_path,
                                                                                                 own_cache):
    import signal
    import subprocess
    import sys

    folder = own_cache / cache.IMAGES_FOLDER
    writers = [subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(folder / f"{name}.npy")],
                                stdout=subprocess.PIPE, text=True) for name in ("killed", "live")]
    try:
        for writer in writers:
            assert writer.stdout.readline().strip() == "writing"
        writers[0].send_signal(signal.SIGKILL)
        writers[0].wait(timeout=30)
        left = {p.name.split(".")[1]: p for p in folder.glob(".*.tmp")}
        assert set(left) == {"killed", "live"}
        for path in left.values():  # both unchanged for an hour: only the writer's being alive tells them apart
            os.utime(path, (path.stat().st_atime - 3600, path.stat().st_mtime - 3600))
        write_flat_folder(tmp_path / "flat", n=20, size=8)
        load = "import sys; from aeexp import data; data.load(data.preset('folder', path=sys.argv[1]))"
        done = subprocess.run([sys.executable, "-c", load, str(tmp_path / "flat")], capture_output=True, text=True,
                              env={**os.environ, "AEEXP_CACHE_DIR": str(own_cache)}, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert not left["killed"].exists() and left["live"].exists()
        assert [p.name.split(".")[1] for p in folder.glob(".*.tmp")] == ["live"]
    finally:
        for writer in writers:
            writer.kill()
            writer.wait(timeout=30)
