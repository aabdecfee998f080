#!/usr/bin/env python
r"""README's latent traversal figure, ``docs/traversals.png``, from a real run: an ae32 trained on Fashion-MNIST
through the CLI, as a user would, and its ``traversals.png`` artifact copied to docs/.

    python scripts/traversals_figure.py                  # 10 epochs on all 54,000 training images
    python scripts/traversals_figure.py --epochs 2 --train-size 5000 --out /tmp/traversals.png   # a quick check

The run goes to a temporary MLflow store and output folder, removed afterwards.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "traversals.png"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train-size", type=int, default=None, help="training images kept (default: all)")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aeexp-traversals-") as scratch:
        folder = Path(scratch)
        command = [sys.executable, "-m", "aeexp", "dataset=fashion_mnist", "model=ae32",
                   f"trainer.epochs={args.epochs}", "trainer.progress=false", "embed=pca", "seed=0",
                   f"tracking.uri=sqlite:///{folder / 'mlflow.db'}", f"hydra.run.dir={folder / 'run'}"]
        if args.train_size:
            command.append(f"dataset.train_size={args.train_size}")
        subprocess.run(command, cwd=folder, check=True)
        shutil.copyfile(folder / "run" / "traversals.png", args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
