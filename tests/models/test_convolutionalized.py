import json

import pytest
import torch
from safetensors.torch import save_file

from pixelwise.data import DIGITS_CLASSES
from pixelwise.dense import lenet
from pixelwise.errors import ConfigError
from pixelwise.heatmap import CLASSIFIER_FILE, FORMAT, META_FILE, load_patch_classifier
from pixelwise.models import build, transfer_weights
from pixelwise.models.convolutionalized import classifier_state, mirror_pad
from pixelwise.training import TrainConfig, train

K = DIGITS_CLASSES.num_classes


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A randomly initialised patch classifier saved as train_patch_classifier saves it."""
    out = tmp_path_factory.mktemp("classifier")
    arch = {"num_classes": K, "in_channels": 3, "padding": 0, "input_size": 32}
    torch.manual_seed(1)
    model = lenet(**arch)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / CLASSIFIER_FILE))
    meta = {
        "format": FORMAT,
        "architecture": {"name": "lenet", "kwargs": arch},
        "patch_size": 32,
        "classes": DIGITS_CLASSES.to_dict(),
        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
    }
    (out / META_FILE).write_text(json.dumps(meta))
    return out


@pytest.mark.parametrize("size", [(1, 1), (2, 7), (37, 53), (97, 131)])
def test_output_has_the_input_size(size):
    torch.manual_seed(0)
    net = build("convolutionalized", 3, in_channels=1, width=0.5).eval()
    assert (net.num_classes, net.in_channels, net.border) == (3, 1, 0)
    with torch.no_grad():
        y = net(torch.randn(2, 1, *size))
    assert y.shape == (2, 3, *size) == (2, 3, *net.output_size(*size))


def test_mirror_pad_repeats_reflections():
    x = torch.arange(3.0).reshape(1, 1, 1, 3)
    assert mirror_pad(x, 0, 0, 5, 2).flatten().tolist() == [1, 0, 1, 2, 1, 0, 1, 2, 1, 0]
    tall = mirror_pad(x, 2, 1, 0, 0)
    assert tall.shape == (1, 1, 4, 3) and (tall == x).all()
    assert mirror_pad(x[..., :1], 1, 2, 3, 0).flatten().tolist() == [0.0] * 16


def test_bad_patch_size_is_a_config_error():
    with pytest.raises(ConfigError, match="patch_size"):
        build("convolutionalized", 3, patch_size=8)


def test_scores_equal_the_classifier_on_centred_windows(classifier_dir):
    classifier, _ = load_patch_classifier(classifier_dir)
    net = build("convolutionalized", K).eval()
    state = {k: v for k, v in classifier.state_dict().items()}
    copied = transfer_weights(net, classifier_state(state, net))
    assert len(copied) == len(state) == 10  # every classifier tensor, by name
    s, pad, win = net.stride, net.pad[0], 32
    torch.manual_seed(0)
    x = torch.randn(1, 3, 61, 75)
    with torch.no_grad():
        scores = net.scores(x)
        for i in range(scores.shape[2]):
            for j in range(scores.shape[3]):
                top, left = i * s - pad, j * s - pad
                if top < 0 or left < 0 or top + win > 61 or left + win > 75:
                    continue  # windows reaching into the mirrored border
                expected = classifier(x[:, :, top : top + win, left : left + win])
                torch.testing.assert_close(scores[0, :, i, j], expected[0], atol=1e-4, rtol=1e-4)
        # at step 0 the upsampling is bilinear and score [i, j] sits at its window's centre
        # (i * s - 0.5, j * s - 0.5): pixel i * s is 0.5 px below it (weights 7/8 for row i, 1/8
        # for row i + 1), pixel j * s - 1 is 0.5 px left of it (7/8 column j, 1/8 column j - 1)
        y = net(x)
        i, j = 5, 6
        rows = (scores[0, :, i, :] * 7 + scores[0, :, i + 1, :]) / 8
        want = (rows[:, j] * 7 + rows[:, j - 1]) / 8
        torch.testing.assert_close(y[0, :, i * s, j * s - 1], want, atol=1e-5, rtol=1e-5)


def test_train_init_from_a_patch_classifier(classifier_dir, digits_folder, tmp_path):
    cfg = TrainConfig(
        model="convolutionalized",
        init_from=str(classifier_dir),
        data=str(digits_folder),
        out=str(tmp_path / "run"),
        epochs=1,
        batch_size=4,
        crop_size=40,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.0,
        schedule="constant",
        hflip=False,
        overlays=0,
        device="cpu",
    )
    summary = train(cfg)
    assert summary["init"].startswith("initialised ")
    copied = int(summary["init"].split()[1])
    assert copied > 0
    assert (tmp_path / "run" / "best.safetensors").is_file()


def test_init_from_a_folder_that_is_neither_is_a_config_error(digits_folder, tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = TrainConfig(
        model="convolutionalized",
        init_from=str(tmp_path / "empty"),
        data=str(digits_folder),
        out=str(tmp_path / "run"),
        epochs=1,
        device="cpu",
    )
    with pytest.raises(ConfigError, match="not a pixelwise run"):
        train(cfg)
