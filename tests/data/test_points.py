import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixelwise.data import DigitsScenes
from pixelwise.data.points import PointLabels, sample_points
from pixelwise.errors import ConfigError
from pixelwise.losses import pixel_cross_entropy


def test_counts_per_class_and_subset_of_the_original():
    rng = np.random.default_rng(0)
    mask = rng.choice(np.array([0, 1, 2, 255], np.uint8), (30, 40), p=[0.6, 0.3, 0.05, 0.05])
    mask[0, 0] = 7  # a class with a single pixel: kept
    sparse = sample_points(mask, 5, np.random.default_rng(1))
    assert sparse.shape == mask.shape and sparse.dtype == mask.dtype
    kept = sparse != 255
    assert np.array_equal(sparse[kept], mask[kept])  # a subset of the original labels
    for c in (0, 1, 2):
        assert int((sparse == c).sum()) == 5
    assert int((sparse == 7).sum()) == 1
    assert int(kept.sum()) == 16
    few = sample_points(mask, 10_000, np.random.default_rng(1))
    assert np.array_equal(few, mask)  # fewer labelled pixels than n: all of them


def test_seeded_determinism():
    mask = np.random.default_rng(3).integers(0, 4, (25, 25), dtype=np.uint8)
    a = sample_points(mask, 3, np.random.default_rng(11))
    b = sample_points(mask, 3, np.random.default_rng(11))
    c = sample_points(mask, 3, np.random.default_rng(12))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_ignore_index_is_never_sampled_and_bad_n_is_refused():
    mask = np.full((5, 5), 11, np.uint8)
    mask[2, 2] = 1
    out = sample_points(mask, 4, np.random.default_rng(0), ignore_index=11)
    assert int((out != 11).sum()) == 1 and out[2, 2] == 1
    for n in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="--points"):
            sample_points(mask, n, np.random.default_rng(0))


def test_point_labels_fixed_per_image_for_the_whole_run():
    base = DigitsScenes("val", num_images=4, min_size=32, max_size=40)
    pts = PointLabels(base, 5, seed=3)
    first = [pts[i].mask.copy() for i in range(4)]
    fresh = PointLabels(base, 5, seed=3)  # another process / epoch: the same clicks
    for i in (3, 1, 0, 2):
        assert np.array_equal(fresh[i].mask, first[i])
        assert np.array_equal(pts[i].mask, first[i])
        assert np.array_equal(pts[i].image, base[i].image)
    other = PointLabels(base, 5, seed=4)
    assert any(not np.array_equal(other[i].mask, first[i]) for i in range(4))
    assert not np.array_equal(first[0], first[1])  # images get different clicks
    for i in range(4):
        present = set(np.unique(base[i].mask).tolist())
        counts = np.bincount(first[i][first[i] != 255], minlength=11)
        assert set(np.flatnonzero(counts).tolist()) == present
        assert all(counts[c] == min(5, int((base[i].mask == c).sum())) for c in present)
    assert pts.classes == base.classes and pts.names == base.names and len(pts) == 4


def test_loss_with_points_is_the_mean_over_the_clicked_pixels():
    torch.manual_seed(0)
    mask = np.random.default_rng(0).integers(0, 3, (12, 12), dtype=np.uint8)
    sparse = torch.from_numpy(sample_points(mask, 2, np.random.default_rng(0)).astype(np.int64))
    logits = torch.randn(1, 3, 12, 12)
    nll = -F.log_softmax(logits, 1)[0]
    ys, xs = torch.nonzero(sparse != 255, as_tuple=True)
    assert len(ys) == 6
    expected = nll[sparse[ys, xs], ys, xs].mean()
    got = pixel_cross_entropy(logits, sparse[None])
    torch.testing.assert_close(got, expected)
    # a dense mask with the same per-pixel losses gives the same value: normalised by count
    dense = torch.full((1, 12, 12), 255)
    dense[0, :6, :] = sparse[ys[0], xs[0]]
    nll_dense = nll[sparse[ys[0], xs[0]], :6, :].mean()
    torch.testing.assert_close(pixel_cross_entropy(logits, dense), nll_dense)


def test_auto_class_weights_with_points_come_from_the_clicked_pixels(digits_folder, tmp_path):
    """``--points N --class-weights auto``: median frequency of the point labels (what the
    annotator drew), not of the dense masks; N points per present class give weights near 1."""
    import json

    from pixelwise.data import open_dataset
    from pixelwise.data.balance import class_pixel_counts, median_frequency_weights
    from pixelwise.training import TrainConfig, train

    common = dict(
        data=str(digits_folder), epochs=1, model="unet_same", batch_size=4, crop_size=32,
        model_args={"depth": 2, "base_width": 4}, overlays=0, device="cpu",
        class_weights="auto", seed=3,
    )  # fmt: skip
    train(TrainConfig(out=str(tmp_path / "p"), points=5, **common))
    train(TrainConfig(out=str(tmp_path / "d"), **common))
    used = json.loads((tmp_path / "p" / "config.json").read_text())["class_weights"]
    dense = json.loads((tmp_path / "d" / "config.json").read_text())["class_weights"]
    ds = open_dataset(digits_folder, "train")
    want = median_frequency_weights(*class_pixel_counts(PointLabels(ds, 5, seed=3)))
    assert used == pytest.approx(want)
    assert dense == pytest.approx(median_frequency_weights(*class_pixel_counts(ds)))
    assert max(used) / min(used) < max(dense) / min(dense)
