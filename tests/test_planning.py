"""The planner: a fingerprint of the data, a device profile, and options that fit a budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pixelwise.cli import main
from pixelwise.data import open_dataset
from pixelwise.planning.fingerprint import ClassObjects, Fingerprint, fingerprint
from pixelwise.planning.plan import MIN_STEPS, make_plan
from pixelwise.planning.profile import Candidate, ScaledProfile

CPU = ScaledProfile("fake cpu", "cpu", seconds_per_gmac=0.02)
GPU = ScaledProfile("fake gpu", "cuda", seconds_per_gmac=0.0002)


def _folder(root: Path, kind: str, n: int = 8, size: int = 64) -> Path:
    """``street``: sky above road (class 1 over class 2) with cars; ``cells``: discs anywhere
    (class 1) crossed by thin lines (class 2). Written as a flat images/ + masks/ folder."""
    rng = np.random.default_rng(0)
    for i in range(n):
        mask = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(mask)
        if kind == "street":
            draw.rectangle([0, 0, size, size // 3], fill=1)
            draw.rectangle([0, 2 * size // 3, size, size], fill=2)
            x = int(rng.integers(0, size - 16))
            draw.rectangle([x, size // 2, x + 14, size // 2 + 10], fill=3)
        else:
            for _ in range(3):
                x, y = rng.integers(8, size - 8, 2)
                draw.ellipse([x - 6, y - 6, x + 6, y + 6], fill=1)
            for _ in range(2):
                x0, x1 = rng.integers(0, size, 2)
                draw.line([x0, 0, x1, size], fill=2, width=2)
        m = np.asarray(mask)
        image = (m[..., None] * 60 + rng.integers(0, 40, (size, size, 3))).astype(np.uint8)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / f"{i:02d}.png")
        mask.save(root / "masks" / f"{i:02d}.png")
    (root / "classes.txt").write_text(
        "\n".join(f"c{c} {30 * c} {60 * c} {80 * c}" for c in range(4 if kind == "street" else 3))
    )
    return root


def _fp(root: Path) -> Fingerprint:
    ds = open_dataset(root, "all")
    return fingerprint(ds, {"train": len(ds)})


def _rods(root: Path, turned: bool, n: int = 8, size: int = 64) -> Path:
    """Four 6x20 px rods per image at random places: standing up (``turned`` False: a digit,
    a pedestrian) or turned by a random angle (cells, bacteria)."""
    rng = np.random.default_rng(1)
    for i in range(n):
        mask = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(mask)
        for _ in range(4):
            cx, cy = rng.integers(12, size - 12, 2)
            a = rng.uniform(0, np.pi) if turned else np.pi / 2
            t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            u, v = 10 * np.cos(t), 3 * np.sin(t)  # the rod's long axis along u
            xs, ys = cx + u * np.cos(a) - v * np.sin(a), cy + u * np.sin(a) + v * np.cos(a)
            draw.polygon(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=1)
        _scene(root, f"{i:02d}", mask, rng)
    (root / "classes.txt").write_text("background 0 0 0\nrod 255 0 0")
    return root


def _scene(root: Path, stem: str, mask: Image.Image, rng: np.random.Generator) -> None:
    """Write ``mask`` (class 1 on 0) and a noisy RGB image of it as ``images/`` + ``masks/``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    m = np.asarray(mask)
    image = m[..., None] * 90 + rng.integers(0, 40, (*m.shape, 3))
    Image.fromarray(image.astype(np.uint8)).save(root / "images" / f"{stem}.png")
    mask.save(root / "masks" / f"{stem}.png")


def test_fingerprint_tells_objects_that_keep_their_axis(tmp_path):
    standing = _fp(_rods(tmp_path / "standing", turned=False))
    turned = _fp(_rods(tmp_path / "turned", turned=True))
    assert standing.objects[1].alignment > 0.5 and standing.aligned
    assert turned.objects[1].alignment < 0.25 and not turned.aligned
    assert not standing.upright  # the rods stand anywhere in the image: not a layout bias
    plan = make_plan(standing, CPU, 600, 8, 2)
    assert plan.options["rotate"] == 0 and "axis" in plan.reasons["rotate"]
    assert make_plan(turned, CPU, 600, 8, 2).options["rotate"] == 180


def _letters(root: Path, mirrored: bool, n: int = 8, size: int = 64) -> Path:
    """Four L-shaped objects per image at random places, all of one hand (a 7, an L) or half
    of them mirrored (J-shaped: a car facing either way)."""
    rng = np.random.default_rng(2)
    for i in range(n):
        mask = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(mask)
        for k in range(4):
            x, y = (int(v) for v in rng.integers(12, size - 20, 2))
            draw.rectangle([x, y, x + 3, y + 15], fill=1)  # the stem
            x0, x1 = (x - 8, x + 3) if mirrored and k % 2 else (x, x + 11)
            draw.rectangle([x0, y + 12, x1, y + 15], fill=1)  # the foot, right or left
        _scene(root, f"{i:02d}", mask, rng)
    (root / "classes.txt").write_text("background 0 0 0\nletter 255 0 0")
    return root


def test_fingerprint_tells_objects_whose_mirror_image_is_not_real(tmp_path):
    one_hand = _fp(_letters(tmp_path / "one", mirrored=False))
    both = _fp(_letters(tmp_path / "both", mirrored=True))
    assert one_hand.objects[1].handedness > 0.8 and one_hand.handed
    assert both.objects[1].handedness < 0.3 and not both.handed
    assert one_hand.horizontal_bias < 0.25  # the letters stand anywhere: not a layout bias
    plan = make_plan(one_hand, CPU, 600, 8, 2)
    assert plan.options["hflip"] is False and "mirrored object" in plan.reasons["hflip"]
    assert make_plan(both, CPU, 600, 8, 2).options["hflip"] is True


def test_fingerprint_sees_orientation_and_thin_structures(tmp_path):
    street = _fp(_folder(tmp_path / "street", "street"))
    cells = _fp(_folder(tmp_path / "cells", "cells"))
    assert street.upright and street.vertical_bias > 0.5
    assert not cells.upright and cells.vertical_bias < 0.25
    assert cells.objects[2].thin and not cells.objects[1].thin  # lines vs discs
    assert cells.objects[1].per_image == pytest.approx(3, abs=1)
    assert street.median_size == (64, 64) and street.channels == 3
    assert abs(sum(street.frequency) - 1) < 1e-6
    again = Fingerprint.from_dict(json.loads(json.dumps(street.to_dict())))
    assert again == street


def _synthetic(upright: bool, size: tuple[int, int] = (360, 480), thin: float = 20.0):
    return Fingerprint(
        images={"train": 300, "val": 30},
        median_size=size, min_size=size, max_size=size, channels=3,
        intensity_mean=[0.4] * 3, intensity_std=[0.2] * 3,
        classes=["a", "b", "c"], frequency=[0.7, 0.25, 0.05], labelled=1.0,
        objects=[ClassObjects(1, 5e4, 60), ClassObjects(3, 2e3, thin), ClassObjects(2, 300, 8)],
        vertical_bias=0.9 if upright else 0.02, horizontal_bias=0.05,
    )  # fmt: skip


def test_a_gpu_plan_is_bigger_and_sharper_than_a_cpu_plan():
    fp = _synthetic(upright=True)
    cpu = make_plan(fp, CPU, 1200, 300, 30)
    gpu = make_plan(fp, GPU, 1200, 300, 30)
    assert gpu.options["input_scale"] >= cpu.options["input_scale"]
    assert gpu.options["input_scale"] == 1.0
    assert gpu.options["model_args"]["base_width"] >= cpu.options["model_args"]["base_width"]
    assert gpu.options["crop_size"] > cpu.options["crop_size"]
    assert gpu.options["batch_size"] > cpu.options["batch_size"]
    assert gpu.estimates["steps"] >= MIN_STEPS
    for plan in (cpu, gpu):
        assert set(plan.reasons) == set(plan.options) and all(plan.reasons.values())
    # more time on the same device never gives a smaller model or resolution
    longer = make_plan(fp, CPU, 4 * 3600, 300, 30)
    assert longer.options["input_scale"] >= cpu.options["input_scale"]
    grow = lambda p: (p.options["input_scale"], p.options["model_args"]["base_width"])  # noqa: E731
    assert grow(longer) > grow(cpu)  # the time buys resolution or width, not just epochs


def test_orientation_decides_the_augmentations():
    upright = make_plan(_synthetic(upright=True), CPU, 1200, 300, 30)
    anyway = make_plan(_synthetic(upright=False), CPU, 1200, 300, 30)
    assert upright.options["rotate"] == 0 and upright.options["hflip"] is True
    assert anyway.options["rotate"] == 180
    assert "upright" in upright.reasons["rotate"]


def test_thin_structures_keep_the_resolution():
    thin = make_plan(_synthetic(upright=False, thin=2.0), CPU, 600, 300, 30)
    assert thin.options["input_scale"] == 1.0
    assert thin.estimates["scale_floor"] == 1.0


def test_given_options_override_the_plan_and_are_recorded():
    plan = make_plan(_synthetic(upright=True), CPU, 1200, 300, 30, given={"lr": 0.1})
    assert plan.options["lr"] == 0.1 and plan.given == ["lr"] and plan.reasons["lr"] == "given"


def test_the_profile_formula_grows_with_width_and_pixels():
    small = Candidate("unet_same", 8, 4, 128, 8)
    wide = Candidate("unet_same", 16, 4, 128, 8)
    big = Candidate("unet_same", 8, 4, 256, 8)
    assert CPU.step_seconds(wide, 3, 2) > 2 * CPU.step_seconds(small, 3, 2)
    assert CPU.step_seconds(big, 3, 2) == pytest.approx(4 * CPU.step_seconds(small, 3, 2))


def test_plan_command_and_planned_training(tmp_path, capsys):
    data = _folder(tmp_path / "cells", "cells", n=12, size=48)
    out = tmp_path / "plan.json"
    threads = torch.get_num_threads()
    try:  # the plan times its steps with the threads training will be given
        argv = ["plan", str(data), "--budget", "40s", "--device", "cpu", "--threads", "1"]
        assert main([*argv, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "input_scale" in printed and "no preferred orientation" in printed
    assert "on cpu (1 thread)" in printed
    saved = json.loads(out.read_text())
    assert saved["options"]["model"] == "unet_same" and saved["fingerprint"]["channels"] == 3

    run = tmp_path / "run"
    args = ["-q", "train", "--data", str(data), "--budget", "25s", "--out", str(run)]
    assert main([*args, "--device", "cpu", "--lr", "0.002"]) == 0, capsys.readouterr().err
    plan = json.loads((run / "plan.json").read_text())
    config = json.loads((run / "config.json").read_text())["train"]
    assert config["model"] == "unet_same" and config["lr"] == 0.002
    assert plan["reasons"]["lr"] == "given" and "lr" in plan["given"]
    assert 0 < config["budget"] <= 25
    assert (run / "best.safetensors").is_file()


def test_the_data_pipeline_is_part_of_the_step():
    from pixelwise.planning.pipeline import PipelineProfile, loader_workers

    c = Candidate("unet_same", 16, 4, 128, 8)
    net = GPU.step_seconds(c, 3, 2)
    serial = PipelineProfile(GPU, seconds=0.01, crop=128, workers=0)
    spread = PipelineProfile(GPU, seconds=0.01, crop=128, workers=4)
    assert serial.step_seconds(c, 3, 2) == pytest.approx(net + 8 * 0.01)
    assert spread.step_seconds(c, 3, 2) == pytest.approx(max(net, 8 * 0.01 / 4))
    bigger = Candidate("unet_same", 16, 4, 256, 8)  # four times the pixels to crop and warp
    assert serial.data_seconds(bigger) == pytest.approx(4 * serial.data_seconds(c))
    assert loader_workers("cpu", 64) == 0 and loader_workers("cuda", 2) == 0
    assert loader_workers("cuda", 16) == 8 and loader_workers("cuda", 4) == 3
    # a slow pipeline leaves fewer epochs in the same budget, and the plan says who loads
    fp = _synthetic(upright=True)
    fast = make_plan(fp, GPU, 1200, 300, 30)
    slow = make_plan(fp, PipelineProfile(GPU, 0.2, fast.candidate.crop, workers=0), 1200, 300, 30)
    assert slow.estimates["steps"] < fast.estimates["steps"]
    assert fast.options["workers"] == 0 and "main process" in fast.reasons["workers"]
    loaded = make_plan(fp, PipelineProfile(GPU, 0.2, fast.candidate.crop, workers=8), 1200, 300, 30)
    assert loaded.options["workers"] == 8 and loaded.estimates["steps"] > slow.estimates["steps"]


def test_a_gpu_plan_may_go_wider_than_any_cpu_plan():
    fp = _synthetic(upright=True, size=(256, 256))
    roomy = make_plan(fp, ScaledProfile("big gpu", "cuda", seconds_per_gmac=1e-6), 3600, 300, 30)
    assert roomy.options["model_args"]["base_width"] == 64
    cpu = make_plan(fp, ScaledProfile("fast cpu", "cpu", seconds_per_gmac=1e-6), 3600, 300, 30)
    assert cpu.options["model_args"]["base_width"] == 32


def test_sample_seconds_times_the_augmentations_on_real_images(tmp_path):
    from pixelwise.planning.pipeline import sample_seconds

    ds = open_dataset(_folder(tmp_path / "street", "street", n=6, size=96), "all")
    base = {"crop_size": 64, "scale_min": 0.8, "scale_max": 1.2, "hflip": True}
    plain = sample_seconds(ds, base, samples=4)
    warped = sample_seconds(ds, {**base, "elastic": 10.0, "rotate": 180.0}, samples=4)
    assert all(isinstance(t, float) and 0 <= t < 5 for t in (plain, warped))  # ran, no timing goal


def test_width_comes_before_resolution():
    """C3 (width 24, half resolution) beat a plan of width 8 at full resolution on CamVid by 18
    mIoU points at the same number of steps: a plan narrower than WIDTH_FIRST means no
    candidate of that width had enough steps at any allowed scale."""
    from pixelwise.planning.plan import SCALES, WIDTH_FIRST, _crop, _depth, _estimate

    fp = _synthetic(upright=True)
    seen = set()
    for budget in (300, 900, 1800, 3600, 4 * 3600):
        plan = make_plan(fp, CPU, budget, 300, 30)
        width, scale = plan.options["model_args"]["base_width"], plan.options["input_scale"]
        seen.add((width, scale))
        if width >= WIDTH_FIRST:
            continue
        for s in (s for s in SCALES if s >= plan.estimates["scale_floor"] - 1e-9):
            short = int(min(fp.median_size) * s)
            c = Candidate("unet_same", WIDTH_FIRST, _depth(short), _crop(short, 4, "cpu"), 8)
            assert _estimate(fp, CPU, c, s, 300, 30, budget)["steps"] < MIN_STEPS
    assert any(w >= WIDTH_FIRST and s < 1.0 for w, s in seen)  # width bought with resolution


def test_a_fingerprint_of_another_version_is_measured_again(tmp_path, monkeypatch):
    import pixelwise.planning as planning
    from pixelwise.training import TrainConfig

    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))
    config = TrainConfig(data=str(_rods(tmp_path / "rods", turned=False)))
    measured = []
    real = planning.fingerprint

    def counted(*args, **kwargs):
        measured.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(planning, "fingerprint", counted)
    first, _ = planning.dataset_fingerprint(config)
    again, _ = planning.dataset_fingerprint(config)  # from the cache
    assert len(measured) == 1 and again == first
    monkeypatch.setattr(planning, "VERSION", planning.VERSION + 1)  # what a fingerprint measures
    planning.dataset_fingerprint(config)
    assert len(measured) == 2
