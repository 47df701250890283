"""The one batch preprocessor (fusionrt.preprocessing.BatchPreprocessor) that Engine.predict,
BatchingEngine and the Triton preprocess model share: per-item errors by index, groups decoded
together but tokenized apart, the in-place pixel buffer, and Engine.prepare/infer == predict."""

from __future__ import annotations

import numpy as np
import pytest

from fusionrt import Engine, InputError
from fusionrt.preprocessing import PreparedBatch

TEXTS = ["what a lovely picture", "this scene looks awful to me and to everyone who saw it", "", "great"]


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    with Engine.from_bundle(tiny_bundle, intra_op_num_threads=1, decode_threads=2) as e:
        yield e


@pytest.fixture(scope="module")
def images(photo_dir):
    return sorted(photo_dir.glob("*.png"))[:4]


def test_prepare_then_infer_is_predict(engine, images):
    prepared = engine.prepare(TEXTS, images)
    assert isinstance(prepared, PreparedBatch) and prepared.rows == [0, 1, 2, 3] and prepared.first_error() is None
    assert prepared.feed["pixel_values"].shape == (4,) + engine.preprocessor.pixel_shape
    assert prepared.feed["input_ids"].dtype == np.int64 and prepared.truncated.shape == (4,)
    np.testing.assert_array_equal(prepared.feed["input_ids"], engine.preprocess(TEXTS, images)["input_ids"])
    via_steps = engine.infer(prepared)
    direct = engine.predict(TEXTS, images)
    for a, b in zip(via_steps, direct):
        assert a.label == b.label
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)


def test_bad_items_keep_their_slot_and_index(engine, images):
    texts = list(TEXTS)
    texts[2] = 7
    bad_images = list(images)
    bad_images[3] = b"not an image"
    prepared = engine.prepare(texts, bad_images, offset=10)
    assert prepared.rows == [0, 1]
    assert isinstance(prepared.items[2], InputError) and prepared.items[2].item == ("texts", 12)
    assert isinstance(prepared.items[3], InputError) and prepared.items[3].item == ("images", 13)
    assert prepared.feed["pixel_values"].shape[0] == 2 and prepared.feed["input_ids"].shape[0] == 2
    # the good rows are the same tensors they are alone
    alone = engine.prepare(texts[:2], images[:2])
    np.testing.assert_array_equal(prepared.feed["pixel_values"], alone.feed["pixel_values"])
    results = engine.infer(prepared)
    assert isinstance(results[2], InputError) and isinstance(results[3], InputError)
    with pytest.raises(InputError, match=r"texts\[12\] is int"):
        engine.prepare(texts, bad_images, offset=10, errors="raise")


def test_groups_are_decoded_together_and_tokenized_apart(engine, images):
    pre = engine.preprocessor
    groups = [([TEXTS[0]], [images[0]]), ([TEXTS[1], TEXTS[3]], [images[1], b"\x89PNG broken"]), ([TEXTS[3]], [images[3]])]
    first, second, third = pre.prepare_groups(groups, buckets=(3, 6, 12, 24), names=("TEXT", "IMAGE"))
    assert first.first_error() is None and third.first_error() is None
    assert str(second.items[1]).startswith("IMAGE[1]: ") and second.rows == [0]  # named by its index in its request
    # each group padded to its own bucket: a short caption is not padded to its neighbour's length
    assert third.feed["input_ids"].shape[1] <= second.feed["input_ids"].shape[1]
    assert {first.feed["input_ids"].shape[1], third.feed["input_ids"].shape[1]} <= {3, 6, 12, 24}
    # pixels equal the single-item decode, and the groups share one buffer (no stacking copy)
    np.testing.assert_array_equal(first.feed["pixel_values"][0], pre.decode([images[0]])[0])
    assert first.feed["pixel_values"].base is not None and first.feed["pixel_values"].base is third.feed["pixel_values"].base


def test_counts_and_errors_word_are_checked(engine, images):
    with pytest.raises(InputError, match="2 texts and 1 images"):
        engine.prepare(TEXTS[:2], images[:1])
    with pytest.raises(InputError, match="errors must be"):
        engine.preprocessor.prepare(TEXTS[:1], images[:1], errors="ignore")
    with pytest.raises(InputError, match="decode_threads must be >= 0"):
        type(engine.preprocessor)(engine.tokenizer, engine.image_processor, (3, 32, 32), decode_threads=-1)
