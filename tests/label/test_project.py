"""The project folder: a dataset in the generic layout, strokes, undo, locking, bad inputs."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from pixelwise.data import open_dataset
from pixelwise.data.check import check_dataset
from pixelwise.data.classes import ClassInfo
from pixelwise.data.io import read_mask
from pixelwise.errors import ConfigError, DataError
from pixelwise.label.project import (
    ERASE,
    LabelError,
    Project,
    Stroke,
    parse_classes,
    random_unlabelled,
    stroke_footprint,
)

from .conftest import write_images

CLASSES = "background,cell,edge"


def disc(x, y, r, value):
    return Stroke(value, float(r), ((float(x), float(y)),))


def test_new_project_is_a_dataset_with_all_unlabelled_masks(images, tmp_path):
    root = tmp_path / "proj"
    project = Project.open(images, CLASSES, root)
    try:
        assert sorted(p.name for p in (root / "images").iterdir()) == [
            "img0.png",
            "img1.png",
            "img2.png",
        ]
        assert (root / "images" / "img0.png").stat().st_ino == (images / "img0.png").stat().st_ino
        info = ClassInfo.from_file(root / "classes.txt")
        assert info.names == ("background", "cell", "edge")
        assert (root / "classes.txt").read_text().splitlines()[2].startswith("background ")
        for stem in ("img0", "img1", "img2"):
            mask = read_mask(root / "masks" / f"{stem}.png")
            assert mask.shape == (40, 56) and (mask == ERASE).all()
        assert project.counts() == {"images": 3, "labelled": 0, "unlabelled": 3}
        project.apply("img0", [disc(10, 10, 3, 1), disc(30, 20, 2, 2)])
        project.apply("img1", [disc(5, 5, 4, 0)])
        report = check_dataset(root)
        assert report.ok, report.summary()
        ds = open_dataset(root, "train")
        assert ds.classes.names == info.names
        sample = ds[0]
        assert set(np.unique(sample.mask)) <= {0, 1, 2, ERASE}
    finally:
        project.close()


def test_a_stroke_is_saved_exactly_and_undo_restores(images, tmp_path):
    root = tmp_path / "proj"
    project = Project.open(images, CLASSES, root)
    try:
        stroke = Stroke(1, 2.5, ((5.0, 5.0), (20.0, 12.0)))
        out = project.apply("img0", [stroke])
        assert out["version"] == 1 and len(out["ids"]) == 1 and out["changed"]
        (top, left, bottom, right), hit = stroke_footprint(stroke.points, 2.5, 40, 56)
        expected = np.full((40, 56), ERASE, np.uint8)
        expected[top:bottom, left:right][hit] = 1
        saved = np.asarray(Image.open(root / "masks" / "img0.png"))
        np.testing.assert_array_equal(saved, expected)
        assert out["labelled"] == int(hit.sum())
        # the pixel centres within 2.5 of the segment, checked directly for a few pixels
        assert saved[5, 5] == 1 and saved[8, 12] == 1 and saved[0, 0] == ERASE
        assert saved[5, 10] == 1 and saved[1, 10] == ERASE
        # a second stroke over part of it, then undo the first: the second's pixels stay
        second = project.apply("img0", [disc(5, 5, 3, 2)])
        project.undo("img0", out["ids"][0])
        now = np.asarray(Image.open(root / "masks" / "img0.png"))
        footprint2 = np.zeros((40, 56), bool)
        (t, lft, b, r), h2 = stroke_footprint(((5.0, 5.0),), 3, 40, 56)
        footprint2[t:b, lft:r] = h2
        np.testing.assert_array_equal(now, np.where(footprint2, 2, ERASE))
        project.undo("img0", second["ids"][0])
        assert (np.asarray(Image.open(root / "masks" / "img0.png")) == ERASE).all()
        assert project.entries["img0"].labelled == 0
    finally:
        project.close()


def test_eraser_and_strokes_outside_the_image(images, tmp_path):
    project = Project.open(images, CLASSES, tmp_path / "proj")
    try:
        project.apply("img0", [disc(10, 10, 5, 1)])
        out = project.apply("img0", [disc(10, 10, 2, ERASE), disc(-50, -50, 3, 1)])
        assert len(out["ids"]) == 2
        mask = project.mask("img0")
        assert mask[9, 9] == ERASE and mask[10, 14] == 1
    finally:
        project.close()


def test_reopen_keeps_masks_adds_new_images_and_checks_classes(images, tmp_path):
    root = tmp_path / "proj"
    project = Project.open(images, CLASSES, root)
    project.apply("img2", [disc(12, 12, 4, 2)])
    before = project.mask("img2")
    project.close()
    write_images(tmp_path / "more", n=1)
    (tmp_path / "more" / "img0.png").rename(images / "new.png")
    again = Project.open(images, None, root)  # classes from classes.txt
    try:
        np.testing.assert_array_equal(again.mask("img2"), before)
        assert again.entries["img2"].labelled == int((before != ERASE).sum())
        assert "new" in again.entries and (again.mask("new") == ERASE).all()
    finally:
        again.close()
    with pytest.raises(ConfigError, match=r"has the classes background,cell,edge"):
        Project.open(images, "background,horse", root)


def test_a_second_server_on_one_project_is_refused(images, tmp_path):
    root = tmp_path / "proj"
    first = Project.open(images, CLASSES, root)
    try:
        with pytest.raises(ConfigError, match=r"another 'pixelwise label'"):
            Project.open(images, CLASSES, root)
    finally:
        first.close()
    Project.open(images, CLASSES, root).close()


@pytest.mark.parametrize(
    "classes, message",
    [
        ("a,b,a", r"duplicate class names a"),
        (",".join(f"c{i}" for i in range(256)), r"256 classes.*at most 255"),
        ("a,,b", r"empty class name"),
        ("only", r"at least 2 classes"),
        ("a,b#c", r"cannot be written"),
        ("a,3 horses", r"cannot be written"),
    ],
)
def test_bad_class_lists(classes, message):
    with pytest.raises(ConfigError, match=message):
        parse_classes(classes)


def test_digit_names_round_trip(images, tmp_path):
    names = ["background", *map(str, range(10)), "big cell"]
    Project.open(images, names, tmp_path / "proj").close()
    assert ClassInfo.from_file(tmp_path / "proj" / "classes.txt").names == tuple(names)
    Project.open(images, ",".join(names), tmp_path / "proj").close()


def test_bad_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"no readable images"):
        Project.open(empty, CLASSES, tmp_path / "p1")
    with pytest.raises(ConfigError, match=r"no such folder"):
        Project.open(tmp_path / "missing", CLASSES, tmp_path / "p2")
    images = write_images(tmp_path / "in", n=1)
    with pytest.raises(ConfigError, match=r"--out"):
        Project.open(images, CLASSES, images)
    other = tmp_path / "other"
    other.mkdir()
    (other / "thing.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"not a labeling project"):
        Project.open(images, CLASSES, other)


def test_unreadable_images_are_listed_and_skipped(images, tmp_path):
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (images / "empty.jpg").write_bytes(b"")
    project = Project.open(images, CLASSES, tmp_path / "proj")
    try:
        files = {s["file"]: s["reason"] for s in project.skipped}
        assert set(files) == {"broken.png", "empty.jpg"}
        assert "empty file" in files["empty.jpg"]
        assert sorted(project.entries) == ["img0", "img1", "img2"]
        assert check_dataset(tmp_path / "proj").ok
    finally:
        project.close()
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"no readable images.*x.png"):
        Project.open(only_bad, CLASSES, tmp_path / "p3")


def test_a_corrupt_mask_is_named_and_never_overwritten(images, tmp_path):
    root = tmp_path / "proj"
    Project.open(images, CLASSES, root).close()
    bad = root / "masks" / "img1.png"
    bad.write_bytes(b"garbage, not a png")
    wrong_size = root / "masks" / "img2.png"
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(wrong_size)
    logs = []
    project = Project.open(images, CLASSES, root, log=logs.append)
    try:
        assert "img1.png" in project.entries["img1"].error
        assert "5x5" in project.entries["img2"].error
        assert any("img1.png" in line and "not overwritten" in line for line in logs)
        with pytest.raises(LabelError) as err:
            project.apply("img1", [disc(3, 3, 2, 1)])
        assert err.value.status == 409 and "img1.png" in err.value.message
        assert bad.read_bytes() == b"garbage, not a png"
        project.apply("img0", [disc(3, 3, 2, 1)])  # the others still work
    finally:
        project.close()


def test_strokes_on_a_vanished_or_unknown_image(images, tmp_path):
    root = tmp_path / "proj"
    project = Project.open(images, CLASSES, root)
    try:
        (root / "images" / "img1.png").unlink()
        with pytest.raises(LabelError) as gone:
            project.apply("img1", [disc(3, 3, 2, 1)])
        assert gone.value.status == 410 and "no longer exists" in gone.value.message
        with pytest.raises(LabelError) as unknown:
            project.apply("nothere", [disc(3, 3, 2, 1)])
        assert unknown.value.status == 404
    finally:
        project.close()


def test_bad_strokes_are_refused():
    for data, message in [
        ({"class": 3, "radius": 2, "points": [[1, 1]]}, r"0..2 or 255"),
        ({"class": 1, "radius": 0, "points": [[1, 1]]}, r"radius"),
        ({"class": 1, "radius": 2, "points": []}, r"points"),
        ({"class": 1, "radius": 2, "points": [[1, float("nan")]]}, r"finite"),
        ({"class": True, "radius": 2, "points": [[1, 1]]}, r"integer"),
        ([1, 2], r"object"),
    ]:
        with pytest.raises(LabelError, match=message):
            Stroke.from_json(data, 3)


def test_concurrent_strokes_on_one_image_all_survive(images, tmp_path):
    project = Project.open(images, CLASSES, tmp_path / "proj")
    try:
        centres = [(4 + 8 * (i % 6), 4 + 8 * (i // 6)) for i in range(24)]

        def draw(part):
            for x, y in part:
                project.apply("img0", [disc(x, y, 2, 1 + (x // 8) % 2)])

        threads = [threading.Thread(target=draw, args=(centres[k::4],)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        saved = read_mask(tmp_path / "proj" / "masks" / "img0.png")
        for x, y in centres:
            assert saved[y, x] == 1 + (x // 8) % 2
        assert project.entries["img0"].version == len(centres)
    finally:
        project.close()


def test_random_unlabelled_points_are_uniform_over_the_unlabelled_pixels():
    mask = np.full((60, 80), ERASE, np.uint8)
    mask[:, :40] = 1  # the left half labelled
    points = random_unlabelled(mask, 400, seed=3)
    assert len(points) == len(set(points)) == 400
    xs = np.array([x for _, x in points])
    assert xs.min() >= 40 and all(mask[y, x] == ERASE for y, x in points)
    # uniform over the right half: each quarter of it gets about a quarter of the points
    quarters = np.bincount((xs - 40) // 10, minlength=4)
    assert quarters.min() > 70, quarters
    assert random_unlabelled(mask, 400, seed=3) == points  # a seed is one sequence
    assert random_unlabelled(mask, 400, seed=4) != points
    mask[:] = 0
    mask[5, 7] = ERASE  # nearly all labelled: the one pixel left, and no more
    assert random_unlabelled(mask, 3, seed=0) == [(5, 7)]
