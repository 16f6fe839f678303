"""Colourization pre-training without labels against random initialisation, on CamVid (issue 17).

    nice -n 10 python bench/pretrain.py --pretrain-minutes 12 --steps 150 --points 5 \\
        --json bench/results/pretrain_camvid.json
    nice -n 10 python bench/pretrain.py --pretrain-minutes 1 --steps 4 --fractions 0.1 \\
        --points 0 --json /tmp/p.json                # a quick end-to-end check

1. Pre-training: ``pixelwise train --task colorize`` (L in, Lab a/b out) on the CamVid train
   images plus every colour image of the other datasets in ../shared/data (DRIVE, STARE, PH2;
   ISBI is greyscale and skipped), linked into one plain folder: no mask is ever read. It runs
   for ``--pretrain-minutes`` (``--budget``; the cosine schedule follows the clock).
2. Fine-tuning: CamVid's recipe from ``bench/accuracy.py`` (``--set`` overrides; the defaults
   below shrink it to what 1 CPU thread trains in minutes) on a seeded random ``--fractions`` of
   the training pairs (a linked CamVid folder: train/ + trainannot/ subset, val/ as it is), and
   with ``--points N`` on every training image with N clicked pixels per class. Each setting
   runs twice with the same seed, options and number of optimizer steps (``--steps``: epochs =
   steps / batches per epoch): random initialisation, and ``--init-from`` the pre-training run
   (its L input conv mapped onto the luma of the RGB input, every other matching tensor copied,
   the 2-channel output layer not).
3. Score: ``bench/accuracy.py``'s CamVid scoring of each run's best checkpoint on val/ (101
   images at 360x480): mIoU over the 11 classes, global accuracy.

At most ``--jobs`` runs at once (1 thread each); random-init runs start beside the
pre-training. Prints the table (fraction, init, mIoU, fine-tune time, pre-train time, load) and
writes ``--json`` after each run.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import RECIPES, SHARED, _set, score_camvid  # noqa: E402

#: the CamVid recipe, smaller: ~1.7 s per step of 8 crops on one loaded CPU thread
SMALL = {"model_args": {"base_width": 16, "depth": 4}, "crop_size": 128}
OTHER_DATASETS = ("drive", "stare", "ph2", "isbi2012")  # colour images of each are used


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        dst.symlink_to(src.resolve())


def pretrain_folder(work: Path) -> tuple[Path, dict[str, int]]:
    """A plain folder linking the CamVid train images and the colour images of the other
    datasets (no masks): what colourization pre-trains on. Returns it and the counts."""
    from pixelwise.data.colour import open_colour_images
    from pixelwise.errors import DataError

    folder, counts = work / "pretrain_images", {}
    sources = [("camvid", SHARED / "camvid", "train")]
    sources += [(n, SHARED / n, "all") for n in OTHER_DATASETS if (SHARED / n).is_dir()]
    for name, root, split in sources:
        try:
            files = open_colour_images(root, split).files
        except DataError:  # greyscale only (ISBI)
            counts[name] = 0
            continue
        for i, f in enumerate(files):
            _link(f, folder / name / f"{i:04d}_{f.stem}{f.suffix.lower()}")
        counts[name] = len(files)
    return folder, counts


def camvid_subset(work: Path, fraction: float, seed: int) -> tuple[Path, int]:
    """A CamVid folder whose train/ + trainannot/ hold a seeded random ``fraction`` of the
    training pairs (val/ and classes.txt linked whole)."""
    root = SHARED / "camvid"
    names = sorted(p.name for p in (root / "train").iterdir() if p.suffix == ".png")
    keep = max(1, round(len(names) * fraction))
    chosen = sorted(np.random.default_rng(seed).permutation(names)[:keep].tolist())
    folder = work / f"camvid_{fraction:g}"
    for n in chosen:
        _link(root / "train" / n, folder / "train" / n)
        _link(root / "trainannot" / n, folder / "trainannot" / n)
    for extra in ("val", "valannot", "classes.txt"):
        _link(root / extra, folder / extra)
    return folder, keep


def flags(options: dict[str, Any]) -> list[str]:
    """TrainConfig field values -> ``pixelwise train`` flags (the CLI's own names)."""
    from pixelwise.training.config import option_flag

    out: list[str] = []
    for key, value in options.items():
        if key in ("model_args", "data_args"):
            for k, v in value.items():
                out += [option_flag(key), f"{k}={json.dumps(v)}"]
        elif key == "scale_min":
            out += ["--scale", str(value), str(options["scale_max"])]
        elif key == "scale_max":
            continue
        elif isinstance(value, bool):
            if not value:
                out.append(option_flag(key).replace("--", "--no-", 1))
        elif value is not None:
            out += [option_flag(key), str(value)]
    return out


def run_train(options: dict[str, Any], log: Path) -> dict[str, Any]:
    """``pixelwise -q train`` in a subprocess (1 thread); wall time and load before/after."""
    cmd = [sys.executable, "-m", "pixelwise", "-q", "train", *flags(options)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (rc {done.returncode}); see {log}")
    summary = json.loads((Path(options["out"]) / "summary.json").read_text())
    return {"seconds": round(seconds, 1), "load": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "summary": summary}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pretrain-minutes", type=float, default=12.0)
    p.add_argument("--steps", type=int, default=150, help="optimizer steps of every fine-tune")
    p.add_argument("--fractions", default="0.1,0.25")
    p.add_argument("--points", type=int, default=5, help="also: all images, N clicks (0: off)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--work", default="/tmp/pixelwise_pretrain_bench")
    p.add_argument("--json", default="bench/results/pretrain_camvid.json")
    args = p.parse_args()
    if not (SHARED / "camvid").is_dir():
        print(f"skipped: {SHARED / 'camvid'} is absent")
        return
    import torch

    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    recipe = copy.deepcopy(RECIPES["camvid"])
    recipe.update(copy.deepcopy(SMALL))
    for s in args.set:
        _set(recipe, s)
    results: dict[str, Any] = {"recipe": recipe, "steps": args.steps, "runs": []}
    lock = threading.Lock()

    def record(entry: dict[str, Any]) -> None:
        with lock:
            results["runs"].append(entry)
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=1))

    folder, counts = pretrain_folder(work)
    results["pretrain_images"] = counts
    pre_out = work / "runs" / "colorize"
    pre_options = {
        **{k: v for k, v in recipe.items() if k != "class_weights"},
        "task": "colorize", "data": str(folder), "out": str(pre_out), "overwrite": True,
        "epochs": 1000, "budget": args.pretrain_minutes * 60, "val_fraction": 0.05,
        "threads": 1, "seed": args.seed, "device": "cpu",
    }  # fmt: skip

    def pretrain() -> dict[str, Any]:
        r = run_train(pre_options, work / "colorize.log")
        record({"kind": "pretrain", **r})
        return r

    settings = [(f"{float(f):g}", float(f), 0) for f in args.fractions.split(",")]
    if args.points:
        settings.append((f"1 ({args.points} points)", 1.0, args.points))
    val_ds = None

    def finetune(label: str, fraction: float, points: int, init: Future | None) -> None:
        nonlocal val_ds
        data, images = camvid_subset(work, fraction, args.seed)
        batches = images // recipe["batch_size"]
        epochs = max(1, math.ceil(args.steps / max(1, batches)))
        name = f"{'colorize' if init else 'random'}_{label.split()[0]}_{points}"
        options = {
            **recipe, "data": str(data), "out": str(work / "runs" / name), "overwrite": True,
            "epochs": epochs, "val_every": max(1, epochs // 3), "threads": 1, "seed": args.seed,
            "device": "cpu", "points": points, "budget": 3 * 60 * 60,
        }  # fmt: skip
        pre = init.result() if init is not None else None
        if init is not None:
            options["init_from"] = str(pre_out)
        r = run_train(options, work / f"{name}.log")
        from pixelwise.data import open_dataset

        with lock:
            if val_ds is None:
                val_ds = open_dataset(SHARED / "camvid", "val")
        score = score_camvid(Path(options["out"]), val_ds, recipe["input_scale"])
        entry = {
            "kind": "finetune", "labels": label, "train_images": images, "points": points,
            "init": "colorize" if init else "random", "epochs": epochs,
            "steps": r["summary"]["steps"], "mean_iou": score["mean_iou"],
            "global_accuracy": score["global_accuracy"], **r,
            "pretrain_seconds": pre["seconds"] if pre else 0.0,
        }  # fmt: skip
        record(entry)
        print(f"done {name}: mIoU {score['mean_iou']:.4f} ({r['seconds']:.0f} s)", flush=True)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        pre_future = pool.submit(pretrain)
        jobs = [pool.submit(finetune, *s, None) for s in settings]
        jobs += [pool.submit(finetune, *s, pre_future) for s in settings]
        for j in [pre_future, *jobs]:
            j.result()
    table(results)


def table(results: dict[str, Any]) -> None:
    pre = next(r for r in results["runs"] if r["kind"] == "pretrain")
    s = pre["summary"]
    print(
        f"\npre-training (colorize, {sum(results['pretrain_images'].values())} images "
        f"{results['pretrain_images']}): {pre['seconds']:.0f} s, {s['epochs']} epochs, "
        f"{s['steps']} steps, best val PSNR {s['best_psnr']:.2f} dB, load {pre['load']}"
    )
    print(
        f"{'labels':>16} {'init':>9} {'mIoU':>7} {'g.acc':>7} {'steps':>6} {'fine-tune s':>11} "
        f"{'pretrain s':>10} {'load':>13}"
    )
    runs = [r for r in results["runs"] if r["kind"] == "finetune"]
    for r in sorted(runs, key=lambda r: (r["labels"], r["init"] != "random")):
        print(
            f"{r['labels']:>16} {r['init']:>9} {r['mean_iou']:7.4f} {r['global_accuracy']:7.4f} "
            f"{r['steps']:6d} {r['seconds']:11.0f} {r['pretrain_seconds']:10.0f} "
            f"{str(r['load']):>13}"
        )


if __name__ == "__main__":
    main()
