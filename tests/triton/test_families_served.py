"""A text encoder without ``token_type_ids`` (DistilBERT) through the Triton repository: no
``token_type_ids`` in any config.pbtxt, the preprocess model emits none, and the real server
answers as the in-process Engine."""

from __future__ import annotations

import importlib.util
import json
import types

import numpy as np
import pytest

from fusionrt.triton.repository import MODEL_SOURCES
from tests.families import image_encoder_dir, text_encoder_dir
from tests.triton.conftest import parse_config

CAPTIONS = ["what a lovely picture", "a dreadful view", "gloomy", "such a cheerful design really"]
# Max |served probability - Engine probability|: the same FP32 graphs on the same inputs.
PROBABILITY_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def distilbert_bundle(tmp_path_factory, tiny_data):
    from fusionrt.export import ExportOptions, export_bundle
    from fusionrt.model.train import TrainOptions, train

    root = tmp_path_factory.mktemp("distilbert")
    train(tiny_data, root / "ckpt", options=TrainOptions(epochs=3, ablations=False), progress=False,
          text_encoder=text_encoder_dir(root, "distilbert"), image_encoder=image_encoder_dir(root, "convnext"))
    return export_bundle(root / "ckpt", root / "bundle", ExportOptions(max_batch_size=8, accept_small_eval_set=True), progress=False)


@pytest.fixture(scope="module")
def distilbert_repository(distilbert_bundle, tmp_path_factory):
    from fusionrt.triton import RepositoryOptions, build_repository

    return build_repository(distilbert_bundle, tmp_path_factory.mktemp("repo") / "repo", RepositoryOptions(backend="python", max_batch_size=8))


def test_no_config_names_token_type_ids(distilbert_repository):
    for path in distilbert_repository.glob("*/config.pbtxt"):
        parse_config(path)  # a valid ModelConfig
        assert "token_type_ids" not in path.read_text(), path
    pre = parse_config(distilbert_repository / "preprocess" / "config.pbtxt")
    assert [o.name for o in pre.output] == ["input_ids", "attention_mask", "pixel_values", "TRUNCATED"]


def _fake_pb_utils():
    """The few ``triton_python_backend_utils`` calls preprocess.py makes, over numpy arrays."""

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class Response:
        def __init__(self, output_tensors, error=None):
            self.outputs, self.error = {t.name: t.array for t in output_tensors}, error

    dtypes = {"TYPE_INT64": np.int64, "TYPE_FP32": np.float32, "TYPE_UINT8": np.uint8, "TYPE_BOOL": np.bool_}
    return types.SimpleNamespace(
        Tensor=Tensor, InferenceResponse=Response, TritonError=RuntimeError, TritonModelException=RuntimeError,
        triton_string_to_numpy=dtypes.__getitem__,
        get_output_config_by_name=lambda config, name: next(o for o in config["output"] if o["name"] == name),
        get_input_tensor_by_name=lambda request, name: request.get(name),
    )


def test_preprocess_model_emits_the_bundles_inputs_only(distilbert_bundle, distilbert_repository, photo_dir, monkeypatch):
    """preprocess.py run in-process (a stand-in for the python backend's utilities) on the
    repository's own config: input_ids and attention_mask equal the Engine's tokenizer, no
    token_type_ids."""
    from google.protobuf import json_format

    from fusionrt import Engine

    pb_utils = _fake_pb_utils()
    monkeypatch.setitem(__import__("sys").modules, "triton_python_backend_utils", pb_utils)
    spec = importlib.util.spec_from_file_location("preprocess_under_test", MODEL_SOURCES / "preprocess.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = json_format.MessageToDict(parse_config(distilbert_repository / "preprocess" / "config.pbtxt"),
                                       preserving_proto_field_name=True)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(distilbert_repository / "preprocess"),
                      "model_version": "1"})
    image = (photo_dir / "coffee.png").read_bytes()
    request = {"TEXT": pb_utils.Tensor("TEXT", np.array([[c.encode()] for c in CAPTIONS], object)),
               "IMAGE": pb_utils.Tensor("IMAGE", np.array([[image]] * 4, object))}
    [response] = model.execute([request])
    model.finalize()
    assert response.error is None
    assert sorted(response.outputs) == ["TRUNCATED", "attention_mask", "input_ids", "pixel_values"]
    with Engine.from_bundle(distilbert_bundle) as engine:
        feed, _ = engine.tokenizer(CAPTIONS)
    n = feed["input_ids"].shape[1]
    assert np.array_equal(response.outputs["input_ids"][:, :n], feed["input_ids"])
    assert np.array_equal(response.outputs["attention_mask"][:, :n], feed["attention_mask"])
    assert not response.outputs["attention_mask"][:, n:].any()


@pytest.mark.slow
def test_distilbert_bundle_served_equals_the_engine(distilbert_bundle, distilbert_repository, photo_dir, tmp_path):
    pytest.importorskip("tritonclient", reason="needs fusionrt[serve]")
    from fusionrt import Engine
    from fusionrt.triton import Client, ServerError, TritonServer, find_tritonserver

    try:
        find_tritonserver()
    except ServerError as exc:
        pytest.skip(f"no Triton server here: {exc}")
    images = [photo_dir / name for name in ("coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg")]
    with Engine.from_bundle(distilbert_bundle) as engine:
        expected = engine.predict(CAPTIONS, images)
    server = TritonServer(distilbert_repository, http_port=None, grpc_port=None, metrics_port=None,
                          startup_timeout_s=120, stop_timeout_s=5, log_path=tmp_path / "tritonserver.log")
    try:
        server.start()
        with Client(server.grpc_url, protocol="grpc", timeout_s=60, admin_key=server.admin_key) as client:
            served = client.predict(CAPTIONS, images)
    finally:
        server.stop()
    for got, want in zip(served, expected):
        assert got.label == want.label
        for label, p in want.probabilities.items():
            assert abs(got.probabilities[label] - p) <= PROBABILITY_TOLERANCE


def test_onnx_runner_gives_each_failed_request_its_own_error(monkeypatch):
    """A failing batch handed one TritonError object to every response; the python backend frees
    each response's error, and two concurrent failing requests crashed tritonserver (SIGSEGV)."""
    pb_utils = _fake_pb_utils()
    monkeypatch.setitem(__import__("sys").modules, "triton_python_backend_utils", pb_utils)
    spec = importlib.util.spec_from_file_location("onnx_runner_under_test", MODEL_SOURCES / "onnx_runner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class Failing:
        name = "onnxruntime"

        def infer_graph(self, graph, feed):
            raise ValueError("attention_mask (2, 7) against text features (2, 16)")

    model = module.TritonPythonModel()
    model.graph, model.inputs, model.outputs, model.runtime = "fusion_head", ["attention_mask"], [("logits", np.float32)], Failing()
    requests = [{"attention_mask": pb_utils.Tensor("attention_mask", np.ones((1, 7), np.int64))} for _ in range(3)]
    responses = model.execute(requests)
    assert len({id(r.error) for r in responses}) == 3
    assert [str(r.error) for r in responses] == ["onnxruntime failed: attention_mask (2, 7) against text features (2, 16)"] * 3
