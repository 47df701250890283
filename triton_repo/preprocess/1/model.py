"""Triton python model ``preprocess``: TEXT, IMAGE -> the bundle's input tensors.

Inputs (per request, batch first): ``TEXT`` (batch, 1) BYTES, UTF-8 text; ``IMAGE`` (batch, 1)
BYTES, an encoded image (JPEG, PNG, GIF, TIFF, WebP, BMP).
Outputs: ``input_ids``, ``attention_mask``, ``token_type_ids`` (batch, seq) int64, where seq is
the smallest of the config's ``seq_buckets`` (parameter, comma-separated token counts, the last one
``max_seq_len``) that holds the request's longest text: the dynamic batcher downstream merges only
requests of equal shape, and a few lengths keep them mergeable without padding every caption to
``max_seq_len``; ``pixel_values`` (batch, 3, H, W) float32; ``TRUNCATED`` (batch, 1) bool, the
text was cut at ``max_seq_len`` tokens.

Uses fusionrt's own preprocessing (the tokenizer and ``preprocessor_config.json`` copied from the
bundle next to this file), so the served model sees what the engine and the trained model saw.
A request whose text or image is bad gets an error response; the other requests of the batch are
answered. Source: ``fusionrt/triton/models/preprocess.py``, copied by ``fusionrt triton build``.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from fusionrt.errors import InputError
from fusionrt.preprocessing import ImageProcessor, TextTokenizer, check_buckets

OUTPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "TRUNCATED")


def _error(message):
    """An error for one request; INVALID_ARG where this python backend knows status codes."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


def _items(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise InputError(f"request lacks the input {name}")
    return tensor.as_numpy().reshape(-1)  # (batch,) object array of bytes


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        self.dtypes = {
            name: pb_utils.triton_string_to_numpy(pb_utils.get_output_config_by_name(config, name)["data_type"])
            for name in OUTPUTS
        }
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_seq_len = int(parameters["max_seq_len"])
        self.buckets = check_buckets([int(b) for b in parameters["seq_buckets"].split(",")], self.max_seq_len)
        self.tokenizer = TextTokenizer.from_dir(folder / "tokenizer", self.max_seq_len)
        self.image_processor = ImageProcessor.from_file(folder / "preprocessor_config.json")

    def execute(self, requests):
        responses = [None] * len(requests)
        owners = []  # (request index, its texts, its pixel arrays)
        for r, request in enumerate(requests):
            try:
                text_items, image_items = _items(request, "TEXT"), _items(request, "IMAGE")
                if len(text_items) != len(image_items):
                    raise InputError(f"request has {len(text_items)} TEXT and {len(image_items)} IMAGE items; they are paired one to one")
                request_texts, request_pixels = [], []
                for i, (text, image) in enumerate(zip(text_items, image_items)):
                    try:
                        request_texts.append(bytes(text).decode("utf-8"))
                    except UnicodeDecodeError as exc:
                        raise InputError(f"TEXT[{i}] is not valid UTF-8: {exc}") from None
                    try:
                        request_pixels.append(self.image_processor.process_one(bytes(image)))  # (3, H, W)
                    except InputError as exc:
                        raise InputError(f"IMAGE[{i}]: {exc}") from None
            except InputError as exc:
                responses[r] = pb_utils.InferenceResponse(output_tensors=[], error=_error(str(exc)))
                continue
            except Exception as exc:  # a bug must not take the other requests of the batch down
                responses[r] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"preprocess failed: {exc!r}"))
                continue
            owners.append((r, request_texts, request_pixels))
        for r, request_texts, request_pixels in owners:
            try:
                feed, truncated = self.tokenizer(request_texts, buckets=self.buckets)  # (n, bucket) int64
                feed["pixel_values"] = np.stack(request_pixels)  # (n, 3, H, W) float32
                feed["TRUNCATED"] = truncated[:, None]  # (n, 1) bool
                tensors = [pb_utils.Tensor(name, feed[name].astype(self.dtypes[name], copy=False)) for name in OUTPUTS]
                responses[r] = pb_utils.InferenceResponse(output_tensors=tensors)
            except Exception as exc:
                responses[r] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"preprocess failed: {exc!r}"))
        return responses
