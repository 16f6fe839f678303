"""The live model of a labeling project: a background trainer and the published model.

:class:`Trainer` fine-tunes a model on the labelled pixels of the project only (the masked
cross-entropy of :func:`pixelwise.losses.pixel_cross_entropy`: 255 = unlabelled carries no loss),
from scratch (a small ``unet_same``) or from a ``--run``, in its own thread so the page never
waits for it. Every ``publish_every`` seconds of training it publishes a checkpoint as a normal
run directory, ``PROJECT/run/`` (``config.json`` + ``last``/``best`` ``.safetensors`` and
``.json``), which ``pixelwise predict``, ``evaluate``, ``export`` and ``serve`` read as any run,
and hands a copy of the weights to :class:`LiveModel`, which answers the page: the prediction of
an image with its per-pixel entropy, and the uncertainty score (mean entropy) of each unlabelled
image that orders "next".

Batches: crops of ``crop`` pixels, each around a labelled pixel drawn uniformly from a labelled
image drawn uniformly (so each crop carries loss), flipped left-right at random; classes are
weighted by the inverse square root of their labelled pixels (a class drawn with a few strokes
is not drowned by one drawn with many). Beside the clicks' loss, the CRF loss of
:func:`pixelwise.losses.crf_loss` (``crf_weight``, 1) on every pixel of each crop asks
neighbours of similar colour to take one label, which carries the clicks over the regions they
lie in (ISBI: 0.61 mean IoU at 20 clicks per image against 0.55 without it, seven seeds of
``bench/interactive.py``). What is published is an exponential moving average of
the weights (decay ``ema``, 0.95: about the last 20 steps, warmed up over the first steps so
that the random start fades at once), which keeps the page's prediction from flickering between
checkpoints (and scored a little higher in ``bench/interactive.py``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import threading
import time
import types
import typing
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelwise import __version__
from pixelwise.data.classes import ClassInfo
from pixelwise.data.transforms import default_normalization, to_tensor
from pixelwise.errors import ConfigError
from pixelwise.files import write_json
from pixelwise.label.project import ERASE, LabelError, Project
from pixelwise.label.teacher import ForestTeacher
from pixelwise.losses import crf_loss, pixel_cross_entropy, soft_cross_entropy
from pixelwise.models import build
from pixelwise.predict import Segmenter, forward_full, resolve_device
from pixelwise.runs import RUN_FORMAT, load_run, publish_checkpoint, read_config, save_checkpoint
from pixelwise.training.config import is_finite_number, opt

__all__ = ["LiveModel", "Prediction", "Trainer", "TrainerOptions", "mean_entropy"]

Log = Callable[[str], None]


@dataclass
class TrainerOptions:
    """How the live model trains. The defaults suit a CPU: a U-Net of 8-16-32 channels (64 at
    the bottom) whose first convolution also sees ilastik's 48 filter-bank features per image
    channel (``filter_bank``, cached per image); steps of 16 crops of 64 pixels, which cost
    what 4 crops of 128 cost and carry about four times the clicks (each crop holds a labelled
    pixel; sparse labels leave most of a large crop without loss). Every field is checked on
    construction (:class:`ConfigError` naming it); ``pixelwise label --trainer KEY=VALUE``
    sets any of them (:meth:`with_overrides`)."""

    model: str = opt("unet_same", "the model of a new project (a pixelwise model name)")
    model_args: dict[str, Any] = opt(
        {"depth": 3, "base_width": 8, "filter_bank": True}, "its keyword arguments (JSON)"
    )
    width: float = opt(1.0, "its channel multiplier", gt=0)
    lr: float = opt(2e-3, "AdamW's learning rate", gt=0)
    weight_decay: float = opt(1e-4, "AdamW's weight decay", ge=0)
    batch_size: int = opt(16, "crops per step", ge=1)
    crop: int = opt(64, "crop side in pixels (each crop holds a labelled pixel)", ge=8)
    hflip: bool = opt(True, "random left-right flips")
    rotate90: bool = opt(False, "also vertical flips and quarter turns (orientation-free images)")
    jitter: float = opt(
        0.0, "random contrast x(1 +- jitter) and brightness +-jitter (of 255)", ge=0, lt=1
    )
    balance: float = opt(0.5, "weigh classes by 1 / (their labelled pixels) ** balance", ge=0)
    crf_weight: float = opt(
        1.0,
        "weight of the CRF loss on every pixel of a crop (losses.crf_loss: neighbours of "
        "similar colour take one label), which carries clicks to the image's edges; 0: off",
        ge=0,
    )
    crf_color: float | None = opt(
        15.0,
        "its colour bandwidth (intensities of 0-255 images); null: each crop's median "
        "difference of neighbouring pixels (losses.contrast_scale)",
        gt=0,
    )
    crf_stride: int = opt(
        2,
        "the CRF loss compares neighbours on a grid this many times coarser than the image "
        "(average-pooled; 1: full resolution, which keeps lines a few pixels wide)",
        ge=1,
    )
    crf_radius: int = opt(5, "the CRF loss's neighbourhood: this many grid steps each way", ge=1)
    crf_space: str = opt(
        "image",
        "what neighbours of the CRF loss compare: image (their colours) or features (the "
        "filter bank's, standardised, with each crop's median neighbour distance as bandwidth; "
        "a filter-bank model, jitter 0)",
        choices=("image", "features"),
    )
    crf_crops: float = opt(
        0.0,
        "fraction of each batch's crops placed anywhere in a labelled image rather than around "
        "a labelled pixel, so that the CRF loss also reaches the pixels far from every stroke",
        ge=0,
        le=1,
    )
    bn_refresh: int = opt(
        0,
        "recompute the published model's BatchNorm statistics on this many crops drawn "
        "anywhere in the labelled images (0: keep the training crops' running averages)",
        ge=0,
    )
    forest_weight: float = opt(
        0.0,
        "weight of a random-forest teacher (ilastik's pixel classifier on the filter bank's "
        "features of the labelled pixels, refitted when the labels change): its probabilities "
        "on each crop's unlabelled pixels are soft labels; a filter-bank model, jitter 0; 0: off",
        ge=0,
    )
    forest_trees: int = opt(16, "its trees", ge=1)
    pseudo_weight: float = opt(
        0.0,
        "weight of self-training: the unlabelled pixels of each crop on which the published "
        "average is at least pseudo_threshold sure take its class as a label; 0: off",
        ge=0,
    )
    pseudo_threshold: float = opt(0.95, "its confidence threshold", gt=0, le=1)
    ema: float = opt(
        0.95, "publish a moving average of the weights with this decay (0: the weights)", ge=0, lt=1
    )
    publish_every: float = opt(5.0, "seconds of training between checkpoints", gt=0)
    score_seconds: float = opt(1.0, "seconds spent scoring unlabelled images per checkpoint", ge=0)
    score_pixels: int = opt(
        1_000_000, "larger images are scored for 'next' shrunk to about this many pixels", ge=64
    )
    tile: int = opt(1024, "predictions of images over this side go tile by tile", ge=64)
    feature_cache_mb: int = opt(
        2048,
        "MiB of float16 filter-bank features kept (computed once per labelled image; past "
        "this, per crop)",
        ge=0,
    )
    threads: int | None = opt(None, "torch threads (none: torch's default)", ge=1)
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    seed: int = opt(0, "seed of the crops and the new model")

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(TrainerOptions)
        for f in fields(self):
            _check_option(f.name, getattr(self, f.name), hints[f.name], f.metadata)

    def check_model(self, run: str | Path | None = None) -> None:
        """Build the model a new project starts from once (3 channels, 2 classes; with ``run``,
        that run's model), so that a bad ``model`` or ``model_args``, or an option the model
        cannot serve (:meth:`check_features`), is a :class:`ConfigError` before any project
        file is written."""
        if run is None:
            model = build(self.model, 2, width=self.width, **self.model_args)
        else:
            spec = read_config(run)["model"]
            model = build(spec["name"], spec["num_classes"], **spec["kwargs"])
        self.check_features(model)

    def check_features(self, model: torch.nn.Module) -> None:
        """``crf_space=features`` and ``forest_weight`` need the filter bank's features of
        every crop: a :class:`ConfigError` unless ``model`` has a bank and ``jitter`` is 0."""
        if model.features is not None and self.jitter == 0:
            return
        needs = (
            "needs a model with the filter bank (a new model's model_args filter_bank true, or "
            "a --run that has one) and jitter 0"
        )
        if self.crf_space == "features":
            raise ConfigError(f"--trainer crf_space=features: {needs}; or set crf_space=image")
        if self.forest_weight > 0:
            raise ConfigError(f"--trainer forest_weight: {needs}; or set forest_weight=0")

    @classmethod
    def with_overrides(cls, overrides: dict[str, Any], **base: Any) -> TrainerOptions:
        """``TrainerOptions(**base)`` with ``overrides`` (``pixelwise label --trainer``) set;
        an unknown key is a :class:`ConfigError` naming the known ones."""
        names = [f.name for f in fields(cls)]
        for key in overrides:
            if key not in names:
                raise ConfigError(
                    f"--trainer {key}: no such trainer option; the options: {', '.join(names)}"
                )
        return cls(**{**base, **overrides})


def _check_option(name: str, value: Any, hint: Any, meta: Any) -> None:
    """One-line :class:`ConfigError` unless ``value`` has the field's type and bounds."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if optional and value is None:
        return
    kind = [k for k in typing.get_args(hint) if k is not type(None)][0] if optional else hint
    kind = typing.get_origin(kind) or kind  # dict[str, Any] -> dict
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
    if kind is float:  # an int will do; NaN and infinity will not
        ok = is_finite_number(value)
    shown = f"--trainer {name}={json.dumps(value, default=str)}"
    if not ok:
        words = {bool: "true or false", int: "an integer", float: "a finite number", str: "a text"}
        want = words.get(kind, 'a JSON object, e.g. {"depth": 4}')
        raise ConfigError(f"{shown}: must be {want}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{shown}: must be one of {', '.join(map(str, meta['choices']))}")
    for key, test, words in (
        ("ge", lambda v, b: v >= b, "at least"),
        ("gt", lambda v, b: v > b, "more than"),
        ("le", lambda v, b: v <= b, "at most"),
        ("lt", lambda v, b: v < b, "less than"),
    ):
        if key in meta and not test(value, meta[key]):
            raise ConfigError(f"{shown}: must be {words} {meta[key]:g}")


@dataclass
class Prediction:
    """The live model's view of one image: ``labels`` (argmax), ``entropy`` (uint8, 255 = the
    entropy of a uniform guess, ``log(num_classes)``) and ``confidence`` (max probability)."""

    version: int
    labels: np.ndarray
    entropy: np.ndarray
    confidence: np.ndarray


def mean_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-pixel entropy of ``probs (C, H, W)`` divided by ``log C`` (0: certain, 1: uniform)."""
    c = probs.shape[0]
    ent = -(probs * probs.clamp_min(1e-12).log()).sum(0)
    return ent / math.log(c) if c > 1 else ent * 0


class FeatureCache:
    """The fixed input features (``(F, H, W)`` float16, on the CPU) of whole project images for
    a model with a filter bank (``unet_same(filter_bank=True)``), computed once per image and
    kept while they fit in ``budget_mb`` with those already kept (nothing is evicted, so a
    project larger than the budget never recomputes whole images over and over). The trainer
    fills it with its labelled images (:meth:`get`); the live model reads it (:meth:`peek`) so
    that the page's predictions of those images skip the bank (``bench/interactive.py
    --latency``: a fetch of 377 ms instead of 653 on a 512 x 512 slice). Images
    smaller than ``pad_to`` are padded first as :func:`_crop_around` pads them (edge pixels,
    which is also the bank's own border, so the unpadded part is the same). Thread-safe."""

    def __init__(self, bank: torch.nn.Module, mean, std, budget_mb: int, pad_to: int, device):
        self.bank, self.mean, self.std = bank, tuple(mean), tuple(std)
        self.budget = budget_mb * 2**20
        self.pad_to, self.device = pad_to, device
        self._kept: dict[str, torch.Tensor] = {}
        self._bytes = 0  # of what is kept
        self._lock = threading.Lock()

    def peek(self, stem: str) -> torch.Tensor | None:
        with self._lock:
            return self._kept.get(stem)

    def get(self, stem: str, image: np.ndarray) -> torch.Tensor | None:
        """The features of ``image`` (project image ``stem``), computed if they fit; None when
        they do not."""
        have = self.peek(stem)
        if have is not None:
            return have
        h, w, size = image.shape[0], image.shape[1], self.pad_to
        if self._bytes + 2 * self.bank.out_channels * max(h, size) * max(w, size) > self.budget:
            return None
        if h < size or w < size:
            image = np.pad(image, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), "edge")
        x = to_tensor(np.ascontiguousarray(image), self.mean, self.std)[None].to(self.device)
        with torch.no_grad():  # tall images go strip by strip (FilterBank.forward)
            feats = self.bank(x)[0].to("cpu", torch.float16)
        with self._lock:
            if stem not in self._kept:
                self._kept[stem] = feats
                self._bytes += feats.numel() * feats.element_size()
            return self._kept[stem]

    def __contains__(self, stem: str) -> bool:
        return self.peek(stem) is not None

    def stems(self) -> list[str]:
        with self._lock:
            return list(self._kept)


class LiveModel:
    """The latest published weights, shared by the page's requests (thread-safe)."""

    def __init__(self, classes: ClassInfo, mean, std, in_channels: int, tile: int, device):
        self.classes = classes
        self.mean, self.std = tuple(mean), tuple(std)
        self.in_channels = in_channels
        self.tile = tile
        self.device = device
        self.version = 0
        self.model: torch.nn.Module | None = None
        self.published_at: float | None = None
        self.scores: dict[str, tuple[float, int]] = {}  # stem -> (mean entropy, version)
        self.features: FeatureCache | None = None  # the trainer's, when its model has a bank
        self._cache: OrderedDict[tuple[str, int], Prediction] = OrderedDict()
        self._lock = threading.Lock()

    def swap(self, model: torch.nn.Module) -> int:
        """Publish ``model`` (eval mode, owned by this object from now on); the new version."""
        model.eval()
        with self._lock:
            self.model = model
            self.version += 1
            self.published_at = time.time()
            self._cache.clear()
            return self.version

    def current(self) -> tuple[torch.nn.Module | None, int]:
        with self._lock:
            return self.model, self.version

    @torch.inference_mode()
    def probabilities(
        self, image: np.ndarray, model: torch.nn.Module, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Softmax ``(C, H, W)`` of ``image`` (tiled when it is large). ``features``: the
        model's fixed features of the image, computed before (:class:`FeatureCache`; they may
        cover a padded image), used when the image goes in one piece."""
        h, w = image.shape[:2]
        if max(h, w) > self.tile:
            seg = Segmenter(model, self.classes, self.mean, self.std, self.in_channels, self.device)
            return torch.softmax(seg.logits(image, tile=self.tile).float(), 0).cpu()
        x = to_tensor(image, self.mean, self.std)[None].to(self.device)
        feats = None if features is None else features[None, :, :h, :w]
        return torch.softmax(_forward(model, x, feats)[0].float(), 0).cpu()

    def predict(self, stem: str, project: Project) -> Prediction | None:
        """The prediction of image ``stem`` under the current weights (cached); None before the
        first checkpoint."""
        model, version = self.current()
        if model is None:
            return None
        with self._lock:
            hit = self._cache.get((stem, version))
        if hit is not None:
            return hit
        cached = None if self.features is None else self.features.peek(stem)
        probs = self.probabilities(project.image(stem, self.in_channels), model, cached)
        conf, labels = probs.max(0)
        ent = mean_entropy(probs)
        pred = Prediction(
            version,
            labels.to(torch.uint8).numpy(),
            (ent * 255).round().clamp(0, 255).to(torch.uint8).numpy(),
            conf.numpy(),
        )
        self.scores[stem] = (float(ent.mean()), version)
        with self._lock:
            self._cache[(stem, version)] = pred
            while len(self._cache) > 8:
                self._cache.popitem(last=False)
        return pred

    def score(self, stem: str, project: Project, max_pixels: int) -> float:
        """Mean normalised entropy of ``stem`` (the image shrunk to about ``max_pixels``)."""
        model, version = self.current()
        if model is None:
            raise RuntimeError("no model published yet")
        image = project.image(stem, self.in_channels)
        h, w = image.shape[:2]
        if h * w > max_pixels:
            from pixelwise.predict import resize_image

            f = math.sqrt(max_pixels / (h * w))
            image = resize_image(image, (max(8, round(w * f)), max(8, round(h * f))))
        value = float(mean_entropy(self.probabilities(image, model)).mean())
        self.scores[stem] = (value, version)
        return value


class Trainer:
    """Trains the project's model in a background thread (:meth:`start`, :meth:`stop`), or in
    the caller's thread with :meth:`train_for` + :meth:`publish` (the benchmark does)."""

    def __init__(
        self,
        project: Project,
        *,
        run: str | Path | None = None,
        out: str | Path | None = None,
        options: TrainerOptions | None = None,
        log: Log | None = None,
    ) -> None:
        self.project = project
        self.options = opts = options or TrainerOptions()
        self.say = log or (lambda _m: None)
        self.out = Path(out) if out is not None else project.root / "run"
        self.device = resolve_device(opts.device)
        self.model, self.spec, norm, origin = _initial_model(project, run, self.out, opts)
        self.model.to(self.device)
        self.mean, self.std = norm
        self.channels = int(self.spec["kwargs"].get("in_channels", 3))
        self.origin = origin
        self.continued = (self.out / "last.safetensors").is_file()
        self.live = LiveModel(
            project.classes, self.mean, self.std, self.channels, opts.tile, self.device
        )
        self.averaged = None
        if opts.ema > 0:
            from torch.optim.swa_utils import AveragedModel

            self.averaged = AveragedModel(
                self.model, multi_avg_fn=_ema_with_warmup(opts.ema), use_buffers=True
            )
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
        self.rng = np.random.default_rng(opts.seed)
        self.steps = 0
        self.seconds = 0.0  # training time so far
        self.losses: list[float] = []
        self.last_loss: float | None = None
        self.error: str | None = None
        self.state = "idle"
        self._data: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}
        self.features = None  # the fixed features of the labelled images (a filter-bank model)
        if self.model.features is not None and opts.jitter == 0:
            self.features = FeatureCache(
                self.model.features,
                self.mean,
                self.std,
                opts.feature_cache_mb,
                opts.crop,
                self.device,
            )
            self.live.features = self.features
        opts.check_features(self.model)
        self.teacher, self._teacher_labels = None, None  # the labels' versions at its fit
        if opts.forest_weight > 0:
            self.teacher = ForestTeacher(opts.forest_trees, len(project.classes.names), opts.seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._config_images = -1
        if origin != "new model" or self.continued:  # predictions before any new stroke
            self.live.swap(copy.deepcopy(self.model))
        how = "continued" if self.continued else "from now on"
        self.say(f"model: {self.spec['name']} {self.spec['kwargs']}, {origin}; {how} in {self.out}")

    # -- the thread ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="pixelwise-label-trainer")
        self._thread.daemon = True
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.project.changed.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.state = "stopped"

    def _loop(self) -> None:
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        while not self._stop.is_set():
            try:
                if not self.project.labelled_stems():
                    self.state = "waiting"
                    self.project.changed.wait(0.5)
                    self.project.changed.clear()
                    continue
                self.state = "training"
                self.train_for(self.options.publish_every, stop=self._stop)
                if self.steps and not self._stop.is_set():
                    self.publish()
                    self.score_unlabelled(self.options.score_seconds)
                self.error = None
            except Exception as err:  # keep the page alive; say what went wrong, retry
                self.error = f"training stopped for a moment: {type(err).__name__}: {err}"
                self.state = "error"
                self.say(self.error)
                self._stop.wait(5.0)

    # -- training ------------------------------------------------------------------------------

    def train_for(
        self,
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
        stop: threading.Event | None = None,
        max_steps: int | None = None,
    ) -> int:
        """Optimisation steps until ``seconds`` of ``clock`` have passed or ``max_steps`` were
        taken (at least one step when anything is labelled); the number of steps. With
        ``seconds=math.inf`` and ``max_steps`` a run repeats exactly whatever the load."""
        start, steps = clock(), 0
        weights = self._class_weights()
        if self.teacher is not None:  # on the trainer's clock: the forest's time is training's
            self._fit_teacher()
        t0 = time.monotonic()
        while steps == 0 or clock() - start < seconds:
            if (stop is not None and stop.is_set()) or steps == max_steps:
                break
            batch = self._batch()
            if batch is None:
                break
            self._step(*batch, weights)
            steps += 1
        self.seconds += time.monotonic() - t0
        return steps

    def _step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        raw: torch.Tensor,
        feats: torch.Tensor | None,
        weights: torch.Tensor,
    ) -> None:
        self.model.train()
        x, y, weights = x.to(self.device), y.to(self.device), weights.to(self.device)
        logits = _forward(self.model, x, feats)
        loss = pixel_cross_entropy(logits, y, class_weights=weights)
        opts = self.options
        if opts.pseudo_weight > 0 and self.averaged is not None and bool((y == ERASE).any()):
            pseudo = self._pseudo_labels(x, y, feats)  # (dense labels leave nothing to add)
            loss = loss + opts.pseudo_weight * pixel_cross_entropy(
                logits, pseudo, class_weights=weights
            )
        if self.teacher is not None and feats is not None:
            target = self.teacher.probabilities(feats)
            if target is not None:
                unlabelled = y == ERASE
                soft = soft_cross_entropy(logits, target.to(self.device), unlabelled)
                loss = loss + opts.forest_weight * soft
        if opts.crf_weight > 0:
            guide, sigma = raw.to(self.device), opts.crf_color
            if opts.crf_space == "features":  # check_features: the model has the bank
                if feats is None:  # not cached (over feature_cache_mb): the crops' own
                    with torch.no_grad():
                        feats = self.model.features(x)
                guide, sigma = _standardised(feats.to(self.device, torch.float32)), None
            crf = crf_loss(
                logits, guide, opts.crf_radius, sigma_color=sigma, stride=opts.crf_stride
            )
            loss = loss + opts.crf_weight * crf
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)
        self.steps += 1
        self.losses.append(float(loss.detach()))

    @torch.no_grad()
    def _pseudo_labels(
        self, x: torch.Tensor, y: torch.Tensor, feats: torch.Tensor | None
    ) -> torch.Tensor:
        """The published average's class on the unlabelled pixels of the crops ``x`` where its
        probability reaches ``pseudo_threshold``; 255 elsewhere and on labelled pixels."""
        logits = _forward(self.averaged.module.eval(), x, feats)
        conf, labels = torch.softmax(logits.float(), 1).max(1)
        keep = (y == ERASE) & (conf >= self.options.pseudo_threshold)
        return torch.where(keep, labels, torch.full_like(labels, ERASE))

    def _fit_teacher(self) -> None:
        """Refit the forest teacher when the labels have changed since its last fit, on the
        labelled images whose features are cached."""
        stems = self.project.labelled_stems()
        signature = tuple((s, self.project.entries[s].version) for s in stems)
        if signature == self._teacher_labels:
            return
        pairs = []
        for stem in stems:
            try:
                found = self._sample_data(stem)
                feats = self.features.peek(stem)  # the image is read only when not cached
                if feats is None:
                    feats = self.features.get(stem, self.project.image(stem, self.channels))
            except LabelError:  # gone or corrupt since: skip it
                continue
            if found is not None and feats is not None:
                pairs.append((feats, found[0]))
        if self.teacher.refit(pairs):
            self._teacher_labels = signature

    def _class_weights(self) -> torch.Tensor:
        counts = self.project.class_counts().astype(np.float64)
        if not self.options.balance:
            return torch.ones(len(counts), dtype=torch.float32)
        present = counts > 0
        w = np.zeros_like(counts)
        w[present] = counts[present] ** -float(self.options.balance)
        if present.any():
            w[present] /= w[present].mean()
        w[~present] = 1.0
        return torch.tensor(w, dtype=torch.float32)

    def _sample_data(self, stem: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(mask, flat indices of its labelled pixels) of ``stem``, refreshed on a new version."""
        entry = self.project.entries[stem]
        have = self._data.get(stem)
        if have is not None and have[0] == entry.version:
            return have[1], have[2]
        mask, version = self.project.mask_with_version(stem)
        index = np.flatnonzero(mask.reshape(-1) != ERASE)
        if not len(index):
            self._data.pop(stem, None)
            return None
        self._data[stem] = (version, mask, index)
        return mask, index

    def _batch(
        self, count: int | None = None, anywhere: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        """One batch of ``count`` (``batch_size``) crops of labelled images, a share
        ``anywhere`` (``crf_crops``) of them anywhere and the rest around a labelled pixel: the
        network's input, the labels, the crops' intensities (0-255, ``(B, C, H, W)``, for the
        CRF loss) and the crops of the model's cached fixed features (None when it has none or
        some crop lacks them); None when nothing is labelled."""
        stems = self.project.labelled_stems()
        count = self.options.batch_size if count is None else count
        anywhere = self.options.crf_crops if anywhere is None else anywhere
        size, xs, ys, raws, fs = self.options.crop, [], [], [], []
        tries = 0
        while len(xs) < count and stems and tries < 4 * count:
            tries += 1
            stem = stems[int(self.rng.integers(len(stems)))]
            try:
                found = self._sample_data(stem)
                if found is None:
                    continue
                image = self.project.image(stem, self.channels)
            except LabelError:  # gone or corrupt since: skip it
                continue
            mask, index = found
            feats = None if self.features is None else self.features.get(stem, image)
            if anywhere and self.rng.random() < anywhere:
                index = None  # anywhere: the CRF loss's crop
            (top, left), image, crop_mask = _crop_around(image, mask, index, size, self.rng)
            if feats is not None:  # of the image padded as _crop_around pads it
                feats = feats[:, top : top + size, left : left + size]
            image, crop_mask, feats = self._augment(image, crop_mask, feats)
            image = np.ascontiguousarray(image)
            xs.append(to_tensor(image, self.mean, self.std))
            ys.append(torch.from_numpy(crop_mask.astype(np.int64)))
            raws.append(torch.from_numpy(image.reshape(size, size, -1)).permute(2, 0, 1))
            fs.append(feats)
        if not xs:
            return None
        feats = None if any(f is None for f in fs) else torch.stack(fs)
        return torch.stack(xs), torch.stack(ys), torch.stack(raws), feats

    def _augment(self, image: np.ndarray, mask: np.ndarray, feats: torch.Tensor | None):
        """Flips, quarter turns and jitter of a crop; ``feats (F, H, W)`` (the fixed features
        are flip- and rotation-invariant per pixel) move with the image."""
        opts, rng = self.options, self.rng
        if opts.hflip and rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
            feats = None if feats is None else feats.flip(-1)
        if opts.rotate90:
            k = int(rng.integers(4))
            image, mask = np.rot90(image, k), np.rot90(mask, k)
            feats = None if feats is None else torch.rot90(feats, k, (1, 2))
        if opts.jitter > 0:
            gain = 1 + rng.uniform(-opts.jitter, opts.jitter)
            shift = 255 * rng.uniform(-opts.jitter, opts.jitter)
            mean = image.mean()
            image = np.clip((image - mean) * gain + mean + shift, 0, 255).astype(np.uint8)
        return image, mask, feats

    # -- publishing ----------------------------------------------------------------------------

    def publish(self) -> int:
        """Write ``RUN/last`` and ``RUN/best`` (the same weights) and hand a copy to the live
        model; the new version."""
        labelled = self.project.labelled_stems()
        recent = self.losses[-50:]
        self.last_loss = float(np.mean(recent)) if recent else None
        info = {
            "epoch": self.live.version + 1,  # one "epoch" per checkpoint
            "step": self.steps,
            "train_loss": self.last_loss,
            "train_seconds": round(self.seconds, 3),
            "labelled_images": len(labelled),
            "labelled_pixels": int(self.project.class_counts().sum()),
            "pixelwise": __version__,
        }
        self.out.mkdir(parents=True, exist_ok=True)
        if len(labelled) != self._config_images:
            write_json(self.out / "config.json", self.run_config(len(labelled)))
            self._config_images = len(labelled)
        model = copy.deepcopy(self.model if self.averaged is None else self.averaged.module)
        if self.options.bn_refresh:
            self._refresh_batch_norm(model)
        last = save_checkpoint(self.out, "last", model, info)
        publish_checkpoint(self.out, "best", last, info)
        return self.live.swap(model)

    @torch.no_grad()
    def _refresh_batch_norm(self, model: torch.nn.Module) -> None:
        """Recompute the BatchNorm statistics of ``model`` (a copy about to be published) on
        ``bn_refresh`` crops drawn anywhere in the labelled images: the training crops sit
        around strokes, and their running averages need not be those of whole images."""
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        batch = self._batch(self.options.bn_refresh, anywhere=1.0) if norms else None
        if batch is None:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a plain average over this one batch
        model.train()
        _forward(model, batch[0].to(self.device), batch[3])
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()

    def run_config(self, labelled_images: int) -> dict[str, Any]:
        """``RUN/config.json``: what ``load_run`` needs, and a ``train`` section that
        ``pixelwise train --config`` would accept for the same model."""
        from pixelwise.training.config import TrainConfig

        opts = self.options
        kwargs = {k: v for k, v in self.spec["kwargs"].items() if k not in ("in_channels",)}
        width = kwargs.pop("width", opts.width)
        train = TrainConfig(
            data=str(self.project.root),
            out=str(self.out),
            model=self.spec["name"],
            width=width,
            model_args=kwargs,
            batch_size=opts.batch_size,
            lr=opts.lr,
            optimizer="adamw",
            weight_decay=opts.weight_decay,
            schedule="constant",
            crop_size=opts.crop,
            hflip=opts.hflip,
            channels=self.channels,
            seed=opts.seed,
            overlays=0,
        ).to_dict()
        return {
            "format": "pixelwise-run",
            "version": RUN_FORMAT,
            "pixelwise": __version__,
            "model": dict(self.spec),
            "classes": self.project.classes.to_dict(),
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "train": train,
            "data": {"train_images": labelled_images, "val_images": 0},
            "class_weights": None,
            "label": {"project": str(self.project.root), "origin": self.origin},
        }

    # -- uncertainty ---------------------------------------------------------------------------

    def score_unlabelled(self, seconds: float) -> int:
        """Score unlabelled images (the least recently scored first) for about ``seconds``."""
        _, version = self.live.current()
        start, done = time.monotonic(), 0
        todo = [s for s in self.project.order if self.project.entries[s].labelled == 0]
        todo.sort(key=lambda s: self.live.scores.get(s, (0.0, -1))[1])
        for stem in todo:
            if time.monotonic() - start > seconds or self._stop.is_set():
                break
            if self.live.scores.get(stem, (0.0, -1))[1] == version:
                break  # everything is scored under this version
            with contextlib.suppress(LabelError):
                self.live.score(stem, self.project, self.options.score_pixels)
                done += 1
        return done

    def status(self) -> dict[str, Any]:
        scored = sum(1 for _, v in list(self.live.scores.values()) if v == self.live.version)
        return {
            "state": self.state,
            "version": self.live.version,
            "steps": self.steps,
            "loss": self.last_loss,
            "seconds": round(self.seconds, 1),
            "published_at": self.live.published_at,
            "error": self.error,
            "scored": scored,
            "origin": self.origin,
            "run": str(self.out),
        }


def _forward(model: torch.nn.Module, x: torch.Tensor, feats: torch.Tensor | None) -> torch.Tensor:
    """Logits of ``x``; ``feats``: the model's fixed features of ``x``, computed before (a
    filter-bank model: border 0, so the plain call), else the model computes what it needs."""
    if feats is None:
        return forward_full(model, x)
    return model(x, features=feats.to(x.device, torch.float32))


def _standardised(feats: torch.Tensor) -> torch.Tensor:
    """``feats (N, F, H, W)`` with each channel at mean 0 and standard deviation 1 over the
    batch (so that no feature's units outweigh the others' in a distance)."""
    mean = feats.mean((0, 2, 3), keepdim=True)
    return (feats - mean) / feats.std((0, 2, 3), keepdim=True).clamp_min(1e-6)


def _ema_with_warmup(decay: float) -> Callable:
    """The moving average's update for ``AveragedModel``: decay ``min(decay, (1 + n) / (10 + n))``
    after ``n`` updates, so that the first steps' weights (and the random start) fade as fast as
    a short average would (a fixed 0.99 still holds 22% of the start after 150 steps)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: Any) -> None:
        if not torch.is_floating_point(averaged[0]):  # counters (BatchNorm's): the current
            torch._foreach_copy_(averaged, current)
            return
        d = min(decay, (1 + int(n)) / (10 + int(n)))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return update


def _crop_around(
    image: np.ndarray,
    mask: np.ndarray,
    index: np.ndarray | None,
    size: int,
    rng: np.random.Generator,
) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    """``((top, left), image crop, mask crop)``: a ``size x size`` crop of ``image``/``mask``
    holding a random labelled pixel (one of the flat ``index``; None: any pixel) at a random
    place (images smaller than ``size`` are padded: edge pixels, mask 255)."""
    h, w = mask.shape
    height, width = h, w  # the labelled pixels' flat indices are over the unpadded mask
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="edge")
        mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=ERASE)
        h, w = mask.shape
    if index is None:
        y, x = int(rng.integers(height)), int(rng.integers(width))
    else:
        y, x = divmod(int(index[int(rng.integers(len(index)))]), width)
    top = int(np.clip(y - rng.integers(size), 0, h - size))
    left = int(np.clip(x - rng.integers(size), 0, w - size))
    window = (slice(top, top + size), slice(left, left + size))
    return (top, left), image[window], mask[window]


def _initial_model(project: Project, run, out: Path, opts: TrainerOptions):
    """(model, spec, (mean, std), origin) to start from: the project's own run directory if it
    holds weights (continue), else ``run`` (fine-tune), else a new model."""
    classes = project.classes
    if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise ConfigError(f"{out}: exists and is not a pixelwise run; move it away")
    have_own = (out / "config.json").is_file() and (out / "last.safetensors").is_file()
    source = out if have_own else (Path(run) if run is not None else None)
    if have_own and run is not None and Path(run).resolve() != out.resolve():
        recorded = _recorded_origin(out)
        if f"run {Path(run)}" not in recorded:
            raise ConfigError(
                f"--run {run}: the project already has its own model ({out}, {recorded}); "
                "drop --run to continue it, or delete that folder to start again from --run"
            )
    if source is None:
        mean, std = default_normalization(project.channels)
        kwargs = {"in_channels": project.channels, "width": opts.width, **opts.model_args}
        model = build(opts.model, classes.num_classes, **kwargs)
        spec = {"name": opts.model, "num_classes": classes.num_classes, "kwargs": kwargs}
        return model, spec, (mean, std), "new model"
    loaded = load_run(source, "last" if have_own else "best")
    if tuple(loaded.classes.names) != tuple(classes.names):
        option = f"{out}" if have_own else f"--run {run}"
        raise ConfigError(
            f"{option}: its classes ({','.join(loaded.classes.names)}) differ from the "
            f"project's ({','.join(classes.names)}); label with the same classes, or "
            + ("delete that folder to start a new model" if have_own else "drop --run")
        )
    origin = _recorded_origin(out) if have_own else f"fine-tuned from run {source}"
    return loaded.model, dict(loaded.config["model"]), (loaded.mean, loaded.std), origin


def _recorded_origin(out: Path) -> str:
    import json

    try:
        return str(json.loads((out / "config.json").read_text()).get("label", {}).get("origin"))
    except (OSError, ValueError, AttributeError):
        return "unknown origin"
