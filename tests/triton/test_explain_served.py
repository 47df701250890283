"""Explanations served by the real tritonserver (python backend, tiny bundle): equal to the
in-process Engine's, and computed only for requests that name EXPLANATION."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fusionrt import Engine

pytestmark = pytest.mark.slow

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg")
TEXTS = ("what a lovely picture", "this scene looks awful to me, honestly", "", "great " * 40)
# FP32 end to end; the text is padded to a length bucket on the server and to the batch's longest
# in process, which moves float32 sums in their last bits.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    return Engine.from_bundle(tiny_bundle, intra_op_num_threads=1)


def _explain_count(client) -> int:
    return client.statistics("explain")["explain"]["inference_count"]


def test_served_explanations_equal_the_engines(client, engine, photo_dir):
    images = [photo_dir / p for p in PHOTOS]
    served, local = client.explain(list(TEXTS), images), engine.explain(list(TEXTS), images)
    for s, e in zip(served, local):
        assert s.prediction.label == e.prediction.label and s.explained_label == e.explained_label
        assert abs(s.prediction.score - e.prediction.score) < TOLERANCE
        assert s.words == e.words and s.word_spans == e.word_spans and s.geometry == e.geometry
        np.testing.assert_allclose(s.word_relevance, e.word_relevance, atol=TOLERANCE)
        np.testing.assert_allclose(s.region_relevance, e.region_relevance, atol=TOLERANCE)
        assert s.modality_weights == pytest.approx(e.modality_weights, abs=TOLERANCE)
        np.testing.assert_allclose(s.heat_map(), e.heat_map(), atol=10 * TOLERANCE)


def test_only_requests_naming_the_explanation_run_it(client, photo_dir):
    """predict names its four outputs: the ensemble skips the explain step (its count stays);
    explain names EXPLANATION too and the step runs once per item."""
    images = [photo_dir / p for p in PHOTOS]
    before = _explain_count(client)
    first = client.predict(list(TEXTS), images)
    time.sleep(0.5)  # the server counts a request after its response
    assert _explain_count(client) == before
    client.explain(list(TEXTS), images)
    deadline = time.monotonic() + 5
    while _explain_count(client) < before + len(TEXTS) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _explain_count(client) == before + len(TEXTS)
    again = client.predict(list(TEXTS), images)  # batch-mates move float32 sums in their last bits
    assert [p.label for p in again] == [p.label for p in first]
    assert max(abs(a.probabilities[k] - b.probabilities[k]) for a, b in zip(again, first) for k in a.probabilities) < TOLERANCE
