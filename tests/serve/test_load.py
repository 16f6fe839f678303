"""``pixelwise serve`` under load, over real HTTP on 127.0.0.1: the bounded queue (503 +
Retry-After), the per-request timeout (503, work dropped), 413 from the header alone, batching,
and the CLI's options. A "gated" segmenter (the real one, whose ``predict`` waits for the test to
open a gate) holds the model busy so that the queue's states are reached without timing luck."""

import base64
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from pixelwise.predict import Segmenter  # noqa: E402
from pixelwise.serve.app import create_app  # noqa: E402
from tests.browser import serving  # noqa: E402
from tests.serve.test_app import png_bytes, segmenter  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"


class _Gated(Segmenter):
    """The real segmenter, whose ``predict`` records the image size and then waits for ``gate``."""

    def predict(self, image, tile=None, overlap=0.25):
        self.calls.append(image.shape[:2])
        self.started.set()
        assert self.gate.wait(60), "the test never opened the gate"
        return super().predict(image, tile, overlap)


def gated():
    seg = segmenter()
    g = _Gated(seg.model, seg.classes, seg.mean, seg.std, seg.in_channels)
    g.calls, g.started, g.gate = [], threading.Event(), threading.Event()
    return g


def image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def post(url, body, timeout=60):
    """(status, headers, parsed body) of ``POST /predict`` with ``body`` as the raw image."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", "/predict", body=body, headers={"Content-Type": "image/png"})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), json.loads(r.read())
    finally:
        conn.close()


def stats(url):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", "/api/stats")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def wait_for(condition, what):
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def start_upload(url, body, sent, length=None):
    """A raw connection that sends the headers of ``POST /predict`` and ``sent`` bytes of
    ``body`` (Content-Length: ``length``, default the whole body), then waits."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    head = (
        "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
    )
    sock.sendall(head.encode() + body[:sent])
    return sock


def response(sock):
    r = http.client.HTTPResponse(sock)
    r.begin()
    return r.status, dict(r.getheaders()), json.loads(r.read())


def mask_of(body):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))


def test_a_full_server_answers_503_and_retry_after_before_reading_the_body():
    seg = segmenter()
    data = png_bytes(image(30, 40))
    with serving(create_app(seg, max_queue=1)) as url:
        holder = start_upload(url, data, sent=len(data) // 2)  # admitted, still uploading
        wait_for(lambda: stats(url)["in_server"] == 1, "the first upload is admitted")
        status, headers, body = post(url, data)
        assert status == 503, body
        assert int(headers["retry-after"]) >= 1
        assert "--max-queue" in body["error"] and "\n" not in body["error"]
        holder.sendall(data[len(data) // 2 :])  # the first request completes normally
        status, _, body = response(holder)
        holder.close()
        assert status == 200
        np.testing.assert_array_equal(mask_of(body), seg.predict(image(30, 40)))
        assert post(url, data)[0] == 200  # its slot was freed
        s = stats(url)
        assert (s["rejected"], s["served"], s["in_server"], s["queued"]) == (1, 2, 0, 0)


def test_concurrent_requests_beyond_the_queue_get_503_and_nothing_else():
    seg = gated()
    data = png_bytes(image(20, 24))
    results = []

    def client():
        results.append(post(url, data))

    with serving(create_app(seg, max_queue=2)) as url:
        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        # two admitted (one on the gated model, one queued), six refused at once
        wait_for(lambda: stats(url)["rejected"] == 6, "six requests refused")
        assert stats(url)["in_server"] == 2
        seg.gate.set()
        for t in threads:
            t.join(60)
    statuses = sorted(r[0] for r in results)
    assert statuses == [200] * 2 + [503] * 6
    assert all(int(h["retry-after"]) >= 1 for s, h, _ in results if s == 503)


def test_the_timeout_drops_queued_work_and_frees_every_slot():
    seg = gated()
    with serving(create_app(seg, max_queue=4, timeout=1.0)) as url:
        first: list = []
        runner = threading.Thread(target=lambda: first.append(post(url, png_bytes(image(20, 24)))))
        runner.start()
        assert seg.started.wait(60)  # the first request is on the (gated) model
        status, headers, body = post(url, png_bytes(image(30, 36)))  # queued behind it
        assert status == 503 and "--timeout" in body["error"] and int(headers["retry-after"]) >= 1
        runner.join(60)
        assert first[0][0] == 503  # its deadline passed on the model: answered, result dropped
        s = stats(url)
        assert (s["timed_out"], s["queued"], s["in_server"]) == (2, 0, 1)  # the model still has it
        assert (s["dropped_queued"], s["dropped_running"]) == (1, 1)
        seg.gate.set()
        wait_for(lambda: stats(url)["in_server"] == 0, "the running request frees its slot")
        assert post(url, png_bytes(image(16, 16)))[0] == 200
    assert seg.calls == [(20, 24), (16, 16)]  # the queued request never reached the model


def test_queued_work_that_would_miss_its_deadline_is_dropped_before_running():
    seg = gated()
    with serving(create_app(seg, max_queue=4, timeout=2.0)) as url:
        first: list = []
        runner = threading.Thread(target=lambda: first.append(post(url, png_bytes(image(20, 24)))))
        runner.start()
        assert seg.started.wait(60)
        second: list = []
        queued = threading.Thread(target=lambda: second.append(post(url, png_bytes(image(30, 36)))))
        queued.start()
        wait_for(lambda: stats(url)["queued"] == 1, "the second request is queued")
        time.sleep(1.2)  # the first call takes >= 1.2 s: the second has <= 0.8 s left, < 1 s
        seg.gate.set()
        runner.join(60)
        queued.join(60)
    assert first[0][0] == 200
    status, headers, body = second[0]
    assert status == 503 and "--timeout" in body["error"] and int(headers["retry-after"]) >= 1
    assert seg.calls == [(20, 24)]  # the second never ran


def test_a_stalled_upload_times_out():
    data = png_bytes(image(30, 40))
    with serving(create_app(segmenter(), timeout=0.5)) as url:
        sock = start_upload(url, data, sent=10)
        status, headers, body = response(sock)
        sock.close()
        assert status == 503 and "--timeout" in body["error"] and "retry-after" in headers
        assert stats(url)["in_server"] == 0


def test_oversize_upload_gets_413_from_its_header_before_any_body():
    with serving(create_app(segmenter(), max_bytes=100_000, max_queue=1)) as url:
        sock = start_upload(url, b"", sent=0, length=5_000_000)  # no body byte is ever sent
        status, _, body = response(sock)
        sock.close()
        assert status == 413 and "--max-mb" in body["error"]
        assert stats(url)["admitted"] == 0


@pytest.mark.parametrize("batch", [1, 4])
def test_concurrent_clients_each_get_their_own_mask(batch):
    seg = segmenter()
    images = [image(32, 32, seed=i) for i in range(6)]
    results: dict[int, list] = {i: [] for i in range(len(images))}

    def client(i):
        for _ in range(3):
            results[i].append(post(url, png_bytes(images[i])))

    app = create_app(seg, max_queue=3, batch=batch, batch_wait_ms=20)
    with serving(app) as url:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(images))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        s = stats(url)
    for i, answers in results.items():
        for status, headers, body in answers:
            assert status in (200, 503), body
            if status == 200:
                np.testing.assert_array_equal(mask_of(body), seg.predict(images[i]))
            else:
                assert int(headers["retry-after"]) >= 1
    assert s["served"] + s["rejected"] == 18 and s["failed"] == s["timed_out"] == 0
    assert s["in_server"] == 0


def test_queued_same_size_images_run_as_one_batch_and_each_gets_its_mask():
    seg = gated()
    images = [image(32, 32, seed=i) for i in range(3)]
    answers: dict[int, tuple] = {}

    def client(i):
        answers[i] = post(url, png_bytes(images[i]))

    with serving(create_app(seg, max_queue=8, batch=4)) as url:
        first = threading.Thread(target=lambda: post(url, png_bytes(image(20, 24))))
        first.start()
        assert seg.started.wait(60)  # the model is busy with the first image
        threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        wait_for(lambda: stats(url)["queued"] == 3, "three same-size images queued")
        seg.gate.set()
        for t in [first, *threads]:
            t.join(60)
        s = stats(url)
    assert seg.calls == [(20, 24)]  # the three others went through predict_batch
    assert (s["served"], s["mean_batch"]) == (4, 2.0)  # batches of 1 and 3
    for i, (status, _, body) in answers.items():
        assert status == 200
        np.testing.assert_array_equal(mask_of(body), seg.predict(images[i]))


def test_batched_prediction_equals_one_at_a_time():
    seg = segmenter()
    images = [image(29, 41, seed=i) for i in range(3)]
    for got, im in zip(seg.predict_batch(images), images, strict=True):
        np.testing.assert_array_equal(got, seg.predict(im))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pixelwise", "serve", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.mark.parametrize(
    ("option", "value"),
    [("--max-queue", "0"), ("--timeout", "-1"), ("--batch", "0"), ("--batch-wait-ms", "5000")],
)
def test_cli_refuses_bad_limits_in_one_line(tmp_path, option, value):
    proc = _cli(str(tmp_path / "no-run"), option, value)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and out == ""
    assert option in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_serves_with_the_limits_given(run_dir):
    port = _free_port()
    proc = _cli(str(run_dir), "--port", str(port), "--max-queue", "3", "--timeout", "7",
                "--threads", "1")  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                s = stats(url)
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "pixelwise serve did not start"
                time.sleep(0.1)
        assert (s["max_queue"], s["timeout_s"], s["batch"]) == (3, 7.0, 1)
        status, _, body = post(url, png_bytes(image(40, 48)))
        assert status == 200 and (body["width"], body["height"]) == (48, 40)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
