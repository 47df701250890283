"""The example service as users run it: ``python -m fusionrt.examples.service`` started from a
temporary folder (not the repository), with a good, a mixed, an all-bad and a JSON request; and
in-process through Starlette's test client."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

import fusionrt  # noqa: E402
from fusionrt import Engine  # noqa: E402
from fusionrt.examples.service import create_app  # noqa: E402


def _files(photo_dir: Path, names: list[str]) -> list:
    return [("image", (n, (photo_dir / n).read_bytes() if (photo_dir / n).exists() else b"not an image at all", "image/png"))
            for n in names]


def test_predict_endpoint_answers_each_item(tiny_bundle, photo_dir):
    app = create_app(str(tiny_bundle), max_queue_delay_microseconds=5000)
    files = _files(photo_dir, ["chelsea.png", "bad.png", "rocket.jpg"])
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


def test_a_caption_sent_as_a_file_part_is_its_text(tiny_bundle, photo_dir):
    """curl -F text=@caption.txt sends the caption as a file part: it was predicted on
    str(UploadFile(...)), silently, with status 200."""
    app = create_app(str(tiny_bundle), max_queue_delay_microseconds=1000)
    image = _files(photo_dir, ["chelsea.png"])
    with TestClient(app) as client:
        as_field = client.post("/predict", data={"text": ["what a lovely cat"]}, files=image).json()
        as_file = client.post("/predict", files=[("text", ("caption.txt", "what a lovely cat".encode(), "text/plain"))] + image)
        assert as_file.status_code == 200 and as_file.json() == as_field
        latin1 = client.post("/predict", files=[("text", ("caption.txt", "caf\xe9".encode("latin-1"), "text/plain"))] + image)
        assert latin1.status_code == 400
        assert "text field 0 is a file (caption.txt) that is not UTF-8 text (unexpected end of data at byte 3)" in latin1.json()["error"]


def test_forms_it_cannot_read_or_take_get_json_errors_and_a_disconnect_no_traceback(tiny_bundle, photo_dir):
    """A multipart body without a boundary got Starlette's plain-text 400; a body over the limit
    was read whole (8 x 50 MB parts: the service grew by 400 MB); a client leaving mid-upload
    logged an 'Exception in ASGI application' traceback."""
    import asyncio

    app = create_app(str(tiny_bundle), max_queue_delay_microseconds=1000, max_request_mb=0.05)
    image = _files(photo_dir, ["chelsea.png"])  # 240 KB, over 0.05 MB
    with TestClient(app, raise_server_exceptions=True) as client:
        r = client.post("/predict", content=b"text=a", headers={"content-type": "multipart/form-data"})
        assert r.status_code == 400 and "the form could not be read" in r.json()["error"] and "-F text=" in r.json()["error"]
        r = client.post("/predict", data={"text": ["a cat"]}, files=image)
        assert r.status_code == 413 and "over the service's limit of 50000 (--max-request-mb 0.05)" in r.json()["error"]

        form = client.build_request("POST", "/predict", data={"text": ["a cat"]}, files=image)
        chunked = client.post("/predict", content=iter([form.read()]), headers={"content-type": form.headers["content-type"]})
        assert chunked.request.headers.get("content-length") is None  # sent without a length: the parts are counted
        assert chunked.status_code == 413 and "over the service's limit" in chunked.json()["error"]

        sent = []
        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"content-type", b"multipart/form-data; boundary=x")],
                 "query_string": b"", "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
                 "root_path": "", "app": app}

        async def receive():
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        asyncio.run(app.router(scope, receive, send))  # no exception
        assert sent[0]["status"] == 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def service(tiny_bundle, tmp_path):
    """The service as a subprocess started in an empty temporary folder; always stopped."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(Path(fusionrt.__file__).parents[1]))  # this checkout's fusionrt
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusionrt.examples.service", "--bundle", str(tiny_bundle), "--port", str(port), "--threads", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not answer /health within 60 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_the_service_started_from_another_folder(service, photo_dir):
    good = httpx.post(f"{service}/predict", data={"text": ["a lovely cat", "a rocket"]},
                      files=_files(photo_dir, ["chelsea.png", "rocket.jpg"]), timeout=30)
    assert good.status_code == 200 and all("label" in item for item in good.json())
    mixed = httpx.post(f"{service}/predict", data={"text": ["a lovely cat", "broken"]},
                       files=_files(photo_dir, ["chelsea.png", "bad.png"]), timeout=30)
    assert mixed.status_code == 200
    assert "label" in mixed.json()[0] and "not a decodable image" in mixed.json()[1]["error"]
    bad = httpx.post(f"{service}/predict", data={"text": ["one", "two"]}, files=_files(photo_dir, ["bad.png", "worse.png"]), timeout=30)
    assert bad.status_code == 422
    assert len(bad.json()) == 2 and all("not a decodable image" in item["error"] for item in bad.json())
    as_json = httpx.post(f"{service}/predict", json={"text": ["a lovely cat"], "image": ["chelsea.png"]}, timeout=30)
    assert as_json.status_code == 415
    message = as_json.json()["error"]
    assert "application/json body" in message and "multipart/form-data" in message
    assert "`text` field" in message and "`image` file" in message
