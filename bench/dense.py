"""Time the four ways to score every window of an image with a LeNet-style 32x32 classifier.

    python bench/dense.py [--sizes 128 256 512] [--threads N] [--repeats 5] [--json FILE]

Methods (pixelwise.dense): the naive sliding window at stride 1 (crop and classify every window,
batches of 1024), one pass of the convolutionalized net (FCN, stride 4), shift-and-stitch (16
FCN passes) and à trous (one dilated pass), all on channels-last tensors (the naive batches of
crops too: sliding_window builds them so). Times are medians of ``--repeats`` runs after a
warm-up; the naive method runs once when it has more than 20,000 windows. Each row also checks
that the method's scores equal the naive ones (max abs difference). The table in docs/dense.md
comes from this script.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pixelwise.dense import atrous, convolutionalize, lenet, shift_and_stitch, sliding_window

WINDOW = 32


def _time(fn: Callable[[], torch.Tensor], repeats: int, warmup: bool) -> tuple[float, torch.Tensor]:
    if warmup:
        fn()
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    assert out is not None
    return statistics.median(times), out


def _gmac(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Multiply-adds of one forward pass, in billions (torch's FLOP counter counts 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2e9


def _intro(env: dict, stride: int) -> None:
    """What is measured, and the table's header."""
    print(
        f"LeNet-style classifier, {WINDOW}x{WINDOW} RGB windows, 11 classes; torch "
        f"{env['torch']}, {env['threads']} thread(s), {env['cpu_count']} CPUs"
    )
    print(
        f"Output grids differ: naive, shift-and-stitch and à trous score every window "
        f"(stride 1: (S-{WINDOW - 1})^2 outputs); one FCN pass scores every {stride}th window "
        f"per axis (((S-{WINDOW})/{stride}+1)^2 outputs, {stride * stride}x fewer)."
    )
    header = (
        f"{'size':>5} {'method':<17} {'outputs':>10} {'time (s)':>10} {'us/output':>10} "
        f"{'naive/this':>10} {'max |diff|':>10}"
    )
    print(header)
    print("-" * len(header))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512], help="image sides")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per method (median)")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if any(s < WINDOW for s in args.sizes) or args.repeats < 1:
        p.error(f"--sizes must be >= {WINDOW} and --repeats >= 1")

    torch.manual_seed(0)
    classifier = lenet(num_classes=11, in_channels=3, input_size=WINDOW).eval()
    fcn = convolutionalize(classifier, WINDOW).eval()
    dense = atrous(fcn).eval()
    stride = fcn.stride[0]

    def fcn_pass(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return fcn(x)

    def atrous_pass(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return dense(x)

    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    _intro(env, stride)
    rows = []
    for size in args.sizes:
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        x_cl = x.contiguous(memory_format=torch.channels_last)  # faster convs, as in the naive
        n_windows = (size - WINDOW + 1) ** 2
        naive_reps = args.repeats if n_windows <= 20_000 else 1
        if naive_reps == 1:  # warm up on a small image instead of a second long run
            sliding_window(classifier, x[..., : WINDOW + 40, : WINDOW + 40], WINDOW)
        t_naive, naive = _time(
            lambda x=x: sliding_window(classifier, x, WINDOW, stride=1),
            naive_reps,
            warmup=naive_reps > 1,
        )
        results = [("sliding window", t_naive, naive, naive)]
        for name, fn, ref in (
            ("FCN (one pass)", fcn_pass, naive[..., ::stride, ::stride]),
            ("shift-and-stitch", lambda x: shift_and_stitch(fcn, x), naive),
            ("à trous", atrous_pass, naive),
        ):
            t, out = _time(lambda fn=fn, x_cl=x_cl: fn(x_cl), args.repeats, warmup=True)
            results.append((name, t, out[..., : ref.shape[-2], : ref.shape[-1]], ref))
        naive_gmac = n_windows * _gmac(classifier, x[..., :WINDOW, :WINDOW])
        fcn_gmac = _gmac(fcn, x)
        work = (
            f"      work at {size}^2: naive {naive_gmac:.2f} GMAC, "
            f"one FCN pass {fcn_gmac:.3f} GMAC "
            f"({naive_gmac / fcn_gmac:.0f}x fewer multiply-adds)"
        )
        for name, t, out, ref in results:
            outputs = out.shape[-2] * out.shape[-1]
            diff = float((out - ref).abs().max())
            row = {
                "size": size,
                "method": name,
                "outputs": outputs,
                "seconds": t,
                "us_per_output": 1e6 * t / outputs,
                "naive_over_this": t_naive / t,
                "max_abs_diff_vs_naive": diff,
                "runs": naive_reps if name == "sliding window" else args.repeats,
            }
            rows.append(row)
            print(
                f"{size:>5} {name:<17} {outputs:>10,} {t:>10.4f} {row['us_per_output']:>10.3f} "
                f"{row['naive_over_this']:>9.0f}x {diff:>10.1e}",
                flush=True,
            )
        print(work)
    if args.json:
        from pixelwise.files import write_json

        write_json(args.json, {"environment": env, "window": WINDOW, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
