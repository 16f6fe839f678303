"""Progress only on a terminal: with stderr to a file, no bars and no carriage returns, one
plain line per epoch and per long phase (count, rate, elapsed time)."""

from __future__ import annotations

import io
import re
import sys

import pytest

from pixelwise.cli import main
from pixelwise.cli.progress import LineBar, iter_progress, progress_factory

LINE = re.compile(r"^(?P<desc>.+): (?P<n>\d+) (?P<unit>\w+) in \d+\.\d s \([\d.e+-]+ (?P=unit)/s\)")


def test_line_bar_prints_one_line_when_its_phase_ends():
    out = io.StringIO()
    bar = LineBar(total=3, desc="epoch 2/5", unit="batch", file=out)
    for _ in range(3):
        bar.update(1)
        assert out.getvalue() == ""  # nothing while it runs
    bar.set_postfix(loss="0.1234", lr="1.00e-03")
    bar.close()
    bar.close()
    line = out.getvalue()
    assert line.count("\n") == 1 and "\r" not in line
    assert LINE.match(line) and line.startswith("epoch 2/5: 3 batch in ")
    assert line.rstrip().endswith("batch/s), loss 0.1234, lr 1.00e-03")


def test_line_bar_is_silent_for_short_or_unfinished_phases():
    out = io.StringIO()
    short = LineBar(total=2, desc="check data", unit="pair", delay=60, file=out)
    short.update(2)
    short.close()
    cut = LineBar(total=10, desc="epoch 1/1", unit="batch", file=out)
    cut.update(4)
    cut.close()  # an error or Ctrl-C: the message that follows says what happened
    assert out.getvalue() == ""


def test_line_bar_counts_from_initial_and_wraps_iterables():
    out = io.StringIO()
    bar = LineBar(total=6, initial=4, desc="epoch 1/1", unit="batch", file=out)
    bar.update(2)
    bar.close()
    assert out.getvalue().startswith("epoch 1/1: 6 batch in ")
    out = io.StringIO()
    assert list(LineBar([1, 2, 3], desc="evaluate", unit="img", file=out)) == [1, 2, 3]
    assert out.getvalue().startswith("evaluate: 3 img in ")


def test_the_factories_choose_by_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress_factory(False)(total=2, desc="x", unit="it"), LineBar)
    assert isinstance(iter_progress(False, "x", "it")([1]), LineBar)
    assert progress_factory(True) is None and iter_progress(True, "x", "it") is None
    monkeypatch.setattr(sys, "stderr", Tty())
    bar = progress_factory(False)(total=2, desc="x", unit="it")
    assert not isinstance(bar, LineBar)  # tqdm on a terminal
    bar.close()


def _stderr_to_file(monkeypatch, path):
    f = open(path, "w")  # noqa: SIM115 (closed by the caller)
    monkeypatch.setattr(sys, "stderr", f)
    return f


def test_data_check_to_a_file(digits_folder, tmp_path, monkeypatch, capsys):
    f = _stderr_to_file(monkeypatch, tmp_path / "err.txt")
    assert main(["data", "check", str(digits_folder)]) == 0
    f.close()
    text = (tmp_path / "err.txt").read_text()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 1 and LINE.match(lines[0]) and lines[0].startswith("check: 30 pair"), text
    f = _stderr_to_file(monkeypatch, tmp_path / "quiet.txt")
    assert main(["data", "check", str(digits_folder), "--quiet"]) == 0
    f.close()
    assert (tmp_path / "quiet.txt").read_text() == ""


@pytest.mark.slow
def test_train_to_a_file_one_line_per_epoch(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    f = _stderr_to_file(monkeypatch, tmp_path / "err.txt")
    argv = ["train", "--data-arg", "num_images=16", "--model", "unet_same", "--width", "0.125"]
    argv += ["--epochs", "2", "--crop-size", "32", "--batch-size", "4", "--device", "cpu"]
    argv += ["--overlays", "0", "--out", str(out)]
    code = main(argv)
    f.close()
    text = (tmp_path / "err.txt").read_text()
    assert code == 0, text
    assert "\r" not in text and "it/s]" not in text  # no tqdm
    for epoch in (1, 2):
        bars = [line for line in text.splitlines() if line.startswith(f"epoch {epoch}/2: ")]
        per_epoch = [line for line in bars if LINE.match(line)]
        assert len(per_epoch) == 1 and per_epoch[0].startswith(f"epoch {epoch}/2: 4 batch"), text
    assert "train loss" in text  # the training log is still there
