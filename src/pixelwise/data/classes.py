"""Class names, display colours and the ignore index of a segmentation dataset.

A mask pixel holds a class index ``0 .. num_classes - 1`` or ``ignore_index`` (255 by default:
unlabelled / border pixels that count towards neither the loss nor the metrics).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelwise.errors import ConfigError, DataError

Color = tuple[int, int, int]

IGNORE_DRAW_COLOR: Color = (224, 224, 192)  # how PASCAL VOC draws its "void" border pixels
_VOID_NAMES = {"void", "unlabelled", "unlabeled", "ignore", "ignored", "unknown", "none"}
_INT = re.compile(r"^[+-]?\d+$")


def default_palette(n: int) -> list[Color]:
    """The first ``n`` colours of PASCAL VOC's colour map (bits of the index interleaved).

    Index 0 is black, 1 dark red, 2 dark green, 3 olive, ... ; distinct for ``n <= 256``.
    """
    colors: list[Color] = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return colors


@dataclass(frozen=True)
class ClassInfo:
    """Names and colours of the classes; ``colors[i]`` draws class ``i``.

    ``ignore_index`` (``num_classes <= ignore_index <= 255``) marks unlabelled pixels.
    ``ignore_color``, when set, is the colour that means "ignore" in RGB colour-coded masks
    (e.g. CamVid's black "Void"); it defaults to VOC's (224, 224, 192) when decoding.
    Invalid values raise :class:`ConfigError`.
    """

    names: tuple[str, ...]
    colors: tuple[Color, ...]
    ignore_index: int = 255
    ignore_color: Color | None = None

    def __post_init__(self) -> None:
        if isinstance(self.names, str) or not isinstance(self.names, list | tuple):
            raise ConfigError(f"classes: names must be a list of strings, got {self.names!r}")
        names = tuple(self.names)
        if not names:
            raise ConfigError("classes: at least one class is needed")
        if len(names) > 255:
            raise ConfigError(f"classes: {len(names)} classes; masks are 8-bit, at most 255 fit")
        for name in names:
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"classes: class name {name!r} is not a non-empty string")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ConfigError(f"classes: duplicate class names {', '.join(dup)}")
        if isinstance(self.colors, str) or not isinstance(self.colors, list | tuple):
            raise ConfigError(f"classes: colors must be a list of [R, G, B], got {self.colors!r}")
        colors = tuple(_color(c, "colors") for c in self.colors)
        if len(colors) != len(names):
            raise ConfigError(
                f"classes: {len(names)} names but {len(colors)} colours; give one colour per class"
            )
        ignore = self.ignore_index
        if isinstance(ignore, bool) or not isinstance(ignore, int):
            raise ConfigError(f"classes: ignore_index must be an integer, got {ignore!r}")
        if not len(names) <= ignore <= 255:
            raise ConfigError(
                f"classes: ignore_index {ignore} must be in {len(names)}..255 "
                f"(not a class index, and it must fit in an 8-bit mask)"
            )
        ignore_color = None if self.ignore_color is None else _color(self.ignore_color, "ignore")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "colors", colors)
        object.__setattr__(self, "ignore_color", ignore_color)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette(self) -> list[int]:
        """768 ints for ``PIL.Image.putpalette``: class colours, the ignore index drawn as
        ``ignore_color`` or (224, 224, 192), every other index black."""
        flat = [0] * 768
        for i, c in enumerate(self.colors):
            flat[3 * i : 3 * i + 3] = c
        ic = self.ignore_color or IGNORE_DRAW_COLOR
        flat[3 * self.ignore_index : 3 * self.ignore_index + 3] = ic
        return flat

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; :meth:`from_dict` inverts it."""
        d: dict[str, Any] = {
            "names": list(self.names),
            "colors": [list(c) for c in self.colors],
            "ignore_index": self.ignore_index,
        }
        if self.ignore_color is not None:
            d["ignore_color"] = list(self.ignore_color)
        return d

    def to_text(self) -> str:
        """``classes.txt`` content (``index name R G B`` lines) that :meth:`from_file` reads back
        (the ignore colour, if set, as a ``void`` line with the ignore index)."""
        lines = [f"# index name R G B  (ignore index {self.ignore_index})"]
        for i, (n, c) in enumerate(zip(self.names, self.colors, strict=True)):
            lines.append(f"{i} {n} {c[0]} {c[1]} {c[2]}")
        if self.ignore_color is not None:
            c = self.ignore_color
            lines.append(f"{self.ignore_index} void {c[0]} {c[1]} {c[2]}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_dict(cls, d: Any) -> ClassInfo:
        """Build from :meth:`to_dict` output; wrong keys, types or lengths raise ConfigError."""
        if not isinstance(d, dict):
            raise ConfigError(f"classes: expected a mapping, got {type(d).__name__}")
        unknown = set(d) - {"names", "colors", "ignore_index", "ignore_color"}
        if unknown:
            raise ConfigError(f"classes: unknown keys {', '.join(sorted(map(str, unknown)))}")
        if "names" not in d:
            raise ConfigError("classes: missing 'names'")
        names = d["names"]
        colors = d.get("colors")
        if colors is None and isinstance(names, list | tuple):
            colors = default_palette(len(names))
        return cls(
            names=names,
            colors=colors,
            ignore_index=d.get("ignore_index", 255),
            ignore_color=d.get("ignore_color"),
        )

    @classmethod
    def default(cls, n: int, ignore_index: int = 255) -> ClassInfo:
        """``n`` classes named ``class_0 ..`` coloured with :func:`default_palette`."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"classes: number of classes must be a positive integer, got {n!r}")
        return cls(tuple(f"class_{i}" for i in range(n)), tuple(default_palette(n)), ignore_index)

    @classmethod
    def from_file(cls, path: str | Path, ignore_index: int = 255) -> ClassInfo:
        """Parse a ``classes.txt``: one class per line, in index order; ``#`` starts a comment.

        Each line is ``name``, ``name R G B`` or ``index name R G B`` (CamVid style:
        ``0 Sky 128 128 128``); names may contain spaces. Classes without a colour get the
        :func:`default_palette` colour of their index. With indices, they must run 0, 1, 2, ...;
        a line whose index equals ``ignore_index``, or a line at the *end* of the file with an
        index >= the number of classes before it and a void-like name (void, unlabelled, ignore,
        unknown, none; e.g. CamVid's ``11 Unlabelled 0 0 0``), is not a class: it is skipped,
        and its colour (if any) becomes ``ignore_color``.
        Malformed lines raise :class:`DataError` naming the file and line number.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise DataError(path, "no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(path, f"cannot read class list ({e})") from None
        names: list[str] = []
        colors: list[Color | None] = []
        ignore_color: Color | None = None
        entries = []
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if line:
                entries.append((f"line {lineno}", *_parse_line(line, path, f"line {lineno}")))
        # trailing lines like "11 Unlabelled 0 0 0" (index given, void-like name) are not classes
        n_real = len(entries)
        while n_real and entries[n_real - 1][1] is not None and _is_void(entries[n_real - 1][2]):
            n_real -= 1
        for k, (where, index, name, color) in enumerate(entries):
            if index is not None and (
                index == ignore_index or (k >= n_real and index >= len(names))
            ):
                ignore_color = color
                continue
            if index is not None and index != len(names):
                raise DataError(
                    path,
                    f"{where}: index {index} out of order, expected {len(names)} "
                    "(list classes as 0, 1, 2, ... with one per line)",
                )
            if name in names:
                raise DataError(path, f"{where}: class name {name!r} appears twice")
            names.append(name)
            colors.append(color)
        if not names:
            raise DataError(path, "no classes listed (one class name per line)")
        palette = default_palette(len(names))
        filled = tuple(c if c is not None else palette[i] for i, c in enumerate(colors))
        try:
            return cls(tuple(names), filled, ignore_index, ignore_color)
        except ConfigError as e:
            raise DataError(path, str(e).removeprefix("classes: ")) from None


def _is_void(name: str) -> bool:
    return name.lower().replace("-", "").replace("_", "") in _VOID_NAMES


def _parse_line(line: str, path: Path, where: str) -> tuple[int | None, str, Color | None]:
    tokens = line.split()
    color: Color | None = None
    rest = tokens
    if len(tokens) >= 4 and all(_INT.match(t) for t in tokens[-3:]):
        rgb = tuple(int(t) for t in tokens[-3:])
        if any(not 0 <= v <= 255 for v in rgb):
            raise DataError(path, f"{where}: colour {rgb} has a component outside 0..255")
        color = (rgb[0], rgb[1], rgb[2])
        rest = tokens[:-3]
    elif len(tokens) >= 2 and _INT.match(tokens[-1]):
        raise DataError(
            path,
            f"{where}: {line!r} ends in a number but has no full colour; "
            "expected 'name', 'name R G B' or 'index name R G B'",
        )
    index = None
    if color is not None and len(rest) >= 2 and _INT.match(rest[0]):
        index = int(rest[0])
        rest = rest[1:]
    return index, " ".join(rest), color


def _color(c: Any, what: str) -> Color:
    if (
        not isinstance(c, list | tuple)
        or len(c) != 3
        or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255 for v in c)
    ):
        raise ConfigError(f"classes: {what}: colour {c!r} is not three integers in 0..255")
    return (c[0], c[1], c[2])
