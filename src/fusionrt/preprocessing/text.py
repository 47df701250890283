"""Text preprocessing: the bundle's tokenizer (truncation at ``max_seq_len``, three padding
modes) and the sequence-length buckets of the served preprocess model. Torch-free."""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from fusionrt.errors import InputError

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Pad tokens looked up when a tokenizer.json has no padding: WordPiece (BERT) and BPE (RoBERTa, XLM-R).
PAD_TOKENS = ("[PAD]", "<pad>")
# A text longer than max_seq_len * CHARS_PER_TOKEN characters is tokenized from its start, cut at
# the end of a word, when that already gives more tokens than max_seq_len (see
# TextTokenizer.encode_batch): a 21 MB caption was tokenized whole (28 s, 1.7 GB) to keep 128 tokens.
CHARS_PER_TOKEN = 64


class TextTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer that truncates at ``max_seq_len`` and pads to the
    longest text of a batch, to a fixed length, or to the smallest of a few bucket lengths (as the
    Triton preprocess model does, so that its dynamic batcher can merge equal shapes).

    Args:
        tokenizer: a ``tokenizers.Tokenizer``.
        max_seq_len: truncation length in tokens, special tokens included.
        inputs: the tensors a call returns, in order: ``TEXT_INPUTS``, or ``input_ids`` and
            ``attention_mask`` alone for a text encoder without ``token_type_ids`` (RoBERTa,
            XLM-R, DistilBERT: the bundle's text-encoder graph inputs say which).
    """

    def __init__(self, tokenizer: Any, max_seq_len: int, inputs: Sequence[str] = TEXT_INPUTS):
        if max_seq_len < 2:
            raise InputError(f"max_seq_len must be >= 2 (room for [CLS] and [SEP]), got {max_seq_len}")
        inputs = tuple(inputs)
        if inputs not in (TEXT_INPUTS, TEXT_INPUTS[:2]):
            raise InputError(f"text inputs must be {list(TEXT_INPUTS)} or {list(TEXT_INPUTS[:2])}, got {list(inputs)}")
        tokenizer = _configure(tokenizer, max_seq_len)
        self.tokenizer = tokenizer
        self.max_seq_len = int(max_seq_len)
        self.inputs = inputs
        self.pad_id = int(tokenizer.padding["pad_id"])
        self._cut_before = cut_characters(tokenizer)

    @classmethod
    def from_dir(cls, directory: str | os.PathLike, max_seq_len: int, inputs: Sequence[str] = TEXT_INPUTS) -> "TextTokenizer":
        from tokenizers import Tokenizer

        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file missing: {path}")
        return cls(Tokenizer.from_file(str(path)), max_seq_len, inputs)

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` with this truncation and pad-to-longest padding."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(Path(directory) / "tokenizer.json"))

    def __call__(
        self, texts: Sequence[str], pad_to: int | None = None, buckets: Sequence[int] | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Tokenize a batch.

        Args:
            texts: the texts; each must be a ``str`` (empty is allowed).
            pad_to: pad every row to this many tokens instead of the longest text.
            buckets: increasing lengths in tokens; pad every row to the smallest one that holds
                the longest text (Triton's batcher merges only equal shapes, so a few lengths keep
                requests mergeable without padding short texts to ``max_seq_len``). The last
                bucket must be ``max_seq_len``. Not together with ``pad_to``.

        Returns:
            ``({name: (batch, seq) int64 for name in self.inputs}, truncated: (batch,) bool)``.

        Raises:
            InputError: an item is not a string; ``pad_to`` or ``buckets`` cannot hold the texts.
        """
        if pad_to is not None and buckets is not None:
            raise InputError("give pad_to or buckets, not both")
        if buckets is not None:
            buckets = check_buckets(buckets, self.max_seq_len)
        for i, t in enumerate(texts):
            check_text(t, i)
        if not texts:
            empty = np.zeros((0, 0), np.int64)
            return {k: empty for k in self.inputs}, np.zeros((0,), bool)
        encodings = self.encode_batch(texts)
        seq = max(len(e.ids) for e in encodings)
        if pad_to is not None:
            if pad_to < seq:
                raise InputError(f"pad_to={pad_to} is shorter than the longest text ({seq} tokens)")
            seq = pad_to
        elif buckets is not None:
            seq = next(b for b in buckets if b >= seq)  # the last bucket is max_seq_len >= seq
        batch = len(encodings)
        ids = np.full((batch, seq), self.pad_id, np.int64)
        mask = np.zeros((batch, seq), np.int64)
        types = np.zeros((batch, seq), np.int64)
        truncated = np.zeros((batch,), bool)
        for i, e in enumerate(encodings):
            n = sum(e.attention_mask)
            ids[i, :n] = e.ids[:n]
            mask[i, :n] = 1
            types[i, :n] = e.type_ids[:n]
            truncated[i] = bool(e.overflowing)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {k: feed[k] for k in self.inputs}, truncated


    def encode_batch(self, texts: Sequence[str]) -> list:
        """The ``tokenizers`` encodings of ``texts`` (truncated at ``max_seq_len``; character
        offsets into each text), as ``self.tokenizer.encode_batch`` gives them, without tokenizing
        what truncation drops: a text over ``max_seq_len * CHARS_PER_TOKEN`` characters is first
        tokenized up to a word end near that length, and whole only when that part does not
        overflow. A word end is a character of :func:`cut_characters` (whitespace, and for BERT
        CJK ideographs and punctuation) after one that is not whitespace; exact because this
        tokenizer's normalizer and pre-tokenizer end every word before such a character, so the
        tokens before the cut do not depend on what follows. A tokenizer with none (a Metaspace
        without ``split``, no pre-tokenizer) tokenizes every text whole, as does a text without a
        word end there.

        Args:
            texts: ``str`` items (see :func:`check_text`).

        Returns:
            One ``tokenizers.Encoding`` per text, ``overflowing`` non-empty when it was truncated.
        """
        if not self._cut_before:
            return self.tokenizer.encode_batch(list(texts))
        limit = self.max_seq_len * CHARS_PER_TOKEN
        parts = [_up_to_a_word_end(t, limit, self._cut_before) for t in texts]
        encodings = self.tokenizer.encode_batch(parts)
        whole = [i for i, (t, p, e) in enumerate(zip(texts, parts, encodings)) if len(p) < len(t) and not e.overflowing]
        for i, e in zip(whole, self.tokenizer.encode_batch([texts[i] for i in whole]) if whole else ()):
            encodings[i] = e
        return encodings


# Characters a long text may be cut before, where the tokenizer allows (cut_characters): the
# whitespace users' texts separate words with, a CJK ideograph (BERT's normalizer sets each
# apart: Chinese and Japanese texts have no spaces) and punctuation (BERT's pre-tokenizer makes
# each mark a word: "!!!!" spam). The characters tried before each one.
CUT_CANDIDATES = (" ", "\n", "\t", "\r", "\u00a0", "\u2009", "\u3000", "\u4e2d", ".", ",", "!", "?", "\u3002", "\u3001")
_BEFORE = ("a", "7", ".", "\u00e9", "\u4e2d", "\U0001f600")


def cut_characters(tokenizer: Any) -> frozenset[str]:
    """The characters of :data:`CUT_CANDIDATES` before which ``tokenizer`` (a
    ``tokenizers.Tokenizer``) ends every word: its normalizer keeps them (BERT's deletes U+0085
    and the other control characters, joining the words around them) and its pre-tokenizer
    splits there, after each of several characters (a letter, a digit, a full stop, an accented
    letter, a CJK ideograph, an emoji), so that no token spans the place. For a CJK ideograph
    (BERT's ``handle_chinese_chars``), every ideograph of the ranges BERT reads
    (:func:`_is_cjk_ideograph`) is a cut character. Empty without a pre-tokenizer."""
    from tokenizers import PreTokenizedString

    pre, normalizer = tokenizer.pre_tokenizer, tokenizer.normalizer
    if pre is None:
        return frozenset()

    def word_ends_before(before: str, c: str) -> bool:
        text = f"x{before}{c}y"
        cut = len(text) - 2
        pts = PreTokenizedString(text)
        if normalizer is not None:
            pts.normalize(lambda ns: normalizer.normalize(ns))
        pre.pre_tokenize(pts)
        splits = pts.get_splits(offset_referential="original", offset_type="char")
        return any(end == cut for _, (_, end), _ in splits) and not any(start < cut < end for _, (start, end), _ in splits)

    return frozenset(c for c in CUT_CANDIDATES if all(word_ends_before(b, c) for b in _BEFORE))


def _is_cjk_ideograph(ch: str) -> bool:
    """The CJK Unified Ideographs ranges of BERT's ``_is_chinese_char`` (google-research/bert
    tokenization.py; tokenizers' BertNormalizer ``handle_chinese_chars``)."""
    cp = ord(ch)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _up_to_a_word_end(text: str, limit: int, cut_before: frozenset[str]) -> str:
    """``text`` cut before a character of ``cut_before`` (for ``"\u4e2d"``: any CJK ideograph)
    that follows a non-whitespace character, at most ``limit`` characters long and at least half
    that; ``text`` itself when shorter, or without such a place there (a run of whitespace is
    never cut inside: byte-level BPE groups it)."""
    if len(text) <= limit:
        return text
    cjk = "\u4e2d" in cut_before
    for k in range(limit, limit // 2, -1):
        c = text[k]
        if (c in cut_before or (cjk and _is_cjk_ideograph(c))) and not text[k - 1].isspace():
            return text[:k]
    return text


def check_text(text: Any, index: int, name: str = "texts") -> None:
    """Raise :class:`InputError` naming ``name[index]`` unless ``text`` is a ``str`` that UTF-8
    can encode (a lone surrogate such as ``"\\ud800"`` cannot, and the tokenizer would fail on it)."""
    if not isinstance(text, str):
        raise InputError.of_item(name, index, f" is {type(text).__name__}; expected str")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError.of_item(name, index, f" is not valid Unicode text: {exc.reason} at character {exc.start}") from None


def default_buckets(max_seq_len: int, smallest: int = 16) -> tuple[int, ...]:
    """Powers of two from ``smallest`` below ``max_seq_len``, then ``max_seq_len``:
    128 -> (16, 32, 64, 128); 24 -> (16, 24); 8 -> (8,)."""
    out, b = [], smallest
    while b < max_seq_len:
        out.append(b)
        b *= 2
    return tuple(out) + (int(max_seq_len),)


def check_buckets(buckets: Sequence[int], max_seq_len: int | None) -> tuple[int, ...]:
    """Validate padding buckets: distinct increasing integers >= 2, the last equal to
    ``max_seq_len`` (not checked when ``None``, before the bundle is known).

    Returns:
        The buckets as a tuple of ints.

    Raises:
        InputError: naming what is wrong.
    """
    if isinstance(buckets, (str, bytes)) or not isinstance(buckets, Iterable):
        raise InputError(f"sequence buckets must be a sequence of integers such as (16, 32, 64, 128), got {buckets!r}")
    buckets = tuple(buckets)
    bad = [b for b in buckets if isinstance(b, bool) or not isinstance(b, numbers.Integral)]
    if bad:
        raise InputError(f"sequence buckets must be integers, got {bad[0]!r} in {list(buckets)!r}")
    out = tuple(int(b) for b in buckets)
    if not out or list(out) != sorted(set(out)) or out[0] < 2:
        raise InputError(f"sequence buckets must be distinct increasing lengths >= 2, got {list(out)}")
    if max_seq_len is not None and out[-1] != max_seq_len:
        raise InputError(f"the last sequence bucket must be max_seq_len={max_seq_len}, got {list(out)}")
    return out


def _configure(tokenizer: Any, max_seq_len: int) -> Any:
    padding = tokenizer.padding or {}
    pad_id = padding.get("pad_id")
    pad_token = padding.get("pad_token")
    if pad_id is None:  # a tokenizer.json saved without padding: BERT's or RoBERTa's pad token
        pad_token = next((t for t in PAD_TOKENS if tokenizer.token_to_id(t) is not None), None)
        if pad_token is None:
            raise InputError(f"tokenizer has no padding configured and none of the pad tokens {list(PAD_TOKENS)}")
        pad_id = tokenizer.token_to_id(pad_token)
    tokenizer.enable_truncation(max_length=max_seq_len)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token, length=None)
    return tokenizer
