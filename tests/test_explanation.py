"""Explanations without a model: word merging for each tokenizer convention, heat-map geometry."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fusionrt.errors import InputError
from fusionrt.explanation import Explanation, ImageGeometry, grid_shape, merge_words, relevance
from fusionrt.prediction import Prediction
from fusionrt.preprocessing import ImageProcessor, image_size

from tests.conftest import build_tiny_tokenizer

CORPUS = ["what a lovely picture", "such a wonderful painting here", "this looks dreadful to me honestly"] * 20


def _bpe(kind: str):
    """A byte-level BPE (``Ġ``, RoBERTa-style) or SentencePiece-style (``▁``, Metaspace) tokenizer
    trained on a few sentences, with special tokens around the text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if kind == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], initial_alphabet=alphabet)
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))]
    )
    return tok


def _wordpiece(tmp_path):
    from tokenizers import Tokenizer

    build_tiny_tokenizer(tmp_path / "tok")
    return Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))


@pytest.mark.parametrize("kind", ["wordpiece", "bytelevel", "metaspace"])
def test_wordpieces_merge_into_the_texts_words(kind, tmp_path):
    tok = _wordpiece(tmp_path) if kind == "wordpiece" else _bpe(kind)
    text = "lovelyx wonderfulness zzqq picture"
    tok.enable_padding(pad_id=0, pad_token=tok.id_to_token(0), length=24)
    enc = tok.encode(text)
    pieces = [t for t, s in zip(enc.tokens, enc.special_tokens_mask) if not s and t != tok.id_to_token(0)]
    assert len(pieces) > 4, pieces  # some words are split into several pieces
    scores = np.arange(1, len(enc.ids) + 1, dtype=np.float64)  # every token scored, specials and padding too
    words, spans, values = merge_words(enc, text, scores)
    assert words == text.split()
    assert [text[a:b] for a, b in spans] == words
    expected = np.zeros(len(words))
    for k, w in enumerate(enc.word_ids):
        if w is not None and not enc.special_tokens_mask[k] and enc.attention_mask[k]:
            expected[w] += scores[k]
    np.testing.assert_allclose(values, expected / expected.sum(), atol=1e-12)
    assert abs(sum(values) - 1.0) < 1e-12


def test_words_share_equally_when_no_token_scores(tmp_path):
    tok = _wordpiece(tmp_path)
    enc = tok.encode("a lovely view")
    words, _, values = merge_words(enc, "a lovely view", np.zeros(len(enc.ids)))
    assert words == ["a", "lovely", "view"] and values == pytest.approx([1 / 3] * 3)
    assert merge_words(tok.encode(""), "", np.ones(2)) == ([], [], [])


def test_relevance_rows_sum_to_one_and_follow_the_attention():
    rng = np.random.default_rng(3)
    b, h, s, L = 3, 2, 5, 6
    attention = rng.random((b, h, s, L))
    attention /= attention.sum(-1, keepdims=True)
    mask = np.ones((b, s), np.int64)
    mask[1, 3:] = 0
    out = {
        "modality_weights": np.array([[0.3, 0.7]] * b),
        "cross_attention": attention,
        "token_contributions": rng.standard_normal((b, s)),
        "region_contributions": rng.standard_normal((b, L)),
    }
    for method in ("gradient", "rollout"):
        tokens, regions = relevance(out, mask, method)
        np.testing.assert_allclose(regions.sum(1), 1.0, atol=1e-12)
        assert (tokens >= 0).all() and (regions >= 0).all() and (tokens[1, 3:] == 0).all()
    # rollout: the image's share is uniform, so the ranking is the head-mean attention's
    _, regions = relevance(out, mask, "rollout")
    np.testing.assert_array_equal(np.argsort(regions[0]), np.argsort(attention[0].mean(0).mean(0)))


def test_grad_cam_relevance_is_the_positive_part_of_the_graphs_grad_cam_and_old_bundles_are_named():
    from fusionrt.errors import BundleError

    rng = np.random.default_rng(4)
    b, s, L = 2, 4, 6
    attention = np.full((b, 1, s, L), 1.0 / L)
    out = {"modality_weights": np.array([[0.4, 0.6]] * b), "cross_attention": attention,
           "token_contributions": rng.standard_normal((b, s)), "region_contributions": rng.standard_normal((b, L))}
    mask = np.ones((b, s), np.int64)
    cam = rng.standard_normal((b, L))
    tokens, regions = relevance({**out, "region_grad_cam": cam}, mask, "grad-cam")
    positive = np.maximum(cam, 0)
    np.testing.assert_allclose(regions, positive / positive.sum(1, keepdims=True), atol=1e-12)
    np.testing.assert_allclose(tokens, relevance(out, mask, "gradient")[0], atol=1e-12)  # words as "gradient"
    with pytest.raises(BundleError, match="re-export"):
        relevance(out, mask, "grad-cam")


def test_grid_shape():
    assert grid_shape(49, 224, 224) == (7, 7)
    assert grid_shape(16, 32, 32) == (4, 4)
    assert grid_shape(12, 96, 128) == (3, 4)
    assert grid_shape(12, 48, 20) == (6, 2)  # ConvNeXt's floor(48 / 8) x floor(20 / 8)
    with pytest.raises(InputError, match="17 image regions"):
        grid_shape(17, 32, 32)  # a ViT's patches with its CLS token


def _explanation(grid: np.ndarray, geometry: ImageGeometry) -> Explanation:
    prediction = Prediction("a", 1.0, {"a": 1.0}, {"text": 0.5, "image": 0.5}, False)
    return Explanation(prediction, "a", [], [], [], grid.astype(np.float32), prediction.modality_weights, geometry, "gradient")


# Resize and crop of the heat-map geometry tests (nearest-neighbour: a patch stays a patch), and
# the grid of 8-pixel cells over the encoder's input: a shortest-edge resize and a center crop; a
# fixed size squashed (the aspect ratio not kept, no crop: ViT's) with the input non-square; a
# fixed size and a crop (BitImageProcessor's {"height", "width"} with do_center_crop).
GEOMETRY_CASES = {
    "resize-crop": ({"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}}, (4, 4)),
    "squash": ({"size": {"height": 32, "width": 48}, "do_center_crop": False}, (4, 6)),
    "squash-crop": ({"size": {"height": 40, "width": 44}, "crop_size": {"height": 32, "width": 32}}, (4, 4)),
}


@pytest.mark.parametrize("case", sorted(GEOMETRY_CASES))
@pytest.mark.parametrize("size", [(90, 60), (60, 90), (20, 28)])
def test_heat_map_lights_the_patch_where_it_lands_after_resize_and_crop(size, case):
    """An image black but for one patch: find the grid cell the patch lands in after the real
    resize and crop, light that cell alone, and the heat map at the original size must peak on
    the patch (and be 0 where the crop cut the photo, or on the zero padding of a small one)."""
    keys, cells_hw = GEOMETRY_CASES[case]
    processor = ImageProcessor.from_dict({**keys, "resample": 0})
    w, h = size
    geometry = ImageGeometry.of(w, h, processor.to_dict())
    (left, top, cw, ch), (w1, h1) = geometry.crop_box, geometry.resized_size
    assert (ch, cw) == processor.output_hw == (8 * cells_hw[0], 8 * cells_hw[1])
    if processor.resize_hw is not None:
        assert (h1, w1) == processor.resize_hw  # each axis scaled on its own
    cell = (1, 2)  # of a 4xN grid: input pixels y 8..16, x 16..24
    y0, x0 = [(8 + top) * h / h1, (16 + left) * w / w1]  # its box in original pixels
    y1, x1 = [(16 + top) * h / h1, (24 + left) * w / w1]
    pixels = np.zeros((h, w, 3), np.uint8)
    ys = slice(int(np.ceil(y0)) + 1, int(y1) - 1)
    xs = slice(int(np.ceil(x0)) + 1, int(x1) - 1)
    pixels[ys, xs] = 255
    assert image_size(Image.fromarray(pixels)) == (w, h)
    lit = processor.process_one(pixels).mean(0) > 0  # (ch, cw): where the patch landed
    cells = {(y // 8, x // 8) for y, x in zip(*np.nonzero(lit))}
    assert cells == {cell}
    grid = np.zeros(cells_hw)
    grid[cell] = 1.0
    heat = _explanation(grid, geometry).heat_map()
    assert heat.shape == (h, w) and heat.dtype == np.float32 and heat.max() == pytest.approx(1.0)
    peak_y, peak_x = np.unravel_index(heat.argmax(), heat.shape)
    assert ys.start - 1 <= peak_y <= ys.stop and xs.start - 1 <= peak_x <= xs.stop
    if left > 0:
        assert heat[:, : int(left * w / w1) - 1].max() == 0.0  # cut by the crop
    assert heat[pixels[..., 0] == 255].mean() > 4 * heat.mean()


@pytest.mark.parametrize("kind", ["wordpiece", "bytelevel", "metaspace"])
def test_runs_of_whitespace_are_no_words(kind, tmp_path):
    """Byte-level BPE makes a pre-token of a whitespace run (two spaces, a tab, a leading space,
    a final newline), SentencePiece one of an extra space: no word, no relevance, no empty span."""
    tok = _wordpiece(tmp_path) if kind == "wordpiece" else _bpe(kind)
    texts = ["lovely  picture", "  what a  lovely picture\n", "lovely picture  ", "\n"]
    if kind != "metaspace":  # SentencePiece splits at spaces only: "a\tlovely" is one word
        texts.append("what a\tlovely picture")
    for text in texts:
        enc = tok.encode(text)
        words, spans, values = merge_words(enc, text, np.ones(len(enc.ids)))
        assert words == text.split(), (text, enc.tokens)
        assert [text[a:b] for a, b in spans] == words and all(a < b for a, b in spans)
        assert (abs(sum(values) - 1.0) < 1e-12) if words else values == []


@pytest.mark.parametrize("shift", [-1, 0, 1])
def test_heat_map_peaks_where_the_cells_receptive_field_is_centred(shift):
    """A bundle's receptive-field shift (ResNet -1, ConvNeXt/ViT 0, EfficientNet-Lite +1: their
    family rows, checked against the modules in tests/model/test_families.py) moves each cell's
    peak by ``(stride - 1) / 2`` pixels on both axes: 15.5 at stride 32."""
    preprocessor = {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "fusionrt_receptive_field_shift": shift}
    geometry = ImageGeometry.of(224, 224, preprocessor)
    assert geometry.receptive_field_shift == shift and geometry.to_dict()["receptive_field_shift"] == shift
    grid = np.zeros((7, 7))
    grid[3, 2] = 1.0
    heat = _explanation(grid, geometry).heat_map()
    rows, cols = heat.max(1), heat.max(0)
    # the peak: the pixel whose centre is the field's centre (3.5 * 32 + 15.5 * shift, 2.5 * 32 + ...)
    assert np.flatnonzero(rows == rows.max()).mean() + 0.5 == pytest.approx(3.5 * 32 + 15.5 * shift, abs=0.5)
    assert np.flatnonzero(cols == cols.max()).mean() + 0.5 == pytest.approx(2.5 * 32 + 15.5 * shift, abs=0.5)
    explanation = _explanation(grid, geometry)
    assert Explanation.from_fields(explanation.prediction, explanation.to_dict()).geometry == geometry  # served JSON


@pytest.mark.parametrize("kind", ["wordpiece", "bytelevel", "metaspace"])
def test_a_words_trailing_combining_marks_stay_in_it(kind, tmp_path):
    """Decomposed accents ("cafe" + U+0301, as macOS and many keyboards write them): BERT's
    normalizer strips the mark and its offsets then end before it (the word lost its accent);
    byte-level BPE makes a pre-token of the mark (a "word" of one accent)."""
    tok = _wordpiece(tmp_path) if kind == "wordpiece" else _bpe(kind)
    text = "cafe\u0301 nai\u0308ve zoe\u0308 e\u0301\u0301"
    enc = tok.encode(text)
    words, spans, values = merge_words(enc, text, np.ones(len(enc.ids)))
    assert words == text.split() and [text[a:b] for a, b in spans] == words
    assert abs(sum(values) - 1.0) < 1e-12


def test_a_word_cut_by_max_seq_len_is_whole_and_the_rest_is_not_read(tmp_path):
    """Truncation at max_seq_len may fall inside a word: it is shown whole (with the relevance of
    its pieces that were read), not as a fragment no one wrote; the words after it are in no list."""
    from fusionrt.preprocessing import TextTokenizer

    build_tiny_tokenizer(tmp_path / "tok")
    tok = TextTokenizer.from_dir(tmp_path / "tok", max_seq_len=8).tokenizer
    text = "a b c d zzqqxxw tail words"  # [CLS] a b c d z ##z [SEP] | ##q ##q ##x ...: "zzqqxxw" is cut
    enc = tok.encode(text)
    assert enc.overflowing and enc.tokens[-3:] == ["z", "##z", "[SEP]"]
    words, spans, values = merge_words(enc, text, np.ones(len(enc.ids)))
    assert words == ["a", "b", "c", "d", "zzqqxxw"] and [text[a:b] for a, b in spans] == words
    np.testing.assert_allclose(values, [1 / 6] * 4 + [2 / 6])


def test_a_camera_size_heat_map_costs_about_its_own_size():
    """The heat map of an 8000x6000 photo is 183 MiB of float32; computed in float64, then
    divided into a copy, it peaked at 916 MiB (5x) per call."""
    import tracemalloc

    grid = np.random.default_rng(0).random((7, 7))
    geometry = ImageGeometry.of(4000, 3000, {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}})
    explanation = _explanation(grid / grid.sum(), geometry)
    tracemalloc.start()
    heat = explanation.heat_map()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert heat.shape == (3000, 4000) and heat.dtype == np.float32 and heat.max() == 1.0 and heat.min() >= 0.0
    assert peak < 1.5 * heat.nbytes, (peak, heat.nbytes)


@pytest.mark.parametrize("kind", ["wordpiece", "bytelevel", "metaspace"])
def test_a_long_text_is_tokenized_only_as_far_as_truncation_reads_and_exactly(kind, tmp_path):
    """A 21 MB caption was tokenized whole (28 s, 1.7 GB) to keep max_seq_len tokens. The text is
    now tokenized up to a word end near max_seq_len * CHARS_PER_TOKEN characters when that part
    overflows: the encodings (ids, offsets, truncation) equal the whole text's."""
    from fusionrt.preprocessing import TextTokenizer
    from fusionrt.preprocessing.text import CHARS_PER_TOKEN

    tok = _wordpiece(tmp_path) if kind == "wordpiece" else _bpe(kind)
    tt = TextTokenizer(tok, 16, ("input_ids", "attention_mask"))
    limit = 16 * CHARS_PER_TOKEN
    texts = [
        "what a lovely picture " * 500,  # cut, overflows
        "what a\tlovely\npicture  " * 300,  # other whitespace, runs of it at the cut
        "lovely " + "picture   " * 300,
        "a" + " " * 5000 + "lovely picture",  # no word end in reach: whole
        ("x" * 150 + " ") * 60,  # WordPiece: one [UNK] per word, the part does not overflow: whole
        "漢字" * 3000,  # no whitespace: cut before an ideograph where BERT's normalizer sets each apart, else whole
        # no U+0020 at all: newlines, tabs, no-break spaces (a 2 MB caption of them took 2.4-3.8 s, the batcher's
        # other requests waiting), a CJK text with punctuation
        "what\na\nlovely\npicture\n" * 300,
        "what\ta\tlovely\tpicture\t" * 300,
        "what\u00a0a\u00a0lovely\u00a0picture\u00a0" * 300,
        "漢字の写真、とても綺麗。" * 500,
        "!?." * 3000,  # punctuation alone (BERT makes each mark a word): 2 MB of it took 6.3 s and 1.29 GB
        # characters a normalizer deletes (BERT: U+0085, U+001F) or Metaspace keeps in a word, at
        # the cut: a cut there joined or split words differently from the whole text
        # (WordPiece: 9 [UNK] + 4 "a" + one [UNK] word of "abc...p" + "z" * 3000 joined where BERT's
        # normalizer drops U+0085: 14 tokens; cut at U+0085, "abc...p" became 16 pieces, truncated)
        ("x" * 101 + " ") * 9 + "a " * 4 + "abcdefghijklmnop\x85" + "z" * 3000,
        ("x" * 101 + " ") * 9 + "a " * 4 + "abcdefghijklmnop\x1f" + "z" * 3000,
        "lovely",  # short
    ]
    seen = []

    class Recording:  # the tokenizers.Tokenizer, recording how many characters it was given
        def encode_batch(self, batch):
            seen.append(max(map(len, batch)))
            return tok.encode_batch(batch)

    whole = tok.encode_batch(texts)  # tt configured tok's truncation and padding
    tt.tokenizer = Recording()
    got = tt.encode_batch(texts)
    for text, g, w in zip(texts, got, whole):
        assert (g.ids, g.offsets, bool(g.overflowing)) == (w.ids, w.offsets, bool(w.overflowing)), text[:40]
    assert bool(got[0].overflowing) and not got[-1].overflowing
    # which of those were cut: what this tokenizer's normalizer and pre-tokenizer end words before
    cut_kinds = {"wordpiece": {"cjk", "newline", "tab", "nbsp", "punct"}, "bytelevel": {"newline", "tab", "nbsp"}, "metaspace": set()}[kind]
    for name, text in (("cjk", "漢字" * 3000), ("newline", "what\na\nlovely\npicture\n" * 300),
                       ("tab", "what\ta\tlovely\tpicture\t" * 300), ("nbsp", "what\u00a0a\u00a0lovely\u00a0picture\u00a0" * 300), ("punct", "!?." * 3000)):
        seen.clear()
        tt.encode_batch([text])
        assert (seen[0] <= limit) == (name in cut_kinds), (name, seen)
    tt.tokenizer = Recording()
    seen.clear()
    tt.encode_batch(["what a lovely picture " * 1_000_000])  # 22 MB
    assert len(seen) == 1 and limit // 2 < seen[0] <= limit  # up to the last word end before the limit, once


def test_a_tokenizer_whose_tokens_may_span_a_space_tokenizes_long_texts_whole():
    """A Unigram model behind a Metaspace that does not split (``split=False``) has a piece across
    a space ("a▁b"): cut at that space, the text lost it ([0, 6, 7, 8, ...] where the whole text
    gives [0, 6, 8, 8, ...]). Such a tokenizer is not cut; WordPiece, byte-level BPE and a splitting
    Metaspace are (the test above)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from fusionrt.preprocessing import TextTokenizer
    from fusionrt.preprocessing.text import cut_characters

    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("<mask>", 0.0),
             ("▁", -2.0), ("▁a", -2.0), ("a", -3.0), ("aa", -3.5), ("a▁b", -1.0), ("b", -1.0)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tt = TextTokenizer(tok, 16, ("input_ids", "attention_mask"))
    text = "a" * 1000 + " b" + "b" * 200  # over 16 * 64 characters, its one space at 1000
    assert tt.encode_batch([text])[0].ids == tok.encode(text).ids
    assert tt.encode_batch([text])[0].ids[:4] == [0, 6, 8, 8]
    assert cut_characters(tok) == frozenset()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    assert cut_characters(tok) == {" "}
