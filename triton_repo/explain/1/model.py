"""Triton python model ``explain``: what explains each answer, computed only for requests that
name ``EXPLANATION`` among their outputs (Triton's ensemble runs a step only when a requested
output needs it; a request naming no outputs asks, by KServe v2's rule, for all of them).

Inputs (batch first): ``TEXT``, ``IMAGE`` (batch, 1) BYTES as the ensemble received them;
``text_features`` (batch, seq, Ht), ``attention_mask`` (batch, seq), ``image_features``
(batch, L, Hi) from the ensemble's other steps.
Output: ``EXPLANATION`` (batch, 1) BYTES, UTF-8 JSON of
:func:`fusionrt.explanation.explanation_fields` (explained label, words with spans and relevance,
region relevance over the image encoder's grid, the image geometry, the method), which
:meth:`fusionrt.triton.Client.explain` turns into :class:`fusionrt.explanation.Explanation`.

Runs the bundle's explanation graph (``model.onnx`` beside this file: the fusion head in float32
with its attention probabilities and contributions) with onnxruntime, then the same numpy code as
:meth:`fusionrt.Engine.explain`, with the bundle's tokenizer and ``preprocessor_config.json``
copied next to this file. Parameters: ``method`` (``grad-cam``, ``gradient``, ``rollout``), ``max_seq_len``,
``pixel_hw`` (``H,W``), ``labels`` (JSON), ``intra_op_thread_count``.
Source: ``fusionrt/triton/models/explain.py``, copied by ``fusionrt triton build``.
"""

import base64
import binascii
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from fusionrt.errors import InputError
from fusionrt.explanation import ImageGeometry, explanation_fields
from fusionrt.preprocessing import TextTokenizer, image_size

GRAPH_INPUTS = ("text_features", "attention_mask", "image_features")


def _size(raw):
    """``(width, height)`` of an IMAGE element: encoded bytes, or their base64 (a JSON request)."""
    try:
        return image_size(raw)
    except InputError:
        text = raw.strip()
        if text[:5].lower() == b"data:" and b";base64," in text[:128]:
            text = text.split(b",", 1)[1]
        try:
            return image_size(base64.b64decode(text, validate=False))
        except (binascii.Error, ValueError):
            raise InputError("IMAGE is neither an encoded image nor the base64 of one") from None


class TritonPythonModel:
    def initialize(self, args):
        from fusionrt.engine.runtimes import build_runtime
        from fusionrt.engine.session import EngineOptions

        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.labels = json.loads(parameters["labels"])
        self.method = parameters.get("method", "gradient")
        self.pixel_hw = tuple(int(x) for x in parameters["pixel_hw"].split(","))
        self.tokenizer = TextTokenizer.from_dir(folder / "tokenizer", int(parameters["max_seq_len"]))
        self.preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
        # No busy-waiting between calls (SessionOptions' default): the ensemble's processes share the cores.
        options = EngineOptions().with_threads(int(parameters.get("intra_op_thread_count", "1")))
        self.runtime = build_runtime({"explain": folder / "model.onnx"}, {"explain": "fp32"}, "onnxruntime", options).activate()

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=[self._explain(request)]))
            except InputError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses

    def _explain(self, request):
        texts = [t.decode("utf-8") for t in pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)]
        images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
        feed = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in GRAPH_INPUTS}
        outputs = self.runtime.infer_graph("explain", feed)
        encodings = self.tokenizer.encode_batch(texts)
        geometries = [ImageGeometry.of(*_size(bytes(raw)), self.preprocessor) for raw in images]
        fields = explanation_fields(outputs, feed["attention_mask"], encodings, texts, geometries, self.labels, self.pixel_hw, self.method)
        data = np.array([[json.dumps(f).encode("utf-8")] for f in fields], dtype=np.object_)
        return pb_utils.Tensor("EXPLANATION", data)
