"""The planner on real folders: each dataset's fingerprint (orientation bias, finest frequent
class), and with ``--budget`` the planned run itself, timed as a user runs it.

    python bench/planning.py ../shared/data/{camvid,isbi2012,drive,stare} digits
    python bench/planning.py ../shared/data/ph2 --budget 3m

Prints one row per dataset: median size, vertical and horizontal layout bias, object alignment
and handedness (each the median over classes, then each measured class's), the finest class
holding >= 2% of the labels and its half-width; with --budget, the wall time of
``pixelwise train --data DIR --budget B`` (a subprocess: imports and planning included), the
epochs it trained, whether the budget stopped it, and the best validation mean IoU. Say the
machine's load (printed) when you quote it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def fingerprint_row(data: str) -> str:
    from pixelwise.planning import dataset_fingerprint
    from pixelwise.training import TrainConfig

    fp, _ = dataset_fingerprint(TrainConfig(data=data))
    frequent = [c for c, f in enumerate(fp.frequency) if f >= 0.02 and fp.objects[c].half_width]
    c = min(frequent, key=lambda k: fp.objects[k].half_width)
    h, w = fp.median_size
    measured = [(n, o) for n, o in zip(fp.classes, fp.objects, strict=True) if o.alignment]
    aligned = ", ".join(f"{name} {o.alignment:.2f}" for name, o in measured)
    handed = ", ".join(f"{name} {o.handedness:.2f}" for name, o in measured)
    return (
        f"| {data} | {h}x{w} | {fp.vertical_bias:.2f} | {fp.horizontal_bias:.2f} | "
        f"{fp.alignment:.2f} ({aligned}) | {fp.handedness:.2f} ({handed}) | "
        f"{fp.classes[c]} {fp.objects[c].half_width:.1f} px |"
    )


def budget_row(data: str, budget: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        began = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pixelwise", "-q", "train", "--data", data,
             "--budget", budget, "--out", str(out)],
            capture_output=True, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - began
        if done.returncode:
            return f"| {data} | {budget} | failed: {done.stderr.strip()} |"
        summary = json.loads((out / "summary.json").read_text())
        saved = json.loads((out / "plan.json").read_text())
        plan, estimated = saved["options"], saved["estimates"]["epochs"]
        return (
            f"| {data} | {budget} | {wall:.1f} s | {summary['epochs']} of ~{estimated} | "
            f"{summary['budget']['stopped_early']} | {summary['best_mean_iou']:.3f} | "
            f"{plan['model_args']}, scale {plan['input_scale']} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", nargs="+", help="dataset folders (or digits)")
    p.add_argument("--budget", help="also train each with this budget, e.g. 3m")
    args = p.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| dataset | median size | vertical bias | horizontal bias | alignment | handedness "
          "| finest class |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for data in args.data:
        print(fingerprint_row(data))
    if args.budget:
        print("\n| dataset | budget | wall | epochs (of the estimate) | budget stopped it "
              "| best val mIoU | plan |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for data in args.data:
            print(budget_row(data, args.budget))
    print(f"load average {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
