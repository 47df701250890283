"""The OpenVINO runtime behind the Engine (issue 16): bundles exported with --target openvino run
there by default, answers match PyTorch FP32 within each precision's stated tolerance, options are
validated, the compiled-model cache is reused, bf16 is refused or labelled where the CPU lacks it."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch

from fusionrt import BatchingEngine, BundleError, Engine, EngineOptions, InputError, ProviderError
from fusionrt.cpu import CPUInfo, cpu_info
from fusionrt.export import ExportOptions, export_bundle
from fusionrt.export.recipes import TOLERANCE
from fusionrt.model import load_checkpoint
from tests.conftest import random_feed, torch_feed

ov = pytest.importorskip("openvino", reason="needs fusionrt[openvino]")
from fusionrt.engine.openvino_runtime import OpenVINOOptions, OpenVINORuntime  # noqa: E402

HAS_BF16 = cpu_info().bf16
TEXTS = ["what a lovely picture", "this scene looks awful to me", "", "great"]
NO_BF16 = CPUInfo("a CPU without bf16", "x86_64", ("avx2", "avx512f", "avx512_vnni"))


@pytest.fixture(scope="module")
def ov_bundles(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("ov_bundles")
    precisions = ["fp32", "int8"] + (["bf16"] if HAS_BF16 else [])
    return {
        p: export_bundle(tiny_checkpoint, root / p, ExportOptions(precision=p, target="openvino", max_batch_size=4, accept_small_eval_set=True), progress=False)
        for p in precisions
    }


def _torch(ckpt, feed):
    with torch.inference_mode():
        out = ckpt.model(**torch_feed(ckpt, feed))
    return out.logits.numpy(), out.modality_weights.numpy()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_bundle_matches_pytorch_within_its_tolerance(precision, ov_bundles, tiny_checkpoint):
    if precision not in ov_bundles:
        pytest.skip(f"this CPU ({cpu_info().model}) has no bf16")
    engine = Engine.from_bundle(ov_bundles[precision], intra_op_num_threads=2)
    expected = "f32" if precision == "fp32" else "bf16"
    assert engine.providers == {g: f"OpenVINO CPU ({expected})" for g in ("text_encoder", "image_encoder", "fusion_head")}
    ckpt = load_checkpoint(tiny_checkpoint)
    rng = np.random.default_rng(3)
    for batch, seq in [(1, 5), (3, 17), (4, 24)]:
        feed = random_feed(rng, batch, seq, ckpt.config.text_config["vocab_size"], hw=(32, 32))
        feed["attention_mask"][:, seq // 2 :] = 0  # right padding: the masks issue, on this runtime too
        out = engine.run(feed)
        logits, weights = _torch(ckpt, feed)
        assert out["logits"].shape == logits.shape and out["modality_weights"].shape == weights.shape
        np.testing.assert_allclose(out["logits"], logits, atol=TOLERANCE[precision], rtol=0)
        np.testing.assert_allclose(out["modality_weights"], weights, atol=TOLERANCE[precision], rtol=0)
    manifest_validation = engine.bundle.manifest.validation.to_dict()
    assert manifest_validation["runtime"] == "openvino"
    assert set(manifest_validation["placements"].values()) == {f"OpenVINO CPU ({expected})"}


def test_int8_bundle_runs_int8_on_openvino_like_onnxruntime(ov_bundles, photo_dir):
    images = sorted(photo_dir.glob("*.png"))[:4]
    on_ov = Engine.from_bundle(ov_bundles["int8"], intra_op_num_threads=2)
    assert on_ov.providers["image_encoder"].startswith("OpenVINO CPU (int8, float ops ")
    assert on_ov.providers["fusion_head"] == "OpenVINO CPU (f32)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exported for openvino, run on ONNX Runtime here on purpose
        on_ort = Engine.from_bundle(ov_bundles["int8"], providers="CPUExecutionProvider", intra_op_num_threads=2)
    a, b = on_ov.predict(TEXTS, images), on_ort.predict(TEXTS, images)
    assert [p.label for p in a] == [p.label for p in b]
    # the same QDQ graph on two runtimes: INT8 rounding differs, the probabilities barely
    assert max(abs(x.probabilities[k] - y.probabilities[k]) for x, y in zip(a, b) for k in x.probabilities) < 0.05


def test_predict_errors_and_batching_on_openvino(ov_bundles, photo_dir):
    images = sorted(photo_dir.glob("*.png"))[:4]
    engine = Engine.from_bundle(ov_bundles["fp32"], intra_op_num_threads=2)
    results = engine.predict(TEXTS, images[:3] + [b"not an image"], errors="return")
    assert isinstance(results[3], InputError) and results[3].index == 3 and results[0].label in engine.labels
    expected = engine.predict(TEXTS, images)
    out: dict = {}
    with BatchingEngine(engine, max_queue_delay_microseconds=20_000) as batcher:
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, batcher.submit(TEXTS[i], images[i]).result())) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i in range(4):
        assert out[i].label == expected[i].label
        assert out[i].probabilities == pytest.approx(expected[i].probabilities, abs=1e-5)


def test_providers_choose_the_runtime(ov_bundles, tiny_bundle, monkeypatch):
    # a cpu-target bundle stays on ONNX Runtime under "auto"; "OpenVINO" asks for OpenVINO by name
    assert Engine.from_bundle(tiny_bundle).providers["text_encoder"] == "CPUExecutionProvider"
    with pytest.warns(RuntimeWarning, match="exported for target 'cpu'"):
        assert Engine.from_bundle(tiny_bundle, providers="OpenVINO").providers["text_encoder"] == "OpenVINO CPU (f32)"
    # the first available name wins, as in ONNX Runtime's provider lists
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert Engine.from_bundle(ov_bundles["fp32"], providers="CPUExecutionProvider,OpenVINO").providers["fusion_head"] == "CPUExecutionProvider"
    from fusionrt.engine import engine as engine_module

    monkeypatch.setattr(engine_module, "openvino_available", lambda: False)
    with pytest.raises(ProviderError, match=r"pip install 'fusionrt\[openvino\]'"):
        Engine.from_bundle(ov_bundles["fp32"], providers="OpenVINO")
    with pytest.warns(RuntimeWarning, match="OpenVINO not available") as caught:
        engine = Engine.from_bundle(ov_bundles["fp32"], providers="OpenVINO,CPUExecutionProvider")
    assert engine.providers["text_encoder"] == "CPUExecutionProvider" and len(caught) == 1
    with pytest.warns(RuntimeWarning, match="exported for target 'openvino'"):
        assert Engine.from_bundle(ov_bundles["fp32"]).providers["text_encoder"] == "CPUExecutionProvider"  # auto, no openvino


def test_options_are_validated():
    for bad in [dict(inference_precision="fp8"), dict(performance_hint="FAST"), dict(num_streams=0), dict(inference_num_threads=True),
                dict(runtime_cache_capacity=-1), dict(seq_bucket=0), dict(max_seq_len=0)]:
        with pytest.raises(InputError, match="OpenVINOOptions"):
            OpenVINOOptions(**bad)
    config = OpenVINOOptions(inference_precision="f32", num_streams=2, inference_num_threads=3, cache_dir="/c").config("bf16")
    assert config == {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 2,
                      "INFERENCE_NUM_THREADS": 3, "CACHE_DIR": "/c", "CPU_RUNTIME_CACHE_CAPACITY": 64}
    assert "CPU_RUNTIME_CACHE_CAPACITY" not in OpenVINOOptions(runtime_cache_capacity=None).config("fp32")
    assert OpenVINOOptions().config("fp32")["INFERENCE_PRECISION_HINT"] == "f32"
    assert "INFERENCE_PRECISION_HINT" not in OpenVINOOptions().config("int8")  # the CPU's default for float ops


def test_cache_dir_is_reused_on_a_second_load(ov_bundles, tmp_path):
    cache = tmp_path / "ov_cache"
    options = EngineOptions(openvino=OpenVINOOptions(cache_dir=str(cache)))
    first = Engine.from_bundle(ov_bundles["fp32"], options=options)
    assert all(not c.get_property("LOADED_FROM_CACHE") for c in first.runtime.compiled.values())
    blobs = sorted(p.name for p in cache.iterdir())
    assert len(blobs) >= 3  # one compiled blob per graph
    second = Engine.from_bundle(ov_bundles["fp32"], options=options)
    assert all(c.get_property("LOADED_FROM_CACHE") for c in second.runtime.compiled.values())
    assert sorted(p.name for p in cache.iterdir()) == blobs
    feed = second.preprocess(TEXTS[:2], [np.zeros((40, 40, 3), np.uint8)] * 2)
    np.testing.assert_array_equal(first.run(feed)["logits"], second.run(feed)["logits"])


def test_an_unwritable_cache_dir_costs_the_cache_not_the_load(ov_bundles, tmp_path):
    """A cache folder that cannot be made (here under a file; a read-only home or bundle alike)
    failed the load as 'OpenVINO cannot compile <graph>', a BundleError, as if the bundle were
    damaged. Now a warning names it and the graphs compile without the cache, same answers."""
    (tmp_path / "a-file").write_text("")
    options = EngineOptions(openvino=OpenVINOOptions(cache_dir=str(tmp_path / "a-file" / "ov_cache")))
    with pytest.warns(RuntimeWarning, match=r"OpenVINO's cache_dir .*a-file/ov_cache is not writable .*running without that cache"):
        engine = Engine.from_bundle(ov_bundles["fp32"], options=options)
    feed = engine.preprocess(TEXTS[:2], [np.zeros((40, 40, 3), np.uint8)] * 2)
    np.testing.assert_array_equal(engine.run(feed)["logits"], Engine.from_bundle(ov_bundles["fp32"]).run(feed)["logits"])


def test_bf16_without_bf16_hardware_is_refused_or_labelled(ov_bundles, tiny_checkpoint, tmp_path, monkeypatch):
    import fusionrt.cpu
    from fusionrt.engine import openvino_runtime

    monkeypatch.setattr(fusionrt.cpu, "cpu_info", lambda: NO_BF16)
    monkeypatch.setattr(openvino_runtime, "cpu_info", lambda: NO_BF16)
    with pytest.raises(InputError, match="needs a CPU with AVX512-BF16 or AMX-BF16.*a CPU without bf16"):
        export_bundle(tiny_checkpoint, tmp_path / "b", ExportOptions(precision="text=bf16", target="openvino", accept_small_eval_set=True), progress=False)
    with pytest.raises(InputError, match="runs on --target openvino"):
        ExportOptions(precision="bf16", target="cpu")
    with pytest.raises(ProviderError, match="needs a CPU with AVX512-BF16"):
        OpenVINOOptions(inference_precision="bf16").config("fp32")
    assert OpenVINOOptions().precision_for("bf16") == "f32"  # a bf16 bundle here runs, and says, f32
    if "bf16" in ov_bundles:
        engine = Engine.from_bundle(ov_bundles["bf16"])
        assert set(engine.providers.values()) == {"OpenVINO CPU (f32)"}


def test_int8_dynamic_graphs_do_not_compile_on_openvino(tiny_checkpoint, tmp_path):
    with pytest.raises(InputError, match=r"--target openvino takes .* not 'int8-dynamic'"):
        ExportOptions(precision="int8-dynamic", target="openvino")
    bundle = export_bundle(tiny_checkpoint, tmp_path / "dyn", ExportOptions(precision="int8-dynamic", max_batch_size=4, accept_small_eval_set=True), progress=False)
    with pytest.raises(BundleError, match="OpenVINO cannot compile .*text_encoder.onnx"):
        OpenVINORuntime({"text_encoder": bundle / "text_encoder.onnx"}, {"text_encoder": "int8-dynamic"}).activate()


def test_concurrent_calls_on_openvino_get_their_own_answers(ov_bundles, photo_dir):
    """Each call takes its own infer request from the pool: threads calling at once get the answer
    they get alone."""
    from concurrent.futures import ThreadPoolExecutor

    images = sorted(photo_dir.glob("*.png"))[:4]
    engine = Engine.from_bundle(ov_bundles["fp32"], intra_op_num_threads=1)
    alone = [engine.predict([TEXTS[i]], [images[i]])[0] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda i: engine.predict([TEXTS[i % 4]], [images[i % 4]])[0], range(32)))
    for i, p in enumerate(together):
        assert p.probabilities == pytest.approx(alone[i % 4].probabilities, abs=1e-6)


def test_outputs_are_the_callers_and_inputs_are_left_alone(ov_bundles):
    """The runtime reads the feed's arrays in place and returns views of its request's buffers
    only to copy them: a call's outputs do not change when the next call (same request, other
    inputs) runs, and the feed is not written to."""
    engine = Engine.from_bundle(ov_bundles["fp32"], intra_op_num_threads=1)
    rng = np.random.default_rng(0)
    first, second = (random_feed(rng, 2, 5, 100) for _ in range(2))
    kept = {k: v.copy() for k, v in first.items()}
    out = engine.run(first)
    want = {k: v.copy() for k, v in out.items()}
    other = engine.run(second)
    assert not np.allclose(other["logits"], want["logits"])  # the second call did compute something else
    for k in want:
        np.testing.assert_array_equal(out[k], want[k])
    for k in kept:
        np.testing.assert_array_equal(first[k], kept[k])


def test_long_long_and_strided_feeds_give_the_same_answers(ov_bundles):
    """Feeds OpenVINO's shared memory mode cannot take as they are (``long long`` ids, the same
    bytes as int64; a non-contiguous pixel array) give the answers of the plain feed, to the bit."""
    engine = Engine.from_bundle(ov_bundles["fp32"], intra_op_num_threads=1)
    feed = random_feed(np.random.default_rng(1), 2, 5, 100)
    odd = {k: v.astype(np.longlong) if v.dtype == np.int64 else v for k, v in feed.items()}
    assert odd["input_ids"].dtype.char == "q" != feed["input_ids"].dtype.char
    odd["pixel_values"] = np.repeat(feed["pixel_values"], 2, axis=-1)[..., ::2]  # the same values, strided
    assert not odd["pixel_values"].flags.c_contiguous
    want, got = engine.run(feed), engine.run(odd)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
