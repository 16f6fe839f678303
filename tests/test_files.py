"""pixelwise.files: atomic writes (the folder fsynced after the rename) and outputs kept apart
from inputs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pixelwise.errors import ConfigError
from pixelwise.files import atomic_path, check_outputs_apart, without_outputs, write_json

# --- atomic writes --------------------------------------------------------------------------


def _spy(monkeypatch) -> list[tuple[str, object]]:
    """Record os.replace and os.fsync calls, in order; an fsync as the stat of its target."""
    events: list[tuple[str, object]] = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst, *args, **kwargs):
        events.append(("replace", os.fspath(dst)))
        return real_replace(src, dst, *args, **kwargs)

    def fsync(fd):
        events.append(("fsync", os.fstat(fd)))
        return real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    return events


def test_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    target = folder / "a.json"
    events = _spy(monkeypatch)
    write_json(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"], kinds
    file_stat, folder_stat = events[0][1], events[2][1]
    assert stat.S_ISREG(file_stat.st_mode)  # the temporary file's content, before the rename
    assert events[1][1] == os.fspath(target)
    assert os.path.samestat(folder_stat, os.stat(folder))  # the folder, after it


def test_failed_write_neither_renames_nor_fsyncs_the_folder(tmp_path, monkeypatch):
    events = _spy(monkeypatch)
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert events == []
    assert list(tmp_path.iterdir()) == []


def test_folder_fsync_failure_is_ignored(tmp_path, monkeypatch):
    """Where folders cannot be fsynced (or opened, as on Windows) the write still succeeds."""
    real_fsync, real_open = os.fsync, os.open

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_json(tmp_path / "a.json", [1])
    assert (tmp_path / "a.json").read_text() == "[\n  1\n]\n"

    def no_folders(path, flags, *args, **kwargs):
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_folders)
    write_json(tmp_path / "b.json", [2])
    assert (tmp_path / "b.json").read_text() == "[\n  2\n]\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


# --- outputs apart from inputs --------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    """images/a.png, images/b.png, a run folder with best.safetensors."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        (images / name).write_bytes(b"png")
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(b"w")
    return tmp_path


def test_out_apart_from_inputs_is_accepted(tree):
    inputs = sorted((tree / "images").iterdir())
    check_outputs_apart(inputs, tree / "masks", protect=[tree / "run"])
    check_outputs_apart(inputs, tree / "images" / "masks")  # a new folder below the inputs
    check_outputs_apart([tree / "images"], tree / "masks")
    check_outputs_apart([], tree / "images")
    check_outputs_apart(inputs, tree, protect=[tree / "run"])  # the run lies in out, not out in it


@pytest.mark.parametrize(
    ("out", "clash"),
    [
        ("images", "is the folder of input"),
        ("images/../images", "is the folder of input"),
        ("images/a.png", "is the input"),
    ],
)
def test_out_that_could_overwrite_an_input_is_refused(tree, out, clash):
    inputs = sorted((tree / "images").iterdir())
    with pytest.raises(ConfigError) as err:
        check_outputs_apart(inputs, tree / out)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"--out {tree / out}: {clash}")
    assert "choose an --out outside the input folder" in message


def test_input_folder_as_out_is_refused(tree):
    with pytest.raises(ConfigError, match="is the input .*images itself"):
        check_outputs_apart([tree / "images"], tree / "images")


def test_symlinks_are_followed(tree):
    (tree / "alias").symlink_to(tree / "images", target_is_directory=True)
    (tree / "link.png").symlink_to(tree / "images" / "b.png")
    with pytest.raises(ConfigError, match="folder of input"):
        check_outputs_apart([tree / "images" / "a.png"], tree / "alias")
    with pytest.raises(ConfigError, match="folder of input"):
        check_outputs_apart([tree / "alias" / "a.png"], tree / "images")
    with pytest.raises(ConfigError, match="the input .*link.png itself"):
        check_outputs_apart([tree / "link.png"], tree / "images" / "b.png")


def test_hard_link_to_an_input_is_refused(tree):
    os.link(tree / "images" / "a.png", tree / "copy.png")
    with pytest.raises(ConfigError, match="itself"):
        check_outputs_apart([tree / "images" / "a.png"], tree / "copy.png", option="--output")


@pytest.mark.parametrize("out", ["run", "run/masks", "run/best.safetensors", "run/x/../y"])
def test_out_in_a_protected_folder_is_refused(tree, out):
    with pytest.raises(ConfigError) as err:
        check_outputs_apart([], tree / out, option="--export", protect=[tree / "run"])
    message = str(err.value)
    assert message.startswith(f"--export {tree / out}: lies inside {tree / 'run'}")
    assert "choose an --export outside it" in message and "\n" not in message


def test_protected_folder_through_a_symlink(tree):
    (tree / "alias").symlink_to(tree / "run", target_is_directory=True)
    with pytest.raises(ConfigError, match="lies inside"):
        check_outputs_apart([], tree / "alias" / "masks", protect=[tree / "run"])
    with pytest.raises(ConfigError, match="lies inside"):
        check_outputs_apart([], tree / "run" / "masks", protect=[tree / "alias"])


def test_without_outputs_drops_what_lies_in_out(tree):
    masks = tree / "images" / "masks"
    masks.mkdir()
    (masks / "a.png").write_bytes(b"mask")
    (tree / "images" / "masks-old.png").write_bytes(b"not in masks/")
    files = [
        tree / "images" / "b.png",
        masks / "a.png",
        tree / "images" / "masks-old.png",
        tree / "images" / "a.png",
        masks,
    ]
    kept = without_outputs(files, masks)
    assert kept == [files[0], files[2], files[3]]  # order kept, the same Path objects
    assert without_outputs(files, tree / "elsewhere") == files
    assert without_outputs([], masks) == []


def test_without_outputs_follows_symlinks(tree):
    masks = tree / "masks"
    masks.mkdir()
    (masks / "a.png").write_bytes(b"mask")
    (tree / "alias").symlink_to(masks, target_is_directory=True)
    (tree / "images" / "link.png").symlink_to(masks / "a.png")
    files = [tree / "alias" / "a.png", tree / "images" / "link.png", tree / "images" / "a.png"]
    assert without_outputs(files, masks) == [tree / "images" / "a.png"]
    assert without_outputs([str(masks / "a.png"), "x.png"], tree / "alias") == [Path("x.png")]
