"""The labeling API with starlette's TestClient: saves, two clients, restarts, bad inputs."""

from __future__ import annotations

import io
import re
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
try:
    import httpx2  # noqa: F401  (starlette's TestClient client since 1.x)
except ImportError:
    pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from pixelwise.data import open_dataset  # noqa: E402
from pixelwise.data.check import check_dataset  # noqa: E402
from pixelwise.data.io import read_mask  # noqa: E402
from pixelwise.errors import ConfigError, DataError  # noqa: E402
from pixelwise.label.app import STATIC, create_label_app  # noqa: E402
from pixelwise.label.project import ERASE, stroke_footprint  # noqa: E402
from pixelwise.label.trainer import TrainerOptions  # noqa: E402

from .conftest import write_images  # noqa: E402

CLASSES = "background,cell,edge"
FAST = TrainerOptions(
    model_args={"depth": 2, "base_width": 4}, crop=32, batch_size=2, threads=1, device="cpu"
)


@pytest.fixture
def make_app(tmp_path):
    apps = []

    def make(images=None, classes=CLASSES, project=None, **kwargs):
        images = images or write_images(tmp_path / "in")
        app = create_label_app(
            images, classes, project or tmp_path / "proj", options=FAST, train=False, **kwargs
        )
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.state.label.close()


def stroke(value, radius, *points):
    return {"class": value, "radius": radius, "points": [list(p) for p in points]}


def expected_mask(strokes, h=40, w=56):
    out = np.full((h, w), ERASE, np.uint8)
    for s in strokes:
        found = stroke_footprint([tuple(p) for p in s["points"]], s["radius"], h, w)
        if found:
            (t, left, b, r), hit = found
            out[t:b, left:r][hit] = s["class"]
    return out


def test_page_and_static_files_use_nothing_external(make_app):
    client = TestClient(make_app())
    page = client.get("/")
    assert page.status_code == 200 and "label.js" in page.text
    for name in ("label.html", "label.js", "label.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"https?://", text), name
        assert client.get(f"/static/{name}").status_code == 200


def test_project_lists_classes_images_and_counts(make_app):
    client = TestClient(make_app())
    info = client.get("/api/project").json()
    assert [c["name"] for c in info["classes"]] == ["background", "cell", "edge"]
    assert [i["name"] for i in info["images"]] == ["img0", "img1", "img2"]
    assert info["counts"] == {"images": 3, "labelled": 0, "unlabelled": 3}
    assert info["images"][0]["width"] == 56 and info["images"][0]["height"] == 40
    thumb = client.get("/api/thumb/img0")
    assert thumb.headers["content-type"] == "image/png"
    image = client.get("/api/image/img0")
    with Image.open(io.BytesIO(image.content)) as img:
        assert img.size == (56, 40)


def test_strokes_are_saved_exactly_and_served_back(make_app, tmp_path):
    client = TestClient(make_app())
    strokes = [stroke(1, 3, (10, 10), (30, 12)), stroke(2, 2.5, (45.5, 30.25))]
    res = client.post("/api/strokes", json={"name": "img1", "strokes": strokes})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["version"] == 1 and len(body["ids"]) == 2 and body["changed"]
    expected = expected_mask(strokes)
    saved = read_mask(tmp_path / "proj" / "masks" / "img1.png")
    np.testing.assert_array_equal(saved, expected)
    assert body["labelled"] == int((expected != ERASE).sum())
    raw = client.get("/api/mask/img1")
    assert raw.headers["x-version"] == "1" and raw.headers["x-width"] == "56"
    np.testing.assert_array_equal(np.frombuffer(raw.content, np.uint8).reshape(40, 56), expected)
    status = client.get("/api/status?name=img1").json()
    assert status["counts"]["labelled"] == 1 and status["image"]["version"] == 1
    # the project is a dataset that the other commands take as it is
    assert check_dataset(tmp_path / "proj").ok
    assert len(open_dataset(tmp_path / "proj", "train")) >= 1
    # undo
    undo = client.post("/api/undo", json={"name": "img1", "id": body["ids"][1]})
    assert undo.status_code == 200 and undo.json()["version"] == 2
    np.testing.assert_array_equal(
        read_mask(tmp_path / "proj" / "masks" / "img1.png"), expected_mask(strokes[:1])
    )


def test_two_clients_on_one_image_lose_nothing(make_app, tmp_path):
    app = make_app()
    a, b = TestClient(app), TestClient(app)
    left = [stroke(1, 2, (4 + 4 * i, 6)) for i in range(10)]
    right = [stroke(2, 2, (4 + 4 * i, 30)) for i in range(10)]
    errors = []

    def send(client, strokes):
        for s in strokes:
            r = client.post("/api/strokes", json={"name": "img0", "strokes": [s]})
            if r.status_code != 200:
                errors.append(r.text)

    threads = [threading.Thread(target=send, args=job) for job in ((a, left), (b, right))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    saved = read_mask(tmp_path / "proj" / "masks" / "img0.png")
    np.testing.assert_array_equal(saved, expected_mask(left + right))
    assert a.get("/api/status?name=img0").json()["image"]["version"] == 20


def test_a_restart_shows_exactly_what_was_drawn(make_app, tmp_path):
    images = write_images(tmp_path / "in")
    first = make_app(images)
    strokes = [stroke(0, 4, (8, 8), (20, 30), (50, 35))]
    TestClient(first).post("/api/strokes", json={"name": "img2", "strokes": strokes})
    first.state.label.close()
    second = make_app(images, classes=None)
    raw = TestClient(second).get("/api/mask/img2")
    np.testing.assert_array_equal(
        np.frombuffer(raw.content, np.uint8).reshape(40, 56), expected_mask(strokes)
    )


def test_bad_requests_get_one_line_json_errors(make_app, tmp_path):
    client = TestClient(make_app())
    cases = [
        ({"name": "nope", "strokes": [stroke(1, 2, (1, 1))]}, 404, r"no image 'nope'"),
        ({"name": "img0", "strokes": [stroke(7, 2, (1, 1))]}, 400, r"stroke class 7"),
        ({"name": "img0", "strokes": []}, 400, r"1..1000"),
        ({"strokes": []}, 400, r"'name'"),
    ]
    for body, status, message in cases:
        res = client.post("/api/strokes", json=body)
        assert res.status_code == status and re.search(message, res.json()["error"]), res.text
    headers = {"content-type": "application/json"}
    res = client.post("/api/strokes", content=b"{not json", headers=headers)
    assert res.status_code == 400 and "JSON" in res.json()["error"]
    res = client.post("/api/undo", json={"name": "img0", "id": "deadbeef-1"})
    assert res.status_code == 409 and "restarted" in res.json()["error"]
    assert client.get("/api/next?order=random").status_code == 400
    res = client.post("/api/accept", json={"name": "img0", "threshold": 2})
    assert res.status_code == 400
    res = client.post("/api/accept", json={"name": "img0"})
    assert res.status_code == 409 and "no model yet" in res.json()["error"]


def test_a_vanished_image_answers_410(make_app, tmp_path):
    client = TestClient(make_app())
    (tmp_path / "proj" / "images" / "img1.png").unlink()
    res = client.post("/api/strokes", json={"name": "img1", "strokes": [stroke(1, 2, (3, 3))]})
    assert res.status_code == 410 and "no longer exists" in res.json()["error"]
    assert client.get("/api/mask/img1").status_code == 410
    assert client.get("/api/image/img1").status_code == 410
    status = client.get("/api/status?name=img1")
    assert status.status_code == 200 and "no longer exists" in status.json()["image"]["gone"]
    assert client.get("/api/next?order=sequential&after=img0").json()["name"] == "img2"


def test_corrupt_masks_and_unreadable_images_are_reported(make_app, tmp_path):
    images = write_images(tmp_path / "in")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n....")
    app = make_app(images)
    app.state.label.close()
    (tmp_path / "proj" / "masks" / "img0.png").write_bytes(b"not a png")
    client = TestClient(make_app(images))
    info = client.get("/api/project").json()
    assert [s["file"] for s in info["skipped"]] == ["broken.png"]
    bad = next(i for i in info["images"] if i["name"] == "img0")
    assert "img0.png" in bad["error"]
    res = client.post("/api/strokes", json={"name": "img0", "strokes": [stroke(1, 2, (3, 3))]})
    assert res.status_code == 409 and "not overwritten" in res.json()["error"]
    assert (tmp_path / "proj" / "masks" / "img0.png").read_bytes() == b"not a png"
    assert client.get("/api/mask/img0").status_code == 409


def test_bad_inputs_at_start(make_app, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no readable images"):
        make_app(empty)
    with pytest.raises(ConfigError, match=r"duplicate class names cell"):
        make_app(classes="background,cell,cell")
    with pytest.raises(ConfigError, match=r"256 classes"):
        make_app(classes=[f"c{i}" for i in range(256)])


def test_prediction_accept_and_next_with_a_model(make_app, tmp_path):
    app = make_app()
    client = TestClient(app)
    session = app.state.label
    assert client.get("/api/prediction/img0").status_code == 204
    drawn = [stroke(1, 4, (10, 10), (40, 30))]
    client.post("/api/strokes", json={"name": "img0", "strokes": drawn})
    assert client.get("/api/next?order=uncertain&after=img0").json()["name"] == "img1"
    session.trainer.train_for(0, clock=lambda: 0.0)
    session.trainer.publish()
    pred = client.get("/api/prediction/img1")
    assert pred.status_code == 200 and pred.headers["x-model-version"] == "1"
    assert len(pred.content) == 2 * 40 * 56
    labels = np.frombuffer(pred.content[: 40 * 56], np.uint8)
    assert labels.max() < 3
    # accept everything (threshold 0): every unlabelled pixel takes the predicted class
    before = read_mask(tmp_path / "proj" / "masks" / "img0.png")
    res = client.post("/api/accept", json={"name": "img0", "threshold": 0.0})
    assert res.status_code == 200, res.text
    after = read_mask(tmp_path / "proj" / "masks" / "img0.png")
    assert (after != ERASE).all() and res.json()["pixels"] == int((before == ERASE).sum())
    np.testing.assert_array_equal(after[before != ERASE], before[before != ERASE])
    client.post("/api/undo", json={"name": "img0", "id": res.json()["ids"][0]})
    np.testing.assert_array_equal(read_mask(tmp_path / "proj" / "masks" / "img0.png"), before)
    # "next": the most uncertain unlabelled image
    session.trainer.live.scores.update({"img1": (0.2, 1), "img2": (0.7, 1)})
    nxt = client.get("/api/next?order=uncertain&after=img0").json()
    assert nxt["name"] == "img2" and nxt["score"] == pytest.approx(0.7)
    assert client.get("/api/next?order=sequential&after=img0").json()["name"] == "img1"
    assert client.get("/api/next?order=sequential&after=img2").json()["name"] == "img1"


def test_suggested_points_are_unlabelled_stable_and_give_way_when_labelled(make_app):
    client = TestClient(make_app())
    first = client.get("/api/suggest/img1?n=6").json()
    assert first["name"] == "img1" and first["version"] == 0 and len(first["points"]) == 6
    assert all(0 <= x < 56 and 0 <= y < 40 for x, y in first["points"])
    assert client.get("/api/suggest/img1?n=6").json() == first  # the same in every tab
    x, y = first["points"][0]
    res = client.post("/api/strokes", json={"name": "img1", "strokes": [stroke(1, 1, (x, y))]})
    mask = expected_mask([stroke(1, 1, (x, y))])
    after = client.get("/api/suggest/img1?n=6").json()
    assert after["version"] == res.json()["version"] == 1
    assert all(mask[py, px] == ERASE for px, py in after["points"])
    kept = [p for p in first["points"] if mask[p[1], p[0]] == ERASE]
    assert after["points"][: len(kept)] == kept  # the others stay where they were
    for bad in ("0", "101", "x"):
        res = client.get(f"/api/suggest/img1?n={bad}")
        assert res.status_code == 400 and "1..100" in res.json()["error"]
    assert client.get("/api/suggest/nope").status_code == 404
