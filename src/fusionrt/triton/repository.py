"""Write a Triton model repository from a bundle.

The repository (docs/serving.md, "The repository") holds six models, chained by the bundle's tensor names::

    fusionrt (ensemble)   TEXT, IMAGE (TYPE_STRING, encoded image bytes)
      preprocess          python: tokenize (padded to a length bucket) + decode/resize/normalize
      text_encoder        onnxruntime (or python running onnxruntime): input_ids.. -> text_features
      image_encoder       onnxruntime (or python): pixel_values -> image_features
      fusion_head         onnxruntime (or python): -> logits, modality_weights
      postprocess         python: softmax, label
                          -> PROBABILITIES, LABEL, MODALITY_WEIGHTS, TRUNCATED
      explain             python: the bundle's explanation graph + word/region relevance
                          -> EXPLANATION (JSON), run only for requests that name it

PROBABILITIES carries ``label_filename: "labels.txt"`` (postprocess and ensemble), Triton's
classification extension: a request with ``class_count`` gets ``score:index:label`` strings.

Configs are written by a small deterministic text formatter (no protobuf dependency at build
time): the same bundle and options always give byte-identical files, so ``triton_repo/`` can be
checked by a golden test.
"""

from __future__ import annotations

import json
import numbers
import os
import shutil
import struct
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from fusionrt import __version__
from fusionrt.bundle import EXPLAIN_INPUTS, GRAPHS, PREPROCESSOR_CONFIG, TOKENIZER_DIR, Bundle, TensorInfo
from fusionrt.errors import BundleError, InputError
from fusionrt.explanation import METHODS, resolve_method
from fusionrt.preprocessing import ImageProcessor, check_buckets, default_buckets
from fusionrt.triton.pbtxt import Enum, Msg, write_config
from fusionrt.utils import OutputKind, atomic_directory, check_output_folder, copy_tree

ENSEMBLE = "fusionrt"
PREPROCESS = "preprocess"
POSTPROCESS = "postprocess"
EXPLAIN = "explain"
ENCODERS = GRAPHS  # one Triton model per bundle graph, named as the graph
MODELS = (PREPROCESS,) + ENCODERS + (POSTPROCESS, EXPLAIN, ENSEMBLE)
REQUIREMENTS = "requirements.txt"
# Triton's classification extension: PROBABILITIES names this file (one label per line, in index
# order) in the postprocess and ensemble configs, so a request asking for class_count gets
# "score:index:label" strings.
LABELS_FILE = "labels.txt"
BACKENDS = ("onnxruntime", "python")
DEVICES = ("cpu", "gpu")

# Ensemble inputs and outputs (Triton convention: upper case at the service boundary).
TEXT, IMAGE = "TEXT", "IMAGE"
PROBABILITIES, LABEL, MODALITY_WEIGHTS, TRUNCATED = "PROBABILITIES", "LABEL", "MODALITY_WEIGHTS", "TRUNCATED"
EXPLANATION = "EXPLANATION"

MODEL_SOURCES = Path(__file__).parent / "models"
WARMUP_IMAGE = MODEL_SOURCES / "warmup.jpg"  # 64x64 JPEG of scikit-image's astronaut (NASA, public domain)
WARMUP_TEXT = "what a lovely picture"

# Manifest dtype -> Triton data type.
_TRITON_DTYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8",
}
# Manifest precision -> precision_mode of onnxruntime's TensorRT execution accelerator.
_TRT_PRECISION = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}
# TensorRT builder workspace: 1 GiB, the onnxruntime TensorRT provider's default.
TRT_MAX_WORKSPACE_SIZE_BYTES = 1 << 30


# The batch sizes the dynamic batcher aims for when none are given (those within the max batch size).
DEFAULT_PREFERRED_BATCH_SIZE = (4, 8)


@dataclass(frozen=True)
class RepositoryOptions:
    """Options of :func:`build_repository`.

    Attributes:
        max_batch_size: largest batch Triton forms (``None``: the bundle's ``max_batch_size``).
        preferred_batch_size: batch sizes the dynamic batcher aims for, each <= ``max_batch_size``;
            ``None``: :data:`DEFAULT_PREFERRED_BATCH_SIZE` (4 and 8), those within the max batch
            size (the max itself when neither is).
        max_queue_delay_microseconds: how long a request may wait for others to batch with (us).
            2000 us: a few ms of added latency is small next to the default checkpoint's model
            time on CPU, and it lets concurrent callers be merged.
        instances: model instances (``instance_group.count``) of every model not named in
            ``model_instances``.
        model_instances: per-model instance counts, e.g. ``{"image_encoder": 2}``, over
            ``instances``. ``None``: on ``cpu``, ``image_encoder`` gets ``max(2, instances)``
            (the heaviest step: a second single-threaded instance lets two of its batches run on
            two cores when it is the bottleneck, at less CPU per item than one instance with two
            intra-op threads; docs/performance-notes.md, "Serving"); on ``gpu``, nothing. Stored as sorted ``(model, count)``
            pairs (the options are frozen); read a model's count with :meth:`instance_count`.
        threads_per_instance: ONNX Runtime intra-op threads per encoder instance
            (``intra_op_thread_count``). 1 keeps ``instances`` x 3 encoders from oversubscribing
            small machines; raise it on big ones.
        device: ``cpu`` (KIND_CPU) or ``gpu`` (KIND_GPU encoders; TensorRT accelerator when the
            bundle's target is ``tensorrt`` and the backend is ``onnxruntime``).
        backend: ``onnxruntime`` (Triton's onnxruntime backend) or ``python`` (python-backend
            models running the graphs with the onnxruntime package; for servers without the
            onnxruntime backend, such as the one in the nvidia-pytriton wheel).
        dynamic_batching: give every model a ``dynamic_batching`` block; turning it off (each
            request runs alone) exists to measure what the batcher brings.
        seq_buckets: the text lengths (tokens) preprocess pads to: each request goes to the
            smallest bucket that holds its longest text. Triton's dynamic batcher merges only
            requests of equal shape, so a few buckets keep requests mergeable while short texts
            no longer pay for ``max_seq_len``. ``None``: powers of two from 16, then the bundle's
            ``max_seq_len`` (16, 32, 64, 128); ``(max_seq_len,)`` pads everything to one length.
            The last bucket must equal the bundle's ``max_seq_len``.
        explain_method: the method of the served ``EXPLANATION`` output: ``grad-cam``,
            ``gradient`` or ``rollout`` (:mod:`fusionrt.explanation`); ``None``: ``grad-cam``, or
            ``gradient`` for a bundle exported before its explanation graph had Grad-CAM.
    """

    max_batch_size: int | None = None
    preferred_batch_size: tuple | None = None
    max_queue_delay_microseconds: int = 2000
    instances: int = 1
    model_instances: Mapping[str, int] | tuple | None = None
    threads_per_instance: int = 1
    device: str = "cpu"
    backend: str = "onnxruntime"
    dynamic_batching: bool = True
    seq_buckets: tuple | None = None
    explain_method: str | None = None

    def __post_init__(self):
        if self.explain_method is not None and self.explain_method not in METHODS:
            raise InputError(f"explain_method must be one of {list(METHODS)}, got {self.explain_method!r}")
        for name, minimum in (("max_batch_size", 1), ("max_queue_delay_microseconds", 0), ("instances", 1), ("threads_per_instance", 1)):
            value = getattr(self, name)
            if value is None and name == "max_batch_size":
                continue
            object.__setattr__(self, name, _integer(name, value, minimum))
        if self.preferred_batch_size is not None:  # None: the default, fitted to the bundle in build_repository
            try:
                sizes = tuple(self.preferred_batch_size)
            except TypeError:
                raise InputError(f"preferred_batch_size must be a sequence of batch sizes such as (4, 8), got {self.preferred_batch_size!r}") from None
            object.__setattr__(self, "preferred_batch_size", tuple(_integer("preferred_batch_size", b, 1) for b in sizes))
        if self.seq_buckets is not None:  # the last bucket is checked against the bundle in build_repository
            object.__setattr__(self, "seq_buckets", check_buckets(self.seq_buckets, None))
        if self.device not in DEVICES:
            raise InputError(f"device {self.device!r} is not one of {list(DEVICES)}")
        sizes = self.preferred_batch_size or ()
        if list(sizes) != sorted(set(sizes)):
            raise InputError(f"preferred_batch_size must be distinct increasing sizes >= 1, got {list(self.preferred_batch_size)}")
        if self.max_batch_size is not None and self.preferred_batch_size and self.preferred_batch_size[-1] > self.max_batch_size:
            raise InputError(
                f"preferred_batch_size {list(self.preferred_batch_size)} exceeds max_batch_size {self.max_batch_size}; "
                "lower --preferred-batch-size or raise --max-batch-size"
            )
        if self.model_instances is not None:  # None: the device's default, resolved in instance_count
            object.__setattr__(self, "model_instances", _model_instances(self.model_instances))
        if self.backend not in BACKENDS:
            raise InputError(f"backend {self.backend!r} is not one of {list(BACKENDS)}")

    def instance_count(self, model: str) -> int:
        """``instance_group.count`` of ``model``: its ``model_instances`` entry, else
        ``instances``; with ``model_instances=None`` on ``cpu``, ``max(2, instances)`` for
        ``image_encoder``."""
        if self.model_instances is None:
            per_model = {"image_encoder": max(2, self.instances)} if self.device == "cpu" else {}
        else:
            per_model = dict(self.model_instances)
        return per_model.get(model, self.instances)


def _integer(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (any integer type, not bool), else an InputError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _model_instances(value: Any) -> tuple:
    """Validate per-model instance counts (a mapping or (model, count) pairs) -> sorted pairs."""
    try:
        pairs = list(value.items()) if isinstance(value, Mapping) else [tuple(p) for p in value]
        if any(len(p) != 2 for p in pairs) or isinstance(value, (str, bytes)):
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(f"model_instances must map model names to counts, e.g. {{'image_encoder': 2}}, got {value!r}") from None
    models = [m for m in MODELS if m != ENSEMBLE]
    seen: dict = {}
    for model, count in pairs:
        if model not in models:
            raise InputError(
                f"model_instances names {model!r}; the models with instances are {models} "
                "(Triton rejects instance groups on the ensemble)"
            )
        if model in seen:
            raise InputError(f"model_instances names {model!r} twice")
        seen[model] = _integer(f"model_instances[{model!r}]", count, 1)
    return tuple(sorted(seen.items()))


def build_repository(
    bundle: str | os.PathLike,
    output: str | os.PathLike,
    options: RepositoryOptions | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a Triton model repository serving ``bundle``.

    Args:
        bundle: a bundle directory written by ``fusionrt export``.
        output: the repository directory to write. It is built in a temporary sibling and moved
            into place at the end.
        options: a :class:`RepositoryOptions` (``None``: its defaults), e.g.
            ``build_repository(b, out, RepositoryOptions(backend="python", max_batch_size=8))``.
        overwrite: replace the models and ``requirements.txt`` of an existing repository written
            by fusionrt; other files there (a README) are kept.

    Returns:
        The repository path.

    Raises:
        BundleError: the bundle is missing or corrupt.
        InputError: invalid options, or ``output`` exists and is not replaceable.

    Warns:
        RuntimeWarning: ``output``'s path cannot be served by Triton's python backend
            (:func:`unservable_path_reason`): it is written, to be served from another path.
    """
    options = options or RepositoryOptions()
    b = Bundle.load(bundle)
    if unservable_path_reason(Path(output).absolute()):
        warnings.warn(f"{unservable_path_reason(Path(output).absolute())}: serve a copy of it from another path",
                      RuntimeWarning, stacklevel=2)
    if "openvino" in b.runtimes.values() and options.device == "gpu":
        raise InputError(f"bundle {b.path} was exported for --target {b.target} (OpenVINO graphs run on CPU); build its repository with --device cpu")
    max_batch_size = options.max_batch_size or b.max_batch_size
    if options.preferred_batch_size is None:
        fitted = tuple(n for n in DEFAULT_PREFERRED_BATCH_SIZE if n <= max_batch_size) or (max_batch_size,)
        options = replace(options, preferred_batch_size=fitted)
    if options.preferred_batch_size and options.preferred_batch_size[-1] > max_batch_size:
        raise InputError(
            f"preferred_batch_size {list(options.preferred_batch_size)} exceeds max_batch_size {max_batch_size} "
            f"(the bundle's); lower --preferred-batch-size or raise --max-batch-size"
        )
    buckets = check_buckets(options.seq_buckets, b.max_seq_len) if options.seq_buckets else default_buckets(b.max_seq_len)
    target = Path(output).absolute()
    check_output_folder(target, REPOSITORY_OUTPUT, overwrite, merge=True)
    with atomic_directory(target, REPOSITORY_OUTPUT, overwrite, merge=True) as tmp:  # other models of the repository stay
        _write(b, tmp, options, max_batch_size, buckets)
    return target


def unservable_path_reason(repository: Path) -> str | None:
    """Why Triton's python backend (the ensemble's preprocess and postprocess) cannot load models
    from ``repository``, or ``None``: its stubs take the model path on a command line split at
    whitespace (they abort with ``std::invalid_argument: stol``, tritonserver 2.51), and a path with
    non-ASCII characters fails to encode under a C locale."""
    text = str(repository)
    if any(c.isspace() for c in text) or not text.isascii():
        return (f"Triton's python backend cannot load models from {text!r} (a path with whitespace or "
                "non-ASCII characters: its stubs fail to start)")
    return None


# A repository fusionrt wrote holds its ensemble; --overwrite replaces fusionrt's models, others stay.
REPOSITORY_OUTPUT = OutputKind(f"model repository ({ENSEMBLE}/config.pbtxt)", "-o/--output", InputError,
                               ours=lambda p: (p / ENSEMBLE / "config.pbtxt").is_file())


# --- the models --------------------------------------------------------------------------------------

def _write(b: Bundle, root: Path, options: RepositoryOptions, max_batch_size: int, buckets: tuple) -> None:
    """Every model of the repository, in named steps: preprocess, the encoders, postprocess,
    explain (for a bundle with the explanation graph), the ensemble that chains them, and
    requirements.txt."""
    layout = _layout(b, options, max_batch_size, buckets)
    pre_in, pre_out = _write_preprocess(b, root, layout, buckets)
    for name in ENCODERS:
        _write_encoder(b, root, name, options, layout)
    post_out = _write_postprocess(b, root, layout)
    explain = _write_explain(b, root, pre_in, layout) if b.explain_path is not None else None
    outputs = post_out + [pre_out[-1]] + ([explain] if explain is not None else [])
    write_config(root / ENSEMBLE, _ensemble(max_batch_size, pre_in, outputs, layout.io, b.inputs, explain is not None))
    (root / ENSEMBLE / LABELS_FILE).write_text(_labels_txt(b), encoding="utf-8")
    # Triton needs a version folder for an ensemble too; git keeps no empty folder.
    (root / ENSEMBLE / "1").mkdir()
    (root / ENSEMBLE / "1" / ".gitkeep").write_bytes(b"")
    (root / REQUIREMENTS).write_text(_requirements(options, "openvino" in b.runtimes.values(), explain is not None))


@dataclass(frozen=True)
class _Layout:
    """What the models' configs share: each encoder's tensors (``io``: graph -> inputs/outputs as
    config tensors), every tensor by name, and the fields common to every config."""

    io: dict
    by_name: dict
    common: dict


def _layout(b: Bundle, options: RepositoryOptions, max_batch_size: int, buckets: tuple) -> _Layout:
    graphs = b.manifest.graphs
    io = {
        name: {
            "inputs": [_tensor(t, name) for t in graphs[name].inputs],
            "outputs": [_tensor(t, name) for t in graphs[name].outputs],
        }
        for name in ENCODERS
    }
    by_name = {t["name"]: t for g in io.values() for t in g["inputs"] + g["outputs"]}
    for name in (*b.inputs, "logits", "modality_weights"):
        if name not in by_name:
            raise BundleError(f"{b.path / 'manifest.json'}: no graph has the tensor {name!r}")
    return _Layout(io, by_name, {"max_batch_size": max_batch_size, "options": options, "buckets": buckets})


def _write_preprocess(b: Bundle, root: Path, layout: _Layout, buckets: tuple) -> tuple[list, list]:
    """preprocess: BYTES in, the bundle's inputs out (text padded to a length bucket so requests
    merge; no token_type_ids when the text encoder takes none: RoBERTa, XLM-R, DistilBERT). Returns
    its (inputs, outputs)."""
    pre_out = [layout.by_name[n] for n in b.inputs]
    pre_out.append(_t(TRUNCATED, "TYPE_BOOL", [1]))
    pre_in = [_t(TEXT, "TYPE_STRING", [1]), _t(IMAGE, "TYPE_STRING", [1])]
    folder = root / PREPROCESS
    _python_model(folder, "preprocess.py")
    copy_tree(b.path / TOKENIZER_DIR, folder / "1" / TOKENIZER_DIR)
    shutil.copyfile(b.path / PREPROCESSOR_CONFIG, folder / "1" / PREPROCESSOR_CONFIG)
    (folder / "warmup").mkdir()
    (folder / "warmup" / "TEXT").write_bytes(_serialize_bytes(WARMUP_TEXT.encode()))
    (folder / "warmup" / "IMAGE").write_bytes(_serialize_bytes(WARMUP_IMAGE.read_bytes()))
    parameters = [("max_seq_len", str(b.max_seq_len)), ("seq_buckets", ",".join(map(str, buckets)))]
    write_config(folder, _model_config(PREPROCESS, "python", pre_in, pre_out, kind="KIND_CPU", parameters=parameters, **layout.common))
    return pre_in, pre_out


def _write_encoder(b: Bundle, root: Path, name: str, options: RepositoryOptions, layout: _Layout) -> None:
    """One graph of the bundle as a model: its ONNX file, and the python runner with the python backend."""
    folder = root / name
    (folder / "1").mkdir(parents=True)
    shutil.copyfile(b.graph_path(name), folder / "1" / "model.onnx")
    kind = "KIND_GPU" if options.device == "gpu" else "KIND_CPU"
    parameters = [("intra_op_thread_count", str(options.threads_per_instance))]
    optimization = None
    if options.backend == "python":
        shutil.copyfile(MODEL_SOURCES / "onnx_runner.py", folder / "1" / "model.py")
        if b.runtimes[name] == "openvino":  # the runner runs fusionrt's OpenVINO runtime, as the Engine does
            parameters += [("runtime", "openvino"), ("precision", b.precision.get(name, "fp32"))]
    elif options.device == "gpu" and b.targets[name] == "tensorrt":
        optimization = _tensorrt(b.precision.get(name, "fp32"))
    elif b.runtimes[name] == "openvino":
        optimization = _openvino_accelerator()
    config = _model_config(
        name, options.backend, layout.io[name]["inputs"], layout.io[name]["outputs"], kind=kind,
        parameters=parameters, optimization=optimization, **layout.common,
    )
    write_config(folder, config)


def _labels_txt(b: Bundle) -> str:
    return "".join(f"{label}\n" for label in b.labels)


def _write_postprocess(b: Bundle, root: Path, layout: _Layout) -> list:
    """postprocess: logits, modality_weights -> probabilities, label. Returns its outputs."""
    logits, weights = layout.by_name["logits"], layout.by_name["modality_weights"]
    if logits["dims"] != [len(b.labels)]:
        raise BundleError(f"{b.path / 'manifest.json'}: logits dims {logits['dims']} do not match {len(b.labels)} labels")
    if any("\n" in label or "\r" in label for label in b.labels):
        raise BundleError(f"{b.path / 'manifest.json'}: a label holds a line break; {LABELS_FILE} has one label per line")
    post_out = [
        _t(PROBABILITIES, "TYPE_FP32", logits["dims"]) | {"label_filename": LABELS_FILE},
        _t(LABEL, "TYPE_STRING", [1]),
        _t(MODALITY_WEIGHTS, "TYPE_FP32", weights["dims"]),
    ]
    folder = root / POSTPROCESS
    _python_model(folder, "postprocess.py")
    labels = json.dumps(b.labels, ensure_ascii=False)
    (folder / LABELS_FILE).write_text(_labels_txt(b), encoding="utf-8")
    write_config(
        folder,
        _model_config(POSTPROCESS, "python", [logits, weights], post_out, kind="KIND_CPU", parameters=[("labels", labels)], **layout.common),
    )
    return post_out


def _write_explain(b: Bundle, root: Path, pre_in: list[dict], layout: _Layout) -> dict:
    """The ``explain`` python model (CPU, float32 explanation graph); returns its output tensor.

    Raises:
        BundleError: ``explain_method="grad-cam"`` and the bundle's explanation graph predates its output.
    """
    method = resolve_method(layout.common["options"].explain_method, [t.name for t in b.manifest.explain.outputs], f"bundle {b.path}")
    folder = root / EXPLAIN
    _python_model(folder, "explain.py")
    shutil.copyfile(b.explain_path, folder / "1" / "model.onnx")
    copy_tree(b.path / TOKENIZER_DIR, folder / "1" / TOKENIZER_DIR)
    shutil.copyfile(b.path / PREPROCESSOR_CONFIG, folder / "1" / PREPROCESSOR_CONFIG)
    (folder / "warmup").mkdir()
    (folder / "warmup" / "TEXT").write_bytes(_serialize_bytes(WARMUP_TEXT.encode()))
    (folder / "warmup" / "IMAGE").write_bytes(_serialize_bytes(WARMUP_IMAGE.read_bytes()))
    crop_h, crop_w = ImageProcessor.from_dict(b.preprocessor_config()).output_hw  # the encoder's input, any pixel layout
    parameters = [
        ("labels", json.dumps(b.labels, ensure_ascii=False)), ("max_seq_len", str(b.max_seq_len)),
        ("method", method), ("pixel_hw", f"{crop_h},{crop_w}"),
        ("intra_op_thread_count", str(layout.common["options"].threads_per_instance)),
    ]
    output = _t(EXPLANATION, "TYPE_STRING", [1])
    inputs = pre_in + [layout.by_name[n] for n in EXPLAIN_INPUTS]
    write_config(folder, _model_config(EXPLAIN, "python", inputs, [output], kind="KIND_CPU", parameters=parameters, **layout.common))
    return output


def _tensor(entry: TensorInfo, graph: str) -> dict:
    """A manifest tensor -> {name, data_type, dims, sequence_axes}; dims drop the batch axis,
    symbolic axes are -1; ``sequence_axes`` lists the positions in dims of the ``sequence`` axis
    (a length bucket, needed to give warm-up requests concrete shapes)."""
    shape = entry.shape
    if not shape or shape[0] != "batch":
        raise BundleError(f"bundle graph {graph!r} tensor {entry.name!r} has shape {shape}; axis 0 must be 'batch'")
    dtype = _TRITON_DTYPES.get(entry.dtype)
    if dtype is None:
        raise BundleError(f"bundle graph {graph!r} tensor {entry.name!r} has dtype {entry.dtype!r}, unknown to Triton")
    dims = [d if isinstance(d, int) else -1 for d in shape[1:]]
    return _t(entry.name, dtype, dims) | {"sequence_axes": [i for i, d in enumerate(shape[1:]) if d == "sequence"]}


def _t(name: str, data_type: str, dims: Sequence[int]) -> dict:
    return {"name": name, "data_type": data_type, "dims": list(dims)}


def _python_model(folder: Path, source: str) -> None:
    (folder / "1").mkdir(parents=True)
    shutil.copyfile(MODEL_SOURCES / source, folder / "1" / "model.py")


def _tensorrt(precision: str) -> "Msg":
    mode = _TRT_PRECISION.get(precision)
    if mode is None:
        raise BundleError(f"bundle precision {precision!r} has no TensorRT precision_mode")
    accelerator = Msg(
        ("name", "tensorrt"),
        ("parameters", Msg(("key", "precision_mode"), ("value", mode))),
        ("parameters", Msg(("key", "max_workspace_size_bytes"), ("value", str(TRT_MAX_WORKSPACE_SIZE_BYTES)))),
    )
    return Msg(("execution_accelerators", Msg(("gpu_execution_accelerator", [accelerator]))))


def _openvino_accelerator() -> "Msg":
    """The onnxruntime backend's OpenVINO CPU accelerator (ONNX Runtime's OpenVINO execution
    provider inside Triton's onnxruntime backend). That provider computes in FP32 on CPU (it
    refuses a bf16 precision there), so a bf16 graph is served in FP32 by it: the python backend
    runs fusionrt's own OpenVINO runtime instead, in bf16."""
    return Msg(("execution_accelerators", Msg(("cpu_execution_accelerator", [Msg(("name", "openvino"))]))))


def _warmups(inputs: list[dict], buckets: tuple) -> list["Msg"]:
    """Batch-1 warm-up requests: one per sequence bucket when an input has a ``sequence`` axis
    (ascending, so a TensorRT engine's shape range grows at load, not under traffic), else one."""
    if any(t.get("sequence_axes") for t in inputs):
        return [_warmup(inputs, f"warmup_batch_1_seq_{n}", n) for n in buckets]
    return [_warmup(inputs, "warmup_batch_1", None)]


def _warmup(inputs: list[dict], name: str, seq: int | None) -> "Msg":
    """One batch-1 warm-up request: integers zero_data, floats random_data, strings from files in
    ``<model>/warmup/`` (named after the input); ``sequence`` axes set to ``seq``."""
    fields: list = [("name", name), ("batch_size", 1)]
    for t in inputs:
        if t["data_type"] == "TYPE_STRING":
            source = ("input_data_file", t["name"])
        elif t["data_type"] in ("TYPE_FP32", "TYPE_FP16"):
            source = ("random_data", True)
        else:
            source = ("zero_data", True)
        dims = [seq if i in t.get("sequence_axes", ()) else d for i, d in enumerate(t["dims"])]
        value = Msg(("data_type", Enum(t["data_type"])), ("dims", dims), source)
        fields.append(("inputs", Msg(("key", t["name"]), ("value", value))))
    return Msg(*fields)


def _io(tensors: list[dict]) -> list:
    return [
        Msg(("name", t["name"]), ("data_type", Enum(t["data_type"])), ("dims", t["dims"]),
            *((("label_filename", t["label_filename"]),) if "label_filename" in t else ()))
        for t in tensors
    ]


def _model_config(name, backend, inputs, outputs, *, max_batch_size, options, buckets, kind, parameters=(), optimization=None) -> "Msg":
    fields: list = [
        ("name", name),
        ("backend", backend),
        ("max_batch_size", max_batch_size),
        ("input", _io(inputs)),
        ("output", _io(outputs)),
        ("instance_group", [Msg(("count", options.instance_count(name)), ("kind", Enum(kind)))]),
    ]
    if options.dynamic_batching:
        fields.append(("dynamic_batching", Msg(
            ("preferred_batch_size", list(options.preferred_batch_size)),
            ("max_queue_delay_microseconds", options.max_queue_delay_microseconds),
        )))
    if optimization is not None:
        fields.append(("optimization", optimization))
    for key, value in parameters:
        fields.append(("parameters", Msg(("key", key), ("value", Msg(("string_value", value))))))
    fields.append(("model_warmup", _warmups(inputs, buckets)))
    return Msg(*fields)


def _ensemble(max_batch_size: int, inputs: list[dict], outputs: list[dict], io: dict, bundle_inputs: tuple,
              explain: bool = False) -> "Msg":
    # Ensemble tensors carry the bundle's names; only the service boundary is upper case.
    steps = [
        _step(PREPROCESS, {TEXT: TEXT, IMAGE: IMAGE},
              {n: n for n in bundle_inputs} | {TRUNCATED: TRUNCATED}),
    ]
    for name in ENCODERS:
        steps.append(_step(name, {t["name"]: t["name"] for t in io[name]["inputs"]}, {t["name"]: t["name"] for t in io[name]["outputs"]}))
    steps.append(_step(
        POSTPROCESS, {"logits": "logits", "modality_weights": "modality_weights"},
        {PROBABILITIES: PROBABILITIES, LABEL: LABEL, MODALITY_WEIGHTS: MODALITY_WEIGHTS},
    ))
    if explain:  # Triton runs this step only for requests that name EXPLANATION among their outputs
        steps.append(_step(EXPLAIN, {n: n for n in (TEXT, IMAGE, *EXPLAIN_INPUTS)}, {EXPLANATION: EXPLANATION}))
    return Msg(
        ("name", ENSEMBLE),
        ("platform", "ensemble"),
        ("max_batch_size", max_batch_size),
        ("input", _io(inputs)),
        ("output", _io(outputs)),
        ("ensemble_scheduling", Msg(("step", steps))),
    )


def _step(model: str, input_map: dict, output_map: dict) -> "Msg":
    fields: list = [("model_name", model), ("model_version", -1)]
    fields += [("input_map", Msg(("key", k), ("value", v))) for k, v in input_map.items()]
    fields += [("output_map", Msg(("key", k), ("value", v))) for k, v in output_map.items()]
    return Msg(*fields)


def _requirements(options: RepositoryOptions, openvino: bool = False, explain: bool = False) -> str:
    lines = [
        "# What this repository's python models import; install it into the Python environment",
        "# tritonserver's python backend runs in (EXECUTION_ENV_PATH or the server's own environment).",
        f"fusionrt=={__version__}",
        "numpy>=1.24",
        "Pillow>=10",
        "tokenizers>=0.19",
    ]
    if options.backend == "python" or explain:  # the explain model runs onnxruntime in Python
        lines.append("onnxruntime-gpu>=1.18" if options.device == "gpu" else "onnxruntime>=1.18")
    if options.backend == "python":
        if openvino:
            lines.append("openvino>=2026.4")
    return "\n".join(lines) + "\n"


def _serialize_bytes(data: bytes) -> bytes:
    """One TYPE_STRING element as Triton reads ``input_data_file``: 4-byte little-endian length,
    then the bytes."""
    return struct.pack("<I", len(data)) + data
