"""The planner: training options from the dataset's fingerprint, the device profile and a time
budget, one reason per choice. Every option a user gives overrides its plan entry (recorded).

The rules and the runs behind them are in docs/planning.md. In short: a same-padded U-Net
(the model that reached the goals on ISBI, DRIVE and CamVid, docs/results.md), as wide as the
budget allows while it still gets enough optimizer steps; the input scale as small as the finest
frequent structure allows; augmentations that respect the data's orientation; class weights
when the classes are very unequal; epochs fitted to the budget on the measured step time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pixelwise.planning.fingerprint import Fingerprint
from pixelwise.planning.profile import Candidate, DeviceProfile

__all__ = ["MIN_STEPS", "Plan", "make_plan"]

#: optimizer steps a plan aims for before it widens the model (the recorded runs that reached
#: their goals took 2,700 (C3) to 21,000 (D3) steps; I2's 660 were too few: docs/results.md)
MIN_STEPS = 2000
WIDTHS = (8, 16, 24, 32)  # U-Net base widths the planner chooses from on a CPU
WIDTHS_GPU = (8, 16, 24, 32, 48, 64)  # and on a GPU, where a step of width 16 is launch-bound
SCALES = (1.0, 0.75, 0.5, 0.375, 0.25)
#: width the plan reaches before it spends steps on resolution: on CamVid, C3 (width 24 at half
#: resolution, 2,700 steps) reached val mIoU 0.59 where a plan of width 8 at full resolution
#: (2,925 steps, issue 15's first hour-long planned run) reached 0.41 (docs/planning.md)
WIDTH_FIRST = 24
SETUP_SHARE = 0.08  # of the budget kept for the data check, decoding and the first validation
VAL_SHARE = 0.10  # validation may cost at most this share of the training time
#: planned epochs = this x the estimate: the budget, not the estimate, ends a planned run, so a
#: step timed on a busy moment (DRIVE: 3.64 s planned, 0.55 s run; docs/planning.md) does not
#: leave most of the budget unused; the learning-rate schedule follows the budget's clock
EPOCH_HEADROOM = 3


@dataclass
class Plan:
    """The planned options (TrainConfig field values), a reason for each, and the estimates."""

    options: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    given: list[str] = field(default_factory=list)  # options the user gave (override the plan)
    estimates: dict[str, Any] = field(default_factory=dict)
    device: str = ""
    budget: float = 0.0
    candidate: Candidate | None = None  # the model and batch shape chosen

    def set(self, name: str, value: Any, reason: str) -> None:
        self.options[name] = value
        self.reasons[name] = reason

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "pixelwise-plan",
            "version": 1,
            "budget_s": self.budget,
            "device": self.device,
            "options": self.options,
            "reasons": self.reasons,
            "given": self.given,
            "estimates": self.estimates,
        }

    def table(self) -> list[str]:
        """The plan as aligned text lines: option, value, reason."""
        rows = [(k, _show(v), self.reasons.get(k, "")) for k, v in self.options.items()]
        width = max(len(k) for k, _, _ in rows) + 2
        vwidth = min(28, max(len(v) for _, v, _ in rows)) + 2
        return [f"{k:<{width}}{v:<{vwidth}}{r}" for k, v, r in rows]


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _important(fp: Fingerprint, share: float = 0.02) -> list[int]:
    """Classes holding at least ``share`` of the labels (what the mean IoU mostly rests on)."""
    return [c for c, f in enumerate(fp.frequency) if f >= share]


def _scale_floor(fp: Fingerprint) -> tuple[float, str]:
    """The smallest input scale that keeps the finest frequent structure >= 3 px wide."""
    widths = [fp.objects[c].half_width for c in _important(fp) if fp.objects[c].half_width > 0]
    if not widths:
        return 1.0, "no object sizes measured"
    finest = min(widths)
    c = next(c for c in _important(fp) if fp.objects[c].half_width == finest)
    floor = min(1.0, 3.0 / finest)
    return floor, f"{fp.classes[c]} is {finest:.1f} px wide"


def _depth(short_side: int) -> int:
    """Four poolings when the model sees at least 128 px (receptive field ~140 px), else three."""
    return 4 if short_side >= 128 else 3


def _crop(short_side: int, depth: int, kind: str) -> int:
    """The training crop: the image's short side at the model's scale, at most 176 px on a CPU
    (C3's crop) or 384 on a GPU, a multiple of 2^depth."""
    cap = 384 if kind == "cuda" else 176
    step = 2**depth
    return max(step * 2, min(cap, short_side) // step * step)


def _estimate(
    fp: Fingerprint,
    profile: DeviceProfile,
    c: Candidate,
    scale: float,
    train_images: int,
    val_images: int,
    budget: float,
) -> dict[str, Any]:
    """Steps per epoch, seconds per epoch and per validation, epochs and steps in the budget."""
    steps = max(1, math.ceil(train_images / c.batch))
    step_s = profile.step_seconds(c, fp.channels, len(fp.classes))
    epoch_s = steps * step_s
    h, w = fp.median_size
    val_mp = val_images * h * w * scale * scale / 1e6
    val_s = val_mp * profile.infer_seconds_per_megapixel(c, fp.channels, len(fp.classes))
    train_time = budget * (1 - SETUP_SHARE) - val_s
    val_every = max(1, math.ceil(val_s / (VAL_SHARE * max(epoch_s, 1e-9))))
    per_epoch = epoch_s + val_s / val_every
    epochs = max(1, int(train_time / per_epoch)) if train_time > 0 else 1
    return {
        "step_s": round(step_s, 4),
        "steps_per_epoch": steps,
        "epoch_s": round(epoch_s, 2),
        "validation_s": round(val_s, 2),
        "val_every": val_every,
        "epochs": epochs,
        "steps": epochs * steps,
    }


def _choose_model(
    fp: Fingerprint,
    profile: DeviceProfile,
    scale_floor: float,
    train_images: int,
    val_images: int,
    budget: float,
) -> tuple[Candidate, float, dict[str, Any]]:
    """Among the U-Nets (scale >= the floor) that still get MIN_STEPS optimizer steps in the
    budget: width up to WIDTH_FIRST first, then the largest scale, then the widest; else the
    candidate with the most steps."""
    options = []
    for scale in [s for s in SCALES if s >= scale_floor - 1e-9] or [1.0]:
        short = int(min(fp.median_size) * scale)
        depth = _depth(short)
        crop = _crop(short, depth, profile.kind)
        batch = 8 if profile.kind != "cuda" else 16
        for width in WIDTHS_GPU if profile.kind == "cuda" else WIDTHS:
            c = Candidate("unet_same", width, depth, crop, batch)
            est = _estimate(fp, profile, c, scale, train_images, val_images, budget)
            options.append((c, scale, est))
    enough = [o for o in options if o[2]["steps"] >= MIN_STEPS]
    if enough:  # width up to WIDTH_FIRST before resolution, then the largest scale, then wider
        return max(enough, key=lambda o: (min(o[0].base_width, WIDTH_FIRST), o[1], o[0].base_width))
    return max(options, key=lambda o: o[2]["steps"])


def make_plan(
    fp: Fingerprint,
    profile: DeviceProfile,
    budget: float,
    train_images: int,
    val_images: int,
    given: dict[str, Any] | None = None,
) -> Plan:
    """Plan the training options of a dataset with fingerprint ``fp`` on ``profile``'s device
    within ``budget`` seconds. ``given`` (options the user set) override their plan entries."""
    plan = Plan(device=profile.name, budget=budget)
    floor, why_floor = _scale_floor(fp)
    c, scale, est = _choose_model(fp, profile, floor, train_images, val_images, budget)
    plan.candidate = c
    h, w = fp.median_size
    plan.set(
        "model",
        "unet_same",
        "same-padded U-Net with BatchNorm: reached the goals on ISBI, DRIVE and CamVid (runs "
        "I6, D3, C3)",
    )
    plan.set(
        "model_args",
        {"base_width": c.base_width, "depth": c.depth},
        (
            f"width up to {WIDTH_FIRST} before resolution, the widest that gets >= {MIN_STEPS}"
            " steps in the budget"
            if est["steps"] >= MIN_STEPS
            else f"no width gets {MIN_STEPS} steps in the budget: the cheapest"
        )
        + f" ({est['steps']} at {est['step_s']:.3f} s/step); depth {c.depth}: the model sees "
        f"{int(min(h, w) * scale)} px",
    )
    plan.set(
        "input_scale",
        scale,
        f"median image {h}x{w}; >= {floor:.2f} keeps the finest frequent structure 3 px wide "
        f"({why_floor}); the largest scale that still gets enough steps at that width",
    )
    plan.set("crop_size", c.crop, f"the short side at scale {scale:g}, capped for the device")
    plan.set("batch_size", c.batch, f"{profile.kind}: {c.batch} crops per step")
    plan.set(
        "workers",
        profile.workers,
        f"{profile.workers} loader processes crop and augment beside the GPU"
        if profile.workers
        else "crops are made in the main process: on a CPU a worker takes cores from the network",
    )
    _optimisation(plan)
    _augmentation(plan, fp)
    _balance(plan, fp)
    plan.set(
        "epochs",
        EPOCH_HEADROOM * est["epochs"],
        f"{est['epoch_s']:.1f} s per epoch of {est['steps_per_epoch']} steps on {profile.name}: "
        f"~{est['epochs']} fill the budget; up to {EPOCH_HEADROOM}x that if the steps run faster "
        "than measured (--budget stops on time, the schedule anneals on the clock)",
    )
    plan.set(
        "val_every",
        est["val_every"],
        f"a validation takes ~{est['validation_s']:.1f} s: at most {VAL_SHARE:.0%} of the time",
    )
    plan.set("budget", float(budget), "the wall-clock promise, last validation included")
    plan.estimates = est | {"scale_floor": round(floor, 3)}
    for name, value in (given or {}).items():
        plan.options[name] = value
        plan.reasons[name] = "given"
        plan.given.append(name)
    return plan


def _optimisation(plan: Plan) -> None:
    plan.set("optimizer", "adamw", "AdamW from scratch: every recorded run that met its goal")
    plan.set("lr", 3e-3, "the recorded runs' peak learning rate (I6, D3, C3)")
    plan.set("weight_decay", 1e-4, "as the recorded runs")
    plan.set("schedule", "cosine", "cosine decay to the planned end (as I6, D3, C3)")


def _augmentation(plan: Plan, fp: Fingerprint) -> None:
    sided, handed = fp.horizontal_bias > 0.25, fp.handed
    plan.set(
        "hflip",
        not (sided or handed),
        f"left-right layout bias {fp.horizontal_bias:.2f}, object handedness "
        f"{fp.handedness:.2f}: "
        + (
            "classes keep their side, no flips"
            if sided
            else "a mirrored object is not a real one (a 7, an L), no flips"
            if handed
            else "mirror images are as likely"
        ),
    )
    rotate, why, scales = _rotations(fp)
    plan.set("rotate", rotate, why)
    plan.set("scale_min", scales[0], f"random scale {scales[0]}-{scales[1]}: {scales[2]}")
    plan.set("scale_max", scales[1], "with scale_min")
    jitter = 0.1 if fp.channels == 3 else 0.0
    plan.set(
        "color_jitter",
        jitter,
        "colour images: brightness/contrast/saturation +-10% (as D3)"
        if jitter
        else "grey images: no colour jitter",
    )


def _rotations(fp: Fingerprint) -> tuple[float, str, tuple[float, float, str]]:
    """The rotation range, its reason, and the random scale range (low, high, why)."""
    if fp.upright:
        why = (
            f"upright images (top/bottom layout bias {fp.vertical_bias:.2f}, e.g. sky above "
            "road): no rotations; TTA uses horizontal flips only"
        )
        return 0.0, why, (0.75, 1.25, "objects at other distances")
    if fp.aligned:
        why = (
            f"objects keep their axis (alignment {fp.alignment:.2f}, e.g. digits or standing "
            "animals): a rotated one is not a real one; no rotations, TTA never turns the image"
        )
        return 0.0, why, (0.8, 1.2, "as I6, D3")
    why = (
        f"no preferred orientation (layout bias {fp.vertical_bias:.2f}, object alignment "
        f"{fp.alignment:.2f}): any rotation; with flips, TTA may use all 8 flips and quarter turns"
    )
    return 180.0, why, (0.8, 1.2, "as I6, D3")


def _balance(plan: Plan, fp: Fingerprint) -> None:
    present = [f for f in fp.frequency if f > 0]
    ratio = max(present) / min(present) if present else 1.0
    auto = ratio > 20
    plan.set(
        "class_weights",
        "auto" if auto else None,
        f"largest/smallest class {ratio:.0f}:1"
        + (
            ": median-frequency weights (C1 vs C2: +3 mIoU, rare classes above 0)"
            if auto
            else ": balanced enough, plain cross-entropy"
        ),
    )
    plan.set("loss", "ce", "cross-entropy: the loss of the recorded runs that met their goals")
