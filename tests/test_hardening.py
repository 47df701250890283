"""Hostile input, corrupt artifacts and sustained load: each item answered or failed alone."""

import re
import threading
from pathlib import Path

import numpy as np
import pytest

from fusionrt import Engine, InputError

SRC = Path(__file__).resolve().parents[1] / "src" / "fusionrt"


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    return Engine.from_bundle(tiny_bundle, intra_op_num_threads=1)


@pytest.mark.parametrize(
    "text",
    ["", "   \t\n ", "word " * 10_000, "猫がかわいい 😺🚀 مرحبا بالعالم שלום", "ctrl\x00\x01\x07\x1b[31mred\x7f"],
    ids=["empty", "whitespace", "10k-words", "cjk-emoji-rtl", "control-chars"],
)
def test_any_text_is_answered(engine, photo_dir, text):
    (p,) = engine.predict([text], [photo_dir / "coffee.png"])
    assert p.label in engine.labels and 0 < p.score <= 1
    assert p.truncated == (len(text) > 1000)


def test_bad_item_in_a_batch_of_4_fails_alone(engine, photo_dir):
    images = [photo_dir / "astronaut.png", np.full((5, 5, 3), np.nan), photo_dir / "logo.png", photo_dir / "camera.png"]
    results = engine.predict(["a", "b", "c", "d"], images, errors="return")
    assert [type(r).__name__ for r in results] == ["Prediction", "InputError", "Prediction", "Prediction"]
    assert "images[1]" in str(results[1]) and "float64" in str(results[1])


def test_a_text_utf8_cannot_encode_fails_alone(engine, photo_dir):
    results = engine.predict(["ok", "lone \ud800 surrogate", 7], [photo_dir / "coffee.png"] * 3, errors="return")
    assert type(results[0]).__name__ == "Prediction"
    assert isinstance(results[1], InputError) and "texts[1] is not valid Unicode text" in str(results[1])
    assert isinstance(results[2], InputError) and "texts[2] is int; expected str" in str(results[2])
    with pytest.raises(InputError, match=r"texts\[1\] is not valid Unicode"):
        engine.predict(["ok", "\udfff"], [photo_dir / "coffee.png"] * 2)


def test_no_pickle_and_no_remote_code_anywhere():
    source = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    assert "trust_remote_code=True" not in source
    for call in re.findall(r"torch\.load\([^)]*\)", source):
        assert "weights_only=True" in call, call
    assert "import pickle" not in source and "pickle.load" not in source


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.mark.slow
def test_8_threads_x_200_calls_no_errors_equal_results_bounded_memory(engine, photo_dir):
    images = [photo_dir / n for n in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "logo.png")]
    jobs = [(f"text number {i} " * (i % 5), images[i % 6]) for i in range(12)]
    serial = [engine.logits([t], [p]) for t, p in jobs]
    for _ in range(20):  # warm-up
        engine.logits([jobs[0][0]], [jobs[0][1]])
    rss_warm = _rss_bytes()
    errors, mismatches = [], []

    def worker(k):
        for n in range(200):
            j = (k * 200 + n) % len(jobs)
            try:
                got = engine.logits([jobs[j][0]], [jobs[j][1]])
                if not np.allclose(got, serial[j], atol=1e-6, rtol=0):
                    mismatches.append(j)
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert errors == [] and mismatches == []
    assert _rss_bytes() <= 1.25 * rss_warm
