"""Planning: training options from the data, the machine and a time budget (issue 15).

``plan_training(config, budget)`` measures the dataset (:mod:`.fingerprint`, cached per
dataset) and this device (:mod:`.profile`), then applies the rules of :mod:`.plan`;
``pixelwise plan DIR`` prints the result and ``pixelwise train --budget`` trains it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pixelwise.planning.fingerprint import VERSION, Fingerprint, describe, fingerprint
from pixelwise.planning.pipeline import PipelineProfile, loader_workers, sample_seconds
from pixelwise.planning.plan import Plan, make_plan
from pixelwise.planning.profile import CalibratedProfile, DeviceProfile, MeasuredProfile

__all__ = ["Fingerprint", "Plan", "describe", "dataset_fingerprint", "make_plan", "plan_training"]


def dataset_fingerprint(config: Any, progress: Callable | None = None) -> tuple[Fingerprint, Any]:
    """The fingerprint of ``config.data``'s training split (cached per dataset, keyed by its
    files' paths, sizes and mtimes) and the opened splits' sizes."""
    from pixelwise.data import cache
    from pixelwise.data.balance import counts_key
    from pixelwise.training.setup import open_split

    train = open_split(config, "train", config.channels)
    val = open_split(
        config, "val", train.channels, classes=train.classes, label_map=train.label_map
    )
    splits = {"train": len(train), "val": len(val)}
    key = counts_key(train)
    if key is not None:
        key = cache.cache_key("fingerprint", key, config.input_scale, VERSION)
        entry = cache.load("fingerprint", key)
        if entry is not None:
            try:
                return Fingerprint.from_dict(entry), splits
            except (TypeError, KeyError, ValueError):
                pass  # an unreadable entry: measure again
    fp = fingerprint(train, splits)
    if key is not None:
        cache.save("fingerprint", key, fp.to_dict())
    return fp, splits


def plan_training(
    config: Any,
    budget: float,
    given: dict[str, Any] | None = None,
    profile: DeviceProfile | None = None,
) -> tuple[Plan, Fingerprint]:
    """The plan for ``config``'s data (``config.data``, layout, label map, val fraction) on
    ``profile`` (default: measured on ``config.device``: the network's steps and the data
    pipeline's samples) within ``budget`` seconds."""
    import torch

    fp, splits = dataset_fingerprint(config)
    if config.threads:  # time steps with the threads training will use
        torch.set_num_threads(config.threads)
    if profile is not None:
        return make_plan(fp, profile, budget, splits["train"], splits["val"], given), fp
    network = CalibratedProfile(MeasuredProfile(_device(config)))
    network.measured.workers = loader_workers(network.kind)
    plan = make_plan(fp, network, budget, splits["train"], splits["val"], given)
    train = _train_split(config)
    for _ in range(3):  # time the pick itself and its data pipeline (ratios miss both); re-plan
        pick = plan.candidate
        network.exact.add(pick)
        seconds = sample_seconds(train, plan.options)
        timed = PipelineProfile(network, seconds, pick.crop, network.workers)
        plan = make_plan(fp, timed, budget, splits["train"], splits["val"], given)
        plan.estimates["data_s_per_sample"] = round(seconds, 4)
        if plan.candidate == pick:
            break
    return plan, fp


def _device(config: Any) -> Any:
    import torch

    device = "cuda" if config.device == "auto" and torch.cuda.is_available() else config.device
    return torch.device("cpu" if device == "auto" else device)


def _train_split(config: Any) -> Any:
    from pixelwise.training.setup import open_split

    return open_split(config, "train", config.channels)
