"""Inference and training speed of the pixelwise models, per engine, against torchvision / SMP.

    python bench/speed.py [--models fcn8s unet_same ...] [--widths 0.25 0.5 1] [--sizes 256 512]
        [--engines eager fast onnxruntime] [--peers auto|on|off] [--match-smp]
        [--repeats 5] [--threads N] [--train] [--train-only] [--amp-check]
        [--json FILE] [--plot FILE] [--quick]

For every model x width x size (batch 1, random weights, random input, 21 classes): parameters,
multiply-adds per image (``torch.utils.flop_counter.FlopCounterMode``, MACs = FLOPs / 2, counted
on what actually runs: the valid U-Net's mirror-padded input included), the median latency over
``--repeats`` timed runs after two warm-up runs, images/s, achieved GFLOP/s and that as a share of
the peak of a 2048x2048 fp32 matmul measured in the same run. Engines (``--engines``):

    eager        model.eval() under torch.no_grad(), NCHW: what plain PyTorch code does
    inference    + torch.inference_mode()                        (ablation step)
    cl           + channels-last tensors                         (ablation step)
    fast         + BatchNorm folded: pixelwise's torch engine (pixelwise.engines.TorchEngine)
    compile      fast + torch.compile (slow to start: compiles per model and size)
    onnxruntime  exported to ONNX, run by ONNX Runtime (pixelwise.engines.OnnxRuntimeEngine)
    ort_spin     onnxruntime with its worker threads spinning between calls (ORT's default)
    onnxruntime-int8  the ONNX file quantized to int8 by the code `pixelwise export --int8`
                 uses (pixelwise.export_formats.quantize_onnx: QDQ, per-channel int8 weights,
                 uint8 activations), calibrated on 4 random normal images of the row's size
                 (random weights anyway; accuracy is bench/int8.py's job)
    ort_int8_qop the same in ONNX Runtime's QOperator format (QLinearConv written directly)
    auto         --engine auto (pixelwise.engines.AutoEngine) on a scratch run folder of the
                 model: its first (warm-up) call times torch, onnxruntime and the int8 file
                 above (recorded as the run's checked int8 file, though only calibrated on
                 random images: for timing only) and keeps the fastest; the choice is printed

Every timed call of every entry -- and the matmul -- is interleaved round-robin (round r times
each entry once), so a noisy, shared machine slows all of them alike and the ratios stay fair.
Each row also gives the share of pixels whose argmax equals the eager model's.

When torchvision and segmentation_models_pytorch are importable (``pip install
'pixelwise[bench]'``), torchvision's fcn_resnet50 and lraspp_mobilenet_v3_large and SMP's
Unet(resnet34) join the same round-robin, with random weights, through the same engines
(``--match-smp`` adds unet_same at the width whose MACs match SMP's U-Net at the largest size;
``--unet-shapes 24:5`` adds unet_same at base width 24 and depth 5, which moves MACs from the
full-resolution layers to the wide low-resolution ones, as ResNet-34's encoder has them).

``--train``: the training step (forward, backward, SGD step; channels-last as ``pixelwise
train``) at batch 4 and 256x256 (``--train-batch``, ``--train-size``), in fp32 and under bf16
autocast, round-robin too. Training FLOPs are counted over forward and backward; the counter
counts the weight gradient of a grouped convolution ``groups`` times too high, so the bench
subtracts ``(groups - 1)`` times each grouped conv's forward FLOPs (only the peers' MobileNet has
grouped convs). ``--amp-check``: trains the demo's U-Net on the digits scenes for
``--amp-epochs`` epochs in fp32 and in bf16 and prints both validation mean IoUs and times.

``--device cuda``: every model and peer on the GPU in fp32 (NCHW) and under fp16 and bf16
autocast with channels-last tensors, batch 1 and ``--cuda-batch``, timed with CUDA events; with
``--train``, the training step too (fp16 with a gradient scaler), with its peak GPU memory.

Output: a table on stdout, ``--json FILE``, ``--plot FILE`` (latency vs MACs, with the matmul
peak as a line). ``--quick``: fcn8s and unet_same at width 0.5, 512x512, 3 repeats (~2 min on
2 cores). docs/performance.md has the tables and the exact commands.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pixelwise.engines import OnnxRuntimeEngine, TorchEngine, make_engine
from pixelwise.export_formats import quantize_onnx
from pixelwise.losses import pixel_cross_entropy
from pixelwise.models import build
from pixelwise.predict import forward_full

CLASSES = 21
ENGINES = (
    "eager", "inference", "cl", "fast", "compile", "onnxruntime", "ort_spin",
    "onnxruntime-int8", "ort_int8_qop", "auto",
)  # fmt: skip
PEERS = ("tv_fcn_resnet50", "tv_lraspp_mobilenet_v3", "smp_unet_resnet34")
MATMUL_N = 2048


# ---------------------------------------------------------------------------------- counting


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` by torch's FLOP counter (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def grouped_conv_overcount(model: nn.Module, fn: Callable[[], Any]) -> int:
    """FLOPs the counter adds too many for the weight gradients of grouped convolutions.

    FlopCounterMode counts a grouped conv's weight gradient as ``groups`` times its forward
    FLOPs; the true count equals the forward FLOPs. Runs ``fn()`` (a forward) with hooks that
    sum ``(groups - 1) * forward FLOPs`` over the grouped convs whose weights need gradients.
    """
    total = 0

    def hook(m: nn.Module, args: tuple, out: Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        if isinstance(m, nn.ConvTranspose2d):
            fwd = 2 * args[0].numel() * (m.out_channels // m.groups) * kh * kw
        else:
            fwd = 2 * out.numel() * (m.in_channels // m.groups) * kh * kw
        total += (m.groups - 1) * fwd

    grouped = [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.groups > 1 and m.weight.requires_grad
    ]
    handles = [m.register_forward_hook(hook) for m in grouped]
    try:
        with torch.no_grad():
            fn()
    finally:
        for h in handles:
            h.remove()
    return total


# ------------------------------------------------------------------------------------- models


class Peer(nn.Module):
    """A torchvision / SMP segmentation net as pixelwise sees a model: logits tensor out
    (torchvision returns a dict), ``border`` 0, ``output_size`` = input size."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.in_channels = 3
        self.border = 0

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out["out"] if isinstance(out, dict) else out

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        return h, w


def peers_available() -> dict[str, bool]:
    import importlib.util

    tv = importlib.util.find_spec("torchvision") is not None
    smp = importlib.util.find_spec("segmentation_models_pytorch") is not None
    return {PEERS[0]: tv, PEERS[1]: tv, PEERS[2]: smp}


def build_peer(name: str) -> nn.Module:
    """Random-weight peers (no download: ``weights=None``, ``encoder_weights=None``)."""
    if name == "tv_fcn_resnet50":
        from torchvision.models.segmentation import fcn_resnet50

        net = fcn_resnet50(weights=None, weights_backbone=None, num_classes=CLASSES)
    elif name == "tv_lraspp_mobilenet_v3":
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=CLASSES)
    elif name == "smp_unet_resnet34":
        import segmentation_models_pytorch as smp

        net = smp.Unet("resnet34", encoder_weights=None, classes=CLASSES)
    else:
        raise ValueError(name)
    return Peer(net)


@dataclass
class Spec:
    """One network to time: a registry model at a width, or a peer."""

    name: str
    width: float | None = None  # None: a peer
    note: str = ""
    base: int | None = None  # unet_same's base_width, depth, stem_width (--unet-shapes)
    depth: int | None = None
    stem: int | None = None

    @property
    def label(self) -> str:
        if self.base is not None:
            stem = f" s{self.stem}" if self.stem is not None else ""
            return f"{self.name} b{self.base} d{self.depth}{stem}"
        return self.name if self.width is None else f"{self.name} w{self.width:g}"

    def build(self) -> nn.Module:
        torch.manual_seed(0)
        if self.width is None:
            return build_peer(self.name).eval()
        shape = {} if self.base is None else {"base_width": self.base, "depth": self.depth}
        if self.stem is not None:
            shape["stem_width"] = self.stem
        return build(self.name, CLASSES, width=self.width, **shape).eval()


def shaped(shapes: list[str]) -> list[Spec]:
    """``--unet-shapes BASE:DEPTH[:STEM] ...``: unet_same at those base widths, depths (4 when
    left out) and full-resolution (stem) widths."""
    out = []
    for item in shapes:
        try:
            numbers = [int(v) for v in item.split(":")]
        except ValueError:
            numbers = []
        if not 1 <= len(numbers) <= 3 or min(numbers) < 1:
            raise SystemExit(f"--unet-shapes {item!r}: expected BASE[:DEPTH[:STEM]], e.g. 28:4:16")
        base, depth, stem = numbers[0], numbers[1] if len(numbers) > 1 else 4, numbers[2:]
        out.append(Spec("unet_same", 1.0, base=base, depth=depth, stem=stem[0] if stem else None))
    return out


def params_of(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------ engines


def export_peer(model: nn.Module, path: Path, example: Tensor) -> None:
    """ONNX export of a peer (the pixelwise exporter needs pixelwise's geometry methods)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )


def make_call(
    engine: str, model: nn.Module, x: Tensor, spec: Spec, tmp: Path, threads: int
) -> Callable[[], Tensor]:
    """A no-argument callable running one forward of ``engine`` on ``x`` (logits out)."""
    if engine == "eager":

        def eager() -> Tensor:
            with torch.no_grad():
                return forward_full(model, x)

        return eager
    if engine in ("inference", "cl"):
        fmt = torch.channels_last if engine == "cl" else torch.contiguous_format
        net = model if engine == "inference" else _copy_to(model, fmt)

        def plain() -> Tensor:  # the format change after forward_full's mirror padding
            with torch.inference_mode():
                return forward_full(model, x, net=lambda t: net(t.contiguous(memory_format=fmt)))

        return plain
    if engine in ("fast", "compile"):
        eng = TorchEngine(model, compile=engine == "compile")
        return lambda: forward_full(model, x, net=eng)
    if engine in ("onnxruntime", "ort_spin"):
        path = tmp / f"{spec.label.replace(' ', '_')}.onnx"
        if not path.is_file():
            if spec.width is None:
                export_peer(model, path, x)
            else:
                make_engine(model, "onnxruntime", onnx_path=path, threads=threads)
        ort = OnnxRuntimeEngine(path, threads, spin=engine == "ort_spin")
        return lambda: forward_full(model, x, net=ort)
    if engine in ("onnxruntime-int8", "ort_int8_qop"):
        fmt = "qdq" if engine == "onnxruntime-int8" else "qoperator"
        path = tmp / f"{spec.label.replace(' ', '_')}.{x.shape[-1]}.{fmt}.onnx"
        make_call("onnxruntime", model, x, spec, tmp, threads)  # writes the float file
        quantize_onnx(tmp / f"{spec.label.replace(' ', '_')}.onnx", path, _calibration(model, x),
                      fmt=fmt)  # fmt: skip
        ort = OnnxRuntimeEngine(path, threads)
        return lambda: forward_full(model, x, net=ort)
    if engine == "auto":
        return _auto_call(model, x, spec, tmp, threads)
    raise ValueError(engine)


AUTO: dict[str, Any] = {}  # label -> the AutoEngine, to print its choice


def _auto_call(
    model: nn.Module, x: Tensor, spec: Spec, tmp: Path, threads: int
) -> Callable[[], Tensor]:
    """``--engine auto`` on a scratch run of ``model`` (config.json + best.safetensors), with
    the bench's int8 file recorded as the run's checked one (timing only: see the docstring)."""
    from pixelwise import __version__
    from pixelwise.data.classes import ClassInfo
    from pixelwise.engines import AutoEngine, int8_record
    from pixelwise.export_formats import set_onnx_metadata
    from pixelwise.files import write_json
    from pixelwise.runs import RUN_FORMAT, save_checkpoint

    if spec.width is None:
        raise ValueError("auto: registry models only")
    run = tmp / f"run-{spec.label.replace(' ', '_')}-{x.shape[-1]}"
    write_json(run / "config.json", {
        "format": "pixelwise-run", "version": RUN_FORMAT, "pixelwise": __version__,
        "model": {"name": spec.name, "num_classes": CLASSES, "kwargs": {"width": spec.width}},
        "classes": ClassInfo.default(CLASSES).to_dict(),
        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
    })  # fmt: skip
    save_checkpoint(run, "best", model, {"epoch": 0})
    int8 = tmp / f"{spec.label.replace(' ', '_')}.{x.shape[-1]}.qdq.onnx"
    if not int8.is_file():
        make_call("onnxruntime-int8", model, x, spec, tmp, threads)
    check = {"passed": True, "note": "bench/speed.py: random calibration, not checked"}
    props = int8_record(run / "best.safetensors", run / "config.json", check)
    (run / "best.int8.onnx").write_bytes(int8.read_bytes())
    set_onnx_metadata(run / "best.int8.onnx", props)
    auto = AutoEngine(model, run, threads=threads)
    AUTO[f"{spec.label} {x.shape[-1]}"] = auto
    return lambda: forward_full(model, x, net=auto)


def _calibration(model: nn.Module, x: Tensor, count: int = 4) -> list[Any]:
    """``count`` random normal inputs shaped as what the net receives for ``x`` (the valid
    U-Net's mirror padding included), for int8 calibration."""
    seen: list[Tensor] = []

    def capture(t: Tensor) -> Tensor:
        seen.append(t)
        return torch.zeros(t.shape[0], 1, *model.output_size(*t.shape[-2:]))

    if hasattr(model, "border"):
        forward_full(model, x, net=capture)
    shape = seen[0].shape if seen else x.shape
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=gen).numpy() for _ in range(count)]


def _copy_to(model: nn.Module, fmt: torch.memory_format) -> nn.Module:
    import copy

    return copy.deepcopy(model).to(memory_format=fmt)


# ------------------------------------------------------------------------------------- timing


@dataclass
class Entry:
    """One timed callable and what to report about it."""

    key: dict[str, Any]
    call: Callable[[], Any]
    times: list[float] = field(default_factory=list)
    output: Tensor | None = None
    first: float = float("nan")  # seconds of the first (warm-up) call: compilation shows here


def matmul_call() -> Callable[[], Tensor]:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(MATMUL_N, MATMUL_N, generator=gen)
    b = torch.randn(MATMUL_N, MATMUL_N, generator=gen)
    return lambda: a @ b


def round_robin(entries: list[Entry], repeats: int, warmup: int, say: Callable) -> None:
    """Warm every entry up, then time ``repeats`` rounds of one call per entry."""
    for e in entries:
        for i in range(warmup):
            t0 = time.perf_counter()
            e.output = e.call()
            if i == 0:
                e.first = time.perf_counter() - t0
    for r in range(repeats):
        say(f"round {r + 1}/{repeats}")
        for e in entries:
            t0 = time.perf_counter()
            e.call()
            e.times.append(time.perf_counter() - t0)


# ------------------------------------------------------------------------------------ reports


def environment(threads: int) -> dict[str, Any]:
    env = {
        "torch": torch.__version__,
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "python": platform.python_version(),
        "loadavg_at_start": _loadavg(),
    }
    for mod in ("onnxruntime", "torchvision", "segmentation_models_pytorch"):
        with contextlib.suppress(ImportError):
            env[mod] = __import__(mod).__version__
    return env


def _loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages: how busy the machine was with other work."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def print_table(rows: list[dict[str, Any]], peak: float) -> None:
    header = (
        f"{'model':<26} {'size':>5} {'params':>8} {'GMAC':>7} {'engine':<16} {'ms':>9} "
        f"{'img/s':>7} {'GFLOP/s':>8} {'% peak':>7} {'x eager':>8} {'x ort':>7} {'argmax=':>8}"
    )
    print(header)
    print("-" * len(header))
    last = None
    for r in rows:
        group = (r["model"], r["size"])
        if last is not None and group != last:
            print()
        last = group
        print(
            f"{r['model']:<26} {r['size']:>5} {r['params'] / 1e6:>7.2f}M {r['gmac']:>7.2f} "
            f"{r['engine']:<16} {1000 * r['seconds']:>9.1f} {r['images_per_s']:>7.2f} "
            f"{r['gflops']:>8.1f} {100 * r['gflops'] / peak:>6.0f}% "
            + _or_dash(r["speedup_vs_eager"], "{:>7.2f}x", 8)
            + " "
            + _or_dash(r.get("speedup_vs_onnxruntime", math.nan), "{:>6.2f}x", 7)
            + " "
            + _or_dash(100 * r["argmax_agreement"], "{:>7.2f}%", 8)
        )


def _or_dash(value: float, fmt: str, width: int) -> str:
    return " " * (width - 1) + "-" if math.isnan(value) else fmt.format(value)


def print_train_table(rows: list[dict[str, Any]], peak: float) -> None:
    header = (
        f"{'model':<26} {'batch x size':>12} {'precision':<9} {'step ms':>9} {'img/s':>7} "
        f"{'GFLOP/step':>10} {'GFLOP/s':>8} {'% peak':>7} {'x fp32':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:<26} {r['batch']:>4} x {r['size']:<5} {r['precision']:<9} "
            f"{1000 * r['seconds']:>9.1f} {r['images_per_s']:>7.2f} {r['gflop_per_step']:>10.1f} "
            f"{r['gflops']:>8.1f} {100 * r['gflops'] / peak:>6.0f}% {r['speedup_vs_fp32']:>6.2f}x"
        )


def plot(rows: list[dict[str, Any]], peak: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    from pixelwise.files import atomic_path

    fig, ax = plt.subplots(figsize=(8.5, 5.5), dpi=110)
    markers = {"eager": "o", "inference": "v", "cl": "^", "fast": "s", "compile": "P"}
    markers["onnxruntime"] = "D"
    markers["onnxruntime-int8"] = "*"
    colors: dict[str, Any] = {}
    cmap = plt.get_cmap("tab10")
    for r in rows:
        c = colors.setdefault(r["model"], cmap(len(colors) % 10))
        ax.scatter(
            r["gmac"], 1000 * r["seconds"], marker=markers.get(r["engine"], "x"), color=c, s=36
        )
    xs = [r["gmac"] for r in rows]
    lo, hi = min(xs) / 1.5, max(xs) * 1.5
    grid = [lo * (hi / lo) ** (i / 50) for i in range(51)]
    ax.plot(
        grid, [2e3 * g / peak for g in grid], "k-", lw=1, label=f"matmul peak {peak:.0f} GFLOP/s"
    )
    ax.plot(grid, [2e3 * g / (0.75 * peak) for g in grid], "k--", lw=0.8, label="75% of peak")
    for model, c in colors.items():
        ax.scatter([], [], color=c, marker="s", label=model)
    for engine, m in markers.items():
        if any(r["engine"] == engine for r in rows):
            ax.scatter([], [], color="black", marker=m, label=f"engine: {engine}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("multiply-adds per image (GMAC)")
    ax.set_ylabel("latency per image (ms, batch 1)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# ----------------------------------------------------------------------------------- training


def train_call(
    model: nn.Module, batch: int, size: int, amp: torch.dtype | None
) -> Callable[[], Tensor]:
    """One training step as ``pixelwise train`` does it (channels-last, SGD with momentum);
    the valid U-Net gets an overlap tile whose output is ``size - 2 * border``, as in train."""
    border = int(getattr(model, "border", 0))
    side = size
    if border:
        side = model.valid_input_size(*(2 * [max(1, size - 2 * border)]))[0]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, side, side, generator=gen).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, CLASSES, (batch, side, side), generator=gen)
    model = model.train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6, momentum=0.9)

    def step() -> Tensor:
        with torch.autocast("cpu", amp or torch.float32, enabled=amp is not None):
            logits = model(x).float()
        loss = pixel_cross_entropy(logits, y, border=border or None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    step.inputs = (x, y, border)  # type: ignore[attr-defined]
    return step


def train_flops(model: nn.Module, step: Callable[[], Tensor]) -> int:
    """Forward + backward FLOPs of one fp32 step, corrected for grouped convs."""
    x, y, border = step.inputs  # type: ignore[attr-defined]

    def fwd_bwd() -> None:
        loss = pixel_cross_entropy(model(x).float(), y, border=border or None)
        loss.backward()
        model.zero_grad(set_to_none=True)

    flops = count_flops(fwd_bwd)
    return flops - grouped_conv_overcount(model, lambda: model(x))


# -------------------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=["fcn8s", "unet", "unet_same", "segnet"])
    p.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--engines", nargs="+", default=["eager", "fast", "onnxruntime"])
    p.add_argument("--peers", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--peer-models", nargs="+", default=list(PEERS), choices=PEERS)
    p.add_argument("--match-smp", action="store_true", help="add unet_same at SMP's MACs")
    p.add_argument(
        "--unet-shapes",
        nargs="*",
        default=[],
        metavar="BASE:DEPTH[:STEM]",
        help="also unet_same at these base widths, depths and stem widths, e.g. 24:5 or 28:4:16 "
        "(MACs moved to low resolution)",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int)
    p.add_argument("--train", action="store_true", help="also time training steps")
    p.add_argument("--train-only", action="store_true", help="time training steps only")
    p.add_argument("--train-models", nargs="+", help="default: --models")
    p.add_argument("--train-widths", type=float, nargs="+", help="default: --widths")
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-size", type=int, default=256)
    p.add_argument("--train-peers", action="store_true", help="also time the peers' training")
    p.add_argument(
        "--train-precisions",
        nargs="+",
        default=["fp32", "bf16"],
        choices=("fp32", "bf16"),
        help="fp32 only on a CPU without native bf16, where bf16 is emulated and slow",
    )
    p.add_argument("--amp-check", action="store_true", help="digits demo: fp32 vs bf16 accuracy")
    p.add_argument("--amp-epochs", type=int, default=3)
    p.add_argument("--amp-images", type=int, default=2000, help="training scenes (demo: 2000)")
    p.add_argument("--amp-modes", nargs="+", default=["off", "bf16"], choices=("off", "bf16"))
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    p.add_argument("--plot-from", type=Path, metavar="JSON", help="redraw --plot from a --json")
    p.add_argument("--quick", action="store_true", help="fcn8s + unet_same, w0.5, 512, 3 reps")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: fp32, fp16 and "
                   "bf16 autocast with channels-last, timed with CUDA events")  # fmt: skip
    p.add_argument("--cuda-batch", type=int, default=16, help="--device cuda: the batched row")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.widths, args.sizes, args.repeats = ["fcn8s", "unet_same"], [0.5], [512], 3
    bad = [e for e in args.engines if e not in ENGINES]
    if bad:
        p.error(f"--engines: unknown {bad}; choose from {', '.join(ENGINES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA GPU here; run it on a GPU machine")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.plot_from:
        import json

        saved = json.loads(args.plot_from.read_text())
        env = saved["environment"]
        plot(saved["rows"], saved["matmul_gflops"], args.plot or Path("speed.png"), _title(env))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    env = environment(threads)

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    print(
        f"torch {env['torch']}, {threads} thread(s), {env['cpu_count']} CPUs ({env['processor']}); "
        + ", ".join(f"{k} {env[k]}" for k in ("onnxruntime", "torchvision") if k in env)
        + f"; load average at start {env['loadavg_at_start']}"
    )
    out: dict[str, Any] = {"environment": env, "args": _jsonable(vars(args))}
    if args.device == "cuda":
        out.update(cuda_bench(args, say))
    elif args.amp_check:
        out["amp_check"] = amp_check(args.amp_epochs, args.amp_images, args.amp_modes, say)
    shaped(args.unet_shapes)  # a malformed shape stops here, before anything is timed
    wanted = args.models or args.unet_shapes or args.peers != "off"
    if args.device == "cpu" and not args.train_only and wanted:
        out.update(inference(args, threads, say))
    if args.device == "cpu" and (args.train or args.train_only):
        out.update(training(args, say))
    env["loadavg_at_end"] = _loadavg()
    print(f"\nload average at end {env['loadavg_at_end']} (1, 5, 15 min; {env['cpu_count']} CPUs)")
    if args.json:
        from pixelwise.files import write_json

        write_json(args.json, out)
        print(f"wrote {args.json}")
    return 0


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def inference(args: argparse.Namespace, threads: int, say: Callable) -> dict[str, Any]:
    have = peers_available()
    use_peers = args.peers == "on" or (args.peers == "auto" and all(have.values()))
    if args.peers == "on" and not all(have.values()):
        missing = [k for k, v in have.items() if not v]
        raise SystemExit(
            f"--peers on: cannot import {', '.join(missing)}; pip install 'pixelwise[bench]'"
        )
    specs = [Spec(m, w) for m in args.models for w in args.widths] + shaped(args.unet_shapes)
    if use_peers:
        specs += [Spec(p) for p in args.peer_models]
    if use_peers and args.match_smp and "smp_unet_resnet34" in args.peer_models:
        size = max(args.sizes)
        x = torch.randn(1, 3, size, size)
        smp_macs = count_flops(lambda: _no_grad(build_peer("smp_unet_resnet34").eval(), x)) / 2
        full = count_flops(lambda: _no_grad(build("unet_same", CLASSES).eval(), x)) / 2
        width = round(math.sqrt(smp_macs / full), 3)
        specs.append(Spec("unet_same", width, note=f"MACs matched to smp_unet_resnet34 at {size}"))
        say(f"unet_same width {width} matches smp Unet-ResNet34's {smp_macs / 1e9:.1f} GMAC")

    entries: list[Entry] = [Entry({"engine": "matmul"}, matmul_call())]
    info: dict[tuple[str, int], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="pixelwise-speed-") as tmpdir:
        tmp = Path(tmpdir)
        for spec in specs:
            model = spec.build()
            for size in args.sizes:
                gen = torch.Generator().manual_seed(size)
                x = torch.randn(1, 3, size, size, generator=gen)
                macs = count_flops(lambda m=model, x=x: _no_grad_full(m, x)) / 2
                info[(spec.label, size)] = {"params": params_of(model), "macs": macs}
                for engine in args.engines:
                    say(f"preparing {spec.label} {size} {engine}")
                    try:
                        call = make_call(engine, model, x, spec, tmp, threads)
                    except Exception as err:  # report and go on: one engine failing is a result
                        say(f"  {spec.label} {engine}: {type(err).__name__}: {err}")
                        continue
                    key = {"model": spec.label, "size": size, "engine": engine, "spec": spec}
                    entries.append(Entry(key, call))
        say(f"{len(entries) - 1} entries + matmul, {args.repeats} rounds")
        round_robin(entries, args.repeats, args.warmup, say)

    peak = 2 * MATMUL_N**3 / statistics.median(entries[0].times) / 1e9
    rows = []
    eager_out: dict[tuple[str, int], Tensor] = {}
    eager_time: dict[tuple[str, int], float] = {}
    ort_time: dict[tuple[str, int], float] = {}
    for e in entries[1:]:
        if e.key["engine"] == "onnxruntime":
            ort_time[(e.key["model"], e.key["size"])] = statistics.median(e.times)
        if e.key["engine"] == "eager":
            eager_out[(e.key["model"], e.key["size"])] = e.output
            eager_time[(e.key["model"], e.key["size"])] = statistics.median(e.times)
    for e in entries[1:]:
        k = (e.key["model"], e.key["size"])
        t = statistics.median(e.times)
        ref = eager_out.get(k)
        agree = float("nan")
        if ref is not None and e.output is not None:
            agree = float((e.output.argmax(1) == ref.argmax(1)).double().mean())
        spec = e.key["spec"]
        rows.append(
            {
                "model": e.key["model"],
                "name": spec.name,
                "width": spec.width,
                "peer": spec.width is None,
                "note": spec.note,
                "size": e.key["size"],
                "engine": e.key["engine"],
                "params": info[k]["params"],
                "gmac": info[k]["macs"] / 1e9,
                "seconds": t,
                "seconds_min": min(e.times),
                "first_call_seconds": e.first,
                "times": e.times,
                "images_per_s": 1 / t,
                "gflops": 2 * info[k]["macs"] / t / 1e9,
                "utilisation": 2 * info[k]["macs"] / t / 1e9 / peak,
                "speedup_vs_eager": eager_time[k] / t if k in eager_time else float("nan"),
                "speedup_vs_onnxruntime": ort_time[k] / t if k in ort_time else float("nan"),
                "argmax_agreement": agree,
            }
        )
    print(
        f"\nfp32 matmul {MATMUL_N}x{MATMUL_N} peak: {peak:.1f} GFLOP/s (median of {args.repeats}, "
        f"interleaved with the models); batch 1, {CLASSES} classes, random weights\n"
    )
    print_table(rows, peak)
    for label, auto in AUTO.items():
        timed = ", ".join(f"{k} {v:.1f}" for k, v in auto.timings_ms.items())
        print(f"\nauto on {label}: chose {auto.choice} (its first call's medians, ms: {timed})")
    for s in specs:
        if s.note:
            print(f"\n{s.label}: {s.note}")
    if args.plot:
        plot(rows, peak, args.plot, _title(environment(threads)))
        print(f"wrote {args.plot}")
    return {"matmul_gflops": peak, "matmul_times": entries[0].times, "rows": rows}


def _title(env: dict[str, Any]) -> str:
    threads = f"{env['threads']} thread" + ("s" if env["threads"] != 1 else "")
    return f"batch-1 inference latency vs MACs, torch {env['torch']}, {threads}, {env['processor']}"


def _no_grad(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x)


def _no_grad_full(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return forward_full(model, x)


def training(args: argparse.Namespace, say: Callable) -> dict[str, Any]:
    models = args.train_models or args.models
    widths = args.train_widths or args.widths
    specs = [Spec(m, w) for m in models for w in widths] + shaped(args.unet_shapes)
    if args.train_peers and all(peers_available().values()):
        specs += [Spec(p) for p in args.peer_models]
    entries: list[Entry] = [Entry({"precision": "matmul"}, matmul_call())]
    flops: dict[str, int] = {}
    for spec in specs:
        for precision, amp in (("fp32", None), ("bf16", torch.bfloat16)):
            if precision not in args.train_precisions:
                continue
            model = spec.build()
            step = train_call(model, args.train_batch, args.train_size, amp)
            if spec.label not in flops:  # fp32 FLOPs, counted once per model
                flops[spec.label] = train_flops(model, step)
            entries.append(Entry({"model": spec.label, "precision": precision}, step))
    say(f"training: {len(entries) - 1} entries + matmul, {args.repeats} rounds")
    round_robin(entries, args.repeats, args.warmup, say)
    peak = 2 * MATMUL_N**3 / statistics.median(entries[0].times) / 1e9
    fp32 = {
        e.key["model"]: statistics.median(e.times)
        for e in entries[1:]
        if e.key["precision"] == "fp32"
    }
    rows = []
    for e in entries[1:]:
        t = statistics.median(e.times)
        f = flops[e.key["model"]]
        rows.append(
            {
                "model": e.key["model"],
                "batch": args.train_batch,
                "size": args.train_size,
                "precision": e.key["precision"],
                "seconds": t,
                "times": e.times,
                "images_per_s": args.train_batch / t,
                "gflop_per_step": f / 1e9,
                "gflops": f / t / 1e9,
                "utilisation": f / t / 1e9 / peak,
                "speedup_vs_fp32": fp32.get(e.key["model"], float("nan")) / t,
                "final_loss": float(e.output) if e.output is not None else None,
            }
        )
    print(
        f"\ntraining step (forward + backward + SGD, channels-last), fp32 matmul peak "
        f"{peak:.1f} GFLOP/s in the same rounds; GFLOP/s counts the fp32 FLOPs\n"
    )
    print_train_table(rows, peak)
    return {"train_matmul_gflops": peak, "train_rows": rows}


def amp_check(epochs: int, images: int, modes: list[str], say: Callable) -> dict[str, Any]:
    """The demo's U-Net on ``images`` digits scenes, ``epochs`` epochs, fp32 and bf16 autocast
    (same seed, same data order), scored on the demo's validation scenes."""
    from pixelwise.cli import DEMO
    from pixelwise.training import TrainConfig, train

    results = {}
    with tempfile.TemporaryDirectory(prefix="pixelwise-amp-") as tmpdir:
        for amp in modes:
            say(f"amp check: training with --amp {amp}")
            data_args = {**DEMO["data_args"], "num_images": images}
            config = TrainConfig.from_dict(
                {
                    **DEMO,
                    "data_args": data_args,
                    "epochs": epochs,
                    "amp": amp,
                    "out": f"{tmpdir}/{amp}",
                    "overlays": 0,
                }
            )
            t0 = time.perf_counter()
            summary = train(config)
            results[amp] = {
                "seconds": time.perf_counter() - t0,
                "best_mean_iou": summary["best_mean_iou"],
                "last_val_mean_iou": float(summary["last"]["val_mean_iou"]),
                "last_train_loss": float(summary["last"]["train_loss"]),
            }
    print(f"\namp check: pixelwise demo settings, {images} digits scenes, {epochs} epochs")
    print(f"{'amp':<6} {'seconds':>8} {'train loss':>11} {'val mIoU':>9}")
    for amp, r in results.items():
        print(
            f"{amp:<6} {r['seconds']:>8.1f} {r['last_train_loss']:>11.4f} "
            f"{r['last_val_mean_iou']:>9.4f}"
        )
    return results


# ---------------------------------------------------------------------------------------- cuda

CUDA_MODES = ("fp32", "fp16-cl", "bf16-cl")  # autocast dtype + channels-last, as issue 18 asks


def _cuda_model(spec: Spec, mode: str) -> nn.Module:
    model = spec.build().cuda()
    if mode != "fp32":
        model = model.to(memory_format=torch.channels_last)
    return model


def _autocast(mode: str) -> contextlib.AbstractContextManager:
    if mode == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if mode.startswith("fp16") else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)


def cuda_time(call: Callable[[], Any], repeats: int, warmup: int) -> list[float]:
    """Seconds of each of ``repeats`` calls, timed with CUDA events after ``warmup`` calls."""
    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return times


def cuda_inference_row(
    spec: Spec, size: int, batch: int, mode: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Median latency of one forward of ``batch`` images of ``size``; argmax vs fp32."""
    model = _cuda_model(spec, mode)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(size)).cuda()
    if mode != "fp32":
        x = x.contiguous(memory_format=torch.channels_last)

    def call() -> Tensor:
        with torch.inference_mode(), _autocast(mode):
            return forward_full(model, x)

    times = cuda_time(call, args.repeats, args.warmup)
    out = call().float().argmax(1).cpu()
    macs = count_flops(lambda: _no_grad_full(spec.build(), x[:1].float().cpu())) / 2
    t = statistics.median(times)
    return {
        "model": spec.label, "size": size, "batch": batch, "mode": mode, "seconds": t,
        "times": times, "images_per_s": batch / t, "gmac": macs / 1e9,
        "tflops": 2 * macs * batch / t / 1e12, "argmax": out,
    }  # fmt: skip


def cuda_train_row(spec: Spec, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One training step (forward, backward, SGD) at --train-batch x --train-size."""
    model = _cuda_model(spec, mode).train()
    b, s = args.train_batch, args.train_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, s, s, generator=gen).cuda()
    if mode != "fp32":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (b, s, s), generator=gen).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=mode.startswith("fp16"))

    def step() -> Tensor:
        with _autocast(mode):
            logits = forward_full(model, x).float()
        loss = pixel_cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.detach()

    times = cuda_time(step, args.repeats, args.warmup)
    t = statistics.median(times)
    peak_mb = torch.cuda.max_memory_allocated() / 2**20
    return {
        "model": spec.label, "batch": b, "size": s, "mode": mode, "seconds": t,
        "times": times, "images_per_s": b / t, "peak_mb": peak_mb,
    }  # fmt: skip


def cuda_bench(args: argparse.Namespace, say: Callable) -> dict[str, Any]:
    """Inference (batch 1 and --cuda-batch) and training steps on the GPU, per mode."""
    torch.backends.cudnn.benchmark = True
    specs = [Spec(m, w) for m in args.models for w in args.widths]
    if args.peers != "off":
        specs += [Spec(p) for p, ok in peers_available().items() if ok and p in args.peer_models]
    rows, train_rows = [], []
    for spec in specs:
        for size in args.sizes:
            for batch in sorted({1, args.cuda_batch}):
                ref = None
                for mode in CUDA_MODES:
                    say(f"cuda {spec.label} {size} batch {batch} {mode}")
                    row = cuda_inference_row(spec, size, batch, mode, args)
                    amax = row.pop("argmax")
                    ref = amax if ref is None else ref
                    row["argmax_agreement"] = float((amax == ref).double().mean())
                    rows.append(row)
        if args.train or args.train_only:
            for mode in CUDA_MODES:
                say(f"cuda training {spec.label} {mode}")
                torch.cuda.reset_peak_memory_stats()
                train_rows.append(cuda_train_row(spec, mode, args))
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, cudnn.benchmark on")
    print(f"{'model':<26} {'size':>5} {'batch':>5} {'mode':<8} {'ms':>8} {'img/s':>8} "
          f"{'GMAC':>7} {'TFLOP/s':>8} {'argmax=':>8}")  # fmt: skip
    for r in rows:
        print(f"{r['model']:<26} {r['size']:>5} {r['batch']:>5} {r['mode']:<8} "
              f"{1000 * r['seconds']:>8.2f} {r['images_per_s']:>8.1f} {r['gmac']:>7.1f} "
              f"{r['tflops']:>8.1f} {r['argmax_agreement']:>8.4f}")  # fmt: skip
    if train_rows:
        print(f"\ntraining step at batch {args.train_batch}, {args.train_size}x{args.train_size}")
        print(f"{'model':<26} {'mode':<8} {'ms':>8} {'img/s':>8} {'peak MB':>8}")
        for r in train_rows:
            print(f"{r['model']:<26} {r['mode']:<8} {1000 * r['seconds']:>8.2f} "
                  f"{r['images_per_s']:>8.1f} {r['peak_mb']:>8.0f}")  # fmt: skip
    return {"cuda_device": torch.cuda.get_device_name(), "cuda_rows": rows,
            "cuda_train_rows": train_rows}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
