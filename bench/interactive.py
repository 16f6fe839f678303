"""Interactive labeling (issue 16): a simulated annotator clicks, the live model learns.

    nice -n 10 python bench/interactive.py --datasets isbi,drive,digits --threads 1
    nice -n 10 python bench/interactive.py --datasets isbi --stroke 40 --radius 1.5 --threads 1
    nice -n 10 python bench/interactive.py --latency --threads 1
    nice -n 10 python bench/interactive.py --screenshot docs/images/label.png --threads 1

**Protocol** (that of interactive segmentation papers, for semantic labels): ``--images`` images
of a dataset form the pool the annotator labels; each round, in every pool image, the annotator
clicks once at the centre (distance-transform maximum, the image border counting as boundary) of
the largest connected region that the current model predicts wrongly, split by true class and
leaving out the pixels already labelled (before any model exists every pixel is wrong). A click
labels a disc of radius ``--radius`` px (3) with the true class of its centre, restricted to
the pixels of that class (the annotator does not paint over the boundary); ``--where random``
clicks a wrong pixel drawn at random instead, an annotator who clicks any error, and ``--where
anywhere`` an unlabelled pixel drawn at random, right or wrong. The clicks go through
:class:`pixelwise.label.project.Project` exactly as the page's strokes do, and between rounds
:class:`pixelwise.label.trainer.Trainer` (the page's trainer, its default model: a
``unet_same`` of depth 3 and 8 base channels with ilastik's filter bank at its input, AdamW,
steps of 16 crops of 64 px around labelled pixels, masked cross-entropy plus the CRF loss)
trains for
``--round-seconds`` of CPU time (``time.thread_time`` of the one torch thread; or, with
``--round-steps N``, exactly N steps, so that a seed repeats whatever the machine's load) and
publishes its checkpoint. After each round the published model is scored
on held-out images (mean IoU over the classes; not counted in the wall time).

**Baselines**, on the same pool and held-out images:

- *random forest* (ilastik's pixel classifier): a scikit-learn ``RandomForestClassifier`` of 100
  trees on ilastik's filter bank computed with ``scipy.ndimage`` for each channel: Gaussian
  smoothing, Laplacian of Gaussian, Gaussian gradient magnitude, difference of Gaussians
  (sigma and 0.66 sigma), structure-tensor eigenvalues (inner scale sigma, outer 0.5 sigma) and
  Hessian-of-Gaussian eigenvalues, at scales 0.7, 1, 1.6, 3.5, 5 and 10 px (48 features per
  channel), trained on exactly the pixels the clicks labelled, at ``--rf-at`` clicks per image;
- *fully supervised*: the same trainer and model on the dense masks of the pool images, trained
  for the same total CPU time (``--clicks`` x ``--round-seconds``; or as many steps as the
  rounds together with ``--round-steps``), scored along the way;
- *the forest in its own loop* (``--forest-loop --seed K``, added to that seed's JSON): ilastik's
  workflow, the same annotator clicking where the forest is wrong and the forest refitted after
  each round. The clicks follow the model, so "on the same clicks" compares learners on the
  clicks pixelwise chose, and this compares the two loops a user would run.

Datasets (from ``../shared/data``, skipped when absent; the digits are embedded): ISBI 2012
(pool: slices 0-9, held out: 20-24; membrane / cell), DRIVE (pool: training 21-30, held out:
test 01-05; background / vessel, pixels outside the field of view ignored), digits scenes (pool:
10 training scenes 96-128 px, held out: 10 validation scenes; 11 classes).
STARE and PH2 (``--datasets stare,ph2``, not run by default): the first ten training images by
name, the first 20 test images (STARE has 10); vessel / lesion against background. No setting
of the live model was chosen on them, so they say how those settings carry to data they were
not tuned on. ``--datasets FOLDER`` (any layout ``pixelwise train --data`` reads: generic,
VOC, CamVid, ISBI, DRIVE, Cityscapes): your own data, the first ``--images`` images of its
"train" split as the pool and the first 20 of its "test" split (else "val") held out, with its
own classes and ignored pixels; its JSON is named after the folder.

``--stroke L``: the annotator draws strokes instead of clicks: each round, in each image, the
``L`` pixels of the largest wrong region's skeleton nearest (along it) to the region's centre,
painted ``--radius`` px wide on its class, the way a person strokes along a missed membrane or
vessel (results in ``OUT/strokes/``, never tabled with the clicks).

``--after S``: after the last round, ``S`` more CPU seconds of training on the same clicks,
scored every ``--after-every`` seconds (``pixelwise_after`` in the JSON): is the model short of
training time or of labels?

With two classes the last model is also scored with the best constant offset of the first
class's log-probability (-3 to 3, steps of 0.25; ``pixelwise_best_offset`` in the JSON). It is
chosen on the held-out images, an oracle, not a setting: is the gap a threshold?

``--latency``: the page's server (uvicorn, real HTTP) with the trainer running on ISBI, strokes
sent at a person's pace: the stroke-to-saved latency (request sent to atomic save answered), the
interval between new predictions arriving at a polling page and the time one such prediction of
the open image takes to fetch, p50 / p95.

``--screenshot PNG``: the page in chromium on ISBI slices, strokes drawn with the mouse on the
open image and a few on others, the live model trained for ``--shot-seconds``, then captured.

Outputs: ``bench/results/interactive_<dataset>_seed<seed>.json`` with a picture beside it (the
first held-out image, its truth, the live model's and the forest's labels after the last
round: ``interactive_<dataset>_seed<seed>.png``), ``interactive_curves.png`` (and
a copy in ``docs/images/label_curves.png``), ``interactive_latency.json``; the table on stdout,
with every seed measured so far and their mean. One run is not a measurement: the clicks follow
the model, so each seed has its own clicks and the forest's score moves as much as ours; run
seeds in parallel (``--seed 1``, ``--seed 2``, one thread each) and ``--report`` to table them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pixelwise.data.io import read_image, read_mask, write_image  # noqa: E402
from pixelwise.errors import ConfigError, PixelwiseError  # noqa: E402
from pixelwise.label.project import ERASE, Project  # noqa: E402
from pixelwise.label.trainer import Trainer, TrainerOptions  # noqa: E402
from pixelwise.metrics import confusion_matrix, scores  # noqa: E402
from pixelwise.training.config import parse_key_values  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
SCALES = (0.7, 1.0, 1.6, 3.5, 5.0, 10.0)


# ---- data -----------------------------------------------------------------------------------


def load_isbi(n_pool: int) -> dict[str, Any] | None:
    root = SHARED / "isbi2012" / "train"
    if not root.is_dir():
        return None

    def sample(i: int):
        image = read_image(root / "image" / f"{i}.png", channels=1)
        gt = (read_mask(root / "label" / f"{i}.png") > 127).astype(np.uint8)  # 1 = cell
        return f"isbi{i:02d}", image, gt

    return {"name": "isbi", "classes": ["membrane", "cell"],
            "pool": [sample(i) for i in range(n_pool)],
            "heldout": [sample(i) for i in range(20, 25)]}  # fmt: skip


def load_drive(n_pool: int) -> dict[str, Any] | None:
    root = SHARED / "drive"
    if not root.is_dir():
        return None

    def sample(split: str, stem: str, tag: str):
        image = read_image(root / split / "images" / f"{stem}_{tag}.tif", channels=3)
        vessel = read_mask(root / split / "1st_manual" / f"{stem}_manual1.gif") > 127
        fov = read_mask(root / split / "mask" / f"{stem}_{tag}_mask.gif") > 127
        gt = np.where(fov, vessel.astype(np.uint8), ERASE).astype(np.uint8)
        return f"drive{stem}", image, gt

    pool = [sample("training", str(i), "training") for i in range(21, 21 + n_pool)]
    held = [sample("test", f"{i:02d}", "test") for i in range(1, 6)]
    return {"name": "drive", "classes": ["background", "vessel"], "pool": pool, "heldout": held}


def load_digits(n_pool: int) -> dict[str, Any]:
    from pixelwise.data.digits import DIGITS_CLASSES, DigitsScenes

    def scenes(split: str, n: int):
        ds = DigitsScenes(split, seed=0, num_images=n, min_size=96, max_size=128)
        return [(f"digits_{split}{i:02d}", s.image, s.mask) for i, s in enumerate(ds)]

    return {"name": "digits", "classes": list(DIGITS_CLASSES.names),
            "pool": scenes("train", n_pool), "heldout": scenes("val", 10)}  # fmt: skip


def load_folders(name: str, classes: list[str]):
    """A dataset in the generic layout (``train/`` and ``test/``, each ``images/`` + ``masks/``
    of class indices): the first ``n_pool`` training images by name form the pool, the first
    20 test images (all, when fewer) are held out. For the datasets never used to choose the
    live model's settings (STARE, PH2)."""

    def load(n_pool: int) -> dict[str, Any] | None:
        root = SHARED / name
        if not (root / "train" / "images").is_dir():
            return None

        def split(part: str, n: int):
            paths = sorted((root / part / "images").glob("*.png"))[:n]
            return [(f"{name}_{p.stem}", read_image(p, channels=3),
                     read_mask(root / part / "masks" / p.name)) for p in paths]  # fmt: skip

        return {"name": name, "classes": classes, "pool": split("train", n_pool),
                "heldout": split("test", 20)}  # fmt: skip

    return load


LOADERS = {"isbi": load_isbi, "drive": load_drive, "digits": load_digits,
           "stare": load_folders("stare", ["background", "vessel"]),
           "ph2": load_folders("ph2", ["background", "lesion"])}  # fmt: skip


def load_any(folder: Path, name: str):
    """Any dataset folder that ``pixelwise train --data`` reads (every layout it detects): the
    pool is the first ``n_pool`` images of its "train" split, the held-out images the first 20
    of its "test" split, else of its "val" split. Its classes and ignored pixels are the
    dataset's own. For data of your own, never seen by the live model's settings."""
    from pixelwise.data import open_dataset
    from pixelwise.data.layouts import make_layout

    def load(n_pool: int) -> dict[str, Any]:
        splits = make_layout(folder, None).splits()
        held = next((part for part in ("test", "val") if part in splits), None)
        if held is None:
            raise ConfigError(f"--datasets {folder}: no 'test' or 'val' split to hold out")

        def samples(split: str, n: int):
            ds = open_dataset(folder, split, limit=n)
            return ds.classes, [
                (f"{name}_{s.name}", s.image, s.mask) for s in map(ds.__getitem__, range(len(ds)))
            ]

        classes, pool = samples("train", n_pool)
        return {"name": name, "classes": list(classes.names), "pool": pool,
                "heldout": samples(held, 20)[1]}  # fmt: skip

    return load


def loader(name: str):
    """A named dataset of the shared data, or a dataset folder (``load_any``)."""
    if name in LOADERS:
        return LOADERS[name]
    return load_any(Path(name).expanduser().resolve(), dataset_name(name))


def dataset_name(name: str) -> str:
    """The name in the JSON files: a named dataset's, or the folder's (with "-folder" when
    that is a named dataset's, so that the two never share a file)."""
    if name in LOADERS:
        return name
    folder = Path(name).expanduser().resolve().name
    return f"{folder}-folder" if folder in LOADERS else folder


# ---- the simulated annotator ----------------------------------------------------------------


def next_click(gt: np.ndarray, pred: np.ndarray | None, labelled: np.ndarray, rng=None):
    """(y, x, region) of the centre of the largest wrongly predicted region of one true class
    (and that region's mask), or None when every unlabelled pixel is right. With a numpy
    ``rng`` (``--where random``): a wrong pixel drawn uniformly, and its region; with ``pred``
    None as well (``--where anywhere``), any unlabelled pixel."""
    wrong = (gt != ERASE) & ~labelled
    if pred is not None:
        wrong &= pred != gt
    if rng is not None:
        ys, xs = np.nonzero(wrong)
        if not len(ys):
            return None
        k = int(rng.integers(len(ys)))
        y, x = int(ys[k]), int(xs[k])
        comps, _ = ndimage.label(wrong & (gt == gt[y, x]))
        return y, x, comps == comps[y, x]
    best, best_size = None, 0
    for c in np.unique(gt[wrong]):
        comps, n = ndimage.label(wrong & (gt == c))
        if n == 0:
            continue
        sizes = np.bincount(comps.ravel())
        sizes[0] = 0
        k = int(sizes.argmax())
        if sizes[k] > best_size:
            best, best_size = comps == k, int(sizes[k])
    if best is None:
        return None
    dt = ndimage.distance_transform_edt(np.pad(best, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(dt.argmax()), dt.shape)
    return int(y), int(x), best


def click_rng(args) -> np.random.Generator | None:
    """The random annotator's own generator (``--where random`` or ``anywhere``), one per
    session."""
    return np.random.default_rng(10_000 + args.seed) if args.where != "centre" else None


def shown(pred, args):
    """The prediction the annotator looks for errors in: none with ``--where anywhere``."""
    return None if pred is None or args.where == "anywhere" else pred


def annotate(gt: np.ndarray, found: tuple[int, int, np.ndarray], args) -> np.ndarray:
    """The pixels one annotation labels: a disc of ``--radius`` at the region's centre, or
    with ``--stroke L`` a stroke of about L px along the region's middle."""
    y, x, region = found
    if args.stroke > 0:
        return stroke_along(gt, region, y, x, args.stroke, args.radius)
    return click_disc(gt, y, x, args.radius)


def stroke_along(
    gt: np.ndarray, region: np.ndarray, y: int, x: int, length: float, radius: float
) -> np.ndarray:
    """Flat indices of a stroke a person would draw along a wrongly predicted region: the
    ``length`` pixels of the region's skeleton (scikit-image's ``skeletonize``: the middle of
    a membrane or a vessel, the long axis of a blob) nearest along it to the skeleton pixel
    closest to the centre (y, x), painted ``radius`` px wide on the region's true class."""
    from skimage.morphology import skeletonize

    skeleton = skeletonize(region)
    ys, xs = np.nonzero(skeleton)
    if not len(ys):
        return click_disc(gt, y, x, radius)
    k = int(np.argmin((ys - y) ** 2 + (xs - x) ** 2))
    start = (int(ys[k]), int(xs[k]))
    path, queue, seen = [], deque([start]), {start}
    while queue and len(path) < length:  # breadth first along the skeleton
        cy, cx = queue.popleft()
        path.append((cy, cx))
        for a in (-1, 0, 1):
            for b in (-1, 0, 1):
                p = (cy + a, cx + b)
                inside = 0 <= p[0] < gt.shape[0] and 0 <= p[1] < gt.shape[1]
                if inside and p not in seen and skeleton[p]:
                    seen.add(p)
                    queue.append(p)
    index = np.concatenate([click_disc(gt, py, px, radius) for py, px in path])
    return np.unique(index)


def click_disc(gt: np.ndarray, y: int, x: int, radius: float) -> np.ndarray:
    """Flat indices of the pixels within ``radius`` of (y, x) of the same true class."""
    h, w = gt.shape
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[max(0, y - r) : min(h, y + r + 1), max(0, x - r) : min(w, x + r + 1)]
    keep = ((yy - y) ** 2 + (xx - x) ** 2 <= radius**2) & (gt[yy, xx] == gt[y, x])
    return (yy[keep] * w + xx[keep]).astype(np.int64)


def new_project(tmp: Path, data: dict[str, Any], tag: str) -> Project:
    images = tmp / f"{tag}-images"
    images.mkdir(parents=True, exist_ok=True)
    for stem, image, _ in data["pool"]:
        write_image(images / f"{stem}.png", image)
    return Project.open(images, data["classes"], tmp / f"{tag}-project")


def trainer_options(args, **extra: Any) -> TrainerOptions:
    """The page's defaults, with ``--set KEY=VALUE`` overrides (for experiments; the same
    options and checks as ``pixelwise label --trainer``)."""
    overrides: dict[str, Any] = {}
    try:
        for item in args.set:  # JSON values: 2e-3, true, {"depth": 4}
            overrides.update(parse_key_values(item, "--set", "ema=0.99"))
        base = {"threads": args.threads, "device": "cpu", "seed": args.seed, **extra}
        return TrainerOptions.with_overrides(overrides, **base)
    except ConfigError as err:
        raise SystemExit(str(err).replace("--trainer", "--set")) from None


def new_trainer(project: Project, args) -> Trainer:
    torch.manual_seed(args.seed)
    return Trainer(project, options=trainer_options(args))


@torch.inference_mode()
def evaluate(trainer: Trainer, heldout, num_classes: int) -> dict[str, Any]:
    model, _ = trainer.live.current()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for _, image, gt in heldout:
        pred = trainer.live.probabilities(image, model).argmax(0)
        cm += confusion_matrix(pred, torch.from_numpy(gt.astype(np.int64)), num_classes)
    s = scores(cm)
    return {"miou": s["mean_iou"], "iou": s["iou"], "pixel_accuracy": s["pixel_accuracy"]}


def interactive(data: dict[str, Any], args, tmp: Path, say) -> tuple[list, list, list, Any, Any]:
    """The clicking session: rows of scores per round, the clicks (stem, round, indices),
    with ``--after`` the rows of the training that went on on the same clicks, the last
    model's labels of the first held-out image, and its :func:`best_offset`."""
    project = new_project(tmp, data, "clicks")
    trainer = new_trainer(project, args)
    rows, clicks, wall, cpu, rng = [], [], 0.0, 0.0, click_rng(args)
    n = len(data["classes"])
    try:
        for r in range(args.clicks):
            t0 = time.monotonic()
            by_class = [0] * n  # this round's clicks by their true class
            for stem, _, gt in data["pool"]:
                pred = trainer.live.predict(stem, project)
                found = next_click(
                    gt,
                    shown(None if pred is None else pred.labels, args),
                    project.mask(stem) != ERASE,
                    rng,
                )
                if found is None:
                    continue
                index = annotate(gt, found, args)
                project.set_pixels(stem, index, gt.reshape(-1)[index])
                clicks.append({"stem": stem, "round": r, "yx": found[:2], "index": index})
                by_class[int(gt[found[:2]])] += 1
            c0 = time.thread_time()
            train(trainer, args, 1)
            trainer.publish()
            cpu += time.thread_time() - c0
            wall += time.monotonic() - t0
            row = {"clicks_per_image": r + 1, "clicks": len(clicks), "wall_s": round(wall, 2),
                   "train_cpu_s": round(cpu, 2), "steps": trainer.steps,
                   "labelled_pixels": int(project.class_counts().sum()),
                   "clicks_by_class": by_class,
                   **evaluate(trainer, data["heldout"], n)}  # fmt: skip
            rows.append(row)
            say(f"  {data['name']} round {r + 1}: {row['clicks']} clicks, mIoU {row['miou']:.4f}, "
                f"{row['steps']} steps, wall {wall:.0f} s")  # fmt: skip
        after = keep_training(trainer, data, args, say)
        with torch.inference_mode():  # the last model on the held-out images, once
            model, _ = trainer.live.current()
            probs = [trainer.live.probabilities(im, model) for _, im, _ in data["heldout"]]
    finally:
        project.close()
    offset = best_offset(probs, [gt for _, _, gt in data["heldout"]])
    return rows, clicks, after, probs[0].argmax(0).numpy(), offset


def best_offset(probs: list[torch.Tensor], truth: list[np.ndarray]) -> dict[str, Any] | None:
    """Is the last model's gap a threshold? With two classes (``probs`` of ``(2, H, W)``): the
    held-out mIoU when a constant is added to the first class's log-probability, the best of
    -3 to 3 in steps of 0.25 (an oracle: it is chosen on the held-out images themselves). None
    with more classes."""
    if probs[0].shape[0] != 2:
        return None
    logp = [torch.log(p.float() + 1e-8) for p in probs]
    gts = [torch.from_numpy(gt.astype(np.int64)) for gt in truth]
    best = None
    for offset in np.arange(-3.0, 3.0 + 1e-9, 0.25):
        cm = torch.zeros(2, 2, dtype=torch.int64)
        for lp, gt in zip(logp, gts, strict=True):
            shifted = torch.stack([lp[0] + float(offset), lp[1]])
            cm += confusion_matrix(shifted.argmax(0), gt, 2)
        miou = scores(cm)["mean_iou"]
        if best is None or miou > best["miou"]:
            best = {"offset": round(float(offset), 2), "miou": miou}
    return best


def train(trainer: Trainer, args, rounds: float) -> None:
    """``rounds`` rounds' worth of training: ``--round-seconds`` of CPU each, or with
    ``--round-steps`` that many optimisation steps each (the same steps whatever the load)."""
    if args.round_steps:
        trainer.train_for(math.inf, max_steps=round(rounds * args.round_steps))
    else:
        trainer.train_for(rounds * args.round_seconds, clock=time.thread_time)


def keep_training(trainer: Trainer, data: dict[str, Any], args, say) -> list:
    """``--after S``: no more clicks, ``S`` more CPU seconds of training on the same ones,
    scored every ``--after-every`` seconds: is the model short of time or of labels?"""
    rows, done = [], 0.0
    while done < args.after - 1e-9:
        chunk = min(args.after_every, args.after - done)
        trainer.train_for(chunk, clock=time.thread_time)
        trainer.publish()
        done += chunk
        row = {"extra_cpu_s": round(done, 2), "steps": trainer.steps,
               **evaluate(trainer, data["heldout"], len(data["classes"]))}  # fmt: skip
        rows.append(row)
        say(f"  {data['name']} +{done:.0f} s CPU on the same clicks: mIoU {row['miou']:.4f}, "
            f"{row['steps']} steps")  # fmt: skip
    return rows


def supervised(data: dict[str, Any], args, tmp: Path, say) -> list:
    """The same trainer on the pool's dense masks for the same CPU time, scored along the way."""
    project = new_project(tmp, data, "dense")
    try:
        for stem, _, gt in data["pool"]:
            index = np.flatnonzero(gt.reshape(-1) != ERASE)
            project.set_pixels(stem, index, gt.reshape(-1)[index])
        trainer = new_trainer(project, args)
        marks = sorted({args.clicks * f for f in (0.1, 0.25, 0.5, 0.75, 1.0)})  # in rounds
        rows, cpu, wall, done = [], 0.0, 0.0, 0.0
        for mark in marks:
            t0, c0 = time.monotonic(), time.thread_time()
            train(trainer, args, mark - done)
            trainer.publish()
            done = mark
            cpu += time.thread_time() - c0
            wall += time.monotonic() - t0
            row = {"train_cpu_s": round(cpu, 2), "wall_s": round(wall, 2), "steps": trainer.steps,
                   **evaluate(trainer, data["heldout"], len(data["classes"]))}  # fmt: skip
            rows.append(row)
            say(f"  {data['name']} supervised {cpu:.0f} s CPU: mIoU {row['miou']:.4f}")
        return rows
    finally:
        project.close()


# ---- the ilastik baseline -------------------------------------------------------------------


def _eig2(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (larger first) of the symmetric 2x2 matrices [[a, b], [b, c]]."""
    mean = (a + c) / 2
    root = np.sqrt(((a - c) / 2) ** 2 + b * b)
    return mean + root, mean - root


def ilastik_features(image: np.ndarray) -> np.ndarray:
    """``(H, W, 48 * channels)`` float32: ilastik's filter bank at :data:`SCALES`."""
    out = []
    for ch in range(image.shape[2]):
        img = image[:, :, ch].astype(np.float32)
        for s in SCALES:
            g = ndimage.gaussian_filter(img, s)
            out += [
                g,
                ndimage.gaussian_laplace(img, s),
                ndimage.gaussian_gradient_magnitude(img, s),
            ]
            out.append(g - ndimage.gaussian_filter(img, 0.66 * s))
            gx = ndimage.gaussian_filter(img, s, order=(0, 1))
            gy = ndimage.gaussian_filter(img, s, order=(1, 0))
            outer = 0.5 * s
            out += _eig2(ndimage.gaussian_filter(gx * gx, outer),
                         ndimage.gaussian_filter(gx * gy, outer),
                         ndimage.gaussian_filter(gy * gy, outer))  # fmt: skip
            out += _eig2(ndimage.gaussian_filter(img, s, order=(0, 2)),
                         ndimage.gaussian_filter(img, s, order=(1, 1)),
                         ndimage.gaussian_filter(img, s, order=(2, 0)))  # fmt: skip
    return np.stack(out, axis=-1).astype(np.float32)


def random_forest(data: dict[str, Any], clicks: list, args, say) -> tuple[list, np.ndarray]:
    """The forest trained on the clicks of the first k rounds, for k in ``--rf-at``: its rows,
    and the last forest's labels of the first held-out image."""
    t0 = time.monotonic()
    xs, ys, rounds = [], [], []
    for stem, image, gt in data["pool"]:
        mine = [c for c in clicks if c["stem"] == stem]
        if not mine:
            continue
        feats = ilastik_features(image).reshape(-1, 48 * image.shape[2])
        for c in mine:
            xs.append(feats[c["index"]])
            ys.append(gt.reshape(-1)[c["index"]])
            rounds.append(np.full(len(c["index"]), c["round"]))
    features_s = time.monotonic() - t0
    x, y, rnd = np.concatenate(xs), np.concatenate(ys), np.concatenate(rounds)
    points = [k for k in args.rf_at if k <= args.clicks]
    forests = {}
    for k in points:
        t1 = time.monotonic()
        rf = new_forest(args.seed)
        keep = rnd < k
        rf.fit(x[keep], y[keep])
        forests[k] = (rf, time.monotonic() - t1, int(keep.sum()))
    held = heldout_features(data)
    rows = []
    for k in points:
        s = forest_scores(forests[k][0], data, held)
        rows.append({"clicks_per_image": k, "labelled_pixels": forests[k][2],
                     "fit_s": round(forests[k][1], 2), "pool_features_s": round(features_s, 1),
                     "miou": s["mean_iou"], "iou": s["iou"],
                     "pixel_accuracy": s["pixel_accuracy"]})  # fmt: skip
        say(f"  {data['name']} random forest, {k} clicks/image: mIoU {s['mean_iou']:.4f}")
    last = forest_predict(forests[points[-1]][0], held[0], data["heldout"][0][2].shape)
    return rows, last


def new_forest(seed: int):
    """ilastik's pixel classifier: a random forest of 100 trees, one core."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=100, n_jobs=1, random_state=seed)


def heldout_features(data: dict[str, Any]) -> list[np.ndarray]:
    return [ilastik_features(im).reshape(-1, 48 * im.shape[2]) for _, im, _ in data["heldout"]]


def forest_predict(rf, feats: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return rf.classes_[rf.predict_proba(feats).argmax(1)].reshape(shape).astype(np.int64)


def forest_scores(rf, data: dict[str, Any], held: list[np.ndarray]) -> dict[str, Any]:
    """The forest's scores on the held-out images (their features in ``held``)."""
    n = len(data["classes"])
    cm = torch.zeros(n, n, dtype=torch.int64)
    for feats, (_, _, gt) in zip(held, data["heldout"], strict=True):
        pred = torch.from_numpy(forest_predict(rf, feats, gt.shape))
        cm += confusion_matrix(pred, torch.from_numpy(gt.astype(np.int64)), n)
    return scores(cm)


def forest_loop(data: dict[str, Any], args, say) -> list:
    """ilastik's own loop (``--forest-loop``): the same annotator clicks where the *forest* is
    wrong, the forest is refitted after each round, scored at ``--rf-at``."""
    pool = {
        stem: ilastik_features(im).reshape(-1, 48 * im.shape[2]) for stem, im, _ in data["pool"]
    }
    labelled = {stem: np.zeros(gt.shape, bool) for stem, _, gt in data["pool"]}
    held, xs, ys, rf, rows = heldout_features(data), [], [], None, []
    rng = click_rng(args)
    for r in range(args.clicks):
        for stem, _, gt in data["pool"]:
            pred = None if rf is None else forest_predict(rf, pool[stem], gt.shape)
            found = next_click(gt, shown(pred, args), labelled[stem], rng)
            if found is None:
                continue
            index = annotate(gt, found, args)
            labelled[stem].reshape(-1)[index] = True
            xs.append(pool[stem][index])
            ys.append(gt.reshape(-1)[index])
        rf = new_forest(args.seed)
        rf.fit(np.concatenate(xs), np.concatenate(ys))
        if r + 1 in args.rf_at:
            s = forest_scores(rf, data, held)
            rows.append({"clicks_per_image": r + 1, "labelled_pixels": int(sum(map(len, ys))),
                         "miou": s["mean_iou"], "iou": s["iou"],
                         "pixel_accuracy": s["pixel_accuracy"]})  # fmt: skip
            say(f"  {data['name']} forest on its own clicks, {r + 1}/image: {s['mean_iou']:.4f}")
    return rows


# ---- one dataset, the table, the plot -------------------------------------------------------


def run_dataset(source: str, args, say) -> dict[str, Any] | None:
    name = dataset_name(source)
    data = loader(source)(args.images)
    if data is None:
        say(f"{name}: not found under {SHARED}; skipped")
        return None
    say(f"{name}: {len(data['pool'])} pool / {len(data['heldout'])} held-out images, "
        f"classes {', '.join(data['classes'])}")  # fmt: skip
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix=f"interactive-{name}-"))
    try:
        rows, clicks, after, ours, offset = interactive(data, args, tmp, say)
        rf, theirs = random_forest(data, clicks, args, say)
        sup = supervised(data, args, tmp, say)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "dataset": name,
        "classes": data["classes"],
        "pool": [s for s, _, _ in data["pool"]],
        "heldout": [s for s, _, _ in data["heldout"]],
        "protocol": {"clicks_per_image": args.clicks, "round_cpu_seconds": args.round_seconds,
                     "round_steps": args.round_steps,
                     "click_radius": args.radius,
                     "where": args.where, "stroke_length": args.stroke,
                     "threads": args.threads, "seed": args.seed,
                     "trainer": {k: v for k, v in vars(trainer_options(args)).items()
                                 if k not in ("threads", "device")}},
        "load": {"cpus": os.cpu_count(), "loadavg_before": load_before,
                 "loadavg_after": os.getloadavg(), "machine": platform.platform(),
                 "torch": torch.__version__},
        "pixelwise": rows,
        "random_forest": rf,
        "supervised": sup,
    }  # fmt: skip
    if after:
        result["pixelwise_after"] = after
    if offset is not None:
        result["pixelwise_best_offset"] = offset
        say(f"  {name} the last model with the best constant offset of the first class's "
            f"log-probability (an oracle on the held-out images): {offset['offset']:+.2f}, "
            f"mIoU {offset['miou']:.4f}")  # fmt: skip
    result["summary"] = summary(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"interactive_{name}_seed{args.seed}.json").write_text(
        json.dumps(result, indent=1) + "\n"
    )
    held_stem, held_image, truth = data["heldout"][0]
    unit = "strokes" if args.stroke > 0 else "clicks"
    labels = {f"pixelwise, {args.clicks} {unit}/image": ours, f"forest, the same {unit}": theirs}
    shot = args.out / f"interactive_{name}_seed{args.seed}.png"
    picture(held_stem, held_image, truth, labels, shot)
    return result


def add_forest_loop(source: str, args, say) -> None:
    """``--forest-loop``: ilastik's own loop on the pool and held-out images of an existing run
    (``interactive_<name>_seed<seed>.json``), added to it."""
    name = dataset_name(source)
    path = args.out / f"interactive_{name}_seed{args.seed}.json"
    if not path.is_file():
        raise SystemExit(f"--forest-loop: no {path}; run the bench with --seed {args.seed} first")
    try:
        result = json.loads(path.read_text())
    except ValueError as err:
        raise SystemExit(
            f"--forest-loop: {path} is not a bench JSON ({err}); run it again"
        ) from None
    data = loader(source)(args.images)
    if data is None or [s for s, _, _ in data["pool"]] != result["pool"]:
        raise SystemExit(f"--forest-loop: {path} was not measured on these pool images")
    result["random_forest_own_clicks"] = forest_loop(data, args, say)
    result["summary"] = summary(result)
    path.write_text(json.dumps(result, indent=1) + "\n")


def summary(r: dict[str, Any]) -> dict[str, Any]:
    last = r["pixelwise"][-1]
    sup = r["supervised"][-1]
    rf = {row["clicks_per_image"]: row["miou"] for row in r["random_forest"]}
    px = {row["clicks_per_image"]: row["miou"] for row in r["pixelwise"]}
    k = last["clicks_per_image"]
    return {
        "clicks_per_image": k,
        "pixelwise_miou": last["miou"],
        "random_forest_miou": rf.get(k),
        "supervised_miou": sup["miou"],
        "fraction_of_supervised": last["miou"] / sup["miou"],
        "beats_forest_by_points": {str(c): 100 * (px[c] - rf[c]) for c in rf if c in px},
        **own_clicks(r, k),
    }


def own_clicks(r: dict[str, Any], k: int) -> dict[str, Any]:
    """The forest on its own clicks at ``k`` clicks per image, when measured."""
    own = {row["clicks_per_image"]: row["miou"] for row in r.get("random_forest_own_clicks", [])}
    if k not in own:
        return {}
    px = {row["clicks_per_image"]: row["miou"] for row in r["pixelwise"]}[k]
    return {
        "forest_own_clicks_miou": own[k],
        "beats_forest_own_clicks_by_points": 100 * (px - own[k]),
    }


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    """Per dataset: every seed's row at each forest point, then the mean over the seeds at the
    last point (one run is not a measurement: the clicks follow the model)."""
    steps = any(r["protocol"].get("round_steps") for runs in results.values() for r in runs)
    budget = "same steps" if steps else "same CPU time"
    lines = [
        "| dataset | seed | clicks/image | labelled px/image | pixelwise mIoU | "
        f"random forest mIoU | supervised mIoU ({budget}) | pixelwise / supervised | "
        "pixelwise - forest |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        for r in runs:
            rf = {row["clicks_per_image"]: row for row in r["random_forest"]}
            sup = r["supervised"][-1]["miou"]
            n = len(r["pool"])
            for row in r["pixelwise"]:
                k = row["clicks_per_image"]
                if k not in rf:
                    continue
                f = rf[k]["miou"]
                lines.append(
                    f"| {name} | {r['protocol']['seed']} | {k} | {row['labelled_pixels'] / n:.0f} "
                    f"| {row['miou']:.3f} | {f:.3f} | {sup:.3f} | {row['miou'] / sup:.1%} | "
                    f"{100 * (row['miou'] - f):+.1f} |"
                )
        m = mean_summary(runs)
        lines.append(
            f"| **{name}** | **mean of {m['runs']}** | {m['clicks_per_image']} | | "
            f"{m['pixelwise_miou']:.3f} | {m['random_forest_miou']:.3f} | "
            f"{m['supervised_miou']:.3f} | {m['fraction_of_supervised']:.1%} | "
            f"**{m['beats_forest_by_points']:+.1f}** (sd {m['beats_forest_sd']:.1f}) |"
        )
    return "\n".join(lines)


def mean_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The seeds' mean at the last click count (margins: mean and standard deviation)."""
    s = [r["summary"] for r in runs]
    margins = [x["beats_forest_by_points"][str(x["clicks_per_image"])] for x in s]
    mean = {k: float(np.mean([x[k] for x in s]))
            for k in ("pixelwise_miou", "random_forest_miou", "supervised_miou",
                      "fraction_of_supervised")}  # fmt: skip
    return {"runs": len(runs), "seeds": [r["protocol"]["seed"] for r in runs],
            "clicks_per_image": s[0]["clicks_per_image"], **mean,
            "beats_forest_by_points": float(np.mean(margins)),
            "beats_forest_sd": float(np.std(margins, ddof=1)) if len(margins) > 1 else 0.0,
            }  # fmt: skip


def own_clicks_table(results: dict[str, list[dict[str, Any]]]) -> str:
    """Per run measured with ``--forest-loop``: pixelwise and the forest on pixelwise's clicks
    beside the forest on its own clicks (ilastik's loop), at the last click count."""
    lines = [
        "| dataset | seed | clicks/image | pixelwise mIoU (its clicks) | forest mIoU (pixelwise's "
        "clicks) | forest mIoU (its own clicks) | pixelwise - forest (own clicks) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        for r in runs:
            s = r["summary"]
            if "forest_own_clicks_miou" not in s:
                continue
            lines.append(
                f"| {name} | {r['protocol']['seed']} | {s['clicks_per_image']} | "
                f"{s['pixelwise_miou']:.3f} | {s['random_forest_miou']:.3f} | "
                f"{s['forest_own_clicks_miou']:.3f} | "
                f"{s['beats_forest_own_clicks_by_points']:+.1f} |"
            )
        done = [r["summary"] for r in runs if "forest_own_clicks_miou" in r["summary"]]
        if len(done) > 1:
            mean = {
                k: float(np.mean([d[k] for d in done]))
                for k in done[0]
                if k != "beats_forest_by_points"
            }
            lines.append(
                f"| **{name}** | **mean of {len(done)}** | {done[0]['clicks_per_image']} | "
                f"{mean['pixelwise_miou']:.3f} | {mean['random_forest_miou']:.3f} | "
                f"{mean['forest_own_clicks_miou']:.3f} | "
                f"**{mean['beats_forest_own_clicks_by_points']:+.1f}** |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(4.2 * len(results), 7), squeeze=False)
    for j, (name, runs) in enumerate(results.items()):
        top, bottom = axes[0][j], axes[1][j]
        for i, r in enumerate(runs):  # every seed: its own clicks
            px, rf, sup = r["pixelwise"], r["random_forest"], r["supervised"]
            first = {} if i else {"label": True}
            top.plot([p["clicks_per_image"] for p in px], [p["miou"] for p in px], "o-", ms=2,
                     color="C0", alpha=0.7, lw=1,
                     label="pixelwise (live trainer)" if first else None)  # fmt: skip
            top.plot([p["clicks_per_image"] for p in rf], [p["miou"] for p in rf], "s--", ms=3,
                     color="C1", alpha=0.7, lw=1,
                     label="random forest (ilastik features)" if first else None)  # fmt: skip
            bottom.plot([p["wall_s"] for p in px], [p["miou"] for p in px], "o-", ms=2,
                        color="C0", alpha=0.7, lw=1,
                        label="pixelwise (clicks + training)" if first else None)  # fmt: skip
            bottom.plot([p["wall_s"] for p in sup], [p["miou"] for p in sup], "^:", color="k",
                        alpha=0.7, label="supervised (training)" if first else None)  # fmt: skip
        sup_mean = float(np.mean([r["supervised"][-1]["miou"] for r in runs]))
        top.axhline(sup_mean, color="k", ls=":", label="supervised, same CPU time (mean)")
        seeds = ", ".join(str(r["protocol"]["seed"]) for r in runs)
        unit = "strokes" if runs[0]["protocol"].get("stroke_length") else "clicks"
        top.set(title=f"{name} (seeds {seeds})", xlabel=f"{unit} per image", ylabel="held-out mIoU")
        bottom.set(xlabel="wall time (s)", ylabel="held-out mIoU")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def picture(
    stem: str, image: np.ndarray, truth: np.ndarray, labels: dict[str, np.ndarray], path: Path
) -> None:
    """One held-out image beside its ``truth`` and the learners' ``labels`` (pixels the truth
    ignores, 255, in grey), each with its pixel accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {"truth": truth, **labels}
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(3.2 * (1 + len(panels)), 3.6))
    axes[0].imshow(image.squeeze(), cmap="gray")
    axes[0].set_title(stem, fontsize=9)
    cmap = plt.get_cmap("tab20", 20)
    for ax, (title, lab) in zip(axes[1:], panels.items(), strict=True):
        shown = np.ma.masked_where(truth == ERASE, lab)
        ax.set_facecolor("0.5")
        ax.imshow(shown, cmap=cmap, vmin=0, vmax=19, interpolation="nearest")
        ok = (lab == truth)[truth != ERASE].mean()
        ax.set_title(f"{title}\npixel accuracy {ok:.3f}", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- latency under a training load ----------------------------------------------------------


def gt_stroke(gt: np.ndarray, cls: int, radius: float, length: float, rng) -> list | None:
    """A straight stroke inside class ``cls`` of ``gt`` (every point at least ``radius`` from
    other classes), as image-coordinate points; None if none was found."""
    inside = np.pad(gt == cls, 1)
    dt = ndimage.distance_transform_edt(inside)[1:-1, 1:-1]
    ys, xs = np.nonzero(dt >= radius + 1)
    for _ in range(50):
        if not len(ys):
            return None
        k = int(rng.integers(len(ys)))
        y0, x0 = ys[k], xs[k]
        angle = rng.uniform(0, 2 * np.pi)
        pts = []
        for t in np.linspace(0, length, max(2, int(length // 2))):
            y, x = y0 + t * np.sin(angle), x0 + t * np.cos(angle)
            iy, ix = int(round(y)), int(round(x))
            if not (0 <= iy < gt.shape[0] and 0 <= ix < gt.shape[1]) or dt[iy, ix] < radius + 0.5:
                break
            pts.append([round(float(x) + 0.5, 2), round(float(y) + 0.5, 2)])
        if len(pts) >= 2:
            return pts
    return None


def ridge_stroke(gt: np.ndarray, cls: int, steps: int, rng) -> list | None:
    """A stroke traced along the middle of a thin structure of class ``cls`` (the ridge of its
    distance transform), the way a person follows a membrane or a vessel."""
    dt = ndimage.distance_transform_edt(np.pad(gt == cls, 1))[1:-1, 1:-1]
    ys, xs = np.nonzero(dt >= 1.5)
    if not len(ys):
        return None
    k = int(rng.integers(len(ys)))
    y, x = int(ys[k]), int(xs[k])
    seen, path = {(y, x)}, [(y, x)]
    for _ in range(steps):
        best = None
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ny, nx = y + dy, x + dx
                if (ny, nx) in seen or not (0 <= ny < gt.shape[0] and 0 <= nx < gt.shape[1]):
                    continue
                if dt[ny, nx] >= 1.0 and (best is None or dt[ny, nx] > dt[best]):
                    best = (ny, nx)
        if best is None:
            break
        seen.update((y + a, x + b) for a in (-1, 0, 1) for b in (-1, 0, 1))  # no turning back
        y, x = best
        path.append(best)
    pts = [[px + 0.5, py + 0.5] for py, px in path[::3]]
    return pts if len(pts) >= 3 else None


def _stroke(gt: np.ndarray, cls: int, rng) -> list | None:
    """Screenshot strokes: along a membrane (class 0), or across the inside of a cell."""
    return ridge_stroke(gt, 0, 40, rng) if cls == 0 else gt_stroke(gt, 1, 5.0, 40.0, rng)


def serve(app) -> tuple[str, Any, threading.Thread]:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def http(url: str, body: dict | None = None) -> tuple[int, bytes, dict]:
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as res:
        return res.status, res.read(), dict(res.headers)


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values) * 1000
    p50, p95 = (round(float(np.percentile(a, q)), 1) for q in (50, 95))
    return {"n": len(values), "p50_ms": p50, "p95_ms": p95, "max_ms": round(float(a.max()), 1)}


def latency(args, say) -> dict[str, Any]:
    from pixelwise.label.app import create_label_app

    data = load_isbi(args.images)
    if data is None:
        raise SystemExit(f"--latency needs ISBI 2012 under {SHARED}")
    tmp = Path(tempfile.mkdtemp(prefix="interactive-latency-"))
    images = tmp / "images"
    images.mkdir()
    for stem, image, _ in data["pool"]:
        write_image(images / f"{stem}.png", image)
    opts = TrainerOptions(threads=args.threads, device="cpu", publish_every=args.publish_every)
    app = create_label_app(images, data["classes"], tmp / "project", options=opts)
    url, server, thread = serve(app)
    rng = np.random.default_rng(args.seed)
    saves, refresh, fetches, stop = [], [], [], threading.Event()
    open_stem = data["pool"][0][0]

    def page_poller():  # what the page does: poll the status, fetch each new prediction
        shown, last = 0, None
        while not stop.is_set():
            _, body, _ = http(f"{url}/api/status?name={open_stem}")
            version = json.loads(body)["trainer"]["version"]
            if version > shown:
                t0 = time.monotonic()
                http(f"{url}/api/prediction/{open_stem}")
                now = time.monotonic()
                fetches.append(now - t0)
                if last is not None:
                    refresh.append(now - last)
                shown, last = version, now
            stop.wait(args.poll)

    poller = threading.Thread(target=page_poller, daemon=True)
    try:
        poller.start()
        t_end = time.monotonic() + args.latency_seconds
        while time.monotonic() < t_end:
            stem, _, gt = data["pool"][int(rng.integers(len(data["pool"])))]
            cls = int(rng.integers(2))
            pts = gt_stroke(gt, cls, 2.0 if cls == 0 else 4.0, 30.0, rng)
            if pts is None:
                continue
            stroke = {"class": cls, "radius": 2.0 if cls == 0 else 4.0, "points": pts}
            t0 = time.monotonic()
            status, _, _ = http(f"{url}/api/strokes", {"name": stem, "strokes": [stroke]})
            saves.append(time.monotonic() - t0)
            assert status == 200
            time.sleep(args.stroke_pause)
        trainer_status = app.state.label.trainer.status()
    finally:
        stop.set()
        poller.join(30)
        server.should_exit = True
        thread.join(30)
        app.state.label.close()
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "stroke_to_saved": _percentiles(saves),
        "prediction_refresh_interval": _percentiles(refresh),
        "prediction_fetch": _percentiles(fetches),
        "settings": {"publish_every_s": args.publish_every, "page_poll_s": args.poll,
                     "stroke_pause_s": args.stroke_pause, "seconds": args.latency_seconds,
                     "threads": args.threads, "image": "ISBI 512x512"},
        "trainer": {k: trainer_status[k] for k in ("steps", "seconds", "version")},
        "load": {"cpus": os.cpu_count(), "loadavg_after": os.getloadavg()},
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "interactive_latency.json").write_text(json.dumps(result, indent=1) + "\n")
    say(json.dumps(result, indent=1))
    return result


# ---- the screenshot -------------------------------------------------------------------------


def screenshot(args, say) -> None:
    from pixelwise.label.app import create_label_app

    data = load_isbi(args.images)
    if data is None:
        raise SystemExit(f"--screenshot needs ISBI 2012 under {SHARED}")
    tmp = Path(tempfile.mkdtemp(prefix="interactive-shot-"))
    images = tmp / "images"
    images.mkdir()
    for stem, image, _ in data["pool"]:
        write_image(images / f"{stem}.png", image)
    opts = TrainerOptions(threads=args.threads, device="cpu", publish_every=5.0)
    app = create_label_app(images, data["classes"], tmp / "project", options=opts, log=say)
    url, server, thread = serve(app)
    rng = np.random.default_rng(args.seed)
    try:
        for stem, _, gt in data["pool"][1:4]:  # a few strokes on other slices, through the API
            strokes = []
            for cls, radius, n in ((0, 1.0, 10), (1, 5.0, 6)):
                for _ in range(n):
                    pts = (
                        ridge_stroke(gt, 0, 40, rng)
                        if cls == 0
                        else gt_stroke(gt, 1, 5.0, 40.0, rng)
                    )
                    if pts:
                        strokes.append({"class": cls, "radius": radius, "points": pts})
            http(f"{url}/api/strokes", {"name": stem, "strokes": strokes})
        _shoot(url, data, rng, args, say)
    finally:
        server.should_exit = True
        thread.join(30)
        app.state.label.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _shoot(url: str, data, rng, args, say) -> None:
    from playwright.sync_api import sync_playwright

    stem, _, gt = data["pool"][0]
    chrome = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync"]  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=chrome)
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.goto(f"{url}/#{stem}")
        page.wait_for_selector(f"#canvas[data-image='{stem}'][data-version='0']", timeout=60_000)
        box = page.locator("#canvas").bounding_box()
        for cls, radius, n in ((0, 1.0, 10), (1, 5.0, 6)):  # strokes drawn with the mouse
            page.focus("#canvas")
            page.keyboard.press(str(cls + 1))
            page.fill("#brush", str(int(2 * radius)))
            page.dispatch_event("#brush", "input")
            page.focus("#canvas")  # the keys go to the page again, not to the slider
            for _ in range(n):
                pts = _stroke(gt, cls, rng)
                if not pts:
                    continue
                screen = [
                    page.evaluate(f"window.pixelwiseLabel.toScreen({x}, {y})") for x, y in pts
                ]
                page.mouse.move(box["x"] + screen[0][0], box["y"] + screen[0][1])
                page.mouse.down()
                for sx, sy in screen[1:]:
                    page.mouse.move(box["x"] + sx, box["y"] + sy)
                page.mouse.up()
        page.wait_for_function("document.getElementById('canvas').dataset.pending === '0'")
        say(f"strokes drawn; training for {args.shot_seconds:.0f} s")
        time.sleep(args.shot_seconds)
        page.wait_for_function("Number(document.getElementById('canvas').dataset.prediction) >= 1",
                               timeout=120_000)  # fmt: skip
        page.fill("#pred-opacity", "40")
        page.dispatch_event("#pred-opacity", "input")
        page.fill("#label-opacity", "90")
        page.dispatch_event("#label-opacity", "input")
        page.fill("#unc-opacity", "0")
        page.dispatch_event("#unc-opacity", "input")
        time.sleep(2.0)
        out = Path(args.screenshot)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        page.fill("#pred-opacity", "0")
        page.dispatch_event("#pred-opacity", "input")
        page.fill("#unc-opacity", "80")
        page.dispatch_event("#unc-opacity", "input")
        time.sleep(1.0)
        page.screenshot(path=str(out.with_name(out.stem + "_uncertainty" + out.suffix)))
        say(f"wrote {out} and its _uncertainty twin; trainer: {page.inner_text('#trainer')}")
        browser.close()


# ---- main -----------------------------------------------------------------------------------


def measured(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Every dataset and seed measured so far in ``out`` (``interactive_<dataset>_seed<k>.json``
    whose JSON names that dataset), by seed: the named datasets first, then the folders."""
    results: dict[str, list[dict[str, Any]]] = {}
    for f in sorted(out.glob("interactive_*_seed*.json")):
        name, _, seed = f.stem.removeprefix("interactive_").rpartition("_seed")
        run = json.loads(f.read_text()) if seed.isdigit() else None
        if run is not None and run.get("dataset") == name:
            results.setdefault(name, []).append(run)
    order = [*[n for n in LOADERS if n in results], *sorted(set(results) - set(LOADERS))]
    return {n: sorted(results[n], key=lambda r: r["protocol"]["seed"]) for n in order}


def parse_args() -> argparse.Namespace:
    """The options, checked (an argparse error naming the option)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--datasets", default="isbi,drive,digits",
        help=f"comma-separated: {', '.join(LOADERS)} (shared data) or dataset folders",
    )  # fmt: skip
    ap.add_argument("--images", type=int, default=10, help="pool images per dataset")
    ap.add_argument("--clicks", type=int, default=20, help="clicks per image (rounds)")
    ap.add_argument(
        "--round-seconds", type=float, default=4.0, help="CPU seconds of training per round"
    )
    ap.add_argument(
        "--round-steps", type=int, default=0,
        help="train exactly this many steps per round instead of --round-seconds of CPU, so a "
        "seed repeats whatever the load (the supervised model: as many in all); results "
        "go to OUT/steps<N>/",
    )  # fmt: skip
    ap.add_argument("--radius", type=float, default=3.0, help="click disc radius (px)")
    ap.add_argument(
        "--where", choices=("centre", "random", "anywhere"), default="centre",
        help="where a click goes: the centre of the largest wrong region (the protocol), "
        "a wrong pixel drawn at random (an annotator who clicks any error; OUT/random/), or "
        "any unlabelled pixel drawn at random (OUT/anywhere/)",
    )  # fmt: skip
    ap.add_argument(
        "--stroke", type=float, default=0.0,
        help="label a stroke of about this many px along the middle of the wrong region "
        "(painted --radius wide) instead of a disc; results go to OUT/strokes/",
    )  # fmt: skip
    ap.add_argument(
        "--rf-at",
        default="1,2,5,10,20",
        help="clicks per image where the forest is scored (and --clicks)",
    )
    ap.add_argument(
        "--after", type=float, default=0.0,
        help="then train this many more CPU seconds on the same clicks, scoring as it goes",
    )  # fmt: skip
    ap.add_argument("--after-every", type=float, default=25.0, help="score --after every S s")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency", action="store_true", help="measure the server under training load")
    ap.add_argument("--latency-seconds", type=float, default=60.0)
    ap.add_argument("--publish-every", type=float, default=5.0)
    ap.add_argument("--poll", type=float, default=1.5, help="the page's status poll (s)")
    ap.add_argument("--stroke-pause", type=float, default=0.3)
    ap.add_argument("--screenshot", help="write the page, trained on ISBI strokes, to this PNG")
    ap.add_argument("--shot-seconds", type=float, default=120.0)
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON and PNG")
    ap.add_argument("--report", action="store_true", help="only redo the table and plot")
    ap.add_argument("--set", action="append", default=[], help="TrainerOptions KEY=VALUE")
    ap.add_argument(
        "--forest-loop",
        action="store_true",
        help="add to each dataset's JSON of --seed the forest choosing its own clicks",
    )
    args = ap.parse_args()
    # the forest is always scored at the last round too: the table compares the two there
    args.rf_at = sorted({int(v) for v in args.rf_at.split(",")} | {args.clicks})
    if args.clicks < 1 or args.radius <= 0:
        ap.error(f"--clicks {args.clicks} --radius {args.radius:g}: need at least 1 click per "
                 "image and a radius above 0 px")  # fmt: skip
    if args.stroke < 0:
        ap.error(f"--stroke: must be 0 (clicks) or a length in px, got {args.stroke:g}")
    if args.round_steps < 0:
        ap.error(
            f"--round-steps: must be 0 (CPU seconds) or a number of steps, got {args.round_steps}"
        )
    if args.stroke > 0:  # never in one table with the clicks
        args.out = args.out / "strokes"
    if args.round_steps:  # nor runs of a step count with runs of a CPU time
        args.out = args.out / f"steps{args.round_steps}"
    if args.where != "centre":
        args.out = args.out / args.where
    if args.after_every <= 0:
        ap.error(f"--after-every: must be more than 0 seconds, got {args.after_every:g}")
    args.datasets = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in args.datasets if n not in LOADERS and not Path(n).expanduser().is_dir()]
    if unknown:
        ap.error(f"--datasets: no dataset {', '.join(unknown)}; give one of {', '.join(LOADERS)} "
                 "or a dataset folder (any layout `pixelwise train --data` reads)")  # fmt: skip
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)

    def say(msg: str) -> None:
        print(msg, flush=True)

    say(
        f"load: {os.cpu_count()} CPUs, load average {os.getloadavg()}, torch threads {args.threads}"
    )
    if args.latency:
        latency(args, say)
        return
    if args.screenshot:
        screenshot(args, say)
        return
    try:
        for source in args.datasets:
            if args.forest_loop:
                add_forest_loop(source, args, say)
            elif not args.report:
                run_dataset(source, args, say)
    except PixelwiseError as err:
        raise SystemExit(f"error: {err}") from None
    results = measured(args.out)
    if not results:
        return
    say(table(results))
    if own := own_clicks_table(results):
        say("\nThe forest choosing its own clicks (--forest-loop):\n" + own)
    for n, runs in results.items():
        say(f"{n}: {json.dumps(mean_summary(runs))}")
    plot(results, args.out / "interactive_curves.png")
    if args.out == RESULTS:
        shutil.copyfile(args.out / "interactive_curves.png", ROOT / "docs/images/label_curves.png")


if __name__ == "__main__":
    main()
