import json
import re

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from pixelwise import export as ex
from pixelwise import export_formats
from pixelwise.cli import main
from pixelwise.data.classes import ClassInfo
from pixelwise.errors import ConfigError
from pixelwise.export import (
    ScatterUnpool,
    export_onnx,
    export_run,
    exportable,
    read_onnx_metadata,
    read_torchscript_metadata,
    verify_export,
)
from pixelwise.files import write_json
from pixelwise.models import SegmentationModel, available, build
from pixelwise.predict import Segmenter
from pixelwise.runs import RUN_FORMAT, save_checkpoint

TINY = {
    "fcn32s": {"width": 0.0625},
    "fcn16s": {"width": 0.0625},
    "fcn8s": {"width": 0.0625},
    "unet": {"depth": 2, "base_width": 4},
    "unet_same": {"depth": 2, "base_width": 4},
    "segnet": {"width": 0.0625},
    "segnet_basic": {"width": 0.0625},
    "deconvnet": {"width": 0.0625},
    "convolutionalized": {"width": 0.5},
}
NAMES = ["bg", "left", "right"]
COLORS = [[0, 0, 0], [200, 40, 40], [40, 40, 200]]


def make_run(root, name, in_channels=3, seed=0, stats=False, **extra):
    """A run directory with random (not zero: FCN scores start at zero) weights, no training
    (``stats``: BatchNorm statistics moved from 0 and 1 too)."""
    torch.manual_seed(seed)
    kwargs = {**TINY.get(name, {}), "in_channels": in_channels, **extra}
    model = build(name, len(NAMES), **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for key, b in model.named_buffers() if stats else ():
            if key.endswith("running_mean"):
                b.add_(0.1 * torch.randn_like(b))
            elif key.endswith("running_var"):
                b.mul_(torch.rand_like(b) + 0.5)
    run = root / name
    run.mkdir(parents=True)
    classes = ClassInfo(NAMES, [tuple(c) for c in COLORS], ignore_index=255)
    mean, std = [0.5] * in_channels, [0.25] * in_channels
    write_json(
        run / "config.json",
        {
            "format": "pixelwise-run",
            "version": RUN_FORMAT,
            "model": {"name": name, "num_classes": len(NAMES), "kwargs": kwargs},
            "classes": classes.to_dict(),
            "normalization": {"mean": mean, "std": std},
        },
    )
    save_checkpoint(run, "best", model, {"epoch": 3})
    return run


def test_every_registry_model_is_covered():
    assert set(available()) <= set(TINY)


def _check_report(report, out):
    assert out.is_file() and report.path == out and report.bytes == out.stat().st_size
    assert len(report.checks) == 2
    sizes = {(c["height"], c["width"]) for c in report.checks}
    assert len(sizes) == 2
    for c in report.checks:
        assert c["argmax_agreement"] >= 0.999
        assert c["relative_diff"] <= 1e-3
        assert c["logit_range"] > 0  # random weights: a real comparison, not zeros vs zeros
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files


@pytest.mark.parametrize("name", available())
def test_onnx_export_matches_torch_on_new_sizes(name, tmp_path):
    run = make_run(tmp_path, name)
    out = tmp_path / f"{name}.onnx"
    report = export_run(run, out, "onnx")
    _check_report(report, out)
    meta = read_onnx_metadata(out)
    assert meta["class_names"] == NAMES and meta["class_colors"] == COLORS
    assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.25] * 3
    assert meta["in_channels"] == 3 and meta["ignore_index"] == 255 and meta["model"] == name
    assert meta["model_kwargs"]["in_channels"] == 3

    # Independently of export_run: a third size, batch 3, at the model's minimum.
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model = Segmenter.from_run(run, device="cpu").model
    n = meta["min_size"]
    x = torch.randn(3, 3, n, n + 7, generator=torch.Generator().manual_seed(5))
    got = session.run(["logits"], {"image": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * float(np.ptp(want)))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("bank_width", [0, 6])
def test_filter_bank_model_exports_for_any_size(fmt, bank_width, tmp_path):
    """ilastik's fixed filter bank inside unet_same (its features mixed per pixel or not)
    traces to a graph that takes any size (the banded-matrix shortcut is not traced),
    and ONNX Runtime agrees with torch."""
    run = make_run(
        tmp_path, "unet_same", in_channels=1, filter_bank=True, bank_width=bank_width, stats=True
    )
    out = tmp_path / f"fb.{'onnx' if fmt == 'onnx' else 'pt'}"
    _check_report(export_run(run, out, fmt), out)
    if fmt != "onnx":
        return
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model = Segmenter.from_run(run, device="cpu").model
    x = torch.randn(1, 1, 100, 140, generator=torch.Generator().manual_seed(5))
    got = session.run(["logits"], {"image": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * float(np.ptp(want)))


@pytest.mark.parametrize("name", available())
def test_torchscript_export_matches_torch(name, tmp_path):
    run = make_run(tmp_path, name, in_channels=1)
    out = tmp_path / f"{name}.pt"
    report = export_run(run, out, "torchscript", "best")
    _check_report(report, out)
    meta = read_torchscript_metadata(out)
    assert meta["class_names"] == NAMES and meta["in_channels"] == 1 and meta["epoch"] == 3


def _mirror(x, before, after):
    """numpy 'symmetric'-free reflection as torch's reflect pad, one reflection per side."""
    return np.pad(x, ((0, 0), (0, 0), (before, after[0]), (before, after[1])), mode="reflect")


def test_docs_recipe_for_valid_unet_reproduces_predict(tmp_path):
    """docs/export.md: metadata + numpy + onnxruntime alone give the same mask as pixelwise."""
    run = make_run(tmp_path, "unet")
    out = tmp_path / "unet.onnx"
    export_run(run, out)
    meta = read_onnx_metadata(out)
    rule = meta["input_rule"]
    assert meta["border"] == rule["pad_before"] > 0
    image = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)

    x = (image.astype(np.float32) / 255 - np.float32(meta["mean"])) / np.float32(meta["std"])
    x = x.transpose(2, 0, 1)[None]
    h, w = image.shape[:2]
    b, m, o = rule["pad_before"], rule["multiple"], rule["offset"]
    padded = [-(-(s + 2 * b + o) // m) * m - o for s in (h, w)]  # smallest P >= s + 2b
    x = _mirror(x, b, (padded[0] - h - b, padded[1] - w - b))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": x.astype(np.float32)})[0]
    mask = logits[0, :, :h, :w].argmax(0)

    seg = Segmenter.from_run(run, device="cpu")
    assert tuple(padded) == seg.model.valid_input_size(h, w)
    np.testing.assert_array_equal(mask, seg.predict(image))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_verification_failure_raises_and_leaves_no_file(tmp_path, monkeypatch, fmt):
    """An exporter that writes slightly wrong weights (one conv bias off by 5%)."""
    run = make_run(tmp_path, "segnet_basic")
    out = tmp_path / "out" / "m.onnx"

    def corrupted(model):
        net = exportable(model)
        with torch.no_grad():
            net.classifier.bias.mul_(1.05).add_(0.05)
        return net

    monkeypatch.setattr(export_formats, "exportable", corrupted)  # where the writers look it up
    with pytest.raises(ConfigError, match="disagrees with the model.*nothing was written"):
        export_run(run, out, fmt)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_rounding_amplified_by_unpooling_is_judged_against_float64(tmp_path):
    """SegNet at width 0.5 with these weights: on the CPUs tried, a near-tie in a pooling window
    makes torch's own float32 result differ from float64 on ~0.3% of the pixels (a compare
    against float32 alone fails); the export must still pass, judged against float64."""
    torch.manual_seed(0)
    model = build("segnet", 5, width=0.5).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = export_onnx(model, tmp_path / "s.onnx", in_channels=3)
    checks = verify_export(model, path, "onnx", 3, 32)
    assert len(checks) == 2
    for check in checks:
        if check["reference"] == "float64":  # other CPUs may round the tie the same way
            assert (
                check["float32_argmax_agreement"] < 0.999 or check["float32_relative_diff"] > 1e-3
            )
            assert check["argmax_agreement"] >= min(0.999, check["float32_argmax_agreement"])


class _ConstantCrop(SegmentationModel):
    """A forward whose crop the tracer freezes (int() of a size): the two-size check catches it."""

    def __init__(self) -> None:
        super().__init__(num_classes=2, in_channels=3)
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y[..., : int(x.shape[-2]), : int(x.shape[-1])] * 0 + y[..., :40, :56].mean()


def test_shape_frozen_by_tracing_is_caught(tmp_path):
    model = _ConstantCrop().eval()
    path = export_onnx(model, tmp_path / "c.onnx", in_channels=3)
    with pytest.raises(ConfigError, match="onnx"):
        verify_export(model, path, "onnx", 3, 1)


def _break_graph(path):
    """Add a node of an operator ONNX does not have: the file still loads, the checker fails."""
    import onnx

    proto = onnx.load(str(path))
    proto.graph.node.append(onnx.helper.make_node("NoSuchOperator", ["image"], ["junk"]))
    onnx.save(proto, str(path))


def test_invalid_onnx_file_fails_the_checker_with_a_one_line_error(tmp_path):
    model = build("segnet_basic", 3, width=0.0625).eval()
    path = export_onnx(model, tmp_path / "m.onnx", in_channels=3)
    assert len(verify_export(model, path, "onnx", 3, 16)) == 2  # the intact file passes
    _break_graph(path)
    with pytest.raises(ConfigError) as err:
        verify_export(model, path, "onnx", 3, 16, name="final.onnx")
    message = str(err.value)
    assert message.startswith("final.onnx: ") and "onnx.checker" in message
    assert "NoSuchOperator" in message and len(message.splitlines()) == 1


def test_export_run_names_its_output_when_the_checker_fails(tmp_path, monkeypatch):
    run = make_run(tmp_path, "segnet_basic")
    out = tmp_path / "out" / "m.onnx"

    def broken(*args, **kwargs):
        path = export_onnx(*args, **kwargs)
        _break_graph(path)
        return path

    monkeypatch.setattr(ex, "export_onnx", broken)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(out))}: .*not a valid ONNX model"):
        export_run(run, out, "onnx")
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_unpooling_with_padding_cannot_be_rewritten():
    net = nn.Sequential(nn.MaxUnpool2d(3, 2, padding=1))
    with pytest.raises(ConfigError, match="MaxUnpool2d"):
        exportable(net)


def test_scatter_unpool_equals_max_unpool_on_odd_sizes():
    x = torch.randn(2, 3, 11, 9)
    pooled, idx = nn.MaxPool2d(2, 2, return_indices=True)(x)
    want = nn.MaxUnpool2d(2, 2)(pooled, idx, output_size=x.shape[-2:])
    got = ScatterUnpool(2, 2)(pooled, idx, output_size=x.shape[-2:])
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_bad_format_and_folder_out_are_config_errors(tmp_path):
    run = make_run(tmp_path, "unet_same")
    with pytest.raises(ConfigError, match="--format"):
        export_run(run, tmp_path / "m.x", "tflite")
    with pytest.raises(ConfigError, match="is a folder"):
        export_run(run, tmp_path)


def test_cli_export(tmp_path, capsys):
    run = make_run(tmp_path, "unet_same")
    out = tmp_path / "m.onnx"
    assert main(["export", str(run), "--out", str(out), "--checkpoint", "last"]) == 2
    assert "last.safetensors" in capsys.readouterr().err  # no last checkpoint in this run
    assert main(["export", str(run), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and text.count("argmax agreement") == 2
    assert json.loads(json.dumps(read_onnx_metadata(out)))["format"] == "pixelwise-export"
