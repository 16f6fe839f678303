"""Accuracy of int8 inference: float model vs its int8 ONNX file on a run's validation split.

    python bench/int8.py RUN [RUN ...] [--calibration-images 32] [--check-images N]
        [--formats qdq qoperator] [--threads 1] [--json-dir bench/results]

For every run and int8 format: the run's float export quantized exactly as ``pixelwise export
RUN --int8`` does it (:func:`pixelwise.export_formats.quantize_onnx`, calibrated on
``--calibration-images`` of the run's training images, :func:`pixelwise.export.
calibration_inputs`), then the float torch model and the int8 file predict the validation split
as ``pixelwise evaluate`` does (:func:`pixelwise.export.int8_check`): both mean IoUs, the change
in points, the share of pixels whose argmax agrees. Nothing is written into the runs; the
numbers go to stdout and ``--json-dir/int8_<run name>.json``. Speed is bench/speed.py's job.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from pixelwise.engines import OnnxRuntimeEngine
from pixelwise.export import calibration_inputs, export_run, int8_check
from pixelwise.export_formats import quantize_onnx
from pixelwise.files import write_json
from pixelwise.runs import load_run


def bench_run(run: Path, args: argparse.Namespace) -> list[dict]:
    """One row per int8 format for ``run``."""
    loaded = load_run(run, "best", device="cpu")
    t0 = time.perf_counter()
    calibration, data = calibration_inputs(loaded, args.calibration_images)
    prep = time.perf_counter() - t0
    rows = []
    with tempfile.TemporaryDirectory(prefix="pixelwise-int8-bench-") as tmpdir:
        fp32 = Path(tmpdir) / "float.onnx"
        export_run(run, fp32, "onnx", "best")
        for fmt in args.formats:
            path = Path(tmpdir) / f"{fmt}.onnx"
            t0 = time.perf_counter()
            quantize_onnx(fp32, path, calibration, fmt=fmt)
            quant = time.perf_counter() - t0
            check = int8_check(loaded, OnnxRuntimeEngine(path, args.threads), args.check_images)
            rows.append(
                {
                    "run": str(run),
                    "model": loaded.config["model"]["name"],
                    "model_kwargs": loaded.config["model"]["kwargs"],
                    "epoch": loaded.info.get("epoch"),
                    "data": data,
                    "format": fmt,
                    "calibration_images": len(calibration),
                    "calibration_seconds": prep + quant,
                    "float_bytes": fp32.stat().st_size,
                    "int8_bytes": path.stat().st_size,
                    **check,
                }
            )
    return rows


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'run':<22} {'model':<10} {'epoch':>5} {'format':<10} {'calib':>5} {'val':>4} "
        f"{'mIoU fp32':>9} {'mIoU int8':>9} {'change':>8} {'argmax=':>8} {'MB f/i8':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{Path(r['run']).name:<22} {r['model']:<10} {r['epoch']!s:>5} {r['format']:<10} "
            f"{r['calibration_images']:>5} {r['images']:>4} {r['miou_float']:>9.4f} "
            f"{r['miou_int8']:>9.4f} {100 * r['miou_change']:>+7.2f}p "
            f"{100 * r['argmax_agreement']:>7.2f}% "
            f"{r['float_bytes'] / 1e6:>5.2f}/{r['int8_bytes'] / 1e6:<5.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--calibration-images", type=int, default=32)
    p.add_argument("--check-images", type=int, help="first N val images (default: all)")
    p.add_argument("--formats", nargs="+", default=["qdq"], choices=("qdq", "qoperator"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json-dir", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file() else []
    print(f"torch {torch.__version__}, {args.threads} thread(s); load average at start {load}")
    rows = []
    for run in args.runs:
        print(f"[{time.strftime('%H:%M:%S')}] {run}", file=sys.stderr, flush=True)
        mine = bench_run(run, args)
        write_json(
            args.json_dir / f"int8_{run.name}.json",
            {
                "args": vars(args)
                | {"runs": [str(r) for r in args.runs], "json_dir": str(args.json_dir)},
                "rows": mine,
            },
        )
        rows += mine
    print()
    print_table(rows)
    end = Path("/proc/loadavg").read_text().split()[:3] if load else []
    print(f"\nload average at end {end}; change = int8 - float mean IoU in points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
