"""A corpus of bad inputs through the CLI: each one is refused with exit status 2 and exactly one
line on stderr naming the file or option (no traceback), and leaves no partial output behind.

Decisions recorded here:

- Image modes: CMYK JPEG, 16-bit ``I;16`` PNG, ``LA`` PNG and float ``F`` TIFF images are all
  decoded (CMYK -> RGB, 16-bit scaled by 1/257, alpha dropped, float clipped to [0, 1] x 255);
  a CMYK mask is refused (masks must be index images).
- ``predict`` over several files stops at the first bad one: the files before it have complete
  outputs, nothing is written for the bad file or for the files after it.
- A failed ``train`` leaves no run directory (the data are checked before it is created, and a
  bad file met later, with ``--no-check``, removes the uncommitted run directory).
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pixelwise.cli import main
from pixelwise.data.io import read_image, read_mask, set_max_image_pixels
from pixelwise.errors import DataError

TRAIN = ["--model", "unet_same", "--width", "0.125", "--epochs", "1", "--crop-size", "32"]


def _fails(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture(autouse=True)
def _default_pixel_limit():
    before = Image.MAX_IMAGE_PIXELS
    yield
    set_max_image_pixels(before)  # --max-image-pixels changes a process-wide setting


def _png_bytes(shape=(40, 50, 3), seed=0) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


BAD_FILES = {
    "truncated.png": (lambda: _png_bytes()[:300], "truncated or corrupt image data"),
    "zero.png": (lambda: b"", "empty file (0 bytes)"),
    "text.png": (lambda: b"not an image at all", "cannot identify image file"),
    "html.jpg": (lambda: b"<html><body>404</body></html>", "cannot identify image file"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_predict_bad_image_files(run_dir, tmp_path, capsys, name):
    make, needle = BAD_FILES[name]
    (tmp_path / name).write_bytes(make())
    out = tmp_path / "out"
    _fails(capsys, ["predict", str(run_dir), str(tmp_path / name), "--out", str(out)], name, needle)
    assert not out.exists() or not any(out.iterdir())


def test_predict_stops_at_the_first_bad_file_leaving_whole_outputs(run_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png_bytes(seed=1))
    (folder / "b.png").write_bytes(_png_bytes()[:200])
    (folder / "c.png").write_bytes(_png_bytes(seed=2))
    out = tmp_path / "out"
    _fails(capsys, ["-q", "predict", str(run_dir), str(folder), "--out", str(out)], "b.png")
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_overlay.png"]
    assert Image.open(out / "a.png").size == (50, 40)  # complete, readable
    assert not list(out.glob(".*")), "temporary files left behind"


def test_decompression_bomb_guard_and_its_override(run_dir, tmp_path, capsys):
    (tmp_path / "big.png").write_bytes(_png_bytes((100, 100, 3)))
    argv = ["-q", "predict", str(run_dir), str(tmp_path / "big.png"), "--out", str(tmp_path / "o")]
    _fails(
        capsys,
        [*argv, "--max-image-pixels", "5000"],
        "big.png",
        "10,000 pixels, over the limit of 5,000",
        "--max-image-pixels",
    )
    assert not (tmp_path / "o").exists()
    assert main([*argv, "--max-image-pixels", "10000"]) == 0
    assert (tmp_path / "o" / "big.png").is_file()
    assert main([*argv, "--max-image-pixels", "0"]) == 0  # 0: no limit


def test_bomb_guard_applies_to_evaluate_and_train(run_dir, digits_folder, tmp_path, capsys):
    # the digits scenes are 40..72 pixels a side: a 1000-pixel limit refuses them
    _fails(
        capsys,
        [
            "-q",
            "evaluate",
            str(run_dir),
            "--data",
            str(digits_folder),
            "--max-image-pixels",
            "1000",
        ],
        "over the limit of 1,000",
    )
    _fails(
        capsys,
        ["-q", "train", "--data", str(digits_folder), *TRAIN, "--out", str(tmp_path / "r"),
         "--max-image-pixels", "1000"],
        "over the limit of 1,000",
    )  # fmt: skip
    assert not (tmp_path / "r").exists()


def _save_mode(path: Path, mode: str) -> None:
    rng = np.random.default_rng(0)
    if mode == "CMYK":
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).convert("CMYK").save(
            path, format="JPEG"
        )
    elif mode == "I;16":
        Image.fromarray(rng.integers(0, 65535, (30, 40), dtype=np.uint16)).save(path)
    elif mode == "LA":
        Image.fromarray(rng.integers(0, 255, (30, 40, 2), dtype=np.uint8), mode="LA").save(path)
    elif mode == "F":
        Image.fromarray(rng.random((30, 40), dtype=np.float32)).save(path)
    assert Image.open(path).mode == mode


@pytest.mark.parametrize(
    ("name", "mode"), [("c.jpg", "CMYK"), ("s.png", "I;16"), ("la.png", "LA"), ("f.tif", "F")]
)
def test_unusual_image_modes_are_decoded(run_dir, tmp_path, name, mode):
    _save_mode(tmp_path / name, mode)
    out = tmp_path / "out"  # beside the input, never over it (s.png would be overwritten)
    argv = ["-q", "predict", str(run_dir), str(tmp_path / name), "--out", str(out)]
    assert main([*argv, "--engine", "torch"]) == 0  # auto would write into the shared run
    stem = Path(name).stem
    assert Image.open(out / f"{stem}.png").size == (40, 30)
    image = read_image(tmp_path / name)
    assert image.dtype == np.uint8 and image.shape[:2] == (30, 40)


def test_empty_folder_and_missing_file(run_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = str(tmp_path / "o")
    _fails(capsys, ["predict", str(run_dir), str(tmp_path / "empty"), "--out", out], "empty")
    _fails(capsys, ["predict", str(run_dir), str(tmp_path / "nope.png"), "--out", out], "nope.png")
    _fails(
        capsys,
        ["-q", "train", "--data", str(tmp_path / "empty"), "--out", out],
        "empty",
        "no known dataset layout",
    )
    assert not (tmp_path / "o").exists()


# --- bad training data ------------------------------------------------------------------------


def _first_pair(root: Path) -> tuple[Path, Path]:
    image = sorted((root / "train" / "images").iterdir())[0]
    return image, root / "train" / "masks" / f"{image.stem}.png"


def _smaller_mask(image: Path, mask: Path) -> None:
    m = Image.open(mask)
    m.crop((0, 0, m.width - 3, m.height)).save(mask)


def _label_42(image: Path, mask: Path) -> None:
    m = Image.open(mask)
    a = np.array(m)
    a[0, 0] = 42
    out = Image.fromarray(a, "P")
    out.putpalette(m.getpalette())
    out.save(mask)


def _cmyk_mask(image: Path, mask: Path) -> None:
    Image.open(mask).convert("RGB").convert("CMYK").save(mask.with_suffix(".tif"))
    mask.unlink()


DATA_DAMAGE = {
    "truncated image": (lambda i, m: i.write_bytes(i.read_bytes()[:100]), "truncated"),
    "zero-byte image": (lambda i, m: i.write_bytes(b""), "empty file (0 bytes)"),
    "non-image": (lambda i, m: i.write_text("hello"), "cannot identify image file"),
    "mask wrong size": (_smaller_mask, "but its mask"),
    "label out of range": (_label_42, "label value 42 outside the 11 classes"),
    "CMYK mask": (_cmyk_mask, "unsupported mask mode CMYK"),
    "missing mask": (lambda i, m: m.unlink(), "without mask"),
}


@pytest.mark.parametrize("case", sorted(DATA_DAMAGE))
def test_bad_training_data(digits_folder, tmp_path, capsys, case):
    damage, needle = DATA_DAMAGE[case]
    data = tmp_path / "data"
    shutil.copytree(digits_folder, data)
    image, mask = _first_pair(data)
    damage(image, mask)
    out = tmp_path / "run"
    argv = ["-q", "train", "--data", str(data), *TRAIN, "--out", str(out)]
    _fails(capsys, argv, image.stem, needle)
    assert not out.exists()


@pytest.mark.parametrize("case", ["truncated image", "label out of range"])
def test_bad_training_data_met_during_training(digits_folder, tmp_path, capsys, case):
    """With the up-front check off, the bad file stops training at its batch: one line, and
    the uncommitted run directory is removed."""
    damage, needle = DATA_DAMAGE[case]
    data = tmp_path / "data"
    shutil.copytree(digits_folder, data)
    damage(*_first_pair(data))
    out = tmp_path / "run"
    argv = ["-q", "train", "--data", str(data), *TRAIN, "--out", str(out), "--no-check"]
    _fails(capsys, argv, needle)
    assert not out.exists()


def test_evaluate_bad_data(run_dir, digits_folder, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(digits_folder, data)
    _label_42(*_first_pair(data))
    out = tmp_path / "ev"
    _fails(
        capsys,
        [
            "-q",
            "evaluate",
            str(run_dir),
            "--data",
            str(data),
            "--split",
            "train",
            "--out",
            str(out),
        ],
        "digits_train",
        "label value 42",
    )
    assert not out.exists()


def test_empty_train_split(digits_folder, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(digits_folder, data)
    for sub in ("images", "masks"):
        for p in (data / "train" / sub).iterdir():
            p.unlink()
    _fails(
        capsys, ["-q", "train", "--data", str(data), *TRAIN, "--out", str(tmp_path / "r")], "train"
    )
    assert not (tmp_path / "r").exists()


# --- bad run directories ----------------------------------------------------------------------


def _run_copy(run_dir: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    return run


def _drop_weights(run: Path) -> None:
    for name in ("best.safetensors", "last.safetensors"):
        (run / name).unlink()


def _newer(run: Path) -> None:
    config = json.loads((run / "config.json").read_text())
    config["version"] = 99
    (run / "config.json").write_text(json.dumps(config))


def _truncate_best(run: Path) -> None:
    data = (run / "best.safetensors").read_bytes()
    (run / "best.safetensors").unlink()  # a hard link to the committed checkpoint: break it
    (run / "best.safetensors").write_bytes(data[: len(data) // 2])


RUN_DAMAGE = {
    "missing config.json": (lambda r: (r / "config.json").unlink(), "config.json is missing"),
    "missing weights": (_drop_weights, "last.safetensors: checkpoint file is missing"),
    "newer run format": (_newer, "run format 99 is newer than this pixelwise"),
    "truncated safetensors": (_truncate_best, "best.safetensors: not a readable safetensors"),
}


@pytest.mark.parametrize("case", sorted(RUN_DAMAGE))
def test_bad_run_directories(run_dir, digits_folder, tmp_path, capsys, case):
    damage, needle = RUN_DAMAGE[case]
    run = _run_copy(run_dir, tmp_path)
    damage(run)
    image = tmp_path / "x.png"
    image.write_bytes(_png_bytes())
    _fails(capsys, ["predict", str(run), str(image), "--out", str(tmp_path / "o")], needle)
    _fails(capsys, ["-q", "evaluate", str(run), "--data", str(digits_folder)], needle)
    assert not (tmp_path / "o").exists()
    assert not (run / "eval_val.json").exists()


# --- nonsense options -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--epochs", "0", "--epochs: must be at least 1"),
        ("--lr", "nan", "--lr: must be positive, got nan"),
        ("--lr", "-1", "--lr: must be positive"),
        ("--batch-size", "0", "--batch-size: must be at least 1"),
        ("--width", "0", "--width: must be in (0, 4]"),
        ("--crop-size", "3", "--crop-size: must be at least 8"),
        ("--threads", "0", "--threads: must be at least 1"),
        ("--save-every", "-1", "--save-every: must be >= 0"),
        ("--max-image-pixels", "-5", "--max-image-pixels: must be >= 0"),
        ("--model", "fcn9s", "did you mean 'fcn8s'"),
        ("--model", "unet-same", "did you mean 'unet_same'"),
        ("--data-arg", "limit", "--data-arg 'limit': expected KEY=VALUE, e.g. limit=N"),
        ("--model-arg", "=3", "--model-arg '=3': expected KEY=VALUE, e.g. depth=3"),
        ("--class-weights", "1,x", "--class-weights '1,x': give 'none', 'auto' or"),
        ("--class-weights", "2,nan", "--class-weights: must be non-negative numbers"),
    ],
)
def test_nonsense_training_options(tmp_path, capsys, option, value, needle):
    _fails(capsys, ["-q", "train", option, value, "--out", str(tmp_path / "r")], needle)
    assert not (tmp_path / "r").exists()


def test_nonsense_predict_options(run_dir, tmp_path, capsys):
    image = tmp_path / "x.png"
    image.write_bytes(_png_bytes())
    out = str(tmp_path / "o")
    _fails(capsys, ["predict", str(run_dir), str(image), "--out", out, "--alpha", "2"], "--alpha")
    _fails(capsys, ["predict", str(run_dir), str(image), "--out", out, "--shard", "1/1"], "--shard")
    assert not (tmp_path / "o").exists()


# --- fuzz: the readers raise DataError and nothing else ---------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _ihdr(width: int, height: int, mode_byte: int) -> bytes:
    body = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, mode_byte, 0, 0, 0])
    crc = zlib.crc32(b"IHDR" + body).to_bytes(4, "big")
    return len(body).to_bytes(4, "big") + b"IHDR" + body + crc


def _only_data_errors(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.png"
        path.write_bytes(content)
        for reader in (read_image, read_mask):
            try:
                reader(path)
            except DataError as err:
                assert str(err).startswith(str(path)), err
                assert "\n" not in str(err)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_data_errors(content):
    _only_data_errors(content)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 64),
    st.integers(1, 64),
    st.sampled_from([0, 2, 3, 4, 6, 9]),
    st.binary(max_size=300),
)
def test_png_header_then_random_bytes_raise_only_data_errors(width, height, mode, tail):
    _only_data_errors(PNG_SIGNATURE + _ihdr(width, height, mode) + tail)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2000), st.binary(min_size=1, max_size=64))
def test_damaged_valid_png_raises_only_data_errors(cut, junk):
    good = _png_bytes((12, 10, 3))
    cut = min(cut, len(good) - 1)
    _only_data_errors(good[:cut] + junk + good[cut + len(junk) :])
