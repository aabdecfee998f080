"""Quality of each model preset against PCA of the same size and raw pixels, on Fashion-MNIST by default, and on
CIFAR-10 when its files are present.

    python scripts/quality.py [--dataset fashion_mnist] [--models ae32 ae25 conv vae] [--epochs 20]
    python scripts/quality.py --dataset digits --models ae32 --epochs 1 --no-write     # a quick check

Runs ``python -m aeexp dataset=<d> model=<m> trainer.epochs=<n>`` (any ``model=`` preset, with ``key=value``
overrides after a colon, e.g. ``vae:model.beta=1.0``) into a temporary MLflow store, reads back test MSE and 5-NN
accuracy of the codes (and the run's PCA baseline of the same size), adds raw pixels (no compression), prints a
Markdown table and writes it into BENCHMARKS.md between the quality markers. When CIFAR-10's python batches are
under ``--root`` (``cifar-10-batches-py``), a second table, of ``--cifar10-models`` (dense and conv AEs) on
CIFAR-10's colour images, goes between the quality-cifar10 markers; ``--no-cifar10`` leaves it out.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"
CIFAR10_MARKERS = ("<!-- quality-cifar10:begin -->", "<!-- quality-cifar10:end -->")
ROOT = Path(__file__).resolve().parents[1]


def _dataset_overrides(dataset: str, root: str) -> list[str]:
    """``dataset.root=<absolute root>`` for datasets read from files (the runs' working folder is temporary)."""
    from aeexp import data

    return [f"dataset.root={Path(root).resolve()}"] if isinstance(data.preset(dataset), data.StandardFiles) else []


def _run(dataset: str, model: str, name: str, epochs: int, uri: str, workdir: Path, extra: list[str]
         ) -> tuple[dict[str, float], dict[str, str], float]:
    """Train ``model`` (a preset, optionally ``:key=value`` overrides) as MLflow run ``name``; its metrics, params
    and wall seconds."""
    preset, *overrides = model.split(":")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "aeexp", f"dataset={dataset}", *extra, f"model={preset}",
                           *overrides, f"trainer.epochs={epochs}", "trainer.progress=false", "embed.n_samples=1000",
                           f"tracking.uri={uri}", f"tracking.run_name={name}"], cwd=workdir,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{model} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(dataset)
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    return run.data.metrics, run.data.params, time.perf_counter() - started


def _describe(params: dict[str, str]) -> str:
    """The model's family and settings from its logged config, e.g. ``dense VAE, widths [128, 64], beta 0.1``."""
    target = params.get("model._target_", "").rsplit(".", 1)[-1]
    kind = params.get("model.kind", "conv" if target == "ConvAutoencoder" else "dense")
    family = {"VariationalAutoencoder": f"{kind} VAE", "SparseAutoencoder": f"{kind} sparse AE",
              "VQVAE": f"{kind} VQ-VAE"}.get(target, kind)
    parts = [family, f"widths {params.get('model.widths', '?')}"]
    parts += [f"{name} {params[f'model.{name}']}" for name in ("beta", "l1", "codebook_size")
              if f"model.{name}" in params]
    if params.get("model.noise", "none") != "none":
        parts.append(f"noise {params['model.noise']}")
    return ", ".join(parts)


def _raw_pixels(dataset: str, root: str) -> tuple[int, float]:
    from aeexp import data, metrics

    source = data.preset(dataset)
    if isinstance(source, data.StandardFiles):
        source = data.preset(dataset, root=str(Path(root).resolve()), download=False)
    loaded = data.load(source, seed=0)
    flat = [split.images.reshape(len(split), -1).float().div(255).numpy() for split in (loaded.train, loaded.test)]
    return flat[0].shape[1], metrics.knn_accuracy(flat[0], loaded.train.labels.numpy(), flat[1],
                                                  loaded.test.labels.numpy())


def quality_table(dataset: str, models: list[str], epochs: int, root: str) -> str:
    """Train each model on ``dataset`` and return the Markdown table of its codes against PCA and raw pixels."""
    extra = _dataset_overrides(dataset, root)
    rows = ["| codes | size | test MSE | 5-NN acc of codes | PCA of that size: MSE | PCA: 5-NN acc | AE beats PCA "
            "on both | run s |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        for i, model in enumerate(models):
            m, params, seconds = _run(dataset, model, f"quality-{i}", epochs, uri, Path(tmp), extra)
            beats = m["test_mse"] < m["pca_test_mse"] and m["test_knn_acc"] > m["pca_knn_acc"]
            rows.append(f"| {model} ({_describe(params)}) | {params.get('model.bottleneck', '?')} | "
                        f"{m['test_mse']:.4f} | {m['test_knn_acc']:.4f} | {m['pca_test_mse']:.4f} | "
                        f"{m['pca_knn_acc']:.4f} | {'yes' if beats else 'no'} | {seconds:.0f} |")
            print(rows[-1], flush=True)
    pixels, accuracy = _raw_pixels(dataset, root)
    rows.append(f"| raw pixels | {pixels} | 0 | {accuracy:.4f} | | | | |")
    return "\n".join([
        f"Quality: {dataset}, each model preset with the default optimizer (`optimizer=adam`: torch.optim.Adam "
        f"lr 0.001, fused), no schedule, trainer defaults (batch 128), BCE, for {epochs} epochs, seed 0; test "
        "MSE per pixel of the reconstructions and 5-NN accuracy of the test codes against the training codes; PCA "
        "fit on the same training split with as many components as the bottleneck. "
        f"{platform.platform()}, {time.strftime('%Y-%m-%d %H:%M')}.", "", *rows])


def write_block(table: str, markers: tuple[str, str], heading: str) -> None:
    """``table`` into BENCHMARKS.md between ``markers`` (added at the end, under ``heading``, the first time)."""
    begin, end = markers
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    note = "<!-- written by `python scripts/quality.py`; edit outside the markers -->"
    block = f"{begin}\n{note}\n\n{table}\n\n{end}"
    if begin in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    path.write_text(text)


def cifar10_present(root: str) -> bool:
    from aeexp import data

    return data.preset("cifar10", root=str(Path(root).resolve()), download=False).find_files() is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--root", default="./data", help="dataset.root of file datasets (default ./data; "
                        "Fashion-MNIST is also found in Debian's folder)")
    parser.add_argument("--models", nargs="+", default=["ae32", "ae25", "conv", "vae"],
                        help="model presets, each optionally with overrides: vae:model.beta=1.0")
    parser.add_argument("--epochs", type=int, default=20, help="trainer.epochs for every model (the default: 20)")
    parser.add_argument("--cifar10-models", nargs="+", default=["ae32:model.widths=[512,128]", "conv"],
                        help="the models of the CIFAR-10 table (default: a dense AE 3072-512-128-32 and the conv AE)")
    parser.add_argument("--no-cifar10", action="store_true", help="no CIFAR-10 table, even when its files are there")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    args = parser.parse_args()

    table = quality_table(args.dataset, args.models, args.epochs, args.root)
    print(table)
    if not args.no_write:
        write_block(table, (BEGIN, END), "Quality: autoencoders against PCA of the same size")
    if args.no_cifar10 or args.dataset == "cifar10":
        return
    if not cifar10_present(args.root):
        print(f"no CIFAR-10 table: its python batches are not under {args.root} (cifar-10-batches-py)")
        return
    table = quality_table("cifar10", args.cifar10_models, args.epochs, args.root)
    print(table)
    if not args.no_write:
        write_block(table, CIFAR10_MARKERS, "Quality on CIFAR-10 (colour): autoencoders against PCA of the same size")


if __name__ == "__main__":
    main()
