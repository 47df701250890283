"""The peers fusionrt is measured against, beside PyTorch eager: what a user of the same checkpoint
gets from other tools with little or no effort (issue 16.5).

- :func:`openvino_peer_contender`: ``openvino.convert_model`` of the checkpoint's PyTorch model,
  compiled with OpenVINO's defaults (bf16 inference where the CPU has it), latency hint.
- :func:`nncf_peer_contender`: NNCF's post-training INT8 (transformer preset) of that conversion,
  calibrated on the checkpoint's ``calibration.jsonl``.
- :func:`pytorch_bf16_contender`: PyTorch eager under ``torch.autocast("cpu", torch.bfloat16)``.

Each factory returns a :class:`~fusionrt.bench.contender.Contender` with ``logits`` set, so the
benchmark records its max |logit - PyTorch FP32| on the benchmark inputs, or raises
:class:`PeerUnavailableError` (package absent, CPU without bf16, no calibration split), which
:func:`peer_contenders` turns into a note.

Two pipelines for the OpenVINO peers (``decoding``): ``"serial"``, as users write it (each image
opened with Pillow and converted to RGB at full size, resized, cropped and normalized with Pillow
and numpy in the calling thread, one after the other: :func:`user_pixels`; then the tokenizer,
the model, a softmax; the ``x peer`` ratios of ``fusionrt bench`` are against it); ``"pooled"``, the same with fusionrt's
:class:`~fusionrt.preprocessing.BatchPreprocessor` (its decode thread pool) on the peer's side, so
that the pipeline ratio can be read without fusionrt's decoding advantage.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fusionrt.bench.contender import Contender
from fusionrt.errors import PeerUnavailableError

MODEL_OUTPUTS = ("logits", "modality_weights")
CALIBRATION_BATCH = 1  # NNCF counts subset_size in dataset items: one example per item
OPENVINO_DEFAULT = "openvino default"  # reported as "openvino default (from pytorch, bf16)"
NNCF_INT8 = "openvino nncf int8"  # "openvino nncf int8 (from pytorch, rest bf16)"
PYTORCH_BF16 = "pytorch eager (bf16 autocast)"


@dataclass
class ConvertedModel:
    """OpenVINO's conversion of a checkpoint's PyTorch model (FP32 weights, dynamic shapes).

    Attributes:
        checkpoint: the :class:`~fusionrt.model.Checkpoint` (its tokenizer and image processor
            preprocess the peer's inputs).
        model: the ``openvino.Model``; inputs the checkpoint's text inputs (``input_ids``,
            ``attention_mask``[, ``token_type_ids``]) ``(batch, seq) int64`` and ``pixel_values`` ``(batch, 3, H, W)
            float32``; outputs ``logits`` ``(batch, num_labels) float32`` and ``modality_weights``
            ``(batch, 2) float32``.
        seconds: the time ``openvino.convert_model`` took.
    """

    checkpoint: object
    model: object
    seconds: float


def _openvino():
    try:
        import openvino
    except ImportError:
        raise PeerUnavailableError("openvino is not installed: pip install 'fusionrt[openvino]'") from None
    return openvino


def _quiet_convert(ov, module, example):
    """``openvino.convert_model`` without the tracer's TracerWarnings and transformers' loss_type
    notice: they concern training and tracing Python branches, not this model's answers (the
    peer's logits are compared with PyTorch's in every benchmark)."""
    import warnings

    from fusionrt.model.families import quiet_transformers

    with quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ov.convert_model(module, example_input=example)


def convert_checkpoint(checkpoint: str | os.PathLike) -> ConvertedModel:
    """``openvino.convert_model`` of a checkpoint's PyTorch model, traced on two of the
    benchmark's real captions and photographs (tokenized, padded to the longer one). Takes about
    13 s for the default checkpoint (then MiniLM + ResNet-18) on 2 cores.

    Raises:
        PeerUnavailableError: openvino is not installed.
        CheckpointError: the checkpoint cannot be loaded.
    """
    import torch

    from fusionrt.timing import timed
    from fusionrt.model import load_checkpoint

    ov = _openvino()
    ckpt = load_checkpoint(checkpoint)

    class TupleOutputs(torch.nn.Module):
        """The classifier returning ``(logits, modality_weights)``: convert_model takes tuples,
        not the classifier's NamedTuple."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids, pixel_values):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                             pixel_values=pixel_values)
            return out.logits, out.modality_weights

    class TupleOutputsWithoutTypes(TupleOutputs):
        """The same for a text encoder without ``token_type_ids`` (RoBERTa, XLM-R, DistilBERT)."""

        def forward(self, input_ids, attention_mask, pixel_values):
            return super().forward(input_ids, attention_mask, None, pixel_values)

    texts, images = _sample_inputs(2)
    example = {k: torch.from_numpy(v) for k, v in _feed(ckpt, texts, images).items()}
    models = []
    wrapper = TupleOutputs if "token_type_ids" in ckpt.model.text_inputs else TupleOutputsWithoutTypes
    seconds = timed(lambda: models.append(_quiet_convert(ov, wrapper(ckpt.model).eval(), example)))
    model = models[0]
    # the traced graph names some inputs after internal values ("71"), its first output not at all
    for port, name in zip(model.inputs, (*ckpt.model.text_inputs, "pixel_values")):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, MODEL_OUTPUTS):
        port.get_tensor().set_names({name})
    return ConvertedModel(ckpt, model, seconds)


def openvino_peer_contender(
    checkpoint: str | os.PathLike | ConvertedModel, threads: int, decoding: Literal["serial", "pooled"] = "serial"
) -> Contender:
    """OpenVINO's default conversion of the PyTorch model: :func:`convert_checkpoint`, compiled
    on ``CPU`` with ``INFERENCE_NUM_THREADS=threads`` and ``PERFORMANCE_HINT=LATENCY``, the
    inference precision left to OpenVINO (bf16 on a CPU with AVX512-BF16 or AMX, else f32). Its
    name records that precision, e.g. ``openvino default (from pytorch, bf16)``.

    Model mode: one infer request on the preprocessed tensors (fusionrt's tokenizer padded to the
    longest text, the checkpoint's image transform), inputs shared, not copied. Pipeline mode:
    see the module docstring; with ``decoding="pooled"`` the contender is pipeline-only (its
    model mode is the serial one's) and its name ends ``, pooled decoding``.

    Args:
        checkpoint: a checkpoint directory, or its :func:`convert_checkpoint` (to convert once
            for several peers).
        threads: OpenVINO inference threads.
        decoding: ``"serial"`` or ``"pooled"``.

    Raises:
        PeerUnavailableError: openvino is not installed.
        InputError: ``decoding`` is neither.
    """
    converted = checkpoint if isinstance(checkpoint, ConvertedModel) else convert_checkpoint(checkpoint)
    return _compiled_contender(OPENVINO_DEFAULT, converted.checkpoint, converted.model, threads, decoding)


def nncf_peer_contender(
    checkpoint: str | os.PathLike | ConvertedModel, threads: int, subset_size: int | None = None
) -> Contender:
    """NNCF post-training INT8 of :func:`convert_checkpoint`'s model, as OpenVINO's docs show it:
    ``nncf.quantize(model, nncf.Dataset(...), model_type=nncf.ModelType.TRANSFORMER,
    subset_size=...)``, calibrated on the checkpoint's ``calibration.jsonl`` one example at a
    time (about 13 s for 128 examples on the default checkpoint), then compiled as
    :func:`openvino_peer_contender` (what NNCF leaves in float runs at OpenVINO's default
    precision, named e.g. ``openvino nncf int8 (from pytorch, rest bf16)``).

    Args:
        checkpoint: a checkpoint directory, or its :func:`convert_checkpoint`.
        threads: OpenVINO inference threads.
        subset_size: calibration examples (default: all of the split).

    Raises:
        PeerUnavailableError: nncf or openvino is not installed, or the checkpoint has no
            ``calibration.jsonl`` (``fusionrt train`` writes one).
    """
    try:
        import nncf
    except ImportError:
        raise PeerUnavailableError("nncf is not installed: pip install 'fusionrt[peers]'") from None
    from fusionrt.model.data import read_jsonl

    converted = checkpoint if isinstance(checkpoint, ConvertedModel) else convert_checkpoint(checkpoint)
    ckpt = converted.checkpoint
    split = ckpt.split("calibration")
    if split is None:
        raise PeerUnavailableError(f"the NNCF peer calibrates on {ckpt.path / 'calibration.jsonl'}, which is missing "
                                   "(fusionrt train writes it)")
    examples = read_jsonl(split)[:subset_size]
    items = [_feed(ckpt, [ex.text for ex in examples[i : i + CALIBRATION_BATCH]],
                   [ex.image for ex in examples[i : i + CALIBRATION_BATCH]]) for i in range(0, len(examples), CALIBRATION_BATCH)]
    quantized = nncf.quantize(converted.model.clone(), nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(items))
    return _compiled_contender(NNCF_INT8, ckpt, quantized, threads, "serial", precision_prefix="rest ")


def pytorch_bf16_contender(checkpoint: str | os.PathLike, threads: int) -> Contender:
    """The checkpoint's PyTorch model in eager mode under ``torch.autocast("cpu",
    dtype=torch.bfloat16)`` and ``torch.inference_mode``; pipeline as :func:`pytorch_contender
    <fusionrt.bench.runner.pytorch_contender>`'s. Logits come out bf16 and are compared as float32.

    Raises:
        PeerUnavailableError: the CPU has neither AVX512-BF16 nor AMX-BF16 (``fusionrt.cpu``):
            autocast would then emulate bf16, slower than FP32 and no one's choice.
    """
    import torch

    from fusionrt.cpu import BF16_FLAGS, cpu_info
    from fusionrt.model import load_checkpoint

    info = cpu_info()
    if not info.bf16:
        raise PeerUnavailableError(f"{PYTORCH_BF16}: this CPU ({info.model}) has none of {list(BF16_FLAGS)}")
    torch.set_num_threads(threads)
    ckpt = load_checkpoint(checkpoint)

    def infer(feed: dict):
        tensors = {k: torch.from_numpy(v) for k, v in feed.items()}
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return ckpt.model(**tensors).logits

    def model(texts, images):
        feed = _feed(ckpt, texts, images)
        return lambda: infer(feed)

    def pipeline(texts, images):
        return lambda: torch.softmax(infer(_feed(ckpt, texts, images)).float(), -1).numpy()

    def logits(texts, images):
        return infer(_feed(ckpt, texts, images)).float().numpy()

    return Contender(PYTORCH_BF16, model, pipeline, logits=logits, runs_on="PyTorch eager CPU (bf16 autocast)")


def peer_contenders(checkpoint: str | os.PathLike, threads: int) -> tuple[list[Contender], dict[str, str]]:
    """Every peer that can be built here, in the benchmark's order: OpenVINO's default (model and
    serial pipeline), the same with pooled decoding (pipeline only), NNCF INT8, PyTorch bf16.

    Returns:
        ``(contenders, skipped)``: ``skipped`` maps a peer's name to the reason it is absent.
    """
    contenders: list[Contender] = []
    skipped: dict[str, str] = {}
    try:
        converted = convert_checkpoint(checkpoint)
    except PeerUnavailableError as exc:
        converted = None
        skipped[OPENVINO_DEFAULT] = skipped[NNCF_INT8] = str(exc)
    if converted is not None:
        contenders += [openvino_peer_contender(converted, threads), openvino_peer_contender(converted, threads, "pooled")]
        try:
            contenders.append(nncf_peer_contender(converted, threads))
        except PeerUnavailableError as exc:
            skipped[NNCF_INT8] = str(exc)
    try:
        contenders.append(pytorch_bf16_contender(checkpoint, threads))
    except PeerUnavailableError as exc:
        skipped[PYTORCH_BF16] = str(exc)
    return contenders, skipped


def _compiled_contender(name: str, ckpt, model, threads: int, decoding: str, precision_prefix: str = "") -> Contender:
    """An OpenVINO model compiled on CPU with the given threads and the latency hint, as a contender."""
    from fusionrt.errors import InputError
    from fusionrt.preprocessing import BatchPreprocessor

    if decoding not in ("serial", "pooled"):
        raise InputError(f"decoding must be 'serial' or 'pooled', got {decoding!r}")
    from fusionrt.engine.loaders import openvino_inference_precision, openvino_model
    from fusionrt.engine.openvino_runtime import OpenVINOOptions

    _openvino()
    # precision None: the CPU plugin's default (bf16 where the CPU has it), as a user of OpenVINO gets
    compiled = openvino_model(model, None, OpenVINOOptions(inference_num_threads=threads))
    precision = openvino_inference_precision(compiled)  # "bf16" | "f32"
    request = compiled.create_infer_request()
    runs_on = f"OpenVINO CPU ({'int8, rest ' if precision_prefix else ''}{precision})"

    def infer(feed: dict) -> np.ndarray:
        return request.infer(feed, share_inputs=True)["logits"]  # (batch, num_labels) float32

    def model_mode(texts, images):
        feed = _feed(ckpt, texts, images)
        return lambda: infer(feed)

    def logits(texts, images):
        return np.array(infer(_feed(ckpt, texts, images)))

    # the peer decodes and resizes every pixel, as its users do
    exact = dataclasses.replace(ckpt.image_processor, jpeg_draft=False, crop_resample=False)
    if decoding == "serial":
        processor = ckpt.image_processor

        def pipeline(texts, images):
            def run():
                pixels = np.stack([user_pixels(image, processor) for image in images])  # (B, 3, H, W)
                feed, _ = ckpt.tokenizer(texts)
                feed["pixel_values"] = pixels
                return _softmax(infer(feed))

            return run

        return Contender(f"{name} (from pytorch, {precision_prefix}{precision})", model_mode, pipeline, logits=logits, runs_on=runs_on,
                         reference_peer=not precision_prefix)

    pre = BatchPreprocessor(ckpt.tokenizer, exact, (3, *ckpt.image_processor.output_hw))

    def pooled(texts, images):
        return lambda: _softmax(infer(pre.prepare(texts, images, errors="raise").feed))

    return Contender(f"{name} (from pytorch, {precision_prefix}{precision}), pooled decoding", None, pooled, logits=logits,
                     runs_on=runs_on)


def user_pixels(image, processor) -> np.ndarray:
    """One image preprocessed as users of the peers write it: ``PIL.Image.open(...).convert("RGB")``
    (full-size decode), the short side resized to ``processor.size["shortest_edge"]`` or the
    image to ``size["height"]`` x ``size["width"]`` (its resample filter), a center crop to
    ``processor.crop_size`` when it has one, then rescale and normalize in numpy
    (``processor.image_mean``/``image_std``), in the calling thread.

    Args:
        image: a file path or encoded bytes.
        processor: the checkpoint's :class:`~fusionrt.preprocessing.ImageProcessor` (its sizes
            and statistics only; its decoding is fusionrt's and is not used).

    Returns:
        ``(3, H, W) float32``, ``(H, W)`` the processor's ``output_hw``.
    """
    import io

    from PIL import Image

    with Image.open(io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image) as src:
        img = src.convert("RGB")
    if processor.resize_hw is not None:
        img = img.resize(processor.resize_hw[::-1], Image.Resampling(processor.resample))
    else:
        short, (w, h) = int(processor.size["shortest_edge"]), img.size
        img = img.resize((short, int(short * h / w)) if w <= h else (int(short * w / h), short), Image.Resampling(processor.resample))
    if processor.do_center_crop:
        ch, cw = int(processor.crop_size["height"]), int(processor.crop_size["width"])
        left, top = (img.width - cw) // 2, (img.height - ch) // 2
        img = img.crop((left, top, left + cw, top + ch))
    x = np.asarray(img, np.float32) / 255.0  # (H, W, 3)
    x = (x - np.asarray(processor.image_mean, np.float32)) / np.asarray(processor.image_std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _feed(ckpt, texts: list, images: list) -> dict[str, np.ndarray]:
    """The model's inputs: token arrays ``(batch, seq) int64`` padded to the longest text, and
    ``pixel_values`` ``(batch, 3, H, W) float32``."""
    feed, _ = ckpt.tokenizer(texts)
    feed["pixel_values"] = ckpt.image_processor(images)
    return feed


def _sample_inputs(n: int) -> tuple[list, list]:
    """``n`` of the benchmark's captions with their photographs (encoded bytes)."""
    from fusionrt.samples import DEMO_PAIRS, photo_dir

    pairs = [DEMO_PAIRS[i % len(DEMO_PAIRS)] for i in range(n)]
    return [t for t, _ in pairs], [(photo_dir() / f).read_bytes() for _, f in pairs]


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(batch, num_labels)`` logits."""
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
