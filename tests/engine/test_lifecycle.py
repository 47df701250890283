"""An Engine and a BatchingEngine as services hold them: made before a fork (gunicorn --preload,
multiprocessing's fork start method), closed while other threads predict, dropped unclosed.

Each forked child runs under a deadline (tests.forking.in_forked_child) and is killed past it, so
a hang fails the test instead of stopping the suite."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest

from fusionrt import BatchingEngine, Engine, EngineClosedError
from tests.forking import in_forked_child

TEXTS = ["a red car on a road", "two cats asleep", "", "a page of text, printed small", "great", "awful weather",
         "a rocket", "coffee"]


@pytest.fixture(scope="module")
def images(photo_dir):
    return sorted(photo_dir.glob("*.png"))[:4] * 2


def test_an_engine_warmed_before_fork_predicts_in_the_child(tiny_bundle, images):
    """The decoding pool's threads are not copied by fork: the child's pool (idle workers on
    paper) started none and a batch of several images waited forever. Same logits as the parent."""
    with Engine.from_bundle(tiny_bundle, intra_op_num_threads=1, decode_threads=4) as engine:
        expected = engine.logits(TEXTS, images)  # starts the pool's threads in the parent
        got = in_forked_child(lambda: engine.logits(TEXTS, images))
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(engine.logits(TEXTS, images), expected)  # the parent's pool still works


def test_a_batching_engine_made_before_fork_answers_in_the_child(tiny_bundle, images):
    """Its collector and runner threads are not copied by fork: the child's requests never
    resolved (the example service under gunicorn --preload timed out). Its threads start again
    at the child's first request."""
    with Engine.from_bundle(tiny_bundle, intra_op_num_threads=1, decode_threads=2) as engine:
        expected = [p.probabilities for p in engine.predict(TEXTS[:3], images[:3])]
        with BatchingEngine(engine, max_queue_delay_microseconds=1000) as batcher:
            assert batcher.submit(TEXTS[0], images[0]).result(30).probabilities == pytest.approx(expected[0], abs=1e-6)

            def in_child():
                futures = [batcher.submit(t, i) for t, i in zip(TEXTS[:3], images[:3])]
                return [f.result(30).probabilities for f in futures]

            for got, want in zip(in_forked_child(in_child), expected):
                assert got == pytest.approx(want, abs=1e-6)
            assert batcher.submit(TEXTS[1], images[1]).result(30).probabilities == pytest.approx(expected[1], abs=1e-6)


def test_close_while_threads_predict_fails_them_only_with_engine_closed_error(tiny_bundle, images):
    """Calls in progress finish or raise EngineClosedError (a bare RuntimeError 'cannot schedule
    new futures after shutdown' before); after close every call raises it (they went on decoding
    serially)."""
    engine = Engine.from_bundle(tiny_bundle, intra_op_num_threads=1, decode_threads=4)
    expected = engine.logits(TEXTS, images)
    outcomes: list = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                outcomes.append(engine.logits(TEXTS, images))
            except Exception as exc:  # noqa: BLE001 (counted below)
                outcomes.append(exc)
                return

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    engine.close()
    stop.set()
    for t in threads:
        t.join(30)
    errors = [o for o in outcomes if isinstance(o, Exception)]
    answers = [o for o in outcomes if not isinstance(o, Exception)]
    assert answers and all(np.array_equal(a, expected) for a in answers)
    assert all(isinstance(e, EngineClosedError) for e in errors), {type(e).__name__ for e in errors}
    for call in (lambda: engine.predict(TEXTS[:1], images[:1]), lambda: engine.explain(TEXTS[:1], images[:1]),
                 lambda: engine.run(engine.preprocessor.tokenizer(TEXTS[:1])[0]), lambda: BatchingEngine(engine).submit("a", images[0]).result(10)):
        with pytest.raises(EngineClosedError, match="the Engine is closed; load the bundle again"):
            call()
    engine.close()  # idempotent


def test_a_batching_engine_dropped_unclosed_stops_its_threads(tiny_bundle, images):
    """Its threads held it, so it and its Engine were never collected: 50 reloads of a bundle
    in a service grew to 105 threads and 4.3 GB. Now they finish the queued requests and end."""
    with Engine.from_bundle(tiny_bundle, intra_op_num_threads=1, decode_threads=2) as engine:
        batcher = BatchingEngine(engine, max_queue_delay_microseconds=100_000)
        futures = [batcher.submit(t, i) for t, i in zip(TEXTS[:3], images[:3])]
        threads = batcher._shared.threads
        assert len(threads) == 2 and all(t.is_alive() and t.name.startswith("fusionrt-batch") for t in threads)
        del batcher
        gc.collect()
        assert all(f.result(30).label for f in futures)  # queued before the drop: answered
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads)


def test_pickling_an_engine_says_to_load_the_bundle_in_each_process(tiny_bundle):
    """multiprocessing's spawn pickles its arguments: ONNX Runtime's own 'cannot pickle
    InferenceSession' said nothing of what to do."""
    import pickle

    with Engine.from_bundle(tiny_bundle, intra_op_num_threads=1) as engine:
        with pytest.raises(TypeError, match=r"an Engine cannot be pickled .*load the bundle in each process, Engine.from_bundle\("):
            pickle.dumps(engine)
        with BatchingEngine(engine) as batcher:
            with pytest.raises(TypeError, match="a BatchingEngine cannot be pickled"):
                pickle.dumps(batcher)


def test_an_onnx_runtime_bundle_does_not_import_openvino(tiny_bundle):
    """providers='auto' imported openvino to learn whether it was there, even for a bundle with
    no OpenVINO graph: 22 MB, 0.18 s, and OpenVINO's telemetry files in the home folder."""
    import subprocess
    import sys

    code = (f"import sys; from fusionrt import Engine; e = Engine.from_bundle({str(tiny_bundle)!r}); "
            "print(e.providers['text_encoder'], 'openvino' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["CPUExecutionProvider", "False"]
