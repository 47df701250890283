import json

import pytest

from fusionrt import InputError
from fusionrt.model.data import LABELS, read_jsonl, make_synthetic_dataset
from fusionrt.model.train import TrainOptions, classification_metrics, split


def test_synthetic_dataset_is_deterministic(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", num_samples=8, seed=3, image_size=48)
    b = make_synthetic_dataset(tmp_path / "b", num_samples=8, seed=3, image_size=48)
    assert a.read_text() == b.read_text()
    for ex_a, ex_b in zip(read_jsonl(a), read_jsonl(b)):
        assert ex_a.image.read_bytes() == ex_b.image.read_bytes()
    assert sorted({ex.label for ex in read_jsonl(a)}) == sorted(LABELS)


def test_training_writes_splits_and_metrics(tiny_checkpoint, tiny_data):
    metrics = json.loads((tiny_checkpoint / "metrics.json").read_text())
    held = read_jsonl(tiny_checkpoint / "heldout.jsonl")
    calib = read_jsonl(tiny_checkpoint / "calibration.jsonl")
    assert metrics["heldout"]["num_samples"] == len(held) == 16  # 20% of 20 per label x 4
    assert len(calib) == 64 == metrics["num_train"]  # all of the training split (< 128)
    held_texts = {(e.text, e.image.name) for e in held}
    assert not held_texts & {(e.text, e.image.name) for e in calib}  # calibration comes from training
    assert all(e.image.is_file() and e.image.parent == tiny_checkpoint / "data" for e in held + calib)
    assert 0.0 <= metrics["heldout"]["accuracy"] <= 1.0


def test_split_is_stratified():
    from fusionrt.model.data import Example
    from pathlib import Path

    exs = [Example(str(i), Path("x"), LABELS[i % 4]) for i in range(40)]
    train, held = split(exs, 0.3, seed=0)  # 3 of 10 per label
    assert len(held) == 12 and len(train) == 28
    assert {e.label for e in held} == set(LABELS)


def test_metrics_values():
    import numpy as np

    m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2)
    assert m["accuracy"] == 0.75
    assert m["macro_recall"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_bad_data_file_names_the_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a", "image": "missing.png", "label": "x"}\n')
    with pytest.raises(InputError, match=r"d.jsonl:1: image file not found"):
        read_jsonl(p)
    (tmp_path / "photos").mkdir()
    p.write_text('{"text": "a", "image": "photos", "label": "x"}\n')
    with pytest.raises(InputError, match=rf"d.jsonl:1: image path {tmp_path / 'photos'} is a folder, not an image file"):
        read_jsonl(p)  # it said "image not found"
    p.write_text('{"text": "a"\n')
    with pytest.raises(InputError, match=r"d.jsonl:1: not valid JSON"):
        read_jsonl(p)


def test_train_options_validated():
    with pytest.raises(InputError, match="heldout_fraction"):
        TrainOptions(heldout_fraction=1.5)
    for bad in ({"learning_rate": -1.0}, {"learning_rate": 0.0}, {"weight_decay": -0.1}):
        with pytest.raises(InputError, match="learning_rate must be > 0 and weight_decay >= 0"):
            TrainOptions(**bad)
    with pytest.raises(InputError, match="calibration_size must be >= 0"):
        TrainOptions(calibration_size=-1)


def test_calibration_size_zero_writes_no_calibration_split(tmp_path, tiny_base, tiny_data):
    from fusionrt.model.train import train

    out = tmp_path / "ckpt"
    train(tiny_data, out, base=tiny_base, options=TrainOptions(epochs=1, ablations=False, calibration_size=0), progress=False)
    assert (out / "heldout.jsonl").is_file() and not (out / "calibration.jsonl").exists()


def test_photo_dataset_balanced_real_photographs_with_camera_size_share(tmp_path):
    from collections import Counter

    from PIL import Image

    from fusionrt.model.data import PHOTO_LABELS, make_photo_dataset

    path = make_photo_dataset(tmp_path / "p", num_samples=48, seed=2, camera_fraction=1 / 3, camera_size=(800, 600))
    examples = read_jsonl(path)
    counts = Counter((e.label, e.source) for e in examples)
    assert counts == {(label, source): n for label in PHOTO_LABELS for source, n in (("photographs", 8), ("camera-size", 4))}
    for e in examples:
        size = Image.open(e.image).size
        if e.source == "camera-size":
            assert sorted(size) == [600, 800] and e.image.suffix == ".jpg"
        else:
            assert 256 <= min(size) <= 768
    again = read_jsonl(make_photo_dataset(tmp_path / "q", num_samples=48, seed=2, camera_fraction=1 / 3, camera_size=(800, 600)))
    assert [(e.text, e.label) for e in again] == [(e.text, e.label) for e in examples]
    assert all(a.image.read_bytes() == b.image.read_bytes() for a, b in zip(again, examples))


def test_feature_extraction_copy_folds_batch_norm_and_keeps_the_features():
    """The extraction copy of an image encoder (conv + BatchNorm folded, channels-last) gives the
    trained encoder's features within float rounding and leaves the encoder itself unchanged."""
    import torch

    from fusionrt.model.efficientnet_lite import EfficientNetLite, EfficientNetLiteConfig
    from fusionrt.model.train import _inference_copy

    torch.manual_seed(0)
    encoder = EfficientNetLite(EfficientNetLiteConfig(stages=((1, 3, 1, 1, 16), (2, 5, 2, 6, 24)), head_channels=64)).eval()
    for bn in (m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # statistics a trained net has
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.2, 3.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_(0, 0.2)
    copy = _inference_copy(encoder)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in copy.modules()) == 0
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.modules()) == 1 + 2 + 2 * 3 + 1  # stem, blocks, head: untouched
    assert encoder.stem[0].weight.is_contiguous()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        want, got = encoder(x), copy(x.contiguous(memory_format=torch.channels_last))
    assert want.shape == got.shape == (2, 64, 16, 16)  # stem and stage 2 halve 64 twice
    assert float((got - want).norm() / want.norm()) < 1e-5


def test_data_file_with_bom_crlf_and_line_separators_in_texts(tmp_path):
    import json as _json

    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rows = [{"text": "one\u2028two", "image": "a.png", "label": "x"}, {"text": "three\x85four", "image": "a.png", "label": "y"}]
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(_json.dumps(r, ensure_ascii=False) for r in rows).encode())
    assert [(e.text, e.label) for e in read_jsonl(p)] == [("one\u2028two", "x"), ("three\x85four", "y")]


@pytest.mark.parametrize("content, message", [
    ('[1, 2]\n', r"d.jsonl:1: expected an object"),
    ('\nnull\n', r"d.jsonl:2: expected an object"),
    ('{"text": "a", "image": "a.png", "label": " "}\n', r"d.jsonl:1: key 'label' is empty"),
    ('{"text": "caf\xe9", "image": "a.png", "label": "x"}\n', r"d.jsonl: not UTF-8"),
    ('{"text": "a", "image": 5, "label": "x"}\n', r"d.jsonl:1: key 'image' missing or not a string"),
    ('{"text": "a", "image": "a\\u0000.png", "label": "x"}\n', r"d.jsonl:1: image file not found"),
])
def test_bad_data_file_refused_with_the_line(tmp_path, content, message):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    p = tmp_path / "d.jsonl"
    p.write_bytes(content.encode("latin-1"))
    with pytest.raises(InputError, match=message):
        read_jsonl(p)


def test_split_keeps_a_training_example_per_label_and_duplicates_on_one_side():
    from pathlib import Path

    from fusionrt.model.data import Example

    exs = [Example(str(i), Path("x"), LABELS[i % 4]) for i in range(8)]  # 2 per label
    train, held = split(exs, 0.99, seed=0)
    assert len(train) == len(held) == 4 and {e.label for e in train} == set(LABELS)
    dup = [Example("same", Path("x"), "a")] * 5 + [Example("other", Path("x"), "a")] + [Example(str(i), Path("y"), "b") for i in range(5)]
    for seed in range(10):
        train, held = split(dup, 0.2, seed=seed)
        assert not set(train) & set(held) and len(train) + len(held) == len(dup)
    with pytest.raises(InputError, match=r"label 'a' has 1 distinct example \(3 identical lines\)"):
        split([Example("same", Path("x"), "a")] * 3 + dup[6:], 0.2, seed=0)


def test_unidentifiable_image_refused_with_its_line_before_encoding(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "page.jpg").write_text("<html>not a photo</html>")
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a", "image": "a.png", "label": "x"}\n' * 3 + '{"text": "b", "image": "page.jpg", "label": "y"}\n')
    with pytest.raises(InputError, match=r"d.jsonl:4: .*page.jpg is not an image"):
        read_jsonl(p)


def test_written_split_keeps_each_image_when_names_collide(tmp_path):
    from PIL import Image

    from fusionrt.model.data import Example, write_jsonl

    images = []
    for i, rel in enumerate(("p/img.png", "q/00002_img.png", "r/img.png", "s/img.png")):
        (tmp_path / rel).parent.mkdir()
        Image.new("RGB", (4, 4), (i * 60, 0, 0)).save(tmp_path / rel)
        images.append(tmp_path / rel)
    examples = [Example(str(i), image, "x") for i, image in enumerate(images + images[:1])]
    write_jsonl(tmp_path / "out" / "split.jsonl", examples)
    written = read_jsonl(tmp_path / "out" / "split.jsonl")
    assert [w.image.read_bytes() for w in written] == [e.image.read_bytes() for e in examples]
    assert len({w.image for w in written}) == 4  # the repeated image is stored once
