import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pixelwise.data import DigitsScenes
from pixelwise.data.transforms import (
    EvalTransform,
    RandomScale,
    TrainTransform,
    TransformedDataset,
    default_normalization,
    mask_to_tensor,
    resize_nearest,
    to_tensor,
)
from pixelwise.errors import ConfigError

MEAN, STD = default_normalization(3)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_to_tensor_and_mask_to_tensor():
    img = np.arange(24, dtype=np.uint8).reshape(2, 4, 3) * 10
    t = to_tensor(img, MEAN, STD)
    assert t.dtype == torch.float32 and t.shape == (3, 2, 4)
    expect = (img.transpose(2, 0, 1) / 255.0 - np.array(MEAN)[:, None, None]) / np.array(STD)[
        :, None, None
    ]
    np.testing.assert_allclose(t.numpy(), expect, atol=1e-6)
    gray = to_tensor(img[..., :1], *default_normalization(1))
    assert gray.shape == (1, 2, 4)
    m = mask_to_tensor(np.array([[0, 255]], np.uint8))
    assert m.dtype == torch.int64 and m.tolist() == [[0, 255]]
    assert default_normalization(1) == ((0.449,), (0.226,))
    with pytest.raises(ConfigError):
        to_tensor(img, *default_normalization(1))
    with pytest.raises(ConfigError):
        default_normalization(2)


def test_eval_transform():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    mask = np.ones((5, 7), np.uint8)
    x, y = EvalTransform(MEAN, STD)(img, mask)
    torch.testing.assert_close(x, to_tensor(img, MEAN, STD))
    assert y.shape == (5, 7) and y.dtype == torch.int64


def test_padding_is_mean_and_ignore():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (10, 12), dtype=np.uint8)
    t = TrainTransform(32, MEAN, STD, scale=(1.0, 1.0), hflip=False)
    x, y = t(img, mask, gen(0))
    assert x.shape == (3, 32, 32) and y.shape == (32, 32)
    inside = y != 255
    assert int(inside.sum()) == 120
    assert torch.all(x[:, ~inside] == 0)
    ys, xs = torch.nonzero(inside, as_tuple=True)
    y0, x0 = int(ys.min()), int(xs.min())
    torch.testing.assert_close(x[:, y0 : y0 + 10, x0 : x0 + 12], to_tensor(img, MEAN, STD))
    assert torch.equal(y[y0 : y0 + 10, x0 : x0 + 12], mask_to_tensor(mask))


def test_rectangular_crop_and_determinism():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (40, 50), dtype=np.uint8)
    t = TrainTransform((16, 24), MEAN, STD)
    a, b = t(img, mask, gen(7)), t(img, mask, gen(7))
    assert a[0].shape == (3, 16, 24) and a[1].shape == (16, 24)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    outs = {t(img, mask, gen(s))[0].sum().item() for s in range(5)}
    assert len(outs) > 1


def test_extra_ops_slot_in_before_crop():
    seen = []

    def probe(image, mask, generator, weights=None):
        seen.append((image.dtype, float(image.min()), float(image.max()), tuple(mask.shape)))
        return 1.0 - image, mask, weights

    img = np.zeros((20, 20, 3), np.uint8)
    t = TrainTransform(8, MEAN, STD, scale=(1.0, 1.0), hflip=False, extra_ops=[probe])
    assert t.ops[0] is probe and len(t.ops) == 2
    x, _ = t(img, np.zeros((20, 20), np.uint8), gen(0))
    assert seen == [(torch.float32, 0.0, 0.0, (20, 20))]
    torch.testing.assert_close(x, to_tensor(np.full((8, 8, 3), 255, np.uint8), MEAN, STD))


def test_bad_options():
    for kw in ({"crop_size": 0}, {"crop_size": (8, 8, 8)}, {"scale": (0.0, 1.0)}):
        with pytest.raises(ConfigError):
            TrainTransform(**{"crop_size": 8, "mean": MEAN, "std": STD, **kw})
    with pytest.raises(ConfigError):
        TrainTransform(8, MEAN, (1.0, 0.0, 1.0))


def test_resize_nearest_keeps_values():
    m = torch.tensor([[1, 2], [3, 4]])
    assert resize_nearest(m, (4, 4)).tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4]] + [
        [3, 3, 4, 4]
    ]
    assert resize_nearest(m, (1, 1)).tolist() == [[4]]
    x, y, w = RandomScale((2.0, 2.0))(torch.rand(3, 2, 2), m, gen(0))
    assert x.shape == (3, 4, 4) and torch.equal(y, resize_nearest(m, (4, 4))) and w is None


transform_params = st.fixed_dictionaries(
    {
        "h": st.integers(1, 40),
        "w": st.integers(1, 40),
        "crop": st.tuples(st.integers(1, 48), st.integers(1, 48)),
        "lo": st.floats(0.3, 1.5),
        "spread": st.floats(0.0, 1.0),
        "hflip": st.booleans(),
        "ignore": st.sampled_from([255, 11]),
        "seed": st.integers(0, 2**31 - 1),
    }
)


@settings(max_examples=60, deadline=None)
@given(p=transform_params)
def test_no_new_label_values(p):
    rng = np.random.default_rng(p["seed"])
    labels = rng.choice(np.array([0, 1, 4, 9, 10, p["ignore"]], np.uint8), rng.integers(1, 5))
    mask = rng.choice(labels, (p["h"], p["w"])).astype(np.uint8)
    img = rng.integers(0, 256, (p["h"], p["w"], 3), dtype=np.uint8)
    t = TrainTransform(
        p["crop"], MEAN, STD, (p["lo"], p["lo"] + p["spread"]), p["hflip"], p["ignore"]
    )
    x, y = t(img, mask, gen(p["seed"]))
    assert x.shape == (3, *p["crop"]) and y.shape == p["crop"] and y.dtype == torch.int64
    assert set(torch.unique(y).tolist()) <= set(labels.tolist()) | {p["ignore"]}
    assert torch.isfinite(x).all()


LEVEL = np.array([30, 80, 130, 180, 230], np.uint8)  # image value that encodes each label


@settings(max_examples=40, deadline=None)
@given(p=transform_params, block=st.integers(6, 12))
def test_image_and_mask_stay_aligned(p, block):
    rng = np.random.default_rng(p["seed"])
    gh, gw = -(-p["h"] // 4) + 1, -(-p["w"] // 4) + 1
    grid = rng.integers(0, 5, (gh, gw))
    mask = np.kron(grid, np.ones((block, block), np.int64)).astype(np.uint8)
    img = np.repeat(LEVEL[mask][:, :, None], 3, axis=2)
    t = TrainTransform(p["crop"], MEAN, STD, (p["lo"], p["lo"] + p["spread"]), p["hflip"])
    x, y = t(img, mask, gen(p["seed"]))
    pixel = (x * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]) * 255
    r = 2
    h, w = y.shape
    for i in range(r, h - r):
        for j in range(r, w - r):
            lab = int(y[i, j])
            if lab == 255:
                continue
            window = y[i - r : i + r + 1, j - r : j + r + 1]
            if torch.all(window == lab):
                assert torch.all((pixel[:, i, j] - float(LEVEL[lab])).abs() < 2.0), (i, j, lab)


def test_transformed_dataset_reproducible():
    base = DigitsScenes("train", num_images=4, min_size=32, max_size=40)
    ds = TransformedDataset(base, TrainTransform(24, MEAN, STD), seed=3)
    assert len(ds) == 4
    backwards = [ds[i] for i in (3, 2, 1, 0)][::-1]
    forwards = [ds[i] for i in range(4)]
    for (a, b), (c, d) in zip(forwards, backwards, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert forwards[0][0].shape == (3, 24, 24) and forwards[0][1].dtype == torch.int64
    ds.set_epoch(1)
    epoch1 = [ds[i][0] for i in range(4)]
    assert any(not torch.equal(a, b[0]) for a, b in zip(epoch1, forwards, strict=True))
    ds.set_epoch(0)
    assert torch.equal(ds[2][0], forwards[2][0])
    other = TransformedDataset(base, TrainTransform(24, MEAN, STD), seed=4)
    assert any(not torch.equal(other[i][0], forwards[i][0]) for i in range(4))
    plain = TransformedDataset(base, EvalTransform(MEAN, STD))
    x, y = plain[0]
    assert x.shape[1:] == y.shape == base[0].mask.shape


def test_same_batches_with_and_without_workers():
    base = DigitsScenes("val", num_images=8, min_size=32, max_size=48)
    ds = TransformedDataset(base, TrainTransform(32, MEAN, STD), seed=5)
    ds.set_epoch(3)
    loader = torch.utils.data.DataLoader
    single = list(loader(ds, batch_size=4, num_workers=0))
    multi = list(loader(ds, batch_size=4, num_workers=2))
    for (a, b), (c, d) in zip(single, multi, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert ds.classes == base.classes and ds.channels == 3 and ds.names == base.names


def test_persistent_workers_follow_set_epoch():
    base = DigitsScenes("val", num_images=4, min_size=32, max_size=40)
    ds = TransformedDataset(base, TrainTransform(24, MEAN, STD), seed=2)
    loader = torch.utils.data.DataLoader
    persistent = loader(ds, batch_size=2, num_workers=2, persistent_workers=True)
    got, expected = [], []
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        got.append(list(persistent))
        expected.append(list(loader(ds, batch_size=2, num_workers=0)))
    for g, e in zip(got, expected, strict=True):
        for (a, b), (c, d) in zip(g, e, strict=True):
            assert torch.equal(a, c) and torch.equal(b, d)
    assert not torch.equal(got[0][0][0], got[1][0][0])  # the epochs really differ


def test_weight_maps_travel_with_the_sample():
    base = DigitsScenes("val", num_images=2, min_size=32, max_size=40)
    calls = []

    def weights(i, mask):
        calls.append(i)
        return np.where(mask > 0, 2.0, 1.0).astype(np.float32)

    t = TrainTransform(24, MEAN, STD, rotate=10, elastic=2)
    ds = TransformedDataset(base, t, seed=1, weights=weights)
    x, y, w = ds[1]
    assert calls == [1] and x.shape == (3, 24, 24) and w.shape == y.shape == (24, 24)
    assert torch.all(w[y == 255] <= 2.0) and torch.all(w >= 0)
    assert torch.all(w[(y > 0) & (y != 255)] > 1.0)  # digit pixels keep (mostly) weight 2
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert len(batch) == 3 and batch[2].shape == (2, 24, 24)
    plain = TransformedDataset(base, EvalTransform(MEAN, STD), weights=weights)
    x, y, w = plain[0]
    assert torch.equal(w, torch.from_numpy(weights(0, base[0].mask)))


def test_samples_are_transformed_with_one_thread_and_threads_restored():
    base = DigitsScenes("val", num_images=1, min_size=32, max_size=32)
    seen = []

    def probe(image, mask, generator):
        seen.append(torch.get_num_threads())
        return EvalTransform(MEAN, STD)(image, mask)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        TransformedDataset(base, probe)[0]
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
