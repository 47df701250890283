"""Checkpoint -> bundle: ONNX export of the three graphs, validation against PyTorch, manifest.

Each graph is described declaratively (optimum-style): its inputs and outputs with symbolic axes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from fusionrt.bundle import (
    EXPLAIN_GRAPH, EXPLAIN_INPUTS, EXPLAIN_OUTPUTS, GRAPHS, MANIFEST, PREPROCESSOR_CONFIG, TOKENIZER_DIR, GraphInfo, Manifest, join_components, sha256_file, write_manifest,
)
from fusionrt.cpu import cpu_info
from fusionrt.errors import ExportError, ExportValidationError, FusionrtInternalError, InputError
from fusionrt.explanation import RECEPTIVE_FIELD_KEY
from fusionrt.export.passes import CALIBRATION_METHODS, FUSED_OP_TYPES, op_counts
from fusionrt.export.recipes import (
    RANDOM_INPUT_SLACK,
    TARGETS,
    check_plan,
    default_tolerance,
    graph_recipe,
    parse_precision,
    parse_target,
    precision_step,
)
from fusionrt.preprocessing.image import PIXEL_LAYOUTS, default_decode_threads
from fusionrt.utils import OutputKind, atomic_directory, check_output_folder

BUNDLE_OUTPUT = OutputKind("bundle", "-o/--output", InputError, ours=lambda p: (p / MANIFEST).is_file())

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
# The explanation graph: the fusion head in float32 with its attention probabilities and the
# contributions of tokens and regions as outputs (FusionHead.explain); exported unfused, never quantized.
EXPLAIN_SPEC = GraphSpec(
    EXPLAIN_GRAPH,
    inputs={name: GRAPH_SPECS["fusion_head"].inputs[name] for name in EXPLAIN_INPUTS},
    outputs=dict(zip(EXPLAIN_OUTPUTS, (
        {0: "batch"}, {0: "batch"}, {0: "batch", 2: "sequence"}, {0: "batch", 1: "sequence"}, {0: "batch"}, {0: "batch"},
    ))),
)


@dataclass(frozen=True)
class ExportOptions:
    """Options of :func:`export_bundle`.

    Attributes:
        precision: ``fp32``, ``fp16``, ``int8`` or per component, e.g. ``text=int8,image=int8,head=fp32``
            (see :func:`parse_precision`).
        opset: ONNX opset of the exported graphs (17: widest runtime support incl. Triton 2024).
        target: ``cpu`` | ``cuda`` | ``tensorrt`` | ``openvino``; picks the recipe (see
            ``recipes.TARGETS``). cpu/cuda: ONNX Runtime fused attention (GELU approximated on
            cuda); tensorrt: standard ops only, INT8 as static QDQ in every graph, FP16 left to
            TensorRT's builder (graphs stay FP32); openvino: the cpu recipe's graphs, validated on
            OpenVINO, with ``bf16`` (run by OpenVINO in bfloat16; needs AVX512-BF16 or AMX).
        max_batch_size: largest batch the bundle is meant to serve (manifest, Triton config).
        calibration: JSONL for INT8 calibration (default: the checkpoint's ``calibration.jsonl``).
        calibration_method: ``minmax`` | ``entropy`` | ``percentile`` (99.999th).
        reduce_range: 7-bit INT8 weights. On AVX2 CPUs without VNNI, u8 x s8 products summed in
            pairs can saturate int16 (ONNX Runtime quantization docs); 7 bits avoids it at the cost
            of resolution. ``None`` (default) follows the exporting CPU (:mod:`fusionrt.cpu`): off
            where it has VNNI or AMX-INT8, on elsewhere; the manifest records the CPU and the value.
        eval_data: JSONL for the accuracy gate (default: the checkpoint's ``heldout.jsonl``).
        max_accuracy_drop: accuracy points the bundle may lose against PyTorch FP32 on
            ``eval_data`` before export fails (a safety net; the INT8 target is 0.5).
        min_agreement: least share of ``eval_data`` examples, in [0, 1], on which the bundle's top-1
            label must be PyTorch FP32's, else export fails: the 95% Wilson lower bound of the
            agreement, in all and on each data source of ``eval_data``, must reach it. 0.99 needs
            at least 381 examples per source (all agreeing); on the default checkpoint's 1024
            held-out examples, at most 3 may change label. Like ``max_accuracy_drop``, it does not
            apply without evaluation data (no ``eval_data`` and no held-out split).
        accept_small_eval_set: gate an evaluation set too small to resolve ``min_agreement``
            (fewer examples than :func:`~fusionrt.export.validate.examples_needed`) on the point
            estimate instead of refusing it; the manifest records which statistic was gated.
        tolerance: max abs error per output; ``None`` derives it from the precision
            (:func:`default_tolerance`).
        validate: run the validation (turning it off is for debugging only).
        validation_batch_sizes / validation_seq_lens: the synthetic validation grid; the
            sequence length ``0`` stands for the checkpoint's ``max_seq_len``.
        pixel_dtype: what the image encoder graph takes as ``pixel_values``: ``uint8``
            ``(batch, H, W, 3)`` as decoded, the graph transposes, rescales and normalizes with the
            checkpoint's ``preprocessor_config.json`` (4x fewer bytes to feed and to send to a
            server; see docs/export.md, "Pixels as uint8"); ``float32`` ``(batch, 3, H, W)``
            normalized, as bundles made before.
        image_float_front: static INT8 of an image encoder with depthwise convolutions leaves
            its high-resolution front float (``rounding.float_front``; on the default it moves the
            explanations' top region 2-4 points nearer FP32's, for about 1.3x ``Engine.run``'s time
            at batch 8 on ONNX Runtime: docs/performance-notes.md). ``False``: every conv INT8
            (GPTQ-rounded). ``None`` (default): decided by measurement: every conv INT8 first,
            and when the validation's ``region_agreement`` on the evaluation data is below
            ``min_region_agreement`` the image encoder is quantized again with its front float
            and validated again, and kept so if that reaches ``min_region_agreement``; the
            manifest records the measurements and the decision (the graph's ``int8.float_front``,
            and ``int8.float_nodes`` when the front is float).
        min_region_agreement: least share, in [0, 1], of the evaluation examples whose most
            relevant image region (Grad-CAM) must be PyTorch FP32's for an INT8 image encoder to
            keep its front INT8 (``image_float_front=None``), and for a ``--precision auto``
            candidate to be eligible. The share is measured and recorded for every bundle with
            evaluation data (``validation.region_agreement``); ``0`` (default): nothing is traded
            for it (0.9 is issue 28's figure: on the default, auto then picks a bf16 image encoder,
            0.98x OpenVINO's model time instead of 1.32x: docs/performance-notes.md).
        gate_region_agreement: fail the export (``ExportValidationError``) when the bundle's
            region agreement is below ``min_region_agreement`` (``--precision auto`` gates its
            end-to-end checks so); off by default: a flat map's top region moves under changes
            FP32 itself sees (docs/explanations.md).
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
    accept_small_eval_set: bool = False
    tolerance: dict | None = None
    validate: bool = True
    validation_batch_sizes: tuple = (1, 3, 8)
    validation_seq_lens: tuple = (1, 17, 0)
    pixel_dtype: str = "uint8"
    image_float_front: bool | None = None
    min_region_agreement: float = 0.0
    gate_region_agreement: bool = False

    @classmethod
    def auto_budget(cls, **fields) -> "ExportOptions":
        """The preset ``--precision auto`` holds every candidate to: at most 0.5 accuracy points
        lost (tighter than the default 1.0, a safety net for a recipe the user chose) and the 95%
        Wilson lower bound of top-1 agreement with PyTorch FP32 at least 0.99 (as the default: on
        1024 held-out examples it admits at most 3 disagreements, a point estimate >= 99.7%; a
        lower bound of 0.995 would need >= 765 examples per gated group and admit none);
        ``fields`` override it."""
        return cls(**{"max_accuracy_drop": 0.5, "min_agreement": 0.99, **fields})

    def __post_init__(self):
        check_plan(parse_precision(self.precision), self.target)
        if self.pixel_dtype not in PIXEL_LAYOUTS:
            raise InputError(f"--pixels {self.pixel_dtype!r} is not one of {list(PIXEL_LAYOUTS)}")
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
        if not 0.0 <= self.min_region_agreement <= 1.0:
            raise InputError(f"--min-region-agreement must be a share in [0, 1] (0.9 is 90%), got {self.min_region_agreement}")

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


def graph_specs(model) -> dict[str, GraphSpec]:
    """``GRAPH_SPECS`` with the text encoder taking its family's inputs (no ``token_type_ids``
    for RoBERTa, XLM-R and DistilBERT)."""
    text = GRAPH_SPECS["text_encoder"]
    inputs = {k: text.inputs[k] for k in model.text_inputs}
    return {**GRAPH_SPECS, "text_encoder": GraphSpec(text.name, inputs, text.outputs)}


def _graph_modules(model, image_processor=None, pixel_dtype: str = "float32"):
    """The three graphs as modules. With ``pixel_dtype`` uint8 the image encoder takes
    ``(B, H, W, 3) uint8`` and does the image processor's rescale and normalization itself, in
    the same two float32 roundings as :meth:`ImageProcessor.normalize` (ONNX: Transpose on the
    uint8 bytes, Cast, Mul, Add before the first layer; any image encoder family), which
    :func:`~fusionrt.export.passes.fold_pixel_normalization` then folds into the first Conv."""
    import numpy as np
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *inputs):  # the family's text inputs, in model.text_inputs order
            return self.m.encode_text(**dict(zip(self.m.text_inputs, inputs)))

    class ImageEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m.encode_image(pixel_values)

    class ExplainHead(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, text_features, attention_mask, image_features):
            return tuple(self.m.head.explain(text_features, attention_mask, image_features))

    class Uint8ImageEncoder(torch.nn.Module):
        def __init__(self, m, scale: np.ndarray, shift: np.ndarray):
            super().__init__()
            self.m = m
            self.register_buffer("scale", torch.from_numpy(scale).view(1, 3, 1, 1))  # rescale / std
            self.register_buffer("shift", torch.from_numpy(shift).view(1, 3, 1, 1))  # -mean / std

        def forward(self, pixel_values):  # (B, H, W, 3) uint8
            x = pixel_values.permute(0, 3, 1, 2).to(torch.float32)  # (B, 3, H, W)
            return self.m.encode_image(x * self.scale + self.shift)

    if pixel_dtype == "uint8":
        scale, shift = image_processor.affine
        image = Uint8ImageEncoder(model, scale, shift)
    else:
        image = ImageEncoder(model)

    # eval() on the wrappers too: the exporter restores each module's mode after tracing.
    return {
        "text_encoder": TextEncoder(model).eval(),
        "image_encoder": image.eval(),
        "fusion_head": model.head.eval(),
        EXPLAIN_GRAPH: ExplainHead(model).eval(),
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
        "fused_ops": op_counts(model, FUSED_OP_TYPES),
    }


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
    overwrite: bool = False,
) -> Path:
    """Export a checkpoint to a validated bundle directory.

    The bundle is built in a temporary sibling of ``output`` and moved into place only when export
    and validation succeed: a failed or interrupted export leaves ``output`` as it was.

    Args:
        checkpoint: checkpoint directory (``config.json``, ``model.safetensors``, tokenizer,
            ``preprocessor_config.json``; ``heldout.jsonl`` is used for validation when present).
        output: bundle directory to write: absent or empty, or (with ``overwrite``) a bundle
            fusionrt wrote before; any other folder is refused.
        options: see :class:`ExportOptions`.
        overwrite: replace a bundle at ``output``.

    Returns:
        The bundle path.

    Raises:
        CheckpointError: the checkpoint cannot be loaded.
        ExportValidationError: the bundle does not match PyTorch within ``options.tolerance``,
            or fails an accuracy gate (``max_accuracy_drop``, ``min_agreement``); every failed
            check is listed.
        InputError: ``output`` holds files fusionrt did not write, or a bundle without ``overwrite``;
            or the evaluation data is too small to resolve ``min_agreement`` (see
            ``accept_small_eval_set``).
    """
    from fusionrt.export.encoder_check import check_encoders
    from fusionrt.export.validate import check_eval_set_resolves, validate_bundle_graphs
    from fusionrt.model.checkpoint import load_checkpoint

    output = Path(output)
    check_output_folder(output, BUNDLE_OUTPUT, overwrite)  # again when written: see atomic_directory
    started = time.perf_counter()
    say = _steps(progress, started)
    say(f"loading checkpoint {checkpoint}")
    ckpt = load_checkpoint(checkpoint)  # the reference, with transformers' default attention
    check_eval_set_resolves(ckpt, options)
    if options.validate and not has_eval_data(ckpt, options):
        say(NO_EVAL_DATA)
    plan = options.plan
    with atomic_directory(output, BUNDLE_OUTPUT, overwrite) as tmp:
        raw = tmp / "raw"
        say("tracing the PyTorch model to ONNX (3 graphs and the explanation head)")
        _trace(checkpoint, ckpt.image_processor, raw, options)
        encoder_reference = None
        if options.validate:
            say("checking the encoder graphs against the transformers models their configs name")
            encoder_reference = check_encoders({n: raw / f"{n}.onnx" for n in GRAPHS}, ckpt, ckpt.image_processor.output_hw)
        recipe = _optimize(raw, tmp, ckpt, plan, options, say)
        shutil.copyfile(raw / f"{EXPLAIN_GRAPH}.onnx", tmp / f"{EXPLAIN_GRAPH}.onnx")  # float32, as traced
        runtimes = {name: TARGETS[t].runtime for name, t in parse_target(options.target).items()}
        final = {n: tmp / f"{n}.onnx" for n in ("text_encoder", "image_encoder") if plan[n] == "fp32" and runtimes[n] == "onnxruntime"}
        if options.validate and final:  # the bundle's own FP32 graphs, fused
            encoder_reference = {"traced": encoder_reference, "bundle": check_encoders(final, ckpt, ckpt.image_processor.output_hw)}
        elif encoder_reference is not None:
            encoder_reference = {"traced": encoder_reference}
        _copy_preprocessing(ckpt, tmp)
        validation = None
        if options.validate:
            say(f"validating against PyTorch FP32 on {_validation_runtime_label(options.target)}")
            validation = validate_bundle_graphs(tmp, ckpt, {name: tmp / f"{name}.onnx" for name in GRAPHS}, options, progress=progress)
            validation = _decide_float_front(raw, tmp, ckpt, plan, recipe, validation, options, say, progress)
            _gate_region_agreement(tmp, validation, options)
        shutil.rmtree(raw)
        say("writing the manifest")
        if validation is not None:
            validation = replace(validation, encoder_reference=encoder_reference)
        _write_manifest(tmp, ckpt, plan, recipe, validation, options, time.perf_counter() - started)
    return output


NO_EVAL_DATA = (
    "no evaluation data (no --eval-data, and the checkpoint has no heldout.jsonl): no accuracy or agreement "
    "gate ran; agreement is measured on random inputs only"
)


def has_eval_data(ckpt, options: ExportOptions) -> bool:
    """Whether the accuracy gates have data: ``options.eval_data`` or the checkpoint's held-out split."""
    return bool(options.eval_data) or ckpt.split("heldout") is not None


def _steps(progress: bool, started: float):
    """``say(message)``: one line per export step on stderr (``export [12 s]: ...``) when
    ``progress``, so a long export is never silent; a no-op otherwise."""

    def say(message: str) -> None:
        if progress:
            print(f"export [{time.perf_counter() - started:.0f} s]: {message}", file=sys.stderr, flush=True)

    return say


def _validation_runtime_label(target: str) -> str:
    """``"onnxruntime (CPU)"``, ``"openvino"``, or both for a mixed target: what validation runs on."""
    runtimes = sorted({TARGETS[t].runtime for t in parse_target(target).values()})
    return " + ".join("onnxruntime (CPU)" if r == "onnxruntime" else r for r in runtimes)


def _trace(checkpoint, image_processor, raw: Path, options: ExportOptions) -> None:
    """torch -> ONNX: write ``raw/<graph>.onnx`` for every graph (FP32, as traced), from example
    inputs of the image processor's output size, pixels of ``options.pixel_dtype``."""
    import torch

    from fusionrt.model.checkpoint import load_checkpoint

    # The exported copy uses explicit attention kernels: the form ONNX Runtime's optimizer fuses.
    model = load_checkpoint(checkpoint, attn_implementation=EXPORT_ATTN_IMPLEMENTATION).model.eval()
    config = model.config
    gen = torch.Generator().manual_seed(0)
    h, w = image_processor.output_hw
    b, s = 2, min(8, config.max_seq_len)
    vocab = int(config.text_config.get("vocab_size", 100))
    # ids above 2: no pad id (0 or 1) among them, so RoBERTa's position ids run over every token
    ids = torch.randint(3, vocab, (b, s), generator=gen)
    mask = torch.ones(b, s, dtype=torch.int64)
    types = torch.zeros(b, s, dtype=torch.int64)
    pixels = torch.randint(0, 256, (b, h, w, 3), generator=gen, dtype=torch.uint8)  # (B, H, W, 3)
    normalized = torch.from_numpy(image_processor.normalize(pixels.numpy()))  # (B, 3, H, W) float32
    modules = _graph_modules(model, image_processor, options.pixel_dtype)
    with torch.inference_mode():
        text_features = model.encode_text(ids, mask, types)
        image_features = model.encode_image(normalized)
    text_args = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    args = {
        "text_encoder": tuple(text_args[k] for k in model.text_inputs),
        "image_encoder": (pixels if options.pixel_dtype == "uint8" else normalized,),
        "fusion_head": (text_features, mask, image_features),
    }
    model.head.cross_attn.export_fused = graph_recipe(parse_target(options.target)).fuse
    specs = graph_specs(model)
    raw.mkdir()
    with torch.no_grad():
        for name in GRAPHS:
            _export_graph(modules[name], args[name], specs[name], raw / f"{name}.onnx", options.opset)
        _export_graph(modules[EXPLAIN_GRAPH], args["fusion_head"], EXPLAIN_SPEC, raw / f"{EXPLAIN_GRAPH}.onnx", options.opset)


def _copy_preprocessing(ckpt, out: Path) -> None:
    """The tokenizer (truncation = max_seq_len, padding = longest) and the image processor config."""
    from fusionrt.model.checkpoint import TOKENIZER_FILES

    tok_dir = out / TOKENIZER_DIR
    ckpt.tokenizer.save(tok_dir)
    for extra in TOKENIZER_FILES[1:]:
        if (ckpt.path / extra).is_file():
            shutil.copyfile(ckpt.path / extra, tok_dir / extra)
    config = ckpt.image_processor.to_dict()
    # where the image encoder's cells look (fusionrt.explanation.ImageGeometry: the heat map)
    config[RECEPTIVE_FIELD_KEY] = ckpt.model.image_family.receptive_field_shift
    (out / PREPROCESSOR_CONFIG).write_text(json.dumps(config, indent=2))


def _write_manifest(out: Path, ckpt, plan: dict, recipe: dict, validation, options: ExportOptions, seconds: float) -> None:
    import onnx

    first = onnx.load(str(out / "text_encoder.onnx"), load_external_data=False)
    write_manifest(out, Manifest(
        precision=plan,
        target=join_components(parse_target(options.target)),
        runtimes={name: TARGETS[t].runtime for name, t in parse_target(options.target).items()},
        exporter="torch.onnx (TorchScript)",
        opset=options.opset,
        ir_version=int(first.ir_version),
        graphs={name: GraphInfo.from_dict({**describe_graph(out / f"{name}.onnx"), "recipe": recipe[name]}) for name in GRAPHS},
        explain=GraphInfo.from_dict({**describe_graph(out / f"{EXPLAIN_GRAPH}.onnx"), "recipe": {"fusion": None, "precision": "fp32"}}),
        max_batch_size=options.max_batch_size,
        max_seq_len=ckpt.config.max_seq_len,
        labels=ckpt.config.labels,
        preprocessor=ckpt.image_processor.to_dict(),
        validation=validation,
        export_options=asdict(options),
        export_seconds=round(seconds, 1),
        versions=_versions(),
        # The exporting machine: INT8 defaults (reduce_range) follow its features.
        cpu=cpu_info().to_dict(),
    ))


def _gate_region_agreement(bundle_dir: Path, validation, options: ExportOptions) -> None:
    """``options.gate_region_agreement``: raise when the validation's region agreement is below
    ``options.min_region_agreement`` (nothing measured: nothing gated)."""
    measured = validation.region_agreement
    if options.gate_region_agreement and measured is not None and measured < options.min_region_agreement:
        raise ExportValidationError(
            f"exported graphs in {bundle_dir}: the explanations' top region is PyTorch FP32's on fewer items than "
            "--min-region-agreement; nothing was written",
            [f"top image region (Grad-CAM) as PyTorch FP32's on {measured:.2%} of {validation.eval_data} "
             f"(95% Wilson interval {validation.region_agreement_ci95[0]:.2%}-{validation.region_agreement_ci95[1]:.2%}) "
             f"< --min-region-agreement {options.min_region_agreement:g}"],
        )


def _decide_float_front(raw: Path, out: Path, ckpt, plan: dict, recipe: dict, validation, options: ExportOptions, say, progress: bool):
    """``ExportOptions.image_float_front=None``: when the bundle's static INT8 image encoder has
    depthwise convolutions (a float front exists) and the explanations' top region agrees with
    PyTorch FP32's on fewer than ``min_region_agreement`` of the evaluation examples, quantize the
    image encoder again with its front float (into ``out``, from the traced graphs in ``raw``) and
    validate again; the float front is kept only if it reaches ``min_region_agreement`` (else the
    faster all-INT8 graph stays). Records the decision in ``recipe`` (``image_encoder.int8.float_front``).

    Returns:
        The validation of the bundle as it now is (a float front that fails validation is not
        kept either: the all-INT8 graph, which passed, stays).
    """
    import onnx

    from fusionrt.export import rounding
    from fusionrt.export.validate import validate_bundle_graphs

    int8 = recipe["image_encoder"].get("int8")
    measured = validation.region_agreement
    if options.image_float_front is not None or not isinstance(int8, dict) or int8.get("mode") != "static" or measured is None:
        return validation
    if not rounding.has_depthwise(onnx.load(str(raw / "image_encoder.onnx"), load_external_data=False)):
        return validation
    floor = options.min_region_agreement
    if floor <= 0:
        return validation  # no floor asked for: nothing decided
    if measured >= floor:
        int8["float_front"] = f"not needed: top region agreement {measured:.1%} >= --min-region-agreement {floor:g} with every conv INT8"
        return validation
    say(f"image_encoder: the explanations' top region agrees with PyTorch FP32 on {measured:.1%} of the evaluation data "
        f"(< --min-region-agreement {floor:g}): quantizing it again with its front float")
    graph = out / "image_encoder.onnx"
    kept = graph.with_name("image_encoder.all-int8.onnx")
    graph.rename(kept)
    again = _optimize(raw, out, ckpt, plan, replace(options, image_float_front=True), say, only=("image_encoder",))
    why = f"top region agreement {measured:.1%} with every conv INT8 < --min-region-agreement {floor:g}; "
    try:
        floated = validate_bundle_graphs(out, ckpt, {name: out / f"{name}.onnx" for name in GRAPHS}, options, progress=progress)
    except ExportValidationError as exc:
        first = (exc.failures or [str(exc)])[0]
        say(f"image_encoder: with its front float the bundle fails validation ({first}): every conv stays INT8")
        kept.replace(graph)
        int8["float_front"] = why + f"the front float failed validation ({first}): not kept"
        return validation
    why += f"{floated.region_agreement:.1%} with the front float"
    if floated.region_agreement >= floor:
        kept.unlink()
        recipe["image_encoder"] = again["image_encoder"]
        recipe["image_encoder"]["int8"]["float_front"] = why
        return floated
    say(f"image_encoder: {floated.region_agreement:.1%} with its front float, still below: every conv stays INT8 (the faster)")
    kept.replace(graph)
    int8["float_front"] = why + ", also below: not kept"
    return validation


def _optimize(raw: Path, out: Path, ckpt, plan: dict, options: ExportOptions, say=lambda message: None,
              only: tuple[str, ...] = GRAPHS) -> dict:
    """Fuse, then convert precision, as ``recipes`` says for the target; writes ``out/<graph>.onnx``
    for each graph of ``only`` (INT8 calibration still runs every graph).

    Returns:
        The recipe per graph of ``only`` (for the manifest).
    """
    from fusionrt.export import passes

    targets = parse_target(options.target)
    target = graph_recipe(targets)
    work = out / "work"
    work.mkdir()
    current = {name: raw / f"{name}.onnx" for name in GRAPHS}
    recipe: dict = {name: {"fusion": None, "precision": plan[name]} for name in only}
    if options.pixel_dtype == "uint8" and "image_encoder" in only:  # before every precision pass: each gets the folded stem
        folded = work / "image_encoder.folded.onnx"
        recipe["image_encoder"] |= passes.fold_pixel_normalization(current["image_encoder"], folded)
        current["image_encoder"] = folded
    model = ckpt.model
    encoders = {"text_encoder": (model.text_family, ckpt.config.text_config),
                "image_encoder": (model.image_family, ckpt.config.image_config)}
    fused = {name: enc for name, enc in encoders.items() if enc[0].optimizer_model_type is not None and name in only}
    # Attention ops each fused graph must hold: the family row's count, one in the head.
    blocks = {name: row.fused_attention(cfg) for name, (row, cfg) in fused.items()} | ({"fusion_head": 1} if "fusion_head" in only else {})
    if target.fuse:
        if blocks:
            say("fusing attention, LayerNorm and GELU (ONNX Runtime transformer optimizer)")
        for name, (row, cfg) in fused.items():
            heads, hidden = _attention_shape(cfg)
            recipe[name]["fusion"] = passes.fuse_text_encoder(
                current[name], work / f"{name}.fused.onnx", heads, hidden, target.gelu_approximation, row.optimizer_model_type,
            )
            current[name] = work / f"{name}.fused.onnx"
        if "fusion_head" in only:
            recipe["fusion_head"]["fusion"] = {"cross_attention": "com.microsoft.MultiHeadAttention"}
        for name in blocks:
            passes.check_attention_fused(name, current[name], blocks[name])
    else:
        for name in blocks:
            recipe[name]["fusion"] = "left to TensorRT"

    vit = ckpt.model.image_family.optimizer_model_type is not None  # an image transformer
    steps = {name: precision_step(targets[name], name, plan[name], transformer=vit and name == "image_encoder") for name in only}
    needs_calibration = any(step.kind == "int8-static" for step in steps.values())
    if needs_calibration:
        say(f"calibrating INT8 activation ranges ({options.calibration_method})")
    feeds = _calibration_feeds(ckpt, current, options) if needs_calibration else None
    for name, step in steps.items():
        src, dst = current[name], out / f"{name}.onnx"
        if step.kind not in PRECISION_PASSES:
            raise FusionrtInternalError(f"recipe step {step.kind!r} of {name} has no pass")
        if step.kind in _STEP_WORDS:
            say(f"{name}: {_STEP_WORDS[step.kind]}")
        done = PRECISION_PASSES[step.kind](_PassContext(src, dst, step, feeds, options, TARGETS[targets[name]].runtime))
        recipe[name].update(done)
        if target.fuse and name in blocks:
            passes.check_attention_fused(name, dst, blocks[name])
    shutil.rmtree(work)
    return recipe


def _attention_shape(config: dict) -> tuple[int, int]:
    """``(num_heads, hidden_size)`` of a transformers config dict (DistilBERT's ``n_heads``/``dim``
    through transformers' attribute map)."""
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(config.get("model_type") or "bert", **{k: v for k, v in config.items() if k != "model_type"})
    return int(cfg.num_attention_heads), int(cfg.hidden_size)


@dataclass(frozen=True)
class _PassContext:
    """What a precision pass gets: the graph file to read (``src``) and to write (``dst``), its
    recipe step, the INT8 calibration feeds (``None`` when no graph needs them), the export
    options and the runtime the graph is made for."""

    src: Path
    dst: Path
    step: object
    feeds: list | None
    options: "ExportOptions"
    runtime: str


def _copy(c: _PassContext) -> dict:
    shutil.copyfile(c.src, c.dst)
    return {}


def _fp16(c: _PassContext) -> dict:
    from fusionrt.export import passes

    return {"fp16": passes.to_fp16(c.src, c.dst)}


def _fp16_builder(c: _PassContext) -> dict:
    shutil.copyfile(c.src, c.dst)
    return {"fp16": "TensorRT builder flag (graph stays float32)"}


def _bf16_runtime(c: _PassContext) -> dict:
    shutil.copyfile(c.src, c.dst)
    return {"bf16": f"{c.runtime} inference precision (graph stays float32)"}


def _int8_static(c: _PassContext) -> dict:
    from fusionrt.export import passes

    ops = list(c.step.op_types) if c.step.op_types else None
    int8 = passes.quantize_static_int8(c.src, c.dst, c.feeds, c.options.calibration_method, c.options.resolved_reduce_range,
                                       op_types=ops, image=c.step.image, symmetric=c.step.symmetric,
                                       float_front=c.step.image and bool(c.options.image_float_front))
    return {"int8": {**int8, "calibration_samples": sum(len(f["input_ids"]) for f in c.feeds)}}


def _int8_dynamic(c: _PassContext) -> dict:
    from fusionrt.export import passes

    return {"int8": passes.quantize_dynamic_int8(c.src, c.dst, c.options.resolved_reduce_range)}


# Recipe step kind (recipes.precision_step) -> the pass that writes the graph at that precision;
# each returns what it adds to the graph's recipe in the manifest.
PRECISION_PASSES = {
    "copy": _copy,
    "fp16": _fp16,
    "fp16-builder": _fp16_builder,
    "bf16-runtime": _bf16_runtime,
    "int8-static": _int8_static,
    "int8-dynamic": _int8_dynamic,
}

MIN_CALIBRATION_SAMPLES = 100
_STEP_WORDS = {"fp16": "converting to float16", "int8-static": "quantizing to static INT8 (QDQ)",
               "int8-dynamic": "quantizing to dynamic INT8"}


def _calibration_feeds(ckpt, graphs: dict, options: ExportOptions, batch_size: int = 8) -> list[dict]:
    """Batches of every tensor the graphs see (bundle inputs and intermediate features), from
    paired text+image calibration data run through the FP32 graphs. Text is padded to
    ``max_seq_len`` so the calibrated ranges include padded positions as served by Triton."""
    from fusionrt.engine.loaders import ort_session
    from fusionrt.engine.session import GraphChain, SessionOptions
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
    chain = GraphChain({n: ort_session(p, SessionOptions()) for n, p in graphs.items()})
    feeds = []
    for start in range(0, len(examples), batch_size):
        part = examples[start : start + batch_size]
        feed, _ = ckpt.tokenizer([ex.text for ex in part], pad_to=ckpt.config.max_seq_len)
        feed["pixel_values"] = ckpt.image_processor.pixels([ex.image for ex in part], options.pixel_dtype, default_decode_threads())
        feeds.append(chain.run(feed))
    return feeds
