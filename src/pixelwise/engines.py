"""Fast inference: BatchNorm folding, channels-last, ``torch.compile`` and an ONNX Runtime engine.

An *engine* is the network call that prediction and evaluation use instead of ``model(x)``: a
normalised float32 ``(N, in_channels, h, w)`` tensor in, the model's raw logits
``(N, num_classes, *model.output_size(h, w))`` out. :func:`pixelwise.predict.forward_full` (and
the tiles of :mod:`pixelwise.tiles`) wrap it with the mirror padding the valid U-Net needs, so an
engine never pads.

- ``torch`` (:class:`TorchEngine`): an eval-mode copy of the model with every BatchNorm that
  directly follows a convolution folded into it (:func:`fold_batchnorm`), run under
  ``torch.inference_mode`` on channels-last tensors on CPUs, optionally through ``torch.compile``.
- ``onnxruntime`` (:class:`OnnxRuntimeEngine`): the model exported once to ONNX
  (:func:`pixelwise.export_formats.export_onnx`) and cached next to the checkpoint
  (:func:`onnx_for_run`).

Which of these steps pay on a 2-core CPU is measured by ``bench/speed.py``; the numbers are in
docs/performance.md.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pixelwise.errors import ConfigError
from pixelwise.models.base import SegmentationModel

__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "LIBRARY_ENGINE",
    "AutoEngine",
    "Net",
    "OnnxRuntimeEngine",
    "TorchEngine",
    "cpu_threads",
    "find_int8",
    "fold_batchnorm",
    "int8_cache_paths",
    "int8_for_run",
    "make_engine",
    "onnx_cache_dir",
    "onnx_for_run",
]

Net = Callable[[Tensor], Tensor]

ENGINES = ("auto", "torch", "onnxruntime", "onnxruntime-int8")
# bench/speed.py: which engine is fastest depends on the net, the size and the machine
# (docs/performance.md), so the commands time the available ones on the first image: "auto".
# Library calls (Segmenter.from_run without engine) keep the plain torch engine: they never
# write into a run folder or spend time measuring unless asked.
DEFAULT_ENGINE = "auto"
LIBRARY_ENGINE = "torch"
ONNX_CACHE_FORMAT = 1  # bump to invalidate every cached .onnx file
_KEY = "pixelwise_cache_key"  # metadata entry of a cached export
INT8_CHECK = "pixelwise_int8_check"  # metadata entry of a checked int8 file: its accuracy check
ENGINE_RECORD = "engine.json"  # RUN/engine.json: the choices of --engine auto


# --------------------------------------------------------------------------- BatchNorm folding


def _probe_input(model: nn.Module) -> Tensor:
    """A small meta-device input the model accepts (for tracing its data flow, no compute):
    ``(1, in_channels, s, s)`` with ``s`` from ``valid_input_size(64, 64)`` for a
    :class:`SegmentationModel`, ``(1, 3, 64, 64)`` for any other module."""
    side, channels = 64, 3
    if isinstance(model, SegmentationModel):
        side = max(model.valid_input_size(side, side))
        channels = model.in_channels
    return torch.empty(1, channels, side, side, device="meta")


def _conv_bn_pairs(model: nn.Module, example: Tensor | None) -> list[tuple[str, str]]:
    """Names of ``(conv, batchnorm)`` pairs where the BatchNorm's input is the conv's output.

    Found by running the model once with forward hooks on every leaf module (on the meta device
    when no ``example`` is given: shapes only). A pair qualifies when the BatchNorm is the very
    next leaf module called, its input is the conv's output tensor, unmodified in between (same
    version counter: an in-place ReLU in between disqualifies it), and both modules run once.
    """
    names = {m: n for n, m in model.named_modules()}
    leaves = [m for m in model.modules() if not list(m.children())]
    calls: list[tuple[nn.Module, Any, Any, int]] = []

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        first = args[0] if args else None
        version = output._version if isinstance(output, Tensor) else -1
        calls.append((module, first, output, version))

    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            if example is None:
                try:
                    _meta_forward(model)
                except Exception:  # an op without a meta kernel: probe with real zeros
                    calls.clear()
                    probe = _probe_input(model)
                    device = next((p.device for p in model.parameters()), torch.device("cpu"))
                    model(torch.zeros(probe.shape, device=device))
            else:
                model(example)
    finally:
        for h in handles:
            h.remove()
    counts: dict[nn.Module, int] = {}
    for module, *_ in calls:
        counts[module] = counts.get(module, 0) + 1
    pairs = []
    for (conv, _, out, version), (bn, bn_in, _, _) in zip(calls, calls[1:], strict=False):
        if (
            isinstance(conv, nn.Conv2d | nn.ConvTranspose2d)
            and isinstance(bn, nn.BatchNorm2d)
            and bn_in is out
            and isinstance(out, Tensor)
            and out._version == version
            and counts[conv] == 1
            and counts[bn] == 1
            and bn.running_mean is not None
            and bn.running_var is not None
        ):
            pairs.append((names[conv], names[bn]))
    return pairs


def _meta_forward(model: nn.Module) -> None:
    """Run ``model`` on the meta device (shapes only) without touching its weights."""
    from torch.func import functional_call

    meta = {
        k: torch.empty_like(v, device="meta")
        for k, v in (*model.named_parameters(), *model.named_buffers())
    }
    functional_call(model, meta, (_probe_input(model),))


@torch.no_grad()
def _fold(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv`` (in float64, then back to the conv's dtype)."""
    dtype = conv.weight.dtype
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    w = conv.weight.double()
    if isinstance(conv, nn.ConvTranspose2d):  # (in, out / groups, kh, kw)
        g = conv.groups
        w = w.reshape(g, w.shape[0] // g, w.shape[1], *w.shape[2:])
        w = w * scale.reshape(g, 1, -1, 1, 1)
        w = w.reshape(conv.weight.shape)
    else:  # (out, in / groups, kh, kw)
        w = w * scale.reshape(-1, 1, 1, 1)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    conv.weight.copy_(w.to(dtype))
    new_bias = (bias * scale + shift).to(dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(new_bias)


def fold_batchnorm(
    model: nn.Module, example: Tensor | None = None, inplace: bool = False
) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm that follows a conv folded into it.

    ``y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta`` is a convolution with weights
    scaled per output channel and a new bias, so the BatchNorm becomes ``nn.Identity`` and the
    net computes the same logits (up to float rounding) with one pass less over every feature
    map. Works for ``Conv2d`` and ``ConvTranspose2d`` (any groups). Pairs are found from the data
    flow of one forward pass (meta device, no compute; or ``example``, a real input); a
    BatchNorm fed by anything but a conv's untouched output is left as it is. The folded copy is
    for inference only: its BatchNorms are gone, so do not train it. ``inplace`` folds
    ``model`` itself (saves the copy's memory).
    """
    net = model if inplace else copy.deepcopy(model)
    net.eval()
    modules = dict(net.named_modules())
    for conv_name, bn_name in _conv_bn_pairs(net, example):
        _fold(modules[conv_name], modules[bn_name])
        parent_name, _, child = bn_name.rpartition(".")
        parent = modules[parent_name] if parent_name else net
        setattr(parent, child, nn.Identity())
    return net


# --------------------------------------------------------------------------------- torch engine


def cpu_threads() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class TorchEngine:
    """The eager torch network call, made fast: BatchNorm folded, ``inference_mode``,
    channels-last on CPUs, optionally compiled.

    ``engine(x)``: ``(N, in_channels, h, w) -> (N, num_classes, *model.output_size(h, w))``.
    The engine holds a folded copy of a model with BatchNorms; otherwise (and with
    ``fold=False``) it uses ``model`` itself, in eval mode and, on CPUs, converted to
    channels-last in place (same weights). ``channels_last=None`` means: on CPUs (where
    bench/speed.py measured it 1.4-1.6x faster on the BatchNorm models and neutral on the
    others, docs/performance.md), not on GPUs (not measured).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        fold: bool = True,
        channels_last: bool | None = None,
        compile: bool = False,
    ) -> None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        # A copy only when there is something to fold (the copy doubles the weights' memory).
        net = fold_batchnorm(model) if fold and _conv_bn_pairs(model, None) else model.eval()
        if channels_last is None:
            channels_last = device.type == "cpu"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = net.to(memory_format=self.memory_format)
        self.compiled = compile
        self._call: Callable[[Tensor], Tensor] = self.model
        self._checked = not compile
        if compile:
            self._call = torch.compile(self.model, dynamic=None)

    def __call__(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        with torch.inference_mode():
            if self._checked:
                return self._call(x)
            try:  # torch.compile fails lazily, on the first call
                out = self._call(x)
            except Exception as err:
                if isinstance(err, ConfigError):
                    raise
                raise ConfigError(
                    f"--compile: torch.compile failed ({type(err).__name__}: "
                    f"{str(err).strip().splitlines()[0][:160] if str(err).strip() else ''}); "
                    "run without --compile"
                ) from err
            self._checked = True
            return out


# -------------------------------------------------------------------------- onnxruntime engine


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(
            "--engine onnxruntime: onnxruntime is not installed; "
            "pip install 'pixelwise[export]' or use --engine torch"
        ) from None
    return onnxruntime


class OnnxRuntimeEngine:
    """An exported ``.onnx`` file run by ONNX Runtime on the CPU, called like the model.

    ``engine(x)``: ``(N, in_channels, h, w)`` float tensor -> the raw logits as a float32 tensor
    on ``x``'s device. Session: ``threads`` intra-op threads (default: the usable cores), all
    graph optimisations, sequential execution; ``spin=False`` lets idle worker threads sleep
    instead of spinning (they would otherwise take the cores from the image decoding and PNG
    writing between two calls).
    """

    def __init__(self, path: str | Path, threads: int | None = None, spin: bool = False) -> None:
        ort = _import_ort()
        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads) if threads else cpu_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own exception types
            raise ConfigError(
                f"{self.path}: onnxruntime cannot load this file ({str(err).splitlines()[0]})"
            ) from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    @property
    def metadata(self) -> dict[str, str]:
        """The file's ``metadata_props`` (string values)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, x: Tensor) -> Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.session.run([self.output_name], {self.input_name: array})[0]
        return torch.from_numpy(out).to(x.device)


def onnx_cache_dir() -> Path:
    """Where exports of read-only runs go: ``$XDG_CACHE_HOME/pixelwise/onnx`` (default
    ``~/.cache/pixelwise/onnx``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pixelwise" / "onnx"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _cache_key(checkpoint: Path, config: Path, sha: bool) -> dict[str, Any]:
    """What a cached export depends on: the checkpoint (size, mtime and, when ``sha``, its
    SHA-256), the run's config.json, pixelwise and the cache format."""
    from pixelwise import __version__

    stat = checkpoint.stat()
    key: dict[str, Any] = {
        "format": ONNX_CACHE_FORMAT,
        "pixelwise": __version__,
        "checkpoint": checkpoint.name,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "config_sha256": _sha256(config) if config.is_file() else None,
    }
    if sha:
        key["sha256"] = _sha256(checkpoint)
    return key


def _key_matches(stored: str | None, checkpoint: Path, config: Path) -> bool:
    """A cached file is current when everything but the mtime matches and either the mtime or
    (checked only then, it costs a read of the checkpoint) the SHA-256 does: a copied run keeps
    its exports, a retrained one re-exports."""
    try:
        old = json.loads(stored) if stored else None
    except json.JSONDecodeError:
        return False
    if not isinstance(old, dict):
        return False
    new = _cache_key(checkpoint, config, sha=False)
    same = ("format", "pixelwise", "checkpoint", "size", "config_sha256")
    if any(old.get(k) != new[k] for k in same):
        return False
    return old.get("mtime_ns") == new["mtime_ns"] or old.get("sha256") == _sha256(checkpoint)


def _export_checked(model: SegmentationModel, path: Path, in_channels: int, key: dict) -> None:
    """Export ``model`` to ``path`` (atomically), verified against torch before it appears."""
    from pixelwise.export_formats import export_onnx, min_input_size, verify_export
    from pixelwise.files import atomic_path

    net = copy.deepcopy(model).cpu().eval()
    with atomic_path(path) as tmp:
        try:
            export_onnx(net, tmp, in_channels=in_channels, metadata={_KEY: json.dumps(key)})
        except ConfigError:
            raise
        except Exception as err:  # exporter failures come in many types
            raise ConfigError(
                f"--engine onnxruntime: this model cannot be exported to ONNX "
                f"({type(err).__name__}: {str(err).strip().splitlines()[0][:160]}); "
                "use --engine torch"
            ) from None
        verify_export(net, tmp, "onnx", in_channels, min_input_size(net), name=path)


def _checkpoint_of(run: Path, which: str) -> Path:
    """``RUN``'s ``which`` checkpoint file (``last`` where ``best`` is missing, as load_run)."""
    from pixelwise.runs import checkpoint_path

    checkpoint = checkpoint_path(run, which)
    if not checkpoint.is_file() and which == "best":
        checkpoint = checkpoint_path(run, "last")
    if not checkpoint.is_file():
        raise ConfigError(f"{checkpoint}: checkpoint file is missing")
    return checkpoint


def onnx_for_run(
    run: str | Path,
    model: SegmentationModel,
    in_channels: int,
    which: str = "best",
    threads: int | None = None,
    cache_dir: str | Path | None = None,
) -> OnnxRuntimeEngine:
    """The ONNX Runtime engine of ``RUN``'s ``which`` checkpoint, exported on first use.

    The export is cached as ``RUN/<checkpoint>.onnx`` (``best.onnx``; ``last.onnx`` where the
    run has only ``last``) and reused while the checkpoint and config.json are unchanged (see
    :func:`_key_matches`); a retrained run re-exports. When the run folder is not writable the
    file goes to ``cache_dir`` (default :func:`onnx_cache_dir`) under a name derived from the
    run's absolute path. Writes are atomic; the export is checked against ``model`` on two image
    sizes before it is used.
    """
    _import_ort()
    run = Path(run)
    checkpoint = _checkpoint_of(run, which)
    config = run / "config.json"
    run_id = hashlib.sha256(str(run.resolve()).encode()).hexdigest()[:16]
    fallback = Path(cache_dir or onnx_cache_dir()) / f"{run_id}-{checkpoint.stem}.onnx"
    for target in (checkpoint.with_suffix(".onnx"), fallback):
        if target.is_file():
            try:
                engine = OnnxRuntimeEngine(target, threads)
            except ConfigError:
                engine = None  # unreadable: export again
            if engine is not None and _key_matches(engine.metadata.get(_KEY), checkpoint, config):
                return engine
        try:
            _export_checked(model, target, in_channels, _cache_key(checkpoint, config, sha=True))
        except PermissionError:
            continue  # read-only run folder: use the user cache
        except OSError as err:
            if target == fallback:
                raise ConfigError(f"{target}: cannot write the ONNX export ({err})") from None
            continue
        return OnnxRuntimeEngine(target, threads)
    raise ConfigError(f"{fallback}: cannot write the ONNX export (permission denied)")


# ---------------------------------------------------------------------------------------- int8


def int8_cache_paths(
    run: str | Path, which: str = "best", cache_dir: str | Path | None = None
) -> tuple[Path, Path]:
    """Where ``RUN``'s checked int8 file lives: ``RUN/<checkpoint>.int8.onnx`` and, for a
    read-only run folder, the user cache (:func:`onnx_cache_dir`)."""
    run = Path(run)
    checkpoint = _checkpoint_of(run, which)
    run_id = hashlib.sha256(str(run.resolve()).encode()).hexdigest()[:16]
    fallback = Path(cache_dir or onnx_cache_dir()) / f"{run_id}-{checkpoint.stem}.int8.onnx"
    return checkpoint.with_suffix(".int8.onnx"), fallback


def int8_record(checkpoint: Path, config: Path, check: dict[str, Any]) -> dict[str, str]:
    """The metadata entries that make an int8 file ``RUN``'s checked one: the cache key of its
    checkpoint and the accuracy check it passed (see :func:`find_int8`)."""
    key = _cache_key(checkpoint, config, sha=True)
    return {_KEY: json.dumps(key), INT8_CHECK: json.dumps(check)}


def find_int8(
    run: str | Path, which: str = "best", cache_dir: str | Path | None = None
) -> Path | None:
    """``RUN``'s int8 file for its current ``which`` checkpoint, if one was written by
    ``pixelwise export RUN --int8`` and passed its accuracy check; else ``None`` (never
    quantizes: that takes calibration images and a check on the validation split)."""
    try:
        import onnx
    except ImportError:
        return None
    run = Path(run)
    checkpoint = _checkpoint_of(run, which)
    for path in int8_cache_paths(run, which, cache_dir):
        if not path.is_file():
            continue
        try:
            proto = onnx.load(str(path), load_external_data=False)
            props = {p.key: p.value for p in proto.metadata_props}
            check = json.loads(props.get(INT8_CHECK, "null"))
        except Exception:  # an unreadable file is no int8 file
            continue
        if (
            isinstance(check, dict)
            and check.get("passed") is True
            and _key_matches(props.get(_KEY), checkpoint, run / "config.json")
        ):
            return path
    return None


def int8_for_run(
    run: str | Path,
    which: str = "best",
    threads: int | None = None,
    cache_dir: str | Path | None = None,
) -> OnnxRuntimeEngine:
    """The ONNX Runtime engine of ``RUN``'s checked int8 file (:func:`find_int8`);
    ``ConfigError`` saying how to make one when there is none."""
    _import_ort()
    path = find_int8(run, which, cache_dir)
    if path is None:
        raise ConfigError(
            f"--engine onnxruntime-int8: {run} has no checked int8 file for its {which} "
            f"checkpoint; make one with: pixelwise export {run} --format onnx --int8 --out FILE"
        )
    return OnnxRuntimeEngine(path, threads)


# ---------------------------------------------------------------------------------- auto choice


def _machine() -> str:
    """This machine, for a recorded engine choice: host name, processor, core count."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{platform.node()} | {cpu} | {os.cpu_count()} CPUs"


def _median_ms(times: list[float]) -> float:
    return 1000 * sorted(times)[len(times) // 2]


class AutoEngine:
    """``--engine auto``: the first call times every engine available here on its input and
    keeps the fastest.

    ``engine(x)``: as every engine, ``(N, in_channels, h, w) -> (N, num_classes, h', w')``.
    Available: ``torch`` always; ``onnxruntime`` when it is installed and the model exports
    (cached with the run, :func:`onnx_for_run`); ``onnxruntime-int8`` only when the run already
    has a checked int8 file (:func:`find_int8`; never quantized here). Each candidate gets
    ``warmup`` calls, then ``repeats`` interleaved rounds (one call each, so load slows all
    alike); the lowest median wins. The choice and the timings go to ``RUN/engine.json``
    (atomic) and are reused when this machine, the thread count, the input size, the checkpoint
    and the candidates are the same; a record that cannot be read is named in a warning and
    measured again. ``choice`` / ``timings_ms`` say what was picked.
    """

    def __init__(
        self,
        model: SegmentationModel,
        run: str | Path,
        which: str = "best",
        in_channels: int | None = None,
        threads: int | None = None,
        warmup: int = 1,
        repeats: int = 3,
    ) -> None:
        self.model, self.run, self.which = model, Path(run), which
        self.in_channels = int(in_channels or model.in_channels)
        self.threads, self.warmup, self.repeats = threads, warmup, repeats
        self.choice: str | None = None
        self.timings_ms: dict[str, float] = {}
        self.skipped: dict[str, str] = {}  # engine -> why it was not a candidate
        self.reused = False
        self._net: Net | None = None
        self._choosing = threading.Lock()  # two first calls from two threads time once

    def __call__(self, x: Tensor) -> Tensor:
        if self._net is None:
            with self._choosing:
                if self._net is None:
                    self._net = self._choose(x)
        return self._net(x)

    def _candidates(self) -> dict[str, Callable[[], Net]]:
        """Engine name -> builder, for the engines available here (reasons in ``skipped``)."""
        makers: dict[str, Callable[[], Net]] = {"torch": lambda: TorchEngine(self.model)}
        try:
            _import_ort()
        except ConfigError:
            self.skipped["onnxruntime"] = "onnxruntime is not installed"
            return makers
        makers["onnxruntime"] = lambda: onnx_for_run(
            self.run, self.model, self.in_channels, self.which, self.threads
        )
        if find_int8(self.run, self.which) is None:
            self.skipped["onnxruntime-int8"] = "no checked int8 file (pixelwise export --int8)"
        else:
            makers["onnxruntime-int8"] = lambda: int8_for_run(self.run, self.which, self.threads)
        return makers

    def _key(self, x: Tensor, names: list[str]) -> dict[str, Any]:
        checkpoint = _checkpoint_of(self.run, self.which)
        stat = checkpoint.stat()
        return {
            "machine": _machine(),
            "threads": int(self.threads or torch.get_num_threads()),
            "input": list(x.shape[1:]),
            "checkpoint": [checkpoint.name, stat.st_size, stat.st_mtime_ns],
            "candidates": sorted(names),
        }

    def _choose(self, x: Tensor) -> Net:
        """Build the candidates, reuse or measure the choice for ``x``'s size, keep the winner."""
        with torch.inference_mode(False):  # folding and exporting need normal tensors
            return self._choose_among(self._candidates(), x)

    def _choose_among(self, makers: dict[str, Callable[[], Net]], x: Tensor) -> Net:
        key = self._key(x, list(makers))
        record = self.run / ENGINE_RECORD
        entries = _read_record(record)
        known = next((e for e in entries if e.get("key") == key), None)
        if known is not None and known.get("engine") in makers:
            self.choice, self.timings_ms = known["engine"], dict(known.get("timings_ms", {}))
            self.reused = True
            return makers[self.choice]()
        nets: dict[str, Net] = {}
        for name, make in makers.items():
            try:
                nets[name] = make()
            except ConfigError as err:  # e.g. a model the ONNX exporter cannot handle
                self.skipped[name] = str(err)
        times: dict[str, list[float]] = {name: [] for name in nets}
        with torch.inference_mode():
            for net in nets.values():
                for _ in range(self.warmup):
                    net(x)
            for _ in range(self.repeats):
                for name, net in nets.items():
                    t0 = time.perf_counter()
                    net(x)
                    times[name].append(time.perf_counter() - t0)
        self.timings_ms = {name: round(_median_ms(t), 3) for name, t in times.items()}
        self.choice = min(self.timings_ms, key=self.timings_ms.__getitem__)
        entry = {
            "key": key,
            "engine": self.choice,
            "timings_ms": self.timings_ms,
            "skipped": self.skipped,
            "repeats": self.repeats,
            "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _write_record(record, [e for e in entries if e.get("key") != key] + [entry])
        return nets[self.choice]


def _read_record(path: Path) -> list[dict[str, Any]]:
    """The entries of ``RUN/engine.json``; none (with a warning naming the file) when it exists
    but is not a record this code wrote."""
    import warnings

    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
        entries = data["entries"]
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError("'entries' is not a list of objects")
        return entries
    except (OSError, ValueError, KeyError, TypeError) as err:
        warnings.warn(
            f"{path}: unreadable engine record ({type(err).__name__}: {err}); timing the "
            "engines again",
            stacklevel=3,
        )
        return []


def _write_record(path: Path, entries: list[dict[str, Any]]) -> None:
    """Write ``RUN/engine.json`` atomically; a read-only run folder keeps no record."""
    from pixelwise.files import write_json

    with contextlib.suppress(OSError):
        write_json(path, {"format": "pixelwise-engine-choice", "version": 1, "entries": entries})


# ------------------------------------------------------------------------------- engine choice


def make_engine(
    model: SegmentationModel,
    engine: str = DEFAULT_ENGINE,
    *,
    run: str | Path | None = None,
    which: str = "best",
    in_channels: int | None = None,
    threads: int | None = None,
    compile: bool = False,
    onnx_path: str | Path | None = None,
) -> Net:
    """The network call for ``engine`` (one of :data:`ENGINES`).

    ``onnxruntime`` needs ``run`` (exports are cached with the run, :func:`onnx_for_run`) or
    ``onnx_path`` (a file to write, overwritten). ``onnxruntime-int8`` needs ``run`` and its
    checked int8 file (:func:`int8_for_run`). ``auto`` (:class:`AutoEngine`) needs ``run`` and
    a model on the CPU; otherwise, and with ``compile``, it is ``torch``. ``compile`` applies
    to ``torch`` only.
    """
    if engine not in ENGINES:
        raise ConfigError(f"--engine: choose one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "auto":
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        if run is not None and device.type == "cpu" and not compile:
            return AutoEngine(model, run, which, in_channels, threads)
        engine = "torch"
    if engine == "torch":
        return TorchEngine(model, compile=compile)
    if compile:
        raise ConfigError("--compile: applies to --engine torch only")
    channels = int(in_channels or model.in_channels)
    if engine == "onnxruntime-int8":
        if run is None:
            raise ConfigError("--engine onnxruntime-int8: needs a run directory")
        return int8_for_run(run, which, threads)
    if run is not None:
        return onnx_for_run(run, model, channels, which, threads)
    if onnx_path is None:
        raise ConfigError("--engine onnxruntime: needs a run directory or an .onnx path")
    _import_ort()
    _export_checked(model, Path(onnx_path), channels, {"format": ONNX_CACHE_FORMAT})
    return OnnxRuntimeEngine(onnx_path, threads)
