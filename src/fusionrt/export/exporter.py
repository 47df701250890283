"""Checkpoint -> bundle: ONNX export of the three graphs, validation against PyTorch, manifest.

Each graph is described declaratively (optimum-style): its inputs and outputs with symbolic axes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fusionrt.bundle import COMPONENTS, FORMAT_VERSION, GRAPHS, MANIFEST, PREPROCESSOR_CONFIG, TOKENIZER_DIR, sha256_file
from fusionrt.cpu import cpu_info
from fusionrt.errors import ExportError, InputError
from fusionrt.export.passes import CALIBRATION_METHODS
from fusionrt.utils import atomic_directory

PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")
TARGETS = ("cpu", "cuda", "tensorrt")
# Text-encoder attention used for export: transformers' SDPA form matches none of ONNX Runtime's
# fusion patterns (measured: 0 of 6 MiniLM layers fused), eager fuses every layer.
EXPORT_ATTN_IMPLEMENTATION = "eager"
# ir_version 10 is what the 2024 onnxruntime backend of Triton (ORT 1.19/1.20) loads.
MAX_IR_VERSION = 10


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: ONNX input/output names with their symbolic axes."""

    name: str
    inputs: dict
    outputs: dict


GRAPH_SPECS = {
    "text_encoder": GraphSpec(
        "text_encoder",
        inputs={k: {0: "batch", 1: "sequence"} for k in ("input_ids", "attention_mask", "token_type_ids")},
        outputs={"text_features": {0: "batch", 1: "sequence"}},
    ),
    "image_encoder": GraphSpec(
        "image_encoder", inputs={"pixel_values": {0: "batch"}}, outputs={"image_features": {0: "batch"}}
    ),
    "fusion_head": GraphSpec(
        "fusion_head",
        inputs={
            "text_features": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            "image_features": {0: "batch"},
        },
        outputs={"logits": {0: "batch"}, "modality_weights": {0: "batch"}},
    ),
}


def parse_precision(spec: str) -> dict[str, str]:
    """``fp32`` | ``fp16`` | ``int8`` | ``int8-dynamic`` | ``text=int8,image=int8,head=fp32`` ->
    graph -> precision.

    ``int8`` is static INT8 (activation ranges calibrated once, fixed in the graph): an item's answer
    does not depend on its padding or its batch-mates. ``int8-dynamic`` quantizes activations per
    batch at run time (ONNX Runtime's dynamic quantization: faster text encoder, but an item's
    answer moves with the longest text of its batch); it exists for the text encoder and the head.
    One word applies to every graph, except that the head stays FP32 under ``int8`` and
    ``int8-dynamic`` (it is small and holds the attention over modalities) and the image encoder is
    static INT8 under ``int8-dynamic`` (convolutions have no dynamic INT8 kernels here).
    Components omitted from a per-component spec stay ``fp32``.

    Raises:
        InputError: an unknown component or precision, or ``image=int8-dynamic`` (names it).
    """
    spec = spec.strip()
    if "=" not in spec:
        if spec not in PRECISIONS:
            raise InputError(f"--precision {spec!r} is not one of {list(PRECISIONS)} or text=..,image=..,head=..")
        if spec.startswith("int8"):
            return {"text_encoder": spec, "image_encoder": "int8", "fusion_head": "fp32"}
        return {g: spec for g in GRAPHS}
    plan = {g: "fp32" for g in GRAPHS}
    for part in spec.split(","):
        component, _, value = part.partition("=")
        component, value = component.strip(), value.strip()
        if component not in COMPONENTS:
            raise InputError(f"--precision component {component!r} is not one of {list(COMPONENTS)}")
        if value not in PRECISIONS:
            raise InputError(f"--precision {component}={value!r}: precision must be one of {list(PRECISIONS)}")
        if value == "int8-dynamic" and COMPONENTS[component] == "image_encoder":
            raise InputError("--precision image=int8-dynamic: the image encoder is quantized statically only; use image=int8")
        plan[COMPONENTS[component]] = value
    return plan


def default_tolerance(plan: dict[str, str]) -> dict[str, float | None]:
    """Max abs error per output against PyTorch FP32 on the evaluation data: 1e-4 for FP32; 2e-2
    with FP16 (measured on the default checkpoint's 1024 held-out examples: max 0.011; on 128 it
    was 0.006); with INT8 the error is recorded, not bounded (INT8 is gated by accuracy instead)."""
    if any(p.startswith("int8") for p in plan.values()):
        return {"logits": None, "modality_weights": None}
    if "fp16" in plan.values():
        return {"logits": 2e-2, "modality_weights": 2e-2}
    return {"logits": 1e-4, "modality_weights": 1e-4}


# Random-input cases (every batch size x sequence length, pixels ~ N(0, 1)) drive the graphs
# harder than real data; FP16 rounding (eps 9.8e-4) then grows with the logits. Measured on the
# default checkpoint: FP16 max abs logit error 0.016 on random inputs, 0.011 on held-out data.
RANDOM_INPUT_SLACK = {"fp32": 1.0, "fp16": 5.0, "int8": 1.0, "int8-dynamic": 1.0}


@dataclass(frozen=True)
class ExportOptions:
    """Options of :func:`export_bundle`.

    Attributes:
        precision: ``fp32``, ``fp16``, ``int8`` or per component, e.g. ``text=int8,image=int8,head=fp32``
            (see :func:`parse_precision`).
        opset: ONNX opset of the exported graphs (17: widest runtime support incl. Triton 2024).
        target: ``cpu`` | ``cuda`` | ``tensorrt``; picks the recipe. cpu/cuda: ONNX Runtime
            fused attention (GELU approximated on cuda); tensorrt: standard ops only, INT8 as static
            QDQ in every graph, FP16 left to TensorRT's builder (graphs stay FP32).
        max_batch_size: largest batch the bundle is meant to serve (manifest, Triton config).
        calibration: JSONL for INT8 calibration (default: the checkpoint's ``calibration.jsonl``).
        calibration_method: ``minmax`` | ``entropy`` | ``percentile`` (99.999th).
        reduce_range: 7-bit INT8 weights. On AVX2 CPUs without VNNI, u8 x s8 products summed in
            pairs can saturate int16 (ONNX Runtime quantization docs); 7 bits avoids it at the cost
            of resolution. ``None`` (default) follows the exporting CPU (:mod:`fusionrt.cpu`): off
            where it has VNNI or AMX-INT8, on elsewhere; the manifest records the CPU and the value.
            Measured on an AVX-512 VNNI CPU, default checkpoint, dynamic INT8: 7-bit weights cost
            agreement (98.4% vs 100% on 128 held-out examples).
        eval_data: JSONL for the accuracy gate (default: the checkpoint's ``heldout.jsonl``).
        max_accuracy_drop: accuracy points the bundle may lose against PyTorch FP32 on
            ``eval_data`` before export fails (a safety net; the INT8 target is 0.5).
        min_agreement: least share of ``eval_data`` examples, in [0, 1], on which the bundle's top-1
            label must be PyTorch FP32's, else export fails. 0.99: at most 10 of the default
            checkpoint's 1024 held-out examples may change label. Like ``max_accuracy_drop``, it
            does not apply without evaluation data (no ``eval_data`` and no held-out split).
        tolerance: max abs error per output; ``None`` derives it from the precision
            (:func:`default_tolerance`).
        validate: run the validation (turning it off is for debugging only).
        validation_batch_sizes / validation_seq_lens: the synthetic validation grid; the
            sequence length ``0`` stands for the checkpoint's ``max_seq_len``.
    """

    precision: str = "fp32"
    opset: int = 17
    target: str = "cpu"
    max_batch_size: int = 32
    calibration: str | None = None
    calibration_method: str = "minmax"
    reduce_range: bool | None = None
    eval_data: str | None = None
    max_accuracy_drop: float = 1.0
    min_agreement: float = 0.99
    tolerance: dict | None = None
    validate: bool = True
    validation_batch_sizes: tuple = (1, 3, 8)
    validation_seq_lens: tuple = (1, 17, 0)

    def __post_init__(self):
        plan = parse_precision(self.precision)
        if self.target not in TARGETS:
            raise InputError(f"--target {self.target!r} is not one of {list(TARGETS)}")
        if self.target == "tensorrt" and "int8-dynamic" in plan.values():
            raise InputError("--target tensorrt takes static INT8 only (QDQ graphs); use int8, not int8-dynamic")
        if not 14 <= self.opset <= 20:
            raise InputError(f"--opset {self.opset} is outside the supported range 14-20")
        if self.max_batch_size < 1:
            raise InputError(f"--max-batch-size must be >= 1, got {self.max_batch_size}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise InputError(f"--calibration-method {self.calibration_method!r} is not one of {list(CALIBRATION_METHODS)}")
        if self.max_accuracy_drop < 0:
            raise InputError(f"--max-accuracy-drop must be >= 0 points, got {self.max_accuracy_drop}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise InputError(f"--min-agreement must be a share in [0, 1] (0.99 is 99%), got {self.min_agreement}")

    @property
    def plan(self) -> dict[str, str]:
        return parse_precision(self.precision)

    @property
    def resolved_reduce_range(self) -> bool:
        """``reduce_range``, or when ``None`` whether this CPU lacks an INT8 dot product."""
        from fusionrt.cpu import cpu_info

        return self.reduce_range if self.reduce_range is not None else not cpu_info().int8_dot_product

    @property
    def tolerances(self) -> dict:
        return dict(self.tolerance) if self.tolerance is not None else default_tolerance(self.plan)

    @property
    def random_input_tolerances(self) -> dict:
        """Tolerances for the random-input grid: ``tolerances`` times the slack of the least precise
        graph (see ``RANDOM_INPUT_SLACK``)."""
        slack = max(RANDOM_INPUT_SLACK[p] for p in self.plan.values())
        return {k: (None if v is None else v * slack) for k, v in self.tolerances.items()}


def _export_graph(module, args: tuple, spec: GraphSpec, path: Path, opset: int) -> None:
    import torch

    dynamic_axes = {**spec.inputs, **spec.outputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(spec.inputs),
            output_names=list(spec.outputs),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            custom_opsets={"com.microsoft": 1} if spec.name == "fusion_head" else None,
            dynamo=False,
        )
    import onnx

    model = onnx.load(str(path))
    # Axes not declared dynamic are static: write their sizes (the tracer sometimes leaves names).
    with torch.inference_mode():
        example = module(*args)
    example = example if isinstance(example, tuple) else (example,)
    for value, tensor, axes in zip(model.graph.output, example, spec.outputs.values()):
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            if i not in axes:
                dim.dim_value = int(tensor.shape[i])
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def _graph_modules(model):
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m.encode_text(input_ids, attention_mask, token_type_ids)

    class ImageEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m.encode_image(pixel_values)

    # eval() on the wrappers too: the exporter restores each module's mode after tracing.
    return {
        "text_encoder": TextEncoder(model).eval(),
        "image_encoder": ImageEncoder(model).eval(),
        "fusion_head": model.head.eval(),
    }


def describe_graph(path: Path) -> dict:
    """Manifest entry of one graph: file, sha256, inputs/outputs (name, dtype, shape), fused_ops."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)

    def io(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
            out.append({"name": v.name, "dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": shape})
        return out

    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "inputs": io(model.graph.input),
        "outputs": io(model.graph.output),
        "fused_ops": fused_op_counts(model),
    }


# Op types that only exist as the result of fusion (ONNX Runtime contrib ops and ONNX fusions).
FUSED_OP_TYPES = (
    "Attention", "MultiHeadAttention", "QAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
    "LayerNormalization", "BiasGelu", "FastGelu", "Gelu", "QuickGelu", "GemmFastGelu", "BiasSplitGelu",
    "QLinearConv", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
    "FusedConv", "FusedMatMul", "QuantizeLinear", "DequantizeLinear",
)


def fused_op_counts(model) -> dict[str, int]:
    """Count the fused op types (see ``FUSED_OP_TYPES``) in an ONNX model."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in FUSED_OP_TYPES:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _versions() -> dict:
    import onnx
    import torch
    import transformers

    from fusionrt import __version__

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {
        "fusionrt": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort_version,
    }


def export_bundle(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    options: ExportOptions = ExportOptions(),
    progress: bool = True,
) -> Path:
    """Export a checkpoint to a validated bundle directory.

    The bundle is built in a temporary sibling of ``output`` and moved into place only when export
    and validation succeed: a failed or interrupted export leaves ``output`` as it was.

    Args:
        checkpoint: checkpoint directory (``config.json``, ``model.safetensors``, tokenizer,
            ``preprocessor_config.json``; ``heldout.jsonl`` is used for validation when present).
        output: bundle directory to write (an existing bundle there is replaced).
        options: see :class:`ExportOptions`.

    Returns:
        The bundle path.

    Raises:
        CheckpointError: the checkpoint cannot be loaded.
        ExportValidationError: the bundle does not match PyTorch within ``options.tolerance``,
            or fails an accuracy gate (``max_accuracy_drop``, ``min_agreement``); every failed
            check is listed.
        ExportError: ``output`` exists and is not a bundle.
    """
    import torch

    from fusionrt.export.validate import validate_bundle_graphs
    from fusionrt.model.checkpoint import TOKENIZER_FILES, load_checkpoint

    output = Path(output)
    if output.exists() and not (output / MANIFEST).is_file() and (not output.is_dir() or any(output.iterdir())):
        raise ExportError(f"{output} exists and is not a fusionrt bundle; choose another -o/--output")
    started = time.perf_counter()
    ckpt = load_checkpoint(checkpoint)  # the reference, with transformers' default attention
    # The exported copy uses explicit attention kernels: the form ONNX Runtime's optimizer fuses.
    model = load_checkpoint(checkpoint, attn_implementation=EXPORT_ATTN_IMPLEMENTATION).model.eval()
    config = ckpt.config

    gen = torch.Generator().manual_seed(0)
    h, w = ckpt.image_processor.output_hw
    b, s = 2, min(8, config.max_seq_len)
    vocab = int(config.text_config.get("vocab_size", 100))
    ids = torch.randint(0, vocab, (b, s), generator=gen)
    mask = torch.ones(b, s, dtype=torch.int64)
    types = torch.zeros(b, s, dtype=torch.int64)
    pixels = torch.randn(b, 3, h, w, generator=gen)
    modules = _graph_modules(model)
    with torch.inference_mode():
        text_features = model.encode_text(ids, mask, types)
        image_features = model.encode_image(pixels)
    args = {
        "text_encoder": (ids, mask, types),
        "image_encoder": (pixels,),
        "fusion_head": (text_features, mask, image_features),
    }

    plan = options.plan
    fused = options.target != "tensorrt"  # TensorRT parses standard ops and fuses them itself
    model.head.cross_attn.export_fused = fused
    with atomic_directory(output) as tmp:
        raw = tmp / "raw"
        raw.mkdir()
        with torch.no_grad():
            for name in GRAPHS:
                _export_graph(modules[name], args[name], GRAPH_SPECS[name], raw / f"{name}.onnx", options.opset)
        recipe = _optimize(raw, tmp, ckpt, plan, options, fused)
        shutil.rmtree(raw)

        tok_dir = tmp / TOKENIZER_DIR
        ckpt.tokenizer.save(tok_dir)  # truncation = max_seq_len, padding = longest
        for extra in TOKENIZER_FILES[1:]:
            if (ckpt.path / extra).is_file():
                shutil.copyfile(ckpt.path / extra, tok_dir / extra)
        (tmp / PREPROCESSOR_CONFIG).write_text(json.dumps(ckpt.image_processor.to_dict(), indent=2))

        validation = None
        if options.validate:
            validation = validate_bundle_graphs(
                tmp, ckpt, {name: tmp / f"{name}.onnx" for name in GRAPHS}, options, progress=progress
            )
        import onnx

        first = onnx.load(str(tmp / "text_encoder.onnx"), load_external_data=False)
        manifest = {
            "format_version": FORMAT_VERSION,
            "precision": plan,
            "target": options.target,
            "exporter": "torch.onnx (TorchScript)",
            "opset": options.opset,
            "ir_version": int(first.ir_version),
            "graphs": {name: {**describe_graph(tmp / f"{name}.onnx"), "recipe": recipe[name]} for name in GRAPHS},
            "max_batch_size": options.max_batch_size,
            "max_seq_len": config.max_seq_len,
            "labels": config.labels,
            "preprocessor": ckpt.image_processor.to_dict(),
            "validation": validation,
            "export_options": {k: v for k, v in asdict(options).items()},
            "export_seconds": round(time.perf_counter() - started, 1),
            "versions": _versions(),
            # The exporting machine: INT8 defaults (reduce_range) follow its features.
            "cpu": cpu_info().to_dict(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return output


def _optimize(raw: Path, out: Path, ckpt, plan: dict, options: ExportOptions, fused: bool) -> dict:
    """Fuse, then convert precision; writes ``out/<graph>.onnx``. Returns the recipe per graph."""
    from fusionrt.export import passes

    text_cfg = ckpt.config.text_config
    work = out / "work"
    work.mkdir()
    current = {name: raw / f"{name}.onnx" for name in GRAPHS}
    recipe: dict = {name: {"fusion": None, "precision": plan[name]} for name in GRAPHS}
    blocks = {"text_encoder": int(text_cfg["num_hidden_layers"]), "fusion_head": 1}
    if fused:
        recipe["text_encoder"]["fusion"] = passes.fuse_text_encoder(
            current["text_encoder"], work / "text_encoder.fused.onnx",
            int(text_cfg["num_attention_heads"]), int(text_cfg["hidden_size"]), options.target,
        )
        current["text_encoder"] = work / "text_encoder.fused.onnx"
        recipe["fusion_head"]["fusion"] = {"cross_attention": "com.microsoft.MultiHeadAttention"}
        for name, n in blocks.items():
            passes.check_attention_fused(name, current[name], n)
    else:
        for name in blocks:
            recipe[name]["fusion"] = "left to TensorRT"

    reduce_range = options.resolved_reduce_range
    static = [n for n in GRAPHS if plan[n] == "int8"]
    feeds = _calibration_feeds(ckpt, current, options) if static else None
    for name in GRAPHS:
        dst = out / f"{name}.onnx"
        precision = plan[name]
        if precision == "fp16" and options.target != "tensorrt":
            recipe[name]["fp16"] = passes.to_fp16(current[name], dst)
        elif precision == "fp16":
            shutil.copyfile(current[name], dst)
            recipe[name]["fp16"] = "TensorRT builder flag (graph stays float32)"
        elif precision == "int8":
            # Fused graphs: quantize the MatMuls only; LayerNorm, attention (softmax) and GELU stay
            # float (their contrib ops have no static INT8 form). Standard-op graphs: every op
            # ONNX Runtime's QDQ quantizer supports.
            op_types = ["MatMul"] if fused and name in blocks else None
            recipe[name]["int8"] = passes.quantize_static_int8(
                current[name], dst, feeds, options.calibration_method, reduce_range, op_types=op_types
            )
            recipe[name]["int8"]["calibration_samples"] = sum(len(f["input_ids"]) for f in feeds)
        elif precision == "int8-dynamic":
            recipe[name]["int8"] = passes.quantize_dynamic_int8(current[name], dst, reduce_range)
        else:
            shutil.copyfile(current[name], dst)
        if fused and name in blocks:
            passes.check_attention_fused(name, dst, blocks[name])
    shutil.rmtree(work)
    return recipe


MIN_CALIBRATION_SAMPLES = 100


def _calibration_feeds(ckpt, graphs: dict, options: ExportOptions, batch_size: int = 8) -> list[dict]:
    """Batches of every tensor the graphs see (bundle inputs and intermediate features), from
    paired text+image calibration data run through the FP32 graphs. Text is padded to
    ``max_seq_len`` so the calibrated ranges include padded positions as served by Triton."""
    from fusionrt.engine.session import GraphChain, SessionOptions, create_session
    from fusionrt.model.data import read_jsonl

    path = Path(options.calibration) if options.calibration else ckpt.split("calibration")
    if path is None:
        raise ExportError(
            f"INT8 static quantization needs calibration data: {ckpt.path / 'calibration.jsonl'} is missing; "
            "pass --calibration DATA.jsonl"
        )
    examples = read_jsonl(path)
    if len(examples) < MIN_CALIBRATION_SAMPLES:
        warnings.warn(
            f"only {len(examples)} calibration samples in {path}; activation ranges from fewer than "
            f"{MIN_CALIBRATION_SAMPLES} samples may not cover real inputs",
            RuntimeWarning,
            stacklevel=3,
        )
    chain = GraphChain({n: create_session(p, ["CPUExecutionProvider"], SessionOptions()) for n, p in graphs.items()})
    feeds = []
    for start in range(0, len(examples), batch_size):
        part = examples[start : start + batch_size]
        feed, _ = ckpt.tokenizer([ex.text for ex in part], pad_to=ckpt.config.max_seq_len)
        feed["pixel_values"] = ckpt.image_processor([ex.image for ex in part])
        feeds.append(chain.run(feed))
    return feeds
