"""The served ``text_encoder`` model, called directly by a client, takes every mask pattern in every
text precision: it answers as the same graph in-process (which tests/export/test_attention_masks.py
checks against PyTorch) and ignores the tokens under the mask as PyTorch does."""

from __future__ import annotations

import numpy as np
import pytest

from tests.export.test_attention_masks import mask_patterns, with_other_masked_tokens

pytestmark = pytest.mark.slow  # starts a Triton server per precision

PRECISIONS = ("fp16", "int8", "int8-dynamic")
# Served vs in-process: the same ONNX file through the python backend's onnxruntime.
SAME_GRAPH_TOLERANCE = 1e-5
# Change of text_features at unmasked positions when the tokens under the mask change: none for
# FP16 and static INT8; dynamic INT8's batch-wide scales see them (see test_attention_masks.py).
MASKED_TOKENS_TOLERANCE = {"fp16": 1e-5, "int8": 1e-5, "int8-dynamic": 0.5}


@pytest.fixture(scope="module", params=PRECISIONS)
def served_text_encoder(request, tiny_checkpoint, tmp_path_factory):
    """(precision, in-process runtime, a server) for a tiny bundle with that text precision."""
    import warnings

    pytest.importorskip("tritonclient", reason="needs fusionrt[serve]")
    from fusionrt import Engine
    from fusionrt.export import ExportOptions, export_bundle
    from fusionrt.triton import ServerError, TritonServer, RepositoryOptions, build_repository, find_tritonserver

    try:
        find_tritonserver()
    except ServerError as exc:
        pytest.skip(f"no Triton server here: {exc}")
    root = tmp_path_factory.mktemp(f"served_{request.param}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the tiny checkpoint's 64 calibration samples
        bundle = export_bundle(tiny_checkpoint, root / "bundle", ExportOptions(precision=f"text={request.param}", validate=False), progress=False)
    repo = build_repository(bundle, root / "repo", RepositoryOptions(backend="python", max_batch_size=8))
    engine = Engine.from_bundle(bundle, intra_op_num_threads=1)
    with TritonServer(repo, http_port=None, grpc_port=None, metrics_port=None, startup_timeout_s=90,
                      stop_timeout_s=5, log_path=root / "tritonserver.log") as server:
        yield request.param, engine, server


def text_features(url: str, feed: dict) -> np.ndarray:
    """The served ``text_encoder`` model called directly over gRPC on a (batch, seq) int64 feed."""
    import tritonclient.grpc as grpcclient

    inputs = []
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        inputs.append(grpcclient.InferInput(name, feed[name].shape, "INT64"))
        inputs[-1].set_data_from_numpy(feed[name])
    with grpcclient.InferenceServerClient(url) as raw:
        return raw.infer("text_encoder", inputs, client_timeout=30).as_numpy("text_features")


def test_served_text_encoder_takes_every_mask_pattern(served_text_encoder):
    precision, engine, server = served_text_encoder
    rng = np.random.default_rng(13)
    for name, feed in mask_patterns(engine.tokenizer, 24).items():
        served = text_features(server.grpc_url, feed)
        local = engine.runtime.infer_graph("text_encoder", feed)["text_features"]
        assert float(np.abs(served - local).max()) <= SAME_GRAPH_TOLERANCE, (precision, name)
        rows = feed["attention_mask"].astype(bool)  # unmasked positions (fully masked rows drop out)
        changed = text_features(server.grpc_url, with_other_masked_tokens(feed, rng, low=5, high=100))  # tiny vocabulary
        assert float(np.abs(changed - served)[rows].max()) <= MASKED_TOKENS_TOLERANCE[precision], (precision, name)
