"""``pixelwise serve``: a small web page and HTTP API that label uploaded images.

Starlette (ASGI routing, requests, responses) + uvicorn (the server). Routes:

- ``GET /``: the page (``static/index.html``, ``app.js``, ``style.css``; no external resource).
- ``GET /api/info``: ``{model, run, checkpoint, in_channels, tile, max_bytes, classes: [{index,
  name, color}]}``.
- ``POST /predict``: the image as multipart field ``image`` or as the raw body. Answers
  ``{width, height, classes: [{index, name, color, pixels, share}], mask_png}`` (``mask_png``:
  base64 palette PNG of class indices) or, with ``?format=png`` or ``Accept: image/png``, the
  PNG itself. 413 over the size limit, 400 for anything that is not a readable image, 503 with
  ``Retry-After`` when the server is full or the request ran past its deadline; errors are
  ``{"error": message}``.
- ``GET /api/stats``: queue depth, limits and counters (:meth:`ModelQueue.stats`).

Under load (:mod:`pixelwise.serve.admission`): at most ``max_queue`` prediction requests are in the
server at once, the next one gets 503 + ``Retry-After`` before its body is read; each has
``timeout`` seconds, after which it gets 503 and its work is dropped; one worker thread runs the
model (``batch > 1``: same-size images queued together go through it as one batch).

Nothing is written to disk from a request (uploads are decoded in memory; Starlette may spool a
large multipart part to an anonymous temporary file), and no file name from a request is used.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pixelwise import __version__
from pixelwise.data.classes import ClassInfo
from pixelwise.data.io import decode_image as io_decode_image
from pixelwise.errors import ConfigError, DataError
from pixelwise.predict import Segmenter
from pixelwise.serve.admission import ModelQueue, Overloaded, check_limits

__all__ = ["UploadError", "create_app", "decode_image", "mask_png", "run_server"]

STATIC = Path(__file__).resolve().parent / "static"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class UploadError(Exception):
    """A request the server refuses: ``status`` (400 or 413) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_image(data: bytes, channels: int) -> np.ndarray:
    """Bytes of an image file -> ``uint8 (H, W, channels)``, converted as ``read_image`` does
    (:func:`pixelwise.data.io.decode_image`: EXIF orientation applied, alpha dropped, 16-bit
    scaled). ``UploadError(400)`` otherwise."""
    if not data:
        raise UploadError(400, "empty upload: send an image file (PNG, JPEG, ...)")
    try:
        return io_decode_image(data, channels, name="upload")
    except DataError as err:
        problem = err.problem
        if problem.startswith("cannot identify image file"):
            problem = "not an image: the upload is not in a format Pillow can read (PNG, JPEG, ...)"
        raise UploadError(400, problem) from None


def mask_png(mask: np.ndarray, classes: ClassInfo) -> bytes:
    """``(H, W)`` class indices -> bytes of a palette PNG coloured by ``classes``."""
    h, w = mask.shape
    img = Image.frombytes("P", (w, h), np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    img.putpalette(classes.palette())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _class_table(classes: ClassInfo, counts: np.ndarray | None = None) -> list[dict[str, Any]]:
    total = float(counts.sum()) if counts is not None else 0.0
    rows = []
    for i, (name, color) in enumerate(zip(classes.names, classes.colors, strict=True)):
        row: dict[str, Any] = {"index": i, "name": name, "color": list(color)}
        if counts is not None:
            row["pixels"] = int(counts[i])
            row["share"] = float(counts[i]) / total if total else 0.0
        rows.append(row)
    return rows


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)


def _busy(err: Overloaded) -> JSONResponse:
    return _error(503, err.message, {"Retry-After": str(err.retry_after)})


def _limit_text(max_bytes: int) -> str:
    return f"the limit is {max_bytes / 1e6:g} MB (pixelwise serve --max-mb)"


def _check_declared_size(request: Request, max_bytes: int) -> None:
    """413 from the ``Content-Length`` header alone (nothing read), 400 if it is not a number."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise UploadError(400, "invalid Content-Length header") from None
        if size > max_bytes:
            raise UploadError(
                413, f"upload of {size / 1e6:.1f} MB is too large: {_limit_text(max_bytes)}"
            )


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refusing (413) anything over ``max_bytes`` before reading it all."""
    limit_text = _limit_text(max_bytes)
    _check_declared_size(request, max_bytes)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise UploadError(413, f"upload is too large: {limit_text}")
            chunks.append(chunk)
    except ClientDisconnect:
        raise UploadError(400, "the client disconnected during the upload") from None
    return b"".join(chunks)


async def _image_bytes(request: Request, max_bytes: int) -> bytes:
    """The uploaded file: multipart field ``image`` (or the only file field), else the body."""
    body = await _read_body(request, max_bytes)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body

    async def replay() -> dict[str, Any]:
        nonlocal body
        chunk, body = body, b""
        return {"type": "http.request", "body": chunk, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(
            max_files=4, max_fields=16, max_part_size=max_bytes
        )
    except Exception as err:  # MultiPartException and parser errors
        raise UploadError(400, f"malformed multipart upload ({err})") from None
    try:
        item = form.get("image")
        if item is None or isinstance(item, str):
            files = [v for _, v in form.multi_items() if not isinstance(v, str)]
            if not files:
                raise UploadError(400, "multipart upload has no file field 'image'")
            item = files[0]
        return await item.read()
    finally:
        await form.close()


def create_app(
    segmenter: Segmenter,
    *,
    max_bytes: int = 20_000_000,
    tile: int | None = 512,
    info: dict[str, Any] | None = None,
    max_queue: int = 16,
    timeout: float = 30.0,
    batch: int = 1,
    batch_wait_ms: float = 2.0,
) -> Starlette:
    """The ASGI app serving ``segmenter``. ``tile``: images larger than this on a side are
    predicted tile by tile (``Segmenter.predict(image, tile=...)``); ``info`` adds fields
    (model name, run) to ``GET /api/info``. ``max_queue``, ``timeout`` (seconds), ``batch`` and
    ``batch_wait_ms``: the limits of :class:`~pixelwise.serve.admission.ModelQueue`."""
    classes = segmenter.classes
    meta = {
        "pixelwise_version": __version__,
        "in_channels": segmenter.in_channels,
        "tile": tile,
        "max_bytes": max_bytes,
        **(info or {}),
        "classes": _class_table(classes),
    }

    def predict(image: np.ndarray) -> np.ndarray:
        if tile and max(image.shape[:2]) > tile:
            return segmenter.predict(image, tile=tile)
        return segmenter.predict(image)

    queue = ModelQueue(
        predict,
        segmenter.predict_batch,
        max_queue=max_queue,
        timeout=timeout,
        batch=batch,
        batch_wait_ms=batch_wait_ms,
    )

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def api_info(request: Request) -> Response:
        return JSONResponse(meta)

    async def api_stats(request: Request) -> Response:
        return JSONResponse(queue.stats())

    async def api_predict(request: Request) -> Response:
        try:
            want_png = _wants_png(request)
            _check_declared_size(request, max_bytes)  # 413 before anything is read or queued
            ticket = queue.admit()
        except UploadError as err:
            return _error(err.status, err.message)
        except Overloaded as err:
            return _busy(err)
        try:
            async with asyncio.timeout(max(ticket.remaining(), 0.0)):
                data = await _image_bytes(request, max_bytes)
                image = await run_in_threadpool(decode_image, data, segmenter.in_channels)
                del data
                small = not (tile and max(image.shape[:2]) > tile)
                mask = await queue.predict(ticket, image, image.shape if small else None)
        except UploadError as err:
            return _error(err.status, err.message)
        except TimeoutError:
            return _busy(queue.timed_out())
        except Overloaded as err:  # dropped before running: it would have missed its deadline
            return _busy(queue.timed_out(err))
        except ConfigError as err:  # --crf on an image over its size limit
            return _error(413, str(err))
        except Exception as err:  # the model failed: one line, never a traceback to the client
            return _error(500, f"prediction failed: {type(err).__name__}: {err}")
        finally:
            queue.release(ticket)
        return await run_in_threadpool(_answer, mask, classes, want_png)

    async def not_allowed(request: Request) -> Response:
        return _error(405, "use POST with an image (multipart field 'image' or the raw body)")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        queue.close()

    routes = [
        Route("/", index),
        Route("/api/info", api_info),
        Route("/api/stats", api_stats),
        Route("/predict", api_predict, methods=["POST"]),
        Route("/predict", not_allowed, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.queue = queue
    return app


def _wants_png(request: Request) -> bool:
    """Whether the client asked for the mask PNG itself (``?format=png`` or ``Accept``) rather
    than the JSON; a bad ``format`` is an UploadError (400)."""
    fmt = request.query_params.get("format", "")
    if fmt not in ("", "json", "png"):
        raise UploadError(400, f"format={fmt!r}: use 'json' (the default) or 'png'")
    accept = request.headers.get("accept", "")
    return fmt == "png" or (not fmt and "image/png" in accept and "json" not in accept)


def _answer(mask: np.ndarray, classes: ClassInfo, want_png: bool) -> Response:
    """The response for ``mask (H, W)``: the PNG itself, or the JSON with it in base64."""
    png = mask_png(mask, classes)
    if want_png:
        return Response(png, media_type="image/png")
    counts = np.bincount(mask.ravel(), minlength=classes.num_classes)
    return JSONResponse(
        {
            "width": int(mask.shape[1]),
            "height": int(mask.shape[0]),
            "classes": _class_table(classes, counts[: classes.num_classes]),
            "mask_png": base64.b64encode(png).decode("ascii"),
        }
    )


def run_server(
    run: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_mb: float = 20.0,
    tile: int | None = 512,
    checkpoint: str = "best",
    device: str = "auto",
    log: Callable[[str], None] | None = None,
    max_queue: int = 16,
    timeout: float = 30.0,
    batch: int = 1,
    batch_wait_ms: float = 2.0,
    engine: str | None = None,
    threads: int | None = None,
    crf: Any = None,
) -> None:
    """Load ``run`` and serve it until interrupted (blocks). ``log`` gets one-line notices;
    ``max_queue``, ``timeout``, ``batch``, ``batch_wait_ms``: see :func:`create_app`;
    ``engine``, ``threads``: as ``Segmenter.from_run``'s (``auto`` is timed on the first
    request's image); ``crf``: a :class:`pixelwise.crf.CRFParams` to refine every prediction
    with."""
    import uvicorn

    from pixelwise.runs import load_run

    if not max_mb > 0:
        raise ConfigError(f"--max-mb: must be positive, got {max_mb}")
    if tile is not None and tile < 32:
        raise ConfigError(f"--tile: must be at least 32 pixels (or 0 for no tiling), got {tile}")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port: must be in 0..65535, got {port}")
    check_limits(max_queue, timeout, batch, batch_wait_ms)
    say = log or (lambda _m: None)
    loaded = load_run(run, checkpoint)
    segmenter = Segmenter.from_run(
        loaded, checkpoint, device, engine=engine, threads=threads, folder=run
    )
    segmenter.crf = crf
    app = create_app(
        segmenter,
        max_bytes=int(max_mb * 1e6),
        tile=tile,
        info={
            "model": loaded.config["model"]["name"],
            "run": Path(run).name,
            "checkpoint": checkpoint,
            "epoch": loaded.info.get("epoch"),
            "crf": crf.to_dict() if crf is not None else None,
        },
        max_queue=max_queue,
        timeout=timeout,
        batch=batch,
        batch_wait_ms=batch_wait_ms,
    )
    if host not in LOOPBACK:
        say(
            f"warning: --host {host} makes the server reachable from other machines; it has no "
            "authentication (use the default 127.0.0.1 unless you mean it)"
        )
    say(f"serving {run} at http://{host}:{port}/ (Ctrl-C to stop)")
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False)
