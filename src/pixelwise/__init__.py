"""pixelwise: pixel labeling with fully convolutional networks.

Data flows one way: files -> dataset -> model -> logits -> metrics / plots / files.
Everything the command line does is a plain function or class importable from here.
"""

__version__ = "0.1.0"

from pixelwise.errors import ConfigError, DataError, PixelwiseError  # noqa: E402

__all__ = ["ConfigError", "DataError", "PixelwiseError", "__version__"]
