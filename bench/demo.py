"""Time `pixelwise demo` end to end and print its wall time and validation scores.

    python bench/demo.py [--out /tmp/pixelwise-demo-bench] [--threads N]

This is where the README's "about N minutes" and the demo mIoU in docs/quickstart.md come from.
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "pixelwise-demo-bench"))
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    cmd = [sys.executable, "-m", "pixelwise", "-q", "demo", "--out", args.out, "--overwrite"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    report = json.loads((Path(args.out) / "eval_val.json").read_text())
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    print(f"cpu cores            {os.cpu_count()}")
    print(f"demo wall time       {wall:.1f} s (training {summary['seconds']} s)")
    print(f"val mean IoU         {report['mean_iou']:.4f}")
    print(f"val pixel accuracy   {report['pixel_accuracy']:.4f}")
    print(f"val mean accuracy    {report['mean_accuracy']:.4f}")
    print(f"val fw IoU           {report['fw_iou']:.4f}")


if __name__ == "__main__":
    main()
