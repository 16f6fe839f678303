"""Crash-safe training: SIGKILL / Ctrl-C mid-run, then ``--resume``, equals an uninterrupted run.

Every run here is deterministic (``--deterministic``, one thread, tiny U-Net, 24 digits scenes,
3 epochs of 6 steps), so "equal" means bit-identical weights and identical metrics.csv rows
(all columns but the wall-clock ``time_s``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pixelwise.cli import main
from pixelwise.errors import ConfigError
from pixelwise.runs import load_training_state
from pixelwise.training import TrainConfig, resume_config, train

OPTIONS = [
    "--model", "unet_same", "--model-arg", "depth=2", "--model-arg", "base_width=4",
    "--batch-size", "4", "--crop-size", "32", "--optimizer", "adamw", "--lr", "0.01",
    "--schedule", "poly", "--no-hflip", "--device", "cpu", "--deterministic",
    "--threads", "1", "--epochs", "3",
]  # fmt: skip


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pixelwise", "-q", "train", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop("time_s")
    return rows


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "last.safetensors")), load_file(str(b / "last.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ba, bb = load_file(str(a / "best.safetensors")), load_file(str(b / "best.safetensors"))
    assert all(torch.equal(ba[k], bb[k]) for k in ba)
    assert _rows(a) == _rows(b)
    assert len(_rows(a)) == 3
    assert (
        json.loads((a / "best.json").read_text())["epoch"]
        == json.loads((b / "best.json").read_text())["epoch"]
    )


@pytest.fixture(scope="module")
def reference(digits_folder, tmp_path_factory) -> Path:
    """The uninterrupted run (a subprocess, exactly like the interrupted ones)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(
        _cmd("--data", str(digits_folder), "--out", str(out), "--save-every", "2", *OPTIONS),
        check=True,
        env=_env(),
        timeout=300,
    )
    return out


def _start_and_signal(digits_folder: Path, out: Path, sig: int) -> subprocess.CompletedProcess:
    """Start training, wait for its first committed checkpoint, then send ``sig``."""
    proc = subprocess.Popen(
        _cmd("--data", str(digits_folder), "--out", str(out), "--save-every", "2", *OPTIONS),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not (out / "resume.json").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(digits_folder, reference, tmp_path):
    out = tmp_path / "run"
    done = _start_and_signal(digits_folder, out, signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists(), "finished before the kill: nothing was tested"
    point = load_training_state(out)  # the committed checkpoint is whole
    assert point.epoch <= 3
    resumed = subprocess.run(
        _cmd("--resume", str(out), "--threads", "1"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(reference, out)
    assert sorted(p.name for p in (out / "resume").iterdir()) == [
        "e0003-done.state.json",
        "e0003-done.state.safetensors",
        "e0003-done.weights.safetensors",
    ]
    assert not list(out.glob(".*.tmp*")), "temporary files of the killed run left behind"


@pytest.mark.slow
def test_ctrl_c_saves_mid_epoch_then_resume_equals_uninterrupted_run(
    digits_folder, reference, tmp_path
):
    out = tmp_path / "run"
    done = _start_and_signal(digits_folder, out, signal.SIGINT)
    assert done.returncode == 130, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"interrupted; resume with: pixelwise train --resume {out}" in lines[0]
    point = load_training_state(out)
    assert not (out / "summary.json").exists()
    resumed = subprocess.run(
        _cmd("--resume", str(out), "--threads", "1"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(reference, out)
    assert point.epoch >= 1


@pytest.mark.slow
def test_resume_as_printed_keeps_the_runs_thread_count(digits_folder, reference, tmp_path):
    """Issue 19: the run was trained with --threads 1; the resume command the product prints
    (no --threads) on a process whose default is 2 threads must still continue it bit for bit,
    and say which options it took from the run."""
    out = tmp_path / "run"
    done = _start_and_signal(digits_folder, out, signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists(), "finished before the kill: nothing was tested"
    assert json.loads((out / "config.json").read_text())["train"]["threads"] == 1
    resumed = subprocess.run(
        [sys.executable, "-m", "pixelwise", "train", "--resume", str(out)],
        env={**_env(), "OMP_NUM_THREADS": "2"},  # the default thread count is now 2
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "options from the run: " in resumed.stderr and "--threads 1" in resumed.stderr
    _assert_same_run(reference, out)


TINY = {
    "model": "unet_same",
    "model_args": {"depth": 2, "base_width": 4},
    "batch_size": 4,
    "crop_size": 32,
    "optimizer": "sgd",
    "lr": 0.01,
    "schedule": "cosine",
    "hflip": False,
    "overlays": 0,
    "device": "cpu",
    "deterministic": True,
}


@contextlib.contextmanager
def _dying_at_second_commit(monkeypatch):
    """Inside: the process "dies" (SystemExit) when training writes its second commit marker
    (``resume.json``), after that checkpoint's files are written."""
    import pixelwise.runs as runs

    real_write_json = runs.write_json
    commits = []

    def dying_write_json(path, obj):
        if Path(path).name == "resume.json":
            commits.append(obj["epoch"])
            if len(commits) == 2:
                raise SystemExit("killed")
        real_write_json(path, obj)

    monkeypatch.setattr(runs, "write_json", dying_write_json)
    try:
        yield
    finally:
        monkeypatch.setattr(runs, "write_json", real_write_json)


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a / "last.safetensors")), load_file(str(b / "last.safetensors"))
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def test_death_between_files_keeps_the_previous_commit(digits_folder, tmp_path, monkeypatch):
    """A crash after the new checkpoint's files but before its commit marker: the marker
    still names the previous, complete set, and resuming from it gives the same run."""

    ref = tmp_path / "ref"
    train(TrainConfig(data=str(digits_folder), out=str(ref), epochs=2, **TINY))

    out = tmp_path / "run"
    with _dying_at_second_commit(monkeypatch), pytest.raises(SystemExit):
        # epoch 2's files are written; it dies before committing them
        train(TrainConfig(data=str(digits_folder), out=str(out), epochs=2, **TINY))
    point = load_training_state(out)
    assert (point.epoch, point.complete) == (1, True)
    assert any("e0002" in p.name for p in (out / "resume").iterdir())  # uncommitted leftovers
    train(resume_config(out))
    assert _same_weights(ref, out)
    assert _rows(ref) == _rows(out)
    named = set(json.loads((out / "resume.json").read_text())["files"].values())
    assert {p.name for p in (out / "resume").iterdir()} == named


def test_death_after_commit_before_publishing_is_repaired(digits_folder, tmp_path, monkeypatch):
    """A crash after the commit but before last/best/metrics.csv were updated: resuming puts
    them in line with the committed checkpoint first."""
    import pixelwise.training.loop as train_module

    ref = tmp_path / "ref"
    train(TrainConfig(data=str(digits_folder), out=str(ref), epochs=2, **TINY))
    out = tmp_path / "run"
    real_publish = train_module.publish_checkpoint
    calls = []

    def dying_publish(run, which, source, info):
        calls.append(info["epoch"])
        if info["epoch"] == 2:
            raise SystemExit("killed")
        return real_publish(run, which, source, info)

    monkeypatch.setattr(train_module, "publish_checkpoint", dying_publish)
    with pytest.raises(SystemExit):
        train(TrainConfig(data=str(digits_folder), out=str(out), epochs=2, **TINY))
    monkeypatch.setattr(train_module, "publish_checkpoint", real_publish)
    assert json.loads((out / "last.json").read_text())["epoch"] == 1
    # epoch 2 is committed: nothing is left to train, and the run's files are repaired
    with pytest.raises(ConfigError, match="already trained 2 epoch"):
        train(resume_config(out))
    train(resume_config(out, {"epochs": 3}))
    assert json.loads((out / "last.json").read_text())["epoch"] == 3
    assert len(_rows(out)) == 3 and _rows(out)[:2] == _rows(ref)


def test_resume_refuses_changed_options(digits_folder, tmp_path, capsys):
    out = tmp_path / "run"
    train(TrainConfig(data=str(digits_folder), out=str(out), epochs=1, **TINY))
    with pytest.raises(ConfigError, match="--lr: cannot change when resuming"):
        resume_config(out, {"lr": 0.5})
    with pytest.raises(ConfigError, match="--epochs 1: .* already trained 1 epoch"):
        train(resume_config(out))
    # the CLI: an explicit different option is refused in one line; equal values are fine
    code = main(["train", "--resume", str(out), "--epochs", "2", "--batch-size", "8"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--batch-size" in err, err
    code = main(["train", "--resume", str(out), "--out", str(tmp_path / "elsewhere")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--out" in err, err
    code = main(["-q", "train", "--resume", str(out), "--epochs", "2", "--lr", "0.01"])
    assert code == 0, capsys.readouterr().err
    assert len(_rows(out)) == 2


def test_resume_of_a_run_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["train", "--resume", str(tmp_path / "empty")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "config.json is missing" in err, err


def test_divergence_keeps_the_last_good_checkpoint(digits_folder, tmp_path, monkeypatch):
    """The loss turns NaN in epoch 2: training stops with advice, epoch 1 stays resumable."""
    import pixelwise.training.loop as train_module
    import pixelwise.training.tasks as tasks_module

    real = tasks_module.pixel_cross_entropy
    calls = [0]

    def poisoned(*args, **kwargs):
        calls[0] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls[0] > 8 else loss  # 6 steps per epoch

    monkeypatch.setattr(tasks_module, "pixel_cross_entropy", poisoned)
    out = tmp_path / "run"
    cfg = TrainConfig(data=str(digits_folder), out=str(out), epochs=3, log_every=1, **TINY)
    with pytest.raises(train_module.TrainingDiverged, match="lower --lr") as info:
        train(cfg)
    assert "last good checkpoint is kept" in str(info.value)
    point = load_training_state(out)
    assert (point.epoch, point.complete) == (1, True)
    weights = load_file(str(out / "last.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert json.loads((out / "last.json").read_text())["epoch"] == 1


def test_val_every_validates_every_n_epochs_and_the_last(digits_folder, tmp_path):
    out = tmp_path / "run"
    summary = train(
        TrainConfig(data=str(digits_folder), out=str(out), epochs=5, val_every=2, **TINY)
    )
    assert [r["epoch"] for r in _rows(out)] == ["2", "4", "5"]
    assert json.loads((out / "last.json").read_text())["epoch"] == 5
    assert summary["best_epoch"] in (2, 4, 5)
    with pytest.raises(ConfigError, match="--val-every"):
        TrainConfig(data=str(digits_folder), val_every=0).validate()


def test_resume_from_an_epoch_without_validation(digits_folder, tmp_path, monkeypatch):
    """Epoch 1 is committed without validation (val_every 2); dying at epoch 2's commit and
    resuming from epoch 1's gives the uninterrupted run, bit for bit."""

    opts = dict(epochs=3, val_every=2, **TINY)
    ref = tmp_path / "ref"
    train(TrainConfig(data=str(digits_folder), out=str(ref), **opts))
    out = tmp_path / "run"
    with _dying_at_second_commit(monkeypatch), pytest.raises(SystemExit):
        train(TrainConfig(data=str(digits_folder), out=str(out), **opts))
    point = load_training_state(out)
    assert point.epoch == 1 and not (out / "metrics.csv").exists()
    train(resume_config(out))
    assert _same_weights(ref, out)
    assert _rows(ref) == _rows(out) and [r["epoch"] for r in _rows(out)] == ["2", "3"]


def test_resume_free_options_default_to_the_runs_own(digits_folder, tmp_path):
    """Options that may change on resume keep the run's values unless given (and the note
    says which were taken from the run and which were changed)."""
    from pixelwise.training.resume import resume_note

    out = tmp_path / "run"
    train(
        TrainConfig(data=str(digits_folder), out=str(out), epochs=1, threads=1, val_every=1, **TINY)
    )
    config = resume_config(out, {"epochs": 2})
    assert (config.threads, config.device, config.epochs) == (1, "cpu", 2)
    note = resume_note(config)
    assert "--threads 1" in note.split("; changed now")[0] and "--epochs 2 (was 1)" in note
    assert "not be bit-equal" not in note
    changed = resume_config(out, {"epochs": 2, "threads": 2})
    assert changed.threads == 2
    assert "--threads 2 (was 1)" in resume_note(changed) and "bit-equal" in resume_note(changed)
