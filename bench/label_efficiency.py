"""Label efficiency: validation mIoU against the number of clicked points per image (issue 8).

    nice -n 10 python bench/label_efficiency.py --datasets isbi,camvid --points 1,5,20,100,full \\
        --minutes-per-run 20 --json bench/results/label_efficiency.json \\
        --plot docs/images/label_efficiency.png
    nice -n 10 python bench/label_efficiency.py --datasets isbi --points 5,full \\
        --minutes-per-run 0.5            # a quick end-to-end check (~2 min on 2 cores)

For each dataset (ISBI 2012, CamVid; read from ../shared/data, skipped politely when absent) and
each label budget of ``--points``, it trains the dataset's recipe from ``bench/accuracy.py``
(``RECIPES``, overridable with ``--set KEY=VALUE``) with ``TrainConfig.points = N``: every
training image keeps N randomly "clicked" pixels of each class present in its mask, drawn once
from ``(seed, image index)`` (``pixelwise.data.points``); ``full`` trains on the dense masks.

Fair comparison: the number of epochs is calibrated ONCE per dataset from ``--minutes-per-run``
(``bench/accuracy.py``'s ``_time_budget_epochs``: a few timed training steps and a validation
forward) and reused for every budget, with the same seed, so every budget gets the same model
initialisation, augmentation stream, epochs and learning-rate schedule; only the labels differ.
``--epochs N`` skips the calibration.

The loss stays normalised by labelled pixels: ``pixelwise.losses.pixel_cross_entropy`` sums the
per-pixel loss over the labelled pixels and divides by their count (ignored pixels count in
neither), so a crop with 3 clicked pixels takes a step of the same size as a dense one; a crop
that holds no clicked pixel has loss 0 and moves nothing but the optimiser's state.

Scoring is ``bench/accuracy.py``'s own, on dense validation masks at full label resolution, of
the run's ``best`` checkpoint (chosen by the training's per-epoch validation): ISBI 2012 on
fold ``--fold`` of the 5-fold split of the 30 labelled slices (24 train / 6 val, 512x512;
mIoU of membrane and cell, pixel accuracy = 1 - pixel error, Rand error); CamVid on val/
(101 images, 360x480, the model's input rescaled by the recipe's ``input_scale`` and its logits
upsampled back; mIoU over the 11 classes, global pixel accuracy). Next to each N it reports the
labelled pixels per training image (mean): ``sum over present classes of min(N, pixels of the
class)``, exactly what the point sampler keeps (before cropping and augmentation).

``--limit N`` keeps the first N training images (quick checks); training's own per-epoch
validation then sees the first N validation images too (the final score uses all of them).

Prints a table; ``--json`` writes every number (rewritten after each run, so an interrupted
sweep keeps what it finished), ``--plot`` a PNG: x = clicked points per class per image (log),
y = val mIoU, one line per dataset, its dense-mask ("full") score a dashed horizontal line.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/accuracy.py, imported below

import accuracy  # noqa: E402  (the lead's accuracy bench: recipes, calibration, scoring)
from accuracy import BENCH_ONLY, RECIPES, SHARED, _set, _time_budget_epochs  # noqa: E402

DATASETS = {"isbi": "isbi2012", "camvid": "camvid"}  # name -> folder under ../shared/data
ISBI_FOLDS = 5
FULL = None  # the "full" budget: dense masks (TrainConfig.points = 0)


def parse_points(text: str) -> list[int | None]:
    """``"1,5,20,full"`` -> ``[1, 5, 20, None]`` (None = dense masks); SystemExit if invalid."""
    budgets: list[int | None] = []
    for item in (s.strip().lower() for s in text.split(",")):
        if item in ("full", "dense"):
            value = FULL
        elif item.isdigit() and int(item) >= 1:
            value = int(item)
        else:
            raise SystemExit(f"--points {text}: {item!r} is not a positive integer or 'full'")
        if value in budgets:
            raise SystemExit(f"--points {text}: {item} is given twice")
        budgets.append(value)
    if not budgets:
        raise SystemExit("--points: give at least one budget, e.g. 1,5,20,100,full")
    return budgets


def _label(points: int | None) -> str:
    return "full" if points is FULL else str(points)


def class_pixel_counts(ds) -> np.ndarray:
    """``(images, C)`` int64: labelled pixels of each class in each mask of ``ds`` (masks only
    are decoded when ``ds`` is a file dataset)."""
    from pixelwise.data.io import read_mask

    c = ds.classes.num_classes
    rows = []
    for i in range(len(ds)):
        if hasattr(ds, "pairs") and getattr(ds, "valid_masks", None) is None:
            mask = read_mask(ds.pairs[i][1], ds.classes, ds.label_map)
        else:
            mask = ds[i].mask
        counts = np.bincount(np.asarray(mask).ravel(), minlength=256)[:c]
        rows.append(counts.astype(np.int64))
    return np.stack(rows) if rows else np.zeros((0, c), np.int64)


def labelled_pixels(counts: np.ndarray, points: int | None) -> float:
    """Mean labelled pixels per image when each keeps ``points`` pixels of each present class
    (``sample_points`` keeps ``min(points, n_c)`` of class c); all labelled ones for None."""
    if len(counts) == 0:
        return 0.0
    kept = counts if points is FULL else np.minimum(counts, points)
    return float(kept.sum(1).mean())


def _data(name: str, fold: int) -> tuple[Path, dict[str, Any], int]:
    """The dataset folder, its data args and the pixels of a validation image."""
    data = SHARED / DATASETS[name]
    if name == "isbi":
        return data, {"folds": ISBI_FOLDS, "fold": fold}, 512 * 512
    return data, {}, 360 * 480


def _score(name: str, run: Path, val_ds, scale: float) -> dict[str, Any]:
    """``bench/accuracy.py``'s scoring (best checkpoint; ISBI: last), plus a common
    ``pixel_accuracy`` and ``mean_iou``."""
    if name == "isbi":
        s = accuracy.score_isbi(run, val_ds, scale)
        s["pixel_accuracy"] = 1.0 - s["pixel_error"]
    else:
        s = accuracy.score_camvid(run, val_ds, scale)
        s["pixel_accuracy"] = s["global_accuracy"]
    return s


def run_dataset(
    name: str, args: argparse.Namespace, budgets: list[int | None], report
) -> dict[str, Any]:
    """Train and score every budget of ``budgets`` on dataset ``name``; ``report(result)`` is
    called after each run with the dataset's result so far."""
    from pixelwise.data import open_dataset
    from pixelwise.training import TrainConfig, train

    recipe = copy.deepcopy(RECIPES[name])
    for assignment in args.set:
        _set(recipe, assignment)
    scale = float(recipe.get("input_scale", 1.0))
    data, data_args, val_pixels = _data(name, args.fold)
    if args.limit:
        data_args["limit"] = args.limit
    train_ds = open_dataset(data, "train", **data_args)
    val_args = {k: v for k, v in data_args.items() if k != "limit"}
    val_ds = open_dataset(data, "val", **val_args)  # scored on every val image
    train_val = open_dataset(data, "val", **data_args)  # what training validates on
    counts = class_pixel_counts(train_ds)
    pixels_per_image = _mean_image_pixels(train_ds)

    cfg = {k: v for k, v in recipe.items() if k not in BENCH_ONLY}
    base = {
        **cfg,
        "data": str(data),
        "data_args": data_args,
        "overwrite": True,
        "seed": args.seed,
        "epochs": 1,
    }
    result: dict[str, Any] = {
        "dataset": name,
        "data": str(data),
        "data_args": data_args,
        "recipe": recipe,
        "seed": args.seed,
        "minutes_per_run": args.minutes_per_run,
        "train_images": len(train_ds),
        "val_images": len(val_ds),
        "pixels_per_image": pixels_per_image,
        "labelled_pixels_dense": labelled_pixels(counts, FULL),
        "runs": [],
    }
    if args.epochs:
        epochs, how = args.epochs, "given (--epochs)"
    else:
        probe = TrainConfig.from_dict({**base, "out": str(Path(args.runs) / name / "probe")})
        t0 = time.perf_counter()
        epochs = _time_budget_epochs(
            probe, args.minutes_per_run, len(train_val), int(val_pixels * scale * scale)
        )
        how = f"calibrated once for {args.minutes_per_run} min in {time.perf_counter() - t0:.0f} s"
    result.update(epochs=epochs, epochs_from=how)
    _say(f"[{name}] {len(train_ds)} training images, {epochs} epochs per run ({how})")

    for points in budgets:
        label = _label(points)
        out = Path(args.runs) / name / ("full" if points is FULL else f"points{points}")
        config = TrainConfig.from_dict(
            {**base, "out": str(out), "epochs": epochs, "points": points or 0}
        )
        t0 = time.perf_counter()
        summary = train(config, log=lambda m, lb=label: _say(f"  [{name} {lb}] {m}"))
        train_s = time.perf_counter() - t0
        scores = _score(name, out, val_ds, scale)
        labelled = labelled_pixels(counts, points)
        row = {
            "points": points,
            "label": label,
            "labelled_pixels_per_image": labelled,
            "labelled_fraction": labelled / pixels_per_image if pixels_per_image else math.nan,
            "mean_iou": scores["mean_iou"],
            "pixel_accuracy": scores["pixel_accuracy"],
            "epochs": summary["epochs"],
            "best_epoch": summary["best_epoch"],
            "train_s": round(train_s, 1),
            "run": str(out),
            "scores": scores,
        }
        result["runs"].append(row)
        _say(
            f"[{name} {label}] {labelled:.1f} labelled px/image: val mIoU {row['mean_iou']:.4f}, "
            f"pixel acc {row['pixel_accuracy']:.4f} ({train_s:.0f} s)"
        )
        report(result)
    return result


def _mean_image_pixels(ds) -> float:
    """Mean ``H * W`` of the images of ``ds`` (from the file headers when possible)."""
    from PIL import Image

    sizes = []
    for i in range(len(ds)):
        if hasattr(ds, "pairs"):
            with Image.open(ds.pairs[i][0]) as im:
                sizes.append(im.size[0] * im.size[1])
        else:
            sizes.append(int(np.asarray(ds[i].mask).size))
    return float(np.mean(sizes)) if sizes else 0.0


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def table(results: list[dict[str, Any]]) -> str:
    """The results as a fixed-width text table."""
    lines = [
        f"{'dataset':<8} {'points':>6} {'labelled px/img':>16} {'of pixels':>10} {'epochs':>6} "
        f"{'val mIoU':>8} {'pixel acc':>9} {'train s':>8}"
    ]
    for r in results:
        for run in r["runs"]:
            frac = run["labelled_fraction"]
            lines.append(
                f"{r['dataset']:<8} {run['label']:>6} {run['labelled_pixels_per_image']:>16.1f} "
                f"{100 * frac:>9.3f}% {run['epochs']:>6} {run['mean_iou']:>8.4f} "
                f"{run['pixel_accuracy']:>9.4f} {run['train_s']:>8.0f}"
            )
    if results:
        r = results[0]
        lines.append(
            f"seed {r['seed']}; epochs {r['epochs_from']}, the same for every budget of a "
            "dataset; points = clicked pixels per class per training image"
        )
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: str | Path) -> None:
    """x: clicked points per class per image (log), y: val mIoU; dense masks dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    from pixelwise.files import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    cmap = plt.get_cmap("tab10")
    xs_all = [run["points"] for r in results for run in r["runs"] if run["points"] is not FULL]
    for k, r in enumerate(results):
        color = cmap(k % 10)
        sparse = sorted(
            (run for run in r["runs"] if run["points"] is not FULL), key=lambda run: run["points"]
        )
        if sparse:
            xs = [run["points"] for run in sparse]
            ys = [run["mean_iou"] for run in sparse]
            ax.plot(xs, ys, "o-", color=color, label=f"{r['dataset']}: N points per class")
            for run in sparse:
                ax.annotate(
                    f"{run['labelled_pixels_per_image']:.0f} px",
                    (run["points"], run["mean_iou"]),
                    textcoords="offset points",
                    xytext=(0, -12),
                    ha="center",
                    fontsize=7,
                    color=color,
                )
        for run in r["runs"]:
            if run["points"] is FULL:
                ax.axhline(
                    run["mean_iou"],
                    color=color,
                    ls="--",
                    lw=1.2,
                    label=f"{r['dataset']}: full masks ({run['mean_iou']:.3f})",
                )
    ax.set_xscale("log")
    if xs_all:
        ax.set_xlim(min(xs_all) / 1.6, max(xs_all) * 1.6)
    else:
        ax.set_xlim(0.6, 200)
    if xs_all:
        ax.set_xticks(sorted(set(xs_all)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.margins(y=0.12)
    ax.set_xlabel("clicked points per class per training image (log)")
    ax.set_ylabel("val mean IoU")
    epochs = ", ".join(f"{r['dataset']} {r['epochs']}" for r in results if "epochs" in r)
    ax.set_title(f"label efficiency: same seed and epochs for every budget ({epochs})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    """The options (checked in :func:`main`)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--datasets",
        default="isbi,camvid",
        help=f"comma-separated, of {', '.join(DATASETS)} (default: both)",
    )
    p.add_argument(
        "--points",
        default="1,5,20,100,full",
        help="label budgets: clicked pixels per class per image, 'full' = dense masks",
    )
    p.add_argument(
        "--minutes-per-run",
        type=float,
        default=10.0,
        help="CPU time budget of each training run (epochs calibrated once from it)",
    )
    p.add_argument("--epochs", type=int, default=None, help="skip the calibration: N epochs")
    p.add_argument(
        "--limit", type=int, default=None, help="keep the first N training images (quick checks)"
    )
    p.add_argument("--fold", type=int, default=0, help=f"ISBI: fold of the {ISBI_FOLDS}-fold split")
    p.add_argument("--seed", type=int, default=0, help="one seed for every run")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe entry of bench/accuracy.py for every run (JSON value)",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--runs",
        default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "pw-label-eff"),
        help="where the run directories go",
    )
    p.add_argument("--json", help="write the results here (JSON)")
    p.add_argument("--plot", help="write the mIoU-vs-points plot here (PNG)")
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="JSON",
        help="also show the datasets of an earlier --json in the table and plot (repeatable)",
    )
    return p.parse_args()


def main() -> None:
    args = parse_args()
    names = [s.strip() for s in args.datasets.split(",") if s.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown or not names:
        raise SystemExit(f"--datasets {args.datasets}: choose from {', '.join(DATASETS)}")
    budgets = parse_points(args.points)
    if args.minutes_per_run <= 0:
        raise SystemExit("--minutes-per-run: must be positive")
    if args.epochs is not None and args.epochs < 1:
        raise SystemExit("--epochs: must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise SystemExit("--limit: must be at least 1")
    if not 0 <= args.fold < ISBI_FOLDS:
        raise SystemExit(f"--fold: must be in 0..{ISBI_FOLDS - 1}")
    present = [n for n in names if (SHARED / DATASETS[n]).is_dir()]
    for n in names:
        if n not in present:
            _say(f"{SHARED / DATASETS[n]}: not here; skipping {n}")
    if not present:
        print(f"{SHARED}: none of the datasets ({', '.join(names)}) is here; nothing to measure")
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    from pixelwise.errors import PixelwiseError
    from pixelwise.files import write_json

    header = {
        "bench": "label_efficiency",
        "points": [_label(b) for b in budgets],
        "minutes_per_run": args.minutes_per_run,
        "seed": args.seed,
        "limit": args.limit,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    done: list[dict[str, Any]] = []

    def report(current: dict[str, Any]) -> None:
        if args.json:
            write_json(args.json, {**header, "datasets": [*done, current]})

    t0 = time.perf_counter()
    try:
        for name in present:
            done.append(run_dataset(name, args, budgets, report))
    except PixelwiseError as err:
        raise SystemExit(str(err)) from None
    header["total_s"] = round(time.perf_counter() - t0, 1)
    earlier = [d for path in args.include for d in json.loads(Path(path).read_text())["datasets"]]
    print(table([*earlier, *done]))
    if args.json:
        write_json(args.json, {**header, "datasets": done})
        print(f"wrote {args.json}")
    if args.plot:
        plot([*earlier, *done], args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
