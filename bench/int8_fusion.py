"""Does ONNX Runtime run the int8 file's convolutions in int8? Fused convolutions, time, profile.

    python bench/int8_fusion.py --models unet_same fcn8s --width 0.5 --save DIR
    python bench/int8_fusion.py --load DIR        # time files quantized by another onnxruntime

For each model (random weights, 21 classes, 512x512, one thread): the float ONNX file as
``pixelwise export`` writes it and its int8 file as ``pixelwise export --int8`` quantizes it
(:func:`pixelwise.export_formats.quantize_onnx`, 2 random calibration inputs, ``check_fusion=False``
so that an unfused file can be measured), then, for both files, ONNX Runtime's CPU
provider: how many of the float file's ``Conv`` nodes its optimised graph runs as ``QLinearConv``
(:func:`pixelwise.export_formats.int8_convolutions`), the median of 5 calls after a warm-up, and
the time per operator type from its profiler (3 calls). A QDQ convolution that the runtime does
not fuse runs as DequantizeLinear + float Conv + QuantizeLinear, slower than the float file.
``--save DIR`` keeps the files, ``--load DIR`` times files saved by another run (another
onnxruntime version: which of quantizer and runtime makes the difference). JSON on stdout.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pixelwise.export_formats import export_onnx, int8_convolutions, quantize_onnx  # noqa: E402
from pixelwise.models import build  # noqa: E402


def session(path: Path, profile_prefix: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(path: Path, source: Path, x: np.ndarray, tmp: Path) -> dict:
    s = session(path)
    s.run(None, {"image": x})
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        s.run(None, {"image": x})
        times.append(time.perf_counter() - t0)
    p = session(path, str(tmp / f"profile-{path.stem}"))
    for _ in range(3):
        p.run(None, {"image": x})
    by_op: collections.Counter = collections.Counter()
    for event in json.loads(Path(p.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"].get("op_name", "?")] += event["dur"] / 3000  # us -> ms per call
    fused, total = int8_convolutions(source, path)
    return {"ms": round(1000 * float(np.median(times)), 1), "convs_int8": f"{fused}/{total}",
            "ms_by_op": {k: round(v, 1) for k, v in by_op.most_common(6)}}  # fmt: skip


def make(name: str, width: float, folder: Path) -> None:
    model = build(name, 21, width=width).eval()
    export_onnx(model, folder / f"{name}.onnx", in_channels=3)
    calibration = [np.random.default_rng(i).standard_normal((1, 3, 512, 512), np.float32)
                   for i in range(2)]  # fmt: skip
    quantize_onnx(folder / f"{name}.onnx", folder / f"{name}.int8.onnx", calibration,
                  check_fusion=False)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["unet_same", "fcn8s"])
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--save", type=Path, help="keep the ONNX files here")
    ap.add_argument("--load", type=Path, help="time the files another run saved here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = np.random.default_rng(9).standard_normal((1, 3, 512, 512), np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.load or args.save or Path(tmp)
        if not args.load:
            folder.mkdir(parents=True, exist_ok=True)
        result = {"onnxruntime": ort.__version__, "files": str(folder), "models": {}}
        for name in args.models:
            if not args.load:
                make(name, args.width, folder)
            fp32, int8 = folder / f"{name}.onnx", folder / f"{name}.int8.onnx"
            if not (fp32.is_file() and int8.is_file()):
                raise SystemExit(f"--load {folder}: no {fp32.name} and {int8.name} there; save "
                                 "them first with --save")  # fmt: skip
            result["models"][f"{name} w{args.width:g}"] = {
                "float": measure(fp32, fp32, x, Path(tmp)),
                "int8": measure(int8, fp32, x, Path(tmp)),
            }
            print(json.dumps(result["models"]), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
