"""``pixelwise label``: the labeling page and its HTTP API (starlette + uvicorn, like ``serve``).

Routes (errors are ``{"error": one line}`` with the status; 404: no such image, 410: its file
is gone, 409: its mask file is unreadable or a stroke cannot be undone, 400: a bad request):

- ``GET /``: the page (``static/label.html``, ``label.js``, ``label.css``; nothing external).
- ``GET /api/project``: classes, images (``name, file, width, height, labelled, version, error,
  score``), skipped files, counts, trainer status.
- ``GET /api/status?name=STEM``: counts, trainer status and that image's ``version`` (polled).
- ``GET /api/image/STEM``, ``/api/thumb/STEM``: the image (PNG, decoded as pixelwise reads it),
  a thumbnail.
- ``GET /api/mask/STEM``: the saved mask, raw ``uint8`` bytes row by row (``X-Width``,
  ``X-Height``, ``X-Version`` headers; 255 = unlabelled).
- ``GET /api/prediction/STEM``: the live model's labels then its entropy (0..255), raw ``uint8``
  (``X-Model-Version``); 204 before the first checkpoint.
- ``POST /api/strokes`` ``{name, strokes: [{class, radius, points: [[x, y], ...]}]}``: applied
  in order and saved (atomic) before the answer ``{name, version, ids, labelled, changed}``.
- ``POST /api/undo`` ``{name, id}``; ``POST /api/accept`` ``{name, threshold}``: unlabelled
  pixels whose predicted probability is at least ``threshold`` take the predicted class (one
  undoable change).
- ``GET /api/next?after=STEM&order=uncertain|sequential``: the unlabelled image to open next.
- ``GET /api/suggest/STEM?n=N``: up to N (1..100, default 5) unlabelled pixels to label next,
  drawn at random (``{name, version, points: [[x, y], ...]}``; the page's rings).
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pixelwise import __version__
from pixelwise.errors import ConfigError, PixelwiseError
from pixelwise.label.project import ERASE, MAX_RADIUS, LabelError, Project, Stroke
from pixelwise.label.trainer import Trainer, TrainerOptions

__all__ = ["LabelSession", "create_label_app", "run_label_server"]

STATIC = Path(__file__).resolve().parent / "static"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_BODY = 8_000_000
THUMB = 96

Log = Callable[[str], None]


class LabelSession:
    """The open project, its trainer and the page's caches (``app.state.label``)."""

    def __init__(self, project: Project, trainer: Trainer, train: bool) -> None:
        self.project = project
        self.trainer = trainer
        self.train = train
        self._png: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._png_lock = threading.Lock()

    def close(self) -> None:
        """Stop the trainer and release the project (idempotent)."""
        self.trainer.stop()
        self.project.close()

    def png(self, stem: str, kind: str) -> bytes:
        """The image (``kind="image"``) or its thumbnail as PNG bytes (cached)."""
        key = (stem, kind)
        with self._png_lock:
            if key in self._png:
                self._png.move_to_end(key)
                return self._png[key]
        image = self.project.image(stem, None if kind == "image" else 3)
        if image.shape[2] == 1:
            image = image[:, :, 0]
        img = Image.fromarray(np.ascontiguousarray(image))
        if kind == "thumb":
            img.thumbnail((THUMB, THUMB), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=1)
        data = buf.getvalue()
        with self._png_lock:
            self._png[key] = data
            while len(self._png) > 256 or sum(map(len, self._png.values())) > 200_000_000:
                self._png.popitem(last=False)
        return data

    def images(self) -> list[dict[str, Any]]:
        scores = self.trainer.live.scores
        rows = []
        for stem in self.project.order:
            row = self.project.entries[stem].describe()
            row["score"] = scores[stem][0] if stem in scores else None
            rows.append(row)
        return rows

    def next_image(self, after: str | None, order: str) -> dict[str, Any]:
        """The unlabelled image to open after ``after``: the most uncertain under the current
        model (mean entropy; images not scored yet come after the scored ones), or the next in
        file order (``sequential``, also before any model exists)."""
        project = self.project
        candidates = [
            s
            for s in project.order
            if s != after
            and project.entries[s].labelled == 0
            and not project.entries[s].error
            and project.entries[s].path.is_file()
        ]
        if not candidates:
            return {"name": None, "order": order, "reason": "every image has labels"}
        scores = self.trainer.live.scores
        scored = [s for s in candidates if s in scores]
        if order == "uncertain" and scored:
            best = max(scored, key=lambda s: scores[s][0])
            return {"name": best, "order": order, "score": scores[best][0],
                    "scored": len(scored), "candidates": len(candidates)}  # fmt: skip
        position = project.order.index(after) if after in project.order else -1
        ordered = project.order[position + 1 :] + project.order[: position + 1]
        name = next(s for s in ordered if s in candidates)
        reason = "file order" if order == "sequential" else "no uncertainty scores yet"
        return {"name": name, "order": "sequential", "reason": reason}

    def accept(self, stem: str, threshold: float) -> dict[str, Any]:
        pred = self.trainer.live.predict(stem, self.project)
        if pred is None:
            raise LabelError(409, "no model yet: draw a few strokes and wait for a prediction")
        mask = self.project.mask(stem)
        confident = (mask == ERASE) & (pred.confidence >= threshold)
        index = np.flatnonzero(confident.reshape(-1))
        out = self.project.set_pixels(stem, index, pred.labels.reshape(-1)[index])
        out["pixels"] = int(len(index))
        out["model_version"] = pred.version
        return out


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _session(request: Request) -> LabelSession:
    return request.app.state.label


async def _json(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise LabelError(413, f"request of {int(declared) / 1e6:.1f} MB is too large")
    body = await request.body()
    if len(body) > MAX_BODY:
        raise LabelError(413, f"request of {len(body) / 1e6:.1f} MB is too large")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise LabelError(400, "the request body is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise LabelError(400, "the request must be a JSON object with the image 'name'")
    return data


def _handles_errors(handler):
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except LabelError as err:
            return _error(err.status, err.message)
        except PixelwiseError as err:  # a DataError from a file read for the request
            return _error(400, str(err))

    wrapped.__name__ = handler.__name__
    return wrapped


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "label.html", media_type="text/html")


@_handles_errors
async def api_project(request: Request) -> Response:
    s = _session(request)
    p = s.project
    classes = [
        {"index": i, "name": n, "color": list(c)}
        for i, (n, c) in enumerate(zip(p.classes.names, p.classes.colors, strict=True))
    ]
    return JSONResponse(
        {
            "pixelwise_version": __version__,
            "root": str(p.root),
            "classes": classes,
            "erase": ERASE,
            "max_radius": MAX_RADIUS,
            "images": s.images(),
            "skipped": p.skipped,
            "counts": p.counts(),
            "trainer": s.trainer.status(),
            "training": s.train,
        }
    )


@_handles_errors
async def api_status(request: Request) -> Response:
    s = _session(request)
    out: dict[str, Any] = {"counts": s.project.counts(), "trainer": s.trainer.status()}
    name = request.query_params.get("name")
    if name:
        try:
            out["image"] = s.project.entry(name).describe()
        except LabelError as err:  # the page says so, and keeps showing the trainer
            out["image"] = {"name": name, "gone": err.message, "status": err.status}
    return JSONResponse(out)


@_handles_errors
async def api_image(request: Request) -> Response:
    s, name = _session(request), request.path_params["name"]
    kind = "thumb" if request.url.path.startswith("/api/thumb/") else "image"
    data = await run_in_threadpool(s.png, name, kind)
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-cache"})


@_handles_errors
async def api_mask(request: Request) -> Response:
    s, name = _session(request), request.path_params["name"]
    mask, version = await run_in_threadpool(s.project.mask_with_version, name)
    h, w = mask.shape
    headers = {"X-Width": str(w), "X-Height": str(h), "X-Version": str(version),
               "Cache-Control": "no-store"}  # fmt: skip
    return Response(mask.tobytes(), media_type="application/octet-stream", headers=headers)


@_handles_errors
async def api_prediction(request: Request) -> Response:
    s, name = _session(request), request.path_params["name"]
    s.project.entry(name)
    pred = await run_in_threadpool(s.trainer.live.predict, name, s.project)
    if pred is None:
        return Response(status_code=204)
    h, w = pred.labels.shape
    headers = {"X-Width": str(w), "X-Height": str(h), "X-Model-Version": str(pred.version),
               "Cache-Control": "no-store"}  # fmt: skip
    body = pred.labels.tobytes() + pred.entropy.tobytes()
    return Response(body, media_type="application/octet-stream", headers=headers)


@_handles_errors
async def api_strokes(request: Request) -> Response:
    s = _session(request)
    data = await _json(request)
    raw = data.get("strokes")
    if not isinstance(raw, list) or not 1 <= len(raw) <= 1000:
        raise LabelError(400, "'strokes' must be a list of 1..1000 strokes")
    strokes = [Stroke.from_json(item, s.project.classes.num_classes) for item in raw]
    out = await run_in_threadpool(s.project.apply, data["name"], strokes)
    return JSONResponse(out)


@_handles_errors
async def api_undo(request: Request) -> Response:
    s = _session(request)
    data = await _json(request)
    sid = data.get("id")
    if not isinstance(sid, str) or not sid:
        raise LabelError(400, "'id' must be the id of a saved stroke")
    return JSONResponse(await run_in_threadpool(s.project.undo, data["name"], sid))


@_handles_errors
async def api_accept(request: Request) -> Response:
    s = _session(request)
    data = await _json(request)
    threshold = data.get("threshold", 0.9)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise LabelError(400, "'threshold' must be a number in 0..1")
    if not 0.0 <= threshold <= 1.0:
        raise LabelError(400, f"'threshold' {threshold} must be in 0..1")
    s.project.entry(data["name"])
    return JSONResponse(await run_in_threadpool(s.accept, data["name"], float(threshold)))


@_handles_errors
async def api_next(request: Request) -> Response:
    order = request.query_params.get("order", "uncertain")
    if order not in ("uncertain", "sequential"):
        raise LabelError(400, f"order={order!r}: use 'uncertain' or 'sequential'")
    after = request.query_params.get("after") or None
    return JSONResponse(_session(request).next_image(after, order))


@_handles_errors
async def api_suggest(request: Request) -> Response:
    raw = request.query_params.get("n", "5")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise LabelError(400, f"n={raw!r}: ask for 1..100 points")
    name = request.path_params["name"]
    return JSONResponse(
        await run_in_threadpool(_session(request).project.suggested_points, name, int(raw))
    )


def create_label_app(
    images_dir: str | Path,
    classes: str | Sequence[str] | None,
    project: str | Path,
    run: str | Path | None = None,
    *,
    options: TrainerOptions | None = None,
    train: bool = True,
    log: Log | None = None,
) -> Starlette:
    """Open (or create) ``project`` from ``images_dir`` and return the page's ASGI app.

    ``classes``: the class names (``"a,b,c"`` or a list; None: the project's ``classes.txt``,
    or for a new project the ``run``'s classes). ``run``: a run directory to fine-tune (its
    classes must be the project's). ``train``: start the background trainer with the app (its
    lifespan; stopped, and the project released, when the app shuts down). The session is
    ``app.state.label``; call its ``close()`` when the app is used without its lifespan.
    """
    say = log or (lambda _m: None)
    options = options or TrainerOptions()
    options.check_model(run)  # before the project is created or changed
    colors = None
    if run is not None:
        from pixelwise.runs import read_config

        info = read_config(run)["classes"]
        colors = info.get("colors")
        if classes is None and not (Path(project) / "classes.txt").is_file():
            classes = info["names"]
    opened = Project.open(images_dir, classes, project, colors=colors, log=say)
    try:
        trainer = Trainer(opened, run=run, options=options, log=say)
    except BaseException:
        opened.close()
        raise
    session = LabelSession(opened, trainer, train)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if train:
            trainer.start()
        try:
            yield
        finally:
            session.close()

    routes = [
        Route("/", page),
        Route("/api/project", api_project),
        Route("/api/status", api_status),
        Route("/api/image/{name}", api_image),
        Route("/api/thumb/{name}", api_image),
        Route("/api/mask/{name}", api_mask),
        Route("/api/prediction/{name}", api_prediction),
        Route("/api/strokes", api_strokes, methods=["POST"]),
        Route("/api/undo", api_undo, methods=["POST"]),
        Route("/api/accept", api_accept, methods=["POST"]),
        Route("/api/next", api_next),
        Route("/api/suggest/{name}", api_suggest),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, middleware=[Middleware(GZipMiddleware, minimum_size=2048)]
    )
    app.state.label = session
    return app


def run_label_server(
    images_dir: str | Path,
    classes: str | Sequence[str] | None,
    project: str | Path,
    run: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    log: Log | None = None,
    *,
    threads: int | None = None,
    device: str = "auto",
    trainer: dict[str, Any] | None = None,
) -> None:
    """Serve the labeling page of ``project`` until interrupted (blocks); see
    :func:`create_label_app`. ``threads``: torch threads of the trainer; ``trainer``:
    :class:`TrainerOptions` fields to set (``--trainer KEY=VALUE``, checked before anything is
    written); ``log`` gets one-line notices (the project, skipped images, the model, the
    address)."""
    import uvicorn

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port: must be in 0..65535, got {port}")
    say = log or (lambda _m: None)
    options = TrainerOptions.with_overrides(trainer or {}, threads=threads, device=device)
    app = create_label_app(images_dir, classes, project, run, options=options, log=say)
    try:
        if host not in LOOPBACK:
            say(
                f"warning: --host {host} makes the page reachable from other machines; it has no "
                "authentication and writes into the project (use 127.0.0.1 unless you mean it)"
            )
        sock = _listen(host, port)
        say(f"labeling {project} at http://{host}:{sock.getsockname()[1]}/ (Ctrl-C to stop)")
        config = uvicorn.Config(app, log_level="warning", server_header=False)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            sock.close()
    finally:
        app.state.label.close()


def _listen(host: str, port: int):
    """A socket bound to ``host:port`` (uvicorn would exit the process on failure: here a
    ConfigError says what to do)."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as err:
        raise ConfigError(f"--host {host}: cannot listen there ({err})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise ConfigError(
            f"--port {port}: cannot listen on {host}:{port} ({err.strerror or err}); choose "
            "another --port"
        ) from None
    return sock
