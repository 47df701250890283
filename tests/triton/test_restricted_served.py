"""The admin APIs of a server started by fusionrt are behind its key (issue 29): without the key,
shared-memory registration, the repository index and logging changes are refused over HTTP and
gRPC; with it they work; inference, health and metadata need no key; the client and
`fusionrt bench --url` pass it."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fusionrt.triton.server import ADMIN_HEADER, GRPC_ADMIN_HEADER

pytestmark = pytest.mark.slow
REGION = "fusionrt_test_region"
DOC = Path(__file__).parents[2] / "docs" / "serving.md"
MARKER = "<!-- admin-key-curl: tests/triton/test_restricted_served.py runs this block -->"


def http(server, method: str, path: str, body: dict | None = None, key: str | None = None) -> tuple[int, dict]:
    """(status, JSON answer) of one HTTP request to the server."""
    headers = {"Content-Type": "application/json"} | ({ADMIN_HEADER: key} if key else {})
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
            return response.status, json.loads(text) if text.strip() else {}
    except urllib.error.HTTPError as exc:
        text = exc.read().decode()
        return exc.code, json.loads(text) if text.strip() else {}


@pytest.fixture
def region():
    """A 64-byte system shared-memory region of this process (the thing the CVE chain registers)."""
    shm = pytest.importorskip("tritonclient.utils.shared_memory")
    handle = shm.create_shared_memory_region(REGION, f"/{REGION}", 64)
    yield {"key": f"/{REGION}", "offset": 0, "byte_size": 64}
    shm.destroy_shared_memory_region(handle)


def test_the_key_file_is_the_owners_only(triton_server):
    path = triton_server.admin_key_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text().strip() == triton_server.admin_key and len(triton_server.admin_key) == 64


def test_a_key_file_of_the_users_is_never_replaced(served_repository, tmp_path):
    from fusionrt import InputError
    from fusionrt.triton import TritonServer

    mine = tmp_path / "notes.txt"
    mine.write_text("my notes")
    with pytest.raises(InputError, match="exists and does not hold a fusionrt admin key"):
        TritonServer(served_repository, http_port=None, grpc_port=None, metrics_port=None, admin_key_file=mine).start()
    assert mine.read_text() == "my notes"


def test_admin_http_apis_refuse_requests_without_the_key(triton_server, region):
    for key in (None, "0" * 64):  # no key, a wrong key
        for method, path, body in (
            ("POST", f"/v2/systemsharedmemory/region/{REGION}/register", region),
            ("POST", "/v2/repository/index", {}),
            ("POST", "/v2/logging", {"log_verbose_level": 3}),
            ("GET", "/v2/logging", None),
            ("GET", "/v2/models/fusionrt/config", None),
            ("GET", "/v2/models/stats", None),
            ("GET", "/v2/trace/setting", None),
        ):
            status, answer = http(triton_server, method, path, body, key)
            assert status == 403 and "restricted" in answer["error"], (method, path, status, answer)
    status, settings = http(triton_server, "GET", "/v2/logging", key=triton_server.admin_key)
    assert status == 200 and settings["log_verbose_level"] == 0  # the refused change did not happen
    status, regions = http(triton_server, "GET", "/v2/systemsharedmemory/status", key=triton_server.admin_key)
    assert status == 200 and regions == []


def test_admin_http_apis_work_with_the_key(triton_server, region):
    key = triton_server.admin_key
    status, _ = http(triton_server, "POST", f"/v2/systemsharedmemory/region/{REGION}/register", region, key)
    try:
        assert status == 200
        status, regions = http(triton_server, "GET", "/v2/systemsharedmemory/status", key=key)
        assert status == 200 and [r["name"] for r in regions] == [REGION]
    finally:
        assert http(triton_server, "POST", f"/v2/systemsharedmemory/region/{REGION}/unregister", {}, key)[0] == 200
    status, index = http(triton_server, "POST", "/v2/repository/index", {}, key)
    assert status == 200 and {"fusionrt", "preprocess", "text_encoder"} <= {m["name"] for m in index}
    try:
        status, settings = http(triton_server, "POST", "/v2/logging", {"log_verbose_level": 1}, key)
        assert status == 200 and settings["log_verbose_level"] == 1
    finally:
        assert http(triton_server, "POST", "/v2/logging", {"log_verbose_level": 0}, key)[0] == 200


def test_admin_grpc_apis_need_the_key_too(triton_server, region):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    key = {GRPC_ADMIN_HEADER: triton_server.admin_key}
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as raw:
        for call in (
            lambda h: raw.register_system_shared_memory(REGION, f"/{REGION}", 64, headers=h),
            lambda h: raw.get_model_repository_index(headers=h),
            lambda h: raw.update_log_settings({"log_verbose_level": 3}, headers=h),
            lambda h: raw.get_inference_statistics("fusionrt", headers=h),
        ):
            for headers in (None, {ADMIN_HEADER: triton_server.admin_key}):  # none, or the HTTP header name
                with pytest.raises(InferenceServerException, match="This protocol is restricted"):
                    call(headers)
        raw.register_system_shared_memory(REGION, f"/{REGION}", 64, headers=key)
        try:
            assert [r for r in raw.get_system_shared_memory_status(headers=key).regions] == [REGION]
        finally:
            raw.unregister_system_shared_memory(REGION, headers=key)
        assert "fusionrt" in {m.name for m in raw.get_model_repository_index(headers=key).models}
        assert raw.get_log_settings(headers=key).settings["log_verbose_level"].uint32_param == 0


def test_inference_health_and_metadata_need_no_key(triton_server, photo_dir):
    grpcclient = pytest.importorskip("tritonclient.grpc")

    assert http(triton_server, "GET", "/v2/health/ready")[0] == 200
    status, metadata = http(triton_server, "GET", "/v2/models/fusionrt")
    assert status == 200 and {t["name"] for t in metadata["inputs"]} == {"TEXT", "IMAGE"}
    inputs = []
    for name, value in (("TEXT", b"what a lovely cat"), ("IMAGE", (photo_dir / "chelsea.png").read_bytes())):
        tensor = grpcclient.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_))
        inputs.append(tensor)
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as raw:
        result = raw.infer("fusionrt", inputs)
    probabilities = result.as_numpy("PROBABILITIES")  # (1, labels) float32
    assert probabilities.shape[0] == 1 and abs(float(probabilities.sum()) - 1.0) < 1e-4


def test_the_client_passes_the_key(triton_server, photo_dir):
    from fusionrt.triton import Client, ServerError

    image = photo_dir / "chelsea.png"
    for protocol, url in (("grpc", triton_server.grpc_url), ("http", triton_server.http_url)):
        with Client(url, protocol=protocol, timeout_s=30, admin_key=triton_server.admin_key) as client:
            (prediction,) = client.predict(["what a lovely cat"], [image])
            assert prediction.label in prediction.probabilities and client.statistics("fusionrt")["fusionrt"]["success_count"] > 0
        with Client(url, protocol=protocol, timeout_s=30) as keyless:
            with pytest.raises(ServerError, match="restricted to requests carrying the admin key: pass admin_key"):
                keyless.predict(["what a lovely cat"], [image])  # the labels come from the model config


def test_bench_url_reads_the_key_file(triton_server, tmp_path, capsys):
    from fusionrt.cli import main

    report = tmp_path / "bench"
    argv = ["bench", "--url", triton_server.grpc_url, "--concurrency", "1", "--window-s", "0.3", "--report", str(report)]
    assert main([*argv, "--admin-key-file", str(triton_server.admin_key_file)]) == 0
    saved = json.loads((report / "results.json").read_text())
    assert saved["levels"][0]["failures"] == 0 and "text_encoder" in saved["levels"][0]["server"]
    assert main([*argv, "--admin-key-file", str(tmp_path / "missing")]) != 0
    assert "--admin-key-file" in capsys.readouterr().err


def test_the_documented_curls_answer_as_documented(triton_server):
    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    match = re.search(re.escape(MARKER) + r"\n```bash\n(.*?)\n```", DOC.read_text(), re.S)
    assert match, f"no bash block after {MARKER!r} in {DOC}"
    script = match.group(1).replace("127.0.0.1:8000", triton_server.http_url)
    script = script.replace("/tmp/fusionrt-triton-XXXX/admin-key", str(triton_server.admin_key_file))
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    refused, index, logging, health, metadata = result.stdout.splitlines()
    assert (refused, logging, health) == ("403", "403", "200"), result.stdout
    assert "fusionrt" in {m["name"] for m in json.loads(index)}
    assert json.loads(metadata)["name"] == "fusionrt"
