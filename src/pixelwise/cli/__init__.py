"""The ``pixelwise`` command."""

from pixelwise.cli.commands import DATA_FORMATS, DEMO, build_parser, main

__all__ = ["DATA_FORMATS", "DEMO", "build_parser", "main"]
