"""The ``pixelwise`` command: parses options, calls the API, prints results.

- :mod:`.parser`: the argument parser, one subparser per command;
- :mod:`.options`: the ``train`` / ``demo`` options, generated from TrainConfig's fields;
- :mod:`.train`: ``train`` and ``demo``; :mod:`.commands`: the other commands;
- :mod:`.progress`: tqdm bars on a terminal, plain lines elsewhere.

Errors a user can fix (bad files, bad options, missing runs) are printed as one line on stderr
with exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from pixelwise.cli.parser import build_parser
from pixelwise.cli.progress import mark_start
from pixelwise.cli.train import DEMO
from pixelwise.errors import ConfigError, PixelwiseError
from pixelwise.training.config import DATA_FORMATS

__all__ = ["DATA_FORMATS", "DEMO", "build_parser", "main"]


def _process_settings(args: argparse.Namespace) -> None:
    """Process-wide settings of some commands: --threads of the inference commands (train and
    demo hand theirs to training, which records it) and --max-image-pixels."""
    threads = getattr(args, "engine_threads", None)
    if threads is not None:
        if threads < 1:
            raise ConfigError("--threads: must be at least 1")
        import torch

        torch.set_num_threads(threads)
    limit = getattr(args, "max_image_pixels", None)
    if limit is not None:
        if limit < 0:
            raise ConfigError("--max-image-pixels: must be >= 0")
        from pixelwise.data.io import set_max_image_pixels

        set_max_image_pixels(limit or None)


def main(argv: Sequence[str] | None = None) -> int:
    mark_start()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported with the command's own usage (argparse exits with status 2)
        (getattr(args, "command_parser", None) or parser).error(
            f"unrecognized arguments: {' '.join(unknown)}"
        )
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        _process_settings(args)
        return args.func(args)
    except PixelwiseError as err:
        if args.debug:
            raise
        print(f"pixelwise: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # TrainingInterrupted says how to resume
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
            print(f"pixelwise: {err or 'interrupted'}", file=sys.stderr)
        return 128 + getattr(err, "signum", 2)
    except Exception as err:  # an unexpected failure: one line, traceback with --debug
        if args.debug:
            raise
        print(
            f"pixelwise: internal error: {type(err).__name__}: {err} "
            "(run again with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        return 1
