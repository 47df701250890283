"""The Engine: load a bundle, preprocess texts and images, run the graphs, return predictions.

Imports neither torch nor transformers: a service that embeds it installs onnxruntime, numpy,
tokenizers and Pillow.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import warnings
from typing import Literal, Mapping, Sequence

import numpy as np

from fusionrt.bundle import EXPLAIN_GRAPH, GRAPHS, PREPROCESSOR_CONFIG, TOKENIZER_DIR, Bundle
from fusionrt.cpu import warn_above_usable_cores
from fusionrt.engine.loaders import ONNXRUNTIME, OPENVINO, Placement, _ort, writable_cache_dir
from fusionrt.engine.openvino_runtime import openvino_available
from fusionrt.engine.runtime import Runtime
from fusionrt.engine.runtimes import Providers, build_runtime
from fusionrt.engine.session import EngineOptions, _missing_message, _provider_names, select_providers
from fusionrt.errors import BundleError, EngineClosedError, InputError, ProviderError
from fusionrt.explanation import RECEPTIVE_FIELD_KEY, ImageGeometry, explanation_fields, explanations, resolve_method
from fusionrt.prediction import MODALITIES, Prediction, softmax
from fusionrt.preprocessing import BatchPreprocessor, ImageLike, ImageProcessor, PreparedBatch, TextTokenizer, as_pairs, image_size
from fusionrt.preprocessing.batch import ENGINE_CLOSED

# Export target -> (runtime, device) it is made for; device None: any of that runtime's.
TARGET_PLACEMENTS = {
    "cpu": (ONNXRUNTIME, "CPUExecutionProvider"),
    "openvino": (OPENVINO, None),
    "cuda": (ONNXRUNTIME, "CUDAExecutionProvider"),
    "tensorrt": (ONNXRUNTIME, "TensorrtExecutionProvider"),
}


def _runs_as_made(placement: Placement, target: str) -> bool:
    """Whether a graph exported for ``target`` runs where that target means (unknown targets: yes)."""
    if target not in TARGET_PLACEMENTS:
        return True
    runtime, device = TARGET_PLACEMENTS[target]
    return placement.runtime == runtime and device in (None, placement.device)


class Engine:
    """Runs a fusionrt bundle: preprocessing, batching, errors and predictions here; the graphs run
    on a :class:`~fusionrt.engine.runtime.Runtime` (``engine.runtime``: ONNX Runtime, OpenVINO, or
    both, graph by graph).

    Build it with :meth:`from_bundle`. Methods are safe to call from several threads at once
    (ONNX Runtime sessions are thread-safe for ``run`` and every call binds its own tensors;
    OpenVINO calls take their own infer request; the tokenizer is used read-only). Images of a
    batch are decoded in a thread pool: Pillow releases the GIL while decoding and resizing, so
    decoding overlaps on several cores.
    """

    def __init__(
        self,
        bundle: Bundle,
        runtime: Runtime,
        tokenizer: TextTokenizer,
        image_processor: ImageProcessor,
        decode_threads: int | None = None,
    ):
        self.bundle = bundle
        self.runtime = runtime if runtime.is_active else runtime.activate()
        self.labels = bundle.labels
        pixel_dtype, pixel_shape = bundle.pixel_input
        self.preprocessor = BatchPreprocessor(tokenizer, image_processor, pixel_shape, decode_threads, pixel_dtype)
        self.explain_options = EngineOptions()  # of the explanation graph's runtime (from_bundle sets the caller's)
        self._explainer: Runtime | None = None
        self._explainer_lock = threading.Lock()
        # the highest input_id + 1 (_check_feed): tokenizers' get_vocab_size takes milliseconds a call
        self._vocab_size = tokenizer.tokenizer.get_vocab_size()
        # where the image encoder's cells look (explanations' heat maps): a bundle key ImageProcessor does not keep
        self._receptive_field_shift = int(bundle.preprocessor_config().get(RECEPTIVE_FIELD_KEY, 0))

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike,
        providers: str | Sequence[str] = "auto",
        intra_op_num_threads: int | None = None,
        options: EngineOptions | None = None,
        strict: bool = False,
        verify: bool = True,
        decode_threads: int | None = None,
        jpeg_draft: bool | None = None,
        exact_pixels: bool = False,
    ) -> "Engine":
        """Load a bundle.

        Args:
            path: bundle directory written by ``fusionrt export``.
            providers: ``"auto"`` (OpenVINO for a bundle exported with ``--target openvino``
                where the ``openvino`` package is installed; else TensorRT > CUDA > CPU, of those
                this onnxruntime has) or a list of names in order of preference: ONNX Runtime
                execution providers and ``"OpenVINO"`` (the OpenVINO runtime, see
                :class:`~fusionrt.engine.openvino_runtime.OpenVINORuntime`), read as ONNX
                Runtime reads it: "in this order, of those available". Names this onnxruntime
                build lacks are dropped with one ``RuntimeWarning`` that names them and the
                provider each graph runs on, so ``["CUDAExecutionProvider",
                "CPUExecutionProvider"]`` runs on CUDA where it exists and on CPU elsewhere. A
                string other than ``"auto"`` is a comma-separated list
                (``"CUDAExecutionProvider,CPUExecutionProvider"``), as the CLI's ``--providers``.
            intra_op_num_threads: threads per operator; ``None`` uses every core (overrides
                ``options.cpu.intra_op_num_threads`` when given). More than the process may run
                on (:func:`~fusionrt.cpu.usable_cores`) gives a ``RuntimeWarning``.
            options: typed provider options (:class:`~fusionrt.engine.session.EngineOptions`;
                ``options.openvino`` for OpenVINO).
            strict: raise instead of falling back: when a listed provider is not available in
                this onnxruntime, or when a provider fails to initialize for a graph.
            verify: check every graph's sha256 against the manifest.
            decode_threads: threads decoding the images of a batch (``None``: two per core, at
                most 16, see :func:`~fusionrt.preprocessing.default_decode_threads`; 0 or 1
                decodes serially in the calling thread).
            jpeg_draft: decode large JPEGs at the scale the model needs (see
                :class:`~fusionrt.preprocessing.ImageProcessor`); ``False`` decodes every pixel
                (exact pixels, slower on camera-size photographs); ``None``: the bundle's
                ``preprocessor_config.json`` (on unless it says ``"jpeg_draft": false``).
            exact_pixels: pixels exactly as transformers' image processors compute them: no
                JPEG draft decoding and the whole image resized before the crop
                (``ImageProcessor.crop_resample`` off); slower, and it overrides ``jpeg_draft``.
                An image whose whole resize would exceed ``PIL.Image.MAX_IMAGE_PIXELS`` (an
                extreme aspect ratio) is then a bad item.

        Raises:
            BundleError: the bundle is missing, corrupt or of an unknown format (names the file).
            ProviderError: ``providers`` is empty, holds a non-string or mixes ``"auto"`` with
                names; none of the listed providers is available (the message names those that
                are); every provider failed to create a graph's session; or ``strict`` and a
                listed provider is unavailable or failed.
        """
        bundle = Bundle.load(path, verify=verify)
        threaded = (options or EngineOptions()).with_threads(intra_op_num_threads)
        warn_above_usable_cores(max(threaded.cpu.intra_op_num_threads or 0, threaded.openvino.inference_num_threads or 0))
        runtime, missing = make_runtime(bundle, providers, options or EngineOptions(), intra_op_num_threads, strict)
        try:
            tokenizer = TextTokenizer.from_dir(bundle.path / TOKENIZER_DIR, bundle.max_seq_len, bundle.text_inputs)
        except Exception as exc:
            raise BundleError(f"bundle tokenizer {bundle.path / TOKENIZER_DIR / 'tokenizer.json'} is unusable: {exc}") from None
        try:
            image_processor = ImageProcessor.from_dict(bundle.preprocessor_config())
            hw = image_processor.output_hw
        except InputError as exc:
            raise BundleError(f"bundle preprocessor config is invalid: {exc}") from None
        if tuple(hw) != bundle.pixel_hw:  # every item failed at run time (each with the size error)
            raise BundleError(f"{bundle.path / PREPROCESSOR_CONFIG} gives {hw[0]}x{hw[1]} images but the image encoder takes "
                              f"{bundle.pixel_hw[0]}x{bundle.pixel_hw[1]} (graphs.image_encoder pixel_values); re-export the bundle "
                              "(or undo the edit)")
        if jpeg_draft is not None:
            image_processor = dataclasses.replace(image_processor, jpeg_draft=bool(jpeg_draft))
        if exact_pixels:
            image_processor = dataclasses.replace(image_processor, jpeg_draft=False, crop_resample=False)
        engine = cls(bundle, runtime, tokenizer, image_processor, decode_threads)
        engine.explain_options = (options or EngineOptions()).with_threads(intra_op_num_threads)
        engine._warn_about_providers(missing)
        return engine

    def _warn_about_providers(self, missing: Sequence[str]) -> None:
        """One ``RuntimeWarning`` at most: requested providers this onnxruntime lacks (and where
        each graph runs instead), and/or a bundle exported for another target than it runs on."""
        parts = []
        if missing:
            by_provider: dict[str, list[str]] = {}
            for graph, provider in self.providers.items():
                by_provider.setdefault(provider, []).append(graph)
            placement = "; ".join(
                f"{', '.join(graphs)} {'runs' if len(graphs) == 1 else 'run'} on {provider}" for provider, graphs in by_provider.items()
            )
            parts.append(f"{_missing_message(missing, _ort().get_available_providers())}; {placement}")
        targets, placements = self.bundle.targets, self.placements
        elsewhere = {g: p.describe() for g, p in placements.items() if not _runs_as_made(p, targets[g])}
        if elsewhere:
            expected = sorted({TARGET_PLACEMENTS[targets[g]][1] or "OpenVINO" for g in elsewhere})
            parts.append(
                f"bundle {self.bundle.path} was exported for target {self.bundle.target!r} ({', '.join(expected)}) but runs on "
                f"{', '.join(sorted(set(elsewhere.values())))}: its recipe (fusions, precision) was chosen for another provider; "
                f"re-export with --target matching this machine for best speed"
            )
        if parts:
            message = ". ".join(part[0].upper() + part[1:] if i else part for i, part in enumerate(parts))
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    @property
    def placements(self) -> dict[str, Placement]:
        """Graph name -> where it really runs (:class:`~fusionrt.engine.loaders.Placement`:
        runtime, device, bundle precision, inference precision)."""
        return self.runtime.placements

    @property
    def providers(self) -> dict[str, str]:
        """Graph name -> where it really runs, for people (:meth:`Placement.describe`): the ONNX
        Runtime execution provider (``"CPUExecutionProvider"``), or ``"OpenVINO CPU (bf16)"``:
        OpenVINO, its device and the inference precision of the graph's float ops."""
        return {g: p.describe() for g, p in self.runtime.placements.items()}

    @property
    def tokenizer(self) -> TextTokenizer:
        return self.preprocessor.tokenizer

    @property
    def image_processor(self) -> ImageProcessor:
        return self.preprocessor.image_processor

    def close(self) -> None:
        """Refuse new calls, wait for the images being decoded, release the decoding threads
        (sessions are freed with the object). Idempotent. Later calls raise
        :class:`~fusionrt.EngineClosedError`, and so does a call in progress at its next batch
        (each batch of :attr:`max_batch_size` pairs is decoded, then run)."""
        self.preprocessor.close()

    def __enter__(self) -> "Engine":
        return self

    def __reduce_ex__(self, protocol):
        raise TypeError(
            "an Engine cannot be pickled to reach another process (ONNX Runtime sessions and OpenVINO compiled models cannot): "
            f"load the bundle in each process, Engine.from_bundle({str(self.bundle.path)!r})"
        )

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def max_batch_size(self) -> int:
        return self.bundle.max_batch_size

    # --- preprocessing ---------------------------------------------------------------------------
    def preprocess(self, texts: Sequence[str], images: Sequence[ImageLike]) -> dict[str, np.ndarray]:
        """Tokenize texts and decode/transform images.

        Args:
            texts: ``batch`` strings.
            images: ``batch`` images (paths, encoded bytes, PIL images or HxWxC uint8 arrays).

        Returns:
            ``input_ids``, ``attention_mask`` and, when the bundle's text encoder takes them,
            ``token_type_ids`` ``(batch, seq) int64`` (seq = the longest text, at most
            ``max_seq_len``; :attr:`Bundle.text_inputs`) and ``pixel_values`` as the bundle's image
            encoder takes them (:attr:`~fusionrt.Bundle.pixel_input`): ``(batch, H, W, 3) uint8``,
            or ``(batch, 3, H, W) float32`` normalized.

        Raises:
            InputError: the counts differ, or a text or image is bad (its index is named).
        """
        texts, images = as_pairs(texts, images)
        if not texts:
            feed, _ = self.tokenizer([])
            feed["pixel_values"] = np.zeros((0,) + self.preprocessor.pixel_shape, self.preprocessor.pixel_dtype)
            return feed
        return self.prepare(texts, images, errors="raise").feed

    def prepare(
        self, texts: Sequence[str], images: Sequence[ImageLike], offset: int = 0, errors: Literal["raise", "return"] = "return"
    ) -> PreparedBatch:
        """Preprocess one batch for :meth:`infer` (:meth:`predict` makes batches of
        :attr:`max_batch_size` pairs; the graphs take any batch size, TensorRT up to that one).

        Args:
            texts: ``batch`` strings.
            images: ``batch`` images, paired one to one with ``texts``.
            offset: index of the first pair in the caller's list (used in error messages).
            errors: ``"return"`` keeps a bad item's exception in its slot; ``"raise"`` raises it.

        Returns:
            The :class:`~fusionrt.preprocessing.PreparedBatch` (tensors of the good items).

        Raises:
            InputError: the counts differ, or, with ``errors="raise"``, the first bad item.
        """
        return self.preprocessor.prepare(texts, images, offset, errors)

    def infer(self, prepared: PreparedBatch) -> list:
        """Run the graphs on a :meth:`prepare`-d batch.

        Returns:
            Per item, a :class:`Prediction`, or the exception the item raised in :meth:`prepare`.
        """
        items: list = list(prepared.items)
        if prepared.rows:
            out = self.run(prepared.feed)
            for i, p in zip(prepared.rows, self.predictions(out["logits"], out["modality_weights"], prepared.truncated)):
                items[i] = p
        return items

    def predictions(self, logits: np.ndarray, modality_weights: np.ndarray, truncated: Sequence[bool] | None = None) -> list[Prediction]:
        """:class:`Prediction` per row of the graphs' outputs.

        Args:
            logits: ``(batch, num_labels) float32``.
            modality_weights: ``(batch, 2) float32``.
            truncated: ``(batch,)`` bools (``None``: all False).
        """
        probabilities = softmax(np.asarray(logits, np.float32))
        flags = [False] * len(probabilities) if truncated is None else [bool(t) for t in truncated]
        out = []
        for p, weights, cut in zip(probabilities, modality_weights, flags):
            best = int(p.argmax())
            out.append(
                Prediction(
                    label=self.labels[best],
                    score=float(p[best]),
                    probabilities={label: float(v) for label, v in zip(self.labels, p)},
                    modality_weights={m: float(v) for m, v in zip(MODALITIES, weights)},
                    truncated=cut,
                )
            )
        return out

    # --- running ---------------------------------------------------------------------------------
    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the three graphs on preprocessed tensors.

        Args:
            feed: the bundle's text inputs (:attr:`Bundle.text_inputs`: ``input_ids``,
                ``attention_mask`` and, unless its family takes none, ``token_type_ids``)
                ``(batch, seq)`` integers and ``pixel_values`` as the image encoder takes them
                (:meth:`preprocess`): ``(batch, H, W, 3) uint8`` or ``(batch, 3, H, W)`` floats;
                other keys are ignored.

        Returns:
            ``logits`` ``(batch, num_labels) float32`` and ``modality_weights`` ``(batch, 2) float32``.

        Raises:
            InputError: a tensor is missing, or has the wrong dtype, rank, shape or non-finite
                values; or token ids outside the bundle tokenizer's vocabulary (``token_type_ids``
                outside 0..1, ``attention_mask`` other than 0 and 1).
        """
        if self.preprocessor.closed:
            raise EngineClosedError(ENGINE_CLOSED)
        checked = self._check_feed(feed)
        if not len(checked["input_ids"]):  # the graphs' reshapes and pools fail on an empty batch
            return {"logits": np.zeros((0, len(self.labels)), np.float32), "modality_weights": np.zeros((0, 2), np.float32)}
        return self.runtime.infer(checked, outputs=("logits", "modality_weights"))

    def _check_feed(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        text_inputs = self.bundle.text_inputs
        missing = [k for k in self.bundle.inputs if k not in feed]
        if missing:
            raise InputError(f"feed lacks {missing}; expected {list(self.bundle.inputs)}")
        out, given = {}, {}
        for name in text_inputs:
            a = given[name] = np.asarray(feed[name])
            if a.dtype.kind not in "iu":
                raise InputError(f"{name} has dtype {a.dtype}; expected int64")
            if a.ndim != 2:
                raise InputError(f"{name} has shape {a.shape}; expected (batch, seq)")
            out[name] = a.astype(np.int64, copy=False)
        shape = out["input_ids"].shape
        for name in text_inputs[1:]:
            if out[name].shape != shape:
                raise InputError(f"{name} has shape {out[name].shape}; expected {shape} like input_ids")
        # Out of the embeddings' range, ONNX Runtime fails and OpenVINO answers from whatever it reads.
        for name, high, what in (("input_ids", self._vocab_size, "the bundle tokenizer's vocabulary"), ("token_type_ids", 2, "BERT's two segments")):
            ids = given.get(name)  # as given: a uint64 over 2**63 - 1 would read negative as int64
            if ids is not None and ids.size and (ids.min() < 0 or ids.max() >= high):
                raise InputError(f"{name} holds values {ids.min()}..{ids.max()}; expected 0..{high - 1} ({what})")
        mask = out["attention_mask"]
        if mask.size and ((mask != 0) & (mask != 1)).any():  # 2 acted as 1, a negative value moved the answer
            raise InputError(f"attention_mask holds values {mask.min()}..{mask.max()}; expected 0 (padding) or 1 (token)")
        if shape[1] > self.bundle.max_seq_len or (shape[1] < 1 and shape[0] > 0):  # preprocess([], []) gives (0, 0)
            raise InputError(f"input_ids axis 1 (seq) is {shape[1]}; expected 1..{self.bundle.max_seq_len} (max_seq_len)")
        out["pixel_values"] = self._check_pixels(np.asarray(feed["pixel_values"]), shape[0])
        return out

    def _check_pixels(self, pixels: np.ndarray, batch: int) -> np.ndarray:
        dtype, expected = self.preprocessor.pixel_dtype, (batch,) + self.preprocessor.pixel_shape
        axes = "(batch, H, W, 3)" if dtype == "uint8" else "(batch, 3, H, W)"
        if dtype == "uint8" and pixels.dtype != np.uint8:
            raise InputError(
                f"pixel_values has dtype {pixels.dtype}; this bundle's image encoder takes uint8 {axes} pixels "
                "as decoded (it normalizes them itself): use Engine.preprocess, or re-export with --pixels float32"
            )
        if dtype == "float32" and pixels.dtype.kind != "f":
            raise InputError(f"pixel_values has dtype {pixels.dtype}; this bundle's image encoder takes float32 {axes}")
        if pixels.shape != expected:
            raise InputError(f"pixel_values has shape {pixels.shape}; expected {expected} {axes}")
        if dtype == "uint8":
            return pixels
        pixels = pixels.astype(np.float32, copy=False)
        if not np.isfinite(pixels).all():
            raise InputError("pixel_values holds NaN or Inf")
        return pixels

    def logits(self, texts: Sequence[str], images: Sequence[ImageLike]) -> np.ndarray:
        """Preprocess and run, in chunks of the bundle's ``max_batch_size``.

        Returns:
            ``(batch, num_labels) float32`` logits.

        Raises:
            InputError: the counts differ, or an item is bad (its index is named).
        """
        texts, images = as_pairs(texts, images)
        chunks = []
        for start in range(0, len(texts), self.max_batch_size):  # bounded memory; each image decoded once
            prepared = self.prepare(texts[start : start + self.max_batch_size], images[start : start + self.max_batch_size], start, "raise")
            chunks.append(self.run(prepared.feed)["logits"])
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.labels)), np.float32)

    def predict(
        self,
        texts: Sequence[str] | str,
        images: Sequence[ImageLike] | ImageLike,
        errors: Literal["raise", "return"] = "raise",
    ) -> list:
        """Classify text+image pairs, in chunks of the bundle's ``max_batch_size``.

        Args:
            texts: ``batch`` strings (or one string, then ``images`` is one image).
            images: ``batch`` images, paired one to one with ``texts``.
            errors: ``"raise"`` raises on the first bad item; ``"return"`` puts the
                :class:`~fusionrt.InputError` in that item's slot and answers the others.

        Returns:
            One :class:`Prediction` (or ``InputError`` with ``errors="return"``) per pair.

        Raises:
            InputError: the counts differ; or a bad item with ``errors="raise"``.
        """
        if errors not in ("raise", "return"):
            raise InputError(f"errors must be 'raise' or 'return', got {errors!r}")
        texts, images = as_pairs(texts, images)
        results: list = []
        for start in range(0, len(texts), self.max_batch_size):  # bounded memory; each image decoded once
            prepared = self.prepare(texts[start : start + self.max_batch_size], images[start : start + self.max_batch_size], start, errors)
            bug = next((e for e in prepared.items if e is not None and not isinstance(e, InputError)), None)
            if bug is not None:
                raise bug
            results.extend(self.infer(prepared))
        return results

    # --- explaining ------------------------------------------------------------------------------
    def explain(
        self,
        texts: Sequence[str] | str,
        images: Sequence[ImageLike] | ImageLike,
        method: str | None = None,
        errors: Literal["raise", "return"] = "raise",
    ) -> list:
        """Classify text+image pairs and say why: word relevance, region relevance (over the image
        encoder's grid and, by :meth:`Explanation.heat_map`, at the original image's size) and the
        modality weights, per pair (:class:`~fusionrt.explanation.Explanation` says what the
        numbers mean and what they do not).

        The encoders and the head run as in :meth:`predict` (same precision and runtime: the
        prediction is predict's); the bundle's explanation graph, the fusion head in float32 with
        its attention probabilities and contributions as outputs, runs beside them on ONNX Runtime's
        CPU provider (OpenVINO in f32 where onnxruntime is not installed). :meth:`predict` never
        runs it.

        Args:
            texts: ``batch`` strings (or one string, then ``images`` is one image).
            images: ``batch`` images, paired one to one with ``texts``.
            method: ``"grad-cam"`` (regions by Grad-CAM on the image encoder's last map,
                computed in the graph), ``"gradient"`` (gradient-weighted rollout through the head)
                or ``"rollout"`` (attention rollout weighted by the modality weights); see
                :mod:`fusionrt.explanation`. ``None``: ``"grad-cam"``, or ``"gradient"`` for a
                bundle exported before the graph had Grad-CAM (:func:`~fusionrt.explanation.resolve_method`).
            errors: ``"raise"`` raises on the first bad item; ``"return"`` puts the
                :class:`~fusionrt.InputError` in that item's slot and explains the others (as
                :meth:`predict`).

        Returns:
            One :class:`~fusionrt.explanation.Explanation` (or ``InputError`` with
            ``errors="return"``) per pair.

        Raises:
            InputError: the counts differ, a bad item with ``errors="raise"``, or an unknown method.
            BundleError: the bundle has no explanation graph, or none with ``"grad-cam"``'s
                output (exported by an older fusionrt: re-export it).
        """
        if errors not in ("raise", "return"):
            raise InputError(f"errors must be 'raise' or 'return', got {errors!r}")
        graph = self.bundle.manifest.explain  # None: explaining raises the BundleError of _explainer_runtime
        method = resolve_method(method, [t.name for t in graph.outputs] if graph is not None else ["region_grad_cam"],
                                f"bundle {self.bundle.path}")
        texts, images = as_pairs(texts, images)
        out: list = []
        for start in range(0, len(texts), self.max_batch_size):
            part_t, part_i = texts[start : start + self.max_batch_size], images[start : start + self.max_batch_size]
            prepared = self.prepare(part_t, part_i, start, errors)
            items: list = list(prepared.items)
            bug = next((e for e in items if e is not None and not isinstance(e, InputError)), None)
            if bug is not None:
                raise bug
            if prepared.rows:
                rows = prepared.rows
                good = self._explain_batch(prepared, [part_t[i] for i in rows], [part_i[i] for i in rows], method,
                                           [start + i for i in rows])
                for i, explanation in zip(rows, good):
                    if isinstance(explanation, InputError) and errors == "raise":
                        raise explanation
                    items[i] = explanation
            out.extend(items)
        return out

    def _explain_batch(self, prepared: PreparedBatch, texts: list, images: list, method: str, indices: list[int]) -> list:
        """The explanations of a prepared batch's rows; in its slot, the :class:`InputError`
        (named ``images[indices[k]]``) of an image whose header cannot be read again for the heat
        map's geometry (replaced or removed since it was decoded)."""
        feed = self._check_feed(prepared.feed)
        values = self.runtime.infer(feed, outputs=("logits", "modality_weights", "text_features", "image_features"))
        explainer = self._explainer_runtime()
        graph_out = explainer.infer_graph(EXPLAIN_GRAPH, {**values, "attention_mask": feed["attention_mask"]})
        predictions = self.predictions(values["logits"], values["modality_weights"], prepared.truncated)
        encodings = self.tokenizer.encode_batch(texts)
        config = {**self.image_processor.to_dict(), RECEPTIVE_FIELD_KEY: self._receptive_field_shift}
        geometries, failed = [], {}
        for k, image in enumerate(images):
            try:
                geometries.append(ImageGeometry.of(*image_size(image), config))
            except InputError as exc:
                failed[k] = InputError.of_item("images", indices[k], f": {exc}")
                geometries.append(ImageGeometry.of(1, 1, config))  # a placeholder: the row's answer is the error
        fields = explanation_fields(
            graph_out, feed["attention_mask"], encodings, texts, geometries, self.labels, self.image_processor.output_hw, method
        )
        return [failed.get(k, e) for k, e in enumerate(explanations(predictions, fields))]

    def _explainer_runtime(self) -> Runtime:
        """The explanation graph's runtime, created on first use (thread-safe)."""
        with self._explainer_lock:
            if self._explainer is None:
                path = self.bundle.explain_path
                if path is None:
                    raise BundleError(
                        f"bundle {self.bundle.path} has no explanation graph ({EXPLAIN_GRAPH}.onnx): it was exported by an "
                        "older fusionrt; re-export it with `fusionrt export`"
                    )
                options = self.explain_options
                try:
                    _ort()
                    kind = ONNXRUNTIME  # on the CPU execution provider: the graph is small and float32
                except ProviderError:
                    kind = OPENVINO
                    options = dataclasses.replace(options, openvino=dataclasses.replace(options.openvino, inference_precision="f32"))
                self._explainer = build_runtime({EXPLAIN_GRAPH: path}, {EXPLAIN_GRAPH: "fp32"}, kind, options).activate()
            return self._explainer


# Names a ``providers`` list may hold besides ONNX Runtime's execution providers (compared without
# case): another runtime, and whether it is installed.
RUNTIME_NAMES = {"openvino": (OPENVINO, lambda: openvino_available())}  # looked up at call time


def _requested_kinds(bundle: Bundle, names: list[str] | None, strict: bool) -> tuple[dict[str, str], list[str] | str, list[str]]:
    """``(graph -> runtime kind, ONNX Runtime's provider names, requested names not available)``
    for a ``providers`` argument already split into names (``None``: "auto")."""
    if names is None:
        needed = set(bundle.runtimes.values())  # import openvino only for a bundle with OpenVINO graphs
        have = {kind: available() for kind, available in RUNTIME_NAMES.values() if kind in needed}
        kinds = {g: r if r == ONNXRUNTIME or have.get(r) else ONNXRUNTIME for g, r in bundle.runtimes.items()}
        return kinds, "auto", []
    chosen, missing = ONNXRUNTIME, []
    ort_names = [n for n in names if n.lower() not in RUNTIME_NAMES]
    ort_available = set(_ort().get_available_providers())
    for i, name in enumerate(names):
        if name.lower() not in RUNTIME_NAMES:
            continue
        kind, available = RUNTIME_NAMES[name.lower()]
        if available():
            if not any(n in ort_available for n in names[:i]):  # first available wins
                chosen = kind
        elif strict or len(names) == 1:
            raise ProviderError(f"{name} is not available: install the {kind} package (pip install 'fusionrt[{kind}]')")
        else:
            missing.append(name)
        break
    return dict.fromkeys(GRAPHS, chosen), ort_names, missing


def make_runtime(
    bundle: Bundle, providers: str | Sequence[str], options: EngineOptions, intra_op_num_threads: int | None, strict: bool
) -> tuple[Runtime, list[str]]:
    """The active runtime for a bundle and a ``providers`` argument (see :meth:`Engine.from_bundle`),
    and the requested names that were skipped as unavailable.

    ``"auto"`` runs each graph on the runtime it was made for (``bundle.runtimes``): OpenVINO graphs
    on OpenVINO where the openvino package is installed (else on ONNX Runtime, with the target
    warning), the others on ONNX Runtime's best provider. An explicit list puts every graph on its
    first available entry.

    Raises:
        ProviderError: as :meth:`Engine.from_bundle` says; also ``"OpenVINO"`` alone (or with
            ``strict``) where the openvino package is not installed.
    """
    kinds, ort_names, missing = _requested_kinds(bundle, _provider_names(providers), strict)
    on_ort = [g for g in GRAPHS if kinds[g] == ONNXRUNTIME]
    chosen: list[str] = []
    if on_ort:
        chosen, ort_missing = select_providers(ort_names, strict=strict)
        missing.extend(ort_missing)
    runtime = build_runtime(
        {name: bundle.graph_path(name) for name in GRAPHS}, bundle.precision, kinds, _sized(options, bundle).with_threads(intra_op_num_threads),
        Providers(chosen, {g: provider_options_for(bundle, g, options, "TensorrtExecutionProvider" in chosen) for g in on_ort}, strict),
    )
    return runtime.activate(), missing


def _sized(options: EngineOptions, bundle: Bundle) -> EngineOptions:
    """``options`` with OpenVINO's sequence buckets stopping at the bundle's ``max_seq_len``
    (unless the caller set one)."""
    if options.openvino.max_seq_len is not None:
        return options
    return dataclasses.replace(options, openvino=dataclasses.replace(options.openvino, max_seq_len=bundle.max_seq_len))


def provider_options_for(bundle: Bundle, graph: str, options: EngineOptions, tensorrt: bool = False) -> dict[str, dict]:
    """ONNX Runtime provider options of one graph of a bundle (CUDA and TensorRT). With
    ``tensorrt`` (TensorRT is among the providers chosen) the engine cache's folder is made, or,
    where it cannot be written (a read-only bundle), left out with a ``RuntimeWarning``."""
    cache: str | None = options.tensorrt.cache_dir or str(bundle.path / "trt_cache")
    if tensorrt:
        cache = writable_cache_dir(cache, "TensorRT's engine cache folder")
    return {
        "CUDAExecutionProvider": options.cuda.provider_options(),
        "TensorrtExecutionProvider": options.tensorrt.provider_options(
            bundle.manifest.graphs[graph], bundle.precision[graph], bundle.max_batch_size, bundle.max_seq_len, cache
        ),
    }
