import numpy as np
import pytest

from pixelwise.data import DigitsScenes, memory, open_dataset
from pixelwise.data.memory import InMemory, decoded_bytes, plan_cache
from pixelwise.data.points import PointLabels
from pixelwise.errors import ConfigError


def test_decoded_bytes_from_headers_match_the_decoded_arrays(digits_folder):
    ds = open_dataset(digits_folder, "train")
    exact = sum(s.image.nbytes + s.mask.nbytes for s in ds)
    assert decoded_bytes(ds) == pytest.approx(exact, rel=1e-6)
    n = sum(s.mask.size for s in ds)
    assert decoded_bytes(PointLabels(ds, 3), extra_bytes_per_pixel=4) == pytest.approx(
        exact + 4 * n, rel=1e-6
    )


def test_decoded_bytes_of_generated_data_is_estimated_from_samples():
    ds = DigitsScenes("val", num_images=20, min_size=32, max_size=32)
    assert decoded_bytes(ds) == 20 * 32 * 32 * 4


def test_plan_cache_modes(monkeypatch):
    ds = DigitsScenes("val", num_images=10, min_size=32, max_size=32)
    assert plan_cache("off", ds)[0] is False
    on, note = plan_cache("on", ds)
    assert on and "--cache on" in note and "10 images" in note
    monkeypatch.setattr(memory, "available_memory", lambda: 10 * 32 * 32 * 4 * 4 + 1)
    yes, note = plan_cache("auto", ds)
    assert yes and "(auto)" in note and "<" in note
    monkeypatch.setattr(memory, "available_memory", lambda: 10 * 32 * 32 * 4 * 4 - 1)
    assert plan_cache("auto", ds)[0] is False
    monkeypatch.setattr(memory, "available_memory", lambda: None)
    no, note = plan_cache("auto", ds)
    assert not no and "unknown" in note
    with pytest.raises(ConfigError, match="--cache"):
        plan_cache("sometimes", ds)


def test_in_memory_decodes_each_sample_once(digits_folder):
    ds = open_dataset(digits_folder, "train")
    calls = []
    real = ds.__class__.__getitem__

    class Counting(type(ds)):
        def __getitem__(self, i):
            calls.append(i)
            return real(self, i)

    ds.__class__ = Counting
    cached = InMemory(ds).load()
    assert sorted(calls) == list(range(len(ds)))
    for _ in range(2):
        for i in range(len(ds)):
            assert np.array_equal(cached[i].mask, real(ds, i).mask)
    assert len(calls) == len(ds)
    assert cached.nbytes == sum(s.image.nbytes + s.mask.nbytes for s in cached)
    assert cached.classes == ds.classes and cached.names == ds.names
    assert memory.available_memory() is None or memory.available_memory() > 0
