"""Input-pipeline throughput (decode + augment + collate) on CamVid, and one training step.

    nice -n 10 python bench/loader.py [--data ../shared/data/camvid] [--batches 5]
                                      [--out bench_loader.json]

For DataLoader workers 0 / 1 / 2, the decoded-image cache on / off, and the augmentation without
and with rotation (10 degrees) + U-Net elastic deformation (sigma 10 px), it times ``--batches``
batches of 8 random 256 x 256 crops (scale 0.75-1.25, flips) of the CamVid training images, after
one warm-up batch (worker start-up is not counted), and prints images per second. It then times
the training step (forward, backward, AdamW) of a representative model: unet_same, base width 16,
depth 4, on a batch of 8 x 256 x 256 crops from the same pipeline, so the two numbers say whether
the loader keeps up. The cached variants share one cache, decoded once in this process before
the workers fork (the decode time is printed). Also times the U-Net weight map of a few masks
against the straightforward full-image distance transform per object. Skips (exit 0) when the
CamVid folder is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from pixelwise.data import open_dataset
from pixelwise.data.memory import InMemory
from pixelwise.data.transforms import TrainTransform, TransformedDataset, default_normalization
from pixelwise.data.weights import unet_weight_map
from pixelwise.losses import pixel_cross_entropy
from pixelwise.models import build

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
CROP, BATCH = 256, 8


def throughput(dataset, transform, workers: int, batches: int) -> float:
    """Images per second over ``batches`` batches after a warm-up batch."""
    ds = TransformedDataset(dataset, transform, seed=0)
    loader = DataLoader(
        ds,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
        drop_last=True,
    )
    it = iter(loader)
    next(it)  # warm-up: worker start-up, first decode
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - t0
    del it, loader
    return batches * BATCH / seconds


def step_seconds(dataset, transform, steps: int, num_classes: int) -> float:
    torch.manual_seed(0)
    model = build("unet_same", num_classes, base_width=16, depth=4)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    ds = TransformedDataset(dataset, transform, seed=0)
    x, y = next(iter(DataLoader(ds, batch_size=BATCH)))
    x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        loss = pixel_cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def weight_map_ms(dataset, n: int = 5) -> tuple[float, float]:
    """ms per mask of ``unet_weight_map`` (EDT per object inside its grown bounding box) and
    of the same map with a full-image EDT per object (the straightforward way)."""
    masks = [dataset[i].mask for i in range(n)]
    t0 = time.perf_counter()
    for m in masks:
        unet_weight_map(m)
    ours = (time.perf_counter() - t0) / n * 1000
    t0 = time.perf_counter()
    for m in masks:
        objects = []
        for c in np.unique(m):
            if c not in (0, 255):
                comp, k = ndimage.label(m == c, structure=np.ones((3, 3)))
                objects += [comp == j for j in range(1, k + 1)]
        d = np.sort(np.stack([ndimage.distance_transform_edt(~o) for o in objects]), 0)
        np.exp(-((d[0] + d[1]) ** 2) / 50.0)
    full = (time.perf_counter() - t0) / n * 1000
    return ours, full


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CamVid folder")
    p.add_argument("--batches", type=int, default=5, help="timed batches per setting")
    p.add_argument("--steps", type=int, default=1, help="timed training steps (after one warm-up)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, help="also write the results as JSON")
    args = p.parse_args()
    if not (args.data / "train").is_dir():
        print(f"CamVid not found at {args.data}: nothing to measure (skipped)")
        return 0

    dataset = open_dataset(args.data, "train")
    mean, std = default_normalization(dataset.channels)
    transforms = {
        "scale+crop+flip": TrainTransform(CROP, mean, std),
        "+rotate+elastic": TrainTransform(CROP, mean, std, rotate=10.0, elastic=10.0),
    }
    t0 = time.perf_counter()
    cached = InMemory(dataset).load()
    decode_s = time.perf_counter() - t0
    cpus = os.cpu_count()
    print(
        f"CamVid train: {len(dataset)} images, crop {CROP}, batch {BATCH}, {cpus} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads in the main process"
    )
    print(
        f"decoding all {len(dataset)} images once (cache fill): {decode_s:.1f} s "
        f"({len(dataset) / decode_s:.0f} img/s), {cached.nbytes / 2**20:.0f} MiB"
    )
    rows = []
    print(f"\n{'workers':>7} {'cache':>5}  {'augmentation':<16} {'img/s':>7}")
    for workers in args.workers:
        for cache in ("off", "on"):
            for name, transform in transforms.items():
                source = cached if cache == "on" else dataset
                rate = throughput(source, transform, workers, args.batches)
                rows.append(
                    {"workers": workers, "cache": cache, "augmentation": name, "img_per_s": rate}
                )
                print(f"{workers:>7} {cache:>5}  {name:<16} {rate:7.1f}")
                sys.stdout.flush()
    ours, full = weight_map_ms(cached)
    print(
        f"\nU-Net weight map (w0 10, sigma 5) per CamVid mask: {ours:.0f} ms with bounding-box "
        f"EDTs, {full:.0f} ms with a full-image EDT per object"
    )
    step = step_seconds(cached, transforms["scale+crop+flip"], args.steps, 11)
    need = BATCH / step
    print(
        f"\ntraining step, unet_same base_width 16 depth 4, batch {BATCH} x {CROP}x{CROP}, "
        f"channels-last: {step * 1000:.0f} ms = {need:.1f} img/s needed from the loader"
    )
    if args.out:
        result = {
            "data": str(args.data),
            "images": len(dataset),
            "crop": CROP,
            "batch": BATCH,
            "cpus": cpus,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "decode_all_s": decode_s,
            "cache_mib": cached.nbytes / 2**20,
            "loader": rows,
            "weight_map_ms": ours,
            "weight_map_full_edt_ms": full,
            "train_step_s": step,
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
