"""Tiled prediction on big images: wall time and peak memory per image size.

    python bench/tiles.py [--model unet] [--width 0.0625] [--sizes 1024 2048 4096 8192]
                          [--tile 512] [--overlap 0.25] [--compare-max 1024] [--threads N]
                          [--json FILE] [--progress]

Each size runs in a fresh subprocess (random weights, seed 0; a random image of 8x8-pixel colour
blocks), so each peak RSS is that process's own: ``ru_maxrss`` from ``os.wait4`` on the child,
which covers the interpreter, torch, the model, the uint8 image and mask and everything the
prediction allocates. The baseline column is the child's peak before the image exists (imports
and model). Sizes up to ``--compare-max`` are also predicted whole (one forward pass, in another
fresh process) to report its memory and the agreement of the tiled mask with the whole-image
one. The table in docs/tiles.md comes from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _image(size: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (-(-size // 8), -(-size // 8), channels), dtype=np.uint8)
    return np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)[:size, :size]


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    """Predict one image (``args.child`` = tiled | whole) and print a JSON line."""
    import torch

    from pixelwise import models
    from pixelwise.predict import forward_full
    from pixelwise.tiles import predict_tiled

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kwargs = {"width": args.width, **{k: json.loads(v) for k, v in args.model_arg}}
    model = models.build(args.model, args.classes, **kwargs).eval()
    mean, std = (0.5,) * 3, (0.25,) * 3
    calls = 0

    def net(x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return model(x)

    base = _rss_mb()
    image = _image(args.size, 3)
    progress = None
    if args.progress:
        from tqdm import tqdm

        progress = lambda rows: tqdm(rows, desc=f"{args.size}^2 tile rows", file=sys.stderr)  # noqa: E731
    t0 = time.perf_counter()
    if args.child == "tiled":
        mask = predict_tiled(
            net, model, image, mean, std, args.tile, args.overlap, progress=progress
        )
    else:
        from pixelwise.data.transforms import to_tensor

        with torch.inference_mode():
            x = to_tensor(image, mean, std).unsqueeze(0)
            mask = forward_full(model, x)[0].argmax(0).to(torch.uint8).numpy()
            calls = 1
    seconds = time.perf_counter() - t0
    if args.save_mask:
        np.save(args.save_mask, mask)
    print(json.dumps({"seconds": seconds, "calls": calls, "base_mb": base}))


def run_child(args: argparse.Namespace, mode: str, size: int, save: Path | None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--size", str(size)]
    for key in ("model", "width", "classes", "tile", "overlap", "threads"):
        value = getattr(args, key)
        if value is not None:
            cmd += [f"--{key}", str(value)]
    for k, v in args.model_arg:
        cmd += ["--model-arg", f"{k}={v}"]
    if save is not None:
        cmd += ["--save-mask", str(save)]
    if args.progress:
        cmd += ["--progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        return {"error": f"exit status {proc.returncode}"}
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_mb"] = usage.ru_maxrss / 1024
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="unet", help="registry name (default unet: overlap-tile)")
    p.add_argument("--width", type=float, default=0.0625, help="channel multiplier (0.0625)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE", type=_pair)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument(
        "--compare-max", type=int, default=1024, help="also predict whole images up to this size"
    )
    p.add_argument("--threads", type=int)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--progress", action="store_true", help="tile-row progress bars on stderr")
    p.add_argument("--child", choices=("tiled", "whole"), help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--save-mask", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    import torch

    threads = args.threads or torch.get_num_threads()
    extra = "".join(f", {k}={v}" for k, v in args.model_arg)
    print(
        f"{args.model} (width {args.width}{extra}, {args.classes} classes, random weights), "
        f"tile {args.tile}, overlap {args.overlap}, {threads} threads, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}"
    )
    header = (
        f"{'size':>11} {'MP':>6} {'mode':>6} {'calls':>6} {'seconds':>9} {'s/MP':>7} "
        f"{'base MB':>8} {'peak MB':>8} {'agree':>7}"
    )
    print(header)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            mp = size * size / 1e6
            compare = size <= args.compare_max
            tiled_mask = Path(tmp) / f"tiled{size}.npy" if compare else None
            whole_mask = Path(tmp) / f"whole{size}.npy" if compare else None
            results = [("tiled", run_child(args, "tiled", size, tiled_mask))]
            if compare:
                results.append(("whole", run_child(args, "whole", size, whole_mask)))
            agree = None
            if compare and all("error" not in r for _, r in results):
                agree = float((np.load(tiled_mask) == np.load(whole_mask)).mean())
            for mode, r in results:
                row = {"size": size, "megapixels": mp, "mode": mode, **r}
                if mode == "tiled" and agree is not None:
                    row["agreement_with_whole"] = agree
                rows.append(row)
                if "error" in r:
                    print(f"{size:>5}x{size:<5} {mp:>6.1f} {mode:>6}  {r['error']}")
                    continue
                a = f"{agree:.4f}" if mode == "tiled" and agree is not None else ""
                print(
                    f"{size:>5}x{size:<5} {mp:>6.1f} {mode:>6} {r['calls']:>6} "
                    f"{r['seconds']:>9.1f} {r['seconds'] / mp:>7.2f} {r['base_mb']:>8.0f} "
                    f"{r['peak_mb']:>8.0f} {a:>7}",
                    flush=True,
                )
    if args.json:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        from pixelwise.files import write_json

        config = {k: v for k, v in vars(args).items() if k not in ("child", "size", "save_mask")}
        write_json(args.json, {"config": config, "threads": threads, "rows": rows})
        print(f"wrote {args.json}")


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


if __name__ == "__main__":
    main()
