"""What :meth:`fusionrt.Engine.explain` answers: word and region relevance from the explanation
graph's outputs, merged into words and mapped back onto the original image.

Torch-free and onnxruntime-free (numpy only).

The explanation graph (``fusion_head_explain.onnx``, see :meth:`FusionHead.explain
<fusionrt.model.modeling.FusionHead.explain>`) returns, for the predicted class ``c``:
the cross-attention probabilities ``A`` (text tokens over image regions), and the contribution of
each token and each region to ``<z, g>``, ``g = dlogit_c/dz`` at the fused representation ``z``
(gradient x input; the contributions add up to ``<z, g>``). Three methods turn them into relevance
(``"grad-cam"`` is the default, :func:`resolve_method`):

* ``"gradient"``: the positive contributions, propagated through the cross-attention as attention
  rollout does through a residual block (Abnar and Zuidema, 2020, "Quantifying Attention Flow in
  Transformers": ``0.5 I + 0.5 A``, heads averaged): half of a token's relevance stays with it,
  half flows to the regions it attended to; a region's own contribution (through the image mean)
  is added to it. The gradient weighting is Chefer et al.'s (2021, "Generic Attention-model
  Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers") idea applied at the
  fused representation.
* ``"rollout"``: the same propagation of the modality weights alone (a token's share is
  ``alpha_text / n``, a region's ``alpha_image / L``): no class information.
* ``"grad-cam"``: regions by Grad-CAM (Selvaraju et al., 2017, "Grad-CAM: Visual Explanations
  from Deep Networks via Gradient-based Localization") on the image encoder's last map, the
  gradient of the class's logit taken through the whole head (the graph's ``region_grad_cam``);
  words as ``"gradient"``. Its ranking of the regions depends less on the
  encoder's precision than ``"gradient"``'s does (docs/explanations.md has the measurements).
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from fusionrt.errors import BundleError, InputError
from fusionrt.prediction import Prediction

METHODS = ("gradient", "rollout", "grad-cam")
# preprocessor_config.json key of a bundle: ImageGeometry.receptive_field_shift
RECEPTIVE_FIELD_KEY = "fusionrt_receptive_field_shift"


@dataclass(frozen=True)
class ImageGeometry:
    """Where the image encoder's input lies in the original image.

    Attributes:
        original_size: ``(width, height)`` of the decoded image in pixels (EXIF orientation applied).
        resized_size: ``(width, height)`` after the resize (of the shortest edge, or to a fixed
            size: then the aspect ratio changes and the heat map scales each axis on its own).
        crop_box: ``(left, top, width, height)`` of the center crop in resized pixels (``left``
            and ``top`` are negative when the crop zero-pads a smaller image).
        receptive_field_shift: where the image encoder's cells look relative to their centres:
            ``(stride - 1) / 2`` pixels before (-1) or after (+1) them, or on them (0); the
            bundle's ``preprocessor_config.json`` key ``fusionrt_receptive_field_shift``, from
            the encoder's family row (:class:`fusionrt.model.families.EncoderFamily`).
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_box: tuple[int, int, int, int]
    receptive_field_shift: int = 0

    @classmethod
    def of(cls, width: int, height: int, preprocessor: dict) -> "ImageGeometry":
        """The geometry of a ``width`` x ``height`` image under a bundle's
        ``preprocessor_config.json`` (the resize and crop arithmetic of
        :class:`~fusionrt.preprocessing.ImageProcessor`)."""
        w1, h1 = width, height
        size = preprocessor.get("size", {"shortest_edge": 256})
        if preprocessor.get("do_resize", True) and "shortest_edge" not in size:  # a fixed size: each axis scaled on its own
            w1, h1 = int(size["width"]), int(size["height"])
        elif preprocessor.get("do_resize", True):
            short = int(size["shortest_edge"])
            w1, h1 = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
            w1, h1 = max(w1, 1), max(h1, 1)
        if preprocessor.get("do_center_crop", True):
            crop = preprocessor.get("crop_size", {"height": 224, "width": 224})
            cw, ch = int(crop["width"]), int(crop["height"])
            pw, ph = max(w1, cw), max(h1, ch)  # the zero-padded size (transformers' convention)
            left, top = (pw - cw) // 2 - (pw - w1) // 2, (ph - ch) // 2 - (ph - h1) // 2
        else:
            left, top, cw, ch = 0, 0, w1, h1
        shift = int(preprocessor.get(RECEPTIVE_FIELD_KEY, 0))
        return cls((int(width), int(height)), (int(w1), int(h1)), (int(left), int(top), int(cw), int(ch)), shift)

    def to_dict(self) -> dict:
        return {"original_size": list(self.original_size), "resized_size": list(self.resized_size), "crop_box": list(self.crop_box),
                "receptive_field_shift": self.receptive_field_shift}


def grid_shape(regions: int, height: int, width: int) -> tuple[int, int]:
    """``(h, w)`` of the image encoder's last feature map: of the grids of ``regions`` cells, the
    one whose aspect ``h / w`` is nearest (in log ratio) that of its ``height`` x ``width`` input (a
    ResNet's 224x224 -> 7x7; a small map of an elongated crop, ConvNeXt's 48x20 -> 6x2, is not
    the nearest square root's neighbour).

    Raises:
        InputError: no grid of ``regions`` cells has strides ``height / h`` and ``width / w``
            within a factor of 2 of each other (e.g. a ViT's 17 tokens, CLS included, of 32x32).
    """
    grids = [(h, regions // h) for h in range(1, regions + 1) if regions % h == 0]
    best = min(grids, key=lambda g: abs(math.log(g[0] * width / (g[1] * height))), default=None)
    if best is None or abs(math.log(best[0] * width / (best[1] * height))) > math.log(2):
        raise InputError(f"{regions} image regions form no grid of the input's aspect {height}x{width}")
    return best


def resolve_method(method: str | None, graph_outputs: Iterable[str], where: str = "this bundle") -> str:
    """The explanation method to run: ``method``, or when it is ``None`` the default for an
    explanation graph with these output names: ``"grad-cam"``, or ``"gradient"`` for a graph
    exported before it had ``region_grad_cam``.

    Args:
        method: ``"grad-cam"``, ``"gradient"``, ``"rollout"`` or ``None``.
        graph_outputs: the explanation graph's output names.
        where: what error messages call the bundle.

    Raises:
        InputError: an unknown method.
        BundleError: ``"grad-cam"`` for a graph without ``region_grad_cam`` (re-export the bundle).
    """
    outputs = set(graph_outputs)
    if method is None:
        return "grad-cam" if "region_grad_cam" in outputs else "gradient"
    if method not in METHODS:
        raise InputError(f"explanation method must be one of {list(METHODS)}, got {method!r}")
    if method == "grad-cam" and "region_grad_cam" not in outputs:
        raise BundleError(f"{where}'s explanation graph has no region_grad_cam output (exported by an older fusionrt): "
                          "re-export it to explain with method='grad-cam'")
    return method


def relevance(outputs: dict[str, np.ndarray], attention_mask: np.ndarray, method: str = "gradient") -> tuple[np.ndarray, np.ndarray]:
    """Token and region relevance of a batch (see the module docstring).

    Args:
        outputs: the explanation graph's ``modality_weights (B, 2)``, ``cross_attention
            (B, heads, S, L)``, ``token_contributions (B, S)``, ``region_contributions (B, L)``
            and, for ``"grad-cam"``, ``region_grad_cam (B, L)``.
        attention_mask: ``(B, S)`` integers, 1 for real tokens.
        method: ``"gradient"``, ``"rollout"`` or ``"grad-cam"``.

    Returns:
        ``tokens (B, S) float64`` (>= 0, 0 on padding; not normalized: :func:`merge_words`
        normalizes over words) and ``regions (B, L) float64`` (>= 0, each row sums to 1).

    Raises:
        InputError: an unknown method.
        BundleError: ``"grad-cam"`` on the outputs of an explanation graph without
            ``region_grad_cam`` (exported by an older fusionrt: re-export the bundle).
    """
    resolve_method(method, outputs)
    mask = np.asarray(attention_mask, np.float64)  # (B, S)
    attention = np.asarray(outputs["cross_attention"], np.float64).mean(axis=1)  # (B, S, L)
    regions_n = attention.shape[-1]
    if method in ("gradient", "grad-cam"):
        tokens = np.maximum(np.asarray(outputs["token_contributions"], np.float64), 0.0) * mask
        direct = np.maximum(np.asarray(outputs["region_contributions"], np.float64), 0.0)
    else:
        alpha = np.asarray(outputs["modality_weights"], np.float64)  # (B, 2)
        tokens = alpha[:, :1] * mask / np.maximum(mask.sum(1, keepdims=True), 1.0)
        direct = np.broadcast_to(alpha[:, 1:] / regions_n, attention.shape[::2])
    if method == "grad-cam":
        regions = np.maximum(np.asarray(outputs["region_grad_cam"], np.float64), 0.0)  # Grad-CAM's ReLU
    else:
        regions = direct + np.einsum("bs,bsl->bl", 0.5 * tokens, attention)  # (B, L)
    total = regions.sum(1, keepdims=True)
    regions = np.where(total > 0, regions / np.where(total > 0, total, 1.0), 1.0 / regions_n)
    return 0.5 * tokens, regions


def merge_words(encoding: Any, text: str, token_relevance: np.ndarray) -> tuple[list[str], list[tuple[int, int]], list[float]]:
    """Sum wordpiece relevance into words, by the tokenizer's own word ids and character offsets.

    Works for every convention the ``tokenizers`` library knows (WordPiece ``##``, byte-level BPE
    ``Ġ``, SentencePiece ``▁``): its ``word_ids`` say which pre-tokenized word a token came from,
    and its ``offsets`` where that word lies in ``text``. Special tokens, padding and runs of
    whitespace (which byte-level BPE and SentencePiece make pre-tokens of) are dropped. A word
    keeps its combining marks (a decomposed accent, U+0301: BERT's normalizer strips it, byte-level
    BPE splits the word around it). A word cut by the truncation at ``max_seq_len`` is whole,
    with the relevance of its tokens that were read; the words after it are not read and not listed.

    Args:
        encoding: the ``tokenizers.Encoding`` of ``text`` (as the batch was tokenized).
        text: the text.
        token_relevance: ``(S,)`` non-negative, aligned with ``encoding``'s tokens.

    Returns:
        ``(words, spans, relevance)``: the words as they appear in ``text``, their ``(start, end)``
        character offsets, and their relevance, summing to 1 (equal shares when every token
        scored 0; empty lists for a text without words).
    """
    spans: dict[int, list[int]] = {}
    scores: dict[int, float] = {}
    for k, (word, special, (start, end)) in enumerate(zip(encoding.word_ids, encoding.special_tokens_mask, encoding.offsets)):
        if word is None or special or k >= len(token_relevance) or not encoding.attention_mask[k]:
            continue
        span = spans.setdefault(word, [start, end])
        span[0], span[1] = min(span[0], start), max(span[1], end)
        scores[word] = scores.get(word, 0.0) + float(token_relevance[k])
    for unread in encoding.overflowing:  # the tokens truncation cut: the rest of a word cut in two
        for word, special, (_, end) in zip(unread.word_ids, unread.special_tokens_mask, unread.offsets):
            if word in spans and not special:
                spans[word][1] = max(spans[word][1], end)
    for w, (start, end) in spans.items():  # offsets of byte-level BPE and SentencePiece tokens may include the space before a word
        piece = text[start:end]
        spans[w] = [start + len(piece) - len(piece.lstrip()), end - len(piece) + len(piece.rstrip())]
    # a run of whitespace (byte-level BPE's "  ", "\t", "\n"; SentencePiece's extra "▁") is a pre-token, not a word
    merged: list[list] = []  # [start, end, relevance] per word, in text order
    for w in sorted(w for w in spans if spans[w][0] < spans[w][1]):
        start, end = spans[w]
        # byte-level BPE's pre-tokens of an accent and of the letters after it ("nai", U+0308, "ve")
        if merged and merged[-1][1] == start and (_is_mark(text[start]) or (_is_mark(text[start - 1]) and text[start].isalnum())):
            merged[-1][1:] = [end, merged[-1][2] + scores[w]]
        else:
            merged.append([start, end, scores[w]])
    for m, after in zip(merged, [m[0] for m in merged[1:]] + [len(text)]):  # marks BERT's normalizer stripped
        while m[1] < after and _is_mark(text[m[1]]):
            m[1] += 1
    values = np.array([m[2] for m in merged], np.float64)
    if len(values):
        values = values / values.sum() if values.sum() > 0 else np.full(len(values), 1.0 / len(values))
    return [text[a:b] for a, b, _ in merged], [(a, b) for a, b, _ in merged], [float(v) for v in values]


def _is_mark(char: str) -> bool:
    """Whether ``char`` is a combining mark (Unicode category M: U+0301, U+0308, U+20DD...)."""
    return unicodedata.category(char).startswith("M")


@dataclass(frozen=True)
class Explanation:
    """One answer of :meth:`fusionrt.Engine.explain`.

    What the numbers mean: how the fusion head's computation distributes the evidence for
    ``explained_label`` over the words and the image encoder's regions: with ``method="grad-cam"``
    (the default), the regions by Grad-CAM on the image encoder's last map and the words by
    positive gradient x input at the fused representation; with ``"gradient"``, that gradient x
    input for both, routed through the head's cross-attention; with ``"rollout"``, the modality
    weights alone. What they do not mean: attention and gradients are not causal
    proof (Jain and Wallace, 2019, "Attention is not Explanation"); the encoders' own mixing of
    words and of pixels before the head is not traced, so a region's relevance is that of its
    receptive field's features (centred on the cell for a ViT and a ConvNeXt, half a stride up-left
    of it for a ResNet, down-right for an EfficientNet-Lite: :meth:`heat_map` puts each value
    there, ``ImageGeometry.receptive_field_shift``); and evidence against the class (negative
    contributions) is left out.

    Attributes:
        prediction: the :class:`Prediction` (as :meth:`Engine.predict` returns it).
        explained_label: the class explained: the explanation graph's (float32 head) argmax, which
            is ``prediction.label`` unless a reduced-precision head disagrees.
        words: the text's words (special tokens and padding excluded).
        word_spans: ``(start, end)`` character offsets of each word in the text.
        word_relevance: per word, >= 0, summing to 1.
        region_relevance: ``(h, w) float32`` over the image encoder's last feature map (rows top to
            bottom), >= 0, summing to 1.
        modality_weights: ``{"text": alpha_text, "image": alpha_image}``.
        geometry: where the encoder's input lies in the original image (:class:`ImageGeometry`).
        method: ``"gradient"``, ``"rollout"`` or ``"grad-cam"`` (module docstring).
    """

    prediction: Prediction
    explained_label: str
    words: list[str]
    word_spans: list[tuple[int, int]]
    word_relevance: list[float]
    region_relevance: np.ndarray = field(repr=False)
    modality_weights: dict
    geometry: ImageGeometry
    method: str

    def heat_map(self) -> np.ndarray:
        """Region relevance at the original image's size: ``(height, width) float32`` in [0, 1]
        (divided by its maximum), bilinear between the centres of the feature-map cells over
        the center crop (the whole resized image without one), mapped back through the crop and
        the resize (per axis); 0 outside the crop (the part of the photo the model never saw)."""
        (w0, h0), (w1, h1), (left, top, cw, ch) = self.geometry.original_size, self.geometry.resized_size, self.geometry.crop_box
        grid = np.asarray(self.region_relevance, np.float64)
        shift = self.geometry.receptive_field_shift
        rows = _interpolation(h0, h1 / h0, top, ch, grid.shape[0], shift)  # (H0, h)
        cols = _interpolation(w0, w1 / w0, left, cw, grid.shape[1], shift)  # (W0, w)
        # float32, divided in place: the map of a camera-size photo is large (8000x6000: 183 MiB)
        heat = (rows @ grid).astype(np.float32) @ cols.T.astype(np.float32)  # (H0, W0)
        peak = heat.max()
        if peak > 0:
            heat /= peak
        return heat

    def to_dict(self) -> dict:
        """JSON-ready: every field but the heat map (``region_relevance`` as nested lists)."""
        return {
            "prediction": self.prediction.to_dict(),
            "explained_label": self.explained_label,
            "words": [{"word": w, "span": list(s), "relevance": r} for w, s, r in zip(self.words, self.word_spans, self.word_relevance)],
            "region_relevance": np.asarray(self.region_relevance, np.float64).tolist(),
            "modality_weights": self.modality_weights,
            "geometry": self.geometry.to_dict(),
            "method": self.method,
        }

    @classmethod
    def from_fields(cls, prediction: Prediction, fields: dict) -> "Explanation":
        """The explanation of ``prediction`` from :func:`explanation_fields`' dict (or
        :meth:`to_dict`'s)."""
        g = fields["geometry"]
        return cls(
            prediction=prediction,
            explained_label=str(fields["explained_label"]),
            words=[str(w["word"]) for w in fields["words"]],
            word_spans=[(int(w["span"][0]), int(w["span"][1])) for w in fields["words"]],
            word_relevance=[float(w["relevance"]) for w in fields["words"]],
            region_relevance=np.asarray(fields["region_relevance"], np.float32),
            modality_weights=dict(prediction.modality_weights),
            geometry=ImageGeometry(tuple(g["original_size"]), tuple(g["resized_size"]), tuple(g["crop_box"]),
                                   int(g.get("receptive_field_shift", 0))),
            method=str(fields["method"]),
        )


def _interpolation(size: int, scale: float, offset: int, crop: int, cells: int, shift: int = 0) -> np.ndarray:
    """``(size, cells)`` weights: pixel ``p`` of an original axis -> linear interpolation between
    the centres of the cells' receptive fields (the cell centres moved by ``shift * (stride - 1)
    / 2`` pixels, :class:`ImageGeometry`) of a ``cells``-long grid over ``crop`` pixels starting at
    resized ``offset``."""
    resized = (np.arange(size) + 0.5) * scale  # pixel centres in resized coordinates
    inside = (resized >= offset) & (resized < offset + crop)
    moved = shift * (crop / cells - 1.0) / 2.0
    g = np.clip((resized - offset - moved) * cells / crop - 0.5, 0.0, cells - 1.0)  # in cell-centre units
    low = np.floor(g).astype(int)
    high = np.minimum(low + 1, cells - 1)
    frac = g - low
    out = np.zeros((size, cells))
    np.add.at(out, (np.arange(size), low), 1.0 - frac)
    np.add.at(out, (np.arange(size), high), frac)
    out[~inside] = 0.0
    return out


def explanation_fields(
    outputs: dict[str, np.ndarray],
    attention_mask: np.ndarray,
    encodings: Sequence[Any],
    texts: Sequence[str],
    geometries: Sequence[ImageGeometry],
    labels: Sequence[str],
    pixel_hw: tuple[int, int],
    method: str = "gradient",
) -> list[dict]:
    """Per row of a batch, the :class:`Explanation` fields but the prediction, JSON-ready (the
    Engine's and the served ``explain`` model's common step; :meth:`Explanation.from_fields`
    reads them back).

    Args:
        outputs: the explanation graph's outputs (see :func:`relevance`) and its ``logits``.
        attention_mask: ``(B, S)`` as fed to the graphs.
        encodings: per row, the ``tokenizers.Encoding`` of its text (as the batch was tokenized).
        texts, geometries: per row, the text and its image's :class:`ImageGeometry`.
        labels: the bundle's labels.
        pixel_hw: the image encoder's input ``(height, width)``.
        method: see :func:`relevance`.
    """
    tokens, regions = relevance(outputs, attention_mask, method)
    grid = grid_shape(regions.shape[1], *pixel_hw)
    explained = np.asarray(outputs["logits"]).argmax(-1)
    out = []
    for i in range(len(texts)):
        words, spans, word_relevance = merge_words(encodings[i], texts[i], tokens[i])
        out.append({
            "explained_label": labels[int(explained[i])],
            "words": [{"word": w, "span": list(s), "relevance": r} for w, s, r in zip(words, spans, word_relevance)],
            "region_relevance": regions[i].reshape(grid).astype(np.float32).tolist(),
            "geometry": geometries[i].to_dict(),
            "method": method,
        })
    return out


def explanations(predictions: Sequence[Prediction], fields: Sequence[dict]) -> list[Explanation]:
    """:class:`Explanation` per row from its :class:`Prediction` and :func:`explanation_fields`."""
    return [Explanation.from_fields(p, f) for p, f in zip(predictions, fields)]
