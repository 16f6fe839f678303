"""--budget: training ends, validated and saved, before the wall clock runs out."""

from __future__ import annotations

import json

import pytest

from pixelwise.errors import ConfigError
from pixelwise.training import TrainConfig, train
from pixelwise.training import budget as budget_module
from pixelwise.training.budget import Budget, format_duration, parse_duration
from pixelwise.training.config import read_config_file


def test_parse_duration():
    assert parse_duration("20m") == 1200
    assert parse_duration("1.5h") == 5400
    assert parse_duration("90s") == 90
    assert parse_duration("600") == 600
    assert parse_duration("none") is None
    with pytest.raises(ConfigError, match="--budget 'soon'"):
        parse_duration("soon")
    for bad in ("-5", "0", "-1m", "inf"):
        with pytest.raises(ConfigError, match="positive duration"):
            parse_duration(bad)
    assert format_duration(3725) == "1:02:05" and format_duration(65) == "1:05"


def test_budget_stops_when_the_reserve_no_longer_fits(monkeypatch):
    """With a fake clock: steps of 1 s, a validation of 10 s and a checkpoint of 2 s must
    leave the loop when less than 1.25 * (10 + 2 + 1) s are left, not before."""
    now = [100.0]
    monkeypatch.setattr(budget_module.time, "perf_counter", lambda: now[0])
    b = Budget(seconds=60, started=100.0, validation=10.0, checkpoint=2.0)
    stops = []
    for _ in range(60):
        now[0] += 1.0
        stops.append(b.must_stop())
        if stops[-1]:
            break
    left = b.left()
    assert stops[-1] and not any(stops[:-1])
    assert left < 1.25 * 13 <= left + 1.0  # stopped at the first step that left too little
    b.pause()  # validation and checkpoint are not steps
    now[0] += 30.0
    b.must_stop()
    assert b.step == pytest.approx(1.0)  # the pause is not counted as a 30 s step


def test_budget_in_a_config_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('budget = "2m"\nclass_weights = "auto"\n[optimisation]\nlr = 0.02\n')
    options = read_config_file(path)
    assert options == {"budget": 120.0, "class_weights": "auto", "lr": 0.02}
    assert TrainConfig.from_dict(options).budget == 120.0


@pytest.mark.parametrize("images", [32, 4])  # 8 steps per epoch, and 1 (STARE's 9 images)
def test_a_short_budget_ends_early_with_a_validated_checkpoint(tmp_path, images):
    out = tmp_path / "run"
    config = TrainConfig(
        data="digits", data_args={"num_images": images}, model="unet_same", width=0.125,
        epochs=500, crop_size=32, batch_size=4, device="cpu", overlays=0, budget=6.0,
        out=str(out), threads=1,
    )  # fmt: skip
    summary = train(config)
    assert summary["budget"]["stopped_early"] is True
    rows = (out / "metrics.csv").read_text().splitlines()
    assert 2 <= len(rows) < 501  # a header and at least one validated epoch, far from 500
    last = json.loads((out / "last.json").read_text())
    assert last["epoch"] == len(rows) - 1 and "val" in last

    with pytest.raises(ConfigError, match="--budget: must be a positive duration"):
        TrainConfig(budget=-1).validate()


def test_a_budgeted_schedule_follows_the_clock():
    """With a budget the schedule's position is the larger of steps done and time used, so a
    run that gets fewer steps than planned still anneals to its end."""
    import math

    import torch

    from pixelwise.training.setup import scheduler

    used = [0.0]
    for kind, at_half in (("cosine", 0.5), ("poly", 0.5**0.9)):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = scheduler(opt, kind, 1000, clock=lambda: used[0])
        used[0] = 0.5
        opt.step()
        sched.step()  # step 1 of 1000, but half the time is gone
        assert math.isclose(sched.get_last_lr()[0], at_half, rel_tol=1e-6)
        used[0] = 1.0
        opt.step()
        sched.step()
        assert sched.get_last_lr()[0] < 1e-9
        used[0] = 0.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    plain = scheduler(opt, "cosine", 1000)  # without a budget: steps only
    assert isinstance(plain, torch.optim.lr_scheduler.CosineAnnealingLR)
