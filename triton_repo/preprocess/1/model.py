"""Triton python model ``preprocess``: TEXT, IMAGE -> the bundle's input tensors.

Inputs (per request, batch first): ``TEXT`` (batch, 1) BYTES, UTF-8 text; ``IMAGE`` (batch, 1)
BYTES, an encoded image (JPEG, PNG, GIF, TIFF, WebP, BMP).
Outputs: ``input_ids``, ``attention_mask``, ``token_type_ids`` (batch, max_seq_len) int64, padded
to the fixed ``max_seq_len`` (the dims of ``input_ids`` in config.pbtxt) so that the dynamic
batcher can merge requests downstream; ``pixel_values`` (batch, 3, H, W) float32;
``TRUNCATED`` (batch, 1) bool, the text was cut at ``max_seq_len`` tokens.

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
from fusionrt.preprocessing import ImageProcessor, TextTokenizer

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
        self.max_seq_len = int(pb_utils.get_output_config_by_name(config, "input_ids")["dims"][-1])
        self.tokenizer = TextTokenizer.from_dir(folder / "tokenizer", self.max_seq_len)
        self.image_processor = ImageProcessor.from_file(folder / "preprocessor_config.json")

    def execute(self, requests):
        responses = [None] * len(requests)
        texts, pixels, owners = [], [], []  # owners: (request index, items it contributed)
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
            texts += request_texts
            pixels += request_pixels
            owners.append((r, len(request_texts)))
        if not owners:
            return responses
        try:
            feed, truncated = self.tokenizer(texts, pad_to=self.max_seq_len)  # (n, max_seq_len) int64
            feed["pixel_values"] = np.stack(pixels)  # (n, 3, H, W) float32
            feed["TRUNCATED"] = truncated[:, None]  # (n, 1) bool
        except Exception as exc:
            for r, _ in owners:
                responses[r] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"preprocess failed: {exc!r}"))
            return responses
        start = 0
        for r, n in owners:
            tensors = [pb_utils.Tensor(name, feed[name][start : start + n].astype(self.dtypes[name])) for name in OUTPUTS]
            responses[r] = pb_utils.InferenceResponse(output_tensors=tensors)
            start += n
        return responses
