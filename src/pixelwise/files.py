"""Writing files so that nothing half-written is ever left behind.

Every output (checkpoints, masks, JSON, plots) is written to a temporary name in the same folder,
flushed and fsynced, then renamed over the destination, and the folder is fsynced: a crash leaves
either the old file or the new one, never a truncated one.

Commands that read files and write others check with :func:`check_outputs_apart` that no output
can overwrite an input, and drop earlier outputs from their inputs with :func:`without_outputs`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from pixelwise.errors import ConfigError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    Use for writers that want a file name (``safetensors.torch.save_file``, ``Image.save``,
    ``Figure.savefig``). On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: str | Path) -> None:
    """Make the entries of ``folder`` (a rename into it) durable: fsync the folder itself.

    Skipped silently where a folder cannot be opened or fsynced (Windows, some file systems).
    """
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``path`` only if the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()


def link_or_copy(source: str | Path, path: str | Path) -> Path:
    """Make ``path`` the file ``source`` atomically: a hard link (no bytes copied), or a copy
    where links are not possible (another file system)."""
    import shutil

    with atomic_path(path) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically. NaN is written as ``null``."""
    text = json.dumps(_nan_to_none(obj), indent=2, sort_keys=False, allow_nan=False)
    with atomic_open(path) as f:
        f.write(text + "\n")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj


def check_outputs_apart(
    inputs: Iterable[str | Path],
    out: str | Path,
    *,
    option: str = "--out",
    protect: Iterable[str | Path] = (),
) -> None:
    """Refuse an output location ``out`` (a folder or a file) that could overwrite an input.

    A ConfigError (one line naming ``option``) when ``out`` is an input file, the folder an input
    file lies in, an input folder, or lies in (or is) a ``protect``ed folder such as the run
    directory. Paths are compared resolved, symbolic links followed.
    """
    target = Path(out).resolve()
    for item in inputs:
        source = Path(item).resolve()
        if _same(target, source):
            raise ConfigError(
                f"{option} {out}: is the input {item} itself; outputs would overwrite inputs, "
                f"choose an {option} outside the input folder"
            )
        folder = source if source.is_dir() else source.parent
        if _same(target, folder):
            raise ConfigError(
                f"{option} {out}: is the folder of input {item}; outputs could overwrite inputs, "
                f"choose an {option} outside the input folder"
            )
    for item in protect:
        guarded = Path(item).resolve()
        if _same(target, guarded) or target.is_relative_to(guarded):
            raise ConfigError(
                f"{option} {out}: lies inside {item}, whose files must not change; "
                f"choose an {option} outside it"
            )


def without_outputs(files: Iterable[str | Path], out: str | Path) -> list[Path]:
    """``files`` without those in (or equal to) ``out``: what an earlier run wrote there is never
    read back as input. Paths are compared resolved, symbolic links followed; order is kept."""
    target = Path(out).resolve()
    kept = []
    for item in files:
        path = Path(item).resolve()
        if not (_same(path, target) or path.is_relative_to(target)):
            kept.append(Path(item))
    return kept


def _same(a: Path, b: Path) -> bool:
    """Resolved ``a`` and ``b`` name one file (also through hard links or case-insensitive
    file systems, where both exist)."""
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
