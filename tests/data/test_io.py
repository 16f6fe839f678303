import io

import numpy as np
import pytest
from PIL import Image

from pixelwise.data.classes import ClassInfo
from pixelwise.data.io import (
    decode_image,
    image_channels,
    read_image,
    read_mask,
    set_max_image_pixels,
    write_image,
    write_mask,
)
from pixelwise.errors import ConfigError, DataError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (12, 10), dtype=np.uint8)
CLASSES11 = ClassInfo.default(11)


def save(path, img, **kw):
    img.save(path, **kw)
    return path


def luminance(rgb):
    return np.asarray(Image.fromarray(rgb).convert("L"))


# ---- images: every mode ------------------------------------------------------------------


def test_rgb_png(tmp_path):
    p = save(tmp_path / "a.png", Image.fromarray(RGB))
    out = read_image(p)
    assert out.dtype == np.uint8 and out.shape == (12, 10, 3)
    np.testing.assert_array_equal(out, RGB)
    np.testing.assert_array_equal(read_image(p, 1)[..., 0], luminance(RGB))
    assert image_channels(p) == 3


def test_gray_png(tmp_path):
    p = save(tmp_path / "g.png", Image.fromarray(GRAY))
    assert read_image(p).shape == (12, 10, 1)
    np.testing.assert_array_equal(read_image(p)[..., 0], GRAY)
    rgb = read_image(p, 3)
    assert rgb.shape == (12, 10, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], GRAY)
    assert image_channels(p) == 1


def test_rgba_drops_alpha(tmp_path):
    alpha = np.zeros((12, 10, 1), np.uint8)  # fully transparent: colours are still kept
    p = save(tmp_path / "a.png", Image.fromarray(np.concatenate([RGB, alpha], 2)))
    np.testing.assert_array_equal(read_image(p), RGB)


def test_la_drops_alpha(tmp_path):
    p = save(tmp_path / "la.png", Image.fromarray(GRAY).convert("LA"))
    out = read_image(p)
    assert out.shape == (12, 10, 1)
    np.testing.assert_array_equal(out[..., 0], GRAY)


def test_palette_color_and_gray(tmp_path):
    idx = (GRAY % 4).astype(np.uint8)
    im = Image.fromarray(idx).convert("P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9] + [0] * 756)
    out = read_image(save(tmp_path / "p.png", im))
    assert out.shape == (12, 10, 3)
    table = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)
    np.testing.assert_array_equal(out, table[idx])
    gray = Image.fromarray(idx).convert("P")
    gray.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    out = read_image(save(tmp_path / "pg.png", gray))
    assert out.shape == (12, 10, 1)
    np.testing.assert_array_equal(out[..., 0], 255 - idx)


def test_bilevel(tmp_path):
    bits = GRAY > 128
    p = save(tmp_path / "b.png", Image.fromarray(bits))
    assert Image.open(p).mode == "1"
    out = read_image(p)
    np.testing.assert_array_equal(out[..., 0], np.where(bits, 255, 0))


@pytest.mark.parametrize("mode, fmt", [("I;16", "PNG"), ("I;16B", "TIFF"), ("I", "TIFF")])
def test_16_bit_scaled_by_257(tmp_path, mode, fmt):
    values = GRAY.astype(np.uint16) * 257
    values[0, 0] = 65535
    values[0, 1] = 257 * 7 + 100  # rounds down
    values[0, 2] = 257 * 7 + 200  # rounds up
    if mode == "I":
        im = Image.fromarray(values.astype(np.int32))
    else:  # built from bytes: Pillow's convert("I;16B") clips to 255
        dtype = ">u2" if mode == "I;16B" else "<u2"
        im = Image.frombytes(mode, (10, 12), values.astype(dtype).tobytes())
    p = save(tmp_path / f"x.{fmt.lower()}", im, format=fmt)
    assert Image.open(p).mode == mode
    out = read_image(p)
    expect = GRAY.copy()
    expect[0, :3] = [255, 7, 8]
    assert out.shape == (12, 10, 1)
    np.testing.assert_array_equal(out[..., 0], expect)


def test_float_clipped(tmp_path):
    f = np.linspace(-0.5, 1.5, 120, dtype=np.float32).reshape(12, 10)
    p = save(tmp_path / "f.tiff", Image.fromarray(f))
    out = read_image(p)[..., 0]
    np.testing.assert_array_equal(out, np.rint(np.clip(f, 0, 1) * 255).astype(np.uint8))


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr"])
def test_cmyk_ycbcr(tmp_path, mode):
    im = Image.fromarray(RGB).convert(mode)
    p = save(tmp_path / "c.tiff", im)
    assert Image.open(p).mode == mode
    out = read_image(p)
    np.testing.assert_array_equal(out, np.asarray(im.convert("RGB")))


def test_gif_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 200)]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    assert Image.open(p).n_frames == 2
    assert read_image(p, 1).max() < 100 and read_image(p, 3).shape == (8, 8, 3)


def test_exif_rotated_jpeg(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high: left half red, right half blue
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    im = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    p = tmp_path / "phone.jpg"
    im.save(p, exif=exif, quality=95)
    out = read_image(p)
    assert out.shape == (40, 20, 3)  # portrait, as viewers show it
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60  # the stored left side is now on top
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60


def test_channels_option_validated(tmp_path):
    p = save(tmp_path / "a.png", Image.fromarray(RGB))
    with pytest.raises(ConfigError):
        read_image(p, 2)


# ---- bad files ----------------------------------------------------------------------------


def png_bytes(array):
    b = io.BytesIO()
    Image.fromarray(array).save(b, format="PNG")
    return b.getvalue()


def bad_files(tmp_path):
    noisy = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = png_bytes(noisy)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("this is not an image\n")
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    (tmp_path / "corrupt.png").write_bytes(bytes(corrupt))
    return {
        "missing.png": "no such file",
        "empty.png": "empty file",
        "notes.png": "cannot identify image file",
        "half.png": "truncated or corrupt",
        "corrupt.png": "",
    }


@pytest.mark.parametrize("reader", [read_image, read_mask])
def test_bad_files_raise_data_error_naming_the_file(tmp_path, reader):
    for name, problem in bad_files(tmp_path).items():
        with pytest.raises(DataError) as e:
            reader(tmp_path / name)
        assert name in str(e.value) and problem in str(e.value)
        assert "\n" not in str(e.value)


def test_decode_image_reads_bytes_and_files_alike(tmp_path):
    """One decoder for files and uploads (pixelwise serve): same arrays, same errors."""
    rotated = Image.fromarray(RGB)
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    buf = io.BytesIO()
    rotated.save(buf, format="PNG", exif=exif)
    path = tmp_path / "a.png"
    path.write_bytes(buf.getvalue())
    for channels in (None, 1, 3):
        from_bytes = decode_image(buf.getvalue(), channels)
        np.testing.assert_array_equal(from_bytes, read_image(path, channels))
        np.testing.assert_array_equal(from_bytes, decode_image(str(path), channels))
    assert decode_image(buf.getvalue()).shape == (10, 12, 3)  # EXIF orientation applied
    for name, problem in bad_files(tmp_path).items():
        if name == "missing.png":
            continue
        with pytest.raises(DataError) as e:
            decode_image((tmp_path / name).read_bytes(), 3, name="upload")
        assert str(e.value).startswith("upload: ") and problem in str(e.value)
    with pytest.raises(ConfigError, match="channels"):
        decode_image(buf.getvalue(), 2)


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        read_image(tmp_path)


@pytest.fixture
def restore_limit():
    old = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = old


@pytest.mark.parametrize("side", [12, 20])  # 144 px: Pillow warns; 400 px: Pillow raises
def test_decompression_bomb(tmp_path, restore_limit, side):
    p = save(tmp_path / "big.png", Image.fromarray(np.zeros((side, side), np.uint8)))
    set_max_image_pixels(100)
    with pytest.raises(DataError) as e:
        read_image(p)
    msg = str(e.value)
    assert "big.png" in msg and f"{side * side} pixels" in msg and "set_max_image_pixels" in msg
    set_max_image_pixels(None)
    assert read_image(p).shape == (side, side, 1)
    with pytest.raises(ConfigError):
        set_max_image_pixels(0)


def test_unsupported_mode(tmp_path):
    p = save(tmp_path / "lab.tiff", Image.fromarray(RGB).convert("LAB"))
    try:
        out = read_image(p)
    except DataError as e:
        assert "lab.tiff" in str(e) and "LAB" in str(e)
    else:
        assert out.shape == (12, 10, 3)
    with pytest.raises(DataError, match="lab.tiff: unsupported mask mode LAB"):
        read_mask(p)


# ---- masks --------------------------------------------------------------------------------

LABELS = (GRAY % 11).astype(np.uint8)


def test_mask_gray_and_palette_indices(tmp_path):
    p = save(tmp_path / "m.png", Image.fromarray(LABELS))
    np.testing.assert_array_equal(read_mask(p, CLASSES11), LABELS)
    pal = Image.fromarray(LABELS).convert("P")
    pal.putpalette([200, 100, 50] * 256)  # colours are ignored: indices are labels
    out = read_mask(save(tmp_path / "p.png", pal), CLASSES11)
    assert out.dtype == np.uint8 and out.shape == (12, 10)
    np.testing.assert_array_equal(out, LABELS)


def test_mask_bilevel_is_0_1(tmp_path):
    p = save(tmp_path / "b.png", Image.fromarray(LABELS > 5))
    np.testing.assert_array_equal(read_mask(p), (LABELS > 5).astype(np.uint8))


def test_mask_16_bit(tmp_path):
    v = LABELS.astype(np.uint16)
    v[0, 0] = 255
    p = save(tmp_path / "m16.png", Image.fromarray(v))
    assert Image.open(p).mode == "I;16"
    np.testing.assert_array_equal(read_mask(p, CLASSES11), v.astype(np.uint8))
    v[1, 1] = 300
    p = save(tmp_path / "big16.png", Image.fromarray(v))
    with pytest.raises(DataError, match="big16.png: label value 300"):
        read_mask(p)
    np.testing.assert_array_equal(read_mask(p, label_map={300: 4})[1, 1], 4)


def test_mask_label_outside_classes(tmp_path):
    bad = LABELS.copy()
    bad[2, 3] = 17
    p = save(tmp_path / "m17.png", Image.fromarray(bad))
    with pytest.raises(DataError) as e:
        read_mask(p, CLASSES11)
    assert str(e.value) == (
        f"{p}: label value 17 outside the 11 classes (0..10; 255 = ignore); "
        "pass a label map if your masks use other values"
    )
    np.testing.assert_array_equal(read_mask(p), bad)  # no classes: no check


def test_mask_binary_0_255_with_label_map(tmp_path):
    binary = np.where(LABELS > 5, 255, 0).astype(np.uint8)
    p = save(tmp_path / "bin.png", Image.fromarray(binary))
    two = ClassInfo.default(2)
    np.testing.assert_array_equal(read_mask(p, two), binary)  # 255 is "ignore"
    np.testing.assert_array_equal(read_mask(p, two, {255: 1}), binary // 255)
    with pytest.raises(ConfigError):
        read_mask(p, two, {255: 256})


def test_mask_rgb_colors(tmp_path):
    classes = ClassInfo(("sky", "road", "car"), ((128, 128, 128), (128, 64, 128), (64, 0, 128)))
    labels = (GRAY % 3).astype(np.uint8)
    labels[0, 0] = 255
    colors = np.array([*classes.colors] + [(224, 224, 192)] * 253, np.uint8)
    rgb = colors[np.where(labels == 255, 3, labels)]
    p = save(tmp_path / "rgb.png", Image.fromarray(rgb))
    np.testing.assert_array_equal(read_mask(p, classes), labels)
    rgba = np.concatenate([rgb, np.full((12, 10, 1), 255, np.uint8)], 2)
    p = save(tmp_path / "rgba.png", Image.fromarray(rgba))
    np.testing.assert_array_equal(read_mask(p, classes), labels)
    # an image of only gray class colours is still decoded through the colour table
    gray_only = np.zeros_like(rgb) + 128
    p = save(tmp_path / "sky.png", Image.fromarray(gray_only))
    np.testing.assert_array_equal(read_mask(p, classes), np.zeros((12, 10), np.uint8))


def test_mask_rgb_unknown_color(tmp_path):
    classes = ClassInfo(("a", "b"), ((0, 0, 0), (255, 0, 0)))
    rgb = np.zeros((12, 10, 3), np.uint8)
    rgb[:3, :] = (12, 200, 7)
    rgb[5, 5] = (1, 2, 3)
    p = save(tmp_path / "odd.png", Image.fromarray(rgb))
    with pytest.raises(DataError) as e:
        read_mask(p, classes)
    msg = str(e.value)
    assert "odd.png" in msg and "(12, 200, 7)" in msg and "30 pixels" in msg and "1 other" in msg
    with pytest.raises(DataError, match="odd.png: colour-coded mask but no class colour table"):
        read_mask(p)
    with pytest.raises(DataError, match="odd.png: mask is a colour image"):
        read_mask(p, classes, colors=False)


def test_mask_rgb_gray_uses_one_channel(tmp_path):
    p = save(tmp_path / "g.png", Image.fromarray(np.repeat(LABELS[:, :, None], 3, 2)))
    np.testing.assert_array_equal(read_mask(p, CLASSES11), LABELS)


def test_mask_exif_applied(tmp_path):
    m = np.zeros((4, 6), np.uint8)
    m[0, 0] = 1
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180
    p = tmp_path / "m.png"
    Image.fromarray(m).save(p, exif=exif)
    out = read_mask(p)
    assert out.shape == (4, 6) and out[3, 5] == 1 and out.sum() == 1


# ---- writing ------------------------------------------------------------------------------


def test_write_mask_palette_round_trip(tmp_path):
    p = tmp_path / "out" / "m.png"
    m = LABELS.copy()
    m[0, 0] = 255
    write_mask(p, m, CLASSES11)
    with Image.open(p) as im:
        assert im.mode == "P" and im.getpalette()[: 3 * 11] == CLASSES11.palette()[: 3 * 11]
    np.testing.assert_array_equal(read_mask(p, CLASSES11), m)
    assert sorted(x.name for x in p.parent.iterdir()) == ["m.png"]  # no temp file left
    with pytest.raises(ConfigError):
        write_mask(tmp_path / "m.jpg", m, CLASSES11)
    with pytest.raises(ConfigError):
        write_mask(tmp_path / "m.png", RGB, CLASSES11)


def test_write_image(tmp_path):
    write_image(tmp_path / "a.png", RGB)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), RGB)
    write_image(tmp_path / "g.png", GRAY[:, :, None])
    np.testing.assert_array_equal(read_image(tmp_path / "g.png")[..., 0], GRAY)
    smooth = np.full((16, 16, 3), 120, np.uint8)
    write_image(tmp_path / "a.jpg", smooth)
    assert np.abs(read_image(tmp_path / "a.jpg").astype(int) - 120).max() <= 2
    with pytest.raises(ConfigError):
        write_image(tmp_path / "a.gif", RGB)
    with pytest.raises(ConfigError):
        write_image(tmp_path / "a.png", RGB.astype(np.float32))
