"""Model to file: the ONNX and TorchScript writers, and the check of a written file.

The graph written is the raw model: input ``"image"``, float32 ``(N, in_channels, H, W)``
normalised; output ``"logits"``, ``(N, num_classes, *model.output_size(H, W))``. Batch, height
and width are dynamic.

Both formats use ``torch.jit.trace`` (the ONNX file through the TorchScript-based exporter,
``torch.onnx.export(..., dynamo=False)``), which handles every registry model once the max
unpooling of SegNet / DeconvNet is rewritten as a scatter (:class:`ScatterUnpool`, identical
results): ``F.max_unpool2d`` checks its ``output_size`` with a Python ``bool`` that cannot be
traced. Shape-dependent crops stay dynamic because the tracer records them from ``x.shape``;
:func:`verify_export` checks a written file by running it on two unrelated image sizes.

This is the prediction layer's half of exporting: :mod:`pixelwise.engines` (the ONNX Runtime
engine) and :mod:`pixelwise.export` (a run's file with its metadata) both build on it.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pixelwise import __version__
from pixelwise.errors import ConfigError
from pixelwise.files import atomic_path
from pixelwise.models.base import SegmentationModel

__all__ = [
    "ARGMAX_AGREEMENT",
    "INT8_FORMATS",
    "LOGIT_TOLERANCE",
    "ScatterUnpool",
    "export_onnx",
    "export_torchscript",
    "exportable",
    "int8_convolutions",
    "min_input_size",
    "quantize_onnx",
    "read_onnx_metadata",
    "read_torchscript_metadata",
    "set_onnx_metadata",
    "verify_export",
]

EXTRA_FILE = "pixelwise.json"  # TorchScript ``_extra_files`` entry holding the metadata
ARGMAX_AGREEMENT = 0.999  # exported vs torch: share of pixels with the same argmax, at least
LOGIT_TOLERANCE = 1e-3  # max |difference| / (logit range of the torch output), at most


class ScatterUnpool(nn.Module):
    """Drop-in for ``nn.MaxUnpool2d(k, k)`` (kernel = stride, no padding) written as a scatter.

    ``(N, C, h, w)`` values and the pool's flat per-plane indices -> ``(N, C, H, W)`` zeros with
    each value written at its index; ``output_size`` gives ``(..., H, W)``. Traces to ONNX
    ``ScatterElements`` with dynamic shapes, where ``F.max_unpool2d`` cannot be traced at all.
    """

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int]) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(
        self, x: Tensor, indices: Tensor, output_size: list[int] | tuple[int, ...] | None = None
    ) -> Tensor:
        n, c = x.shape[0], x.shape[1]
        if output_size is None:
            k = _pair(self.stride)
            height, width = x.shape[2] * k[0], x.shape[3] * k[1]
        else:
            height, width = output_size[-2], output_size[-1]
        out = torch.zeros(n, c, height * width, dtype=x.dtype, device=x.device)
        out = out.scatter(2, indices.reshape(n, c, -1), x.reshape(n, c, -1))
        return out.reshape(n, c, height, width)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def exportable(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode, with every ``nn.MaxUnpool2d`` (kernel = stride, no
    padding) replaced by :class:`ScatterUnpool`; ``ConfigError`` for other unpoolings."""
    net = copy.deepcopy(model).cpu().eval()
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MaxUnpool2d):
                if _pair(child.kernel_size) != _pair(child.stride) or _pair(child.padding) != (
                    0,
                    0,
                ):
                    raise ConfigError(
                        f"export: {type(model).__name__} uses a MaxUnpool2d with overlapping "
                        "windows or padding, which the exporter cannot rewrite"
                    )
                setattr(parent, name, ScatterUnpool(child.kernel_size, child.stride))
    return net


def min_input_size(model: SegmentationModel, limit: int = 4096) -> int:
    """Smallest ``n`` such that the exported graph handles ``n x n`` (and larger) inputs.

    ``model.output_size`` raises below the model's own minimum. A model that mirror-pads its own
    input (``model.pad`` / ``model.pad_after``: the convolutionalized FCN, by up to
    ``patch_size // 2`` pixels) is traced doing it in one reflection, which needs more pixels
    than its width, so the graph needs ``max(pad) + 1`` pixels.
    """
    n = 1
    while n < limit:
        try:
            model.output_size(n, n)
            break
        except ConfigError:
            n += 1
    pads = [*model.pad, *model.pad_after]
    if max(pads) > 0:
        n = max(n, max(pads) + 1)
    return n


def _example_input(model: SegmentationModel, in_channels: int) -> Tensor:
    """A non-square batch of 2 the model accepts (the trace sees distinct sizes per axis)."""
    base = max(min_input_size(model), 40)
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, in_channels, base + 8, base + 24, generator=gen)


def _trace_quietly(fn: Callable[[], Any]) -> Any:
    """Call ``fn`` without TracerWarnings (the models' size checks) and torch.jit deprecation
    warnings (torch 2.9+ deprecates TorchScript in favour of torch.export)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def export_onnx(
    model: SegmentationModel,
    path: str | Path,
    *,
    in_channels: int,
    metadata: dict[str, str] | None = None,
    opset: int = 17,
) -> Path:
    """Write ``model`` as ONNX to ``path`` (atomically) and return ``path``.

    Input ``"image"``: float32 ``(N, in_channels, H, W)``, normalised; output ``"logits"``:
    ``(N, num_classes, H', W')`` (``H' < H`` only for the valid U-Net). Axes 0, 2, 3 are
    dynamic. ``metadata`` (string values; pixelwise stores JSON strings) goes into the model's
    ``metadata_props``. The file is not checked here: :func:`export_run` verifies it.
    """
    import onnx

    net = exportable(model)
    example = _example_input(model, in_channels)
    path = Path(path)
    with atomic_path(path) as tmp:
        _trace_quietly(
            lambda: torch.onnx.export(
                net,
                (example,),
                str(tmp),
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={
                    "image": {0: "batch", 2: "height", 3: "width"},
                    "logits": {0: "batch", 2: "out_height", 3: "out_width"},
                },
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        )
        proto = onnx.load(str(tmp))
        del proto.metadata_props[:]
        for key, value in (metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = str(key), str(value)
        proto.producer_name = "pixelwise"
        proto.producer_version = __version__
        onnx.save(proto, str(tmp))
    return path


def export_torchscript(
    model: SegmentationModel,
    path: str | Path,
    *,
    in_channels: int,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a traced TorchScript file (atomically); same tensors as
    :func:`export_onnx`. ``metadata`` is stored as JSON in the ``pixelwise.json`` extra file."""
    net = exportable(model)
    example = _example_input(model, in_channels)
    path = Path(path)
    with torch.no_grad():
        traced = _trace_quietly(lambda: torch.jit.trace(net, example, check_trace=False))
    extra = {EXTRA_FILE: json.dumps(metadata or {}, indent=1)}
    with atomic_path(path) as tmp:
        _trace_quietly(lambda: torch.jit.save(traced, str(tmp), _extra_files=extra))
    return path


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The pixelwise metadata of an exported ``.onnx`` file, JSON values decoded."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    out: dict[str, Any] = {}
    for entry in proto.metadata_props:
        try:
            out[entry.key] = json.loads(entry.value)
        except json.JSONDecodeError:
            out[entry.key] = entry.value
    return out


def read_torchscript_metadata(path: str | Path) -> dict[str, Any]:
    """The pixelwise metadata of an exported TorchScript file."""
    extra = {EXTRA_FILE: ""}
    _trace_quietly(lambda: torch.jit.load(str(path), map_location="cpu", _extra_files=extra))
    return json.loads(extra[EXTRA_FILE] or "{}")


def _check_sizes(min_size: int) -> list[tuple[int, int, int]]:
    """Two (batch, height, width) sizes, not multiples of each other, >= ``min_size``."""
    m = min_size
    return [(2, max(96, m + 5), max(128, m + 37)), (1, max(160, m + 64), max(112, m + 19))]


def _compare(
    reference: np.ndarray, exported: np.ndarray, size: tuple[int, int, int], fmt: str
) -> dict:
    if exported.shape != reference.shape:
        raise ConfigError(
            f"export: the exported {fmt} file gives logits of shape {exported.shape} for a "
            f"{size[1]}x{size[2]} batch of {size[0]}, the model {reference.shape}; this model's "
            "forward has a shape-dependent step the tracer turned into a constant"
        )
    diff = float(np.abs(exported.astype(np.float64) - reference).max())
    span = float(reference.max() - reference.min())
    agree = float((exported.argmax(1) == reference.argmax(1)).mean())
    return {
        "batch": size[0],
        "height": size[1],
        "width": size[2],
        "logits_shape": list(reference.shape),
        "argmax_agreement": agree,
        "max_abs_diff": diff,
        "logit_range": span,
        "relative_diff": diff / span if span > 0 else (0.0 if diff == 0 else float("inf")),
    }


def _file_runner(path: Path, fmt: str, name: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """The written file as a function of a float32 batch; an ONNX file must first pass
    ``onnx.checker.check_model`` (``ConfigError`` naming ``name`` otherwise)."""
    if fmt == "onnx":
        import onnx
        import onnxruntime as ort

        try:
            onnx.checker.check_model(str(path))
        except Exception as err:  # onnx.checker.ValidationError, or a file onnx cannot parse
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ConfigError(
                f"{name}: the exported file is not a valid ONNX model (onnx.checker: {first}); "
                "the model cannot be exported to onnx"
            ) from None
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(["logits"], {"image": x})[0]
    module = _trace_quietly(lambda: torch.jit.load(str(path), map_location="cpu"))

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


def verify_export(
    model: nn.Module,
    path: str | Path,
    fmt: str,
    in_channels: int,
    min_size: int,
    *,
    name: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Check the exported file ``path`` and run it and ``model`` on two random inputs of
    unrelated sizes (``(N, in_channels, H, W)``, ``H, W >= min_size``).

    An ONNX file must pass ``onnx.checker.check_model``. ``name``: the file to name in errors
    (default ``path``; the caller's final name when ``path`` is a temporary file). Passes when
    the argmax agrees on >= 99.9% of the pixels and the max |logit difference| is <= 1e-3 of the
    torch logits' range. Failing that, the model is run in float64: the file also passes when it
    meets those bounds against that, or is at least as close to it as torch's own float32 result
    (argmax agreement and max difference). Otherwise ``ConfigError``. Returns one dict of
    numbers per input (``reference``: ``float32`` or ``float64``).
    """
    run = _file_runner(Path(path), fmt, name if name is not None else path)
    model = model.cpu().eval()
    gen = torch.Generator().manual_seed(1)
    checks = []
    model64: list[nn.Module] = []
    for size in _check_sizes(min_size):
        x = torch.randn(size[0], in_channels, size[1], size[2], generator=gen)
        with torch.no_grad():
            reference = model(x).double().numpy()
        try:
            exported = run(x.numpy())
        except Exception as err:  # onnxruntime / TorchScript errors come in many types
            raise ConfigError(
                f"export: the exported {fmt} file fails on a {size[1]}x{size[2]} input "
                f"({str(err).splitlines()[0][:200]}); the model cannot be exported to {fmt}"
            ) from None
        check = {**_compare(reference, exported, size, fmt), "reference": "float32"}
        if not _close(check):
            # Nets that unpool with max-pooling indices (SegNet, DeconvNet) amplify rounding: a
            # near-tie in a pooling window resolved the other way moves a value by a pixel. Judge
            # the file against the model in float64 then, as torch's own float32 result is.
            if not model64:
                model64.append(copy.deepcopy(model).double())
            with torch.no_grad():
                exact = model64[0](x.double()).numpy()
            versus = _compare(exact, exported, size, fmt)
            own = _compare(exact, reference, size, fmt)
            as_good = (
                versus["argmax_agreement"] >= own["argmax_agreement"]
                and versus["relative_diff"] <= own["relative_diff"]
            )
            if not (_close(versus) or as_good):
                raise ConfigError(
                    f"export: the exported {fmt} file disagrees with the model on a "
                    f"{size[1]}x{size[2]} input (argmax agreement "
                    f"{100 * check['argmax_agreement']:.3f}%, max |logit difference| "
                    f"{check['max_abs_diff']:.3g} = {check['relative_diff']:.3g} of the logit "
                    f"range; against the model in float64: {100 * versus['argmax_agreement']:.3f}%"
                    f", {versus['relative_diff']:.3g}); nothing was written"
                )
            check = {
                **versus,
                "reference": "float64",
                "float32_argmax_agreement": own["argmax_agreement"],
                "float32_relative_diff": own["relative_diff"],
            }
        checks.append(check)
    return checks


def _close(check: dict[str, Any]) -> bool:
    return (
        check["argmax_agreement"] >= ARGMAX_AGREEMENT and check["relative_diff"] <= LOGIT_TOLERANCE
    )


# ------------------------------------------------------------------------------------- int8

INT8_FORMATS = ("qdq", "qoperator")


def quantize_onnx(
    source: str | Path,
    path: str | Path,
    calibration: list[np.ndarray],
    *,
    per_channel: bool = True,
    fmt: str = "qdq",
    reduce_range: bool = False,
    metadata: dict[str, str] | None = None,
    check_fusion: bool = True,
) -> Path:
    """Write an int8 copy of the float ONNX file ``source`` to ``path`` (atomically).

    Static post-training quantization with ONNX Runtime's tools: the graph is pre-processed
    (``quant_pre_process``: shape inference and graph fusions; skipped if it fails), then
    ``quantize_static`` with weights int8 (per output channel when ``per_channel``),
    activations uint8 (on AVX2 CPUs without VNNI, int8 activations ran 1.4x slower in
    bench/speed.py), ranges by min/max over ``calibration``: float32 arrays ``(1, C, H, W)``
    exactly as the network receives them (normalised, mirror-padded for the valid U-Net; the
    sizes may differ). ``fmt``: ``qdq`` (QuantizeLinear/DequantizeLinear pairs around float
    ops, fused by ONNX Runtime) or ``qoperator`` (QLinearConv etc. written directly). Ops
    without an int8 kernel (ConvTranspose, Resize on the CPU) run in float between a
    DequantizeLinear and a QuantizeLinear. ``metadata`` replaces the file's ``metadata_props``.
    A file in which ONNX Runtime would run any of ``source``'s convolutions in float
    (:func:`int8_convolutions`; onnxruntime 1.30's quantizer wrote such files) is refused with
    ``ConfigError`` and nothing is written (``check_fusion=False``: written anyway, for
    ``bench/int8_fusion.py`` to measure).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if fmt not in INT8_FORMATS:
        raise ConfigError(f"int8 format: choose one of {', '.join(INT8_FORMATS)}, got {fmt!r}")
    if not calibration:
        raise ConfigError("--calibration-images: needs at least 1 image")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self.items, None)
            return None if item is None else {"image": np.ascontiguousarray(item, np.float32)}

    path = Path(path)
    with atomic_path(path) as tmp:
        pre = tmp.with_name(tmp.name + ".pre.onnx")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # the quantizer logs every int64 shape tensor it skips
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
                    start = pre
                except Exception:  # pre-processing is an optimisation: quantize the original
                    start = Path(source)
                quantize_static(
                    str(start),
                    str(tmp),
                    Reader(),
                    quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                )
        finally:
            logging.disable(previous)
            pre.unlink(missing_ok=True)
        if check_fusion:
            _check_int8_convolutions(Path(source), tmp)
        if metadata is not None:
            set_onnx_metadata(tmp, metadata)
    return path


def int8_convolutions(source: str | Path, quantized: str | Path) -> tuple[int, int]:
    """(convolutions of the float file ``source`` that ONNX Runtime's CPU provider runs as int8
    ``QLinearConv`` in ``quantized``, after its graph optimisations; convolutions in
    ``source``). A QDQ convolution the runtime does not fuse runs as DequantizeLinear + float
    Conv + QuantizeLinear: slower than the float file."""
    import onnx
    import onnxruntime as ort

    total = sum(n.op_type == "Conv" for n in onnx.load(str(source)).graph.node)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # not the warning that an optimised graph is machine-specific
    with tempfile.TemporaryDirectory(prefix="pixelwise-int8-graph-") as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(quantized), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    return sum(n.op_type == "QLinearConv" for n in graph.node), total


def _check_int8_convolutions(source: Path, quantized: Path) -> None:
    import onnxruntime as ort

    fused, total = int8_convolutions(source, quantized)
    if fused < total:
        raise ConfigError(
            f"--int8: ONNX Runtime {ort.__version__}'s quantizer left {total - fused} of "
            f"{total} convolutions in float (the file would run slower than the float one); "
            "nothing was written: install onnxruntime>=1.32 (pip install -U onnxruntime) and "
            "export again"
        )


def set_onnx_metadata(path: str | Path, metadata: dict[str, str]) -> None:
    """Replace the ``metadata_props`` of the ONNX file ``path`` (in place) by ``metadata``."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    onnx.save(proto, str(path))
