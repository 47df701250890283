"""Validation of exported graphs against the PyTorch FP32 model.

Every output is checked on every case before raising; the error lists each failure with its max
difference (optimum's ``validate_model_outputs`` convention).

The PyTorch outputs (the reference) are the same for every export of one checkpoint: they are
computed once and kept in the checkpoint directory, one file per input set (the random grid, the
evaluation data) named ``.fusionrt-reference-<sha256>.npz`` after the model and the inputs (see
:func:`reference_cache_key`). The file also holds the sha256 of every batch of inputs, checked on
use: a batch whose inputs differ (other preprocessing, images) is recomputed.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fusionrt.bundle import Validation
from fusionrt.errors import ExportValidationError, InputError
from fusionrt.preprocessing.image import default_decode_threads
from fusionrt.utils import atomic_write_bytes

# Two-sided 95% quantile of the standard normal distribution.
Z_95 = 1.959964
# Examples per evaluation batch (texts are padded to the longest of a batch).
EVAL_BATCH_SIZE = 8
REFERENCE_CACHE_PREFIX = ".fusionrt-reference-"
# region_grad_cam: FusionHead.explain's Grad-CAM (B, L), for the explanation's region agreement
REFERENCE_OUTPUTS = ("logits", "modality_weights", "region_grad_cam")
# The bundle's outputs the evaluation data also reads when the bundle has an explanation graph.
FEATURES = ("text_features", "image_features")
# The references last computed or loaded in this process (key -> cache content, at most
# _MEMO_ENTRIES, the oldest dropped): the exports of one checkpoint in one process (the demo's
# three) reuse them even when the checkpoint directory is read-only.
_reference_memo: dict[str, dict[str, np.ndarray]] = {}
_MEMO_ENTRIES = 4


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion.

    With ``p = successes / n`` the bounds are
    ``(p + z²/2n ± z·sqrt(p(1 - p)/n + z²/4n²)) / (1 + z²/n)`` (E. B. Wilson, 1927, "Probable
    inference, the law of succession, and statistical inference", JASA 22(158):209-212). Unlike the
    normal approximation ``p ± z·sqrt(p(1 - p)/n)`` it stays inside [0, 1] and does not shrink to a
    point at 0 or n successes, where agreement and accuracy of a good bundle lie.

    Args:
        successes: examples counted, ``0 <= successes <= n``.
        n: examples in all, ``>= 1``.
        z: standard normal quantile of the confidence level (1.959964: two-sided 95%).

    Returns:
        ``(low, high)``, with ``0 <= low <= successes / n <= high <= 1``.

    Raises:
        InputError: ``n < 1`` or ``successes`` outside ``[0, n]``.
    """
    if n < 1 or not 0 <= successes <= n:
        raise InputError(f"wilson_interval: need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    p = successes / n
    z2 = z * z
    center = p + z2 / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    denom = 1 + z2 / n
    # Exact at the edges, where the formula gives 0 and 1 up to rounding.
    low = 0.0 if successes == 0 else (center - half) / denom
    high = 1.0 if successes == n else (center + half) / denom
    return low, high


def _ci95(successes: int, n: int) -> list[float]:
    return [round(x, 6) for x in wilson_interval(successes, n)]


def examples_needed(min_agreement: float, z: float = Z_95) -> int | None:
    """Fewest examples whose 95% Wilson lower bound can reach ``min_agreement`` at all, i.e. when
    every example agrees: the bound is then ``n / (n + z²)`` (:func:`wilson_interval` at
    ``successes == n``), so ``n >= min_agreement · z² / (1 - min_agreement)``; 381 for 0.99, 765
    for 0.995. Any disagreement needs more.

    Returns:
        The count (0 for ``min_agreement <= 0``), or ``None`` for 1.0, which no finite set resolves.
    """
    if min_agreement <= 0:
        return 0
    if min_agreement >= 1:
        return None
    n = max(1, math.ceil(min_agreement * z * z / (1 - min_agreement)))
    while wilson_interval(n, n, z)[0] < min_agreement:  # rounding at the boundary
        n += 1
    return n


def source_counts(examples) -> dict[str, int]:
    """Examples per data source (``Example.source``: "synthetic", "photographs", "camera-size";
    "unlabelled" where the JSONL has no ``source``), in order of first appearance."""
    counts: dict[str, int] = {}
    for ex in examples:
        key = ex.source or "unlabelled"
        counts[key] = counts.get(key, 0) + 1
    return counts


def gated_groups(examples, min_agreement: float) -> dict[str, int]:
    """The groups the agreement gate holds to ``min_agreement``, with their sizes: ``all`` the
    examples, and, when there are several sources, each source large enough to resolve the gate on
    its own (:func:`examples_needed`; a bundle that agrees on synthetic pictures but not on
    camera-size photographs then fails). A smaller source is reported in ``per_source``, not gated:
    its interval is too wide to tell a pass from a fail."""
    counts = source_counts(examples)
    needed = examples_needed(min_agreement)
    big = {s: n for s, n in counts.items() if needed is not None and n >= needed} if len(counts) > 1 else {}
    return {"all": len(examples), **big}


def check_eval_set_resolves(ckpt, options) -> None:
    """Refuse, before any export work, evaluation data too small for the agreement gate to resolve
    ``options.min_agreement`` with 95% confidence (see :func:`examples_needed`), unless
    ``options.accept_small_eval_set`` (the gate then compares the point estimate).

    Raises:
        InputError: naming each group too small, its size, the size it needs, and the flags.
    """
    if not options.validate or options.accept_small_eval_set or options.min_agreement <= 0:
        return
    examples, _, path = _eval_examples(ckpt, options.eval_data)
    if not examples:
        return
    needed = examples_needed(options.min_agreement)
    small = {"all": len(examples)} if needed is None or len(examples) < needed else {}
    if not small:
        return
    groups = ", ".join(f"{g}: {n}" for g, n in small.items())
    need = ("no finite set does (its 95% lower bound stays below 1)" if needed is None
            else f"it needs at least {needed} examples in each, all agreeing")
    raise InputError(
        f"evaluation data {path} is too small to resolve --min-agreement {options.min_agreement:g} with 95% "
        f"confidence ({groups} examples; {need}): pass --eval-data with more examples, lower --min-agreement, "
        "or accept the risk with --accept-small-eval-set (the gate then compares the point estimate)"
    )


def _random_case(rng: np.random.Generator, batch: int, seq: int, vocab: int, type_vocab: int, hw: tuple, pixel_dtype: str):
    """Random inputs; row 0 has the full length, other rows random lengths in [1, seq]. Pixels:
    ``(batch, 3, H, W)`` standard normal float32, or ``(batch, H, W, 3)`` uniform uint8."""
    ids = rng.integers(0, vocab, (batch, seq), dtype=np.int64)
    lengths = np.concatenate([[seq], rng.integers(1, seq + 1, batch - 1)]) if batch > 1 else np.array([seq])
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    types = rng.integers(0, max(type_vocab, 1), (batch, seq), dtype=np.int64) * mask
    if pixel_dtype == "uint8":
        pixels = rng.integers(0, 256, (batch,) + hw + (3,), dtype=np.uint8)
    else:
        pixels = rng.standard_normal((batch, 3) + hw).astype(np.float32)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "pixel_values": pixels}


def _torch_outputs(ckpt, feed: dict) -> dict[str, np.ndarray]:
    """The PyTorch model's outputs on a graph feed (uint8 pixels normalized as the graph does), and
    the Grad-CAM of its predicted class over the image regions (``FusionHead.explain``)."""
    import torch

    if feed["pixel_values"].dtype == np.uint8:
        feed = {**feed, "pixel_values": ckpt.image_processor.normalize(feed["pixel_values"])}
    model = ckpt.model
    with torch.inference_mode():
        t = {k: torch.from_numpy(v) for k, v in feed.items()}
        text = model.encode_text(t["input_ids"], t["attention_mask"], t.get("token_type_ids"))
        image = model.encode_image(t["pixel_values"])
        out = model.head(text, t["attention_mask"], image)  # what model(**feed) returns
        explained = model.head.explain(text, t["attention_mask"], image)
    return {"logits": out.logits.numpy(), "modality_weights": out.modality_weights.numpy(),
            "region_grad_cam": explained.region_grad_cam.numpy()}


def _eval_examples(ckpt, eval_data):
    """The evaluation examples (``eval_data``, else the checkpoint's held-out split), their label
    ids (-1 for a label the checkpoint does not know) and the file; ``None``s without one."""
    from fusionrt.model.data import read_jsonl

    path = Path(eval_data) if eval_data else ckpt.split("heldout")
    if path is None:
        return None, None, None
    examples = read_jsonl(path)
    label_ids = {name: i for i, name in enumerate(ckpt.config.labels)}
    unknown = sorted({ex.label for ex in examples} - label_ids.keys())
    if unknown:
        n = sum(ex.label in unknown for ex in examples)
        warnings.warn(
            f"{n} of {len(examples)} examples in {path} have labels the checkpoint does not know "
            f"({', '.join(map(repr, unknown[:5]))}{', ...' if len(unknown) > 5 else ''}): they count as wrong in "
            f"accuracy (agreement is unaffected); its labels are {ckpt.config.labels}",
            RuntimeWarning, stacklevel=2,
        )
    return examples, np.array([label_ids.get(ex.label, -1) for ex in examples]), path


def _eval_batches(ckpt, examples, pixel_dtype: str):
    """Graph inputs of ``EVAL_BATCH_SIZE`` examples at a time (one batch of images decoded at a
    time: 1024 held-out images at 224x224 would hold 616 MB of float32 pixels)."""
    for start in range(0, len(examples), EVAL_BATCH_SIZE):
        part = examples[start : start + EVAL_BATCH_SIZE]
        feed, _ = ckpt.tokenizer([ex.text for ex in part])
        feed["pixel_values"] = ckpt.image_processor.pixels([ex.image for ex in part], pixel_dtype, default_decode_threads())
        yield feed


def reference_cache_key(ckpt, inputs: str, files: tuple = ()) -> str:
    """Hex sha256 naming a reference cache file: the fusionrt, torch and transformers versions, the
    source of the model's modules, the checkpoint's weights, ``config.json``, tokenizer and
    preprocessor files, and the input set: its description ``inputs`` and the ``files`` it is read
    from (the evaluation JSONL). The inputs themselves are checked batch by batch on use."""
    import torch
    import transformers

    from fusionrt import __version__
    from fusionrt.bundle import sha256_file
    from fusionrt.model import config as config_module
    from fusionrt.model import families
    from fusionrt.model import modeling

    digest = hashlib.sha256()

    def add(tag: str, data: bytes) -> None:
        digest.update(f"{tag}:{len(data)}:".encode())
        digest.update(data)

    add("versions", f"fusionrt {__version__} torch {torch.__version__} transformers {transformers.__version__}".encode())
    for module in (modeling, config_module, families):
        add(module.__name__, Path(module.__file__).read_bytes())
    add("model.safetensors", sha256_file(ckpt.path / "model.safetensors").encode())
    for name in ("config.json", "tokenizer.json", "preprocessor_config.json"):
        file = ckpt.path / name
        add(name, file.read_bytes() if file.is_file() else b"")
    add("inputs", inputs.encode())
    for file in files:
        add("file", Path(file).read_bytes())
    return digest.hexdigest()


def _feed_sha256(feed: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(feed):
        array = np.ascontiguousarray(feed[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}:".encode())
        digest.update(array.data)
    return digest.hexdigest()


class _Reference:
    """PyTorch FP32 outputs of a sequence of input batches, from the cache file ``key`` names when
    it holds the same batch at the same position, else computed; :meth:`save` writes them."""

    def __init__(self, ckpt, key: str):
        self.ckpt, self.key = ckpt, key
        self.path = ckpt.path / f"{REFERENCE_CACHE_PREFIX}{key}.npz"
        self.cached = _reference_memo[key] if key in _reference_memo else self._load()
        self.digests: list[str] = []
        self.outputs: dict[str, list] = {name: [] for name in REFERENCE_OUTPUTS}
        self.computed = 0

    def _load(self) -> dict[str, np.ndarray] | None:
        try:
            with np.load(self.path, allow_pickle=False) as data:
                cached = {name: data[name] for name in ("feed_sha256", "rows", *REFERENCE_OUTPUTS)}
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # missing or damaged: recompute
            return None
        rows, n = cached["rows"], len(cached["feed_sha256"])
        if len(rows) != n + 1 or any(len(cached[name]) != rows[-1] for name in REFERENCE_OUTPUTS):
            return None
        return cached

    def __call__(self, feed: dict) -> dict[str, np.ndarray]:
        """The reference outputs of the next batch ``feed``."""
        i, digest, c = len(self.digests), _feed_sha256(feed), self.cached
        self.digests.append(digest)
        if c is not None and i < len(c["feed_sha256"]) and c["feed_sha256"][i] == digest:
            rows = slice(int(c["rows"][i]), int(c["rows"][i + 1]))
            out = {name: c[name][rows] for name in REFERENCE_OUTPUTS}
        else:
            out = _torch_outputs(self.ckpt, feed)
            self.computed += 1
        for name in REFERENCE_OUTPUTS:
            self.outputs[name].append(out[name])
        return out

    def save(self) -> None:
        """Keep the outputs of the batches seen in this process and, unless the cache file already
        holds exactly them, write it atomically (a temporary file renamed into place); an
        unwritable checkpoint directory only skips the file."""
        if not self.digests:
            return
        content = {
            "feed_sha256": np.array(self.digests),
            "rows": np.cumsum([0] + [len(o) for o in self.outputs["logits"]]),
            **{name: np.concatenate(v) for name, v in self.outputs.items()},
        }
        while len(_reference_memo) >= _MEMO_ENTRIES:
            del _reference_memo[next(iter(_reference_memo))]
        _reference_memo[self.key] = content
        if self.computed == 0 and self.path.is_file():
            return
        buffer = io.BytesIO()
        np.savez(buffer, **content)
        try:
            atomic_write_bytes(self.path, buffer.getvalue())
        except OSError:
            pass  # a read-only checkpoint: the reference is recomputed next time


def validation_runtime(graph_paths: dict, options):
    """The runtime the bundle is validated on: each graph on its target's runtime
    (``recipes.TARGETS[target].runtime``): OpenVINO for ``openvino`` graphs (at their bundle
    precision), ONNX Runtime's CPU provider for the others (what runs CUDA/TensorRT bundles' graphs
    on a machine without a GPU).

    Raises:
        ProviderError: a graph's runtime is not installed.
    """
    from fusionrt.engine.runtimes import build_runtime
    from fusionrt.export.recipes import TARGETS, parse_target

    runtimes = {g: TARGETS[t].runtime for g, t in parse_target(options.target).items()}
    return build_runtime(graph_paths, options.plan, runtimes).activate()


def validate_bundle_graphs(bundle_dir: Path, ckpt, graph_paths: dict, options, progress: bool = True) -> Validation:
    """Run the graphs with ONNX Runtime (CPU) and PyTorch on the same inputs and compare.

    Cases: ``validation_batch_sizes`` x ``validation_seq_lens`` random inputs (lengths differ
    inside a batch), then the evaluation data: ``options.eval_data``, else the checkpoint's
    held-out set when it has one. The PyTorch outputs come from the reference cache when an
    earlier export of the checkpoint computed them on the same inputs (see the module docstring).

    With the bundle's explanation graph in ``bundle_dir``, the evaluation data also measures the
    explanations: the share of items whose most relevant image region (Grad-CAM) is PyTorch's
    (``region_agreement``; reported, not gated: the exporter decides an INT8 image encoder's float
    front on it).

    Agreement and accuracies are reported with their 95% Wilson score intervals
    (:func:`wilson_interval`) and the number of examples behind them. Without evaluation data
    the accuracy gates (``max_accuracy_drop``, ``min_agreement``) do not apply and agreement is
    measured on the random inputs.

    Returns:
        The manifest's ``validation`` entry.

    Raises:
        ExportValidationError: an output exceeds its tolerance or is not finite, accuracy on the
            evaluation data dropped more than ``options.max_accuracy_drop`` points, or top-1
            agreement with PyTorch FP32 on it is below ``options.min_agreement`` (all listed).
    """
    comparison = _Comparison(validation_runtime(graph_paths, options), options.tolerances, options.random_input_tolerances)
    _compare_random_inputs(comparison, ckpt, options)
    from fusionrt.bundle import EXPLAIN_GRAPH

    evaluation = _compare_eval_data(comparison, ckpt, options, Path(bundle_dir) / f"{EXPLAIN_GRAPH}.onnx")
    comparison.failures += _accuracy_failures(evaluation, options)
    if comparison.failures:
        raise ExportValidationError(
            f"exported graphs in {bundle_dir} do not match the PyTorch model "
            f"({len(comparison.failures)} failed check(s)); nothing was written",
            comparison.failures,
        )
    return _report(comparison, evaluation, ckpt, options)


@dataclass
class _Comparison:
    """The graphs against PyTorch so far: the runtime they run on, the largest error per output,
    the failed checks, and per kind of input (``random``, ``eval``) the logits' absolute errors,
    cosines and top-1 agreements."""

    runtime: object
    tolerance: dict
    random_tolerance: dict
    failures: list = field(default_factory=list)
    max_err: dict = field(default_factory=dict)
    max_err_eval: dict = field(default_factory=dict)
    stats: dict = field(default_factory=lambda: {kind: {"abs": [], "cos": [], "agree": []} for kind in ("random", "eval")})
    num_samples: int = 0

    def __post_init__(self):
        self.max_err = dict.fromkeys(self.tolerance, 0.0)
        self.max_err_eval = dict.fromkeys(self.tolerance, 0.0)

    def compare(self, case: str, feed: dict, ref: dict, kind: str = "random", features: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
        """Run the graphs on ``feed`` and check them against PyTorch's ``ref``; returns the top-1
        labels ``(batch,)`` of both and the graphs' outputs (with ``features``, the encoders'
        ``text_features`` and ``image_features`` too)."""
        got = self.runtime.infer(feed, outputs=("logits", "modality_weights", *FEATURES) if features else None)
        for name, tol in (self.tolerance if kind == "eval" else self.random_tolerance).items():
            if not np.isfinite(got[name]).all():
                self.failures.append(f"{name}: {case}: non-finite values (NaN or Inf)")
                continue
            err = float(np.abs(got[name] - ref[name]).max())
            self.max_err[name] = max(self.max_err[name], err)
            if kind == "eval":
                self.max_err_eval[name] = max(self.max_err_eval[name], err)
            if tol is not None and err > tol:
                self.failures.append(f"{name}: {case}: max abs error {err:.3g} > tolerance {tol:g}")
        a, b = got["logits"].astype(np.float64), ref["logits"].astype(np.float64)  # (batch, num_labels)
        st = self.stats[kind]
        st["abs"].append(np.abs(a - b).ravel())
        st["cos"].append((a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12))
        st["agree"].append(a.argmax(-1) == b.argmax(-1))
        self.num_samples += len(a)
        return a.argmax(-1), b.argmax(-1), got

    def agreement_stats(self) -> tuple[str, dict]:
        """Agreement comes from the evaluation data when there is one (random inputs lie outside
        INT8 calibration ranges: they check shapes, finiteness and FP32/FP16 error bounds)."""
        return ("eval_data", self.stats["eval"]) if self.stats["eval"]["abs"] else ("random inputs", self.stats["random"])


@dataclass(frozen=True)
class _Evaluation:
    """Top-1 results on the evaluation data (``path`` None: there was none)."""

    path: Path | None = None
    num_samples: int = 0
    correct: int = 0
    reference_correct: int = 0
    agreed: int = 0
    examples: list = field(default_factory=list)
    per_source: dict | None = None
    agree: np.ndarray | None = None  # (num_samples,) bool: the graphs' top-1 equals PyTorch's
    region_agree: np.ndarray | None = None  # (num_samples,) bool: the top Grad-CAM region is PyTorch's (None: not measured)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.num_samples if self.num_samples else None

    @property
    def reference_accuracy(self) -> float | None:
        return self.reference_correct / self.num_samples if self.num_samples else None


def _compare_random_inputs(comparison: _Comparison, ckpt, options) -> None:
    """The ``validation_batch_sizes`` x ``validation_seq_lens`` grid of random inputs (seed 0)."""
    config = ckpt.config
    rng = np.random.default_rng(0)
    vocab = int(config.text_config.get("vocab_size", 100))
    type_vocab = int(config.text_config.get("type_vocab_size", 1))
    hw = ckpt.image_processor.output_hw
    grid = [(batch, seq or config.max_seq_len) for batch in options.validation_batch_sizes for seq in options.validation_seq_lens]
    reference = _Reference(ckpt, reference_cache_key(ckpt, f"random inputs, seed 0, (batch, seq) {grid}"))
    for batch, seq in grid:
        feed = _random_case(rng, batch, seq, vocab, type_vocab, hw, options.pixel_dtype)
        comparison.compare(f"batch={batch} seq={seq}", feed, reference(feed))
    reference.save()


def _compare_eval_data(comparison: _Comparison, ckpt, options, explain_graph: Path | None = None) -> _Evaluation:
    """The evaluation data (``options.eval_data``, else the held-out split), in batches; with
    ``explain_graph`` (the bundle's ``fusion_head_explain.onnx``), each item's most relevant
    region too (:func:`top_regions`), from that graph on the bundle's encoder outputs against
    PyTorch's."""
    examples, labels, eval_path = _eval_examples(ckpt, options.eval_data)
    if eval_path is not None and options.calibration and Path(options.calibration).resolve() == eval_path.resolve():
        warnings.warn(f"evaluation data {eval_path} is also the calibration data: the accuracy gate is optimistic", RuntimeWarning, stacklevel=4)
    if not examples:
        return _Evaluation()
    explainer = _explainer(explain_graph)
    reference = _Reference(ckpt, reference_cache_key(ckpt, f"eval data, batches of {EVAL_BATCH_SIZE}", (eval_path,)))
    preds, refs, regions = [], [], []
    for i, feed in enumerate(_eval_batches(ckpt, examples, options.pixel_dtype)):
        ref_out = reference(feed)
        p, r, got = comparison.compare(f"{eval_path.name} batch {i}", feed, ref_out, "eval", features=explainer is not None)
        preds.append(p)
        refs.append(r)
        if explainer is not None:
            cam = explainer(got, feed["attention_mask"])
            regions.append(top_regions(cam) == top_regions(ref_out["region_grad_cam"]))
    reference.save()
    pred, ref = np.concatenate(preds), np.concatenate(refs)  # (n_eval,) top-1 labels
    return _Evaluation(eval_path, len(examples), int((pred == labels).sum()), int((ref == labels).sum()),
                       int((pred == ref).sum()), examples, _per_source(examples, labels, pred, ref), pred == ref,
                       np.concatenate(regions) if regions else None)


def top_regions(region_grad_cam: np.ndarray) -> np.ndarray:
    """``(B,) int64``: each item's most relevant image region under Grad-CAM (the argmax after its
    ReLU; region 0 when no region is positive, where :func:`fusionrt.explanation.relevance` is
    uniform), from ``region_grad_cam (B, L)``."""
    return np.maximum(np.asarray(region_grad_cam, np.float64), 0.0).argmax(-1)


def _explainer(path: Path | None):
    """``run(outputs, attention_mask) -> region_grad_cam (B, L)``: the explanation graph on ONNX
    Runtime's CPU provider (as :meth:`fusionrt.Engine.explain` runs it), fed the encoders'
    outputs in float32; ``None`` without a graph."""
    if path is None or not Path(path).is_file():
        return None
    from fusionrt.engine.loaders import ort_session
    from fusionrt.engine.session import SessionOptions

    session = ort_session(path, SessionOptions())

    def run(outputs: dict, attention_mask: np.ndarray) -> np.ndarray:
        feed = {name: np.asarray(outputs[name], np.float32) for name in FEATURES}
        return session.run(["region_grad_cam"], {**feed, "attention_mask": attention_mask})[0]

    return run


def _accuracy_failures(ev: _Evaluation, options) -> list[str]:
    """The accuracy gates (``max_accuracy_drop``, ``min_agreement``) on the evaluation data."""
    if not ev.num_samples:
        return []
    failures = []
    drop = (ev.reference_accuracy - ev.accuracy) * 100
    if drop > options.max_accuracy_drop:
        failures.append(
            f"accuracy on {ev.path.name}: {ev.accuracy:.2%} vs PyTorch FP32 {ev.reference_accuracy:.2%}, a drop of "
            f"{drop:.2f} points > --max-accuracy-drop {options.max_accuracy_drop:g}"
        )
    return failures + _agreement_failures(ev.examples, ev.agree, ev.path.name, options)


def _report(c: _Comparison, ev: _Evaluation, ckpt, options) -> Validation:
    """The manifest's :class:`~fusionrt.bundle.Validation` of checks that all passed."""
    agreement_data, st = c.agreement_stats()
    agree = np.concatenate(st["agree"])
    placements = c.runtime.placements
    n = ev.num_samples
    return Validation(
        reference="pytorch-fp32",
        # what the checks ran on: the target's runtime, at the precision each graph runs at
        runtime=c.runtime.name,
        provider=next(iter(placements.values())).describe(),
        placements={g: p.describe() for g, p in placements.items()},
        num_samples=c.num_samples,
        max_abs_error=c.max_err.get("logits", 0.0),
        max_abs_error_per_output=c.max_err,
        max_abs_error_eval_data=c.max_err_eval if c.stats["eval"]["abs"] else None,
        mean_abs_error=float(np.concatenate(st["abs"]).mean()),
        cosine=float(np.concatenate(st["cos"]).mean()),
        top1_agreement=float(agree.mean()),
        top1_agreement_ci95=_ci95(int(agree.sum()), len(agree)),
        agreement_data=agreement_data,
        agreement_num_samples=len(agree),
        eval_num_samples=n or None,
        accuracy=ev.accuracy,
        accuracy_ci95=_ci95(ev.correct, n) if n else None,
        reference_accuracy=ev.reference_accuracy,
        reference_accuracy_ci95=_ci95(ev.reference_correct, n) if n else None,
        accuracy_delta=None if ev.accuracy is None else round((ev.accuracy - ev.reference_accuracy) * 100, 4),
        tolerance=c.tolerance,
        random_input_tolerance=c.random_tolerance,
        max_accuracy_drop=options.max_accuracy_drop,
        min_agreement=options.min_agreement,
        eval_data=str(ev.path.name if ev.path.parent == ckpt.path else ev.path) if n else None,
        per_source=ev.per_source,
        agreement_gate=_gate_description(ev.examples, options) if n else None,
        region_agreement=float(ev.region_agree.mean()) if ev.region_agree is not None else None,
        region_agreement_ci95=_ci95(int(ev.region_agree.sum()), n) if ev.region_agree is not None else None,
        min_region_agreement=options.min_region_agreement if ev.region_agree is not None else None,
    )


def _per_source(examples, labels: np.ndarray, pred: np.ndarray, ref: np.ndarray) -> dict:
    """The manifest's ``per_source``: agreement with PyTorch FP32, the bundle's and PyTorch's
    accuracy, each with its 95% Wilson interval, per data source (:func:`source_counts`)."""
    sources = np.array([ex.source or "unlabelled" for ex in examples])
    out = {}
    for source in source_counts(examples):
        rows = sources == source
        n = int(rows.sum())
        agreed, correct, ref_correct = (int((a[rows] == b[rows]).sum()) for a, b in ((pred, ref), (pred, labels), (ref, labels)))
        out[source] = {
            "num_samples": n,
            "top1_agreement": agreed / n, "top1_agreement_ci95": _ci95(agreed, n),
            "accuracy": correct / n, "accuracy_ci95": _ci95(correct, n),
            "reference_accuracy": ref_correct / n, "reference_accuracy_ci95": _ci95(ref_correct, n),
        }
    return out


def _agreement_failures(examples, agree: np.ndarray, name: str, options) -> list[str]:
    """The agreement gate on each of :func:`gated_groups`: the 95% Wilson lower bound must reach
    ``min_agreement`` (the point estimate, when ``accept_small_eval_set`` and the group is too
    small to resolve it)."""
    sources = np.array([ex.source or "unlabelled" for ex in examples])
    needed = examples_needed(options.min_agreement)
    failures = []
    for group, n in gated_groups(examples, options.min_agreement).items():
        rows = np.ones(len(agree), bool) if group == "all" else sources == group
        agreed = int(agree[rows].sum())
        low, high = wilson_interval(agreed, n)
        point = options.accept_small_eval_set and (needed is None or n < needed)
        value, what = (agreed / n, "point estimate") if point else (low, "95% Wilson lower bound")
        if value < options.min_agreement:
            where = name if group == "all" else f"{name} ({group})"
            failures.append(
                f"top-1 agreement with PyTorch FP32 on {where}: {agreed / n:.2%} ({agreed} of {n}, 95% Wilson "
                f"interval {low:.2%}-{high:.2%}); its {what} {value:.2%} < --min-agreement {options.min_agreement:g}"
            )
    return failures


def _gate_description(examples, options) -> dict:
    """The manifest's ``agreement_gate``: what was compared with ``min_agreement``, per group."""
    needed = examples_needed(options.min_agreement)
    return {
        "min_agreement": options.min_agreement,
        "examples_needed": needed,
        "statistic": {
            group: "point estimate (small eval set accepted)"
            if options.accept_small_eval_set and (needed is None or n < needed) else "95% Wilson lower bound"
            for group, n in gated_groups(examples, options.min_agreement).items()
        },
    }
