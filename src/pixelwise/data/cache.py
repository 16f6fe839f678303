"""A small on-disk cache for facts computed from a dataset's files (class pixel counts, checks).

Entries are JSON files under ``cache_dir()/KIND/KEY.json``: ``$PIXELWISE_CACHE``, else
``$XDG_CACHE_HOME/pixelwise``, else ``~/.cache/pixelwise``. A key is a SHA-256 of everything
the fact depends on, including the absolute path, size and modification time of every file
involved, so an edited, added or removed file gives a new key (stale entries are never read,
just left behind; delete the folder to reclaim the space). The cache is best effort: an
unreadable or unwritable cache only means recomputing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pixelwise.files import write_json

__all__ = ["cache_dir", "cache_key", "entry_path", "file_signature", "load", "save"]

VERSION = 2  # bump when a cached fact's meaning changes (2: checks look at mask values)


def cache_dir() -> Path:
    """``$PIXELWISE_CACHE``, else ``$XDG_CACHE_HOME/pixelwise``, else ``~/.cache/pixelwise``."""
    if os.environ.get("PIXELWISE_CACHE"):
        return Path(os.environ["PIXELWISE_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "pixelwise"
    return Path.home() / ".cache" / "pixelwise"


def file_signature(paths: Iterable[str | Path]) -> list[list[Any]]:
    """``[absolute path, size, mtime_ns]`` per file (OSError if one is missing)."""
    out = []
    for p in paths:
        p = Path(p).absolute()
        st = p.stat()
        out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def cache_key(kind: str, *parts: Any) -> str:
    """SHA-256 hex of ``kind``, the cache version and ``parts`` (JSON-able)."""
    text = json.dumps([kind, VERSION, *parts], sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def entry_path(kind: str, key: str) -> Path:
    """Where the entry ``KEY`` of ``KIND`` lives."""
    return cache_dir() / kind / f"{key}.json"


def load(kind: str, key: str) -> dict[str, Any] | None:
    """The cached entry, or None (absent, unreadable, or not a JSON object)."""
    try:
        with open(entry_path(kind, key), encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def save(kind: str, key: str, obj: dict[str, Any]) -> Path | None:
    """Write an entry atomically; return its path, or None when the cache is not writable."""
    path = entry_path(kind, key)
    try:
        write_json(path, obj)
    except (OSError, ValueError, TypeError):
        return None
    return path
