"""``python -m aeexp.encode``: a real model trained through the CLI, real IDX/.npy/PNG inputs, real outputs."""

from __future__ import annotations

import gzip
import os
import resource
import shutil
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.artifacts
import numpy as np
import pytest
import torch
from evil_model import Payload
from idx import idx_bytes, write_idx
from mlflow_store import new_store, runs_in
from omegaconf import OmegaConf
from PIL import Image

from aeexp import data, encode, model_files, models, tracking
from aeexp.errors import DataError
from aeexp.models.inference import encode_all

N_IMAGES = 40
BOTTLENECK = 16  # a code large enough that digits reconstruct far better than noise


@dataclass
class Trained:
    """A finished digits run: where it was trained, its store and its model."""

    cwd: Path
    tracking_uri: str
    run_id: str
    model: torch.nn.Module

    @property
    def model_uri(self) -> str:
        return f"runs:/{self.run_id}/model"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    """One tiny digits autoencoder (8x8 -> 32 -> 16) trained through the real CLI (long enough that its
    reconstructions of digits are far better than of noise)."""
    cwd = tmp_path_factory.mktemp("encode-train")
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "aeexp", "dataset=digits", "model=ae32", "model.widths=[32]",
         f"model.bottleneck={BOTTLENECK}", "trainer.epochs=20", "trainer.progress=false", "embed.n_samples=100",
         f"tracking.uri={uri}"],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs_in(uri, "digits")
    tracking.configure_uri(uri)
    model = tracking.load_pickled_model(f"runs:/{run.info.run_id}/model")  # our own run: trusted
    mlflow.set_tracking_uri(None)
    yield Trained(cwd, uri, run.info.run_id, model)


@pytest.fixture(autouse=True)
def _reset_tracking_uri() -> Iterator[None]:
    """In-process calls point MLflow at the test store; leave MLflow as a fresh process finds it."""
    yield
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """Real 8x8 digits as uint8 (N, 8, 8), 0..255, as aeexp trains on them."""
    return data.load(data.preset("digits")).test.images[:N_IMAGES, 0].numpy()


@pytest.fixture(scope="module")
def reference(trained: Trained, digits: np.ndarray) -> np.ndarray:
    """The model's own codes of ``digits``, through the trainer's helper."""
    return encode_all(trained.model, torch.from_numpy(digits).unsqueeze(1)).numpy()


def _encode(trained: Trained, images: Path, out: Path, *extra: str) -> int:
    return encode.main([trained.model_uri, str(images), "--out", str(out), "--tracking-uri", trained.tracking_uri,
                        *extra])


def _save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def test_uint8_npy_gives_the_models_codes_and_reconstructions(trained, digits, reference, tmp_path, capsys):
    images = _save(tmp_path / "digits.npy", digits)
    out, recon = tmp_path / "new" / "dir" / "codes.npy", tmp_path / "new" / "recon.npy"
    assert _encode(trained, images, out, "--reconstructions", str(recon)) == 0
    printed = capsys.readouterr().out
    assert trained.run_id in printed and str(out) in printed and str(recon) in printed

    codes = np.load(out)
    assert codes.shape == (N_IMAGES, BOTTLENECK) and codes.dtype == np.float32
    np.testing.assert_array_equal(codes, reference)
    floats = torch.from_numpy(digits).float().unsqueeze(1) / 255
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(codes), trained.model.encode(floats))
        expected_recon = trained.model(floats)[:, 0]
    reconstructions = np.load(recon)
    assert reconstructions.shape == (N_IMAGES, 8, 8) and reconstructions.dtype == np.float32
    assert reconstructions.min() >= 0.0 and reconstructions.max() <= 1.0
    torch.testing.assert_close(torch.from_numpy(reconstructions), expected_recon)
    assert sorted(p.name for p in (tmp_path / "new").rglob("*")) == ["codes.errors.csv", "codes.npy", "dir",
                                                                      "recon.npy"]


def test_noise_images_among_digits_are_flagged_as_unlike_the_training_data(trained, digits, tmp_path, capsys):
    noise = np.random.default_rng(0).integers(0, 256, size=(20, 8, 8), dtype=np.uint8)
    mixed = _save(tmp_path / "mixed.npy", np.concatenate([digits, noise]))  # 40 digits, then 20 noise images
    out = tmp_path / "codes.npy"
    assert _encode(trained, mixed, out) == 0
    printed = capsys.readouterr().out

    rows = (tmp_path / "codes.errors.csv").read_text().splitlines()
    assert rows[0] == "index,error,percentile,unlike_training" and len(rows) == 1 + N_IMAGES + 20
    table = np.array([[float(v) for v in row.split(",")] for row in rows[1:]])
    assert (table[:, 0] == np.arange(N_IMAGES + 20)).all()
    flags = table[:, 3].astype(bool)
    assert flags[N_IMAGES:].all() and (table[N_IMAGES:, 2] == 100.0).all()  # every noise image
    assert flags[:N_IMAGES].sum() <= N_IMAGES // 10  # and hardly a digit
    # the errors are the model's own: the mean squared error per pixel of its reconstructions
    floats = torch.from_numpy(np.concatenate([digits, noise])).float().unsqueeze(1) / 255
    with torch.no_grad():
        expected = (trained.model(floats) - floats).square().mean(dim=(1, 2, 3)).numpy()
    np.testing.assert_allclose(table[:, 1], expected, rtol=1e-4)
    flagged = int(flags.sum())
    assert (f"{flagged} of {N_IMAGES + 20} images look unlike the training data (reconstruction error above the 99th "
            "percentile of the run's test images)") in printed


def test_a_downloaded_model_folder_is_ranked_once_its_runs_test_errors_lie_beside_it(trained, digits, tmp_path,
                                                                                      capsys):
    tracking.configure_uri(trained.tracking_uri)
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{trained.run_id}/model", dst_path=str(tmp_path / "dl")))
    images = str(_save(tmp_path / "d.npy", digits))
    assert encode.main([str(folder), images, "--out", str(tmp_path / "c.npy")]) == 0
    assert "unlike the training data: not known, the model's run logged no test errors" in capsys.readouterr().out
    rows = (tmp_path / "c.errors.csv").read_text().splitlines()
    assert len(rows) == 1 + N_IMAGES and all(row.endswith(",,") for row in rows[1:])

    # mlflow artifacts download -u runs:/<run id>/test_errors.npy -d <the folder above the model>
    mlflow.artifacts.download_artifacts(f"runs:/{trained.run_id}/test_errors.npy", dst_path=str(folder.parent))
    assert encode.main([str(folder), images, "--out", str(tmp_path / "c.npy")]) == 0
    assert f"of {N_IMAGES} images look unlike the training data" in capsys.readouterr().out
    assert all(row.endswith((",0", ",1")) for row in (tmp_path / "c.errors.csv").read_text().splitlines()[1:])


@pytest.mark.parametrize("layout", ["float64 in [0, 1]", "float32 in [0, 1]", "flattened", "N x 1 x H x W",
                                    "N x H x W x 1", "int64", "batches of 7"])
def test_npy_layouts_and_dtypes_give_the_same_codes(trained, digits, reference, tmp_path, layout):
    arrays = {
        "float64 in [0, 1]": digits / 255.0,
        "float32 in [0, 1]": digits.astype(np.float32) / 255,
        "flattened": digits.reshape(N_IMAGES, 64),
        "N x 1 x H x W": digits[:, None],
        "N x H x W x 1": digits[..., None],
        "int64": digits.astype(np.int64),
        "batches of 7": digits,
    }
    extra = ["--batch-size", "7"] if layout == "batches of 7" else []
    assert _encode(trained, _save(tmp_path / "in.npy", arrays[layout]), tmp_path / "codes.npy", *extra) == 0
    torch.testing.assert_close(np.load(tmp_path / "codes.npy"), reference, rtol=1e-5, atol=1e-5)


def test_one_image_gives_one_code(trained, digits, reference, tmp_path):
    assert _encode(trained, _save(tmp_path / "one.npy", digits[3]), tmp_path / "codes.npy") == 0
    torch.testing.assert_close(np.load(tmp_path / "codes.npy"), reference[3:4], rtol=1e-5, atol=1e-5)


def test_plain_idx_file(trained, digits, reference, tmp_path):
    images = write_idx(tmp_path / "t10k-images-idx3-ubyte", digits)
    assert _encode(trained, images, tmp_path / "codes.npy") == 0
    np.testing.assert_array_equal(np.load(tmp_path / "codes.npy"), reference)


def test_gzipped_idx_through_the_cli_with_the_default_store(trained, digits, reference):
    """As a user runs it: in the folder where the model was trained, MLflow's default store, no --tracking-uri."""
    write_idx(trained.cwd / "images-idx3-ubyte", digits, gz=True)
    done = subprocess.run([sys.executable, "-m", "aeexp.encode", trained.model_uri, "images-idx3-ubyte.gz",
                           "--out", "out/codes.npy", "--reconstructions", "out/recon.npy"],
                          cwd=trained.cwd, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    np.testing.assert_array_equal(np.load(trained.cwd / "out" / "codes.npy"), reference)
    assert np.load(trained.cwd / "out" / "recon.npy").shape == (N_IMAGES, 8, 8)


def test_png_folder_in_file_name_order(trained, digits, reference, tmp_path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    names = [f"digit_{i:02d}.png" for i in range(10)]
    for i in reversed(range(10)):  # written out of order: the name decides the row
        image = Image.fromarray(digits[i], mode="L")
        if i == 4:  # a colour PNG with equal channels: converted to the same gray values
            image = Image.merge("RGB", [image] * 3)
        image.save(folder / names[i])
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "codes.npy"
    assert _encode(trained, folder, out) == 0
    np.testing.assert_array_equal(np.load(out), encode_all(trained.model, torch.from_numpy(digits[:10, None])))
    order = tmp_path / "codes.files.txt"
    assert order.read_text().splitlines() == names

    # Codes of an array written to the same name: the old file order no longer describes them.
    assert _encode(trained, _save(tmp_path / "digits.npy", digits), out) == 0
    np.testing.assert_array_equal(np.load(out), reference)
    assert not order.exists()


def _png(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros(size, dtype=np.uint8), mode="L").save(path)


def _inputs(tmp_path: Path, digits: np.ndarray) -> dict[str, Callable[[], Path]]:
    """Bad inputs by name, each made on demand in ``tmp_path``."""
    def truncated_idx() -> Path:
        path = tmp_path / "cut-idx3-ubyte"
        path.write_bytes(idx_bytes(digits)[:-10])
        return path

    def mixed_sizes() -> Path:
        _png(tmp_path / "mixed" / "a.png", (8, 8))
        _png(tmp_path / "mixed" / "b.png", (9, 8))
        return tmp_path / "mixed"

    def empty_folder() -> Path:
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "readme.txt").write_text("no pictures here")
        return tmp_path / "empty"

    def npz() -> Path:
        np.savez(tmp_path / "x.npz", images=digits)
        return tmp_path / "x.npz"

    def text_file() -> Path:
        (tmp_path / "images.csv").write_text("1,2,3\n")
        return tmp_path / "images.csv"

    def gzip_bomb() -> Path:
        return _gzip_bomb(tmp_path / "bomb-idx3-ubyte.gz", digits)

    def gzip_claiming_too_much() -> Path:
        path = tmp_path / "claims-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(_idx_header((2**30, 8, 8)) + digits.tobytes()))
        return path

    def npy_claiming_too_much() -> Path:
        return _npy_claiming(tmp_path / "claims.npy", (10**12, 8, 8), digits.tobytes())

    return {
        "digits": lambda: _save(tmp_path / "ok.npy", digits),
        "missing": lambda: tmp_path / "nothere.npy",
        "text": text_file,
        "28x28": lambda: _save(tmp_path / "m.npy", np.zeros((3, 28, 28), dtype=np.uint8)),
        "flat 784": lambda: _save(tmp_path / "f.npy", np.zeros((3, 784), dtype=np.uint8)),
        "0..255 floats": lambda: _save(tmp_path / "f255.npy", digits.astype(np.float32)),
        "negative floats": lambda: _save(tmp_path / "neg.npy", digits / 255.0 - 0.5),
        "NaN": lambda: _save(tmp_path / "nan.npy", np.full((2, 8, 8), np.nan)),
        "int 300": lambda: _save(tmp_path / "i.npy", np.full((2, 8, 8), 300, dtype=np.int16)),
        "bool": lambda: _save(tmp_path / "b.npy", np.ones((2, 8, 8), dtype=bool)),
        "no images": lambda: _save(tmp_path / "none.npy", np.zeros((0, 8, 8), dtype=np.uint8)),
        "empty folder": empty_folder,
        "mixed sizes": mixed_sizes,
        "truncated idx": truncated_idx,
        "npz": npz,
        "gzip bomb": gzip_bomb,
        "gzip claiming 64 GiB": gzip_claiming_too_much,
        "npy claiming 10^12 images": npy_claiming_too_much,
    }


ERRORS = [
    # (images, model URI ({run} = the trained run), extra arguments, expected in the message)
    ("digits", f"runs:/{'0' * 32}/model", [], ["cannot load model", "not found"]),
    ("digits", "runs:/{run}/no-such-model", [], ["cannot load model runs:/{run}/no-such-model"]),
    ("missing", "runs:/{run}/model", [], ["nothere.npy not found", "a .npy array"]),
    ("text", "runs:/{run}/model", [], ["images.csv is not a supported image file", "IDX file"]),
    ("npz", "runs:/{run}/model", [], ["is not a supported image file"]),
    ("28x28", "runs:/{run}/model", [], ["are 28x28 (3 images)",
                                        "the model of run {run} takes 8x8 images (trained on digits)",
                                        "give 8x8 images, or use a model trained on mnist, fashion_mnist, kmnist or "
                                        "emnist"]),
    ("flat 784", "runs:/{run}/model", [], ["shape (3, 784)", "takes 8x8 images"]),
    ("0..255 floats", "runs:/{run}/model", [], ["float values from 0 to 255", "must lie in [0, 1]"]),
    ("negative floats", "runs:/{run}/model", [], ["float values from -0.5", "must lie in [0, 1]"]),
    ("NaN", "runs:/{run}/model", [], ["NaN"]),
    ("int 300", "runs:/{run}/model", [], ["integer values from 300 to 300", "0..255"]),
    ("bool", "runs:/{run}/model", [], ["holds bool values"]),
    ("no images", "runs:/{run}/model", [], ["holds no images"]),
    ("empty folder", "runs:/{run}/model", [], ["holds no .png files"]),
    ("mixed sizes", "runs:/{run}/model", [], ["b.png is 9x8 but a.png is 8x8", "must have one size"]),
    ("truncated idx", "runs:/{run}/model", [], ["cut-idx3-ubyte is truncated"]),
    ("gzip bomb", "runs:/{run}/model", [], ["bomb-idx3-ubyte.gz is longer than its header says",
                                            "header (40, 8, 8) needs 2560 data bytes"]),
    ("gzip claiming 64 GiB", "runs:/{run}/model", [], ["claims-idx3-ubyte.gz is truncated",
                                                       "header (1073741824, 8, 8) needs 68719476736 data bytes"]),
    ("npy claiming 10^12 images", "runs:/{run}/model", [], ["cannot read", "claims.npy",
                                                            "declares more data than the file holds"]),
    ("digits", "runs:/{run}/model", ["--tracking-uri", "sqlite:///{tmp}/elsewhere.db"],
     ["no MLflow store at sqlite:///{tmp}/elsewhere.db", "check --tracking-uri"]),
    ("digits", "runs:/{run}/model", ["--out", "{tmp}/out"], ["--out {tmp}/out is a folder"]),
    ("digits", "runs:/{run}/model", ["--reconstructions", "{tmp}/out/codes.npy"], ["give two file names"]),
    ("digits", "runs:/{run}/model", ["--reconstructions", "{tmp}/a-file/recon.npy"], ["cannot write"]),
]


@pytest.mark.parametrize(("images", "model_uri", "extra", "expected"), ERRORS,
                         ids=[f"{e[0]}-{e[3][0][:28]}" for e in ERRORS])
def test_bad_input_is_one_clear_line_and_writes_nothing(trained, digits, tmp_path, capsys, images, model_uri,
                                                        extra, expected):
    out = tmp_path / "out" / "codes.npy"
    (tmp_path / "a-file").write_text("a file where a folder is expected")
    fill = {"run": trained.run_id, "tmp": tmp_path}
    extra = [e.format(**fill) for e in extra]
    if "--out" in extra:
        (tmp_path / "out").mkdir()
    has_uri = "--tracking-uri" in extra
    argv = [model_uri.format(**fill), str(_inputs(tmp_path, digits)[images]()),
            *([] if "--out" in extra else ["--out", str(out)]),
            *([] if has_uri else ["--tracking-uri", trained.tracking_uri]), *extra]
    assert encode.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for text in expected:
        assert text.format(**fill) in err, err
    assert "Traceback" not in err
    assert not out.exists()
    leftovers = [p.name for p in (tmp_path / "out").rglob("*")] if (tmp_path / "out").exists() else []
    assert leftovers == []
    assert not (tmp_path / "elsewhere.db").exists()  # no empty store made on the way


def test_shape_mismatch_through_the_cli(trained, tmp_path):
    """The real process: exit code 1, one `error:` line on stderr, no traceback, no output file."""
    images = _save(tmp_path / "fashion.npy", np.zeros((5, 28, 28), dtype=np.uint8))
    done = subprocess.run([sys.executable, "-m", "aeexp.encode", trained.model_uri, str(images),
                           "--out", str(tmp_path / "codes.npy"), "--tracking-uri", trained.tracking_uri],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: images in")
    assert "takes 8x8 images (trained on digits)" in done.stderr and "are 28x28 (5 images)" in done.stderr
    assert not (tmp_path / "codes.npy").exists()


def test_failure_leaves_existing_outputs_untouched(trained, digits, tmp_path):
    out, recon = tmp_path / "codes.npy", tmp_path / "recon.npy"
    _save(out, np.arange(3.0))
    _save(recon, np.arange(2.0))
    assert _encode(trained, _save(tmp_path / "big.npy", np.zeros((2, 28, 28), np.uint8)), out,
                   "--reconstructions", str(recon)) == 1
    (tmp_path / "blocked").write_text("a file, not a folder")
    assert _encode(trained, _save(tmp_path / "ok.npy", digits), out,
                   "--reconstructions", str(tmp_path / "blocked" / "recon.npy")) == 1
    np.testing.assert_array_equal(np.load(out), np.arange(3.0))
    np.testing.assert_array_equal(np.load(recon), np.arange(2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.npy", "blocked", "codes.npy", "ok.npy", "recon.npy"]


@pytest.mark.parametrize(("stored", "model_shape", "expected"), [
    ((5, 8, 8), (1, 28, 28), "images in x.npy are 8x8 (5 images) but the model models:/ae/1 takes 28x28 images (the "
                             "size of mnist, fashion_mnist, kmnist or emnist); give 28x28 images, or use a model "
                             "trained on digits"),
    ((3, 28, 28, 1), (1, 8, 8), "images in x.npy are 28x28 (3 images) but the model models:/ae/1 takes 8x8 images "
                                "(the size of digits); give 8x8 images, or use a model trained on mnist, "
                                "fashion_mnist, kmnist or emnist"),
    ((2, 1, 5, 5), (1, 12, 12), "images in x.npy are 5x5 (2 images) but the model models:/ae/1 takes 12x12 images; "
                                "give 12x12 images, or use a model trained on images of their size"),
    ((4, 3, 8, 8), (3, 28, 28), "images in x.npy are 8x8 colour (4 images) but the model models:/ae/1 takes "
                                "3x28x28 images; give 3x28x28 images, or use a model trained on images of their size"),
    ((2, 28, 28, 3), (3, 8, 8), "images in x.npy are 28x28 colour (2 images) but the model models:/ae/1 takes 3x8x8 "
                                "images; give 3x8x8 images, or use a model trained on images of their size"),
    ((2, 32, 32, 3), (1, 28, 28), "images in x.npy are 32x32 colour (2 images) but the model models:/ae/1 takes "
                                  "28x28 images (the size of mnist, fashion_mnist, kmnist or emnist); give 28x28 "
                                  "images, or use a model trained on cifar10 or svhn"),
])
def test_a_mismatch_names_the_shipped_datasets_of_each_size(stored, model_shape, expected):
    """Without a run to ask, the hint comes from the image shapes of the shipped dataset configs."""
    images = encode.Images(np.zeros(stored, dtype=np.uint8), Path("x.npy"))
    assert encode.fit_to_model(images.array, model_shape) is None
    assert encode.mismatch_message(images, model_shape, "models:/ae/1") == expected


def test_batch_size_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        encode.main(["runs:/abc/model", "x.npy", "--out", str(tmp_path / "c.npy"), "--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "--batch-size: must be a positive integer" in capsys.readouterr().err


# --- inputs that claim more than they hold ----------------------------------------------------------------------

BOMB_MEMBER_BYTES = 16 << 20
BOMB_MEMBERS = 64  # 1 GiB of zeros inflated from ~1 MB: gzip members of 16 MiB each, one after the other


def _idx_header(shape: tuple[int, ...]) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


def _gzip_bomb(path: Path, digits: np.ndarray) -> Path:
    """An IDX file whose header declares the 40 digits and whose gzip data inflates to 1 GiB more (zeros)."""
    zeros = gzip.compress(bytes(BOMB_MEMBER_BYTES), mtime=0)
    path.write_bytes(gzip.compress(idx_bytes(digits), mtime=0) + zeros * BOMB_MEMBERS)
    assert path.stat().st_size < 2 << 20
    return path


def _npy_claiming(path: Path, shape: tuple[int, ...], payload: bytes) -> Path:
    """A .npy file whose header declares ``shape`` (uint8) but which holds only ``payload``."""
    with path.open("wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "|u1", "fortran_order": False, "shape": shape})
        handle.write(payload)
    return path


@pytest.mark.parametrize("case", ["gzip bomb", "gzip claiming 64 GiB", "npy claiming 10^12 images"])
def test_inputs_that_claim_more_than_they_hold_are_refused_before_the_memory_is_taken(digits, tmp_path, case):
    """The refusal comes before the memory: what the file declares is checked against what it can hold, and a gzip
    file is inflated no further than its header declares (it took 2.1 GB before)."""
    path = _inputs(tmp_path, digits)[case]()
    tracemalloc.start()
    try:
        with pytest.raises(DataError):
            encode.read_images(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB allocated while refusing {path.name}"


def test_a_device_that_never_ends_is_refused_at_once(tmp_path):
    """``/dev/zero`` reads forever: refused as not a file, in a process limited to 2 GiB of address space."""
    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    done = subprocess.run([sys.executable, "-m", "aeexp.encode", f"runs:/{'0' * 32}/model", "/dev/zero",
                           "--out", str(tmp_path / "codes.npy")], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=60, preexec_fn=limit_memory)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.splitlines() == ["error: /dev/zero is not a regular file or folder; give an IDX file (plain "
                                        "or .gz), a .npy array, a PNG image or a folder of PNG images"]
    assert not (tmp_path / "codes.npy").exists()


# --- outputs that are inputs --------------------------------------------------------------------------------------


def _output_over_input(case: str, tmp_path: Path, digits: np.ndarray) -> tuple[Path, list[str], Path, str]:
    """(images, the output arguments, the input file they would overwrite, the flag named in the message)."""
    if case == "--reconstructions is the input IDX file":
        images = write_idx(tmp_path / "t10k-images-idx3-ubyte", digits, gz=True)
        return images, ["--out", str(tmp_path / "codes.npy"), "--reconstructions", str(images)], images, \
            "--reconstructions"
    if case == "--out is the input .npy through a link":
        images = _save(tmp_path / "digits.npy", digits)
        (tmp_path / "link.npy").symlink_to(images)
        return images, ["--out", str(tmp_path / "link.npy")], images, "--out"
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(digits[i], mode="L").save(folder / f"{i}.png")
    return folder, ["--out", str(folder / "1.png")], folder / "1.png", "--out"


@pytest.mark.parametrize("case", ["--reconstructions is the input IDX file", "--out is the input .npy through a link",
                                  "--out is a PNG of the input folder"])
def test_an_output_that_is_one_of_the_inputs_is_refused(trained, digits, tmp_path, capsys, case):
    images, outputs, overwritten, flag = _output_over_input(case, tmp_path, digits)
    before = overwritten.read_bytes()
    assert encode.main([trained.model_uri, str(images), *outputs, "--tracking-uri", trained.tracking_uri]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} ") and err.count("\n") == 1, err
    assert f"is the input {overwritten}" in err and "write the outputs to other files" in err
    assert overwritten.read_bytes() == before
    assert not (tmp_path / "codes.npy").exists()


# --- more ways in: 16-bit PNGs, the console script, MLFLOW_TRACKING_URI ----------------------------------------


def test_16_bit_pngs_are_scaled_to_8_bits(trained, digits, reference, tmp_path):
    folder = tmp_path / "png16"
    folder.mkdir()
    for i in range(N_IMAGES):
        wide = digits[i].astype(np.uint16) * 257  # 0..255 -> 0..65535
        Image.fromarray(wide).save(folder / f"{i:02d}.png")
    with Image.open(folder / "00.png") as image:
        assert image.mode.startswith("I;16") or image.mode == "I"
    assert _encode(trained, folder, tmp_path / "codes.npy") == 0
    np.testing.assert_array_equal(np.load(tmp_path / "codes.npy"), reference)


def test_the_console_script_finds_the_run_through_mlflow_tracking_uri(trained, digits, reference, tmp_path):
    """``aeexp encode`` (the installed script) in a folder without a store: MLFLOW_TRACKING_URI says where."""
    images = _save(tmp_path / "digits.npy", digits)
    script = Path(sys.executable).with_name("aeexp")
    done = subprocess.run([str(script), "encode", trained.model_uri, str(images), "--out", "codes.npy"],
                          cwd=tmp_path, env={**_env(), "MLFLOW_TRACKING_URI": trained.tracking_uri},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "codes.npy"), reference)
    assert not (tmp_path / "mlflow.db").exists()


# --- a hostile model file: its pickle runs code -----------------------------------------------------------------


@dataclass
class Hostile:
    """A run whose logged model is an EvilAE: unpickling its model file runs ``touch <marker>``."""

    run_id: str
    tracking_uri: str
    folder: Path  # the model folder, downloaded (what a user gets from `mlflow artifacts download`)
    marker: Path
    model: torch.nn.Module


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> Iterator[Hostile]:
    root = tmp_path_factory.mktemp("hostile")
    uri = new_store(root / "mlflow.db", store_template)
    config = OmegaConf.create({"dataset": {"name": "digits"}, "tracking": {"uri": uri},
                               "model": {"_target_": "evil_model.EvilAE", "widths": [16], "bottleneck": BOTTLENECK}})
    model = models.build(config.model, (1, 8, 8))
    model.marker = str(root / "marker")
    tracking.configure(uri, "hostile")
    with tracking.start_run("hostile", {}) as run_id:
        tracking.log_model(model, np.zeros((2, 1, 8, 8), dtype=np.float32), OmegaConf.to_yaml(config))
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(root / "download")))
    mlflow.set_tracking_uri(None)
    assert not (root / "marker").exists()  # logging it ran nothing
    yield Hostile(run_id, uri, folder, root / "marker", model)


OWN = ["--allow-target", "evil_model.EvilAE"]  # a class of the user's own, which a stored config may then build


def _codes_of(model: torch.nn.Module, digits: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.encode(torch.from_numpy(digits).float().unsqueeze(1) / 255).numpy()


def test_a_hostile_pickle_runs_only_with_trust_pickle(hostile, digits, tmp_path, capsys):
    """From the run and from a local model folder, the model is made from its config and weights: the same codes,
    and the pickle's command never runs. With --trust-pickle it does (the attack is real; the flag opens it)."""
    images = _save(tmp_path / "digits.npy", digits)
    hostile.marker.unlink(missing_ok=True)
    for model_uri, extra in ((f"runs:/{hostile.run_id}/model", ["--tracking-uri", hostile.tracking_uri]),
                             (str(hostile.folder), [])):
        assert encode.main([model_uri, str(images), "--out", str(tmp_path / "codes.npy"), *extra, *OWN]) == 0, \
            capsys.readouterr().err
        np.testing.assert_allclose(np.load(tmp_path / "codes.npy"), _codes_of(hostile.model, digits), atol=1e-6)
        assert not hostile.marker.exists(), f"{model_uri}: the model's pickle ran"
    assert encode.main([str(hostile.folder), str(images), "--out", str(tmp_path / "codes.npy"),
                        "--trust-pickle"]) == 1  # unpickled, it is os.system's return value, not a model
    assert hostile.marker.exists()
    assert "cannot load model" in capsys.readouterr().err
    hostile.marker.unlink()


def _tamper(folder: Path, how: str, payload_marker: Path) -> None:
    files = folder / model_files.FOLDER
    if how == "no weights file":
        shutil.rmtree(files)
    elif how == "weights file swapped for a pickle":
        torch.save(Payload(str(payload_marker)), files / model_files.WEIGHTS)
    elif how == "class not importable here":
        config = files / model_files.CONFIG
        config.write_text(config.read_text().replace("evil_model.EvilAE", "elsewhere.EvilAE"))


@pytest.mark.parametrize(("how", "expected"), [
    ("no weights file", ["has no extra_files/weights.pt (saved by an older aeexp or outside aeexp)",
                         "--trust-pickle loads its pickled form instead, which runs any code the file holds"]),
    ("weights file swapped for a pickle", ["weights.pt is not a plain state_dict of tensors (UnpicklingError"]),
    ("class not importable here", ["cannot be made here from its config",
                                   "model._target_='elsewhere.EvilAE' cannot be imported (No module named "
                                   "'elsewhere'); put its module on PYTHONPATH"]),
])
def test_a_model_folder_that_cannot_be_made_safely_is_refused_without_unpickling(hostile, digits, tmp_path, capsys,
                                                                                 monkeypatch, how, expected):
    # Even where torch is told to unpickle in every torch.load that does not ask for weights_only itself.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    folder = tmp_path / "model"
    shutil.copytree(hostile.folder, folder)
    _tamper(folder, how, tmp_path / "payload-ran")
    hostile.marker.unlink(missing_ok=True)
    assert encode.main([str(folder), str(_save(tmp_path / "digits.npy", digits)),
                        "--out", str(tmp_path / "codes.npy"), *OWN, "--allow-target", "elsewhere.EvilAE"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    assert not hostile.marker.exists() and not (tmp_path / "payload-ran").exists()
    assert not (tmp_path / "codes.npy").exists()
