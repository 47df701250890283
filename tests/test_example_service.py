import pytest

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from examples.service import create_app  # noqa: E402
from fusionrt import Engine  # noqa: E402


def test_predict_endpoint_answers_each_item(tiny_bundle, photo_dir):
    app = create_app(str(tiny_bundle), max_queue_delay_microseconds=5000)
    files = [
        ("image", ("chelsea.png", (photo_dir / "chelsea.png").read_bytes(), "image/png")),
        ("image", ("bad.png", b"not an image at all", "image/png")),
        ("image", ("rocket.jpg", (photo_dir / "rocket.jpg").read_bytes(), "image/jpeg")),
    ]
    data = {"text": ["what a lovely cat", "broken", "a dreadful rocket"]}
    with TestClient(app) as client:
        assert client.get("/health").json()["status"] == "ok"
        r = client.post("/predict", data=data, files=files)
        assert r.status_code == 200
        body = r.json()
        assert len(body) == 3 and "error" in body[1] and "not a decodable image" in body[1]["error"]
        expected = Engine.from_bundle(tiny_bundle).predict(
            ["what a lovely cat", "a dreadful rocket"], [photo_dir / "chelsea.png", photo_dir / "rocket.jpg"]
        )
        for got, exp in zip((body[0], body[2]), expected):
            assert got["label"] == exp.label
            assert got["probabilities"] == pytest.approx(exp.probabilities, abs=1e-5)
        r = client.post("/predict", data={"text": ["a", "b"]}, files=files[:1])
        assert r.status_code == 400 and "2 text fields and 1 image files" in r.json()["error"]
