"""Staged FCN training at step 0: how close FCN-16s (from FCN-32s) and FCN-8s (from FCN-16s) are.

    python bench/staged.py

Prints, per seed, the argmax agreement and the max logit difference (relative to the logit range)
between the coarser net and the finer net right after `transfer_weights`, for the two settings
that tests/models/test_fcn.py asserts on: score maps that look trained (confident regions about
96 px wide) and random nets (a class boundary in every stride-32 cell, the worst case). The
difference is the one between one-step (x32) and two-step (x2, x16) bilinear upsampling; see
docs/models/fcn.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.models.test_fcn import step0_random, step0_trained_looking  # noqa: E402


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(
        f"{'setting':<16} {'seed':>4} {'step':>8} {'argmax agreement':>17} {'max diff / range':>17}"
    )
    for label, fn, seeds in (
        ("trained-looking", step0_trained_looking, (0, 1, 2)),
        ("random net", step0_random, (4, 5)),
    ):
        for seed in seeds:
            for step, (rel, agree) in fn(seed).items():
                print(f"{label:<16} {seed:>4} {step:>8} {100 * agree:>16.2f}% {100 * rel:>16.1f}%")


if __name__ == "__main__":
    main()
