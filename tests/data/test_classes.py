import json

import pytest

from pixelwise.data.classes import ClassInfo, default_palette
from pixelwise.errors import ConfigError, DataError

CAMVID = """\
# CamVid, 11 classes
0 Sky 128 128 128
1 Building 128 0 0
2 Pole 192 192 128
3 Road 128 64 128
4 Pavement 60 40 222
5 Tree 128 128 0
6 SignSymbol 192 128 128
7 Fence 64 64 128
8 Car 64 0 128
9 Pedestrian 64 64 0
10 Bicyclist 0 128 192
11 Unlabelled 0 0 0
"""


def test_default_palette_is_vocs():
    p = default_palette(256)
    assert p[:6] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128)]
    assert p[255] == (224, 224, 192)
    assert len(set(p)) == 256


def test_palette_layout():
    c = ClassInfo(("a", "b"), ((1, 2, 3), (4, 5, 6)))
    pal = c.palette()
    assert len(pal) == 768
    assert pal[:6] == [1, 2, 3, 4, 5, 6]
    assert pal[3 * 255 :] == [224, 224, 192]
    assert set(pal[6 : 3 * 255]) == {0}
    assert c.num_classes == 2


def test_default():
    c = ClassInfo.default(3)
    assert c.names == ("class_0", "class_1", "class_2")
    assert c.colors == tuple(default_palette(3))
    assert c.ignore_index == 255


def test_dict_round_trip_through_json():
    c = ClassInfo(
        ("bg", "cat"), ((0, 0, 0), (10, 20, 30)), ignore_index=200, ignore_color=(9, 9, 9)
    )
    d = json.loads(json.dumps(c.to_dict()))
    assert ClassInfo.from_dict(d) == c
    plain = ClassInfo.default(4)
    assert ClassInfo.from_dict(json.loads(json.dumps(plain.to_dict()))) == plain


@pytest.mark.parametrize(
    "d",
    [
        [],
        {"colors": [[0, 0, 0]]},
        {"names": "ab"},
        {"names": ["a", "b"], "colors": [[0, 0, 0]]},
        {"names": ["a"], "colors": [[0, 0, 300]]},
        {"names": ["a"], "colors": [[0, 0]]},
        {"names": ["a"], "colors": [["0", 0, 0]]},
        {"names": ["a", "a"], "colors": [[0, 0, 0], [1, 1, 1]]},
        {"names": [""], "colors": [[0, 0, 0]]},
        {"names": ["a"], "colors": [[0, 0, 0]], "ignore_index": 0},
        {"names": ["a"], "colors": [[0, 0, 0]], "ignore_index": 256},
        {"names": ["a"], "colors": [[0, 0, 0]], "ignore_index": "255"},
        {"names": ["a"], "colors": [[0, 0, 0]], "extra": 1},
        {"names": []},
    ],
)
def test_from_dict_rejects(d):
    with pytest.raises(ConfigError):
        ClassInfo.from_dict(d)


def test_from_file_forms(tmp_path):
    p = tmp_path / "classes.txt"
    p.write_text("# comment\n\nbackground\nroad 128 64 128  # trailing comment\ntraffic light\n")
    c = ClassInfo.from_file(p)
    assert c.names == ("background", "road", "traffic light")
    assert c.colors == (default_palette(3)[0], (128, 64, 128), default_palette(3)[2])


def test_from_file_camvid_skips_unlabelled(tmp_path):
    p = tmp_path / "classes.txt"
    p.write_text(CAMVID)
    c = ClassInfo.from_file(p)
    assert c.num_classes == 11 and c.names[0] == "Sky" and c.names[-1] == "Bicyclist"
    assert c.colors[3] == (128, 64, 128)
    assert c.ignore_index == 255 and c.ignore_color == (0, 0, 0)
    c11 = ClassInfo.from_file(p, ignore_index=11)
    assert c11.num_classes == 11 and c11.ignore_index == 11


def test_from_file_digit_names_and_round_trip(tmp_path):
    c = ClassInfo(
        ("background", "0", "1"), ((0, 0, 0), (1, 2, 3), (4, 5, 6)), ignore_color=(7, 7, 7)
    )
    p = tmp_path / "classes.txt"
    p.write_text(c.to_text())
    assert ClassInfo.from_file(p) == c
    p.write_text("0 1 2 3\n")  # name "0" with a colour
    assert ClassInfo.from_file(p).names == ("0",)


@pytest.mark.parametrize(
    "text, line",
    [
        ("0 a 1 2 3\n1 b 4 5 6\n3 c 7 8 9\n", 3),
        ("a\nb 1 2 300\n", 2),
        ("Sky 128 128\n", 1),
        ("a\n\n# x\na\n", 4),
    ],
)
def test_from_file_malformed_names_line(tmp_path, text, line):
    p = tmp_path / "classes.txt"
    p.write_text(text)
    with pytest.raises(DataError, match=rf"classes\.txt: line {line}:"):
        ClassInfo.from_file(p)


def test_from_file_empty_and_missing(tmp_path):
    p = tmp_path / "classes.txt"
    p.write_text("# nothing\n")
    with pytest.raises(DataError, match="classes.txt: no classes"):
        ClassInfo.from_file(p)
    with pytest.raises(DataError, match="nope.txt: no such file"):
        ClassInfo.from_file(tmp_path / "nope.txt")


def test_void_class_that_is_not_trailing_is_a_class(tmp_path):
    p = tmp_path / "classes.txt"
    p.write_text("0 unlabeled 0 0 0\n1 road 128 64 128\n2 void 1 1 1\n")
    c = ClassInfo.from_file(p)
    assert c.names == ("unlabeled", "road") and c.ignore_color == (1, 1, 1)


def test_an_ignore_line_in_classes_txt_keeps_255_as_ignore(tmp_path):
    """0/255 masks of a 2-class folder are read as binary (255 -> class 1) unless classes.txt
    says what 255 is: a labeling project where only background has been drawn yet."""
    import numpy as np
    from PIL import Image

    from pixelwise.data import open_dataset

    for i in range(3):
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
        mask = np.full((8, 8), 255, np.uint8)
        mask[:2] = 0  # background drawn, the rest unlabelled
        Image.fromarray(mask).save(tmp_path / "masks" / f"{i}.png")
    (tmp_path / "classes.txt").write_text("background 0 0 0\nhorse 200 0 0\n")
    guessed = open_dataset(tmp_path, "all")
    assert (guessed[0].mask == 1).sum() == 48  # the documented binary guess
    (tmp_path / "classes.txt").write_text("background 0 0 0\nhorse 200 0 0\n255 unlabelled 9 9 9\n")
    declared = open_dataset(tmp_path, "all")
    assert (declared[0].mask == 1).sum() == 0 and (declared[0].mask == 255).sum() == 48
