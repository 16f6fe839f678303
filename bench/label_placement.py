"""Where the labels are, or how many: the live model trained on fixed label sets (issue 16).

    nice -n 10 python bench/label_placement.py --datasets isbi --seed 0 --threads 1
    nice -n 10 python bench/label_placement.py --report     # the table of every seed so far

``bench/interactive.py``'s annotator clicks the centre of the largest region the model gets
wrong, and 20 such clicks per image leave the live model far below the same model trained on
dense masks. Is that the number of labelled pixels or where they are? Here the clicks do not
follow a model: each label set is drawn once from the dense masks of the same pool images
(``interactive.py``'s loaders: ISBI slices 0-9, DRIVE training 21-30, the digits scenes) with
``--seed``, and the page's trainer (:class:`pixelwise.label.trainer.Trainer`, its defaults)
trains on it for exactly ``--steps`` steps (540: the 20 rounds of 27 steps of
``interactive.py --round-steps 27``), then is scored on the same held-out images (mean IoU).
ilastik's random forest (``interactive.py``'s: 100 trees on its 48 filter-bank features per
channel) learns from exactly the same pixels. Label sets (``--sets``):

- ``dense``: every pixel of the masks (no forest: 2.6 million training pixels);
- ``pixels:N``: N pixels per image drawn uniformly (independent points);
- ``discs:N``: N clicks per image at pixels drawn uniformly, each a disc of radius 3 px on its
  true class as ``interactive.py`` paints a click: the page's suggested points.

Outputs ``bench/results/placement/placement_<dataset>_seed<k>.json`` and the table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/interactive.py, below

import interactive  # noqa: E402  (its loaders, clicks, forest, trainer options and scoring)

from pixelwise.label.project import ERASE  # noqa: E402

OUT = interactive.RESULTS / "placement"


def label_set(gt: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Flat indices of the pixels of ``gt`` that label set ``kind`` labels."""
    valid = np.flatnonzero(gt.reshape(-1) != ERASE)
    name, _, count = kind.partition(":")
    if name == "dense":
        return valid
    n = min(int(count), len(valid))
    chosen = rng.choice(valid, n, replace=False)
    if name == "pixels":
        return np.sort(chosen)
    discs = [interactive.click_disc(gt, *divmod(int(i), gt.shape[1]), 3.0) for i in chosen]
    return np.unique(np.concatenate(discs))


def check_sets(text: str) -> list[str]:
    sets = [s.strip() for s in text.split(",") if s.strip()]
    for s in sets:
        name, _, count = s.partition(":")
        if not (s == "dense" or (name in ("pixels", "discs") and count.isdigit())):
            raise SystemExit(f"--sets: {s!r} is not dense, pixels:N or discs:N")
    return sets


def one_set(data: dict[str, Any], kind: str, args, say) -> dict[str, Any]:
    """Train and score the live model, and the forest, on label set ``kind``."""
    rng = np.random.default_rng(args.seed)
    labels = {stem: label_set(gt, kind, rng) for stem, _, gt in data["pool"]}
    with tempfile.TemporaryDirectory(prefix="placement-") as tmp:
        project = interactive.new_project(Path(tmp), data, "labels")
        try:
            for stem, _, gt in data["pool"]:
                project.set_pixels(stem, labels[stem], gt.reshape(-1)[labels[stem]])
            trainer = interactive.new_trainer(project, args)
            c0 = time.thread_time()
            trainer.train_for(math.inf, max_steps=args.steps)
            trainer.publish()
            cpu = time.thread_time() - c0
            ours = interactive.evaluate(trainer, data["heldout"], len(data["classes"]))
        finally:
            project.close()
    row = {"labels": kind, "labelled_px_per_image": sum(map(len, labels.values())) / len(labels),
           "steps": trainer.steps, "train_cpu_s": round(cpu, 1), "pixelwise_miou": ours["miou"],
           "pixelwise_iou": ours["iou"], "forest_miou": None}  # fmt: skip
    if kind != "dense":
        clicks = [{"stem": s, "index": ix, "round": 0} for s, ix in labels.items()]
        forest_args = argparse.Namespace(**{**vars(args), "rf_at": [1], "clicks": 1})
        rows, _ = interactive.random_forest(data, clicks, forest_args, lambda _m: None)
        row["forest_miou"] = rows[-1]["miou"]
    forest = "" if row["forest_miou"] is None else f", forest {row['forest_miou']:.4f}"
    say(f"  {data['name']} {kind}: {row['labelled_px_per_image']:.0f} px/image, "
        f"pixelwise {row['pixelwise_miou']:.4f}{forest} ({row['steps']} steps)")  # fmt: skip
    return row


def run(source: str, args, say) -> None:
    data = interactive.loader(source)(args.images)
    if data is None:
        say(f"{source}: not found under {interactive.SHARED}; skipped")
        return
    load = os.getloadavg()
    rows = [one_set(data, kind, args, say) for kind in args.sets]
    result = {"dataset": data["name"], "seed": args.seed, "steps": args.steps,
              "pool": [s for s, _, _ in data["pool"]],
              "heldout": [s for s, _, _ in data["heldout"]],
              "trainer": {k: v for k, v in vars(interactive.trainer_options(args)).items()
                          if k not in ("threads", "device")},
              "load": {"loadavg_before": load, "loadavg_after": os.getloadavg(),
                       "threads": args.threads, "torch": torch.__version__},
              "rows": rows}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"placement_{data['name']}_seed{args.seed}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")


def report(out: Path) -> str:
    """Every seed's rows, then per dataset and label set the mean over the seeds."""
    lines = [
        "| dataset | seed | labels | labelled px/image | pixelwise mIoU | forest mIoU | "
        "pixelwise / dense | pixelwise - forest |",
        "|---|---|---|---|---|---|---|---|",
    ]
    results: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out.glob("placement_*_seed*.json")):
        r = json.loads(path.read_text())
        results.setdefault(r["dataset"], []).append(r)
    for name, runs in results.items():
        means: dict[str, list[tuple[float, float | None, float | None]]] = {}
        for r in sorted(runs, key=lambda r: r["seed"]):
            dense = next((x["pixelwise_miou"] for x in r["rows"] if x["labels"] == "dense"), None)
            for x in r["rows"]:
                ratio = None if dense is None else x["pixelwise_miou"] / dense
                f = x["forest_miou"]
                means.setdefault(x["labels"], []).append((x["pixelwise_miou"], f, ratio))
                lines.append(_row(name, str(r["seed"]), x["labels"], x["labelled_px_per_image"],
                                  x["pixelwise_miou"], f, ratio))  # fmt: skip
        for kind, vals in means.items():
            px = float(np.mean([v[0] for v in vals]))
            fs = [v[1] for v in vals if v[1] is not None]
            rs = [v[2] for v in vals if v[2] is not None]
            lines.append(_row(f"**{name}**", f"**mean of {len(vals)}**", kind, None, px,
                              float(np.mean(fs)) if fs else None,
                              float(np.mean(rs)) if rs else None))  # fmt: skip
    return "\n".join(lines)


def _row(name, seed, kind, px, ours, forest, ratio) -> str:
    cells = [name, seed, kind, "" if px is None else f"{px:.0f}", f"{ours:.3f}",
             "-" if forest is None else f"{forest:.3f}", "-" if ratio is None else f"{ratio:.1%}",
             "-" if forest is None else f"{100 * (ours - forest):+.1f}"]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="isbi", help="comma-separated: isbi, drive, digits")
    ap.add_argument("--sets", default="dense,pixels:580,pixels:20,discs:20,discs:50")
    ap.add_argument("--steps", type=int, default=540, help="training steps per label set")
    ap.add_argument("--images", type=int, default=10, help="pool images per dataset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], help="TrainerOptions KEY=VALUE")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report", action="store_true", help="only print the table")
    args = ap.parse_args()
    args.sets = check_sets(args.sets)
    torch.set_num_threads(args.threads)
    if not args.report:
        for source in args.datasets.split(","):
            run(source.strip(), args, lambda m: print(m, flush=True))
    print(report(args.out))


if __name__ == "__main__":
    main()
