import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pixelwise.cli import main


def one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    names = capsys.readouterr().out.split()
    for n in (
        "fcn32s",
        "fcn16s",
        "fcn8s",
        "unet",
        "unet_same",
        "segnet",
        "segnet_basic",
        "deconvnet",
    ):
        assert n in names


def test_console_entry_point_help():
    out = subprocess.run(
        [sys.executable, "-m", "pixelwise", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--model" in out and "--init-from" in out


def test_console_entry_point_unknown_option_and_trailing_global_option():
    done = subprocess.run(
        [sys.executable, "-m", "pixelwise", "train", "--epochs", "2", "--bogus", "-q"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("usage: pixelwise train")
    assert done.stderr.strip().endswith("error: unrecognized arguments: --bogus"), done.stderr


def test_predict_writes_mask_and_overlay_for_odd_sizes(run_dir, tmp_path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (97, 131, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (45, 33), dtype=np.uint8)).save(tmp_path / "g.png")
    out = tmp_path / "pred"
    assert (
        main(
            [
                "-q",
                "predict",
                str(run_dir),
                str(tmp_path / "a.png"),
                str(tmp_path / "g.png"),
                "--out",
                str(out),
                "--engine",
                "torch",  # auto would write RUN/engine.json into the shared run
            ]
        )
        == 0
    )
    mask = Image.open(out / "a.png")
    assert mask.mode == "P" and mask.size == (131, 97)
    assert Image.open(out / "a_overlay.png").size == (131, 97)
    assert Image.open(out / "g.png").size == (33, 45)


def test_predict_bad_image_is_one_line_and_writes_nothing(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    out = tmp_path / "pred"
    code = main(["predict", str(run_dir), str(bad), "--out", str(out)])
    one_line_error(capsys, code, "bad.png")
    assert not out.exists() or not any(out.iterdir())


def test_missing_run_and_wrong_model(tmp_path, capsys, digits_folder):
    code = main(["predict", str(tmp_path / "nope"), str(tmp_path), "--out", str(tmp_path / "o")])
    one_line_error(capsys, code)
    code = main(
        ["train", "--data", str(digits_folder), "--model", "fcn9s", "--out", str(tmp_path / "r")]
    )
    one_line_error(capsys, code, "fcn9s")
    code = main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    one_line_error(capsys, code, "missing")
    code = main(["train", "--lr", "-3", "--out", str(tmp_path / "r")])
    one_line_error(capsys, code, "--lr")


def test_incomplete_run_directory(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{not json")
    code = main(["evaluate", str(tmp_path / "run")])
    one_line_error(capsys, code, "config.json")


def test_evaluate_writes_json_and_png(run_dir, digits_folder, tmp_path, capsys):
    out = tmp_path / "ev"
    assert (
        main(
            [
                "-q",
                "evaluate",
                str(run_dir),
                "--data",
                str(digits_folder),
                "--out",
                str(out),
                "--engine",
                "torch",
            ]
        )
        == 0  # fmt: skip
    )
    printed = capsys.readouterr().out
    assert "mean IoU" in printed and "frequency-weighted IoU" in printed
    report = json.loads((out / "eval_val.json").read_text())
    for key in ("pixel_accuracy", "mean_accuracy", "iou", "mean_iou", "fw_iou", "dice"):
        assert key in report
    assert len(report["confusion_matrix"]) == 11
    assert (out / "confusion_val.png").stat().st_size > 1000


def test_heatmap_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "hm"
    assert main(["-q", "heatmap", "--out", str(out), "--epochs", "1", "--no-full"]) == 0
    assert (out / "heatmap.png").stat().st_size > 10_000
    assert (out / "classifier.safetensors").is_file()
    code = main(["heatmap", str(out), str(tmp_path / "nope.png"), "--out", str(out)])
    one_line_error(capsys, code, "nope.png")


def test_outputs_have_ordinary_permissions(run_dir):
    mode = (run_dir / "best.safetensors").stat().st_mode & 0o777
    assert mode & 0o044, oct(mode)  # readable by group/others under the usual umask


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("best.safetensors", lambda p: p.write_bytes(p.read_bytes()[:100])),
        ("best.json", lambda p: p.write_text("{truncated")),
    ],
)
def test_corrupt_checkpoint_files_are_one_line_errors(run_dir, tmp_path, capsys, name, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    damage(run / name)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    code = main(["predict", str(run), str(image), "--out", str(tmp_path / "o")])
    one_line_error(capsys, code, name)
    assert not (tmp_path / "o").exists()
