"""The dense CRF on trained runs: mIoU, boundary F-score and time per image, without and with it.

    python bench/crf.py --case camvid ../runs/camvid_plan60 ../shared/data/camvid val
                        --case drive ../runs/drive_crf ../shared/data/drive test
                        [--grid camvid ../runs/camvid_plan60 ../shared/data/camvid train]
                        [--grid-images 15] [--grid-set KEY=V1,V2,...] [--learn STEPS]
                        [--limit N] [--threads 1] [--pictures docs/images] [--band 3]
                        [--crf-iterations N] [--crf-smooth W,T] [--crf-appearance W,T,C]
                        [--out bench/results]

``--case NAME RUN DATA SPLIT`` (repeatable): every image of DATA's SPLIT goes through RUN's
network once (whole image, no TTA, as ``pixelwise evaluate``); its prediction is scored as it
is and after the CRF (``pixelwise.crf.dense_crf``, one CPU thread, timed alone: wall clock and
the thread's CPU time, which the load of a shared machine inflates less). Scores, from one
confusion matrix per variant over the split:

- mean IoU (``pixelwise.metrics``, absent classes left out);
- boundary F-score (Csurka et al. 2013, "BF"): per image and class, the precision and recall of
  the predicted boundary pixels against the true ones with a tolerance of ``--band`` pixels
  (Euclidean); F per class, averaged over the classes present in the image (truth or
  prediction), then over the images. A boundary pixel is a pixel with a 4-neighbour of another
  class; pixels the truth ignores are neither boundary nor neighbour;
- trimap mean IoU (DeepLab's "band around the object boundaries"): the mean IoU of the pixels
  within ``--band`` pixels of a true boundary.

``--grid NAME RUN DATA SPLIT`` picks the CRF's parameters by mean IoU on ``--grid-images``
images of that split (evenly spaced; the axes: ``GRID``, changed by ``--grid-set``; the other
parameters from the --crf-* options or their defaults), before the cases: use a split the cases
do not score (CamVid train for CamVid val). The cases then run with the best (the --crf-*
options given win). ``--learn STEPS`` then fits, for STEPS random crops of the grid's split
(or ``--learn-on``'s), the network frozen: a :class:`pixelwise.crf.CRFLayer` (kernel weights and
label compatibility, from those parameters), the same with its kernel weights only, and the
control: a learned linear map of the logits without any CRF (``--learn-kinds``); each is scored
too on the cases of that run. Writes
``OUT/crf_NAME.json`` per case (``crf_grid_NAME.json``, ``crf_layer.json``) and prints a table;
``--pictures DIR`` writes ``crf_NAME_*.png`` (image | network | network + CRF | truth, half size)
for the images the CRF helped and hurt most.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pixelwise.crf import CRFLayer, CRFParams, dense_crf, parse_crf_options  # noqa: E402
from pixelwise.data import open_dataset  # noqa: E402
from pixelwise.metrics import confusion_matrix, scores  # noqa: E402
from pixelwise.predict import Segmenter  # noqa: E402

GRID = {  # appearance kernel (the smoothness kernel stays Krähenbühl's and DeepLab's 3, 3)
    "appearance_weight": (1.0, 3.0, 5.0, 10.0),
    "appearance_xy": (20.0, 50.0, 80.0),
    "appearance_color": (3.0, 5.0, 10.0),
}


# --------------------------------------------------------------------------------------------
# boundary scores


def _edges(labels: np.ndarray, ignore: int) -> np.ndarray:
    """Pixels with a 4-neighbour of another class (neither of them ``ignore``)."""
    out = np.zeros(labels.shape, bool)
    v = (labels[1:] != labels[:-1]) & (labels[1:] != ignore) & (labels[:-1] != ignore)
    out[1:] |= v
    out[:-1] |= v
    h = (labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] != ignore) & (labels[:, :-1] != ignore)
    out[:, 1:] |= h
    out[:, :-1] |= h
    return out


def boundary_f(pred: np.ndarray, truth: np.ndarray, num_classes: int, ignore: int, band: float):
    """Mean over the classes present of the per-class boundary F-score (tolerance ``band``)."""
    pred = np.where(truth == ignore, ignore, pred)
    bp_all, bt_all = _edges(pred, ignore), _edges(truth, ignore)
    fs = []
    for c in range(num_classes):
        in_p, in_t = pred == c, truth == c
        if not in_p.any() and not in_t.any():
            continue
        bp, bt = bp_all & in_p, bt_all & in_t
        if not bp.any() and not bt.any():
            continue  # the class fills the valid region: no boundary to score
        if not bp.any() or not bt.any():
            fs.append(0.0)
            continue
        near_t = ndimage.distance_transform_edt(~bt) <= band
        near_p = ndimage.distance_transform_edt(~bp) <= band
        precision = float((bp & near_t).sum() / bp.sum())
        recall = float((bt & near_p).sum() / bt.sum())
        fs.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return float(np.mean(fs)) if fs else float("nan")


def trimap(truth: np.ndarray, ignore: int, band: float) -> np.ndarray:
    """Pixels within ``band`` of a true boundary."""
    edges = _edges(truth, ignore)
    if not edges.any():
        return edges
    return ndimage.distance_transform_edt(~edges) <= band


# --------------------------------------------------------------------------------------------
# one pass over a split


def _timed_crf(logits: torch.Tensor, image: np.ndarray, params: CRFParams):
    t0, c0 = time.perf_counter(), time.thread_time()
    out = dense_crf(logits, image, params)
    return out, time.perf_counter() - t0, time.thread_time() - c0


def network_scores(seg: Segmenter, dataset, indices) -> list[tuple[np.ndarray, np.ndarray, Any]]:
    """(image, truth, logits) of each sample: the network runs once per image."""
    out = []
    for i in indices:
        s = dataset[i]
        out.append((s.image, s.mask, seg.logits(s.image)))
    return out


def score_variants(
    samples, classes, params: CRFParams | None, band: float, keep_predictions: bool = False
) -> dict[str, Any]:
    """Scores of the network alone and (``params``) with the CRF, over ``samples``."""
    k, ignore = classes.num_classes, classes.ignore_index
    cms = {"fcn": torch.zeros(k, k, dtype=torch.int64), "crf": torch.zeros(k, k, dtype=torch.int64)}
    tri = {v: torch.zeros(k, k, dtype=torch.int64) for v in cms}
    bf: dict[str, list[float]] = {"fcn": [], "crf": []}
    wall, cpu, per_image, kept = [], [], [], []
    for image, truth, logits in samples:
        preds = {"fcn": logits.argmax(0)}
        if params is not None:
            refined, w, c = _timed_crf(logits, image, params)
            preds["crf"] = refined.argmax(0)
            wall.append(w)
            cpu.append(c)
        y = torch.from_numpy(truth.astype(np.int64))
        band_mask = torch.from_numpy(trimap(truth, ignore, band))
        row = {}
        for name, pred in preds.items():
            cm = confusion_matrix(pred, y, k, ignore)
            cms[name] += cm
            tri[name] += confusion_matrix(pred[band_mask], y[band_mask], k, ignore)
            f = boundary_f(pred.numpy().astype(np.int64), truth.astype(np.int64), k, ignore, band)
            if not np.isnan(f):
                bf[name].append(f)
            row[name] = scores(cm)["mean_iou"]
        per_image.append(row)
        if keep_predictions:
            kept.append({n: p.to(torch.uint8).numpy() for n, p in preds.items()})
    variants = ("fcn", "crf") if params is not None else ("fcn",)
    result: dict[str, Any] = {"images": len(samples)}
    for name in variants:
        s = scores(cms[name])
        result[name] = {
            "mean_iou": s["mean_iou"],
            "pixel_accuracy": s["pixel_accuracy"],
            "per_class_iou": s["iou"],
            "boundary_f": float(np.mean(bf[name])) if bf[name] else float("nan"),
            "trimap_mean_iou": scores(tri[name])["mean_iou"],
        }
    if wall:
        result["crf_ms"] = {
            "wall_median": 1000 * statistics.median(wall),
            "wall_mean": 1000 * statistics.fmean(wall),
            "wall_max": 1000 * max(wall),
            "cpu_median": 1000 * statistics.median(cpu),
            "cpu_mean": 1000 * statistics.fmean(cpu),
        }
    result["per_image_mean_iou"] = per_image
    if keep_predictions:
        result["_predictions"] = kept
    return result


# --------------------------------------------------------------------------------------------
# grid, cases, pictures, table


def _open(run: str, data: str, split: str):
    seg = Segmenter.from_run(run, device="cpu")
    cfg = json.loads((Path(run) / "config.json").read_text()).get("train", {})
    kw: dict[str, Any] = {"classes": seg.classes}
    if str(cfg.get("data")) == str(data) and isinstance(cfg.get("val_fraction"), int | float):
        kw["val_fraction"] = cfg["val_fraction"]  # the run's own seeded val split
    return seg, open_dataset(data, split, channels=seg.in_channels, **kw)


def run_grid(name, run, data, split, images: int, band: float, base: CRFParams, grid) -> dict:
    seg, ds = _open(run, data, split)
    idx = np.linspace(0, len(ds) - 1, min(images, len(ds))).round().astype(int).tolist()
    samples = network_scores(seg, ds, idx)
    fcn = score_variants(samples, seg.classes, None, band)["fcn"]
    print(f"  network alone: mIoU {fcn['mean_iou']:.4f} BF {fcn['boundary_f']:.4f}", flush=True)
    rows = []
    for values in itertools.product(*grid.values()):
        params = CRFParams(**{**base.to_dict(), **dict(zip(grid, values, strict=True))})
        r = score_variants(samples, seg.classes, params, band)
        rows.append(
            {
                "params": params.to_dict(),
                "mean_iou": r["crf"]["mean_iou"],
                "boundary_f": r["crf"]["boundary_f"],
                "ms": r["crf_ms"]["wall_median"],
            }
        )
        print(
            f"  grid {values}: mIoU {r['crf']['mean_iou']:.4f} BF {r['crf']['boundary_f']:.4f}"
            f" ({r['crf_ms']['wall_median']:.0f} ms)",
            flush=True,
        )
    best = max(rows, key=lambda r: r["mean_iou"])
    return {
        "name": name,
        "run": str(run),
        "data": str(data),
        "split": split,
        "images": idx,
        "fcn": fcn,
        "axes": {k: list(v) for k, v in grid.items()},
        "grid": rows,
        "best": best,
    }


class Recalibration(torch.nn.Module):
    """The control for the CRF layer: a learned ``(K, K)`` map and bias on the logits, no CRF
    (what a compatibility matrix could buy by re-weighting the classes alone)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.matrix = torch.nn.Parameter(torch.eye(num_classes))
        self.bias = torch.nn.Parameter(torch.zeros(num_classes))

    def forward(self, logits: torch.Tensor, image: np.ndarray) -> torch.Tensor:
        out = torch.einsum("kl,khw->lhw", self.matrix, logits) + self.bias[:, None, None]
        return torch.log_softmax(out, 0)


def _learnable(kind: str, num_classes: int, params: CRFParams) -> torch.nn.Module:
    if kind == "recalibration":
        return Recalibration(num_classes)
    layer = CRFLayer(num_classes, params)
    if kind == "weights":  # the kernel weights only: Potts stays
        layer.compat.requires_grad_(False)
    return layer


def learn_layer(
    run, data, split, params: CRFParams, steps: int, crop: int, kind: str = "layer", seed: int = 0
):
    """Fit, on random crops of ``split`` with the network frozen (its logits computed once per
    image): ``layer``, a :class:`CRFLayer`'s kernel weights and compatibility starting from
    ``params``; ``weights``, its kernel weights only; ``recalibration``, the control."""
    seg, ds = _open(run, data, split)
    layer = _learnable(kind, seg.classes.num_classes, params)
    opt = torch.optim.Adam([p for p in layer.parameters() if p.requires_grad], lr=0.05)
    rng = np.random.default_rng(seed)
    cache: dict[int, tuple] = {}
    losses = []
    t = time.perf_counter()
    for step in range(steps):
        i = int(rng.integers(len(ds)))
        if i not in cache:
            s = ds[i]
            cache[i] = (s.image, s.mask, seg.logits(s.image))
        image, truth, logits = cache[i]
        h, w = truth.shape
        y0, x0 = int(rng.integers(h - min(crop, h) + 1)), int(rng.integers(w - min(crop, w) + 1))
        win = (slice(y0, y0 + crop), slice(x0, x0 + crop))
        y = torch.from_numpy(truth[win].astype(np.int64))
        if (y != seg.classes.ignore_index).sum() == 0:
            continue
        log_q = layer(logits[:, win[0], win[1]], image[win])
        loss = torch.nn.functional.nll_loss(
            log_q.unsqueeze(0), y.unsqueeze(0), ignore_index=seg.classes.ignore_index
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 10 == 0:
            weights = layer.weights() if isinstance(layer, CRFLayer) else ""
            print(
                f"  {kind} step {step + 1}: loss {np.mean(losses[-10:]):.4f} {weights}",
                flush=True,
            )
    return layer, {
        "steps": steps,
        "crop": crop,
        "seconds": time.perf_counter() - t,
        "loss_first10": float(np.mean(losses[:10])),
        "loss_last10": float(np.mean(losses[-10:])),
        "kind": kind,
        "parameters": {n: p.detach().tolist() for n, p in layer.named_parameters()},
    }


def score_layer(layer: torch.nn.Module, samples, classes, band: float) -> dict[str, Any]:
    """Scores of the learned layer's refinement over ``samples``."""
    k, ignore = classes.num_classes, classes.ignore_index
    cm, tri = torch.zeros(k, k, dtype=torch.int64), torch.zeros(k, k, dtype=torch.int64)
    bf, wall = [], []
    with torch.no_grad():
        for image, truth, logits in samples:
            t = time.perf_counter()
            pred = layer(logits, image).argmax(0)
            wall.append(time.perf_counter() - t)
            y = torch.from_numpy(truth.astype(np.int64))
            band_mask = torch.from_numpy(trimap(truth, ignore, band))
            cm += confusion_matrix(pred, y, k, ignore)
            tri += confusion_matrix(pred[band_mask], y[band_mask], k, ignore)
            f = boundary_f(pred.numpy().astype(np.int64), truth.astype(np.int64), k, ignore, band)
            if not np.isnan(f):
                bf.append(f)
    return {
        "mean_iou": scores(cm)["mean_iou"],
        "boundary_f": float(np.mean(bf)),
        "trimap_mean_iou": scores(tri)["mean_iou"],
        "ms_median": 1000 * statistics.median(wall),
    }


def picture(path: Path, image, fcn, crf, truth, classes) -> None:
    from PIL import Image

    from pixelwise.plots import colorize

    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
    panels = [rgb, colorize(fcn, classes), colorize(crf, classes), colorize(truth, classes)]
    h, w = rgb.shape[:2]
    size = (w // 2, h // 2)
    small = [np.asarray(Image.fromarray(p).resize(size, Image.Resampling.NEAREST)) for p in panels]
    gap = np.full((h // 2, 4, 3), 255, np.uint8)
    strip = np.concatenate([x for p in small for x in (p, gap)][:-1], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).save(path, optimize=True)


def run_case(name, run, data, split, params, band, limit, pictures, layers=None) -> dict:
    seg, ds = _open(run, data, split)
    idx = list(range(len(ds) if limit is None else min(limit, len(ds))))
    t = time.perf_counter()
    samples = network_scores(seg, ds, idx)
    net_s = time.perf_counter() - t
    r = score_variants(samples, seg.classes, params, band, keep_predictions=pictures is not None)
    kept = r.pop("_predictions", None)
    gains = [row["crf"] - row["fcn"] for row in r["per_image_mean_iou"]]
    if pictures is not None and kept:
        order = np.argsort(gains)
        for tag, i in (("best", int(order[-1])), ("worst", int(order[0]))):
            image, truth, _ = samples[i]
            picture(
                Path(pictures) / f"crf_{name}_{tag}.png",
                image,
                kept[i]["fcn"],
                kept[i]["crf"],
                truth,
                seg.classes,
            )
            r[f"picture_{tag}"] = {"index": idx[i], "gain_mean_iou": gains[i]}
    for kind, layer in (layers or {}).items():
        r.setdefault("learned", {})[kind] = score_layer(layer, samples, seg.classes, band)
    h, w = samples[0][0].shape[:2]
    return {
        "name": name,
        "run": str(run),
        "data": str(data),
        "split": split,
        "image_size": [w, h],
        "channels": int(samples[0][0].shape[2]),
        "classes": list(seg.classes.names),
        "params": params.to_dict(),
        "band_px": band,
        "network_s_per_image": net_s / len(samples),
        "images_improved": sum(g > 0 for g in gains),
        "images_worse": sum(g < 0 for g in gains),
        **r,
    }


def table(results: list[dict]) -> str:
    head = (
        f"{'case':<10} {'images':>6} {'size':>9}  {'mIoU':>6} {'+CRF':>6} {'diff':>6}  "
        f"{'BF':>6} {'+CRF':>6}  {'trimap':>6} {'+CRF':>6}  {'CRF ms':>7} {'cpu ms':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        a, b, ms = r["fcn"], r["crf"], r["crf_ms"]
        size = f"{r['image_size'][0]}x{r['image_size'][1]}"
        lines.append(
            f"{r['name']:<10} {r['images']:>6} {size:>9}  {100 * a['mean_iou']:6.2f} "
            f"{100 * b['mean_iou']:6.2f} {100 * (b['mean_iou'] - a['mean_iou']):+6.2f}  "
            f"{100 * a['boundary_f']:6.2f} {100 * b['boundary_f']:6.2f}  "
            f"{100 * a['trimap_mean_iou']:6.2f} {100 * b['trimap_mean_iou']:6.2f}  "
            f"{ms['wall_median']:7.0f} {ms['cpu_median']:7.0f}"
        )
        for kind, c in r.get("learned", {}).items():
            lines.append(
                f"{'  ' + kind:<17} {'':>9}  {'':>6} {100 * c['mean_iou']:6.2f} "
                f"{100 * (c['mean_iou'] - a['mean_iou']):+6.2f}  {'':>6} "
                f"{100 * c['boundary_f']:6.2f}  {'':>6} {100 * c['trimap_mean_iou']:6.2f}  "
                f"{c['ms_median']:7.0f}"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--case", nargs=4, action="append", default=[], metavar=("NAME", "RUN", "DATA", "SPLIT")
    )
    ap.add_argument("--grid", nargs=4, metavar=("NAME", "RUN", "DATA", "SPLIT"))
    ap.add_argument("--grid-images", type=int, default=15)
    ap.add_argument(
        "--grid-set",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="replace or add a grid axis (a CRFParams field, e.g. smooth_weight=0,1,3)",
    )
    ap.add_argument("--limit", type=int, help="first N images of each case (default: all)")
    ap.add_argument("--band", type=float, default=3.0, help="boundary tolerance / trimap, px")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--crf-iterations", type=int)
    ap.add_argument("--crf-smooth")
    ap.add_argument("--crf-appearance")
    ap.add_argument("--pictures", help="folder for the pictures (default: none)")
    ap.add_argument(
        "--learn",
        type=int,
        metavar="STEPS",
        help="also fit a CRFLayer (weights + compatibility) for STEPS crops of the --grid split "
        "and score it on the cases of the same run",
    )
    ap.add_argument("--learn-crop", type=int, default=192)
    ap.add_argument(
        "--learn-kinds",
        default="layer,weights,recalibration",
        help="layer (weights + compatibility), weights (kernel weights only), recalibration "
        "(the control: a learned map of the logits, no CRF)",
    )
    ap.add_argument(
        "--learn-on",
        nargs=3,
        metavar=("RUN", "DATA", "SPLIT"),
        help="where --learn fits (default: the --grid's run, data and split)",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "load_average": os.getloadavg(),
    }
    params = parse_crf_options(args.crf_iterations, args.crf_smooth, args.crf_appearance)
    if args.grid:
        print(f"grid on {args.grid[0]} ({args.grid[3]}, {args.grid_images} images)", flush=True)
        grid = dict(GRID)
        for item in args.grid_set:
            key, _, values = item.partition("=")
            kind = int if key == "iterations" else float
            grid[key] = tuple(kind(v) for v in values.split(","))
        g = run_grid(*args.grid, args.grid_images, args.band, params, grid)
        g["env"] = env
        (out / f"crf_grid_{g['name']}.json").write_text(json.dumps(g, indent=1))
        given = {
            "iterations": args.crf_iterations is not None,
            "smooth_weight": args.crf_smooth is not None,
            "smooth_xy": args.crf_smooth is not None,
            "appearance_weight": args.crf_appearance is not None,
            "appearance_xy": args.crf_appearance is not None,
            "appearance_color": args.crf_appearance is not None,
        }
        best = {k: g["best"]["params"][k] for k in grid if not given[k]}
        params = CRFParams(**{**params.to_dict(), **best})
        print(f"best: {g['best']}", flush=True)
    layers, layer_run = {}, None
    learn_on = args.learn_on or (args.grid[1:] if args.grid else None)
    if args.learn and learn_on:
        layer_run, info = learn_on[0], {}
        for kind in args.learn_kinds.split(","):
            print(f"learning {kind}: {args.learn} steps on {learn_on[1]} ({learn_on[2]})")
            layers[kind], info[kind] = learn_layer(
                *learn_on, params, args.learn, args.learn_crop, kind
            )
        (out / "crf_layer.json").write_text(json.dumps({**info, "params": params.to_dict()}))
    results = []
    for name, run, data, split in args.case:
        print(f"{name}: {run} on {data} ({split}) with {params}", flush=True)
        lay = layers if run == layer_run else None
        r = run_case(name, run, data, split, params, args.band, args.limit, args.pictures, lay)
        r["env"] = {**env, "load_average_after": os.getloadavg()}
        (out / f"crf_{name}.json").write_text(json.dumps(r, indent=1))
        results.append(r)
        print(table([r]), flush=True)
    if results:
        print()
        print(table(results))


if __name__ == "__main__":
    main()
