"""Check the CUDA path by hand on a machine with a GPU (CI has none): data resident on the GPU, bf16 autocast,
the same losses as on the CPU within 2%.

    python scripts/check_cuda.py
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from aeexp import data, models, train


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to check")
        return 2
    digits = data.load("digits")
    losses = {}
    for device in ("cpu", "cuda"):
        moved = digits.to(device)
        torch.manual_seed(0)
        model = models.build(digits.image_shape, [32], 8).to(device)
        optimizer = train.make_optimizer(model, "adam", 1e-3, 0.0)
        losses[device] = train.fit(model, moved.train, moved.val, epochs=3, batch_size=64, optimizer=optimizer,
                                   loss="bce", seed=0, progress=False, compile=False).train_loss
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=2e-2)
    print(f"CUDA losses {losses['cuda']} track the CPU's {losses['cpu']}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
