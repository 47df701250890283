"""The export recipe as data: what each precision word means, what each target does, and which
pass makes each graph at each (target, graph, precision).

In the manner of optimum's export configs: the exporter reads these tables and runs the passes
they name; a new target, precision or runtime is a new row here, not a branch in ``exporter.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusionrt.bundle import COMPONENTS, GRAPHS, PRECISIONS, TARGET_NAMES, join_components, split_components
from fusionrt.errors import InputError


# What one word of --precision means per graph.
PRESETS: dict[str, dict[str, str]] = {
    "fp32": {"text_encoder": "fp32", "image_encoder": "fp32", "fusion_head": "fp32"},
    "fp16": {"text_encoder": "fp16", "image_encoder": "fp16", "fusion_head": "fp16"},
    # bfloat16 where the runtime runs it (OpenVINO on CPUs with AVX512-BF16 or AMX): graphs stay
    # FP32 in the file; the runtime computes their float ops in bf16.
    "bf16": {"text_encoder": "bf16", "image_encoder": "bf16", "fusion_head": "bf16"},
    # The head stays FP32 under INT8: it is small and holds the attention over modalities.
    "int8": {"text_encoder": "int8", "image_encoder": "int8", "fusion_head": "fp32"},
    # Convolutions have no dynamic INT8 kernels here: the image encoder stays static INT8.
    "int8-dynamic": {"text_encoder": "int8-dynamic", "image_encoder": "int8", "fusion_head": "fp32"},
}

_IMAGE_DYNAMIC = "--precision image=int8-dynamic: the image encoder is quantized statically only; use image=int8"

# Graphs with attention blocks: fused on targets that fuse, and checked for it.
ATTENTION_GRAPHS = ("text_encoder", "fusion_head")


@dataclass(frozen=True)
class TargetSpec:
    """What one ``--target`` does to every graph.

    Attributes:
        fuse: emit ONNX Runtime's contrib fusions (the text encoder through the transformer
            optimizer, the head's cross-attention as one ``MultiHeadAttention`` node); ``False``
            keeps standard ops, which TensorRT parses and fuses itself.
        gelu_approximation: FastGelu instead of the exact GELU (optimum's O3 for GPUs; on CPU the
            exact BiasGelu is as fast).
        fp16_in_graph: FP16 converts the graph; ``False`` leaves it FP32 for TensorRT's builder flag.
        precisions: the precisions it accepts per graph.
        runtime: what runs (and validates) its bundles: ``onnxruntime`` or ``openvino``.
        symmetric_int8: static INT8 activations signed with zero point 0 (TensorRT takes only
            those); otherwise unsigned with a calibrated zero point.
    """

    fuse: bool
    gelu_approximation: bool
    fp16_in_graph: bool
    precisions: tuple
    runtime: str = "onnxruntime"
    symmetric_int8: bool = False


_ORT_PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")
TARGETS: dict[str, TargetSpec] = {
    "cpu": TargetSpec(fuse=True, gelu_approximation=False, fp16_in_graph=True, precisions=_ORT_PRECISIONS),
    "cuda": TargetSpec(fuse=True, gelu_approximation=True, fp16_in_graph=True, precisions=_ORT_PRECISIONS),
    # TensorRT takes INT8 as static QDQ graphs only.
    "tensorrt": TargetSpec(fuse=False, gelu_approximation=False, fp16_in_graph=False, precisions=("fp32", "fp16", "int8"),
                           symmetric_int8=True),
    # OpenVINO's CPU plugin reads the fused contrib ops and static QDQ; it has no kernels for
    # dynamic INT8 (DynamicQuantizeLinear/ConvInteger graphs fail to compile).
    "openvino": TargetSpec(fuse=True, gelu_approximation=False, fp16_in_graph=True, precisions=("fp32", "fp16", "bf16", "int8"),
                           runtime="openvino"),
}
if tuple(TARGETS) != TARGET_NAMES:  # the manifest's reader (bundle.py) knows targets by these names
    raise ImportError(f"recipes.TARGETS {tuple(TARGETS)} must be bundle.TARGET_NAMES {TARGET_NAMES}")
_BF16_TARGETS = [t for t, spec in TARGETS.items() if "bf16" in spec.precisions]


@dataclass(frozen=True)
class PrecisionStep:
    """The precision pass that makes one graph (after fusion).

    Attributes:
        kind: ``copy`` (FP32 as exported), ``fp16`` (float16 graph, float32 IO), ``fp16-builder``
            (graph stays FP32; the TensorRT builder runs it in FP16), ``bf16-runtime`` (graph
            stays FP32; the runtime computes its float ops in bfloat16), ``int8-static`` (QDQ,
            calibrated, constant scales), ``int8-dynamic`` (scales computed per batch at run time).
        op_types: for ``int8-static``, the op types to quantize (``None``: every type ONNX
            Runtime's QDQ quantizer supports).
        image: for ``int8-static``, the image encoder's recipe (float front of depthwise
            encoders: :func:`fusionrt.export.passes.quantize_static_int8`).
        symmetric: for ``int8-static``, signed activations with zero point 0 (the target's
            ``symmetric_int8``).
    """

    kind: str
    op_types: tuple | None = None
    image: bool = False
    symmetric: bool = False


def precision_step(target: str, graph: str, precision: str, transformer: bool = False) -> PrecisionStep:
    """The pass that makes ``graph`` at ``precision`` for ``target``; ``transformer``: an image
    encoder made of attention blocks (ViT), which takes the transformer graphs' INT8 recipe.

    Raises:
        InputError: the target does not take that precision for that graph (names both).
    """
    spec = TARGETS[target]
    if precision == "bf16" and precision not in spec.precisions:
        raise InputError(f"--precision bf16 ({graph}) runs on --target {' or '.join(_BF16_TARGETS)} (ONNX Runtime's CPU and CUDA kernels here have no bfloat16 path for these graphs)")
    if precision not in spec.precisions:
        raise InputError(f"--target {target} takes {list(spec.precisions)} per graph, not {precision!r} ({graph})")
    if precision == "int8-dynamic" and graph == "image_encoder":
        raise InputError(_IMAGE_DYNAMIC)
    if precision == "fp32":
        return PrecisionStep("copy")
    if precision == "bf16":
        return PrecisionStep("bf16-runtime")
    if precision == "fp16":
        return PrecisionStep("fp16" if spec.fp16_in_graph else "fp16-builder")
    if precision == "int8-dynamic":
        return PrecisionStep("int8-dynamic")
    if graph in ATTENTION_GRAPHS or transformer:
        # Transformer graphs: the MatMuls take INT8; attention, LayerNorm and GELU stay float
        # (fused: their contrib ops have no static INT8 form; standard ops for TensorRT: its
        # explicit quantization places Q/DQ on GEMM inputs, and a quantized Softmax or LayerNorm
        # costs accuracy).
        return PrecisionStep("int8-static", op_types=("MatMul",), symmetric=spec.symmetric_int8)
    return PrecisionStep("int8-static", image=graph == "image_encoder", symmetric=spec.symmetric_int8)


def parse_precision(spec: str) -> dict[str, str]:
    """``fp32`` | ``fp16`` | ``bf16`` | ``int8`` | ``int8-dynamic`` | ``text=int8,image=int8,head=fp32`` ->
    graph -> precision.

    One word means its row of ``PRESETS``: ``int8`` is static INT8 (activation ranges calibrated
    once and fixed in the graph: an item's answer depends neither on its padding nor on its
    batch-mates) for the encoders and FP32 for the head; ``int8-dynamic`` quantizes the text
    encoder's activations per batch at run time (faster on long texts; an item's answer moves with
    the longest text of its batch). Components omitted from a per-component spec stay ``fp32``.

    Raises:
        InputError: an unknown or repeated component, an unknown precision, or
            ``image=int8-dynamic`` (names it).
    """
    spec = spec.strip()
    if "=" not in spec:
        if spec not in PRESETS:
            raise InputError(f"--precision {spec!r} is not one of {list(PRESETS)} or text=..,image=..,head=..")
        return dict(PRESETS[spec])
    plan = split_components(spec, "precision", default="fp32")
    for component, graph in COMPONENTS.items():
        if plan[graph] not in PRECISIONS:
            raise InputError(f"--precision {component}={plan[graph]!r}: precision must be one of {list(PRECISIONS)}")
    if plan["image_encoder"] == "int8-dynamic":
        raise InputError(_IMAGE_DYNAMIC)
    return plan


def format_precision(plan: dict[str, str]) -> str:
    """The ``--precision`` that :func:`parse_precision` reads back as ``plan`` (graph -> precision):
    one word when every graph has it and its preset means just that (``fp32``, ``fp16``,
    ``bf16``), else per component. Text, image and head at int8 is ``text=int8,image=int8,head=int8``:
    the word ``int8`` would leave the head FP32."""
    word = join_components(plan)
    if "=" in word or PRESETS.get(word) == plan:
        return word
    return ",".join(f"{c}={plan[g]}" for c, g in COMPONENTS.items())


def parse_target(spec: str) -> dict[str, str]:
    """``cpu`` | ``openvino`` | ... | ``text=openvino,image=openvino,head=cpu`` -> graph -> target.

    Per-component targets mix only targets that make the same graphs (``cpu`` and ``openvino``:
    the same fusions; each graph then runs and is validated on its target's runtime).

    Raises:
        InputError: an unknown target or component, a missing component, or a mix of targets whose
            graphs differ (names them).
    """
    targets = split_components(spec, "target")
    unknown = sorted({t for t in targets.values() if t not in TARGETS})
    if unknown:
        raise InputError(f"--target {unknown[0]!r} is not one of {list(TARGETS)}")
    recipes = {(TARGETS[t].fuse, TARGETS[t].gelu_approximation, TARGETS[t].fp16_in_graph) for t in targets.values()}
    if len(recipes) > 1:
        raise InputError(f"--target {spec!r} mixes targets whose graphs differ; per-component targets mix cpu and openvino only")
    return targets


def graph_recipe(targets: dict[str, str]) -> TargetSpec:
    """The target spec that makes the graphs (the same for every graph, see :func:`parse_target`)."""
    return TARGETS[targets[GRAPHS[0]]]


def check_plan(plan: dict[str, str], target: str) -> None:
    """Raise :class:`InputError` when ``target`` (one name or per component) cannot make one of
    the plan's graphs, or the plan has bf16 graphs and this CPU has no bfloat16 arithmetic
    (AVX512-BF16 or AMX-BF16): such a bundle could be neither validated nor run as bf16 here."""
    from fusionrt.cpu import cpu_info

    targets = parse_target(target)
    for graph in GRAPHS:
        precision_step(targets[graph], graph, plan[graph])
    bf16 = [g for g in GRAPHS if plan[g] == "bf16"]
    if bf16 and not cpu_info().bf16:
        raise InputError(
            f"--precision bf16 ({', '.join(bf16)}) needs a CPU with AVX512-BF16 or AMX-BF16 to validate and run it; "
            f"this {cpu_info().model} has neither: use fp32 or int8 for those graphs"
        )


# bfloat16 keeps 8 bits of mantissa (eps 7.8e-3, 8x FP16's). Measured on the default checkpoint's
# 1024 held-out examples with OpenVINO 2026.4.1 (AVX512-BF16): max abs logit error 0.128.
BF16_TOLERANCE = 0.25
# Validation tolerances (max abs error per output against PyTorch FP32 on the evaluation data), as
# optimum's ATOL_FOR_VALIDATION: FP32 float rounding; FP16 measured on the default checkpoint's
# 1024 held-out examples: max 0.011 (0.006 on the old 128); INT8 is recorded, not bounded (it is
# gated by agreement and accuracy instead).
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": BF16_TOLERANCE, "int8": None, "int8-dynamic": None}
# Random-input cases (every batch size x sequence length, pixels ~ N(0, 1)) drive the graphs
# harder than real data; FP16 rounding (eps 9.8e-4) then grows with the logits. Measured on the
# default checkpoint: FP16 max abs logit error 0.016 on random inputs, 0.011 on held-out data.
RANDOM_INPUT_SLACK = {"fp32": 1.0, "fp16": 5.0, "bf16": 5.0, "int8": 1.0, "int8-dynamic": 1.0}


def default_tolerance(plan: dict[str, str]) -> dict[str, float | None]:
    """Max abs error per output for a plan: that of its least precise graph (``TOLERANCE``)."""
    values = [TOLERANCE[p] for p in plan.values()]
    tol = None if None in values else max(values)
    return {"logits": tol, "modality_weights": tol}
