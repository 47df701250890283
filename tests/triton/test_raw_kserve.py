"""Raw KServe v2 requests against the real server (issue 19.6): the curl command of
docs/serving.md as written, a base64 image in JSON, a refusal that says how to send one, and
Triton's classification extension on PROBABILITIES (label_filename)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fusionrt import Engine
from fusionrt.bundle import Bundle
from tests.triton.conftest import parse_config

DOC = Path(__file__).parents[2] / "docs" / "serving.md"
MARKER = "<!-- raw-kserve-curl: tests/triton/test_raw_kserve.py runs this block -->"


def documented_curl() -> str:
    """The bash block right after MARKER in docs/serving.md, as written."""
    match = re.search(re.escape(MARKER) + r"\n```bash\n(.*?)\n```", DOC.read_text(), re.S)
    assert match, f"no bash block after {MARKER!r} in {DOC}"
    return match.group(1)


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    return Engine.from_bundle(tiny_bundle, intra_op_num_threads=1)


def test_probabilities_carry_label_filename_and_labels_txt(served_repository, tiny_bundle):
    labels = Bundle.load(tiny_bundle).labels
    for model in ("fusionrt", "postprocess"):
        config = parse_config(served_repository / model / "config.pbtxt")
        assert [(o.name, o.label_filename) for o in config.output if o.label_filename] == [("PROBABILITIES", "labels.txt")], model
        assert (served_repository / model / "labels.txt").read_text(encoding="utf-8").splitlines() == labels


def test_the_documented_curl_request_answers_with_labels(triton_server, engine, photo_dir):
    if shutil.which("curl") is None or shutil.which("base64") is None:
        pytest.skip("needs curl and base64 (coreutils)")
    command = documented_curl()
    assert "127.0.0.1:8000" in command and "photo.jpg" in command
    photo = photo_dir / "chelsea.png"
    script = command.replace("127.0.0.1:8000", triton_server.http_url).replace("photo.jpg", str(photo))
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    answer = {o["name"]: o for o in json.loads(out.stdout)["outputs"]}
    expected = engine.predict("what a lovely picture", photo)[0]
    assert answer["LABEL"]["data"] == [expected.label]
    best = answer["PROBABILITIES"]
    assert best["datatype"] == "BYTES" and best["shape"] == [1, 2]
    labels = list(expected.probabilities)
    ranked = sorted(labels, key=expected.probabilities.get, reverse=True)[:2]
    parsed = [entry.split(":", 2) for entry in best["data"]]  # score:index:label
    assert [label for _, _, label in parsed] == ranked
    assert [int(index) for _, index, _ in parsed] == [labels.index(label) for label in ranked]
    for score, _, label in parsed:
        assert abs(float(score) - expected.probabilities[label]) < 1e-4  # FP32 end to end


def _infer_json(triton_server, image: str):
    import httpx

    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1], "data": ["a cat"]},
                       {"name": "IMAGE", "datatype": "BYTES", "shape": [1, 1], "data": [image]}],
            "outputs": [{"name": "LABEL"}]}
    return httpx.post(f"http://{triton_server.http_url}/v2/models/fusionrt/infer", json=body, timeout=60)


def test_base64_image_in_json_is_accepted_and_a_bad_one_says_how_to_send_one(triton_server, engine, photo_dir):
    pytest.importorskip("httpx")
    photo = photo_dir / "rocket.jpg"
    expected = engine.predict("a cat", photo)[0].label
    encoded = base64.b64encode(photo.read_bytes()).decode("ascii")
    wrapped = "\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))  # as `base64` without -w0 writes it
    unpadded, urlsafe = encoded.rstrip("="), base64.urlsafe_b64encode(photo.read_bytes()).decode("ascii").rstrip("=")
    assert "-" in urlsafe or "_" in urlsafe  # the URL-safe alphabet is really used (it and missing padding were refused)
    for image in (encoded, f"data:image/jpeg;base64,{encoded}", wrapped, unpadded, urlsafe):
        response = _infer_json(triton_server, image)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == [expected]
    for image in ("this is not an image", base64.b64encode(b"not an image either").decode("ascii")):
        response = _infer_json(triton_server, image)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert "IMAGE[0]: image <" in error and "is not a decodable image" in error, error
        assert "in a JSON request, the base64 of the file as the IMAGE string" in error and "docs/serving.md" in error
    # a damaged photograph sent the right way is refused without the hint on how to send one
    response = _infer_json(triton_server, base64.b64encode(photo.read_bytes()[:600]).decode("ascii"))
    assert response.status_code == 400 and "IMAGE[0]" in response.json()["error"], response.text
    assert "the base64 of the file" not in response.json()["error"]
