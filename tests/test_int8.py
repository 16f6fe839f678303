"""int8 export (ONNX Runtime static quantization, checked on the validation split), the
``onnxruntime-int8`` engine and ``--engine auto`` (timed on the first image, recorded)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelwise.engines import (
    ENGINE_RECORD,
    ENGINES,
    AutoEngine,
    OnnxRuntimeEngine,
    TorchEngine,
    find_int8,
    make_engine,
)
from pixelwise.errors import ConfigError
from pixelwise.predict import Segmenter, forward_full
from pixelwise.runs import load_run

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and (
    importlib.util.find_spec("onnx") is not None
)
pytestmark = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime / onnx not installed")


@pytest.fixture
def run(run_dir, tmp_path) -> Path:
    """A writable copy of the tiny trained run (unet_same, depth 2, on digits)."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("*.onnx", ENGINE_RECORD))
    return copy


def _ops(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_int8_export_writes_a_checked_qdq_file_the_engine_finds(run, tmp_path):
    from pixelwise.export import export_int8
    from pixelwise.export_formats import read_onnx_metadata

    out = tmp_path / "model.int8.onnx"
    assert find_int8(run) is None
    with pytest.raises(ConfigError, match="pixelwise export .* --int8"):
        make_engine(load_run(run).model, "onnxruntime-int8", run=run)
    report = export_int8(run, out, calibration_images=4, tolerance=0.5)
    assert out.is_file() and report.cached == run / "best.int8.onnx"
    assert out.read_bytes() == report.cached.read_bytes()
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(out)
    meta = read_onnx_metadata(out)
    check = meta["pixelwise_int8_check"]
    assert check["passed"] is True and check["calibration_images"] == 4
    assert check["images"] == 6  # the fixture's whole val split
    assert meta["model"] == "unet_same" and meta["border"] == 0
    assert any("mean IoU" in line for line in report.lines())

    # The engine finds it and agrees with the float model on most pixels of a real image.
    assert find_int8(run) == run / "best.int8.onnx"
    loaded = load_run(run)
    engine = make_engine(loaded.model, "onnxruntime-int8", run=run, threads=1)
    assert isinstance(engine, OnnxRuntimeEngine) and engine.path == run / "best.int8.onnx"
    x = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = forward_full(loaded.model, x)
    got = forward_full(loaded.model, x, net=engine)
    assert got.shape == ref.shape
    assert float((got.argmax(1) == ref.argmax(1)).double().mean()) > 0.8
    assert check["argmax_agreement"] > 0.8

    # New weights: the int8 file no longer belongs to the checkpoint.
    (run / "best.safetensors").write_bytes((run / "best.safetensors").read_bytes() + b" ")
    assert find_int8(run) is None


def test_int8_beyond_the_tolerance_is_refused_and_nothing_is_written(run, tmp_path, capsys):
    from pixelwise.cli import main

    out = tmp_path / "model.int8.onnx"
    args = ["export", str(run), "--int8", "--out", str(out), "--calibration-images", "2"]
    assert main([*args, "--int8-tolerance", "-1", "-q"]) == 2  # must gain 100 points: never
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--int8-tolerance -1" in err and "mean IoU" in err and "nothing was written" in err
    assert not out.exists() and not (run / "best.int8.onnx").exists()
    assert main([*args, "--format", "torchscript"]) == 2
    assert "--int8: needs --format onnx" in capsys.readouterr().err
    assert main([*args, "--calibration-images", "0"]) == 2
    assert "--calibration-images" in capsys.readouterr().err


def test_every_convolution_runs_in_int8_or_the_export_is_refused(
    run, tmp_path, capsys, monkeypatch
):
    """A QDQ convolution that ONNX Runtime does not fuse runs as DequantizeLinear + float Conv +
    QuantizeLinear, slower than the float file (onnxruntime 1.30's quantizer wrote such files on
    an AVX-512 VNNI CPU: 2 of 19 convolutions fused, int8 0.5-0.8x the float speed)."""
    import onnxruntime.quantization as q

    from pixelwise.cli import main
    from pixelwise.export import export_run
    from pixelwise.export_formats import int8_convolutions, quantize_onnx

    fp32, int8 = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    export_run(run, fp32, "onnx")
    calibration = [np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)]
    quantize_onnx(fp32, int8, calibration)
    fused, total = int8_convolutions(fp32, int8)
    assert total > 3 and fused == total

    # A quantizer that leaves one convolution in float: refused, named, nothing written.
    import onnx

    first_conv = next(n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv")
    real = q.quantize_static

    def leaves_one(*args, **kwargs):
        return real(*args, **kwargs, nodes_to_exclude=[first_conv])

    monkeypatch.setattr(q, "quantize_static", leaves_one)
    with pytest.raises(ConfigError, match=f"left 1 of {total} convolutions in float"):
        quantize_onnx(fp32, tmp_path / "slow.onnx", calibration)
    assert not (tmp_path / "slow.onnx").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".slow")] == []
    quantize_onnx(fp32, tmp_path / "slow.onnx", calibration, check_fusion=False)  # the bench's
    assert int8_convolutions(fp32, tmp_path / "slow.onnx") == (total - 1, total)
    out = tmp_path / "model.int8.onnx"
    args = ["export", str(run), "--int8", "--out", str(out), "--calibration-images", "2", "-q"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1 and "onnxruntime>=1.32" in err and "nothing was written" in err
    )
    assert not out.exists() and not (run / "best.int8.onnx").exists()


def test_auto_times_the_engines_keeps_one_and_records_it(run):
    image = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    seg = Segmenter.from_run(run, device="cpu", engine="auto", threads=1)
    assert isinstance(seg.net, AutoEngine) and seg.net.choice is None
    mask = seg.predict(image)
    assert mask.shape == (45, 61)
    assert seg.net.choice in ("torch", "onnxruntime")  # no int8 file: int8 is no candidate
    assert set(seg.net.timings_ms) == {"torch", "onnxruntime"}
    assert "onnxruntime-int8" in seg.net.skipped
    record = json.loads((run / ENGINE_RECORD).read_text())
    [entry] = record["entries"]
    assert entry["engine"] == seg.net.choice and entry["key"]["threads"] == 1
    # Same machine, threads, size and checkpoint: the choice is reused, not measured again.
    again = Segmenter.from_run(run, device="cpu", engine="auto", threads=1)
    assert again.predict(image).shape == mask.shape
    assert again.net.reused and again.net.choice == seg.net.choice
    # Another size is measured and recorded next to the first.
    Segmenter.from_run(run, device="cpu", engine="auto", threads=1).predict(image[:40, :50])
    assert len(json.loads((run / ENGINE_RECORD).read_text())["entries"]) == 2


def test_two_first_calls_from_two_threads_choose_once(run):
    import threading

    seg = Segmenter.from_run(run, device="cpu", engine="auto", threads=1)
    auto, chosen, real = seg.net, [], seg.net._choose

    def counting(x):
        chosen.append(threading.get_ident())
        return real(x)

    auto._choose = counting
    image = np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    start = threading.Barrier(2)
    masks = []

    def first_call():
        start.wait()
        masks.append(seg.predict(image))

    threads = [threading.Thread(target=first_call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(chosen) == 1 and len(masks) == 2
    assert np.array_equal(masks[0], masks[1])


@pytest.mark.parametrize("text", ["{not json", '{"entries": 3}', "[]"])
def test_a_corrupt_engine_record_is_named_and_measured_again(run, text):
    (run / ENGINE_RECORD).write_text(text)
    seg = Segmenter.from_run(run, device="cpu", engine="auto", threads=1)
    with pytest.warns(UserWarning, match=f"{ENGINE_RECORD}: unreadable engine record"):
        seg.predict(np.zeros((40, 40, 3), np.uint8))
    assert not seg.net.reused
    assert json.loads((run / ENGINE_RECORD).read_text())["entries"][0]["engine"] == seg.net.choice


def test_auto_is_torch_without_a_run_folder_and_the_cli_default(run):
    from pixelwise.cli.parser import DEFAULT_ENGINE
    from pixelwise.cli.parser import ENGINES as CLI_ENGINES

    assert CLI_ENGINES == ENGINES and DEFAULT_ENGINE == "auto"
    model = load_run(run).model
    assert isinstance(make_engine(model, "auto"), TorchEngine)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(make_engine(model, "auto", run=run, compile=False), AutoEngine)
    assert isinstance(Segmenter.from_run(run, device="cpu").net, TorchEngine)  # library default
