"""No code from files: crafted pickles are refused everywhere a file is read, and every JSON
file read back is checked (wrong types, missing keys, unknown formats or versions)."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.cli import main

SRC = Path(__file__).resolve().parents[1] / "src" / "pixelwise"


class _Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_files(folder: Path) -> tuple[Path, Path, Path]:
    """A torch.save zip (.pt), a raw pickle (.pth), and the marker they would create."""
    marker = folder / "PWNED"
    pt, pth = folder / "evil.pt", folder / "evil.pth"
    torch.save({"features.0.weight": _Payload(marker)}, pt)
    pth.write_bytes(pickle.dumps({"features.0.weight": _Payload(marker)}))
    return pt, pth, marker


def _one_line(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(path)
    return path


def test_package_never_unpickles():
    """Source scan: torch.load only with weights_only=True; no pickle, no allow_pickle."""
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\((.*?)\)\s*$", text, re.M | re.S):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path.name}: {m.group(0)[:60]}")
        for pattern in (r"^\s*import pickle", r"\bpickle\.loads?\(", r"allow_pickle\s*=\s*True"):
            if re.search(pattern, text, re.M):
                offenders.append(f"{path.name}: {pattern}")
    assert not offenders, offenders


@pytest.mark.parametrize("kind", ["pt", "pth"])
def test_pickled_encoder_weights_are_refused(digits_folder, tmp_path, capsys, kind):
    pt, pth, marker = _evil_files(tmp_path)
    weights = pt if kind == "pt" else pth
    code = main(
        ["-q", "train", "--data", str(digits_folder), "--model", "fcn32s", "--width", "0.0625",
         "--encoder-weights", str(weights), "--out", str(tmp_path / "r"), "--epochs", "1"]
    )  # fmt: skip
    err = _one_line(capsys, code, weights.name)
    assert "not unpickled" in err or "cannot read weights" in err
    assert not marker.exists(), "the pickle's code ran"
    assert not (tmp_path / "r").exists()


def test_pickle_renamed_over_weights_is_refused(run_dir, image, tmp_path, capsys):
    pt, _, marker = _evil_files(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    for name in ("best.safetensors", "last.safetensors"):
        (run / name).unlink()  # break the hard link before overwriting
        shutil.copyfile(pt, run / name)
    code = main(["predict", str(run), str(image), "--out", str(tmp_path / "o")])
    _one_line(capsys, code, "best.safetensors")
    code = main(["evaluate", str(run), "--checkpoint", "last"])
    _one_line(capsys, code, "last.safetensors")
    code = main(
        [
            "-q",
            "train",
            "--init-from",
            str(run),
            "--model",
            "unet_same",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    _one_line(capsys, code, "best.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("target", ["state.safetensors", "weights.safetensors", "state.json"])
def test_pickle_as_training_state_is_refused(run_dir, tmp_path, capsys, target):
    pt, _, marker = _evil_files(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    marker_json = json.loads((run / "resume.json").read_text())
    key = {"state.safetensors": "state", "weights.safetensors": "weights", "state.json": "meta"}
    victim = run / "resume" / marker_json["files"][key[target]]
    victim.unlink()
    shutil.copyfile(pt, victim)
    marker_json["sizes"][key[target]] = victim.stat().st_size  # only the content is wrong
    (run / "resume.json").write_text(json.dumps(marker_json))
    code = main(["-q", "train", "--resume", str(run), "--epochs", "2"])
    _one_line(capsys, code, victim.name)
    assert not marker.exists()


# --- JSON files read back: validated ---------------------------------------------------------


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


CONFIG_DAMAGE = {
    "format": (lambda c: c.update(format="something-else"), "not a pixelwise run"),
    "newer version": (lambda c: c.update(version=99), "newer than this pixelwise"),
    "version type": (lambda c: c.update(version="1"), "'version'"),
    "model missing": (lambda c: c.pop("model"), "'model'"),
    "num_classes type": (lambda c: c["model"].update(num_classes="11"), "num_classes"),
    "kwargs type": (lambda c: c["model"].update(kwargs=[]), "kwargs"),
    "mean type": (lambda c: c["normalization"].update(mean="0.5"), "normalization.mean"),
    "classes missing": (lambda c: c.pop("classes"), "'classes'"),
    "classes names": (lambda c: c["classes"].update(names=3), "invalid run configuration"),
    "class weights": (lambda c: c.update(class_weights="x"), "class_weights"),
    "top level": (lambda c: (c.clear(), c.update({"x": 1})), "invalid run configuration"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_DAMAGE))
def test_damaged_config_json_is_one_line_naming_it(run_dir, image, tmp_path, capsys, case):
    change, needle = CONFIG_DAMAGE[case]
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    _edit_json(run / "config.json", change)
    code = main(["predict", str(run), str(image), "--out", str(tmp_path / "o")])
    _one_line(capsys, code, "config.json", needle)
    code = main(["-q", "train", "--resume", str(run), "--epochs", "2"])
    _one_line(capsys, code, "config.json")


def test_config_json_that_is_a_list_is_refused(run_dir, image, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "config.json").write_text("[1, 2]")
    code = main(["predict", str(run), str(image), "--out", str(tmp_path / "o")])
    _one_line(capsys, code, "config.json", "top level must be an object")


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("best.json", "[]", "top level must be an object"),
        ("best.json", '{"epoch": "one"}', "'epoch' must be an integer"),
        ("best.json", "\x80\x81", "unreadable"),
    ],
)
def test_damaged_checkpoint_json_is_refused(
    run_dir, image, tmp_path, capsys, name, content, needle
):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / name).write_bytes(content.encode("latin-1"))
    code = main(["predict", str(run), str(image), "--out", str(tmp_path / "o")])
    _one_line(capsys, code, name, needle)


STATE_DAMAGE = {
    ("resume.json", "format"): (lambda m: m.update(format="x"), "'format'"),
    ("resume.json", "version"): (lambda m: m.update(version=7), "newer than this pixelwise"),
    ("resume.json", "epoch"): (lambda m: m.update(epoch="1"), "'epoch'"),
    ("resume.json", "path"): (lambda m: m["files"].update(state="../../etc/passwd"), "plain file"),
    ("resume.json", "missing files"): (lambda m: m.pop("files"), "'files'"),
    ("state", "param_groups"): (lambda s: s.update(param_groups={}), "param_groups"),
    ("state", "rng"): (lambda s: s["rng"]["python"].update(state=[1, 2]), "'rng'"),
    ("state", "version"): (lambda s: s.update(version=2), "newer than this pixelwise"),
    ("state", "loop"): (lambda s: s.update(loop=[]), "'loop'"),
    ("state", "rows"): (lambda s: s["loop"].update(rows="x"), "'rows'"),
    ("state", "epoch"): (lambda s: s.update(epoch=2), "disagrees"),
}


@pytest.mark.parametrize("case", sorted(STATE_DAMAGE), ids=lambda c: "-".join(c))
def test_damaged_training_state_json_is_one_line(run_dir, tmp_path, capsys, case):
    change, needle = STATE_DAMAGE[case]
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    marker = json.loads((run / "resume.json").read_text())
    if case[0] == "resume.json":
        path = run / "resume.json"
        _edit_json(path, change)
    else:
        path = run / "resume" / marker["files"]["meta"]
        _edit_json(path, change)
        marker["sizes"]["meta"] = path.stat().st_size
        (run / "resume.json").write_text(json.dumps(marker))
    code = main(["-q", "train", "--resume", str(run), "--epochs", "2"])
    _one_line(capsys, code, path.name, needle)


def test_truncated_committed_file_is_detected(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    marker = json.loads((run / "resume.json").read_text())
    path = run / "resume" / marker["files"]["state"]
    path.write_bytes(path.read_bytes()[:50])
    code = main(["-q", "train", "--resume", str(run), "--epochs", "2"])
    _one_line(capsys, code, path.name, "the run is damaged")
