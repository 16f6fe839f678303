import math

import numpy as np
import pytest
from scipy import ndimage

from pixelwise.data import DigitsScenes
from pixelwise.data.weights import (
    BorderWeights,
    balancing_weights,
    cutoff_distance,
    unet_weight_map,
)
from pixelwise.errors import ConfigError


def two_squares() -> np.ndarray:
    """Two 10x10 squares of class 1, columns 2..11 and 18..27: a 6-pixel gap (12..17)."""
    m = np.zeros((20, 40), np.uint8)
    m[5:15, 2:12] = 1
    m[5:15, 18:28] = 1
    return m


def test_two_squares_match_the_closed_form():
    m = two_squares()
    w = unet_weight_map(m, w0=10.0, sigma=5.0)
    wc = balancing_weights(m)
    n = m.size
    assert wc[0] == pytest.approx(n / (2 * (m == 0).sum()))
    assert wc[1] == pytest.approx(n / (2 * (m == 1).sum()))
    # gap pixel in column 14, row 10: 3 px from square A (column 11), 4 px from B (column 18)
    expected = wc[0] + 10.0 * math.exp(-((3 + 4) ** 2) / (2 * 5.0**2))
    assert w[10, 14] == pytest.approx(expected, rel=1e-6)
    # corner of the gap: distances are Euclidean (row 2, column 14: sqrt(9 + 9), sqrt(16 + 9))
    d1, d2 = math.hypot(3, 3), math.hypot(4, 3)
    expected = wc[0] + 10.0 * math.exp(-((d1 + d2) ** 2) / 50)
    assert w[2, 14] == pytest.approx(expected, rel=1e-6)
    # inside an object: the class weight only (the term is for background pixels)
    assert w[10, 5] == pytest.approx(wc[1])
    assert w.dtype == np.float32 and w.shape == m.shape


def brute_force(mask, w0, sigma, objects_of=None):
    lab = np.zeros(mask.shape, np.int64)
    k = 0
    for c in np.unique(mask):
        if c in (0, 255):
            continue
        comp, n = ndimage.label(mask == c, structure=np.ones((3, 3)))
        lab[comp > 0] = comp[comp > 0] + k
        k += n
    wc = balancing_weights(mask)[mask]
    if k < 2:
        out = wc
    else:
        d = np.sort(
            np.stack([ndimage.distance_transform_edt(lab != i) for i in range(1, k + 1)]), 0
        )
        term = w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
        out = wc + np.where((lab == 0) & (mask != 255), term, 0)
    return np.where(mask == 255, 0, out)


@pytest.mark.parametrize("seed", range(6))
def test_bounding_box_shortcut_equals_full_distance_transforms(seed):
    rng = np.random.default_rng(seed)
    blobs = ndimage.zoom(rng.integers(0, 4, (6, 8)), 8, order=0)[:45, :60]
    noise = rng.random(blobs.shape) < 0.03
    mask = np.where(noise, rng.integers(0, 4, blobs.shape), blobs).astype(np.uint8)
    mask[:3, :10] = 255
    sigma = float(rng.uniform(1.5, 6))
    got = unet_weight_map(mask, w0=10.0, sigma=sigma)
    np.testing.assert_allclose(got, brute_force(mask, 10.0, sigma), rtol=0, atol=1.1e-5)


def test_term_vanishes_beyond_the_cutoff():
    m = np.zeros((10, 200), np.uint8)
    m[:, :5] = 1
    m[:, 195:] = 1  # 190 px apart: far beyond the cutoff for sigma 5
    w = unet_weight_map(m, w0=10.0, sigma=5.0)
    assert np.allclose(w, balancing_weights(m)[m])
    assert cutoff_distance(5.0) == pytest.approx(5.0 * math.sqrt(2 * math.log(1e6)))


def test_ignore_gets_zero_and_class_weights_are_used():
    m = two_squares()
    m[0, :] = 255
    w = unet_weight_map(m, w0=0.0, class_weights=[0.5, 3.0])
    assert np.all(w[0] == 0)
    assert np.all(w[m == 0] == 0.5) and np.all(w[m == 1] == 3.0)
    with pytest.raises(ConfigError, match="--class-weights"):
        unet_weight_map(m, class_weights=[1.0])
    labelled = m != 255
    mean = unet_weight_map(m, w0=0.0)[labelled].mean()
    assert mean == pytest.approx(1.0, rel=1e-5)  # balanced default: mean 1 over labelled pixels


def test_instances_separate_touching_objects_of_one_class():
    m = np.zeros((20, 30), np.uint8)
    m[5:15, 3:13] = 1
    m[5:15, 16:26] = 1
    m[9:11, 13:16] = 1  # a bridge: one connected component
    inst = np.zeros_like(m, dtype=np.int32)
    inst[5:15, 3:13] = 7
    inst[5:15, 16:26] = 9
    inst[9:11, 13:16] = 9
    gap = (6, 14)  # background between the two squares, above the bridge
    by_class = unet_weight_map(m, sigma=3.0)
    by_instance = unet_weight_map(m, sigma=3.0, instances=inst)
    assert by_class[gap] == pytest.approx(balancing_weights(m)[0])
    assert by_instance[gap] > by_class[gap] + 1.0


def test_foreground_selects_the_object_classes():
    m = two_squares()
    m[5:15, 18:28] = 2  # the second square is another class
    both = unet_weight_map(m)
    only_one = unet_weight_map(m, foreground=[1])
    assert both[10, 14] > only_one[10, 14]
    assert only_one[10, 14] == pytest.approx(balancing_weights(m)[0])


@pytest.mark.parametrize(("kw", "message"), [({"w0": -1}, "--w0"), ({"sigma": 0}, "--sigma")])
def test_bad_parameters(kw, message):
    with pytest.raises(ConfigError, match=message):
        unet_weight_map(two_squares(), **kw)
    with pytest.raises(ConfigError, match=message):
        BorderWeights(**kw)


def test_border_weights_cache_per_index():
    ds = DigitsScenes("val", num_images=3, min_size=40, max_size=48)
    bw = BorderWeights(w0=10.0, sigma=3.0)
    calls = []
    real = bw.compute
    bw.compute = lambda mask: calls.append(1) or real(mask)
    bw.fill(ds)
    assert len(bw) == 3 and len(calls) == 3
    again = bw(1, ds[1].mask)
    assert len(calls) == 3 and np.array_equal(again, unet_weight_map(ds[1].mask, 10.0, 3.0))
    nocache = BorderWeights(sigma=3.0, cache=False)
    nocache(0, ds[0].mask)
    assert len(nocache) == 0


def test_data_weights_command_writes_one_png_per_image(digits_folder, tmp_path, capsys):
    from PIL import Image

    from pixelwise.cli import main

    out = tmp_path / "maps"
    code = main(["-q", "data", "weights", str(digits_folder), "--limit", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    files = sorted(out.glob("*_weights.png"))
    assert len(files) == 2 and "wrote 2 weight map(s)" in capsys.readouterr().out
    with Image.open(files[0]) as im:
        assert im.size[0] > 300
    assert main(["-q", "data", "weights", str(digits_folder), "--limit", "0", "--out", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--limit" in err and len(err.splitlines()) == 1


def test_write_weight_maps_renders_one_png_per_image(tmp_path):
    """The rendering lives in pixelwise.plots (layer 3); data/weights.py only computes."""
    import pixelwise.data.weights as weights_module
    from pixelwise.plots import write_weight_maps

    assert not hasattr(weights_module, "write_weight_maps")
    ds = DigitsScenes("val", num_images=3, min_size=40, max_size=48)
    written = write_weight_maps(ds, tmp_path / "maps", sigma=3.0, limit=2)
    assert [p.name for p in written] == [f"{ds.names[i]}_weights.png" for i in range(2)]
    assert all(p.is_file() for p in written)
    with pytest.raises(ConfigError, match="--limit"):
        write_weight_maps(ds, tmp_path / "x", limit=0)
