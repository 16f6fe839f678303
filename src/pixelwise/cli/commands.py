"""The commands other than ``train`` and ``demo``: each ``cmd_*`` takes the parsed options,
calls the API and prints the result (errors are the caller's: :func:`pixelwise.cli.main`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pixelwise.cli.progress import iter_progress, log, progress_factory
from pixelwise.errors import ConfigError, PixelwiseError
from pixelwise.training.config import parse_key_values


def _data_args(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        out.update(parse_key_values(pair, "--data-arg", "limit=20"))
    return out


def _data_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``open_dataset`` keyword arguments from --format, --label-map and --data-arg."""
    d: dict[str, Any] = dict(_data_args(getattr(args, "data_arg", None)))
    if getattr(args, "format", None) not in (None, "auto"):
        d["format"] = args.format
    if getattr(args, "label_map", None) is not None:
        d["label_map"] = args.label_map
    if getattr(args, "mask_threshold", None) is not None:
        d["mask_threshold"] = args.mask_threshold
    if getattr(args, "masks", None) is not None:
        d["masks"] = args.masks
    return d


def _evaluate_data_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """--format/--label-map/--data-arg; on the run's own --data, what it was trained with
    (layout, label map, data args but ``limit``, --val-fraction) fills in the ones not given."""
    from pixelwise.runs import read_config

    given = _data_kwargs(args)
    if str(args.data) == "digits":
        return given
    try:
        trained = read_config(args.run).get("train", {})
    except PixelwiseError:
        return given  # evaluate_run reports the broken run itself
    if str(trained.get("data")) != str(args.data):
        return given
    d: dict[str, Any] = dict(trained.get("data_args") or {})
    d.pop("limit", None)  # a quick-training knob: score the whole split unless asked
    if isinstance(trained.get("val_fraction"), int | float):  # the same seeded val split
        d["val_fraction"] = trained["val_fraction"]
    if trained.get("data_format") not in (None, "auto"):
        d["format"] = trained["data_format"]
    if trained.get("label_map") is not None:
        d["label_map"] = trained["label_map"]
    if trained.get("mask_threshold") is not None:
        d["mask_threshold"] = trained["mask_threshold"]
    return {**d, **given}


def _crf(args: argparse.Namespace) -> Any:
    """``CRFParams`` from --crf and --crf-* (any of them turns the CRF on), else None."""
    given = (args.crf_iterations, args.crf_smooth, args.crf_appearance)
    if not args.crf and all(g is None for g in given):
        return None
    from pixelwise.crf import parse_crf_options

    return parse_crf_options(*given)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pixelwise.evaluate import evaluate_run

    report = evaluate_run(
        args.run,
        args.data,
        args.split,
        args.checkpoint,
        args.device or "auto",
        out_dir=args.out,
        progress=iter_progress(args.quiet, "evaluate", "img"),
        engine=args.engine,
        compile=args.compile,
        threads=args.engine_threads,
        tta=args.tta,
        crf=_crf(args),
        **_evaluate_data_kwargs(args),
    )
    print(report["table"])
    out = Path(args.out) if args.out else Path(args.run)
    print(f"\nwrote {out / f'eval_{args.split}.json'} and {out / f'confusion_{args.split}.png'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pixelwise.files import check_outputs_apart, without_outputs
    from pixelwise.predict import Segmenter, list_images, predict_files

    listed = list_images(args.inputs)
    check_outputs_apart([*args.inputs, *listed], args.out, protect=[args.run])
    files = without_outputs(listed, args.out)  # never read our own outputs back
    if not files:
        raise ConfigError(f"{' '.join(args.inputs)}: no image files found")
    if not 0 <= args.alpha <= 1:
        raise ConfigError(f"--alpha: must be between 0 and 1, got {args.alpha}")
    for f in files:
        if not f.is_file():
            raise ConfigError(f"{f}: no such image file")
    if _colorize_run(args.run):  # a --task colorize run writes colourized images
        return _cmd_colorize(args, files)
    shard = _predict_shard(args.shard)
    crf = _crf(args)
    device = args.device or "auto"
    if shard is not None and device in ("auto", "cuda") and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():  # one GPU per torchrun process
            device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    seg = Segmenter.from_run(
        args.run, args.checkpoint, device, args.engine, args.compile, args.engine_threads
    )
    seg.tta, seg.crf = args.tta, crf
    written = predict_files(
        seg,
        files,
        args.out,
        args.alpha,
        progress=iter_progress(args.quiet or len(files) < 2, "predict", "img"),
        tile=args.tile,
        overlap=args.overlap,
        shard=shard,
    )
    print(f"wrote {len(written)} mask(s) and overlay(s) to {args.out}")
    return 0


def _colorize_run(run: str) -> bool:
    from pixelwise.colorize import is_colorize_run

    return Path(run).is_dir() and (Path(run) / "config.json").is_file() and is_colorize_run(run)


def _cmd_colorize(args: argparse.Namespace, files: list) -> int:
    from pixelwise.colorize import Colorizer, colorize_files

    colorizer = Colorizer(args.run, args.checkpoint, args.device or "auto")
    progress = iter_progress(args.quiet or len(files) < 2, "colorize", "img")
    written = colorize_files(colorizer, files, args.out, progress=progress)
    print(f"wrote {len(written)} colourized image(s) to {args.out}")
    return 0


def _predict_shard(text: str | None) -> tuple[int, int] | None:
    """``--shard I/N``, else torchrun's ``RANK/WORLD_SIZE`` when several processes run."""
    from pixelwise import distributed

    if text is not None:
        return distributed.parse_shard(text)
    info = distributed.env_info()
    return (info.rank, info.world_size) if info.enabled else None


def cmd_heatmap(args: argparse.Namespace) -> int:
    from pixelwise.heatmap import heatmap_command

    if args.epochs < 1:
        raise ConfigError(f"--epochs: must be at least 1, got {args.epochs}")
    run, image = args.run, args.image
    for target in args.targets:  # positionals: a folder is the RUN, anything else the IMAGE
        if Path(target).is_dir():
            if run is not None:
                raise ConfigError(f"{target}: a second RUN folder; give one RUN and one IMAGE")
            run = target
        else:
            if image is not None:
                raise ConfigError(f"{target}: a second IMAGE; give one RUN and one IMAGE")
            image = target
    if image is not None:
        from pixelwise.files import check_outputs_apart

        check_outputs_apart([image], args.out)  # pictures are written beside no input
    written = heatmap_command(
        run,
        image,
        args.out,
        epochs=args.epochs,
        seed=args.seed,
        progress=progress_factory(args.quiet),
        full_resolution=not args.no_full,
    )
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pixelwise.export import export_run
    from pixelwise.files import check_outputs_apart

    run = Path(args.run)
    if run.is_dir():  # the file written must not replace anything of the run
        check_outputs_apart([p for p in run.iterdir() if p.is_file()], args.out)
    if args.int8:
        from pixelwise.export import export_int8

        report = export_int8(
            args.run, args.out, args.checkpoint, calibration_images=args.calibration_images,
            tolerance=args.int8_tolerance, check_images=args.check_images or None,
            fmt=args.format, progress=iter_progress(args.quiet, "int8 check", "img"),
        )  # fmt: skip
        for line in report.lines():
            print(line)
        return 0
    report = export_run(args.run, args.out, args.format, args.checkpoint)
    for line in report.lines():
        print(line)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from pixelwise.serve.app import run_server
    except ImportError as err:
        raise ConfigError(
            f"pixelwise serve needs starlette and uvicorn ({err}); "
            "install them with: pip install 'pixelwise[serve]'"
        ) from None
    run_server(
        args.run,
        host=args.host,
        port=args.port,
        max_mb=args.max_mb,
        tile=args.tile or None,
        checkpoint=args.checkpoint,
        device=args.device or "auto",
        log=log,
        max_queue=args.max_queue,
        timeout=args.timeout,
        batch=args.batch,
        batch_wait_ms=args.batch_wait_ms,
        engine=args.engine,
        threads=args.engine_threads,
        crf=_crf(args),
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """One line per model: name, parameters at width 1 (21 classes), its builder's summary."""
    from pixelwise import models

    for name in models.available():
        about = models.info(name)
        paper = f" ({about.paper})" if about.paper else ""
        print(f"{name:<18} {_parameters(name):>7} params  {about.use}{paper}")
    return 0


def _parameters(name: str) -> str:
    """The model's parameter count at width 1, counted on the meta device (no memory)."""
    import torch

    from pixelwise.models import build

    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in build(name, num_classes=21).parameters())
    except Exception:  # a builder that cannot run on the meta device: no count
        return "?"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def cmd_data_check(args: argparse.Namespace) -> int:
    from pixelwise.data.check import check_dataset

    report = check_dataset(
        args.dir,
        progress=iter_progress(args.quiet, "check", "pair"),
        **_data_kwargs(args),
    )
    print(report.format())
    if args.out:
        from pixelwise.files import write_json
        from pixelwise.plots import plot_class_frequencies

        out = Path(args.out)
        write_json(out / "check.json", report.to_dict())
        written = [out / "check.json"]
        if report.classes is not None:
            title = f"{Path(report.root).name}: class pixel frequencies ({report.layout})"
            written.append(
                plot_class_frequencies(
                    report.class_pixels, report.classes, out / "class_frequencies.png", title
                )
            )
        print(f"wrote {' and '.join(str(w) for w in written)}")
    return 0 if report.ok else 1


def cmd_data_weights(args: argparse.Namespace) -> int:
    from pixelwise.data import open_dataset
    from pixelwise.files import check_outputs_apart
    from pixelwise.plots import write_weight_maps

    if str(args.dir) != "digits":  # the pictures go outside the dataset folder
        check_outputs_apart([args.dir], args.out, protect=[args.dir])
    dataset = open_dataset(args.dir, args.split, **_data_kwargs(args))
    written = write_weight_maps(
        dataset,
        args.out,
        w0=args.w0,
        sigma=args.sigma,
        limit=args.limit,
        progress=iter_progress(args.quiet, "weights", "img"),
    )
    print(f"wrote {len(written)} weight map(s) to {args.out}")
    return 0


def cmd_data_fix(args: argparse.Namespace) -> int:
    from pixelwise.data.fix import fix_dataset

    options = _data_kwargs(args)
    threshold = options.pop("mask_threshold", None)
    report = fix_dataset(
        args.dir,
        args.out,
        mask_values=args.mask_values,
        threshold=threshold,
        resize=args.resize,
        dedupe=not args.keep_duplicates,
        progress=iter_progress(args.quiet, "fix", "pair"),
        **options,
    )
    print(report.summary())
    print(f"next: pixelwise data check {args.out}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    try:
        from pixelwise.label.app import run_label_server
    except ImportError as err:
        raise ConfigError(
            f"pixelwise label needs starlette and uvicorn ({err}); "
            "install them with: pip install 'pixelwise[serve]'"
        ) from None
    trainer: dict[str, object] = {}
    for item in args.trainer:
        trainer.update(parse_key_values(item, "--trainer", "rotate90=true"))
    run_label_server(
        args.images,
        args.classes,
        args.out,
        run=args.run,
        host=args.host,
        port=args.port,
        log=log,
        threads=args.engine_threads,
        device=args.device,
        trainer=trainer,
    )
    return 0
