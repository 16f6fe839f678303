"""Reading images and label masks from files, and writing them back.

Every unreadable or inconsistent file raises :class:`~pixelwise.errors.DataError` whose message
starts with the file's path. Images come back as ``uint8 (H, W, C)``, masks as ``uint8 (H, W)``.

Decisions:

- EXIF orientation is applied to images *and* masks (a lossless transpose), so a rotated phone
  JPEG decodes the way viewers show it.
- RGBA / LA / PA: the alpha channel is dropped (colours of transparent pixels are kept as stored,
  not composited on a background).
- 16-bit images (``I;16*``; ``I`` clipped to 0..65535) are scaled to 8 bits by ``/ 257``
  (rounded), so 65535 -> 255; float images (``F``) are clipped to [0, 1] and multiplied by 255.
- Multi-frame files (GIF, TIFF) give their first frame.

:func:`decode_image` decodes a file or the bytes of one (``pixelwise serve``'s uploads), so
uploads and files are converted alike.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pixelwise.data.classes import IGNORE_DRAW_COLOR, ClassInfo
from pixelwise.errors import ConfigError, DataError
from pixelwise.files import atomic_path

_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_COLOR_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "P", "PA"}
_16BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}


def set_max_image_pixels(n: int | None) -> None:
    """Set the largest image (in pixels) that may be decoded; ``None`` removes the limit.

    This is Pillow's process-wide decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``,
    default 89,478,485 pixels); files above it raise :class:`DataError`.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"max image pixels must be a positive integer or None, got {n!r}")
    Image.MAX_IMAGE_PIXELS = n


Source = str | Path | bytes | bytearray | memoryview


def _source_path(source: Source, name: str | None) -> Path:
    if isinstance(source, bytes | bytearray | memoryview):
        return Path(name or "<bytes>")
    return Path(source)


@contextlib.contextmanager
def _open(source: Source, name: str | None = None) -> Iterator[Image.Image]:
    """Open, fully decode (first frame) and EXIF-orient a file or the bytes of one; errors
    become DataError naming the file (or ``name``, for bytes)."""
    path = _source_path(source, name)
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise DataError(path, "empty file (0 bytes); send an image file (PNG, JPEG, ...)")
        opener: Any = io.BytesIO(data)
    else:
        if not path.exists():
            raise DataError(path, "no such file")
        if path.is_dir():
            raise DataError(path, "is a folder, not an image file")
        if path.stat().st_size == 0:
            raise DataError(path, "empty file (0 bytes); re-export or remove it")
        opener = path
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(opener)
        except UnidentifiedImageError:
            raise DataError(
                path, "cannot identify image file: not an image, or a format Pillow cannot read"
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DataError(path, _bomb_message(str(e))) from None
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(path, f"cannot open image ({e})") from None
    try:
        try:
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DataError(path, _bomb_message(str(e))) from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise DataError(
                path, f"truncated or corrupt image data ({e}); re-export or replace the file"
            ) from None
        oriented = img
        try:
            if img.getexif().get(0x0112, 1) != 1:  # orientation tag; skip the copy when upright
                oriented = ImageOps.exif_transpose(img) or img
        except Exception:  # a malformed EXIF block must not make a readable image unreadable
            oriented = img
        yield oriented
    finally:
        img.close()


def _bomb_message(text: str) -> str:
    m = re.search(r"\((\d+) pixels\)", text)
    count = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
    limit = Image.MAX_IMAGE_PIXELS
    return (
        f"image has {count}, over the limit of {limit:,} (decompression-bomb guard); if the file "
        "is trusted, raise it with --max-image-pixels N (Python: "
        "pixelwise.data.io.set_max_image_pixels(n))"
        if limit
        else f"image has {count} (decompression-bomb guard)"
    )


def _gray8(img: Image.Image, path: Path) -> np.ndarray:
    """A single-channel 8-bit array (H, W) of a gray-ish image."""
    mode = img.mode
    if mode in _16BIT_MODES or mode == "I":
        a = np.asarray(img).astype(np.int64)
        return ((np.clip(a, 0, 65535) + 128) // 257).astype(np.uint8)
    if mode == "F":
        a = np.asarray(img, dtype=np.float32)
        a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0)
        return np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    if mode == "L":
        return np.asarray(img, dtype=np.uint8).copy()
    return np.asarray(img.convert("L"), dtype=np.uint8).copy()


def _palette_is_gray(img: Image.Image) -> bool:
    pal = img.getpalette()
    if not pal:
        return True
    colors = np.asarray(pal, dtype=np.int32).reshape(-1, 3)
    used = np.unique(np.asarray(img if img.mode == "P" else img.getchannel(0)))
    used = used[used < len(colors)]
    c = colors[used]
    return bool(np.all(c[:, 0] == c[:, 1]) and np.all(c[:, 1] == c[:, 2]))


def _rgb8(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("P", "PA"):  # via RGBA: avoids Pillow's transparency warning
        return np.asarray(img.convert("RGBA").convert("RGB"), dtype=np.uint8).copy()
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (ValueError, OSError):
        raise DataError(
            path, f"unsupported image mode {mode}; convert the file to an RGB or grayscale PNG"
        ) from None


def decode_image(
    source: Source, channels: int | None = None, *, name: str | None = None
) -> np.ndarray:
    """Decode an image file, or the bytes of one (an upload), as ``uint8 (H, W, C)``.

    ``channels``: ``None`` -> natural (1 for grayscale modes and gray palettes, else 3);
    ``1`` -> luminance (ITU-R 601: 0.299 R + 0.587 G + 0.114 B); ``3`` -> RGB (gray replicated).
    Errors raise DataError naming the file, or ``name`` (default ``<bytes>``) for bytes.
    """
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1, 3 or None, got {channels!r}")
    with _open(source, name) as img:
        path = _source_path(source, name)
        mode = img.mode
        gray = mode in _GRAY_MODES or (mode in ("P", "PA") and _palette_is_gray(img))
        want = channels if channels is not None else (1 if gray else 3)
        if gray:
            g = _gray8(img, path) if mode not in ("P", "PA") else _gray8(img.convert("L"), path)
            return g[:, :, None] if want == 1 else np.repeat(g[:, :, None], 3, axis=2)
        rgb = _rgb8(img, path)
    if want == 3:
        return rgb
    return _luminance(rgb)[:, :, None]


def read_image(path: str | Path, channels: int | None = None) -> np.ndarray:
    """Read an image file as ``uint8 (H, W, C)``: :func:`decode_image` of a path."""
    return decode_image(Path(path), channels)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (H, W), the same weights as Pillow's ``convert("L")``."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def image_channels(path: str | Path) -> int:
    """Natural channel count of an image file from its header (no full decode): 1 or 3."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.mode in _GRAY_MODES:
                    return 1
                if img.mode in ("P", "PA"):
                    pal = img.getpalette() or []
                    c = np.asarray(pal, dtype=np.int32).reshape(-1, 3)
                    return 1 if bool(np.all(c[:, 0] == c[:, 1]) & np.all(c[:, 1] == c[:, 2])) else 3
                return 3
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Warning):
        read_image(path)  # raises the precise DataError
        raise DataError(path, "cannot read image header") from None


def read_raw_mask(path: str | Path) -> np.ndarray:
    """The values a mask file stores, before any label map: ``uint8 (H, W)`` for 8-bit
    single-channel and palette masks (palette indices) and for RGB masks whose channels are
    all equal; ``int64 (H, W)`` for 16-bit masks; ``uint8 (H, W, 3)`` for colour masks."""
    path = Path(path)
    with _open(path) as img:
        mode = img.mode
        if mode in ("L", "P", "1"):
            return np.asarray(img, dtype=np.uint8).copy()
        if mode in ("LA", "PA", "La"):
            return np.asarray(img.getchannel(0), dtype=np.uint8).copy()
        if mode in _16BIT_MODES or mode == "I":
            return np.asarray(img).astype(np.int64)
        if mode in ("RGB", "RGBA", "RGBX", "RGBa"):
            rgb = np.asarray(img.convert("RGB") if mode != "RGB" else img, dtype=np.uint8).copy()
        else:
            raise DataError(
                path,
                f"unsupported mask mode {mode}; save masks as 8-bit single-channel or palette PNG",
            )
    gray = rgb[..., 0]
    if np.array_equal(gray, rgb[..., 1]) and np.array_equal(gray, rgb[..., 2]):
        return gray.copy()
    return rgb


def read_mask(
    path: str | Path,
    classes: ClassInfo | None = None,
    label_map: Mapping[int, int] | None = None,
    colors: bool = True,
) -> np.ndarray:
    """Read a label mask as ``uint8 (H, W)`` of class indices (``classes.ignore_index`` = ignore).

    - ``L`` / ``P`` (palette PNG, as in VOC): the stored values / palette indices are the labels;
      ``1`` gives 0/1; ``LA`` / ``PA`` use their first channel.
    - 16-bit (``I;16``, ``I``): the values themselves; any value above 255 is an error.
    - ``RGB`` / ``RGBA`` (alpha dropped): if all channels are equal, one channel is used; otherwise
      (and ``colors`` is true) every colour must exactly match a colour of ``classes`` (or its
      ignore colour; VOC's (224, 224, 192) also means ignore when no class uses it); the first
      class with a colour wins. Unknown colours raise DataError naming the colour.
    - ``label_map`` (e.g. ``{255: 1}`` for 0/255 binary masks) is applied to the raw values, or to
      the indices decoded from colours; then, if ``classes`` is given, every value must be a class
      index or the ignore index.

    Masks are never resampled or converted through a lossy path. :func:`read_raw_mask` +
    :func:`decode_mask` is the same in two steps (to look at the stored values too).
    """
    path = Path(path)
    return decode_mask(read_raw_mask(path), path, classes, label_map, colors)


def decode_mask(
    raw: np.ndarray,
    path: str | Path,
    classes: ClassInfo | None = None,
    label_map: Mapping[int, int] | None = None,
    colors: bool = True,
) -> np.ndarray:
    """Class indices of the stored values ``raw`` (from :func:`read_raw_mask` of ``path``), as
    :func:`read_mask` gives them."""
    path = Path(path)
    lut = _label_lut(label_map)
    if raw.ndim == 2:
        mask = _apply_lut(raw, lut, path)
        if raw.dtype != np.uint8 or classes is None or not colors:
            return _validate(mask, classes, path)
        if _invalid_values(mask, classes):  # gray class colours, e.g. CamVid's Sky (128, 128, 128)
            decoded = _decode_colors(np.repeat(raw[..., None], 3, axis=2), classes, path, False)
            if decoded is not None:
                return _validate(_apply_lut(decoded, lut, path), classes, path)
        return _validate(mask, classes, path)
    if not colors:
        raise DataError(
            path, "mask is a colour image but colour decoding is off; save it as index PNG"
        )
    if classes is None:
        raise DataError(
            path,
            "colour-coded mask but no class colour table; add a classes.txt with "
            "'name R G B' lines, or save masks as index/palette PNGs",
        )
    decoded = _decode_colors(raw, classes, path, strict=True)
    assert decoded is not None
    return _validate(_apply_lut(decoded, lut, path), classes, path)


def _label_lut(label_map: Mapping[int, int] | None) -> dict[int, int] | None:
    if label_map is None:
        return None
    if not isinstance(label_map, Mapping):
        raise ConfigError(f"label map must be a mapping of ints, got {type(label_map).__name__}")
    out: dict[int, int] = {}
    for k, v in label_map.items():
        for x in (k, v):
            if isinstance(x, bool) or not isinstance(x, int | np.integer):
                raise ConfigError(f"label map: {k!r} -> {v!r} is not int -> int")
        if not 0 <= int(v) <= 255:
            raise ConfigError(f"label map: {k} -> {v}: labels must be in 0..255")
        if not 0 <= int(k) <= 65535:
            raise ConfigError(f"label map: key {k} outside 0..65535")
        out[int(k)] = int(v)
    return out


def _apply_lut(raw: np.ndarray, lut: dict[int, int] | None, path: Path) -> np.ndarray:
    if lut:
        size = 256 if raw.dtype == np.uint8 else max(65536, int(raw.max()) + 1)
        table = np.arange(size, dtype=np.int64)
        for k, v in lut.items():
            if k < size:
                table[k] = v
        if raw.dtype != np.uint8 and int(raw.min()) < 0:
            raise DataError(path, f"negative label value {int(raw.min())} in a 32-bit mask")
        raw = table[raw]
    if raw.dtype == np.uint8:
        return raw
    lo, hi = int(raw.min()), int(raw.max())
    if lo < 0 or hi > 255:
        bad = lo if lo < 0 else hi
        raise DataError(
            path,
            f"label value {bad} does not fit in an 8-bit mask (0..255); "
            "pass a label map to renumber the values",
        )
    return raw.astype(np.uint8)


def _invalid_values(mask: np.ndarray, classes: ClassInfo) -> list[int]:
    counts = np.bincount(mask.ravel(), minlength=256)
    counts[: classes.num_classes] = 0
    counts[classes.ignore_index] = 0
    return [int(v) for v in np.flatnonzero(counts)]


def _validate(mask: np.ndarray, classes: ClassInfo | None, path: Path) -> np.ndarray:
    if classes is None:
        return mask
    bad = _invalid_values(mask, classes)
    if bad:
        n = classes.num_classes
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        word = "value" if len(bad) == 1 else "values"
        raise DataError(
            path,
            f"label {word} {shown} outside the {n} classes (0..{n - 1}; "
            f"{classes.ignore_index} = ignore); pass a label map if your masks use other values",
        )
    return mask


def _decode_colors(
    rgb: np.ndarray, classes: ClassInfo, path: Path, strict: bool
) -> np.ndarray | None:
    """Map each colour to its class index by exact match; unknown colours -> DataError
    (or ``None`` when not ``strict``)."""
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    table: dict[int, int] = {}
    ignore_color = classes.ignore_color or IGNORE_DRAW_COLOR
    for i, c in enumerate(classes.colors):
        table.setdefault((c[0] << 16) | (c[1] << 8) | c[2], i)
    table.setdefault(
        (ignore_color[0] << 16) | (ignore_color[1] << 8) | ignore_color[2], classes.ignore_index
    )
    keys = np.array(sorted(table), dtype=np.int32)
    values = np.array([table[k] for k in sorted(table)], dtype=np.uint8)
    pos = np.clip(np.searchsorted(keys, codes), 0, len(keys) - 1)
    known = keys[pos] == codes
    if not known.all():
        if not strict:
            return None
        unknown_codes, counts = np.unique(codes[~known], return_counts=True)
        top = int(np.argmax(counts))
        k = int(unknown_codes[top])
        color = (k >> 16, (k >> 8) & 255, k & 255)
        more = len(unknown_codes) - 1
        extra = f" (and {more} other unknown colours)" if more else ""
        raise DataError(
            path,
            f"colour {color} ({int(counts[top])} pixels) is not a class colour{extra}; "
            "fix the mask or add the colour to classes.txt",
        )
    return values[pos]


def write_mask(path: str | Path, mask: np.ndarray, classes: ClassInfo) -> None:
    """Write ``mask`` (H, W) of class indices as a palette PNG coloured by ``classes``."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"{path}: masks are written as PNG; use a .png file name")
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ConfigError(f"{path}: mask must be 2-D (H, W), got shape {m.shape}")
    if m.dtype != np.uint8:
        if m.size and (m.min() < 0 or m.max() > 255):
            raise ConfigError(f"{path}: mask values must be in 0..255")
        m = m.astype(np.uint8)
    h, w = m.shape
    img = Image.frombytes("P", (w, h), np.ascontiguousarray(m).tobytes())
    img.putpalette(classes.palette())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", optimize=False)


def write_image(path: str | Path, array: np.ndarray) -> None:
    """Write ``uint8 (H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` as PNG or JPEG
    (chosen by the suffix: .png, .jpg, .jpeg; JPEG quality 95)."""
    path = Path(path)
    suffix = path.suffix.lower()
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
    if suffix not in formats:
        raise ConfigError(f"{path}: images are written as .png, .jpg or .jpeg")
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise ConfigError(f"{path}: image must be uint8, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ConfigError(f"{path}: image must be (H, W), (H, W, 1|3|4), got shape {a.shape}")
    img = Image.fromarray(np.ascontiguousarray(a))
    if formats[suffix] == "JPEG" and img.mode == "RGBA":
        img = img.convert("RGB")
    with atomic_path(path) as tmp:
        if formats[suffix] == "JPEG":
            img.save(tmp, format="JPEG", quality=95)
        else:
            img.save(tmp, format="PNG")
