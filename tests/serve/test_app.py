import base64
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette")
try:
    import httpx2  # noqa: F401  (starlette's TestClient client since 1.x)
except ImportError:
    pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from pixelwise.data.classes import ClassInfo  # noqa: E402
from pixelwise.models import build  # noqa: E402
from pixelwise.predict import Segmenter  # noqa: E402
from pixelwise.serve.app import STATIC, create_app  # noqa: E402

CLASSES = ClassInfo(("background", "cell", "edge"), ((0, 0, 0), (220, 60, 60), (60, 60, 220)))


def segmenter(in_channels=3):
    torch.manual_seed(0)
    model = build("unet_same", 3, in_channels=in_channels, depth=2, base_width=4).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return Segmenter(model, CLASSES, (0.5,) * in_channels, (0.25,) * in_channels, in_channels)


def png_bytes(array, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)


@pytest.fixture
def seg():
    return segmenter()


@pytest.fixture
def client(seg):
    return TestClient(create_app(seg, max_bytes=200_000, info={"model": "unet_same"}))


def test_page_and_static_files_use_no_external_resource(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"https?://|//[a-z0-9-]+\.[a-z]", text, re.I), name
        assert "@import" not in text and "@font-face" not in text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/static/../app.py").status_code == 404


def test_info_lists_classes_and_model(client):
    info = client.get("/api/info").json()
    assert info["model"] == "unet_same" and info["in_channels"] == 3
    assert [c["name"] for c in info["classes"]] == list(CLASSES.names)
    assert info["classes"][1] == {"index": 1, "name": "cell", "color": [220, 60, 60]}


def _check_json(body, image, seg):
    h, w = image.shape[:2]
    assert (body["width"], body["height"]) == (w, h)
    mask = Image.open(io.BytesIO(base64.b64decode(body["mask_png"])))
    assert mask.mode == "P" and mask.size == (w, h)
    labels = np.asarray(mask)
    np.testing.assert_array_equal(labels, seg.predict(image))
    rows = body["classes"]
    assert [r["name"] for r in rows] == list(CLASSES.names)
    assert sum(r["pixels"] for r in rows) == h * w
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    for r in rows:
        assert r["pixels"] == int((labels == r["index"]).sum())
    assert len({r["pixels"] for r in rows}) > 1  # random weights: not a single class


def test_predict_multipart_and_raw_body_give_the_same_json(client, seg, image):
    data = png_bytes(image)
    a = client.post("/predict", files={"image": ("scene.png", data, "image/png")})
    assert a.status_code == 200, a.text
    _check_json(a.json(), image, seg)
    b = client.post("/predict", content=data, headers={"content-type": "image/png"})
    assert b.status_code == 200 and b.json() == a.json()


def test_predict_png_by_query_or_accept(client, seg, image):
    data = png_bytes(image)
    for kwargs in ({"params": {"format": "png"}}, {"headers": {"accept": "image/png"}}):
        r = client.post("/predict", content=data, **kwargs)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        mask = Image.open(io.BytesIO(r.content))
        assert mask.mode == "P" and mask.size == (53, 37)
        assert mask.getpalette()[3:6] == [220, 60, 60]
        np.testing.assert_array_equal(np.asarray(mask), seg.predict(image))
    r = client.post("/predict", content=data, params={"format": "xml"})
    assert r.status_code == 400 and "format" in r.json()["error"]


def test_too_large_upload_is_413_with_a_message(client):
    big = png_bytes(np.random.default_rng(1).integers(0, 256, (300, 300, 3), dtype=np.uint8))
    assert len(big) > 200_000
    r = client.post("/predict", files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413
    assert "too large" in r.json()["error"] and "--max-mb" in r.json()["error"]
    # chunked (no Content-Length): refused while streaming
    r = client.post(
        "/predict", content=iter([big[i : i + 65536] for i in range(0, len(big), 65536)])
    )
    assert r.status_code == 413


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"hello, this is a text file\n", "not an image"),
        (b"", "empty upload"),
        ("truncated", "truncated or corrupt"),
    ],
)
def test_bad_uploads_are_400_with_a_message(client, image, payload, message):
    if payload == "truncated":
        payload = png_bytes(image)[:300]
    r = client.post("/predict", files={"image": ("x.png", payload, "image/png")})
    assert r.status_code == 400
    assert message in r.json()["error"]


def test_multipart_without_a_file_is_400(client):
    r = client.post("/predict", data={"note": "no file"})
    assert r.status_code == 400 and "image" in r.json()["error"]
    assert client.get("/predict").status_code == 405


def test_grayscale_model_accepts_color_and_jpeg(image):
    seg = segmenter(in_channels=1)
    client = TestClient(create_app(seg))
    r = client.post("/predict", content=png_bytes(image, "JPEG"))
    assert r.status_code == 200
    assert (r.json()["width"], r.json()["height"]) == (53, 37)


class _Recorder(Segmenter):
    def predict(self, image, tile=None, overlap=0.25):
        self.calls.append((image.shape[:2], tile))
        return np.zeros(image.shape[:2], dtype=np.uint8)


def test_large_images_are_predicted_in_tiles(seg):
    rec = _Recorder(seg.model, seg.classes, seg.mean, seg.std, seg.in_channels)
    rec.calls = []
    client = TestClient(create_app(rec, tile=64))
    small = np.zeros((40, 64, 3), dtype=np.uint8)
    large = np.zeros((40, 65, 3), dtype=np.uint8)
    for array in (small, large):
        assert client.post("/predict", content=png_bytes(array)).status_code == 200
    assert rec.calls == [((40, 64), None), ((40, 65), 64)]


def test_tiled_prediction_with_the_real_segmenter(seg, image):
    client = TestClient(create_app(seg, tile=32))
    r = client.post("/predict", content=png_bytes(image))
    assert r.status_code == 200
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["mask_png"]))))
    np.testing.assert_array_equal(mask, seg.predict(image, tile=32))
