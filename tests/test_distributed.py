"""Data-parallel training under torchrun (CPU, gloo) equals one process; sharded prediction.

Measured tolerance (this machine, tiny BN-free U-Net, fp32 (``--amp off``), 2 epochs of 6 steps,
2 processes vs 1): the per-epoch train loss differs by 8e-8 relative (gradients are averaged
across processes in another summation order), the weights by 1.2e-6; the validation metrics are
identical. The test allows 1e-5 relative on the loss, 1e-4 on the weights and 1e-6 on the
validation metrics. (With bf16 autocast, the CPU default where the CPU has native bf16, the loss
differs by about 3e-5 relative: too coarse for this comparison.)
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from pixelwise.cli import main
from pixelwise.distributed import EpochSampler, parse_shard, shard_range
from pixelwise.errors import ConfigError

OPTIONS = [
    "--model", "unet_same", "--model-arg", "depth=2", "--model-arg", "base_width=4",
    "--model-arg", "batch_norm=false", "--batch-size", "4", "--crop-size", "32",
    "--scale", "1", "1", "--no-hflip", "--optimizer", "sgd", "--lr", "0.05",
    "--schedule", "poly", "--device", "cpu", "--threads", "1", "--epochs", "2",
    "--deterministic", "--amp", "off",
]  # fmt: skip


# --- the sampler: global batches of W ranks == the batches of one process -----------------


@pytest.mark.parametrize(("n", "batch", "world"), [(24, 4, 2), (25, 6, 3), (10, 4, 4), (7, 2, 1)])
def test_rank_slices_make_up_the_single_process_batches(n, batch, world):
    single = EpochSampler(n, batch, seed=3, drop_last=True)
    single.set_epoch(2)
    order = list(single)
    assert sorted(order) == sorted(set(order)) and len(order) == (n // batch) * batch
    local = batch // world
    per_rank = []
    for r in range(world):
        s = EpochSampler(n, batch, seed=3, rank=r, world_size=world)
        s.set_epoch(2)
        per_rank.append(list(s))
        assert len(per_rank[-1]) == len(s) == (n // batch) * local
    for k in range(n // batch):  # global batch k = the rank slices, in rank order
        rebuilt = sum((per_rank[r][k * local : (k + 1) * local] for r in range(world)), [])
        assert rebuilt == order[k * batch : (k + 1) * batch]


def test_order_is_a_pure_function_of_seed_and_epoch():
    a, b = EpochSampler(30, 4, seed=1), EpochSampler(30, 4, seed=1)
    a.set_epoch(5)
    for e in (1, 2, 3, 5):  # whatever happened before
        b.set_epoch(e)
        list(b)
    assert list(a) == list(b)
    b.set_epoch(6)
    assert list(a) != list(b)
    assert list(EpochSampler(30, 4, seed=2)) != list(EpochSampler(30, 4, seed=1))


def test_resumed_epoch_skips_consumed_batches():
    s = EpochSampler(26, 4, seed=0, drop_last=False)
    s.set_epoch(3)
    full = list(s)
    assert len(full) == 26 and len(s) == 26 and s.num_batches == 7
    s.set_epoch(3, start_batch=2)
    assert list(s) == full[8:] and len(s) == 18


def test_global_batch_must_split_evenly():
    with pytest.raises(ConfigError, match="--batch-size 5: must be divisible by the 2"):
        EpochSampler(20, 5, world_size=2)
    with pytest.raises(ConfigError, match="larger than the 3 training images"):
        EpochSampler(3, 4, world_size=2)


def test_shards_and_blocks():
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)
    blocks = [shard_range(10, r, 3) for r in range(3)]
    assert [list(b) for b in blocks] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert sum(len(shard_range(5, r, 8)) for r in range(8)) == 5


# --- torchrun: 2 processes == 1 process -----------------------------------------------------


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_torchrun_two_processes_match_one(digits_folder, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    one, two = tmp_path / "one", tmp_path / "two"
    base = ["--data", str(digits_folder), *OPTIONS]
    subprocess.run(
        [sys.executable, "-m", "pixelwise", "-q", "train", *base, "--out", str(one)],
        check=True,
        env=env,
        timeout=300,
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "pixelwise",
            "-q",
            "train",
            *base,
            "--out",
            str(two),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best val mean IoU") == 1  # rank 0 alone reports
    rows1, rows2 = _metrics(one), _metrics(two)
    assert len(rows1) == len(rows2) == 2
    for r1, r2 in zip(rows1, rows2, strict=True):
        assert r1["step"] == r2["step"] == str(6 * int(r1["epoch"]))  # same global batches
        assert float(r2["train_loss"]) == pytest.approx(float(r1["train_loss"]), rel=1e-5)
        for key in r1:
            if key.startswith("val_") and r1[key]:
                assert float(r2[key]) == pytest.approx(float(r1[key]), abs=1e-6), key
    w1, w2 = load_file(str(one / "last.safetensors")), load_file(str(two / "last.safetensors"))
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4
    # validation split over the 2 ranks and all-reduced == one process on the same weights
    info = json.loads((two / "last.json").read_text())
    assert main(["-q", "evaluate", str(two), "--data", str(digits_folder), "--checkpoint",
                 "last", "--device", "cpu", "--out", str(tmp_path / "ev"),
                 "--engine", "torch"]) == 0  # fmt: skip
    report = json.loads((tmp_path / "ev" / "eval_val.json").read_text())
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"):
        assert report[key] == info["val"][key], key
    # the files were written once, by rank 0, and the run resumes in a single process
    assert sorted(p.name for p in (two / "resume").iterdir())[0] == "e0002-done.state.json"
    assert main(["-q", "train", "--resume", str(two), "--epochs", "3", "--threads", "1"]) == 0
    assert len(_metrics(two)) == 3


# --- prediction split over processes ---------------------------------------------------------


def _images(folder: Path) -> list[str]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = ["a.png", "a.jpg", "b.png", "c.png", "d.png"]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / name)
    return names


def test_predict_shards_split_a_folder_without_collisions(run_dir, tmp_path, monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    _images(tmp_path / "in")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    torch_engine = ["--engine", "torch"]  # auto would write into the shared run and may differ
    assert main(["-q", "predict", str(run_dir), str(tmp_path / "in"), "--out", str(whole),
                 *torch_engine]) == 0  # fmt: skip
    outputs = []
    for i in range(2):
        code = main(
            ["-q", "predict", str(run_dir), str(tmp_path / "in"), "--out", str(parts),
             "--shard", f"{i}/2", *torch_engine]
        )  # fmt: skip
        assert code == 0
        outputs.append(sorted(p.name for p in parts.iterdir()))
    # sorted inputs a.jpg, a.png, b.png, c.png, d.png -> shard 0 takes a.jpg, b.png, d.png
    assert outputs[0] == ["a.png", "a_overlay.png", "b.png", "b_overlay.png", "d.png",
                          "d_overlay.png"]  # fmt: skip
    assert sorted(p.name for p in parts.iterdir()) == sorted(p.name for p in whole.iterdir())
    for p in whole.iterdir():  # same bytes whichever process wrote them
        assert p.read_bytes() == (parts / p.name).read_bytes(), p.name


def test_predict_under_torchrun_takes_its_rank_share(run_dir, tmp_path, monkeypatch):
    _images(tmp_path / "in")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    out = tmp_path / "o"
    argv = ["-q", "predict", str(run_dir), str(tmp_path / "in"), "--out", str(out)]
    assert main([*argv, "--engine", "torch"]) == 0  # auto would write into the shared run
    assert sorted(p.name for p in out.glob("*_overlay.png")) == ["a__overlay.png", "c_overlay.png"]


def test_bad_shard_option_is_one_line(run_dir, tmp_path, capsys):
    _images(tmp_path / "in")
    code = main(["predict", str(run_dir), str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                 "--shard", "2/2"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--shard" in err, err
    assert not (tmp_path / "o").exists()
