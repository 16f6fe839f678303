"""Shared fixtures: small real datasets on disk, written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _few_threads():
    # xdist runs two workers on two cores: one torch thread each avoids oversubscription.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # Dataset facts (pixel counts, passing checks) are cached on disk: keep the tests' out of
    # the user's ~/.cache, one folder per test session.
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """A generic-layout dataset (train/val images + palette masks) written from the digits."""
    from pixelwise.data.digits import write_digits_folder

    root = tmp_path_factory.mktemp("digits")
    return write_digits_folder(root, num_train=24, num_val=6, seed=0, min_size=40, max_size=72)


@pytest.fixture(scope="session")
def run_dir(digits_folder, tmp_path_factory) -> Path:
    """A tiny trained run (1 epoch), shared read-only: tests that alter it work on a copy."""
    from pixelwise.training import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    train(
        TrainConfig(
            data=str(digits_folder),
            out=str(out),
            epochs=1,
            model="unet_same",
            model_args={"depth": 2, "base_width": 4},
            batch_size=4,
            crop_size=32,
            overlays=0,
            device="cpu",
        )
    )
    return out
