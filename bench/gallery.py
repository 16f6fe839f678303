"""Make the pictures of docs/gallery.md from one real, short run on the digits scenes.

    nice -n 10 .venv/bin/python bench/gallery.py

(1,125 training steps: about 1.5 min on 2 idle CPU cores at the demo's rate, plus the heatmap
classifier and evaluation; measured: 1961 s of training on 2 cores shared with a load of ~8.)

Trains a small U-Net on the embedded digits scenes (CPU), evaluates it, trains the heatmap patch
classifier, and copies into docs/images/gallery/: the training curves (loss, validation metrics,
IoU per class in the class colours), the validation overlays of the first and last epochs, the
confusion matrix, the class pixel frequencies of the training scenes and the heatmap figure.
Prints what it measured. The web page's screenshot (docs/images/serve.png) shows a model trained
on real street scenes instead: bench/screenshot.py makes it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pixelwise.cli import DEMO

ROOT = Path(__file__).resolve().parents[1]
GALLERY = ROOT / "docs" / "images" / "gallery"

# The demo's settings (pixelwise.cli.DEMO, docs/quickstart.md), shortened: 1,500 scenes x 6 epochs
# = 1,125 steps (the demo: 2,500), past the plateau that breaks near step 750.
CONFIG = {
    **DEMO,
    "data_args": {**DEMO["data_args"], "num_images": 1500},
    "epochs": 6,
    "overlays": 3,
    "device": "cpu",
    "seed": 0,
}


def _copy(src: Path, name: str) -> Path:
    dest = GALLERY / name
    shutil.copyfile(src, dest)
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="folder for the run (default: a temporary folder)")
    args = parser.parse_args()

    from pixelwise.data.digits import DigitsScenes
    from pixelwise.evaluate import evaluate_run
    from pixelwise.heatmap import heatmap_command
    from pixelwise.plots import plot_class_frequencies
    from pixelwise.training import TrainConfig, train

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="pixelwise-gallery-"))
    run = work / "run"
    GALLERY.mkdir(parents=True, exist_ok=True)
    written = []

    t0 = time.perf_counter()
    summary = train(TrainConfig.from_dict({**CONFIG, "out": str(run), "overwrite": True}))
    t_train = time.perf_counter() - t0
    report = evaluate_run(run, "digits", "val", device="cpu")
    written.append(_copy(run / "curves.png", "curves.png"))
    overlays = sorted((run / "overlays").glob("epoch_*.png"))
    written.append(_copy(overlays[0], "overlays_first_epoch.png"))
    written.append(_copy(overlays[-1], "overlays_last_epoch.png"))
    written.append(_copy(run / "confusion_val.png", "confusion_val.png"))

    train_set = DigitsScenes("train", seed=0, **{**CONFIG["data_args"], "num_images": 200})
    counts = np.zeros(train_set.classes.num_classes, dtype=np.int64)
    for sample in train_set:
        counts += np.bincount(sample.mask.ravel(), minlength=256)[: len(counts)]
    written.append(
        plot_class_frequencies(
            counts,
            train_set.classes,
            GALLERY / "class_frequencies.png",
            "digits scenes (200 training images): class pixel frequencies",
        )
    )

    t1 = time.perf_counter()
    heat = heatmap_command(None, None, work / "heatmap", seed=0)
    t_heat = time.perf_counter() - t1
    figure = next(p for p in heat if p.name == "heatmap.png")
    written.append(_copy(figure, "heatmap.png"))

    print(f"run: {run} ({summary['epochs']} epochs, {t_train:.0f} s training on the CPU)")
    print(
        f"val mean IoU {report['mean_iou']:.4f}, pixel accuracy {report['pixel_accuracy']:.4f} "
        f"(digits val scenes)"
    )
    print(f"heatmap classifier + figure: {t_heat:.0f} s")
    for path in written:
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
