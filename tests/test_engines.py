"""Fast inference engines (BatchNorm folding, torch engine, ONNX Runtime with a cached export)
and the training-throughput options (gradient accumulation, autocast)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pixelwise import __version__
from pixelwise.data.classes import ClassInfo
from pixelwise.engines import (
    OnnxRuntimeEngine,
    TorchEngine,
    fold_batchnorm,
    make_engine,
    onnx_for_run,
)
from pixelwise.errors import ConfigError
from pixelwise.files import write_json
from pixelwise.models import available, build
from pixelwise.predict import Segmenter, forward_full
from pixelwise.runs import RUN_FORMAT, save_checkpoint

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and (
    importlib.util.find_spec("onnx") is not None
)
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime / onnx not installed")
SIZES = [(1, 40, 56), (2, 72, 48)]  # (batch, height, width): two unrelated shapes


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random weights everywhere (FCN's zero-initialised scores would hide differences) and
    BatchNorm statistics far from the identity, so folding has something to do."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 2 - 1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            elif isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                fan = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2 / fan) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model.eval()


def _with_bn(name: str) -> nn.Module | None:
    """The registry model at a tiny width, with BatchNorm switched on where it is optional."""
    kwargs: dict = {"width": 0.125}
    if name in ("unet", "unet_same"):
        kwargs = {"base_width": 4, "depth": 2, "batch_norm": True}
    elif name.startswith("fcn"):
        kwargs["batch_norm"] = True
    try:
        model = build(name, 5, **kwargs)
    except ConfigError:
        model = build(name, 5, width=0.125)
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return None
    return model


def _input(model: nn.Module, batch: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, int(getattr(model, "in_channels", 3)), h, w, generator=gen)


@pytest.mark.parametrize("name", available())
def test_folded_model_matches_plain_model(name):
    torch.manual_seed(0)
    model = _with_bn(name)
    if model is None:
        pytest.skip(f"{name} has no BatchNorm")
    model = _randomise(model, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is kept
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    for batch, h, w in SIZES:
        x = _input(model, batch, h, w)
        with torch.no_grad():
            ref, out = forward_full(model, x), forward_full(folded, x)
        scale = float(ref.abs().max())
        assert scale > 0
        assert float((out - ref).abs().max()) <= 1e-4 * scale
        assert torch.equal(out.argmax(1), ref.argmax(1))


def test_fold_handles_grouped_transposed_conv_and_skips_unsafe_pairs():
    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2, bias=False)
            self.bn_up = nn.BatchNorm2d(6)
            self.conv = nn.Conv2d(6, 6, 3, padding=1)
            self.relu = nn.ReLU(inplace=True)
            self.bn_after_relu = nn.BatchNorm2d(6)  # conv -> in-place ReLU -> BN: not foldable
            self.conv2 = nn.Conv2d(6, 3, 1)
            self.bn_no_stats = nn.BatchNorm2d(3, track_running_stats=False)  # batch statistics

        def forward(self, x):
            x = self.bn_up(self.up(x))
            x = self.bn_after_relu(self.relu(self.conv(x)))
            return self.bn_no_stats(self.conv2(x))

    toy = _randomise(Toy(), seed=2)
    folded = fold_batchnorm(toy)
    assert isinstance(folded.bn_up, nn.Identity)
    assert folded.up.bias is not None  # created by the fold
    assert isinstance(folded.bn_after_relu, nn.BatchNorm2d)
    assert isinstance(folded.bn_no_stats, nn.BatchNorm2d)
    x = torch.randn(2, 4, 5, 7, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), toy(x), rtol=1e-5, atol=1e-5)


def test_fold_falls_back_to_a_real_probe_when_meta_tensors_cannot_run_the_model():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            if float(x.abs().sum()) < 0:  # a host read: impossible on the meta device
                raise AssertionError
            return self.bn(self.conv(x))

    net = _randomise(DataDependent(), seed=10)
    folded = fold_batchnorm(net)
    assert isinstance(folded.bn, nn.Identity)
    x = torch.randn(1, 3, 9, 11, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["unet", "segnet_basic"])
def test_torch_engine_matches_model(name):
    model = _randomise(_with_bn(name), seed=4)
    engine = TorchEngine(model)
    assert engine.memory_format == torch.channels_last  # the CPU default
    for batch, h, w in SIZES:
        x = _input(model, batch, h, w, seed=5)
        with torch.no_grad():
            ref = forward_full(model, x)
        out = forward_full(model, x, net=engine)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_make_engine_rejects_bad_choices():
    model = build("segnet_basic", 3, width=0.125)
    with pytest.raises(ConfigError, match="--engine"):
        make_engine(model, "tensorrt")
    with pytest.raises(ConfigError, match="--compile"):
        make_engine(model, "onnxruntime", compile=True)


# ------------------------------------------------------------------------------- onnxruntime


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(1) == b.argmax(1)).double().mean())


@needs_ort
@pytest.mark.parametrize("name", ["unet", "segnet", "fcn8s"])
def test_onnxruntime_engine_agrees_with_torch(name, tmp_path):
    kwargs = {"base_width": 4, "depth": 2} if name == "unet" else {"width": 0.125}
    model = _randomise(build(name, 4, **kwargs), seed=6)
    engine = make_engine(model, "onnxruntime", onnx_path=tmp_path / "m.onnx", threads=1)
    assert isinstance(engine, OnnxRuntimeEngine)
    for batch, h, w in SIZES:
        x = _input(model, batch, h, w, seed=7)
        with torch.no_grad():
            ref = forward_full(model, x)
        out = forward_full(model, x, net=engine)  # valid U-Net: mirror-padded around the call
        assert out.shape == ref.shape == (batch, 4, h, w)
        assert _agreement(out, ref) >= 0.999
        assert float((out - ref).abs().max()) <= 1e-3 * float(ref.abs().max())


def _make_run(folder: Path, name: str = "unet", seed: int = 0, **kwargs) -> nn.Module:
    """A run directory without training: config.json and best.safetensors of random weights."""
    kwargs = kwargs or {"base_width": 4, "depth": 2}
    torch.manual_seed(seed)
    model = _randomise(build(name, 3, **kwargs), seed=seed)
    classes = ClassInfo.default(3)
    write_json(
        folder / "config.json",
        {
            "format": "pixelwise-run",
            "version": RUN_FORMAT,
            "pixelwise": __version__,
            "model": {"name": name, "num_classes": 3, "kwargs": kwargs},
            "classes": classes.to_dict(),
            "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        },
    )
    save_checkpoint(folder, "best", model, {"epoch": 1})
    return model


@needs_ort
def test_onnx_export_is_cached_with_the_run_and_redone_for_new_weights(tmp_path):
    run = tmp_path / "run"
    model = _make_run(run)
    x = _input(model, 1, 40, 56, seed=8)
    engine = onnx_for_run(run, model, 3, threads=1)
    cached = run / "best.onnx"
    assert engine.path == cached and cached.is_file()
    first = cached.stat().st_mtime_ns
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary left

    # Same checkpoint: the file is reused, not rewritten (also when only the mtime changed).
    onnx_for_run(run, model, 3, threads=1)
    os.utime(run / "best.safetensors", ns=(1_000_000_000, 1_000_000_000))
    again = onnx_for_run(run, model, 3, threads=1)
    assert cached.stat().st_mtime_ns == first

    # Retrained (new weights): exported again, and the new file computes the new model.
    new_model = _make_run(run, seed=9)
    fresh = onnx_for_run(run, new_model, 3, threads=1)
    with torch.no_grad():
        ref_old, ref_new = forward_full(model, x), forward_full(new_model, x)
    out_old = forward_full(model, x, net=again)
    out_new = forward_full(new_model, x, net=fresh)
    assert _agreement(out_old, ref_old) >= 0.999
    assert _agreement(out_new, ref_new) >= 0.999
    assert not torch.allclose(ref_old, ref_new)


@needs_ort
def test_read_only_run_caches_under_the_user_cache(tmp_path, monkeypatch):
    import pixelwise.engines as engines

    run = tmp_path / "run"
    model = _make_run(run)
    real = engines._export_checked

    def refuse_run_folder(net, path, *args, **kwargs):  # as a read-only folder would
        if Path(path).parent == run:
            raise PermissionError(13, "Permission denied", str(path))
        return real(net, path, *args, **kwargs)

    monkeypatch.setattr(engines, "_export_checked", refuse_run_folder)
    engine = onnx_for_run(run, model, 3, threads=1, cache_dir=tmp_path / "cache")
    assert engine.path.parent == tmp_path / "cache"
    assert engine.path.name.endswith("-best.onnx")
    assert not (run / "best.onnx").exists()


@needs_ort
def test_segmenter_engines_predict_the_same_masks(tmp_path):
    run = tmp_path / "run"
    _make_run(run, "unet_same", base_width=4, depth=2)
    image = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    plain = Segmenter.from_run(run, device="cpu")
    ort = Segmenter.from_run(run, device="cpu", engine="onnxruntime", threads=1)
    assert isinstance(plain.net, TorchEngine)
    assert isinstance(ort.net, OnnxRuntimeEngine)
    a, b = plain.predict(image), ort.predict(image)
    assert a.shape == b.shape == (45, 61)
    assert float((a == b).mean()) >= 0.999


@needs_ort
def test_cli_predict_with_onnxruntime(tmp_path, capsys):
    from PIL import Image

    from pixelwise.cli import main

    run = tmp_path / "run"
    _make_run(run)
    Image.fromarray(np.full((33, 47, 3), 120, np.uint8)).save(tmp_path / "a.png")
    args = ["predict", str(run), str(tmp_path / "a.png"), "--out", str(tmp_path / "out")]
    assert main([*args, "--engine", "onnxruntime", "--threads", "1"]) == 0
    assert (tmp_path / "out" / "a.png").is_file() and (run / "best.onnx").is_file()
    assert main([*args, "--engine", "onnxruntime", "--compile"]) == 2
    assert "--compile" in capsys.readouterr().err


# ---------------------------------------------------------------------- training throughput


@pytest.fixture(scope="module")
def four_images(tmp_path_factory) -> Path:
    """Four training scenes (one batch of 4) and two validation scenes, 40-56 px."""
    from pixelwise.data.digits import write_digits_folder

    root = tmp_path_factory.mktemp("four")
    return write_digits_folder(root, num_train=4, num_val=2, seed=3, min_size=40, max_size=56)


def _first_update(
    data: Path, out: Path, batch: int, accumulate: int, amp: str = "off", lr: float = 0.5
) -> dict:
    from pixelwise.runs import load_weights
    from pixelwise.training import TrainConfig, train

    config = TrainConfig(
        data=str(data),
        model="unet_same",
        model_args={"batch_norm": False, "base_width": 4, "depth": 2},  # BN-free: batch-exact
        epochs=1,
        batch_size=batch,
        accumulate=accumulate,
        amp=amp,
        lr=lr,
        momentum=0.0,
        weight_decay=0.0,
        schedule="constant",
        crop_size=32,  # smaller than every image at scale 1: no padding, no ignored pixels
        scale_min=1.0,
        scale_max=1.0,
        hflip=False,
        overlays=0,
        device="cpu",
        out=str(out),
    )
    summary = train(config)
    return {"steps": summary["steps"], "weights": load_weights(out / "last.safetensors")}


def test_accumulating_two_batches_of_two_equals_one_batch_of_four(four_images, tmp_path):
    big = _first_update(four_images, tmp_path / "b4", batch=4, accumulate=1)
    acc = _first_update(four_images, tmp_path / "b2x2", batch=2, accumulate=2)
    two = _first_update(four_images, tmp_path / "b2", batch=2, accumulate=1)
    assert big["steps"] == acc["steps"] == 1 and two["steps"] == 2
    diff_acc = max(
        float((big["weights"][k] - acc["weights"][k]).abs().max()) for k in big["weights"]
    )
    diff_two = max(
        float((big["weights"][k] - two["weights"][k]).abs().max()) for k in big["weights"]
    )
    assert diff_acc < 1e-5
    assert diff_two > 100 * max(diff_acc, 1e-7)  # two separate updates are a different result


def test_bf16_autocast_trains_on_cpu(four_images, tmp_path):
    def flat(run: dict) -> torch.Tensor:
        return torch.cat([v.flatten() for v in run["weights"].values()])

    start = flat(_first_update(four_images, tmp_path / "w0", 2, 1, lr=1e-9))  # ~ the init
    bf16 = _first_update(four_images, tmp_path / "bf16", 2, 1, amp="bf16", lr=0.01)
    fp32 = flat(_first_update(four_images, tmp_path / "fp32", 2, 1, amp="off", lr=0.01))
    assert bf16["steps"] == 2
    assert all(v.dtype == torch.float32 for v in bf16["weights"].values())  # fp32 master weights
    a, b = flat(bf16) - start, fp32 - start  # the two updates
    assert torch.isfinite(a).all() and float(b.norm()) > 0
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.95
    assert float((a - b).norm() / b.norm()) < 0.2


def test_amp_and_accumulate_options_are_checked():
    from pixelwise.training import TrainConfig
    from pixelwise.training.amp import amp_dtype as _amp_dtype
    from pixelwise.training.amp import cpu_has_bf16 as _cpu_has_bf16

    with pytest.raises(ConfigError, match="--amp"):
        TrainConfig(amp="fp8").validate()
    with pytest.raises(ConfigError, match="--accumulate"):
        TrainConfig(accumulate=0).validate()
    cpu = torch.device("cpu")
    assert _amp_dtype("off", cpu) is None
    assert _amp_dtype("bf16", cpu) == torch.bfloat16
    assert _amp_dtype("fp16", torch.device("cuda")) == torch.float16
    assert _amp_dtype("auto", cpu) == (torch.bfloat16 if _cpu_has_bf16() else None)
