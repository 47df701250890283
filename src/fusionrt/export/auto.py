"""``--precision auto``: per component, the fastest recipe on this machine within an accuracy budget.

The search (issue 17), in four steps:

1. **Candidates.** Per graph, every (target, precision) this machine can run: ONNX Runtime's CPU
   provider (``cpu``: fp32, static int8, dynamic int8 for the text encoder) and, where the
   ``openvino`` package is installed, OpenVINO (``openvino``: fp32, bf16 where the CPU has
   AVX512-BF16 or AMX, int8). Their graph files come from a few plain exports (fp32, int8,
   int8-dynamic) made without validation: cpu and openvino make the same files, and a bf16 graph
   is the fp32 file run in bf16.
2. **Speed.** Each candidate graph is timed alone at ``batch_size`` on real inputs, the candidates
   of one graph in interleaved rounds: its median, and its run-to-run spread (half the distance
   between the 10th and 90th percentile of its rounds, relative to the median). A combination's
   time is the sum of its graphs' (per component, so the search is a sum, not a product).
3. **Accuracy.** Each candidate replaces its graph in the FP32 pipeline on the evaluation data
   (the checkpoint's held-out split): top-1 agreement with PyTorch FP32, the accuracy delta, and
   the explanations' region agreement (the share of items whose most relevant image region,
   Grad-CAM through the explanation graph, is PyTorch FP32's). A combination is *eligible* when
   each of its candidates alone holds the budget (``min_region_agreement`` included).
   Robustness decides what speed cannot: an ``int8-dynamic`` candidate (its answers move with
   batch-mates and padding) is eligible only where it is faster than the fastest
   batch-independent candidate of its graph (static int8, bf16, fp32) by more than their spread;
   combinations whose times differ by less than their spread are a tie, broken by fewer
   ``int8-dynamic`` graphs, then fewer runtimes (one runtime before a mix), then time.
4. **Verification.** Eligible combinations, in that order, are exported for real with the
   equivalent explicit ``--precision ... --target ...``, the accuracy gate and the region
   agreement as a gate (``ExportOptions.gate_region_agreement``); the first that passes end to end
   is the bundle. The report prints that command: it rebuilds the same bundle.

GPU targets (cuda, tensorrt) are not searched: their candidates cannot be timed without a GPU.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fusionrt.bundle import COMPONENTS, GRAPHS, join_components
from fusionrt.errors import ExportValidationError, InputError
from fusionrt.export.recipes import TARGETS, format_precision, precision_step
from fusionrt.utils import record_written

# The file a candidate precision runs from (bf16: the fp32 graph, run in bf16 by OpenVINO).
FILE_PRECISION = {"fp32": "fp32", "bf16": "fp32", "int8": "int8", "int8-dynamic": "int8-dynamic"}
# Precisions whose answers depend on the batch: activation scales computed per call over the batch.
BATCH_DEPENDENT = ("int8-dynamic",)
# The run-to-run spread of a candidate: half the distance between these percentiles of its rounds.
SPREAD_PERCENTILES = (10, 90)
# The plan exported (without validation) to get each file precision for the graphs that use it.
SOURCE_PLANS = {"fp32": "fp32", "int8": "text=int8,image=int8,head=int8", "int8-dynamic": "text=int8-dynamic,image=fp32,head=int8-dynamic"}
SEARCHED_TARGETS = ("cpu", "openvino")
CANDIDATE_PRECISIONS = {"cpu": ("fp32", "int8", "int8-dynamic"), "openvino": ("fp32", "bf16", "int8")}
_SHORT = {g: c for c, g in COMPONENTS.items()}


@dataclass(frozen=True)
class SearchOptions:
    """What ``--precision auto`` searches and how.

    Attributes:
        target: ``auto`` (every searched target this machine has), ``cpu`` or ``openvino``.
        batch_size: the batch the candidates are timed at.
        threads: intra-op threads of the timed runtimes (``None``: every core).
        rounds: interleaved timing rounds per graph (the median is kept).
        max_tries: eligible combinations exported and verified end to end at most.
        eval_limit: evaluation examples for the per-candidate accuracy, spread evenly over the
            file (``None``: all; the end-to-end verification always uses all).
        precisions: restrict the candidate precisions (``None``: every one; the demo's smaller
            budget leaves ``int8-dynamic`` out).
        timer: ``{name: zero-argument call} -> {name: seconds per round}`` (a sequence, or one
            number: no spread); ``None`` times ``rounds`` interleaved rounds
            (:func:`fusionrt.timing.interleaved_times`). Tests inject fixed or noisy ones.

    Raises:
        InputError: an unknown target, a batch size or count < 1.
    """

    target: str = "auto"
    batch_size: int = 8
    threads: int | None = None
    rounds: int = 10
    max_tries: int = 4
    eval_limit: int | None = None
    precisions: tuple | None = None
    timer: Callable | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.target not in ("auto", *SEARCHED_TARGETS):
            hint = " (GPU targets are not searched: give an explicit --precision for cuda/tensorrt)" if self.target in TARGETS else ""
            raise InputError(f"--precision auto searches --target auto, cpu or openvino, not {self.target!r}{hint}")
        for name in ("batch_size", "rounds", "max_tries"):
            if getattr(self, name) < 1:
                raise InputError(f"--precision auto: {name} must be >= 1, got {getattr(self, name)}")
        unknown = sorted(set(self.precisions or ()) - set(FILE_PRECISION))
        if unknown:
            raise InputError(f"--candidates {unknown[0]!r} is not one of {list(FILE_PRECISION)}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise InputError(f"--precision auto: eval_limit must be >= 1, got {self.eval_limit}")


@dataclass
class Candidate:
    """One graph at one (target, precision), with what the search measured of it.

    Attributes:
        ms: median milliseconds per call at the search's batch size.
        spread: run-to-run spread of its timing rounds, relative to ``ms`` (0.05: +-5%; see
            :data:`SPREAD_PERCENTILES`).
        agreement: top-1 agreement with PyTorch FP32 when this graph alone replaces the FP32 one.
        region_agreement: in that setting, the share of items whose most relevant image region
            (Grad-CAM) is PyTorch FP32's (NaN: not measured, the FP32 graphs have no explanation graph).
        accuracy_delta: accuracy points against PyTorch FP32 (negative: lost) in that setting.
        max_abs_error: max |logit - PyTorch FP32 logit| in that setting.
        skipped: why it was not measured (its runtime cannot load it), else ``None``.
    """

    graph: str
    target: str
    precision: str
    ms: float = float("nan")
    spread: float = 0.0
    agreement: float = float("nan")
    accuracy_delta: float = float("nan")
    max_abs_error: float = float("nan")
    region_agreement: float = float("nan")
    skipped: str | None = None

    @property
    def runtime(self) -> str:
        return TARGETS[self.target].runtime

    @property
    def name(self) -> str:
        return f"{_SHORT[self.graph]}={self.precision}@{self.target}"

    def to_dict(self) -> dict:
        return {"graph": self.graph, "target": self.target, "runtime": self.runtime, "precision": self.precision,
                "ms": _round(self.ms), "spread": _round(self.spread, 4), "agreement": _round(self.agreement, 6), "accuracy_delta": _round(self.accuracy_delta),
                "max_abs_error": _round(self.max_abs_error, 5), "region_agreement": _round(self.region_agreement, 6), "skipped": self.skipped}


@dataclass
class SearchResult:
    """The search's table and choice.

    Attributes:
        candidates: every candidate, measured.
        tried: combinations verified end to end (plan, target, ms, and the validation's
            agreement/accuracy or the failures).
        choice: graph -> the chosen candidate (``None`` when nothing passed).
        precision / target: the equivalent explicit ``--precision`` and ``--target``.
        command: the ``fusionrt export`` command that rebuilds the bundle without the search.
        notes: how robustness decided against speed: each int8-dynamic candidate against the
            fastest batch-independent one of its graph (by how much, and the spread), and a
            chosen combination that is not the fastest (the tie it won).
        image_float_front: the int8 image candidate's graph keeps its front float (a ``sources``
            bundle exported so); the explicit command says ``--image-int8-front float``.
    """

    candidates: list[Candidate]
    tried: list[dict]
    choice: dict[str, Candidate] | None
    precision: str | None
    target: str | None
    command: str | None
    budget: dict
    batch_size: int
    seconds: float = 0.0
    cpu: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    image_float_front: bool = False

    def to_dict(self) -> dict:
        return {"notes": self.notes,
            "budget": self.budget, "batch_size": self.batch_size, "seconds": round(self.seconds, 1), "cpu": self.cpu,
            "candidates": [c.to_dict() for c in self.candidates], "tried": self.tried,
            "choice": None if self.choice is None else {g: c.to_dict() for g, c in self.choice.items()},
            "precision": self.precision, "target": self.target, "command": self.command,
            "image_float_front": self.image_float_front,
        }


def candidate_space(options: SearchOptions) -> list[Candidate]:
    """Every (graph, target, precision) the search tries on this machine (unmeasured)."""
    from fusionrt.cpu import cpu_info
    from fusionrt.engine.openvino_runtime import openvino_available

    targets = [t for t in SEARCHED_TARGETS if options.target in ("auto", t)]
    if "openvino" in targets and not openvino_available():
        if options.target == "openvino":
            raise InputError("--precision auto --target openvino needs the openvino package: pip install 'fusionrt[openvino]'")
        targets.remove("openvino")
    out = []
    for target in targets:
        for precision in CANDIDATE_PRECISIONS[target]:
            if options.precisions is not None and precision not in options.precisions:
                continue
            if precision == "bf16" and not cpu_info().bf16:
                continue
            for graph in GRAPHS:
                try:
                    precision_step(target, graph, precision)
                except InputError:
                    continue
                out.append(Candidate(graph, target, precision))
    return out


def search_precision(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike | None,
    export_options,
    options: SearchOptions = SearchOptions(),
    progress: bool = True,
    workdir: str | os.PathLike | None = None,
    echo: Callable[[str], None] = print,
    sources: dict | None = None,
    overwrite: bool = False,
) -> SearchResult:
    """Run the search and, unless ``output`` is ``None`` (``--dry-run``), write the chosen bundle
    with its ``precision_report.md`` (and ``precision_report.png`` where matplotlib is installed).

    Args:
        checkpoint: the checkpoint directory.
        output: the bundle to write, or ``None`` for a dry run (the choice is then the fastest
            eligible combination, not verified end to end).
        export_options: :class:`~fusionrt.export.ExportOptions` of the final export: its
            ``max_accuracy_drop``, ``min_agreement``, ``min_region_agreement`` are the budget;
            the search sets ``precision``, ``target`` and ``image_float_front``.
        options: :class:`SearchOptions`.
        workdir: where the candidate graphs are made (default: a temporary folder, removed).
        echo: where progress lines go.
        sources: file precision (``fp32``, ``int8``, ``int8-dynamic``) -> an existing bundle of this
            checkpoint made for cpu or openvino, whose graphs are used instead of a new export (the
            demo passes its fp32 and int8 bundles); a candidate whose graph that bundle does not
            hold at that precision is left out (an ``int8`` bundle's FP32 head, say).
        overwrite: replace a bundle fusionrt wrote at ``output`` (checked before the search).

    Returns:
        The :class:`SearchResult` (also in the bundle's manifest under ``precision_search``).

    Raises:
        ExportValidationError: no eligible combination, or none passes the gate end to end; the
            message names the best combination found and its numbers.
        CheckpointError: the checkpoint cannot be loaded.
        InputError: ``output`` holds files fusionrt did not write, or a bundle without ``overwrite``;
            or the evaluation data is too small to resolve the budget's ``min_agreement`` (see
            ``ExportOptions.accept_small_eval_set``).
    """
    from fusionrt.cpu import cpu_info
    from fusionrt.export.exporter import BUNDLE_OUTPUT
    from fusionrt.export.validate import check_eval_set_resolves
    from fusionrt.model.checkpoint import load_checkpoint
    from fusionrt.utils import check_output_folder

    started = time.perf_counter()
    if output is not None:
        check_output_folder(output, BUNDLE_OUTPUT, overwrite)
    ckpt = load_checkpoint(checkpoint)
    check_eval_set_resolves(ckpt, export_options)
    candidates = candidate_space(options)
    sources = {k: Path(v) for k, v in (sources or {}).items()}
    if sources:
        candidates = [c for c in candidates if FILE_PRECISION[c.precision] not in sources
                      or _source_precision(sources[FILE_PRECISION[c.precision]], c.graph) == FILE_PRECISION[c.precision]]
    own_workdir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="fusionrt-auto-")) if own_workdir else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        files = _make_sources(checkpoint, work, candidates, export_options, progress, echo, sources)
        paths = {c.name: files[FILE_PRECISION[c.precision]] / f"{c.graph}.onnx" for c in candidates}
        inputs = _timing_inputs(ckpt, files["fp32"], options)
        runnable = _measure_speed(candidates, paths, inputs, options, progress, echo)
        _measure_quality(ckpt, runnable, paths, files["fp32"], export_options, options, progress, echo)
        result = SearchResult(candidates, [], None, None, None, None, _budget(export_options), options.batch_size, cpu=cpu_info().to_dict(),
                              image_float_front=_has_float_front(files.get("int8")))
        combos = _eligible_combinations(runnable, result.budget, result.notes)
        if not combos:
            raise _budget_error(result, "no combination has every graph within the budget on its own")
        if output is None:
            _choose(result, combos[0], checkpoint, "<BUNDLE>", export_options)
            result.notes += [n for n in [_tie_note(combos[0], combos)] if n]
            result.seconds = time.perf_counter() - started
            return result
        return _verify(result, combos, checkpoint, Path(output), export_options, options, progress, echo, started, overwrite)
    finally:
        if own_workdir:
            shutil.rmtree(work, ignore_errors=True)


# --- steps ----------------------------------------------------------------------------------------

def _source_precision(bundle: Path, graph: str) -> str | None:
    from fusionrt.bundle import Bundle

    b = Bundle.load(bundle, verify=False)
    if b.targets[graph] not in SEARCHED_TARGETS:
        return None  # graphs made for another target (tensorrt's standard ops, say) are not these candidates
    return b.precision.get(graph)


def _make_sources(checkpoint, work: Path, candidates, export_options, progress, echo, sources=None) -> dict[str, Path]:
    """One unvalidated export per file precision the candidates need (unless ``sources`` has it) -> its folder."""
    from fusionrt.export.exporter import export_bundle

    needed = ["fp32"] + sorted({FILE_PRECISION[c.precision] for c in candidates} - {"fp32"})
    out = {}
    for file_precision in needed:
        if sources and file_precision in sources:
            echo(f"auto: the {file_precision} graphs of {sources[file_precision]}")
            out[file_precision] = sources[file_precision]
            continue
        echo(f"auto: making the {file_precision} graphs")
        opts = dataclasses.replace(export_options, precision=SOURCE_PLANS[file_precision], target="cpu", validate=False)
        out[file_precision] = export_bundle(checkpoint, work / file_precision, opts, progress=progress, overwrite=True)
    return out


def _budget(export_options) -> dict:
    """The budget each candidate is held to: the export options' gates."""
    return {k: getattr(export_options, k) for k in ("max_accuracy_drop", "min_agreement", "min_region_agreement")}


def _has_float_front(bundle: Path | None) -> bool:
    """Whether ``bundle``'s INT8 image encoder keeps its front float (its recipe's ``float_nodes``)."""
    if bundle is None:
        return False
    from fusionrt.bundle import Bundle

    int8 = Bundle.load(bundle, verify=False).manifest.graphs["image_encoder"].recipe.get("int8")
    return isinstance(int8, dict) and "float_nodes" in int8


def _graph_runtime(candidate: Candidate, path: Path, threads: int | None):
    from fusionrt.engine.runtimes import build_runtime
    from fusionrt.engine.session import EngineOptions

    return build_runtime({candidate.graph: path}, {candidate.graph: candidate.precision}, candidate.runtime,
                         EngineOptions().with_threads(threads))


def _fp32_chain(fp32: Path):
    from fusionrt.engine.runtimes import build_runtime

    return build_runtime({g: fp32 / f"{g}.onnx" for g in GRAPHS}, {}, "onnxruntime").activate()


def _pixel_dtype(fp32: Path) -> str:
    """``pixel_values`` dtype of the FP32 bundle's image graph: ``uint8`` or ``float32``."""
    import onnx
    from onnx import helper

    model = onnx.load(str(fp32 / "image_encoder.onnx"), load_external_data=False)
    value = next(v for v in model.graph.input if v.name == "pixel_values")
    return helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name


def _timing_inputs(ckpt, fp32: Path, options: SearchOptions) -> dict[str, np.ndarray]:
    """Every tensor of the pipeline at ``batch_size``: real examples (the held-out split's, else
    the calibration split's), through the FP32 graphs."""
    from fusionrt.model.data import read_jsonl

    split = ckpt.split("heldout") or ckpt.split("calibration")
    if split is None:
        raise InputError(f"--precision auto needs examples to time and evaluate on: {ckpt.path} has no heldout.jsonl")
    examples = read_jsonl(split)
    examples = [examples[i % len(examples)] for i in range(options.batch_size)]
    feed, _ = ckpt.tokenizer([ex.text for ex in examples])
    feed["pixel_values"] = ckpt.image_processor.pixels([ex.image for ex in examples], _pixel_dtype(fp32))
    chain = _fp32_chain(fp32)
    try:
        return chain.infer(feed)
    finally:
        chain.deactivate()


def _measure_speed(candidates, paths, inputs, options: SearchOptions, progress, echo) -> list[Candidate]:
    """Time the candidates; returns those whose runtime could load them (the others get a
    ``skipped`` reason: an OpenVINO compile error, for example)."""
    from fusionrt.errors import BundleError, ProviderError
    from fusionrt.timing import interleaved_times

    timer = options.timer or (lambda fns: interleaved_times(fns, warmup=2, rounds=options.rounds))
    kept = []
    for graph in GRAPHS:
        mine = []
        runtimes = {}
        for c in (c for c in candidates if c.graph == graph):
            try:
                runtimes[c.name] = _graph_runtime(c, paths[c.name], options.threads).activate()
            except (BundleError, ProviderError) as exc:
                c.skipped = str(exc).splitlines()[0][:300]
                echo(f"auto: {c.name} does not run here: {c.skipped}")
                continue
            mine.append(c)
        echo(f"auto: timing {len(mine)} {graph} candidates at batch {options.batch_size}")
        try:
            calls = {}
            for c in mine:
                rt = runtimes[c.name]
                feed = {k: inputs[k] for k in rt.input_names[graph]}
                calls[c.name] = lambda rt=rt, feed=feed: rt.infer_graph(graph, feed)
            seconds = timer(calls)
        finally:
            for rt in runtimes.values():
                rt.deactivate()
        for c in mine:
            c.ms, c.spread = median_and_spread(seconds[c.name])
        kept += mine
    return kept


def _measure_quality(ckpt, candidates, paths, fp32: Path, export_options, options: SearchOptions, progress, echo) -> None:
    """Each candidate alone in the FP32 pipeline on the evaluation data: agreement, accuracy
    delta, max logit error and region agreement against PyTorch FP32 (the reference cache the
    export's validation uses, so its PyTorch outputs are computed once)."""
    from fusionrt.bundle import EXPLAIN_GRAPH
    from fusionrt.export.validate import EVAL_BATCH_SIZE, _eval_batches, _eval_examples, _explainer, _Reference, reference_cache_key, top_regions
    from fusionrt.model.data import spread

    examples, labels, path = _eval_examples(ckpt, export_options.eval_data)
    if not examples:
        raise InputError(f"--precision auto needs evaluation data: {ckpt.path} has no heldout.jsonl; give --eval-data")
    total = len(examples)
    limit = total if options.eval_limit is None else min(options.eval_limit, total)
    subset = "" if limit == total else f", {limit} spread examples"
    if subset:  # spread over the file: a held-out split is written label by label, its first lines one label
        keep = spread(total, limit)
        examples, labels = [examples[i] for i in keep], labels[keep]
    key = reference_cache_key(ckpt, f"eval data{subset}, batches of {EVAL_BATCH_SIZE}", (path,))
    reference = _Reference(ckpt, key)  # without a subset the export's validation then finds the PyTorch outputs cached
    chain = _fp32_chain(fp32)
    runtimes = {c.name: _graph_runtime(c, paths[c.name], options.threads).activate() for c in candidates}
    agree = {c.name: 0 for c in candidates}
    correct = {c.name: 0 for c in candidates}
    err = {c.name: 0.0 for c in candidates}
    regions = {c.name: 0 for c in candidates}
    explainer = _explainer(fp32 / f"{EXPLAIN_GRAPH}.onnx")
    ref_correct = seen = 0
    echo(f"auto: accuracy of {len(candidates)} candidates on {limit} of {total} {path.name} examples")
    try:
        for feed in _eval_batches(ckpt, examples, _pixel_dtype(fp32)):  # the limit's examples, all of them
            ref_out = reference(feed)
            ref = ref_out["logits"]
            ref_region = top_regions(ref_out["region_grad_cam"])
            batch_labels = labels[seen : seen + len(ref)]
            env = chain.infer(feed)
            ref_top = ref.argmax(-1)
            ref_correct += int((ref_top == batch_labels).sum())
            for c in candidates:
                values = dict(env)
                values.update(runtimes[c.name].infer_graph(c.graph, {k: env[k] for k in runtimes[c.name].input_names[c.graph]}))
                if c.graph != "fusion_head":
                    values.update(chain.infer_graph("fusion_head", values))
                logits = values["logits"]
                agree[c.name] += int((logits.argmax(-1) == ref_top).sum())
                correct[c.name] += int((logits.argmax(-1) == batch_labels).sum())
                err[c.name] = max(err[c.name], float(np.abs(logits - ref).max()))
                if explainer is not None:
                    regions[c.name] += int((top_regions(explainer(values, feed["attention_mask"])) == ref_region).sum())
            seen += len(ref)
        reference.save()  # a complete pass over this key's examples
    finally:
        chain.deactivate()
        for rt in runtimes.values():
            rt.deactivate()
    for c in candidates:
        c.agreement = agree[c.name] / seen
        c.accuracy_delta = (correct[c.name] - ref_correct) / seen * 100
        c.max_abs_error = err[c.name]
        c.region_agreement = regions[c.name] / seen if explainer is not None else float("nan")


def median_and_spread(seconds) -> tuple[float, float]:
    """``(median ms, relative spread)`` of one candidate's timing rounds (seconds each; one
    number has no spread): the spread is half the distance between the
    :data:`SPREAD_PERCENTILES` of the rounds, over the median."""
    t = np.atleast_1d(np.asarray(seconds, np.float64))
    median = float(np.median(t))
    low, high = np.percentile(t, SPREAD_PERCENTILES)
    return median * 1e3, float((high - low) / 2 / median) if median > 0 else 0.0


def _faster_beyond_spread(fast: Candidate, slow: Candidate) -> tuple[bool, float, float]:
    """``(beyond, margin, spread)``: ``fast`` is faster than ``slow`` by ``margin`` (share of
    ``slow``'s time), and that is more than the larger of their spreads."""
    margin = (slow.ms - fast.ms) / slow.ms
    spread = max(fast.spread, slow.spread)
    return margin > spread, margin, spread


def _eligible_combinations(candidates, budget, notes: list[str] | None = None) -> list[tuple]:
    """Combinations (one candidate per graph, targets that can mix) whose every candidate holds
    the budget alone, in the order they are verified (see :func:`_robust_order`). An
    int8-dynamic candidate is left out unless it beats the fastest batch-independent candidate of
    its graph by more than their spread; ``notes`` gets one line per such comparison."""
    from fusionrt.export.recipes import parse_target

    ok = [c for c in candidates if c.agreement >= budget["min_agreement"] and -c.accuracy_delta <= budget["max_accuracy_drop"]
          and not c.region_agreement < budget.get("min_region_agreement", 0.0)]  # NaN (not measured) holds
    for graph in GRAPHS:
        steady = [c for c in ok if c.graph == graph and c.precision not in BATCH_DEPENDENT]
        if not steady:
            continue
        best = min(steady, key=lambda c: c.ms)
        for c in [c for c in ok if c.graph == graph and c.precision in BATCH_DEPENDENT]:
            beyond, margin, spread = _faster_beyond_spread(c, best)
            verdict = "eligible" if beyond else "left out: not faster beyond the spread, and its answers move with batch-mates"
            if notes is not None:
                notes.append(f"{c.name} ({c.ms:.2f} ms) against {best.name} ({best.ms:.2f} ms), the fastest batch-independent "
                             f"{_SHORT[graph]}: {margin:+.1%} faster, spread {spread:.1%}: {verdict}")
            if not beyond:
                ok.remove(c)
    per_graph = [[c for c in ok if c.graph == g] for g in GRAPHS]
    combos = []
    for combo in itertools.product(*per_graph):
        try:
            parse_target(join_components({c.graph: c.target for c in combo}))
        except InputError:
            continue
        combos.append(combo)
    return _robust_order(combos)


def _robustness(combo) -> tuple[int, int]:
    """Lower is more robust: graphs whose answers depend on the batch, then runtimes used."""
    return sum(c.precision in BATCH_DEPENDENT for c in combo), len({c.runtime for c in combo})


def _robust_order(combos: list[tuple]) -> list[tuple]:
    """Repeatedly: the fastest remaining combination and those within the spread of it (the
    sum of each one's candidates' absolute spreads, the larger of the two) are a tie; the most
    robust of the tie (:func:`_robustness`, then time, then name) comes next."""
    def total(combo):
        return sum(c.ms for c in combo)

    def spread_ms(combo):
        return sum(c.ms * c.spread for c in combo)

    remaining = sorted(combos, key=lambda combo: (total(combo), [c.name for c in combo]))
    order = []
    while remaining:
        fastest = remaining[0]
        tied = [k for k in remaining if total(k) - total(fastest) <= max(spread_ms(fastest), spread_ms(k))]
        pick = min(tied, key=lambda k: (_robustness(k), total(k), [c.name for c in k]))
        order.append(pick)
        remaining.remove(pick)
    return order


def _tie_note(chosen, combos: list[tuple]) -> str | None:
    """A line for the report when the chosen combination is not the fastest eligible one."""
    fastest = min(combos, key=lambda k: sum(c.ms for c in k))
    if fastest == chosen:
        return None
    a, b = sum(c.ms for c in chosen), sum(c.ms for c in fastest)
    spread = max(sum(c.ms * c.spread for c in chosen), sum(c.ms * c.spread for c in fastest))
    return (f"{' + '.join(c.name for c in chosen)} ({a:.2f} ms) chosen over the fastest eligible "
            f"{' + '.join(c.name for c in fastest)} ({b:.2f} ms, {(a - b) / a:.1%} faster): within the measured spread "
            f"({spread:.2f} ms), where answers independent of batch-mates and fewer runtimes come first")


def _choose(result: SearchResult, combo, checkpoint, output, export_options) -> None:
    result.choice = {c.graph: c for c in combo}
    result.precision = format_precision({c.graph: c.precision for c in combo})
    result.target = join_components({c.graph: c.target for c in combo})
    result.command = (
        f"fusionrt export {checkpoint} -o {output} --precision {result.precision} --target {result.target}"
        f" --max-accuracy-drop {export_options.max_accuracy_drop:g} --min-agreement {export_options.min_agreement:g}"
        + (f" --image-int8-front {'float' if result.image_float_front else 'int8'}" if result.choice["image_encoder"].precision == "int8" else "")
        + (" --accept-small-eval-set" if export_options.accept_small_eval_set else "")
        + _other_flags(export_options)
    )


def _other_flags(options) -> str:
    """The ``fusionrt export`` flags of the options the search was given beyond its budget, where
    they differ from the CLI's defaults, so that the printed command rebuilds the same bundle."""
    from fusionrt.export.exporter import ExportOptions

    default, flags = ExportOptions(), []
    if options.opset != default.opset:
        flags += ["--opset", str(options.opset)]
    if options.max_batch_size != default.max_batch_size:
        flags += ["--max-batch-size", str(options.max_batch_size)]
    if options.calibration is not None:
        flags += ["--calibration", shlex.quote(str(options.calibration))]
    if options.calibration_method != default.calibration_method:
        flags += ["--calibration-method", options.calibration_method]
    if options.reduce_range is not None:
        flags += ["--reduce-range", "on" if options.reduce_range else "off"]
    if options.eval_data is not None:
        flags += ["--eval-data", shlex.quote(str(options.eval_data))]
    if options.pixel_dtype != default.pixel_dtype:
        flags += ["--pixels", options.pixel_dtype]
    if options.min_region_agreement != default.min_region_agreement:
        flags += ["--min-region-agreement", f"{options.min_region_agreement:g}", "--gate-region-agreement"]
    return "".join(f" {f}" for f in flags)


def _verify(result, combos, checkpoint, output: Path, export_options, options, progress, echo, started, overwrite) -> SearchResult:
    from fusionrt.export.exporter import export_bundle

    # The fastest eligible combinations, and the most faithful one as the last resort.
    order = list(combos[: options.max_tries])
    safest = max(combos, key=lambda combo: (min(c.agreement for c in combo), -sum(c.ms for c in combo)))
    if safest not in order:
        order[-1] = safest
    for combo in order:
        _choose(result, combo, checkpoint, output, export_options)
        ms = sum(c.ms for c in combo)
        echo(f"auto: verifying --precision {result.precision} --target {result.target} ({ms:.1f} ms at batch {result.batch_size})")
        final = explicit_options(result, export_options, gate=True)
        attempt = {"precision": result.precision, "target": result.target, "ms": _round(ms)}
        try:
            export_bundle(checkpoint, output, final, progress=progress, overwrite=overwrite)
        except ExportValidationError as exc:
            attempt["failures"] = exc.failures
            result.tried.append(attempt)
            continue
        from fusionrt.bundle import Bundle

        validation = Bundle.load(output, verify=False).manifest.validation
        attempt.update(agreement=validation.top1_agreement, accuracy_delta=validation.accuracy_delta,
                       max_abs_error=validation.max_abs_error, region_agreement=validation.region_agreement, passed=True)
        result.tried.append(attempt)
        result.seconds = time.perf_counter() - started
        result.notes += [n for n in [_tie_note(combo, combos)] if n]
        _rewrite_report(output, result)
        return result
    result.choice = result.precision = result.target = result.command = None
    raise _budget_error(result, f"none of the {len(order)} fastest eligible combinations passed end to end")


def _rewrite_report(output: Path, result: SearchResult) -> None:
    """The manifest's ``precision_search`` and the report files, beside the verified bundle."""
    from fusionrt.bundle import read_manifest, write_manifest

    write_manifest(output, dataclasses.replace(read_manifest(output), precision_search=result.to_dict()))
    files = _report_files(result)
    for name, data in files.items():
        (output / name).write_bytes(data)
    record_written(output, *files)


def _budget_error(result: SearchResult, why: str) -> ExportValidationError:
    best_tried = result.tried[0] if result.tried else None  # the fastest verified
    by_agreement = sorted((c for c in result.candidates if c.skipped is None), key=lambda c: (-c.agreement, c.ms))
    lines = [f"{c.name}: {c.ms:.1f} ms, agreement {c.agreement:.2%}, accuracy {c.accuracy_delta:+.2f} points, top region "
             f"{_share(c.region_agreement)}" for c in by_agreement[:6]]
    if best_tried is not None:
        lines.insert(0, f"fastest tried: --precision {best_tried['precision']} --target {best_tried['target']} "
                        f"({best_tried['ms']} ms): {'; '.join(best_tried.get('failures', []))}")
    budget = result.budget
    return ExportValidationError(
        f"--precision auto: {why} (budget: agreement >= {budget['min_agreement']:g}, accuracy drop <= "
        f"{budget['max_accuracy_drop']:g} points, top region >= {budget.get('min_region_agreement', 0.0):g}); "
        "the best candidates found", lines)


# --- report -----------------------------------------------------------------------------------------

def format_report(result: SearchResult) -> str:
    """``precision_report.md``: the candidates' table, the combinations tried, the choice and the
    command that rebuilds it."""
    chosen = set() if result.choice is None else {c.name for c in result.choice.values()}
    cpu = result.cpu
    lines = [
        "# Precision search (`--precision auto`)",
        "",
        f"CPU: {cpu.get('model', '?')} (flags: {', '.join(cpu.get('flags', [])) or 'none reported'}); batch {result.batch_size}; "
        f"budget: top-1 agreement with PyTorch FP32 >= {result.budget['min_agreement']:.1%}, accuracy drop <= "
        f"{result.budget['max_accuracy_drop']:g} points, explanations' top image region as FP32's >= "
        f"{result.budget.get('min_region_agreement', 0.0):.0%}; search took {result.seconds:.0f} s.",
        "",
        "Each candidate timed alone (median ms per call at the batch size; spread: half its 10th-90th percentile "
        "range over rounds) and evaluated alone in the FP32 pipeline.",
        "",
        "| component | runtime | precision | ms | agreement | accuracy delta (points) | max abs logit error | top region | spread | chosen |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted(result.candidates, key=lambda c: (GRAPHS.index(c.graph), c.skipped is not None, c.ms)):
        if c.skipped:
            lines.append(f"| {_SHORT[c.graph]} | {c.runtime} | {c.precision} | - | - | - | - | - | - | does not run here: {c.skipped} |")
            continue
        lines.append(f"| {_SHORT[c.graph]} | {c.runtime} | {c.precision} | {c.ms:.2f} | {c.agreement:.2%} | "
                     f"{c.accuracy_delta:+.2f} | {c.max_abs_error:.3g} | {_share(c.region_agreement)} | {c.spread:.1%} | "
                     f"{'**yes**' if c.name in chosen else ''} |")
    if result.notes:
        lines += ["", "Robustness over noise (ties within the measured spread go to answers independent of batch-mates, "
                  "then to one runtime):", ""] + [f"- {n}" for n in result.notes]
    if result.tried:
        lines += ["", "Combinations verified end to end (fastest eligible first):", "",
                  "| --precision | --target | ms (sum) | result |", "|---|---|---|---|"]
        for t in result.tried:
            outcome = (f"passed: agreement {t['agreement']:.2%}, accuracy {t['accuracy_delta']:+.2f} points"
                       + (f", top region {t['region_agreement']:.1%}" if t.get("region_agreement") is not None else "")
                       if t.get("passed") and "agreement" in t else "; ".join(t.get("failures", [])) or "passed")
            lines.append(f"| `{t['precision']}` | `{t['target']}` | {t['ms']} | {outcome} |")
    if result.command:
        total = sum(c.ms for c in result.choice.values())
        dynamic = [g for g, c in result.choice.items() if c.precision == "int8-dynamic"]
        lines += ["", f"Chosen: `--precision {result.precision} --target {result.target}` ({total:.1f} ms at batch {result.batch_size})."]
        if dynamic:
            lines += ["", f"Note: {', '.join(dynamic)} at int8-dynamic scale activations per batch: an item's answer moves with its "
                      "batch-mates and padding (within the budget on the held-out set). Where answers must not depend on "
                      "batch composition, search without it (`--candidates fp32,bf16,int8`)."]
        lines += ["", "Rebuild it without the search:", "", "```", result.command, "```"]
    return "\n".join(lines) + "\n"


def _report_files(result: SearchResult) -> dict[str, bytes]:
    files = {"precision_report.md": format_report(result).encode()}
    plot = _plot(result)
    if plot is not None:
        files["precision_report.png"] = plot
    return files


def _plot(result: SearchResult) -> bytes | None:
    """Speed against agreement per component, the choice marked; ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from matplotlib.lines import Line2D

    chosen = set() if result.choice is None else {c.name for c in result.choice.values()}
    shown = [c for c in result.candidates if c.skipped is None]
    # one colour and marker per recipe (precision@target), the same in every panel; labels in the
    # legend, not beside the points, where neighbours overlapped
    recipes = list(dict.fromkeys(f"{c.precision}@{c.target}" for c in shown))
    colours = plt.get_cmap("tab10").colors
    markers = ("o", "s", "^", "D", "v", "P", "X", "h", "<", ">")
    style = {r: {"color": colours[i % 10], "marker": markers[i % len(markers)]} for i, r in enumerate(recipes)}
    fig, axes = plt.subplots(1, len(GRAPHS), figsize=(4.2 * len(GRAPHS) + 2.5, 3.8), squeeze=False, layout="constrained")
    for ax, graph in zip(axes[0], GRAPHS):
        for c in (c for c in shown if c.graph == graph):
            picked = c.name in chosen
            ax.plot(c.ms, c.agreement * 100, linestyle="none", markersize=13 if picked else 8, markeredgecolor="k" if picked else "none",
                    markeredgewidth=2 if picked else 0, **style[f"{c.precision}@{c.target}"])
        ax.axhline(result.budget["min_agreement"] * 100, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylim(top=100.3)
        ax.set_title(graph)
        ax.set_xlabel(f"ms per call, batch {result.batch_size}")
        ax.set_ylabel("top-1 agreement with FP32 (%)" if ax is axes[0][0] else "")
    handles = [Line2D([], [], linestyle="none", markersize=8, **style[r]) for r in recipes]
    handles += [Line2D([], [], linestyle="none", marker="o", markersize=13, markerfacecolor="none", markeredgecolor="k", markeredgewidth=2),
                Line2D([], [], color="grey", linestyle="--", linewidth=0.8)]
    fig.legend(handles, recipes + ["chosen (ringed)", "--min-agreement"], loc="outside right center", fontsize=9, frameon=False)
    fig.suptitle("precision search: speed and agreement of each candidate per component")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _share(value: float) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.1%}"


def _round(value: float, digits: int = 3):
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def explicit_options(result: SearchResult, export_options, gate: bool = False) -> object:
    """The :class:`~fusionrt.export.ExportOptions` that rebuild the chosen bundle without the search
    (the INT8 image encoder's front as its candidate had it); ``gate``: the region agreement gated too,
    as the search's end-to-end verification does."""
    return dataclasses.replace(export_options, precision=result.precision, target=result.target, image_float_front=result.image_float_front,
                               gate_region_agreement=gate or export_options.gate_region_agreement)


__all__: Sequence[str] = ["Candidate", "SearchOptions", "SearchResult", "candidate_space", "explicit_options", "format_report", "search_precision"]
