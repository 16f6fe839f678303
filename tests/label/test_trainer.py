"""The live trainer: masked loss on the labelled pixels, checkpoints as a normal run directory."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from pixelwise.data.io import write_image
from pixelwise.data.transforms import to_tensor
from pixelwise.errors import ConfigError
from pixelwise.label.project import ERASE, Project, Stroke
from pixelwise.label.trainer import Trainer, TrainerOptions, mean_entropy
from pixelwise.predict import Segmenter
from pixelwise.runs import load_run, read_config

FAST = dict(
    model_args={"depth": 2, "base_width": 4},
    crop=32,
    batch_size=2,
    publish_every=0.2,
    score_seconds=0.5,
    threads=1,
    device="cpu",
    lr=1e-2,
)


def halves(folder, n=3, size=(32, 48)):
    """Images dark on the left half, bright on the right (with noise)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    h, w = size
    for i in range(n):
        img = np.where(np.arange(w)[None, :] < w // 2, 40, 210).astype(np.int16)
        img = np.broadcast_to(img, (h, w)) + rng.integers(-20, 20, (h, w))
        write_image(folder / f"h{i}.png", np.clip(img, 0, 255).astype(np.uint8))
    return folder


def label_halves(project, stem="h0"):
    project.apply(
        stem,
        [
            Stroke(0, 3.0, ((6.0, 4.0), (6.0, 28.0))),
            Stroke(1, 3.0, ((40.0, 4.0), (40.0, 28.0))),
        ],
    )


def test_trains_on_labelled_pixels_and_publishes_a_normal_run(tmp_path):
    images = halves(tmp_path / "in")
    project = Project.open(images, "dark,bright", tmp_path / "proj")
    try:
        trainer = Trainer(project, options=TrainerOptions(**FAST))
        assert trainer.live.predict("h1", project) is None  # nothing published yet
        assert project.channels == 1
        label_halves(project)
        torch.manual_seed(0)
        for _ in range(6):
            trainer.train_for(0, clock=lambda: 0.0)  # one step each
        steps = trainer.train_for(1.0)
        assert steps >= 1 and trainer.steps == 6 + steps
        version = trainer.publish()
        assert version == 1
        run = tmp_path / "proj" / "run"
        config = read_config(run)
        assert config["classes"]["names"] == ["dark", "bright"]
        assert config["model"]["kwargs"]["in_channels"] == 1
        loaded = load_run(run)
        assert loaded.info["step"] == trainer.steps
        seg = Segmenter.from_run(run, device="cpu")
        image = seg.read(images / "h1.png")
        mask = seg.predict(image)
        assert mask.shape == (32, 48)
        pred = trainer.live.predict("h1", project)
        assert pred.version == 1 and pred.labels.shape == (32, 48)
        np.testing.assert_array_equal(pred.labels, mask)
        assert pred.entropy.dtype == np.uint8 and pred.confidence.max() <= 1.0
        assert trainer.score_unlabelled(5.0) == 1  # h2 (h1 was scored by its prediction)
        assert set(trainer.live.scores) >= {"h1", "h2"}
    finally:
        project.close()


def test_learns_the_two_halves_from_two_strokes(tmp_path):
    images = halves(tmp_path / "in", size=(48, 96))
    project = Project.open(images, "dark,bright", tmp_path / "proj")
    try:
        torch.manual_seed(0)
        trainer = Trainer(project, options=TrainerOptions(**FAST))
        project.apply(
            "h0",
            [
                Stroke(0, 3.0, ((14.0, 6.0), (30.0, 40.0))),
                Stroke(1, 3.0, ((66.0, 6.0), (80.0, 40.0))),
            ],
        )
        for _ in range(40):
            trainer.train_for(0, clock=lambda: 0.0)
        trainer.publish()
        pred = trainer.live.predict("h2", project)  # an image without a stroke
        truth = np.broadcast_to(np.arange(96)[None, :] >= 48, (48, 96))
        assert (pred.labels == truth).mean() > 0.9
    finally:
        project.close()


def test_background_thread_publishes_and_stops(tmp_path):
    images = halves(tmp_path / "in")
    project = Project.open(images, "dark,bright", tmp_path / "proj")
    trainer = Trainer(project, options=TrainerOptions(**FAST))
    try:
        trainer.start()
        time.sleep(0.3)
        assert trainer.status()["state"] == "waiting" and trainer.live.version == 0
        label_halves(project)
        deadline = time.monotonic() + 60
        while trainer.live.version < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert trainer.live.version >= 2, trainer.status()
        assert trainer.status()["error"] is None
    finally:
        trainer.stop()
        project.close()
    assert trainer.status()["state"] == "stopped"


def test_fine_tune_from_a_run_and_continue_the_project_model(tmp_path):
    images = halves(tmp_path / "in")
    first = Project.open(images, "dark,bright", tmp_path / "p1")
    try:
        trainer = Trainer(first, options=TrainerOptions(**FAST))
        label_halves(first)
        trainer.train_for(0, clock=lambda: 0.0)
        trainer.publish()
    finally:
        first.close()
    source = tmp_path / "p1" / "run"

    second = Project.open(images, "dark,bright", tmp_path / "p2")
    try:
        tuned = Trainer(second, run=source, options=TrainerOptions(**FAST))
        assert "fine-tuned from run" in tuned.origin
        assert tuned.live.version == 1  # the run's weights predict at once
        assert tuned.live.predict("h0", second).labels.shape == (32, 48)
        label_halves(second, "h1")
        tuned.train_for(0, clock=lambda: 0.0)
        tuned.publish()
        assert "fine-tuned from run" in read_config(tmp_path / "p2" / "run")["label"]["origin"]
    finally:
        second.close()

    again = Project.open(images, None, tmp_path / "p2")
    try:
        logs = []
        cont = Trainer(again, options=TrainerOptions(**FAST), log=logs.append)
        assert cont.continued and cont.live.version == 1
        assert any("continued" in line for line in logs)
        with pytest.raises(ConfigError, match=r"already has its own model"):
            Trainer(again, run=tmp_path / "p1" / "run2", options=TrainerOptions(**FAST))
    finally:
        again.close()

    third = Project.open(images, "sky,ground", tmp_path / "p3")
    try:
        with pytest.raises(ConfigError, match=r"--run .*dark,bright.*differ.*sky,ground"):
            Trainer(third, run=source, options=TrainerOptions(**FAST))
    finally:
        third.close()


def test_entropy_is_normalised():
    uniform = torch.full((4, 2, 2), 0.25)
    assert torch.allclose(mean_entropy(uniform), torch.ones(2, 2))
    sure = torch.zeros(4, 2, 2)
    sure[1] = 1
    assert torch.allclose(mean_entropy(sure), torch.zeros(2, 2), atol=1e-6)


def test_crops_hold_labelled_pixels(tmp_path):
    images = halves(tmp_path / "in", n=1, size=(20, 24))  # smaller than the crop: padded
    project = Project.open(images, "dark,bright", tmp_path / "proj")
    try:
        trainer = Trainer(project, options=TrainerOptions(**FAST))
        project.apply("h0", [Stroke(1, 1.0, ((20.0, 10.0),))])
        x, y, raw, feats = trainer._batch()
        assert feats is None  # no filter bank in this model
        assert x.shape == (2, 1, 32, 32) and y.shape == (2, 32, 32)
        assert ((y != ERASE).sum(dim=(1, 2)) > 0).all()
        assert raw.shape == (2, 1, 32, 32) and raw.dtype == torch.uint8  # for the CRF loss
    finally:
        project.close()


def test_augmentations_keep_image_and_labels_aligned(tmp_path):
    images = halves(tmp_path / "in", n=1, size=(40, 40))
    project = Project.open(images, "dark,bright", tmp_path / "proj")
    try:
        opts = TrainerOptions(**{**FAST, "rotate90": True, "jitter": 0.2, "crop": 40})
        trainer = Trainer(project, options=opts)
        label_halves(project)  # dark stroke at x=6, bright stroke at x=40 (clipped)
        image = project.image("h0", 1)
        mask = project.mask("h0")
        for _ in range(20):
            out, labels, _ = trainer._augment(image, mask, None)
            # dark labelled pixels stay dark, bright ones bright, whatever the turn
            assert out[labels == 0].mean() < 128 < out[labels == 1].mean()
            assert (labels != ERASE).sum() == (mask != ERASE).sum()
    finally:
        project.close()


def test_the_crf_loss_is_part_of_the_step_when_asked(tmp_path):
    """With ``crf_weight`` the step's loss is the clicks' cross-entropy plus the weighted CRF
    loss of the whole crop: the same weights and batch give a larger loss than without."""
    images = halves(tmp_path / "in", n=1)
    project = Project.open(images, "dark,bright", tmp_path / "proj")
    try:
        label_halves(project)
        losses = []
        for weight in (0.0, 5.0):
            torch.manual_seed(0)
            options = TrainerOptions(**FAST, crf_weight=weight, seed=3)
            trainer = Trainer(project, out=tmp_path / f"r{weight}", options=options)
            trainer.train_for(0, clock=lambda: 0.0)
            losses.append(trainer.losses[-1])
        assert losses[1] > losses[0] > 0
    finally:
        project.close()


def test_cached_filter_bank_features_match_the_crops(tmp_path):
    """A filter-bank model's features are computed once per image and cropped with the image:
    away from the crop's edge (the bank's halo) they equal the features of the crop itself,
    also after flips and quarter turns; the published run rebuilds the same model."""
    images = halves(tmp_path / "in", n=1, size=(200, 240))
    project = Project.open(images, "dark,bright", tmp_path / "proj")
    try:
        args = {"depth": 2, "base_width": 4, "filter_bank": True}
        opts = {**FAST, "model_args": args, "crop": 160, "rotate90": True}
        trainer = Trainer(project, options=TrainerOptions(**opts))
        label_halves(project)
        bank = trainer.model.features
        for _ in range(3):
            x, y, raw, feats = trainer._batch()
            assert feats is not None and feats.dtype == torch.float16
            inner = (slice(None), slice(None), slice(60, 100), slice(60, 100))
            expected = bank(x)[inner]
            assert torch.allclose(feats[inner].float(), expected, atol=2e-2, rtol=1e-2)
        trainer.train_for(0.0)
        trainer.publish()
        loaded = load_run(trainer.out, "best")
        assert loaded.model.features is not None
        with torch.no_grad():
            assert loaded.model(x).shape == (2, 2, 160, 160)
    finally:
        project.close()


def test_the_page_predicts_labelled_images_from_the_cached_features(tmp_path, monkeypatch):
    """The live model reuses the trainer's features of a labelled image (cut back from the
    crop-size padding): the bank is not run again, and the prediction is the one the model
    computes from the image itself (up to the cache's float16)."""
    images = halves(tmp_path / "in", n=2, size=(26, 45))  # under the crop's 32 px in height
    project = Project.open(images, "dark,bright", tmp_path / "proj")
    try:
        args = {"depth": 2, "base_width": 4, "filter_bank": True}
        trainer = Trainer(project, options=TrainerOptions(**{**FAST, "model_args": args}))
        label_halves(project, "h0")
        trainer.train_for(5, clock=iter(range(10**6)).__next__)
        trainer.publish()
        assert "h0" in trainer.features and "h1" not in trainer.features
        assert trainer.features.peek("h0").shape == (48, 32, 45)
        model, _ = trainer.live.current()
        image = project.image("h0", 1)
        with torch.no_grad():
            own = torch.softmax(model(to_tensor(image, trainer.mean, trainer.std)[None]), 1)[0]
        calls = []
        monkeypatch.setattr(model.features, "forward", lambda x: calls.append(x) or 1 / 0)
        pred = trainer.live.predict("h0", project)
        assert not calls  # the bank did not run
        torch.testing.assert_close(
            torch.from_numpy(pred.confidence), own.max(0).values, atol=2e-2, rtol=0
        )
        with pytest.raises(ZeroDivisionError):  # an unlabelled image runs the bank
            trainer.live.predict("h1", project)
    finally:
        project.close()


def test_filter_bank_model_trains_on_images_smaller_than_the_crop(tmp_path):
    """An image under the crop size is padded as its crops are, and its features cached: in
    the image, equal to the features the model computes on the padded crop."""
    images = halves(tmp_path / "in", n=1, size=(200, 240))
    small = halves(tmp_path / "small", n=1, size=(100, 170))
    (small / "h0.png").rename(images / "s0.png")
    project = Project.open(images, "dark,bright", tmp_path / "proj")
    try:
        args = {"depth": 2, "base_width": 4, "filter_bank": True}
        opts = {**FAST, "model_args": args, "crop": 160}
        trainer = Trainer(project, options=TrainerOptions(**opts))
        label_halves(project, "h0")
        label_halves(project, "s0")
        for _ in range(4):
            x, y, _, feats = trainer._batch()
            assert x.shape == (2, 1, 160, 160) and feats.shape == (2, 48, 160, 160)
            own = trainer.model.features(x)
            inner = (slice(None), slice(None), slice(60, 100), slice(60, 100))
            torch.testing.assert_close(feats[inner].float(), own[inner], atol=2e-2, rtol=1e-2)
        assert trainer.features.peek("s0").shape == (48, 160, 170)  # padded to the crop's height
        assert trainer.train_for(0.0) == 1
    finally:
        project.close()


def test_features_past_the_cache_budget_are_computed_per_crop(tmp_path):
    """The cache keeps what fits and evicts nothing: the image past the budget trains on
    features the model computes on each crop (no whole-image recomputation per step)."""
    images = halves(tmp_path / "in", n=2, size=(200, 240))  # 48 x 200 x 240 x 2 B = 4.4 MiB
    project = Project.open(images, "dark,bright", tmp_path / "proj")
    try:
        args = {"depth": 2, "base_width": 4, "filter_bank": True}
        opts = {**FAST, "model_args": args, "crop": 160, "feature_cache_mb": 6}
        trainer = Trainer(project, options=TrainerOptions(**opts))
        label_halves(project, "h0")
        label_halves(project, "h1")
        kinds = set()
        for _ in range(6):
            x, _, _, feats = trainer._batch()
            kinds.add(feats is None)
        assert trainer.features.stems() in (["h0"], ["h1"])  # one fits, the other never enters
        assert True in kinds  # batches holding the other image
        assert trainer.train_for(0.0) == 1
    finally:
        project.close()


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
def test_class_weights_follow_the_balance_power(power, tmp_path):
    """Weights ~ 1 / n ** balance over the labelled classes (mean 1); 0 turns them off."""
    images = halves(tmp_path / "in", n=1)
    project = Project.open(images, "dark,bright", tmp_path / "proj")
    try:
        trainer = Trainer(project, options=TrainerOptions(**{**FAST, "balance": power}))
        project.apply("h0", [Stroke(0, 3.0, ((6.0, 4.0), (6.0, 28.0)))])  # many dark pixels
        project.apply("h0", [Stroke(1, 1.0, ((40.0, 10.0), (40.0, 12.0)))])  # few bright
        n = project.class_counts().astype(float)
        w = trainer._class_weights().numpy()
        assert n[0] > 5 * n[1] > 0
        assert w.mean() == pytest.approx(1.0)
        assert w[1] / w[0] == pytest.approx((n[0] / n[1]) ** power, rel=1e-5)
    finally:
        project.close()


def test_the_published_average_warms_up_then_decays_at_ema(tmp_path):
    """The published weights are a moving average whose decay after n updates is
    min(ema, (1 + n) / (10 + n)): the first weights fade within a few steps (a fixed 0.95 keeps
    36% of them after 20 steps), then the decay is ``ema``. BatchNorm's counter is copied."""
    project = Project.open(halves(tmp_path / "img"), ["dark", "bright"], tmp_path / "p")
    trainer = Trainer(project, options=TrainerOptions(**{**FAST, "ema": 0.95}))
    avg, model = trainer.averaged, trainer.model

    def update(value: float) -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(value)
            for k, b in model.named_buffers():
                if k.endswith("num_batches_tracked"):
                    b.fill_(int(value))
        avg.update_parameters(model)

    def averaged() -> float:
        values = {round(float(v), 6) for p in avg.module.parameters() for v in p.detach().flatten()}
        assert len(values) == 1
        return values.pop()

    update(1.0)  # the first update copies
    assert averaged() == pytest.approx(1.0)
    update(2.0)  # n = 1: decay 2 / 11
    assert averaged() == pytest.approx(1 * 2 / 11 + 2 * 9 / 11, abs=1e-5)
    update(3.0)  # n = 2: decay 3 / 12
    want = (1 * 2 / 11 + 2 * 9 / 11) * 3 / 12 + 3 * 9 / 12
    assert averaged() == pytest.approx(want, abs=1e-5)
    counters = [b for k, b in avg.module.named_buffers() if k.endswith("num_batches_tracked")]
    assert counters and all(int(c) == 3 for c in counters)
    for _ in range(300):  # past the warm-up
        update(3.0)
    update(4.0)
    assert averaged() == pytest.approx(0.95 * 3 + 0.05 * 4, abs=1e-5)
    project.close()


def test_self_training_labels_only_confident_unlabelled_pixels(tmp_path):
    """``pseudo_weight``: the published average's sure classes become labels of the crops'
    unlabelled pixels; labelled pixels and unsure ones stay 255."""
    images = halves(tmp_path / "in", n=1)
    project = Project.open(images, "dark,bright", tmp_path / "proj")
    try:
        label_halves(project)
        torch.manual_seed(0)
        options = TrainerOptions(**{**FAST, "lr": 3e-2}, pseudo_weight=1.0, seed=3)
        trainer = Trainer(project, options=options)
        trainer.train_for(60, clock=iter(range(10**6)).__next__)  # 60 steps
        x, y, _, feats = trainer._batch()
        pseudo = trainer._pseudo_labels(x, y, feats)
        assert (pseudo[y != ERASE] == ERASE).all()
        with torch.no_grad():
            sure_p, teacher = torch.softmax(trainer.averaged.module(x), 1).max(1)
        sure = pseudo != ERASE
        assert (sure == ((y == ERASE) & (sure_p >= options.pseudo_threshold))).all()
        assert (pseudo[sure] == teacher[sure]).all()
        assert 0 < sure.sum() < (y == ERASE).sum()
    finally:
        project.close()


def test_options_are_checked_on_construction():
    """Each field's type and bounds (its metadata) are checked; the error names the field."""
    with pytest.raises(ConfigError, match="lr=0"):
        TrainerOptions(lr=0)
    with pytest.raises(ConfigError, match="pseudo_threshold=1.5: must be at most 1"):
        TrainerOptions(pseudo_threshold=1.5)
    with pytest.raises(ConfigError, match="batch_size=2.5: must be an integer"):
        TrainerOptions(batch_size=2.5)
    with pytest.raises(ConfigError, match="no such trainer option; the options: model, "):
        TrainerOptions.with_overrides({"learning_rate": 1e-3})
    opts = TrainerOptions.with_overrides({"model_args": {"depth": 2}, "lr": 1}, threads=None)
    assert opts.model_args == {"depth": 2} and opts.lr == 1 and opts.threads is None
    assert TrainerOptions().model_args is not TrainerOptions().model_args  # not shared


def test_the_docs_table_lists_every_option_with_its_default():
    """docs/labeling.md's table of ``--trainer`` settings is the fields' (names, defaults)."""
    import dataclasses
    import json
    import re
    from pathlib import Path

    docs = (Path(__file__).parents[2] / "docs" / "labeling.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \| (.*) \|$", docs, re.M)
    expected = [
        (f.name, json.dumps(getattr(TrainerOptions(), f.name)), f.metadata["help"])
        for f in dataclasses.fields(TrainerOptions)
    ]
    assert rows == expected


def test_crf_crops_place_some_crops_away_from_the_strokes(tmp_path):
    """``crf_crops=0``: every crop holds a labelled pixel; ``crf_crops=1``: crops lie anywhere
    in the labelled images, so on a large image with two short strokes most hold none (the CRF
    loss still acts there), and a step on such a batch trains."""
    images = halves(tmp_path / "in", n=1, size=(200, 240))
    project = Project.open(images, "dark,bright", tmp_path / "proj")
    try:
        label_halves(project)  # strokes in the top-left corner: x 6 and 40, y 4-28
        for share, out in ((0.0, "a"), (1.0, "b")):
            opts = TrainerOptions(**{**FAST, "batch_size": 16, "crf_crops": share})
            trainer = Trainer(project, out=tmp_path / out, options=opts)
            _, y, _, _ = trainer._batch()
            with_labels = int(((y != ERASE).flatten(1).any(1)).sum())
            if share == 0:
                assert with_labels == 16
            else:
                assert with_labels < 8
                trainer.train_for(0, clock=lambda: 0.0)
                assert trainer.steps == 1 and math.isfinite(trainer.losses[-1])
    finally:
        project.close()


def test_the_crf_loss_can_compare_filter_bank_features(tmp_path):
    """``crf_space=features``: the CRF term compares the crops' standardised filter-bank
    features instead of their colours, so the same weights and batch give another loss;
    an unknown space is a one-line error naming the choices."""
    images = halves(tmp_path / "in", n=1, size=(64, 64))
    project = Project.open(images, "dark,bright", tmp_path / "proj")
    try:
        label_halves(project)
        losses = []
        for space in ("image", "features"):
            torch.manual_seed(0)
            args = {"depth": 2, "base_width": 4, "filter_bank": True}
            options = TrainerOptions(
                **{**FAST, "model_args": args}, crf_weight=5.0, crf_space=space, seed=3
            )
            trainer = Trainer(project, out=tmp_path / space, options=options)
            trainer.train_for(0, clock=lambda: 0.0)
            losses.append(trainer.losses[-1])
        assert all(math.isfinite(v) for v in losses) and losses[0] != losses[1]
        with pytest.raises(ConfigError, match="crf_space.*image, features"):
            TrainerOptions(crf_space="colour")
    finally:
        project.close()


def test_bn_refresh_recomputes_the_published_batch_norm_statistics(tmp_path):
    """``bn_refresh``: the published copy's BatchNorm statistics come from crops anywhere in
    the labelled images, not the training crops' running averages; the moving average the
    trainer keeps is left as it was. Off (0), the published statistics are the average's."""
    images = halves(tmp_path / "in", n=1, size=(96, 128))
    project = Project.open(images, "dark,bright", tmp_path / "proj")
    try:
        label_halves(project)
        args = {"depth": 2, "base_width": 4, "batch_norm": True}
        for refresh in (0, 16):
            opts = TrainerOptions(**{**FAST, "model_args": args, "bn_refresh": refresh})
            trainer = Trainer(project, out=tmp_path / f"r{refresh}", options=opts)
            trainer.train_for(0, clock=lambda: 0.0)
            kept = {k: v.clone() for k, v in trainer.averaged.module.state_dict().items()}
            trainer.publish()
            published = trainer.live.current()[0].state_dict()
            stats = [k for k in kept if k.endswith("running_mean")]
            assert stats
            same = all(torch.equal(published[k], kept[k]) for k in stats)
            assert same == (refresh == 0)
            after = trainer.averaged.module.state_dict()
            assert all(torch.equal(after[k], v) for k, v in kept.items())
    finally:
        project.close()


def test_crf_space_features_needs_the_filter_bank(tmp_path):
    """``crf_space=features`` on a model without the filter bank (or with jitter, which leaves
    the features uncached) is refused in one line, before any project file; features that the
    cache's budget leaves out are computed for the crops instead."""
    with pytest.raises(ConfigError, match="crf_space=features: needs a model with the filter"):
        TrainerOptions(crf_space="features", model_args={"depth": 2}).check_model()
    with pytest.raises(ConfigError, match="jitter 0"):
        TrainerOptions(crf_space="features", jitter=0.1).check_model()
    images = halves(tmp_path / "in", n=1, size=(64, 64))
    project = Project.open(images, "dark,bright", tmp_path / "proj")
    try:
        label_halves(project)
        args = {"depth": 2, "base_width": 4, "filter_bank": True}
        opts = {**FAST, "model_args": args, "crf_space": "features", "feature_cache_mb": 0}
        trainer = Trainer(project, options=TrainerOptions(**opts))
        assert trainer._batch()[3] is None  # nothing cached at a budget of 0
        trainer.train_for(0, clock=lambda: 0.0)
        assert math.isfinite(trainer.losses[-1])
    finally:
        project.close()


def test_a_forest_teacher_is_fitted_when_the_labels_change(tmp_path):
    """``forest_weight``: a random forest on the labelled pixels' filter-bank features is
    fitted before training, and again only when the labels change; its probabilities (one
    distribution per pixel) give the dark and bright halves the classes of their strokes, and
    they are part of the step's loss. A model without the bank is refused in one line."""
    with pytest.raises(ConfigError, match="forest_weight: needs a model with the filter bank"):
        TrainerOptions(forest_weight=1.0, model_args={"depth": 2}).check_model()
    images = halves(tmp_path / "in", n=1, size=(64, 64))
    project = Project.open(images, "dark,bright", tmp_path / "proj")
    try:
        label_halves(project)
        args = {"depth": 2, "base_width": 4, "filter_bank": True}
        losses = []
        for weight in (0.0, 1.0):
            torch.manual_seed(0)
            opts = TrainerOptions(**{**FAST, "model_args": args}, forest_weight=weight, seed=3)
            trainer = Trainer(project, out=tmp_path / f"w{weight}", options=opts)
            trainer.train_for(0, clock=lambda: 0.0)
            losses.append(trainer.losses[-1])
        assert all(math.isfinite(v) for v in losses) and losses[0] != losses[1]
        teacher = trainer.teacher
        assert teacher.fits == 1
        trainer.train_for(0, clock=lambda: 0.0)
        assert teacher.fits == 1  # the same labels: the same forest
        project.apply("h0", [Stroke(1, 2.0, ((50.0, 40.0), (50.0, 56.0)))])
        trainer.train_for(0, clock=lambda: 0.0)
        assert teacher.fits == 2
        probs = teacher.probabilities(trainer.features.peek("h0")[None].float())[0]
        assert probs.shape == (2, 64, 64)
        assert torch.allclose(probs.sum(0), torch.ones(64, 64))
        labels = probs.argmax(0)
        assert (labels[:, 4:24] == 0).float().mean() > 0.9
        assert (labels[:, 40:60] == 1).float().mean() > 0.9
        plain = Trainer(project, out=tmp_path / "plain", options=TrainerOptions(**FAST))
        plain.train_for(0, clock=lambda: 0.0)
        plain.publish()  # a run without the bank: refused before a new project is written
    finally:
        project.close()
    from pixelwise.label.app import create_label_app

    with pytest.raises(ConfigError, match="forest_weight: .*a --run that has one"):
        opts = TrainerOptions(forest_weight=1.0)
        create_label_app(images, "dark,bright", tmp_path / "new", tmp_path / "plain", options=opts)
    assert not (tmp_path / "new").exists()


def test_a_step_count_stops_training_and_repeats_exactly(tmp_path):
    """``max_steps`` ends a period however long its clock allows, and two trainers of one seed
    taking the same steps end with the same weights (the bench's ``--round-steps``)."""
    images = halves(tmp_path / "in")
    weights = []
    for k in range(2):
        project = Project.open(images, "dark,bright", tmp_path / f"proj{k}")
        try:
            torch.manual_seed(0)
            trainer = Trainer(project, options=TrainerOptions(**FAST, seed=3))
            label_halves(project)
            clock = iter(range(10**6)).__next__  # one tick a call: about 50 steps in 50 ticks
            assert trainer.train_for(50, clock=clock, max_steps=4) == 4
            assert trainer.train_for(math.inf, max_steps=3) == 3 and trainer.steps == 7
            weights.append([p.detach().clone() for p in trainer.model.parameters()])
        finally:
            project.close()
    for a, b in zip(*weights, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
