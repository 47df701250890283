"""Triton python model ``preprocess``: TEXT, IMAGE -> the bundle's input tensors.

Inputs (per request, batch first): ``TEXT`` (batch, 1) BYTES, UTF-8 text; ``IMAGE`` (batch, 1)
BYTES, an encoded image (JPEG, PNG, GIF, TIFF, WebP, BMP), or its base64 (optionally as a
``data:image/...;base64,`` URL): a KServe v2 JSON request carries a BYTES element as a string, so
the image's bytes arrive as the text of their base64. An IMAGE that is neither gets an error
saying how to send one (docs/serving.md, "Raw KServe v2 requests").
Outputs: ``input_ids``, ``attention_mask`` and, when the bundle's text encoder takes them,
``token_type_ids`` (the outputs config.pbtxt lists) (batch, seq) int64, where seq is
the smallest of the config's ``seq_buckets`` (parameter, comma-separated token counts, the last one
``max_seq_len``) that holds the request's longest text: the dynamic batcher downstream merges only
requests of equal shape, and a few lengths keep them mergeable without padding every caption to
``max_seq_len``; ``pixel_values`` as the image encoder takes them (the config's output dtype):
(batch, H, W, 3) uint8 as decoded (the graph normalizes; 4x fewer bytes between the models), or
(batch, 3, H, W) float32 normalized for a bundle made before; ``TRUNCATED`` (batch, 1) bool, the
text was cut at ``max_seq_len`` tokens.

The images of all requests in a batch are decoded in a thread pool, biggest first (Pillow
releases the GIL; parameter ``decode_threads``, default two per core, at most 16; 1 decodes
serially), by the Engine's own :class:`fusionrt.preprocessing.BatchPreprocessor`.

Uses fusionrt's own preprocessing (the tokenizer and ``preprocessor_config.json`` copied from the
bundle next to this file), so the served model sees what the engine and the trained model saw.
A request whose text or image is bad gets an error response; the other requests of the batch are
answered. Source: ``fusionrt/triton/models/preprocess.py``, copied by ``fusionrt triton build``.
"""

import base64
import binascii
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from fusionrt.errors import InputError
from fusionrt.preprocessing import BatchPreprocessor, ImageProcessor, TextTokenizer, check_buckets, default_decode_threads

TEXT_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")


# Leading bytes of the encoded formats the image processor decodes (Pillow's plugins for them).
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM")
_IMAGE_HINT = (
    "; send the image file's bytes as the IMAGE element (Triton's binary tensor extension), or, in a JSON "
    "request, the base64 of the file as the IMAGE string: see docs/serving.md, \"Raw KServe v2 requests\""
)


def _is_encoded_image(data):
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _image_bytes(raw):
    """The encoded image of an IMAGE element: ``raw`` itself, or the image its base64 holds
    (whitespace, a ``data:...;base64,`` prefix, the URL-safe alphabet and missing ``=`` padding
    allowed) when ``raw`` is not an encoded image but valid base64 of one; else ``raw`` (the decoder
    then names what is wrong)."""
    if _is_encoded_image(raw):
        return raw
    text = raw.strip()
    if text[:5].lower() == b"data:" and b";base64," in text[:128]:
        text = text.split(b",", 1)[1]
    text = b"".join(text.split())
    text += b"=" * (-len(text) % 4)
    try:
        decoded = base64.b64decode(text, altchars=b"-_" if b"-" in text or b"_" in text else None, validate=True)
    except (binascii.Error, ValueError):
        return raw
    return decoded if _is_encoded_image(decoded) else raw


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
        # The outputs config.pbtxt lists: the bundle's text inputs (no token_type_ids for RoBERTa,
        # XLM-R, DistilBERT), pixel_values, TRUNCATED.
        self.outputs = [o["name"] for o in config["output"]]
        self.dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        try:
            self.max_seq_len = int(parameters["max_seq_len"])
            buckets = [int(b) for b in parameters["seq_buckets"].split(",")]
        except (KeyError, ValueError):
            raise pb_utils.TritonModelException(
                "preprocess config.pbtxt needs the parameters max_seq_len (an integer) and seq_buckets "
                f"(comma-separated integers ending at max_seq_len), got {parameters}; rebuild with fusionrt triton build"
            ) from None
        self.buckets = check_buckets(buckets, self.max_seq_len)
        pixel_dims = pb_utils.get_output_config_by_name(config, "pixel_values")["dims"]  # (H, W, 3) or (3, H, W)
        threads = int(parameters.get("decode_threads", default_decode_threads()))
        self.preprocessor = BatchPreprocessor(
            TextTokenizer.from_dir(folder / "tokenizer", self.max_seq_len, [n for n in TEXT_OUTPUTS if n in self.outputs]),
            ImageProcessor.from_file(folder / "preprocessor_config.json"),
            [int(d) for d in pixel_dims][-3:],
            decode_threads=threads,
            pixel_dtype=np.dtype(self.dtypes["pixel_values"]).name,
        )

    def finalize(self):
        self.preprocessor.close()

    def execute(self, requests):
        responses = [None] * len(requests)
        owners = []  # (request index, its texts, its encoded images)
        for r, request in enumerate(requests):
            try:
                text_items, image_items = _items(request, "TEXT"), _items(request, "IMAGE")
                if len(text_items) != len(image_items):
                    raise InputError(f"request has {len(text_items)} TEXT and {len(image_items)} IMAGE items; they are paired one to one")
                request_texts = []
                for i, text in enumerate(text_items):
                    try:
                        request_texts.append(bytes(text).decode("utf-8"))
                    except UnicodeDecodeError as exc:
                        raise InputError(f"TEXT[{i}] is not valid UTF-8: {exc}") from None
            except InputError as exc:
                responses[r] = pb_utils.InferenceResponse(output_tensors=[], error=_error(str(exc)))
                continue
            except Exception as exc:  # a bug must not take the other requests of the batch down
                responses[r] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"preprocess failed: {exc!r}"))
                continue
            owners.append((r, request_texts, list(image_items)))
        # The images of every request are decoded together (biggest first, in the pool); each request
        # is tokenized on its own, to its own bucket, and fails alone when one of its items is bad.
        groups = [(texts, [_image_bytes(bytes(image)) for image in images]) for _, texts, images in owners]
        encoded = [[_is_encoded_image(image) for image in images] for _, images in groups]
        try:
            prepared = self.preprocessor.prepare_groups(groups, buckets=self.buckets, names=("TEXT", "IMAGE"))
        except Exception as exc:  # a bug: fail these requests, keep the server
            for r, _, _ in owners:
                responses[r] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"preprocess failed: {exc!r}"))
            return responses
        for (r, _, _), batch, known in zip(owners, prepared, encoded):
            bad = batch.first_error()
            if bad is not None:
                # an IMAGE element that is no image file's bytes (nor their base64) gets how to send one;
                # a damaged or oversized image sent the right way does not
                item = bad.item if isinstance(bad, InputError) else None
                hint = _IMAGE_HINT if item is not None and item[0] == "IMAGE" and not known[item[1]] else ""
                error = _error(f"{bad}{hint}") if isinstance(bad, InputError) else pb_utils.TritonError(f"preprocess failed: {bad!r}")
                responses[r] = pb_utils.InferenceResponse(output_tensors=[], error=error)
                continue
            try:
                feed = dict(batch.feed)  # (n, bucket) int64 and (n, H, W, 3) uint8 or (n, 3, H, W) float32
                feed["TRUNCATED"] = batch.truncated[:, None]  # (n, 1) bool
                tensors = [pb_utils.Tensor(name, feed[name].astype(self.dtypes[name], copy=False)) for name in self.outputs]
                responses[r] = pb_utils.InferenceResponse(output_tensors=tensors)
            except Exception as exc:
                responses[r] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"preprocess failed: {exc!r}"))
        return responses
