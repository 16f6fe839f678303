"""Evaluation: one confusion matrix over a whole split, and everything derived from it.

The same code scores validation during training and ``pixelwise evaluate`` afterwards, and it
predicts exactly as ``pixelwise predict`` does (whole image, any size, see
:func:`pixelwise.predict.forward_full`), so the numbers describe what users get.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelwise.crf import CRFParams, dense_crf
from pixelwise.data import open_dataset
from pixelwise.data.base import SegmentationDataset
from pixelwise.data.transforms import mask_to_tensor, to_tensor
from pixelwise.files import write_json
from pixelwise.losses import pixel_cross_entropy
from pixelwise.metrics import confusion_matrix, format_scores, scores
from pixelwise.predict import TTA_VIEWS, Segmenter, forward_full, mean_over_views

__all__ = ["EvalResult", "evaluate_dataset", "evaluate_run"]


@dataclass
class EvalResult:
    """Confusion matrix, metrics and mean loss of one pass over a dataset."""

    cm: torch.Tensor
    scores: dict[str, Any]
    loss: float
    examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)


@torch.inference_mode()
def evaluate_dataset(
    model: torch.nn.Module,
    dataset: SegmentationDataset,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device | str = "cpu",
    class_weights: torch.Tensor | None = None,
    keep_examples: int = 0,
    progress: Callable[[Iterable], Iterator] | None = None,
    shard: tuple[int, int] = (0, 1),
    net: Callable[[torch.Tensor], torch.Tensor] | None = None,
    input_scale: float = 1.0,
    tta: bool = False,
    views: tuple[tuple[int, bool], ...] | None = None,
    crf: CRFParams | None = None,
) -> EvalResult:
    """Predict every sample of ``dataset`` at full resolution and accumulate one confusion matrix.

    ``keep_examples`` (image, truth, prediction) triples of the first samples are returned for
    pictures. ``shard=(rank, world_size)`` under ``torchrun``: each process scores a contiguous
    block of the samples and the confusion matrices and loss sums are summed over the processes
    (every process must call), so every process returns the metrics of the whole dataset.
    ``net``: the network call to use instead of ``model`` (an engine from
    :mod:`pixelwise.engines`; ``model`` still gives the geometry). ``tta``: score the mean
    probabilities of ``views`` (default: the 8 flips and rotations; see
    ``predict.mean_over_views``). ``crf``: score the dense CRF's refinement of the softmax
    (:func:`pixelwise.crf.dense_crf`; the loss is then the cross-entropy of its mean field).
    """
    from pixelwise.distributed import all_reduce_sum, shard_range

    was_training = model.training
    model.eval()
    c = dataset.classes.num_classes
    ignore = dataset.classes.ignore_index
    cm = torch.zeros(c, c, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    examples = []
    indices = shard_range(len(dataset), *shard)

    def full(v: torch.Tensor) -> torch.Tensor:
        return forward_full(model, v, net=net, input_scale=input_scale)

    for i in progress(indices) if progress else indices:
        sample = dataset[i]
        x = to_tensor(sample.image, mean, std).unsqueeze(0).to(device)
        y = mask_to_tensor(sample.mask).unsqueeze(0).to(device)
        logits = (mean_over_views(full, x, views or TTA_VIEWS) if tta else full(x)).float()
        if crf is not None:
            logits = dense_crf(logits[0], sample.image, crf).unsqueeze(0)
        loss_sum += pixel_cross_entropy(logits, y, class_weights, ignore_index=ignore)
        pred = logits.argmax(1)
        cm += confusion_matrix(pred, y, c, ignore)
        if len(examples) < keep_examples:
            examples.append((sample.image, sample.mask, pred[0].to(torch.uint8).cpu().numpy()))
    model.train(was_training)
    if shard[1] > 1:
        all_reduce_sum(cm)
        all_reduce_sum(loss_sum)
    cm = cm.cpu()
    return EvalResult(cm, scores(cm), float(loss_sum) / max(1, len(dataset)), examples)


def evaluate_run(
    run: str | Path,
    data: str | Path,
    split: str = "val",
    which: str = "best",
    device: str = "auto",
    out_dir: str | Path | None = None,
    progress: Callable[[Iterable], Iterator] | None = None,
    engine: str | None = None,
    compile: bool = False,
    threads: int | None = None,
    tta: bool = False,
    crf: CRFParams | None = None,
    **data_kwargs: Any,
) -> dict[str, Any]:
    """Score a trained run on ``data``'s ``split``.

    Writes ``eval_<split>.json`` (all metrics, class names, confusion matrix) and
    ``confusion_<split>.png`` to ``out_dir`` (default: the run directory) and returns the JSON
    content. The dataset must have the run's number of classes. ``crf``: refine each
    prediction with the dense CRF (``pixelwise.crf``); the report records its options.
    """
    from pixelwise.errors import ConfigError
    from pixelwise.plots import plot_confusion

    seg = Segmenter.from_run(run, which, device, engine=engine, compile=compile, threads=threads)
    if str(data) != "digits":  # mask values are the run's class indices (a held-out folder
        data_kwargs.setdefault("classes", seg.classes)  # may lack some classes or classes.txt)
    dataset = open_dataset(data, split, channels=seg.in_channels, **data_kwargs)
    if dataset.classes.num_classes != seg.classes.num_classes:
        raise ConfigError(
            f"--data {data}: has {dataset.classes.num_classes} classes but the run was trained "
            f"on {seg.classes.num_classes}"
        )
    result = evaluate_dataset(
        seg.model,
        dataset,
        seg.mean,
        seg.std,
        seg.device,
        progress=progress,
        net=seg.net,
        input_scale=seg.input_scale,
        tta=tta,
        views=seg.views,
        crf=crf,
    )
    out = Path(out_dir) if out_dir is not None else Path(run)
    report = {
        "run": str(run),
        "data": str(data),
        "split": split,
        "checkpoint": which,
        "tta": tta,
        "tta_views": len(seg.views) if tta else 1,
        "crf": crf.to_dict() if crf is not None else None,
        "images": len(dataset),
        "class_names": list(seg.classes.names),
        **result.scores,
        "confusion_matrix": result.cm.tolist(),
        "table": format_scores(result.scores, seg.classes.names),
    }
    write_json(out / f"eval_{split}.json", report)
    plot_confusion(result.cm.numpy(), seg.classes.names, out / f"confusion_{split}.png")
    return report
