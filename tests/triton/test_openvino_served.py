"""A bundle exported with --target openvino in a Triton repository (issue 16.4): the python
backend's runner runs fusionrt's OpenVINO runtime at each graph's precision (served answers equal
the in-process Engine's), and for the NGC server the onnxruntime backend's config gets the OpenVINO
CPU accelerator. Configs are parsed into tritonclient's ModelConfig."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from google.protobuf.json_format import MessageToDict

from fusionrt.cpu import cpu_info
from tests.triton.conftest import parse_config

pytest.importorskip("openvino", reason="needs fusionrt[openvino]")
pytest.importorskip("tritonclient", reason="needs fusionrt[serve]")

# image int8 with the text encoder and head in bf16 where the CPU has it (the openvino recipe the
# benchmarks measure), else int8 + fp32
PRECISION = "text=bf16,image=int8,head=bf16" if cpu_info().bf16 else "text=int8,image=int8,head=fp32"
# Served vs in-process: the same graphs, compiled by the same OpenVINO with the same properties.
SAME_RUNTIME_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def ov_bundle(tiny_checkpoint, tmp_path_factory):
    from fusionrt.export import ExportOptions, export_bundle

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the tiny checkpoint's 64 calibration samples
        return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("ov") / "bundle",
                             ExportOptions(precision=PRECISION, target="openvino", max_batch_size=8, accept_small_eval_set=True), progress=False)


def test_repository_configs_for_openvino(ov_bundle, tmp_path):
    from fusionrt import InputError
    from fusionrt.triton import RepositoryOptions, build_repository

    python_repo = build_repository(ov_bundle, tmp_path / "py", RepositoryOptions(backend="python"))
    for graph in ("text_encoder", "image_encoder", "fusion_head"):
        config = MessageToDict(parse_config(python_repo / graph / "config.pbtxt"), preserving_proto_field_name=True)
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        assert params["runtime"] == "openvino" and params["precision"] == dict(
            text_encoder=PRECISION.split(",")[0][5:], image_encoder="int8", fusion_head=PRECISION.split(",")[2][5:])[graph]
        assert config["backend"] == "python" and "optimization" not in config
    assert "openvino>=2026.4" in (python_repo / "requirements.txt").read_text().splitlines()

    ort_repo = build_repository(ov_bundle, tmp_path / "ort", RepositoryOptions(backend="onnxruntime"))
    config = MessageToDict(parse_config(ort_repo / "image_encoder" / "config.pbtxt"), preserving_proto_field_name=True)
    assert config["backend"] == "onnxruntime"
    assert config["optimization"] == {"execution_accelerators": {"cpu_execution_accelerator": [{"name": "openvino"}]}}
    assert "runtime" not in config["parameters"]
    with pytest.raises(InputError, match="--target openvino .*--device cpu"):
        build_repository(ov_bundle, tmp_path / "gpu", RepositoryOptions(backend="onnxruntime", device="gpu"))


@pytest.mark.slow
def test_served_openvino_bundle_answers_as_in_process(ov_bundle, tmp_path, photo_dir):
    from fusionrt import Engine
    from fusionrt.triton import Client, ServerError, TritonServer, RepositoryOptions, build_repository, find_tritonserver

    try:
        find_tritonserver()
    except ServerError as exc:
        pytest.skip(f"no Triton server here: {exc}")
    repo = build_repository(ov_bundle, tmp_path / "repo", RepositoryOptions(backend="python", max_batch_size=8))
    engine = Engine.from_bundle(ov_bundle, intra_op_num_threads=1)
    assert all(p.startswith("OpenVINO CPU") for p in engine.providers.values())
    texts = ["what a lovely picture", "this scene looks awful to me", "", "great"]
    images = [p.read_bytes() for p in sorted(photo_dir.glob("*.png"))[:4]]
    expected = engine.predict(texts, images)
    with TritonServer(repo, http_port=None, grpc_port=None, metrics_port=None, startup_timeout_s=120,
                      stop_timeout_s=5, log_path=tmp_path / "tritonserver.log") as server:
        with Client(server.grpc_url, protocol="grpc", timeout_s=60, admin_key=server.admin_key) as client:
            served = client.predict(texts, images)
    log = (tmp_path / "tritonserver.log").read_text(errors="replace")
    assert "runtime openvino, OpenVINO CPU" in log  # the runner really ran OpenVINO
    for s, e in zip(served, expected):
        assert s.label == e.label
        np.testing.assert_allclose([s.probabilities[k] for k in engine.labels], [e.probabilities[k] for k in engine.labels],
                                   atol=SAME_RUNTIME_TOLERANCE, rtol=0)
