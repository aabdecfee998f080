"""Quality of each model preset against PCA of the same size and raw pixels, on Fashion-MNIST by default.

    python scripts/quality.py [--dataset fashion_mnist] [--models ae32 ae25 conv vae] [--epochs 20]

Runs ``python -m aeexp dataset=<d> model=<m> trainer.epochs=<n>`` for each model into a temporary MLflow store,
reads back test MSE and 5-NN accuracy of the codes (and the run's PCA baseline of the same size), adds raw pixels
(784-d, no compression), prints a Markdown table and writes it into BENCHMARKS.md between the quality markers.
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
ROOT = Path(__file__).resolve().parents[1]


def _run(dataset: str, model: str, epochs: int, uri: str, workdir: Path) -> tuple[dict[str, float], dict, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "aeexp", f"dataset={dataset}", f"model={model}",
                           f"trainer.epochs={epochs}", "trainer.progress=false", "embed.n_samples=1000",
                           f"tracking.uri={uri}", f"tracking.run_name={model}"], cwd=workdir,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{model} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(dataset)
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{model}'")
    return run.data.metrics, run.data.params, time.perf_counter() - started


def _raw_pixels(dataset: str) -> float:
    from aeexp import data, metrics

    loaded = data.load(dataset, "./data", False, 0.1, 0)
    flat = [split.images.reshape(len(split), -1).float().div(255).numpy() for split in (loaded.train, loaded.test)]
    return metrics.knn_accuracy(flat[0], loaded.train.labels.numpy(), flat[1], loaded.test.labels.numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--models", nargs="+", default=["ae32", "ae25", "conv", "vae"])
    parser.add_argument("--epochs", type=int, default=20, help="trainer.epochs for every model (the default: 20)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()

    rows = ["| codes | size | test MSE | 5-NN acc of codes | PCA of that size: MSE | PCA: 5-NN acc | AE beats PCA "
            "on both | run s |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        for model in args.models:
            m, params, seconds = _run(args.dataset, model, args.epochs, uri, Path(tmp))
            beats = m["test_mse"] < m["pca_test_mse"] and m["test_knn_acc"] > m["pca_knn_acc"]
            kind = params.get("model.kind", "dense") + (" VAE" if params.get("model.variational") == "True" else "")
            rows.append(f"| {model} ({kind}, widths {params['model.widths']}) | {params['model.bottleneck']} | "
                        f"{m['test_mse']:.4f} | {m['test_knn_acc']:.4f} | {m['pca_test_mse']:.4f} | "
                        f"{m['pca_knn_acc']:.4f} | {'yes' if beats else 'no'} | {seconds:.0f} |")
            print(rows[-1], flush=True)
    rows.append(f"| raw pixels | 784 | 0 | {_raw_pixels(args.dataset):.4f} | | | | |")
    table = "\n".join([
        f"Quality: {args.dataset}, each model preset with trainer defaults (Adam lr 0.001, BCE, batch 128) for "
        f"{args.epochs} epochs, seed 0; test MSE per pixel of the reconstructions and 5-NN accuracy of the test "
        "codes against the training codes; PCA fit on the same training split with as many components as the "
        f"bottleneck. {platform.platform()}, {time.strftime('%Y-%m-%d %H:%M')}.", "", *rows])
    print(table)
    if not args.no_write:
        path = ROOT / "BENCHMARKS.md"
        text = path.read_text()
        note = "<!-- written by `python scripts/quality.py`; edit outside the markers -->"
        block = f"{BEGIN}\n{note}\n\n{table}\n\n{END}"
        if BEGIN in text:
            text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
        else:
            text = text.rstrip() + "\n\n## Quality: autoencoders against PCA of the same size\n\n" + block + "\n"
        path.write_text(text)


if __name__ == "__main__":
    main()
