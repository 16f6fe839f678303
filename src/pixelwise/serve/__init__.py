"""``pixelwise serve``: a web page and HTTP API for a trained run (needs ``pixelwise[serve]``:
starlette and uvicorn). See :mod:`pixelwise.serve.app`."""
