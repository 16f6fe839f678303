"""Parameter counts of every model, and training-step time with NCHW vs channels-last tensors.

    python bench/models.py [--classes 21] [--steps 30] [--threads N]

Parameter counts are taken on the meta device (no memory, instant). The step timing trains the
demo's U-Net (unet_same, depth 3, base width 16) on batches of 8 random 64x64 images, the
setting `pixelwise demo` uses, with `--no-channels-last` and without.
"""

from __future__ import annotations

import argparse
import time

import torch

from pixelwise.losses import pixel_cross_entropy
from pixelwise.models import available, build


def step_ms(channels_last: bool, steps: int) -> float:
    torch.manual_seed(0)
    model = build("unet_same", 11, base_width=16, depth=3)
    x = torch.randn(8, 3, 64, 64)
    y = torch.randint(0, 11, (8, 64, 64))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-5)

    def step() -> None:
        loss = pixel_cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"{'model':<18} {'parameters (width 1)':>22} {'width 0.25':>12}   ({args.classes} classes)"
    )
    for name in available():
        with torch.device("meta"):
            full = sum(p.numel() for p in build(name, args.classes).parameters())
            small = sum(p.numel() for p in build(name, args.classes, width=0.25).parameters())
        print(f"{name:<18} {full:>22,} {small:>12,}")
    with torch.device("meta"):
        paper = sum(p.numel() for p in build("unet", 2, in_channels=1).parameters())
    print(f"{'unet, 1 in, 2 out':<18} {paper:>22,}   (the U-Net paper's setting)")
    print()
    a, b = step_ms(False, args.steps), step_ms(True, args.steps)
    print(f"demo U-Net training step, batch 8 x 64x64, {torch.get_num_threads()} threads:")
    print(f"  NCHW           {a:6.1f} ms")
    print(f"  channels-last  {b:6.1f} ms   ({a / b:.2f}x)")


if __name__ == "__main__":
    main()
