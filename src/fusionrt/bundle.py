"""The bundle: the contract between export and everything downstream (engine, Triton, bench).

A bundle is one directory holding ``manifest.json``, three ONNX graphs, ``tokenizer/`` and
``preprocessor_config.json`` (docs/export.md, "The bundle"). This module reads and verifies it without
torch or onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from fusionrt.errors import BundleError, InputError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
TOKENIZER_DIR = "tokenizer"

# Execution order; each graph's inputs are bundle inputs or outputs of earlier graphs.
GRAPHS = ("text_encoder", "image_encoder", "fusion_head")
# Component names of --precision text=P,image=P,head=P -> graph names.
COMPONENTS = {"text": "text_encoder", "image": "image_encoder", "head": "fusion_head"}
# Runtimes a graph is made for (``manifest.runtimes``): the OpenVINO target's graphs run on
# OpenVINO, every other target's on ONNX Runtime.
RUNTIMES = ("onnxruntime", "openvino")
BUNDLE_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
# The optional explanation graph (``manifest.explain``): the fusion head, unfused, in float32, with
# its attention probabilities and contributions as outputs; predict never runs it.
EXPLAIN_GRAPH = "fusion_head_explain"
EXPLAIN_INPUTS = ("text_features", "attention_mask", "image_features")
EXPLAIN_OUTPUTS = ("logits", "modality_weights", "cross_attention", "token_contributions", "region_contributions", "region_grad_cam")
# Manifest keys every reader relies on (besides format_version and graphs).
REQUIRED_KEYS = ("labels", "max_seq_len", "max_batch_size", "precision")
# A graph's precision in the bundle (``manifest.precision``; what --precision takes per component).
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8-dynamic")
# What --target names (``manifest.target``, one word or per component); each one's recipe is a row of
# fusionrt.export.recipes.TARGETS.
TARGET_NAMES = ("cpu", "cuda", "tensorrt", "openvino")

# The types and ranges of what fusionrt reads from manifest.json and preprocessor_config.json
# (JSON Schema 2020-12, checked with the jsonschema library by read_manifest and Bundle.load);
# keys fusionrt does not know are allowed (Manifest.extra keeps them).
_TENSOR_SCHEMA = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string"}, "dtype": {"type": "string"},
    "shape": {"type": "array", "items": {"type": ["integer", "string"]}}}}
_GRAPH_SCHEMA = {"type": "object", "required": ["file"], "properties": {
    "file": {"type": "string", "minLength": 1},
    "sha256": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
    "inputs": {"type": "array", "items": _TENSOR_SCHEMA}, "outputs": {"type": "array", "items": _TENSOR_SCHEMA}}}
MANIFEST_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["format_version", *REQUIRED_KEYS, "graphs"],
    "properties": {
        "labels": {"type": "array", "minItems": 2, "uniqueItems": True, "items": {"type": "string", "minLength": 1}},
        "max_seq_len": {"type": "integer", "minimum": 1},
        "max_batch_size": {"type": "integer", "minimum": 1},
        "precision": {"type": "object", "required": list(GRAPHS), "properties": {g: {"enum": list(PRECISIONS)} for g in GRAPHS}},
        "graphs": {"type": "object", "required": list(GRAPHS), "additionalProperties": False,
                   "properties": {g: _GRAPH_SCHEMA for g in GRAPHS}},
        "explain": {"anyOf": [{"type": "null"}, _GRAPH_SCHEMA]},
        "target": {"type": "string", "minLength": 1},
        "runtimes": {"type": ["object", "null"], "additionalProperties": {"enum": list(RUNTIMES)}},
        "preprocessor": {"type": ["object", "null"]},
    },
}
_SIDE = {"type": "integer", "minimum": 1}
PREPROCESSOR_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        **{k: {"type": "boolean"} for k in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "jpeg_draft", "crop_resample")},
        "size": {"type": "object", "properties": {"shortest_edge": _SIDE, "height": _SIDE, "width": _SIDE},
                 "anyOf": [{"required": ["shortest_edge"]}, {"required": ["height", "width"]}]},
        "crop_size": {"type": "object", "required": ["height", "width"], "properties": {"height": _SIDE, "width": _SIDE}},
        "resample": {"enum": [0, 1, 2, 3, 4, 5]},  # PIL's NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING
        "rescale_factor": {"type": "number", "exclusiveMinimum": 0},
        "image_mean": {"type": "array", "minItems": 3, "maxItems": 3, "items": {"type": "number"}},
        "image_std": {"type": "array", "minItems": 3, "maxItems": 3, "items": {"type": "number", "exclusiveMinimum": 0}},
        "fusionrt_receptive_field_shift": {"enum": [-1, 0, 1]},
    },
}


def schema_problem(data: Any, schema: dict) -> str | None:
    """The most relevant way ``data`` breaks ``schema`` (``"$.max_batch_size: 0 is less than the minimum of 1"``),
    or ``None`` when it conforms (jsonschema's ``best_match``)."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    error = best_match(Draft202012Validator(schema).iter_errors(data))
    return None if error is None else f"{error.json_path}: {error.message}"


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks of ``chunk_bytes``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


class _Record:
    """A manifest record: a frozen dataclass read from JSON with :meth:`from_dict` and written back
    with :meth:`to_dict`. Adding a key to the format is adding a field (with a default, so older
    manifests still load); keys this fusionrt does not know are kept in ``extra`` and written
    back, so a newer bundle's fields survive a rewrite by an older fusionrt."""

    extra: dict

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Raises:
        BundleError: ``data`` is not a JSON object.
        """
        if not isinstance(data, Mapping):
            raise BundleError(f"{cls.__name__} in {MANIFEST} must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: cls._convert(k, v) for k, v in data.items() if k in known}
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def _convert(cls, key: str, value: Any) -> Any:
        """A JSON value -> the field's type (nested records); the identity by default."""
        return value

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name != "extra":
                value = getattr(self, f.name)
                out[f.name] = _plain(value)
        return {**out, **self.extra}


def _plain(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class TensorInfo(_Record):
    """One graph input or output: ``name``, ``dtype`` (NumPy's name, ``"int64"``) and ``shape``
    (ints, and strings for symbolic axes: ``["batch", "sequence"]``)."""

    name: str = ""
    dtype: str = "float32"
    shape: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GraphInfo(_Record):
    """One graph of the bundle (``manifest.graphs[name]``).

    Attributes:
        file: the ONNX file, relative to the bundle.
        sha256: its hex SHA-256 (checked by :meth:`Bundle.load`).
        inputs / outputs: the graph's tensors.
        fused_ops: op type -> count of ONNX Runtime fused ops in the graph.
        recipe: what the exporter did to it (passes, precision), as it recorded.
    """

    file: str = ""
    sha256: str | None = None
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()
    fused_ops: dict = field(default_factory=dict)
    recipe: dict | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def _convert(cls, key, value):
        if key in ("inputs", "outputs"):
            return tuple(TensorInfo.from_dict(t) for t in value)
        return value

    def input(self, name: str) -> TensorInfo:
        """The input tensor called ``name``.

        Raises:
            BundleError: the graph has no such input.
        """
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        raise BundleError(f"{MANIFEST}: graph {self.file} has no input {name!r} (it has {[t.name for t in self.inputs]})")


@dataclass(frozen=True)
class Validation(_Record):
    """The export's validation report (``manifest.validation``): the bundle's graphs against the
    PyTorch FP32 model on the same inputs (docs/export.md, "Validation").

    Attributes:
        reference: what the graphs were compared with (``"pytorch-fp32"``).
        runtime / provider / placements: where the checks ran (the target's runtime; placements
            described for people, graph -> text).
        num_samples: samples compared.
        max_abs_error: largest absolute logit difference; ``max_abs_error_per_output`` per output
            name; ``max_abs_error_eval_data`` on the evaluation data only.
        mean_abs_error / cosine: mean absolute difference and mean cosine similarity of the logits.
        top1_agreement: share of samples with the same top label, with ``top1_agreement_ci95`` (95%
            Wilson interval), on ``agreement_data`` (``"eval_data"`` or ``"random inputs"``) of
            ``agreement_num_samples`` samples.
        eval_num_samples / eval_data: the evaluation data's size and file.
        accuracy / reference_accuracy (with ``*_ci95``): top-1 accuracy of the graphs and of
            PyTorch on the evaluation data; ``accuracy_delta`` their difference in points.
        tolerance / random_input_tolerance: the absolute error bounds checked, per output.
        max_accuracy_drop / min_agreement: the accuracy gates applied.
        encoder_reference: the encoder graphs against the transformers models their configs name
            (``traced``, and ``bundle`` for FP32 ONNX Runtime graphs): per graph the reference
            class, ``max_error`` and ``tolerance`` (:mod:`fusionrt.export.encoder_check`).
        per_source: per data source of the evaluation data (``synthetic``, ``photographs``,
            ``camera-size``): ``num_samples``, ``top1_agreement``, ``accuracy`` and
            ``reference_accuracy``, each with its ``*_ci95`` Wilson interval.
        agreement_gate: what was compared with ``min_agreement`` per gated group (the 95% Wilson
            lower bound, or the point estimate where a small eval set was accepted).
        region_agreement: share of the evaluation examples whose most relevant image region
            (Grad-CAM, the explanation graph's ``region_grad_cam``, on the bundle's encoder outputs)
            is the one PyTorch FP32 gives (``FusionHead.explain`` on its own encoders' outputs),
            with ``region_agreement_ci95`` (95% Wilson interval); ``None`` without evaluation data
            or explanation graph. ``min_region_agreement``: what an INT8 image encoder's float
            front was decided against (``ExportOptions.min_region_agreement``).
    """

    reference: str = "pytorch-fp32"
    runtime: str | None = None
    provider: str | None = None
    placements: dict = field(default_factory=dict)
    num_samples: int = 0
    max_abs_error: float = 0.0
    max_abs_error_per_output: dict = field(default_factory=dict)
    max_abs_error_eval_data: dict | None = None
    mean_abs_error: float | None = None
    cosine: float | None = None
    top1_agreement: float | None = None
    top1_agreement_ci95: list | None = None
    agreement_data: str | None = None
    agreement_num_samples: int | None = None
    eval_num_samples: int | None = None
    accuracy: float | None = None
    accuracy_ci95: list | None = None
    reference_accuracy: float | None = None
    reference_accuracy_ci95: list | None = None
    accuracy_delta: float | None = None
    tolerance: Any = None
    random_input_tolerance: Any = None
    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    eval_data: str | None = None
    encoder_reference: dict | None = None
    per_source: dict | None = None
    agreement_gate: dict | None = None
    region_agreement: float | None = None
    region_agreement_ci95: list | None = None
    min_region_agreement: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest(_Record):
    """``manifest.json``, typed (``format_version`` 1; docs/export.md, "The bundle").

    Attributes:
        precision: graph -> its precision (``fp32``, ``fp16``, ``bf16``, ``int8``, ``int8-dynamic``).
        target: the ``--target`` it was exported with (one word or per component).
        runtimes: graph -> the runtime it was made and validated for (see :attr:`Bundle.runtimes`).
        graphs: graph -> :class:`GraphInfo`, for each of ``GRAPHS``.
        explain: the explanation graph (``fusion_head_explain.onnx``, float32; ``None``: a bundle
            exported before fusionrt wrote one), run by ``explain`` only.
        max_batch_size / max_seq_len: the largest batch and text length the bundle serves.
        labels: class names, in logit order.
        validation: the :class:`Validation` report (``None``: exported without validation).
        precision_search: ``--precision auto``'s search, when it chose the recipe.
        exporter / opset / ir_version / preprocessor / export_options / export_seconds /
        versions / cpu: what made the bundle, recorded for people and for rebuilds.

    Raises (from :meth:`from_dict`):
        BundleError: a required key (``REQUIRED_KEYS``) or a graph is missing.
    """

    labels: list = field(default_factory=list)
    max_seq_len: int = 0
    max_batch_size: int = 0
    precision: dict = field(default_factory=dict)
    graphs: dict = field(default_factory=dict)
    explain: GraphInfo | None = None
    target: str = "cpu"
    runtimes: dict | None = None
    exporter: str | None = None
    opset: int | None = None
    ir_version: int | None = None
    preprocessor: dict | None = None
    validation: Validation | None = None
    precision_search: dict | None = None
    export_options: dict | None = None
    export_seconds: float | None = None
    versions: dict | None = None
    cpu: dict | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        if isinstance(data, Mapping):
            missing = [k for k in REQUIRED_KEYS if k not in data]
            if missing:
                raise BundleError(f"{MANIFEST} lacks required key {missing[0]!r}")
            graphs = data.get("graphs")
            if not isinstance(graphs, Mapping) or set(graphs) != set(GRAPHS):
                got = sorted(graphs) if isinstance(graphs, Mapping) else graphs
                raise BundleError(f"{MANIFEST}: 'graphs' must describe {list(GRAPHS)}, got {got}")
            data = {k: v for k, v in data.items() if k != "format_version"}
        return super().from_dict(data)

    @classmethod
    def _convert(cls, key, value):
        if key == "graphs":
            return {name: GraphInfo.from_dict(entry) for name, entry in value.items()}
        if key == "explain" and value is not None:
            return GraphInfo.from_dict(value)
        if key == "validation" and value is not None:
            return Validation.from_dict(value)
        return value

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, ``format_version`` first."""
        return {"format_version": FORMAT_VERSION, **super().to_dict()}


def write_manifest(directory: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``directory/manifest.json`` with this ``FORMAT_VERSION``: the writer side of
    :meth:`Bundle.load`.

    Returns:
        The manifest's path.

    Raises:
        FusionrtInternalError: a required key or graph is missing (a bug in the exporter).
    """
    from fusionrt.errors import FusionrtInternalError

    if not manifest.labels or not manifest.precision or set(manifest.graphs) != set(GRAPHS):
        raise FusionrtInternalError(f"manifest lacks labels, precision or one of the graphs {list(GRAPHS)}")
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps(manifest.to_dict(), indent=2))
    return path


def read_manifest(directory: str | os.PathLike) -> Manifest:
    """``directory/manifest.json``, parsed and checked (not the graph files: see :meth:`Bundle.load`).

    Raises:
        BundleError: the file is missing, not JSON, of another ``format_version``, or lacks a
            required key or graph (the message names the file).
    """
    root = Path(directory)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path} is missing: {root} is not a fusionrt bundle (run `fusionrt export`)")
    try:
        data = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{manifest_path} must hold a JSON object")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path} has format_version {version!r}; this fusionrt reads format_version "
            f"{FORMAT_VERSION}. Re-export the bundle with this fusionrt version"
        )
    try:
        manifest = Manifest.from_dict(data)  # names a missing key or graph first, as before
    except BundleError as exc:
        raise BundleError(str(exc).replace(MANIFEST, str(manifest_path), 1)) from None
    except (TypeError, AttributeError, ValueError) as exc:
        raise BundleError(f"{manifest_path} has a malformed entry: {exc}") from None
    problem = schema_problem(data, MANIFEST_SCHEMA) or _manifest_problem(manifest)
    if problem:
        raise BundleError(f"{manifest_path} {problem}; re-export the bundle (or undo the edit)")
    return manifest


def _manifest_problem(manifest: Manifest) -> str | None:
    """What the schema cannot say: graph files outside the bundle, labels that are not the head's
    logits, targets fusionrt does not know."""
    from pathlib import PurePosixPath, PureWindowsPath

    entries = [(f"graphs.{g}", manifest.graphs[g]) for g in GRAPHS] + ([("explain", manifest.explain)] if manifest.explain else [])
    for key, entry in entries:
        path = PurePosixPath(entry.file)
        if path.is_absolute() or PureWindowsPath(entry.file).is_absolute() or ".." in path.parts or "\\" in entry.file:
            return f"$.{key}.file: {entry.file!r} is not a file inside the bundle (a relative path without '..')"
    head = next((t for t in manifest.graphs["fusion_head"].outputs if t.name == "logits"), None)
    classes = head.shape[-1] if head is not None and head.shape else None
    if isinstance(classes, int) and classes != len(manifest.labels):
        return (f"$.labels: {len(manifest.labels)} labels, but the fusion head's logits have {classes} classes "
                "(graphs.fusion_head.outputs): one label per logit, in logit order")
    try:
        unknown = sorted({t for t in split_components(manifest.target, "target").values() if t not in TARGET_NAMES})
    except InputError as exc:
        return f"$.target: {exc}"
    if unknown:
        return f"$.target: {unknown[0]!r} is not one of {list(TARGET_NAMES)}"
    return None


@dataclass(frozen=True)
class Bundle:
    """A verified bundle directory.

    Attributes:
        path: the bundle directory.
        manifest: its :class:`Manifest`.
    """

    path: Path
    manifest: Manifest

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "Bundle":
        """Read and check a bundle.

        Args:
            path: the bundle directory.
            verify: also check every graph file's sha256 against the manifest.

        Raises:
            BundleError: the directory, the manifest, a graph, the tokenizer or the preprocessor
                config is missing or corrupt, or ``format_version`` is unknown. The message names
                the file.
        """
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"bundle directory not found: {root}")
        manifest = read_manifest(root)
        manifest_path = root / MANIFEST
        explain = [(EXPLAIN_GRAPH, manifest.explain)] if manifest.explain is not None else []
        for name, entry in [(g, manifest.graphs[g]) for g in GRAPHS] + explain:
            file = root / entry.file
            if not entry.file or not file.is_file():
                raise BundleError(f"bundle graph {name!r} file missing: {file}")
            if verify:
                actual = sha256_file(file)
                if actual != entry.sha256:
                    raise BundleError(
                        f"bundle graph file {file} does not match its sha256 in {manifest_path} "
                        f"(manifest {entry.sha256}, file {actual}): the file was modified or "
                        "truncated; re-export the bundle"
                    )
        if not (root / TOKENIZER_DIR / "tokenizer.json").is_file():
            raise BundleError(f"bundle tokenizer missing: {root / TOKENIZER_DIR / 'tokenizer.json'}")
        if not (root / PREPROCESSOR_CONFIG).is_file():
            raise BundleError(f"bundle preprocessor config missing: {root / PREPROCESSOR_CONFIG}")
        bundle = cls(root, manifest)
        problem = schema_problem(bundle.preprocessor_config(), PREPROCESSOR_SCHEMA)
        if problem:  # found at load, not as every item's error (or a whole batch's) at run time
            raise BundleError(f"{root / PREPROCESSOR_CONFIG} {problem}; re-export the bundle (or undo the edit)")
        return bundle

    @property
    def pixel_hw(self) -> tuple[int, int]:
        """``(H, W)`` of the images the image encoder takes (from :attr:`pixel_input`)."""
        dtype, shape = self.pixel_input
        return (shape[0], shape[1]) if dtype == "uint8" else (shape[1], shape[2])  # (H, W, 3) or (3, H, W)

    def graph_path(self, name: str) -> Path:
        return self.path / self.manifest.graphs[name].file

    @property
    def explain_path(self) -> Path | None:
        """The explanation graph's file (``fusion_head_explain.onnx``), or ``None`` for a bundle
        exported before fusionrt wrote one."""
        return self.path / self.manifest.explain.file if self.manifest.explain is not None else None

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels)

    @property
    def max_seq_len(self) -> int:
        return int(self.manifest.max_seq_len)

    @property
    def text_inputs(self) -> tuple[str, ...]:
        """The text encoder graph's inputs (``input_ids``, ``attention_mask`` and, unless its family
        takes none, ``token_type_ids``): what the tokenizer, the Engine and Triton feed it."""
        return tuple(t.name for t in self.manifest.graphs["text_encoder"].inputs)

    @property
    def inputs(self) -> tuple[str, ...]:
        """Every bundle input: :attr:`text_inputs` then ``pixel_values``."""
        return self.text_inputs + ("pixel_values",)

    @property
    def max_batch_size(self) -> int:
        return int(self.manifest.max_batch_size)

    @property
    def precision(self) -> dict[str, str]:
        return dict(self.manifest.precision)

    @property
    def target(self) -> str:
        """The ``--target`` it was exported with: one name (``cpu``) or per component
        (``text=openvino,image=openvino,head=cpu``)."""
        return str(self.manifest.target)

    @property
    def targets(self) -> dict[str, str]:
        """Graph -> the target it was made for (see :func:`split_components`)."""
        return split_components(self.target, "target")

    @property
    def runtimes(self) -> dict[str, str]:
        """Graph -> the runtime it was made and validated for: ``onnxruntime`` or ``openvino``."""
        recorded = self.manifest.runtimes
        if isinstance(recorded, dict) and set(recorded) == set(GRAPHS) and set(recorded.values()) <= set(RUNTIMES):
            return {g: str(recorded[g]) for g in GRAPHS}
        return {g: "openvino" if t == "openvino" else "onnxruntime" for g, t in self.targets.items()}

    @property
    def pixel_input(self) -> tuple[str, tuple[int, ...]]:
        """What the image encoder takes as ``pixel_values`` (its input in the manifest):
        ``("uint8", (H, W, 3))``, raw pixels the graph normalizes, or ``("float32", (3, H, W))``,
        normalized ones (bundles made before uint8 pixels, or exported with ``--pixels float32``).
        The shape is one image's: the batch axis is left out.

        Raises:
            BundleError: the image encoder has no ``pixel_values`` input of a known dtype and
                fixed size.
        """
        entry = self.manifest.graphs["image_encoder"].input("pixel_values")
        dtype, shape = str(entry.dtype), list(entry.shape)[1:]
        expected = {"float32": "(batch, 3, H, W)", "uint8": "(batch, H, W, 3)"}
        channels = shape[:1] if dtype == "float32" else shape[-1:]
        if dtype not in expected or len(shape) != 3 or not all(isinstance(d, int) for d in shape) or channels != [3]:
            raise BundleError(
                f"{self.path / MANIFEST}: graphs.image_encoder pixel_values is {dtype} {entry.shape}; fusionrt reads "
                f"float32 {expected['float32']} or uint8 {expected['uint8']} with fixed H and W; re-export the bundle"
            )
        return dtype, tuple(int(d) for d in shape)

    def preprocessor_config(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / PREPROCESSOR_CONFIG).read_text())
        except json.JSONDecodeError as exc:
            raise BundleError(f"{self.path / PREPROCESSOR_CONFIG} is not valid JSON: {exc}") from None


def split_components(spec: str, what: str, default: str | None = None) -> dict[str, str]:
    """``"cpu"`` -> that value for every graph; ``"text=a,image=b,head=c"`` -> graph -> value.

    Args:
        spec: one word, or ``component=value`` pairs (components ``text``, ``image``, ``head``).
        what: the option's name, for error messages (``precision``, ``target``).
        default: the value of components a per-component spec omits (``None``: all required).

    Raises:
        InputError: an unknown, repeated or missing component, or an empty value.
    """
    spec = spec.strip()
    if "=" not in spec:
        if not spec:
            raise InputError(f"--{what} is empty")
        return {g: spec for g in GRAPHS}
    out: dict[str, str] = {}
    for part in spec.split(","):
        component, _, value = part.partition("=")
        component, value = component.strip(), value.strip()
        if component not in COMPONENTS:
            raise InputError(f"--{what} component {component!r} is not one of {list(COMPONENTS)}")
        if not value:
            raise InputError(f"--{what} {component}= has no value")
        if COMPONENTS[component] in out:  # the later one silently won
            raise InputError(f"--{what} {spec!r} names {component} twice; give each component once")
        out[COMPONENTS[component]] = value
    missing = [c for c, g in COMPONENTS.items() if g not in out]
    if missing and default is None:
        raise InputError(f"--{what} {spec!r} lacks {missing}: give every component, or one word for all")
    return {g: out.get(g, default) for g in GRAPHS}


def join_components(values: dict[str, str]) -> str:
    """The inverse of :func:`split_components`: one word when every graph has the same value."""
    if len(set(values.values())) == 1:
        return next(iter(values.values()))
    return ",".join(f"{c}={values[g]}" for c, g in COMPONENTS.items())
