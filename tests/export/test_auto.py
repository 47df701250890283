"""--precision auto (issue 17): the search on the tiny checkpoint with an injected timer (a
deterministic choice), the budget errors, the manifest and report contents, the printed recipe
rebuilding the same graphs' precisions and runtimes, and an auto bundle with mixed runtimes served
by the Engine."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import warnings

import numpy as np
import pytest

from fusionrt import Engine, ExportValidationError, InputError
from fusionrt.export import ExportOptions, export_bundle
from fusionrt.export import auto
from fusionrt.export.auto import SearchOptions, candidate_space, explicit_options, search_precision

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
# The region agreement is measured, not budgeted (min_region_agreement 0), except where a test says so.
BUDGET = ExportOptions(max_batch_size=8, max_accuracy_drop=0.5, min_agreement=0.995, accept_small_eval_set=True, min_region_agreement=0.0)
# Fixed "medians" (seconds) per candidate: the fastest per graph is the choice when it is eligible.
FAKE_MS = {
    "text=int8@cpu": 1.0, "text=int8-dynamic@cpu": 0.9, "text=fp32@cpu": 3.0,
    "image=int8@cpu": 2.0, "image=fp32@cpu": 5.0,
    "head=fp32@cpu": 0.5, "head=int8@cpu": 0.6, "head=int8-dynamic@cpu": 0.7,
    "text=fp32@openvino": 2.5, "text=bf16@openvino": 1.5, "text=int8@openvino": 1.2,
    "image=int8@openvino": 1.0, "image=bf16@openvino": 3.5, "image=fp32@openvino": 4.0,
    "head=fp32@openvino": 0.8, "head=bf16@openvino": 0.55,
}


def fake_timer(calls, ms: dict = FAKE_MS):
    for fn in calls.values():
        fn()  # every candidate really runs once
    return {name: ms[name] / 1e3 for name in calls}


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the tiny checkpoint's 64 calibration samples
        yield


@pytest.fixture(scope="module")
def candidate_sources(tiny_checkpoint, tmp_path_factory) -> dict:
    """The cpu candidates' graphs under BUDGET, made once by the search's own step
    (auto._make_sources: one unvalidated export per file precision) for the searches that test
    something else (unvalidated exports do not depend on the budget's gates); the searches that
    make their own are those of the mixed runtimes and the eval limit."""
    return auto._make_sources(tiny_checkpoint, tmp_path_factory.mktemp("auto_sources"), candidate_space(SearchOptions(target="cpu")),
                              BUDGET, False, lambda _: None)


def test_search_options_and_candidates_are_checked():
    with pytest.raises(InputError, match="GPU targets are not searched"):
        SearchOptions(target="tensorrt")
    with pytest.raises(InputError, match="batch_size must be >= 1"):
        SearchOptions(batch_size=0)
    with pytest.raises(InputError, match="--candidates 'fp8' is not one of"):
        SearchOptions(precisions=("fp32", "fp8"))
    assert {c.precision for c in candidate_space(SearchOptions(target="cpu", precisions=("fp32", "int8")))} == {"fp32", "int8"}
    space = {c.name for c in candidate_space(SearchOptions(target="cpu"))}
    assert space == {"text=fp32@cpu", "text=int8@cpu", "text=int8-dynamic@cpu", "image=fp32@cpu", "image=int8@cpu",
                     "head=fp32@cpu", "head=int8@cpu", "head=int8-dynamic@cpu"}  # no image int8-dynamic
    assert "image=int8-dynamic@cpu" not in space


@pytest.mark.slow  # a whole search and a rebuild (16 s); the fast subset keeps the search's parts below
def test_cpu_search_picks_the_fastest_eligible_and_the_recipe_rebuilds_it(tiny_checkpoint, candidate_sources, tmp_path):
    out = tmp_path / "auto"
    result = search_precision(tiny_checkpoint, out, BUDGET, SearchOptions(target="cpu", timer=fake_timer),
                              progress=False, sources=candidate_sources, echo=lambda _: None)
    # every candidate of the tiny model agrees with FP32 on its held-out set: the fastest per graph wins
    assert result.precision == "text=int8-dynamic,image=int8,head=fp32" and result.target == "cpu"
    assert [t["passed"] for t in result.tried] == [True]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == {"text_encoder": "int8-dynamic", "image_encoder": "int8", "fusion_head": "fp32"}
    assert manifest["runtimes"] == {"text_encoder": "onnxruntime", "image_encoder": "onnxruntime", "fusion_head": "onnxruntime"}
    search = manifest["precision_search"]
    assert len(search["candidates"]) == 8 and search["choice"]["text_encoder"]["ms"] == 0.9
    assert search["budget"] == {"max_accuracy_drop": 0.5, "min_agreement": 0.995, "min_region_agreement": 0.0} and search["batch_size"] == 8
    assert {c["graph"] for c in search["candidates"] if c["agreement"] is not None} == {"text_encoder", "image_encoder", "fusion_head"}
    report = (out / "precision_report.md").read_text()
    assert "| text | onnxruntime | int8-dynamic | 0.90 | 100.00% |" in report
    assert f"--precision {result.precision} --target {result.target}" in report and result.command in report
    assert "Note: text_encoder at int8-dynamic" in report and "--candidates fp32,bf16,int8" in report
    # the printed recipe rebuilds the same graphs' precisions and runtimes without the search
    again = export_bundle(tiny_checkpoint, tmp_path / "again", explicit_options(result, BUDGET), progress=False)
    rebuilt = json.loads((again / "manifest.json").read_text())
    assert (rebuilt["precision"], rebuilt["runtimes"], rebuilt["target"]) == (manifest["precision"], manifest["runtimes"], manifest["target"])
    assert {g: v["sha256"] for g, v in rebuilt["graphs"].items()} == {g: v["sha256"] for g, v in manifest["graphs"].items()}
    # the report files the search wrote into its bundle are fusionrt's: --overwrite replaces them too
    export_bundle(tiny_checkpoint, out, explicit_options(result, BUDGET), progress=False, overwrite=True)
    assert not (out / "precision_report.md").exists()


@pytest.mark.slow  # a search over both runtimes, then a served bundle
@pytest.mark.skipif(not HAS_OPENVINO, reason="needs fusionrt[openvino]")
def test_auto_search_mixes_runtimes_and_the_engine_serves_it(tiny_checkpoint, tmp_path, photo_dir):
    out = tmp_path / "mixed"
    result = search_precision(tiny_checkpoint, out, BUDGET, SearchOptions(target="auto", timer=fake_timer, precisions=("fp32", "int8")),
                              progress=False, echo=lambda _: None)
    # text int8@cpu 1.0 < int8@openvino 1.2; image int8@openvino 1.0 < int8@cpu 2.0; head fp32@cpu 0.5
    assert result.precision == "text=int8,image=int8,head=fp32"
    assert result.target == "text=cpu,image=openvino,head=cpu"
    engine = Engine.from_bundle(out, intra_op_num_threads=1)
    assert engine.providers["text_encoder"] == "CPUExecutionProvider"
    assert engine.providers["image_encoder"].startswith("OpenVINO CPU (int8")
    assert engine.runtime.name == "mixed"
    fp32 = Engine.from_bundle(export_bundle(tiny_checkpoint, tmp_path / "fp32", BUDGET, progress=False))
    # its Triton repository runs each graph where the bundle says (python backend: the runner's parameters)
    if importlib.util.find_spec("tritonclient") is not None:
        from fusionrt.triton import RepositoryOptions, build_repository
        from tests.triton.conftest import parse_config

        repo = build_repository(out, tmp_path / "repo", RepositoryOptions(backend="python"))

        def runtime_of(graph):
            params = parse_config(repo / graph / "config.pbtxt").parameters
            return params["runtime"].string_value if "runtime" in params else "onnxruntime"

        runtimes = {g: runtime_of(g) for g in ("text_encoder", "image_encoder", "fusion_head")}
        assert runtimes == {"text_encoder": "onnxruntime", "image_encoder": "openvino", "fusion_head": "onnxruntime"}
    images = sorted(photo_dir.glob("*.png"))[:3]
    texts = ["a lovely picture", "so dull", "great"]
    a, b = engine.predict(texts, images), fp32.predict(texts, images)
    assert [p.label for p in a] == [p.label for p in b]
    assert max(abs(p.score - q.score) for p, q in zip(a, b)) < 0.05


def test_every_graph_at_int8_is_built_as_chosen(tiny_checkpoint, candidate_sources, tmp_path):
    """The word ``int8`` means a FP32 head: a choice of int8 for all three graphs is spelt per
    component, so the bundle, the report and the printed command keep the head at int8."""
    head_int8_fastest = dict(FAKE_MS, **{"head=int8@cpu": 0.4})
    result = search_precision(tiny_checkpoint, tmp_path / "auto", BUDGET,
                              SearchOptions(target="cpu", precisions=("fp32", "int8"), timer=lambda calls: fake_timer(calls, head_int8_fastest)),
                              progress=False, sources=candidate_sources, echo=lambda _: None)
    assert result.precision == "text=int8,image=int8,head=int8"
    manifest = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    assert manifest["precision"] == {"text_encoder": "int8", "image_encoder": "int8", "fusion_head": "int8"}
    assert "--precision text=int8,image=int8,head=int8 --target cpu" in result.command


def test_region_agreement_is_budgeted_per_candidate_and_gated_end_to_end(tiny_checkpoint, candidate_sources, tmp_path, monkeypatch):
    """Each candidate's region agreement (the explanations' top image region against PyTorch
    FP32's, the candidate alone in the FP32 pipeline) is measured and reported; a candidate below
    ``min_region_agreement`` is not eligible, and the end-to-end check gates the bundle's."""
    real = auto._measure_quality
    measured = {}

    def record(ckpt, candidates, *args, **kwargs):
        real(ckpt, candidates, *args, **kwargs)
        measured.update({c.name: c.region_agreement for c in candidates})
        for c in candidates:
            if c.name == "image=int8@cpu":
                c.region_agreement = 0.5  # the fastest image candidate, below the budget below
    monkeypatch.setattr(auto, "_measure_quality", record)
    budget = ExportOptions(**{**BUDGET.__dict__, "min_region_agreement": 0.6})
    out = tmp_path / "auto"
    result = search_precision(tiny_checkpoint, out, budget, SearchOptions(target="cpu", timer=fake_timer, precisions=("fp32", "int8")),
                              progress=False, sources=candidate_sources, echo=lambda _: None)
    # FP32 graphs give PyTorch's top region (the fp32 explanation graph on PyTorch-equal features)
    assert all(0.0 <= v <= 1.0 for v in measured.values()) and measured["image=fp32@cpu"] >= 0.97, measured
    assert result.precision == "text=int8,image=fp32,head=fp32"  # image=int8@cpu (2.0 ms) left out for fp32 (5.0 ms)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision_search"]["budget"]["min_region_agreement"] == 0.6
    assert manifest["validation"]["region_agreement"] >= 0.6 and result.tried[0]["region_agreement"] == manifest["validation"]["region_agreement"]
    report = (out / "precision_report.md").read_text()
    assert "| image | onnxruntime | int8 | 2.00 |" in report and "| 50.0% |" in report
    # an explicit export is gated only when asked: the int8 image encoder's plan fails a floor above its measure
    assert measured["image=int8@cpu"] < 0.99, measured
    gated = ExportOptions(**{**budget.__dict__, "precision": "int8", "min_region_agreement": 0.99, "gate_region_agreement": True})
    with pytest.raises(ExportValidationError, match="top region is PyTorch FP32's on fewer items") as caught:
        export_bundle(tiny_checkpoint, tmp_path / "gated", gated, progress=False)
    assert "< --min-region-agreement 0.99" in caught.value.failures[0] and not (tmp_path / "gated").exists()


def test_format_precision_reads_back_as_the_plan():
    from itertools import product

    from fusionrt.bundle import GRAPHS
    from fusionrt.export.recipes import PRECISIONS, PRESETS, format_precision, parse_precision

    for values in product(PRECISIONS, repeat=len(GRAPHS)):
        plan = dict(zip(GRAPHS, values))
        if plan["image_encoder"] == "int8-dynamic":
            continue  # refused by parse_precision
        assert parse_precision(format_precision(plan)) == plan, plan
    assert format_precision(PRESETS["fp32"]) == "fp32" and format_precision(PRESETS["bf16"]) == "bf16"
    assert format_precision(PRESETS["int8"]) == "text=int8,image=int8,head=fp32"


def test_dry_run_writes_nothing(tiny_checkpoint, candidate_sources, tmp_path):
    result = search_precision(tiny_checkpoint, None, BUDGET, SearchOptions(target="cpu", timer=fake_timer), progress=False,
                              sources=candidate_sources, echo=lambda _: None)
    assert result.precision == "text=int8-dynamic,image=int8,head=fp32" and result.tried == []
    assert "<BUNDLE>" in result.command and not list(tmp_path.iterdir())


def test_a_budget_no_candidate_meets_names_the_best_found(tiny_checkpoint, candidate_sources, tmp_path, monkeypatch):
    real = auto._measure_quality

    def pessimist(ckpt, candidates, *args, **kwargs):
        real(ckpt, candidates, *args, **kwargs)
        for c in candidates:
            c.agreement = 0.9 if c.precision != "fp32" else 0.98  # below 0.995 everywhere
    monkeypatch.setattr(auto, "_measure_quality", pessimist)
    with pytest.raises(ExportValidationError, match="no combination has every graph within the budget") as caught:
        search_precision(tiny_checkpoint, tmp_path / "x", BUDGET, SearchOptions(target="cpu", timer=fake_timer),
                         progress=False, sources=candidate_sources, echo=lambda _: None)
    assert any("text=fp32@cpu: 3.0 ms, agreement 98.00%" in f for f in caught.value.failures)
    assert not (tmp_path / "x").exists()


def test_end_to_end_failures_walk_back_then_raise(tiny_checkpoint, candidate_sources, tmp_path, monkeypatch):
    from fusionrt.export import exporter

    calls = []
    real = exporter.export_bundle

    def failing_export(checkpoint, output, options, progress=True, overwrite=False):
        if not options.validate:  # the candidate graphs: made for real
            return real(checkpoint, output, options, progress=progress, overwrite=overwrite)
        calls.append(options.precision)
        raise ExportValidationError("gate", [f"top-1 agreement too low for {options.precision}"])

    monkeypatch.setattr(exporter, "export_bundle", failing_export)
    with pytest.raises(ExportValidationError, match="none of the 2 fastest eligible combinations passed") as caught:
        search_precision(tiny_checkpoint, tmp_path / "y", BUDGET, SearchOptions(target="cpu", timer=fake_timer, max_tries=2),
                         progress=False, sources=candidate_sources, echo=lambda _: None)
    assert calls[0] == "text=int8-dynamic,image=int8,head=fp32" and len(calls) == 2
    assert caught.value.failures[0].startswith("fastest tried: --precision text=int8-dynamic,image=int8,head=fp32")
    assert "top-1 agreement too low" in caught.value.failures[0] and not (tmp_path / "y").exists()


def test_sources_reuse_existing_bundles_and_leave_out_graphs_they_lack(tiny_checkpoint, tmp_path):
    """The demo passes its fp32 and int8 bundles: no new export for them, and the int8 bundle's FP32
    head is no int8 candidate."""
    fp32 = export_bundle(tiny_checkpoint, tmp_path / "fp32", BUDGET, progress=False)
    int8 = export_bundle(tiny_checkpoint, tmp_path / "int8", ExportOptions(precision="int8", max_batch_size=8, accept_small_eval_set=True), progress=False)
    lines = []
    result = search_precision(tiny_checkpoint, None, BUDGET, SearchOptions(target="cpu", timer=fake_timer, precisions=("fp32", "int8")),
                              progress=False, echo=lines.append, sources={"fp32": fp32, "int8": int8})
    assert {c.name for c in result.candidates} == {"text=fp32@cpu", "text=int8@cpu", "image=fp32@cpu", "image=int8@cpu", "head=fp32@cpu"}
    assert not any("making the" in line for line in lines) and sum("graphs of" in line for line in lines) == 2
    assert result.precision == "text=int8,image=int8,head=fp32"


# --- ties within the measured spread go to robustness (issue 23) ----------------------------------

# Per-round factors whose spread (half the 10th-90th percentile range over the median) is exactly 5%.
NOISE_5 = 1 + np.linspace(-0.0625, 0.0625, 11)


def noisy_timer(base_ms: dict, seed: int):
    """Each candidate's rounds: its base time times NOISE_5, in a random order per call."""
    rng = np.random.default_rng(seed)

    def timer(calls):
        for fn in calls.values():
            fn()
        return {name: base_ms[name] / 1e3 * rng.permutation(NOISE_5) for name in calls}

    return timer


def test_median_and_spread_are_measured_from_the_rounds():
    ms, spread = auto.median_and_spread(0.002 * NOISE_5)
    assert ms == pytest.approx(2.0) and spread == pytest.approx(0.05)
    assert auto.median_and_spread(0.002) == (2.0, 0.0)  # one number: no spread


@pytest.mark.slow  # four searches, each exporting every candidate
@pytest.mark.parametrize("dynamic_share, chosen_text", [(0.98, "int8"), (0.70, "int8-dynamic")])
def test_int8_dynamic_needs_to_beat_the_spread(tiny_checkpoint, candidate_sources, dynamic_share, chosen_text):
    """A 2% lead inside a 5% spread is a tie, which the batch-independent text=int8 wins; 30% is not."""
    base = dict(FAKE_MS, **{"text=int8-dynamic@cpu": FAKE_MS["text=int8@cpu"] * dynamic_share, "head=int8-dynamic@cpu": 0.49})
    choices = set()
    for seed in (0, 1):  # two searches, different noise: the same choice
        result = search_precision(tiny_checkpoint, None, BUDGET, SearchOptions(target="cpu", timer=noisy_timer(base, seed)),
                                  progress=False, sources=candidate_sources, echo=lambda _: None)
        choices.add(result.precision)
        assert all(c.spread == pytest.approx(0.05) for c in result.candidates)
    # head=int8-dynamic 0.49 ms against head=fp32 0.50 ms: 2%, a tie, fp32 stays
    assert choices == {f"text={chosen_text},image=int8,head=fp32"}
    note = next(n for n in result.notes if n.startswith("text=int8-dynamic@cpu"))
    assert f"{1 - dynamic_share:+.1%} faster, spread 5.0%" in note
    assert ("eligible" in note and "left out" not in note) if chosen_text == "int8-dynamic" else "left out" in note
    assert "Robustness over noise" in auto.format_report(result) and note in auto.format_report(result)


def _cand(name: str, ms: float, spread: float = 0.05):
    graph = {"text": "text_encoder", "image": "image_encoder", "head": "fusion_head"}[name.split("=")[0]]
    precision, target = name.split("=")[1].split("@")
    return auto.Candidate(graph, target, precision, ms=ms, spread=spread, agreement=1.0, accuracy_delta=0.0)


def test_a_tie_goes_to_one_runtime_and_a_clear_lead_to_the_mix():
    budget = {"min_agreement": 0.99, "max_accuracy_drop": 1.0}
    common = [_cand("image=int8@cpu", 2.0), _cand("head=fp32@cpu", 0.5)]
    tie = auto._eligible_combinations([_cand("text=int8@openvino", 1.0), _cand("text=int8@cpu", 1.02), *common], budget)
    assert [c.name for c in tie[0]] == ["text=int8@cpu", "image=int8@cpu", "head=fp32@cpu"]
    assert auto._tie_note(tie[0], tie).startswith("text=int8@cpu + image=int8@cpu + head=fp32@cpu (3.52 ms) chosen over")
    lead = auto._eligible_combinations([_cand("text=int8@openvino", 0.7), _cand("text=int8@cpu", 1.0), *common], budget)
    assert [c.name for c in lead[0]] == ["text=int8@openvino", "image=int8@cpu", "head=fp32@cpu"]
    assert auto._tie_note(lead[0], lead) is None
    # without any spread (one round each), the fastest wins however small its lead
    exact = auto._eligible_combinations([_cand("text=int8@openvino", 1.0, 0), _cand("text=int8@cpu", 1.02, 0),
                                         _cand("image=int8@cpu", 2.0, 0), _cand("head=fp32@cpu", 0.5, 0)], budget)
    assert exact[0][0].name == "text=int8@openvino"


def test_eval_limit_takes_examples_spread_over_the_file(tiny_checkpoint, monkeypatch):
    """The held-out split is written label by label: the candidates' accuracy on eval_limit
    examples is measured on examples spread over it (every label), not on its first lines."""
    from fusionrt.export import validate
    from fusionrt.model.data import read_jsonl, spread

    assert spread(10, 4).tolist() == [0, 3, 6, 9] and spread(3, 5).tolist() == [0, 1, 2]
    assert len(set(spread(1024, 256).tolist())) == 256
    heldout = read_jsonl(tiny_checkpoint / "heldout.jsonl")
    labels = [e.label for e in heldout]
    assert len(set(labels[:8])) < len(set(labels)) > 1  # the first 8 lines miss a label
    seen, real = [], validate._eval_batches

    def recording(ckpt, examples, pixel_dtype):
        seen.extend(e.label for e in examples)
        return real(ckpt, examples, pixel_dtype)

    monkeypatch.setattr(validate, "_eval_batches", recording)
    lines = []
    search_precision(tiny_checkpoint, None, BUDGET, SearchOptions(target="cpu", timer=fake_timer, eval_limit=8, precisions=("fp32",)),
                     progress=False, echo=lines.append)
    assert len(seen) == 8 and set(seen) == set(labels)
    assert any(f"on 8 of {len(heldout)} heldout.jsonl examples" in line for line in lines)


def test_the_printed_command_rebuilds_with_every_option_the_search_was_given(tiny_checkpoint, tmp_path, monkeypatch):
    """precision_report.md's command "rebuilds it without the search" (docs/export.md): run through
    the CLI, it gives the ExportOptions the search verified, --max-batch-size, --calibration,
    --eval-data and --reduce-range included (it spelt only the precision, target and budget)."""
    import shlex

    import fusionrt.export
    from fusionrt import FusionrtError
    from fusionrt.cli import main

    options = dataclasses.replace(BUDGET, calibration=str(tiny_checkpoint / "calibration.jsonl"),
                                  eval_data=str(tiny_checkpoint / "heldout.jsonl"), reduce_range=False)
    result = search_precision(tiny_checkpoint, None, options, SearchOptions(target="cpu", precisions=("fp32", "int8"), timer=fake_timer),
                              progress=False, echo=lambda _: None)
    given = {}

    def capture(checkpoint, output, opts, **kwargs):
        given["options"] = opts
        raise FusionrtError("captured")

    monkeypatch.setattr(fusionrt.export, "export_bundle", capture)
    argv = shlex.split(result.command)
    assert argv[:2] == ["fusionrt", "export"]
    assert main(argv[1:]) == 1
    expected = explicit_options(result, options)
    fields = [f.name for f in dataclasses.fields(expected) if f.name not in ("tolerance", "validate", "validation_batch_sizes",
                                                                              "validation_seq_lens", "gate_region_agreement")]
    assert {f: getattr(given["options"], f) for f in fields} == {f: getattr(expected, f) for f in fields}
