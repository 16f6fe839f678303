"""Messy real data (issue 14): JPEG-noisy binary masks, .jpg masks, images larger than their
masks, byte-identical duplicates; detection in the check, thresholds and rounding, the
class-count guard, and 'data fix'. Every case is built as real files in tmp_path."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pixelwise.data.fix as fix_module
from pixelwise.data import check_class_count, open_dataset
from pixelwise.data.check import LOSSY_MASKS, check_dataset
from pixelwise.data.fix import fix_dataset
from pixelwise.data.labelmaps import parse_label_map, parse_label_spec, round_map
from pixelwise.errors import ConfigError, DataError
from tests.data.messy import (
    big_images,
    clean_mask,
    jpeg_noisy,
    noisy_flat,
    save,
    snapshot,
    with_duplicate,
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))


# ---- detection ------------------------------------------------------------------------------


def test_check_names_noisy_masks_in_one_line_with_the_fix(tmp_path):
    root = noisy_flat(tmp_path / "noisy")
    report = check_dataset(root)
    assert not report.ok
    [problem] = report.problems  # one line for the dataset, not one per mask
    assert problem.kind == LOSSY_MASKS and problem.path == str(root / "masks" / "s00.png")
    text = report.relative(problem.path) + ": " + problem.problem
    assert text.startswith(
        "masks/s00.png: values look like a JPEG-compressed or anti-aliased binary mask ("
    )
    assert "distinct values" in text and "near 0 or 255; 12 of 12 masks)" in text
    assert "read them with --mask-threshold 128" in text
    assert f"'pixelwise data fix {root} --out CLEAN'" in text
    assert "\n" not in text
    assert report.to_dict()["problems"][0]["kind"] == LOSSY_MASKS
    assert "problem(s):\n  masks/s00.png: values look like" in report.format()
    assert "more classes" in report.format()  # the 255-class table is cut short


def test_noisy_masks_under_a_class_list_are_one_problem_not_one_per_mask(tmp_path):
    root = noisy_flat(tmp_path / "noisy")
    (root / "classes.txt").write_text("background\nforeground\n")
    report = check_dataset(root)
    assert [p.kind for p in report.problems] == [LOSSY_MASKS]  # no "label values outside"
    assert check_dataset(root, mask_threshold=128).ok


def test_clean_masks_are_not_flagged(tmp_path):
    root = tmp_path / "clean"
    for i in range(6):
        mask = clean_mask(i)
        save(root / "images" / f"{i}.png", np.stack([mask] * 3, axis=2))
        save(root / "masks" / f"{i}.png", mask)
    report = check_dataset(root)
    assert report.ok and report.classes.num_classes == 2


def test_thresholds_and_rounding_read_noisy_masks_as_two_classes(tmp_path):
    root = noisy_flat(tmp_path / "noisy")
    clean = {f"s{i:02d}": (clean_mask(i) >= 128).astype(np.uint8) for i in range(12)}
    for kwargs in (
        {"mask_threshold": 128},
        {"label_map": "threshold:128"},
        {"label_map": "round"},
        {"label_map": "round,0:0,255:1"},
    ):
        ds = open_dataset(root, "train", **kwargs)
        assert ds.classes.num_classes == 2, kwargs
        agree = np.mean([np.mean(s.mask == clean[s.name]) for s in ds])
        assert agree > 0.97, (kwargs, agree)
        assert set(np.unique(ds[0].mask)) <= {0, 1}
        assert any(n.startswith(("--mask-threshold 128:", "--label-map round:")) for n in ds.notes)
        report = check_dataset(root, **kwargs)
        assert report.ok and report.classes.num_classes == 2, kwargs
    ds = open_dataset(root, "val", label_map="round")
    assert (
        "--label-map round: stored mask values rounded to the nearest of 0, 255 "
        "(read as labels 0, 1)" in ds.notes
    )
    assert check_dataset(root, mask_threshold=128).label_map == "threshold:128"


def test_label_spec_syntax():
    assert parse_label_spec("round").round and parse_label_spec("round").entries is None
    spec = parse_label_spec("threshold:100,7:ignore")
    assert spec.threshold == 100 and spec.entries == {7: 255} and spec.text() == spec.text()
    assert parse_label_spec(spec.text()) == spec
    assert parse_label_map("round") is None and parse_label_map("round,255:1") == {255: 1}
    assert round_map([0, 128, 255])[100] == 1 and round_map([0, 128, 255])[200] == 2
    assert round_map([0, 1, 2, 255])[250] == 255  # 0, 1, 2 stay; 255 stays ignore
    with pytest.raises(ConfigError, match="--mask-threshold 0: give a stored value in 1..255"):
        parse_label_spec(None, 0)
    with pytest.raises(ConfigError, match="give one"):
        parse_label_spec("round", 128)
    with pytest.raises(ConfigError, match="threshold"):
        parse_label_spec("threshold:x")


def test_class_count_guard_refuses_noise_unless_forced(tmp_path, digits_folder):
    root = noisy_flat(tmp_path / "noisy")
    ds = open_dataset(root, "train")
    assert ds.classes_inferred and ds.classes.num_classes > 200
    assert any("mask values look like" in n for n in ds.notes)
    with pytest.raises(DataError) as e:
        check_class_count(ds)
    msg = str(e.value)
    assert msg.startswith(f"{root}: {ds.classes.num_classes} classes inferred from the mask values")
    assert "--mask-threshold 128" in msg and "--force-classes" in msg and "\n" not in msg
    check_class_count(ds, force=True)
    check_class_count(open_dataset(root, "train", mask_threshold=128))
    check_class_count(open_dataset(digits_folder, "train"))  # classes.txt: declared, trusted
    (root / "classes.txt").write_text("".join(f"c{i}\n" for i in range(255)))
    check_class_count(open_dataset(root, "train"))  # a list of 255 classes is the user's word


# ---- JPEG masks ---------------------------------------------------------------------------


def test_jpeg_masks_are_found_and_read_with_a_note(tmp_path):
    root = noisy_flat(tmp_path / "jpg", jpeg_masks=True)
    report = check_dataset(root)
    assert not any("without mask" in p.problem for p in report.problems)
    [problem] = report.problems
    assert problem.path.endswith("masks/s00.jpg")
    assert "values look like a JPEG-compressed binary mask" in problem.problem
    note = next(n for n in report.notes if "JPEG files" in n)
    assert note == (
        "12 of 12 masks are JPEG files (e.g. masks/s00.jpg): JPEG changes mask values near "
        f"edges; 'pixelwise data fix {root} --out CLEAN' writes them as PNG"
    )
    ds = open_dataset(root, "train", mask_threshold=128)
    assert ds.classes.num_classes == 2 and len(ds) == 11
    assert not any("JPEG files" in n for n in ds.notes)  # a rule reads them: no warning
    [note] = [n for n in open_dataset(root, "train").notes if "JPEG files" in n]
    assert note.startswith("11 of 11 masks are JPEG files (e.g. masks/s00.jpg), read as they are")
    assert f"run 'pixelwise data check {root}'" in note


def test_png_mask_preferred_over_a_jpg_of_the_same_name(tmp_path):
    root = noisy_flat(tmp_path / "both", n=3, jpeg_masks=True)
    save(root / "masks" / "s01.png", clean_mask(1))
    ds = open_dataset(root, "all", mask_threshold=128)
    assert [p[1].name for p in ds.pairs] == ["s00.jpg", "s01.png", "s02.jpg"]


# ---- sizes, duplicates ----------------------------------------------------------------------


def test_images_larger_than_masks_get_the_way_forward(tmp_path):
    root = big_images(tmp_path / "big")
    report = check_dataset(root)
    assert len(report.problems) == 6
    first = report.problems[0]
    assert first.problem == (
        "image is 96x96 but its mask b0.png is 32x32; same aspect ratio (the image is 3x its "
        f"mask): resize the images to their masks with 'pixelwise data fix {root} --out CLEAN "
        "--resize images' (or the masks with --resize masks)"
    )
    with pytest.raises(DataError, match="same aspect ratio.*--resize images"):
        open_dataset(root, "all")[0]
    for resize, size in (("images", (32, 32)), ("masks", (96, 96))):
        out = tmp_path / f"fixed-{resize}"
        rep = fix_dataset(root, out, resize=resize)
        assert rep.pairs == 6 and not rep.skipped
        ds = open_dataset(out, "all")
        assert ds[0].image.shape[:2] == size == ds[0].mask.shape
        assert check_dataset(out).ok
    with pytest.raises(
        DataError, match=r"no pair could be written \(6 skipped, e.g. images/b0.png"
    ):
        fix_dataset(root, tmp_path / "unfixed", resize=None)
    assert not (tmp_path / "unfixed").exists()


def test_fix_without_resize_skips_mismatched_pairs(tmp_path):
    root = big_images(tmp_path / "big", n=3)
    save(root / "images" / "ok.png", np.zeros((32, 32, 3), np.uint8))
    save(root / "masks" / "ok.png", clean_mask(5))
    rep = fix_dataset(root, tmp_path / "out")
    assert rep.pairs == 1 and len(rep.skipped) == 3
    assert "sizes differ, one aspect ratio (image 96x96, mask 32x32)" in rep.skipped[0].change
    assert "--resize images" in rep.skipped[0].change


# ---- data fix -------------------------------------------------------------------------------


def messy_folder(root: Path) -> Path:
    """Noisy PNG masks, one .jpg mask, one image at 3x its mask, one duplicate image."""
    noisy_flat(root, n=10)
    os.remove(root / "masks" / "s03.png")
    save(root / "masks" / "s03.jpg", clean_mask(3), format="JPEG", quality=70)
    big = np.kron(np.asarray(Image.open(root / "images" / "s04.png")), np.ones((3, 3, 1), np.uint8))
    save(root / "images" / "s04.png", big)
    return with_duplicate(root, "s05", "s05_copy")


def test_fix_writes_a_clean_two_class_copy_and_a_report(tmp_path):
    root = messy_folder(tmp_path / "messy")
    before = snapshot(root)
    out = tmp_path / "clean"
    report = fix_dataset(root, out, resize="images")
    assert snapshot(root) == before  # DIR is never touched
    assert report.mask_values == "binarize (threshold:128)" and report.classes.num_classes == 2
    assert report.pairs == 10 and report.written == {"": 10}
    changes = {c.file: c for c in report.changes}
    assert changes["masks/s03.jpg"].to == "masks/s03.png"
    assert changes["masks/s03.jpg"].change.startswith("JPEG mask written as PNG")
    assert (
        "pixel(s) off the class values set to the nearest class" in changes["masks/s00.png"].change
    )
    assert changes["images/s04.png"].change == "image resized from 96x96 to its mask's 32x32"
    [dropped] = report.dropped
    assert (
        dropped.file == "images/s05_copy.png"
        and "byte-identical to images/s05.png" in dropped.change
    )
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"s{i:02d}.png" for i in range(10)]
    assert (out / "classes.txt").read_text().startswith("# index name R G B")
    saved = json.loads((out / "fix_report.json").read_text())
    assert saved["pairs"] == 10 and saved["dropped"][0]["file"] == "images/s05_copy.png"
    text = (out / "fix_report.txt").read_text()
    assert "images/s04.png -> images/s04.png: image resized from 96x96" in text
    assert check_dataset(out).ok
    ds = open_dataset(out, "train")
    assert ds.classes.num_classes == 2 and set(np.unique(ds[0].mask)) <= {0, 1}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_fix_refuses_out_inside_or_equal_to_the_dataset(tmp_path):
    root = noisy_flat(tmp_path / "d", n=3)
    for bad in (root, root / "clean", root / "images" / "x"):
        with pytest.raises(ConfigError, match="inside the dataset folder"):
            fix_dataset(root, bad)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an empty folder"):
        fix_dataset(root, tmp_path / "full")
    with pytest.raises(ConfigError, match="--resize"):
        fix_dataset(root, tmp_path / "o", resize="both")
    (tmp_path / "empty").mkdir()
    assert fix_dataset(root, tmp_path / "empty").pairs == 3  # an empty folder is fine


def test_a_failing_fix_leaves_no_half_written_output(tmp_path, monkeypatch):
    root = noisy_flat(tmp_path / "d", n=4)
    calls = []

    def failing(path, mask, classes):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(path)

    monkeypatch.setattr(fix_module, "write_mask", failing)
    with pytest.raises(OSError):
        fix_dataset(root, tmp_path / "out")
    assert len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "d"]  # no out, no temp


def test_split_folders_are_fixed_split_by_split(tmp_path):
    for split, n in (("train", 4), ("test", 2)):
        for i in range(n):
            mask = clean_mask(10 * len(split) + i)
            save(tmp_path / "src" / split / "images" / f"{split}{i}.png", np.stack([mask] * 3, 2))
            save(tmp_path / "src" / split / "masks" / f"{split}{i}.png", jpeg_noisy(mask))
    report = fix_dataset(tmp_path / "src", tmp_path / "out")
    assert report.written == {"train": 4, "test": 2}
    assert open_dataset(tmp_path / "out", "test").names == ["test0", "test1"]
    assert check_dataset(tmp_path / "out").ok


# ---- the point of it all ----------------------------------------------------------------------


@pytest.mark.slow
def test_after_the_fix_a_tiny_training_run_learns_two_classes(tmp_path):
    from pixelwise.training import TrainConfig, train

    root = noisy_flat(tmp_path / "noisy", n=10)
    fix_dataset(root, tmp_path / "clean")
    ds = open_dataset(tmp_path / "clean", "train")
    assert ds.classes.num_classes == 2 and ds.classes_inferred is not None
    check_class_count(ds)
    summary = train(
        TrainConfig(
            data=str(tmp_path / "clean"),
            out=str(tmp_path / "run"),
            model="unet_same",
            width=0.125,
            epochs=1,
            batch_size=4,
            crop_size=32,
            val_fraction=0.2,
            device="cpu",
            overlays=0,
        )
    )
    assert summary["best_epoch"] == 1
    with open(tmp_path / "run" / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    assert "val_iou_1" in row and "val_iou_2" not in row  # a 2-class model
    assert np.isfinite(float(row["train_loss"]))
    assert float(row["val_iou_1"]) > 0  # the foreground class is predicted, and right somewhere


def test_a_jpeg_gray_palette_is_detected_and_rounded_to_three_classes(tmp_path):
    from tests.data.test_maskvalues import regions

    root = tmp_path / "palette"
    for i in range(4):
        mask = jpeg_noisy(np.roll(regions([0, 128, 255]), 7 * i, axis=0), 75)
        save(root / "images" / f"{i}.png", np.stack([mask] * 3, axis=2))
        save(root / "masks" / f"{i}.png", mask)
    [problem] = check_dataset(root).problems
    assert "a JPEG-compressed or anti-aliased mask of 3 values" in problem.problem
    assert "near 0, 128, 255" in problem.problem and "--label-map round" in problem.problem
    ds = open_dataset(root, "all", label_map="round")
    assert ds.classes.num_classes == 3 and set(np.unique(ds[0].mask)) == {0, 1, 2}
    assert check_dataset(root, label_map="round").ok
    report = fix_dataset(root, tmp_path / "out")
    assert report.mask_values == "round" and report.classes.num_classes == 3


def test_fix_copies_other_layouts_split_by_split_each_pair_once(tmp_path):
    from tests.data.test_layouts import make_drive, make_voc

    voc = fix_dataset(make_voc(tmp_path / "voc"), tmp_path / "voc-clean")
    assert voc.written == {"train": 6, "val": 2} and not voc.dropped  # trainval not repeated
    assert voc.classes.num_classes == 21 and check_dataset(tmp_path / "voc-clean").ok
    drive = fix_dataset(make_drive(tmp_path / "drive"), tmp_path / "drive-clean")
    assert drive.written == {"train": 3, "val": 1, "test": 2}
    assert any("pixels outside training/mask/" in c.change for c in drive.changes)
    sample = open_dataset(tmp_path / "drive-clean", "test")[0]
    assert 255 in np.unique(sample.mask)  # outside the field of view: ignore, written in


def test_fix_skips_unpaired_and_unreadable_files_and_says_so(tmp_path):
    root = noisy_flat(tmp_path / "d", n=4)
    save(root / "images" / "lonely.png", np.zeros((32, 32, 3), np.uint8))
    (root / "images" / "broken.png").write_bytes(b"not a png")
    save(root / "masks" / "broken.png", clean_mask(0))
    report = fix_dataset(root, tmp_path / "out")
    assert report.pairs == 4 and report.classes.num_classes == 2
    skipped = {c.file: c.change for c in report.skipped}
    assert skipped["images/lonely.png"] == "image without mask (none in masks/)"
    assert skipped["images/broken.png"].startswith("pair skipped: cannot identify image file")
    assert check_dataset(tmp_path / "out").ok


def test_fix_an_images_folder_with_a_masks_folder(tmp_path):
    noisy_flat(tmp_path / "d", n=3)
    report = fix_dataset(
        tmp_path / "d" / "images", tmp_path / "out", masks=tmp_path / "d" / "masks"
    )
    assert report.layout == "paired" and report.pairs == 3
    assert report.mask_values == "binarize (threshold:128)"
    with pytest.raises(ConfigError, match="inside the dataset folder"):
        fix_dataset(
            tmp_path / "d" / "images",
            tmp_path / "d" / "masks" / "o",
            masks=tmp_path / "d" / "masks",
        )
    with pytest.raises(ConfigError, match="--mask-values 'x': choose one of auto, binarize"):
        fix_dataset(tmp_path / "d", tmp_path / "o2", mask_values="x")
