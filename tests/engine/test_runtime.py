"""Providers and their options, fallback, IO binding, the decoding pool, batching, thread safety."""

import asyncio
import io
import logging
import threading

import numpy as np
import onnxruntime
import pytest
from PIL import Image

from fusionrt import BatchingEngine, Engine, EngineOptions, InputError, ProviderError
from fusionrt.bundle import Bundle
from fusionrt.engine import CUDAOptions, EngineClosedError, SessionOptions, TensorRTOptions
from fusionrt.engine.engine import provider_options_for
from fusionrt.engine.batching import BATCH_SIZES_KEPT
from fusionrt.preprocessing import ImageProcessor
from tests.conftest import random_feed

TEXTS = ["what a lovely picture", "this scene looks awful to me", "great", "ugly view here", "i find the poster gloomy"]


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    with Engine.from_bundle(tiny_bundle, intra_op_num_threads=1) as e:
        yield e


@pytest.fixture(scope="module")
def photos(photo_dir):
    return [photo_dir / n for n in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "logo.png")]


def test_tensorrt_options_profiles_and_caches(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    opts = provider_options_for(bundle, "text_encoder", EngineOptions())["TensorrtExecutionProvider"]
    assert opts["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1,token_type_ids:1x1"
    assert opts["trt_profile_opt_shapes"] == "input_ids:2x24,attention_mask:2x24,token_type_ids:2x24"
    assert opts["trt_profile_max_shapes"] == "input_ids:4x24,attention_mask:4x24,token_type_ids:4x24"
    assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == str(tiny_bundle / "trt_cache")
    assert opts["trt_fp16_enable"] == "0" and opts["trt_int8_enable"] == "0"
    head = provider_options_for(bundle, "fusion_head", EngineOptions())["TensorrtExecutionProvider"]
    assert head["trt_profile_max_shapes"] == "text_features:4x24x32,attention_mask:4x24,image_features:4x16x16"
    image = TensorRTOptions(cache_dir="/c", opt_batch_size=3, workspace_bytes=1 << 28).provider_options(
        bundle.manifest.graphs["image_encoder"], "int8", 4, 24, "/c"
    )
    assert image["trt_profile_opt_shapes"] == "pixel_values:3x32x32x3"
    assert image["trt_int8_enable"] == "1" and image["trt_max_workspace_size"] == str(1 << 28)
    assert TensorRTOptions(fp16=True).provider_options(bundle.manifest.graphs["image_encoder"], "fp32", 4, 24, "/c")["trt_fp16_enable"] == "1"
    assert not (tiny_bundle / "trt_cache").exists()  # made only where TensorRT runs


def test_tensorrt_cache_folder_is_made_where_tensorrt_runs_and_left_out_where_it_cannot_be(tiny_bundle, tmp_path):
    """A read-only bundle (its default trt_cache) would fail TensorRT's engine build at load."""
    bundle = Bundle.load(tiny_bundle)
    cache = tmp_path / "trt"
    opts = provider_options_for(bundle, "text_encoder", EngineOptions(tensorrt=TensorRTOptions(cache_dir=str(cache))), tensorrt=True)
    assert cache.is_dir() and opts["TensorrtExecutionProvider"]["trt_engine_cache_path"] == str(cache)
    (tmp_path / "a-file").write_text("")
    blocked = EngineOptions(tensorrt=TensorRTOptions(cache_dir=str(tmp_path / "a-file" / "trt")))
    with pytest.warns(RuntimeWarning, match=r"TensorRT's engine cache folder .* is not writable .*running without that cache"):
        opts = provider_options_for(bundle, "text_encoder", blocked, tensorrt=True)["TensorrtExecutionProvider"]
    assert (opts["trt_engine_cache_enable"], opts["trt_timing_cache_enable"]) == ("0", "0")


def test_cuda_and_cpu_options():
    assert CUDAOptions(device_id=1, gpu_mem_limit_bytes=1 << 30).provider_options() == {
        "device_id": "1", "arena_extend_strategy": "kNextPowerOfTwo", "cudnn_conv_algo_search": "EXHAUSTIVE",
        "do_copy_in_default_stream": "1", "gpu_mem_limit": str(1 << 30),
    }
    so = SessionOptions(intra_op_num_threads=2, inter_op_num_threads=1, execution_mode="parallel", allow_spinning=False).build()
    assert so.intra_op_num_threads == 2 and so.execution_mode == onnxruntime.ExecutionMode.ORT_PARALLEL
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    for bad in (dict(cudnn_conv_algo_search="FAST"), dict(device_id=-1)):
        with pytest.raises(InputError):
            CUDAOptions(**bad)
    with pytest.raises(InputError, match="execution_mode"):
        SessionOptions(execution_mode="async")


@pytest.mark.parametrize("how", ["argument", "options.cpu", "options.openvino"])
def test_more_threads_than_usable_cores_warns_once_and_answers_the_same(how, tiny_bundle, monkeypatch, photo_dir):
    """Threads per operator above the process's cores (a container's cpuset, taskset) take turns
    on them: one RuntimeWarning naming both numbers; it was accepted silently. Logits equal a
    1-thread Engine's within 1e-6 (ONNX Runtime splits sums across threads)."""
    import warnings

    import fusionrt.cpu
    from fusionrt.engine.openvino_runtime import OpenVINOOptions

    monkeypatch.setattr(fusionrt.cpu, "usable_cores", lambda: 2)
    texts, images = ["a cat", "a rocket"], [photo_dir / "chelsea.png", photo_dir / "rocket.jpg"]
    kwargs = {"argument": dict(intra_op_num_threads=3), "options.cpu": dict(options=EngineOptions(cpu=SessionOptions(intra_op_num_threads=3))),
              "options.openvino": dict(options=EngineOptions(openvino=OpenVINOOptions(inference_num_threads=3)))}[how]
    with pytest.warns(RuntimeWarning, match=r"^3 threads per operator is more than the 2 cores this process may use") as record:
        engine = Engine.from_bundle(tiny_bundle, **kwargs)
    assert sum("threads per operator" in str(w.message) for w in record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at the cores' number
        with Engine.from_bundle(tiny_bundle, intra_op_num_threads=2) as two, engine:
            np.testing.assert_allclose(engine.logits(texts, images), two.logits(texts, images), atol=1e-6)


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA reported as available, but its sessions fail to initialize (as on a broken driver)."""
    real = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])

    def session(path, sess_options=None, providers=None, provider_options=None, **kw):
        if providers and providers[0] == "CUDAExecutionProvider":
            assert provider_options[0]["cudnn_conv_algo_search"] == "EXHAUSTIVE"
            raise RuntimeError("CUDA driver version is insufficient")
        return real(path, sess_options=sess_options, providers=providers, provider_options=provider_options, **kw)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)


def test_provider_fallback_with_warning(fake_cuda, tiny_bundle, caplog):
    with caplog.at_level(logging.WARNING, logger="fusionrt.engine"):
        e = Engine.from_bundle(tiny_bundle, providers="auto")
    assert set(e.providers.values()) == {"CPUExecutionProvider"}
    assert sum("CUDAExecutionProvider failed" in r.message for r in caplog.records) == 3  # one per graph


def test_strict_raises_instead_of_falling_back(fake_cuda, tiny_bundle):
    with pytest.raises(ProviderError, match="CUDAExecutionProvider failed.*insufficient"):
        Engine.from_bundle(tiny_bundle, providers="auto", strict=True)


def test_io_binding_path_matches_plain_session_runs(engine):
    feed = random_feed(np.random.default_rng(5), 3, 11, 150)
    bound = engine.runtime.infer(feed)
    env = dict(feed)
    for name in engine.runtime.graphs:  # one plain session.run per graph
        env.update(engine.runtime.infer_graph(name, env))
    for k in ("text_features", "image_features", "logits", "modality_weights"):
        np.testing.assert_array_equal(bound[k], env[k])
    assert set(engine.runtime.chain.devices.values()) == {"cpu"}


def test_a_runtime_checks_its_state(tiny_bundle):
    from fusionrt import FusionrtInternalError
    from fusionrt.engine.loaders import Placement
    from fusionrt.engine.ort_runtime import OnnxRuntime
    from fusionrt.engine.session import SessionOptions

    paths = {n: tiny_bundle / f"{n}.onnx" for n in ("text_encoder", "image_encoder", "fusion_head")}
    runtime = OnnxRuntime(paths, ["CPUExecutionProvider"], SessionOptions(intra_op_num_threads=1))
    feed = random_feed(np.random.default_rng(6), 2, 7, 150)
    with pytest.raises(FusionrtInternalError, match="before activate"):
        runtime.infer(feed)
    with runtime:
        assert runtime.placements == dict.fromkeys(paths, Placement("onnxruntime", "CPUExecutionProvider", "fp32"))
        out = runtime.infer(feed, outputs=["logits"])
        assert list(out) == ["logits"] and out["logits"].shape[0] == 2
        with pytest.raises(FusionrtInternalError, match="already active"):
            runtime.activate()
    assert not runtime.is_active and runtime.chain is None
    with pytest.raises(FusionrtInternalError, match="after deactivate"):
        runtime.infer(feed)


def test_decode_pool_gives_identical_pixels(tiny_bundle, photos):
    serial = Engine.from_bundle(tiny_bundle, decode_threads=0)
    with Engine.from_bundle(tiny_bundle, decode_threads=4) as pooled:
        a = pooled.preprocess(["x"] * 6, photos)["pixel_values"]
        results = pooled.predict(["x"] * 6, photos)
    np.testing.assert_array_equal(a, serial.preprocess(["x"] * 6, photos)["pixel_values"])
    assert [r.probabilities for r in results] == [r.probabilities for r in serial.predict(["x"] * 6, photos)]


def test_jpeg_draft_mode_is_close_and_on_by_default():
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (48, 64, 3)), np.ones((32, 32, 1))).astype(np.uint8)  # 1536x2048
    buf = io.BytesIO()
    Image.fromarray(smooth).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    exact = ImageProcessor(jpeg_draft=False).process_one(data)
    draft = ImageProcessor().process_one(data)
    assert draft.shape == exact.shape
    assert 0 < np.abs(draft - exact).mean() < 0.05
    assert "jpeg_draft" not in ImageProcessor().to_dict()  # the default: a plain Hugging Face config
    assert ImageProcessor.from_dict(ImageProcessor(jpeg_draft=False).to_dict()).jpeg_draft is False


def test_batching_matches_unbatched(engine, photos):
    texts = TEXTS + TEXTS[:1]
    with BatchingEngine(engine, max_batch_size=4, max_queue_delay_microseconds=50_000) as batcher:
        futures = [batcher.submit(t, p) for t, p in zip(texts, photos)]
        batched = [f.result(timeout=60) for f in futures]
        assert max(batcher.batch_sizes) > 1  # requests were merged
        assert sum(batcher.batch_sizes) == len(texts) and batcher.batch_sizes.maxlen == BATCH_SIZES_KEPT  # bounded for a service's life
    for b, t, p in zip(batched, texts, photos):
        (single,) = engine.predict([t], [p])
        assert b.label == single.label
        np.testing.assert_allclose(list(b.probabilities.values()), list(single.probabilities.values()), atol=1e-5)


def test_batching_bad_item_fails_alone_and_async_infer(engine, photos):
    with BatchingEngine(engine, max_queue_delay_microseconds=20_000) as batcher:
        good, bad = batcher.submit("great", photos[0]), batcher.submit("great", b"\x00junk")
        bad_text = batcher.submit(b"bytes", photos[1])
        assert good.result(timeout=60).label in engine.labels
        with pytest.raises(InputError, match=r"^image: .*not a decodable image"):  # no index in the internal batch
            bad.result(timeout=60)
        with pytest.raises(InputError, match=r"^text is bytes; expected str"):
            bad_text.result(timeout=60)

        async def main():
            return await asyncio.gather(*(batcher.infer(t, p) for t, p in zip(TEXTS, photos)))

        preds = asyncio.run(main())
        assert [p.label for p in preds] == [p.label for p in engine.predict(TEXTS, photos[:5])]


def test_batching_engine_batches_at_most_the_bundle_max_batch_size(engine):
    """A larger max_batch_size was accepted: batches beyond the bundle's, which TensorRT's
    profiles do not cover."""
    for size in (0, engine.max_batch_size + 1):
        with pytest.raises(InputError, match=rf"max_batch_size must be 1..{engine.max_batch_size} \(the bundle's max_batch_size\), got {size}"):
            BatchingEngine(engine, max_batch_size=size)
    with BatchingEngine(engine, max_batch_size=engine.max_batch_size) as batcher:
        assert batcher.max_batch_size == engine.max_batch_size


def test_close_fails_pending_futures_cleanly(engine, photos):
    batcher = BatchingEngine(engine, max_batch_size=1, max_queue_delay_microseconds=0)
    futures = [batcher.submit("great", photos[i % 6]) for i in range(60)]
    batcher.close()
    outcomes = [f.exception(timeout=60) for f in futures]  # every future finished, none hangs
    closed = [o for o in outcomes if isinstance(o, EngineClosedError)]
    assert closed and all(o is None or isinstance(o, EngineClosedError) for o in outcomes)
    assert "closed before this request ran" in str(closed[0])
    with pytest.raises(EngineClosedError):
        batcher.submit("late", photos[0])


def test_one_engine_shared_by_8_threads_equals_serial(engine, photos):
    jobs = [([TEXTS[i % 5], TEXTS[(i + 2) % 5]], [photos[i % 6], photos[(i + 3) % 6]]) for i in range(24)]
    serial = [engine.logits(t, p) for t, p in jobs]
    results: list = [None] * len(jobs)
    errors = []

    def worker(k):
        try:
            for j in range(k, len(jobs), 8):
                results[j] = engine.logits(*jobs[j])
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for a, b in zip(results, serial):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
