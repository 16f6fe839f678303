"""The first hour with messy real data, through the CLI as a new user types it (issue 14):
lossy masks are flagged and fixed, never silently trained as 255 classes; predict never writes
over its inputs; any folder can be scored; data fix leaves the source untouched."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from pixelwise.cli import main
from tests.data import messy

TINY = [
    "--model", "unet_same", "--width", "0.125", "--model-arg", "depth=2", "--epochs", "1",
    "--crop-size", "32", "--batch-size", "4", "--device", "cpu", "--overlays", "0",
]  # fmt: skip


def _err_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_lossy_masks_are_flagged_refused_then_read_with_a_threshold(tmp_path, capsys):
    data = messy.noisy_flat(tmp_path / "noisy")
    assert main(["-q", "data", "check", str(data)]) == 1
    out = capsys.readouterr().out
    assert "JPEG-compressed" in out and "--mask-threshold 128" in out and "data fix" in out

    # training as it is: refused in one line, nothing written (not a 255-class model)
    code = main(["-q", "train", "--data", str(data), "--out", str(tmp_path / "r0"), *TINY])
    err = _err_lines(capsys)
    assert code == 2 and len(err) == 1, err
    assert "look noisy" in err[0] or "lossy" in err[0] or "JPEG" in err[0], err
    assert not (tmp_path / "r0").exists()

    run = tmp_path / "r1"
    args = ["--data", str(data), "--mask-threshold", "128", "--out", str(run), *TINY]
    assert main(["-q", "train", *args]) == 0, capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["num_classes"] == 2
    assert config["train"]["mask_threshold"] == 128


def test_data_fix_writes_a_clean_copy_that_trains_and_checks(tmp_path, capsys):
    data = messy.with_duplicate(messy.noisy_flat(tmp_path / "noisy", jpeg_masks=True))
    before = messy.snapshot(data)
    clean = tmp_path / "clean"
    assert main(["-q", "data", "fix", str(data), "--out", str(clean)]) == 0
    printed = capsys.readouterr().out
    assert "next: pixelwise data check" in printed
    assert messy.snapshot(data) == before  # the source is never touched
    assert (clean / "classes.txt").is_file() and (clean / "fix_report.txt").is_file()
    masks = sorted((clean / "masks").iterdir())
    assert masks and all(m.suffix == ".png" for m in masks)
    assert set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 1}
    assert len(list((clean / "images").iterdir())) == len(masks)  # the duplicate dropped
    assert main(["-q", "data", "check", str(clean)]) == 0
    run = tmp_path / "run"
    assert main(["-q", "train", "--data", str(clean), "--out", str(run), *TINY]) == 0
    assert json.loads((run / "config.json").read_text())["model"]["num_classes"] == 2
    # fixing into the source folder is refused in one line
    assert main(["-q", "data", "fix", str(data), "--out", str(data / "clean")]) == 2
    assert len(_err_lines(capsys)) == 1


def test_images_three_times_their_masks_are_resized_by_data_fix(tmp_path, capsys):
    data = messy.big_images(tmp_path / "big")
    assert main(["-q", "data", "check", str(data)]) == 1
    assert "--resize images" in capsys.readouterr().out
    clean = tmp_path / "clean"
    args = ["-q", "data", "fix", str(data), "--out", str(clean), "--resize", "images"]
    assert main(args) == 0
    image = next((clean / "images").iterdir())
    mask = clean / "masks" / (image.stem + ".png")
    assert Image.open(image).size == Image.open(mask).size
    assert main(["-q", "data", "check", str(clean)]) == 0


def test_predict_never_writes_over_its_inputs(run_dir, tmp_path, capsys):
    photos = tmp_path / "photos"
    for i in range(2):
        messy.save(photos / f"p{i}.png", messy.image_for(messy.clean_mask(i), i))
    before = messy.snapshot(photos)
    code = main(["-q", "predict", str(run_dir), str(photos), "--out", str(photos)])
    err = _err_lines(capsys)
    assert code == 2 and len(err) == 1 and "--out" in err[0], err
    assert messy.snapshot(photos) == before
    code = main(["-q", "predict", str(run_dir), str(photos), "--out", str(run_dir)])
    assert code == 2 and "--out" in _err_lines(capsys)[0]

    # outputs inside the input folder: allowed, and a second run never reads them back
    out = photos / "pred"
    assert main(["-q", "predict", str(run_dir), str(photos), "--out", str(out)]) == 0
    first = sorted(p.name for p in out.iterdir())
    assert main(["-q", "predict", str(run_dir), str(photos), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == first
    assert not [p for p in out.iterdir() if "overlay_overlay" in p.name]


def test_any_folder_is_a_test_set(run_dir, digits_folder, tmp_path, capsys):
    """A flat images/ + masks/ folder scored whole (--split all), and an images folder with a
    masks folder given apart."""
    images, masks = digits_folder / "val" / "images", digits_folder / "val" / "masks"
    n = len(list(images.iterdir()))
    out = tmp_path / "eval"
    args = ["-q", "evaluate", str(run_dir), "--data", str(images), "--masks", str(masks)]
    assert main([*args, "--split", "all", "--out", str(out)]) == 0, capsys.readouterr().err
    report = json.loads((out / "eval_all.json").read_text())
    assert report["images"] == n
    flat = digits_folder / "val"  # images/ + masks/: a flat folder
    out2 = tmp_path / "eval2"
    args = ["-q", "evaluate", str(run_dir), "--data", str(flat), "--split", "all"]
    assert main([*args, "--out", str(out2)]) == 0, capsys.readouterr().err
    scored = json.loads((out2 / "eval_all.json").read_text())
    assert scored["images"] == n
    assert scored["mean_iou"] == report["mean_iou"]  # the same pairs either way
    assert main(["-q", "data", "check", str(images), "--masks", str(masks)]) == 0


def test_heatmap_and_export_refuse_outputs_over_inputs(run_dir, tmp_path, capsys):
    image = tmp_path / "in" / "scene.png"
    messy.save(image, messy.image_for(messy.clean_mask(0), 0))
    code = main(["-q", "heatmap", str(image), "--out", str(image.parent), "--epochs", "1"])
    assert code == 2 and "--out" in _err_lines(capsys)[0]
    code = main(["-q", "export", str(run_dir), "--out", str(run_dir / "config.json")])
    assert code == 2 and "--out" in _err_lines(capsys)[0]
    assert json.loads((run_dir / "config.json").read_text())["format"] == "pixelwise-run"
    code = main(["-q", "data", "weights", str(tmp_path / "in"), "--out", str(tmp_path / "in")])
    assert code == 2


def test_label_command_bad_inputs_are_one_line(tmp_path, capsys):
    """``pixelwise label``: a missing folder, a folder without images, duplicate classes."""
    code = main(["label", str(tmp_path / "none"), "--classes", "a,b", "--out", str(tmp_path / "p")])
    assert code == 2 and len(_err_lines(capsys)) == 1
    (tmp_path / "empty").mkdir()
    code = main(
        ["label", str(tmp_path / "empty"), "--classes", "a,b", "--out", str(tmp_path / "p")]
    )
    assert code == 2 and len(_err_lines(capsys)) == 1
    photos = tmp_path / "photos"
    messy.save(photos / "p0.png", messy.image_for(messy.clean_mask(0), 0))
    code = main(["label", str(photos), "--classes", "a,a", "--out", str(tmp_path / "p")])
    err = _err_lines(capsys)
    assert code == 2 and len(err) == 1 and "a" in err[0], err


def test_label_trainer_settings_are_checked_before_anything_is_written(tmp_path, capsys):
    """``--trainer KEY=VALUE``: an unknown key names the options, a bad value names its bound,
    and the project folder is not created."""
    photos = tmp_path / "photos"
    messy.save(photos / "p0.png", messy.image_for(messy.clean_mask(0), 0))
    out = tmp_path / "p"
    for setting, words in (
        ("bogus=1", "rotate90"),
        ("crop=2", "at least 8"),
        ("rotate90=1", "true or false"),
        ("rotate90", "KEY=VALUE"),
        ("model=bogus", "unknown model"),
        ('model_args={"depth": 3, "bogus": 1}', "no argument 'bogus'"),
    ):
        args = ["label", str(photos), "--classes", "a,b", "--out", str(out), "--trainer", setting]
        code = main(args)
        err = _err_lines(capsys)
        assert code == 2 and len(err) == 1 and words in err[0], (setting, err)
        assert not out.exists()


def test_label_trainer_settings_reach_the_trainer(tmp_path, monkeypatch, capsys):
    import pixelwise.label.app as app
    from pixelwise.errors import ConfigError

    seen = {}

    def stop(*_args, options, **_kw):  # record what the page would get, start nothing
        seen["options"] = options
        raise ConfigError("stopped here")

    monkeypatch.setattr(app, "create_label_app", stop)
    photos = tmp_path / "photos"
    messy.save(photos / "p0.png", messy.image_for(messy.clean_mask(0), 0))
    args = ["label", str(photos), "--classes", "a,b", "--out", str(tmp_path / "p")]
    args += ["--threads", "1", "--trainer", "rotate90=true", "--trainer", "pseudo-weight=0.2"]
    assert main(args) == 2 and "stopped here" in _err_lines(capsys)[0]
    options = seen["options"]
    assert options.rotate90 is True and options.pseudo_weight == 0.2 and options.threads == 1
    assert options.crop == app.TrainerOptions().crop  # the rest: the defaults
