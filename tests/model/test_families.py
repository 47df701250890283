"""The encoder family table and Hugging Face directories: each row builds the transformers class
its config names and answers like ``AutoModel.from_pretrained(DIR)``; unsupported model types,
tokenizers and weights are refused with what to do."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusionrt.errors import CheckpointError, InputError
from fusionrt.model import FAMILIES, MultimodalConfig, load_encoders
from fusionrt.model.families import TEXT
from tests.families import BPE_SPECIALS, IMAGE_CONFIGS, TEXT_CONFIGS, image_encoder_dir, text_encoder_dir

TEXT_FAMILIES = sorted(TEXT_CONFIGS)
IMAGE_FAMILIES = sorted(IMAGE_CONFIGS)
# Max |fusionrt feature - transformers feature|: the same module class and weights, FP32.
FEATURE_TOLERANCE = 1e-5


def test_the_table_has_every_family():
    assert sorted(n for n, r in FAMILIES.items() if r.modality == TEXT) == TEXT_FAMILIES
    # the transformers image families, and fusionrt's own packaged EfficientNet-Lite0 (tests/model/test_efficientnet_lite.py)
    assert sorted(n for n, r in FAMILIES.items() if r.modality != TEXT) == sorted(IMAGE_FAMILIES + ["efficientnet-lite0"])


@pytest.mark.parametrize("text", TEXT_FAMILIES)
def test_text_family_is_the_transformers_model(text, tmp_path):
    import torch
    from transformers import AutoModel

    directory = text_encoder_dir(tmp_path, text)
    enc = load_encoders(directory, None, ["a", "b"], max_seq_len=16)
    reference = AutoModel.from_pretrained(directory).eval()
    assert type(enc.model.text_encoder) is type(reference)
    assert enc.model.text_inputs == FAMILIES[text].inputs
    feed, _ = enc.tokenizer(["what a lovely picture", "gloomy", "i find the scene here really awful"])
    feed["attention_mask"][2, 1:3] = 0  # a hole
    tensors = {k: torch.from_numpy(v) for k, v in feed.items()}
    with torch.inference_mode():
        got = enc.model.encode_text(**tensors).numpy()
        ref = reference(**tensors).last_hidden_state.numpy()
    keep = feed["attention_mask"][..., None].astype(bool)
    assert np.abs(np.where(keep, got - ref, 0)).max() <= FEATURE_TOLERANCE


@pytest.mark.parametrize("image", IMAGE_FAMILIES)
def test_image_family_regions_are_the_transformers_output(image, tmp_path):
    import torch
    from transformers import AutoModel

    directory = image_encoder_dir(tmp_path, image)
    enc = load_encoders(text_encoder_dir(tmp_path, "bert"), directory, ["a", "b"], max_seq_len=16)
    reference = AutoModel.from_pretrained(directory).eval()
    pixels = torch.randn(2, 3, *enc.image_processor.output_hw)
    with torch.inference_mode():
        got = enc.model.encode_image(pixels).numpy()
        hidden = reference(pixel_values=pixels).last_hidden_state
    if image == "vit":  # patches without CLS
        ref = hidden[:, 1:].numpy()
        assert got.shape == (2, 16, 32)
    else:  # (B, C, h, w) -> (B, h*w, C)
        ref = hidden.flatten(2).transpose(1, 2).numpy()
        assert got.shape[-1] == IMAGE_CONFIGS[image]["hidden_sizes"][-1]
    assert np.abs(got - ref).max() <= FEATURE_TOLERANCE


@pytest.mark.parametrize("model_type", ["gpt2", "t5"])
def test_an_unsupported_directory_is_refused(model_type, tmp_path):
    from transformers import AutoConfig, AutoModel

    directory = tmp_path / model_type
    kwargs = {"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 50} if model_type == "gpt2" else \
        {"num_layers": 1, "d_model": 16, "num_heads": 2, "d_ff": 32, "d_kv": 8, "vocab_size": 50}
    AutoModel.from_config(AutoConfig.for_model(model_type, **kwargs)).save_pretrained(directory)
    with pytest.raises(InputError, match=f"model_type '{model_type}' is not supported.*bert, distilbert, electra, roberta, xlm-roberta"):
        load_encoders(directory, None, ["a", "b"])
    with pytest.raises(CheckpointError, match="supported image encoders: convnext, efficientnet-lite0, resnet, vit"):
        MultimodalConfig(image_config={"model_type": model_type})


@pytest.mark.parametrize("modality, architectures, expected", [
    ("text", ["RobertaModel"], "roberta"), ("text", ["RobertaForSequenceClassification"], "roberta"),
    ("text", ["XLMRobertaModel"], "xlm-roberta"), ("text", ["DistilBertForMaskedLM"], "distilbert"),
    ("text", ["ElectraModel"], "electra"), ("text", None, "bert"), ("image", ["ViTForImageClassification"], "vit"),
    ("image", ["ConvNextModel"], "convnext"), ("image", [], "resnet"),
])
def test_a_config_without_model_type_is_the_family_its_architectures_name(modality, architectures, expected):
    """A text_config that lost its model_type but says RobertaModel was built as BERT (positions from
    0, not pad + 1; a token_type_ids input) and validated against itself; only a config naming
    neither (checkpoints written before the family table) takes the old default."""
    from fusionrt.model.families import family

    config = {"hidden_size": 32} | ({"architectures": architectures} if architectures is not None else {})
    assert family(config, modality).model_type == expected
    assert family({"model_type": "bert", "architectures": ["RobertaModel"]}, "text").model_type == "bert"  # model_type wins


@pytest.mark.parametrize("modality, architectures", [("text", ["DebertaV2Model"]), ("text", ["RobertaPreLayerNormModel"]),
                                                     ("image", ["ViTMAEModel"]), ("text", ["ViTModel"])])
def test_a_config_without_model_type_whose_architectures_are_unsupported_is_refused(modality, architectures):
    from fusionrt.model.families import family

    with pytest.raises(CheckpointError, match=rf"names no model_type and its architectures \['{architectures[0]}'\] are no supported"):
        family({"architectures": architectures}, modality)


def test_an_image_model_is_not_a_text_encoder(tmp_path):
    with pytest.raises(InputError, match="text encoder model_type 'resnet' is not supported"):
        load_encoders(image_encoder_dir(tmp_path, "resnet"), None, ["a", "b"])


def test_bert_directory_with_only_vocab_txt(tmp_path):
    from transformers import BertTokenizer

    directory = text_encoder_dir(tmp_path, "bert", tokenizer="vocab")
    assert not (directory / "tokenizer.json").exists()
    enc = load_encoders(directory, None, ["a", "b"], max_seq_len=16)
    texts = ["What a LOVELY picture!", "gloomy", "i find the scene here awful"]
    feed, _ = enc.tokenizer(texts)
    slow = BertTokenizer(str(directory / "vocab.txt"))(texts, padding=True, return_tensors="np")
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert np.array_equal(feed[name], slow[name]), name
    enc.save(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "tokenizer.json").read_text())["model"]["type"] == "WordPiece"


def test_roberta_directory_with_vocab_json_and_merges(tmp_path):
    from transformers import RobertaTokenizer

    directory = text_encoder_dir(tmp_path, "roberta", tokenizer="vocab")
    assert not (directory / "tokenizer.json").exists()
    enc = load_encoders(directory, None, ["a", "b"], max_seq_len=16)
    texts = ["what a lovely picture", "gloomy", "such a cheerful design, really"]
    feed, _ = enc.tokenizer(texts)
    assert list(feed) == ["input_ids", "attention_mask"]  # RoBERTa takes no token_type_ids
    slow = RobertaTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))(texts, padding=True, return_tensors="np")
    assert np.array_equal(feed["input_ids"], slow["input_ids"])
    assert np.array_equal(feed["attention_mask"], slow["attention_mask"])
    assert enc.tokenizer.pad_id == 1 == BPE_SPECIALS.index("<pad>")


# Text-encoder directories whose tokenizer_config.json (or added_tokens.json) changes what
# transformers' AutoTokenizer makes of the vocabulary: (model_type, tokenizer files, settings,
# added tokens). fusionrt converted vocab files with the tokenizers library's defaults and read
# tokenizer.json alone: accents were stripped, CJK split, [CLS] named [CLS], added tokens split
# into pieces, a literal <s> in a RoBERTa text split, pads always [PAD] / <pad>.
TOKENIZER_SETTINGS = {
    "bert-vocab-keeps-accents": ("bert", "vocab", {"strip_accents": False}, None),
    "bert-vocab-cased-stripping-accents": ("bert", "vocab", {"do_lower_case": False, "strip_accents": True}, None),
    "bert-vocab-cjk-not-split": ("bert", "vocab", {"tokenize_chinese_chars": False}, None),
    "bert-vocab-special-names": ("bert", "vocab", {"cls_token": "[SEP]", "sep_token": "[CLS]", "pad_token": "[MASK]"}, None),
    "bert-vocab-added-tokens": ("bert", "vocab", {}, ["[NEW]", "new york"]),
    "bert-json-config-says-cased": ("bert", "json", {"do_lower_case": False}, None),
    "distilbert-vocab-keeps-accents": ("distilbert", "vocab", {"strip_accents": False}, None),
    "roberta-vocab-literal-specials": ("roberta", "vocab", {}, None),
    "roberta-vocab-prefix-space": ("roberta", "vocab", {"add_prefix_space": True}, ["new york"]),
}
SETTINGS_TEXTS = ["Café naïve LOVELY", "what a 中文 picture", "i find <s> this [NEW] awful </s> <pad> <mask>",
                  "new york is such a lovely scene", "", "x " * 40]


@pytest.mark.parametrize("case", sorted(TOKENIZER_SETTINGS))
def test_a_text_encoder_directory_is_tokenized_as_auto_tokenizer_reads_it(case, tmp_path):
    """tokenizer_from_dir against AutoTokenizer of the same directory: equal ids, masks and token
    types for accents, CJK, literal special tokens, added tokens, empty and over-long texts."""
    from transformers import AutoTokenizer

    from fusionrt.model.hub import tokenizer_from_dir

    model_type, files, settings, added = TOKENIZER_SETTINGS[case]
    directory = text_encoder_dir(tmp_path, model_type, tokenizer=files)
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    if added:
        first = json.loads((directory / "config.json").read_text())["vocab_size"] - 3  # text_encoder_dir leaves 3 ids
        (directory / "added_tokens.json").write_text(json.dumps({t: first + i for i, t in enumerate(added)}))
    config = json.loads((directory / "config.json").read_text())
    feed, _ = tokenizer_from_dir(directory, 16, FAMILIES[model_type], config)(SETTINGS_TEXTS)
    expected = AutoTokenizer.from_pretrained(directory)(SETTINGS_TEXTS, truncation=True, max_length=16, padding="longest",
                                                        return_tensors="np")
    for name in feed:
        assert np.array_equal(feed[name], expected[name]), (name, feed[name].tolist(), expected[name].tolist())


def test_a_tokenizer_transformers_gives_no_pad_token_pads_with_its_vocabularys_pad(tmp_path):
    """A bare PreTrainedTokenizerFast (tokenizer.json without padding, no special tokens named)
    has no pad token in transformers: fusionrt pads with the vocabulary's [PAD], as it did before
    it read directories through AutoTokenizer; a vocabulary without one is refused, saying how."""
    from fusionrt.model.hub import tokenizer_from_dir

    directory = text_encoder_dir(tmp_path, "bert")
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    saved = json.loads((directory / "tokenizer.json").read_text())
    saved["padding"] = None
    (directory / "tokenizer.json").write_text(json.dumps(saved))
    config = json.loads((directory / "config.json").read_text())
    tokenizer = tokenizer_from_dir(directory, 16, FAMILIES["bert"], config)
    feed, _ = tokenizer(["a", "what a lovely picture"])
    assert tokenizer.pad_id == saved["model"]["vocab"]["[PAD]"] == 0 and feed["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]
    saved["model"]["vocab"]["[NOPAD]"] = saved["model"]["vocab"].pop("[PAD]")
    (directory / "tokenizer.json").write_text(json.dumps(saved))
    with pytest.raises(InputError, match=r"none of the pad tokens.*set pad_token in tokenizer_config.json"):
        tokenizer_from_dir(directory, 16, FAMILIES["bert"], config)


@pytest.mark.parametrize("key", ["padding_side", "truncation_side"])
def test_a_tokenizer_that_pads_or_truncates_on_the_left_is_refused(key, tmp_path):
    """fusionrt pads and truncates on the right: a directory asking for the left was made right
    without a word (the last tokens of a long text dropped where the model kept them)."""
    from fusionrt.model.hub import tokenizer_from_dir

    directory = text_encoder_dir(tmp_path, "bert")
    (directory / "tokenizer_config.json").write_text(json.dumps({key: "left"}))
    with pytest.raises(InputError, match=f"'{key}': 'left'.*fusionrt pads and truncates on the right"):
        tokenizer_from_dir(directory, 16, FAMILIES["bert"], json.loads((directory / "config.json").read_text()))


def test_a_sentencepiece_tokenizer_is_refused_with_the_converting_command(tmp_path):
    directory = text_encoder_dir(tmp_path, "xlm-roberta")
    (directory / "tokenizer.json").unlink()
    for name in ("vocab.json", "merges.txt"):
        (directory / name).unlink()
    (directory / "sentencepiece.bpe.model").write_bytes(b"\x00")
    with pytest.raises(InputError, match=r"SentencePiece.*pip install 'sentencepiece<0.2.3' && python -c .*AutoTokenizer.from_pretrained\(.*save_pretrained"):
        load_encoders(directory, None, ["a", "b"])


def test_a_pickle_only_directory_loads_with_weights_only(tmp_path):
    import torch
    from safetensors.torch import load_file

    directory = text_encoder_dir(tmp_path, "distilbert")
    state = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    torch.save(state, directory / "pytorch_model.bin")
    enc = load_encoders(directory, None, ["a", "b"], max_seq_len=16)
    for name, tensor in enc.model.text_encoder.state_dict().items():
        assert torch.equal(tensor, state[name]), name


@pytest.mark.parametrize("safe", [True, False])
def test_a_sharded_directory_loads(safe, tmp_path):
    """save_pretrained splits a model over max_shard_size into shards and an index: refused as
    having no weights, though transformers reads it."""
    import torch
    from transformers import AutoModel

    directory = text_encoder_dir(tmp_path, "bert")
    model = AutoModel.from_pretrained(directory)
    (directory / "model.safetensors").unlink()
    model.save_pretrained(directory, max_shard_size="100KB", safe_serialization=safe)
    assert len(list(directory.glob("model-*.safetensors" if safe else "pytorch_model-*.bin"))) > 1
    enc = load_encoders(directory, None, ["a", "b"], max_seq_len=16)
    for name, tensor in enc.model.text_encoder.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name


def test_a_directory_without_weights_is_refused_with_how_to_convert(tmp_path):
    directory = text_encoder_dir(tmp_path, "bert")
    (directory / "model.safetensors").unlink()
    (directory / "weights.pt").write_bytes(b"\x00")
    with pytest.raises(InputError, match="no weights.*weights_only=True.*model.safetensors"):
        load_encoders(directory, None, ["a", "b"])


@pytest.mark.parametrize("model_type, modality", [("distilbert", "text"), ("xlm-roberta", "text"), ("convnext", "image")])
def test_weights_missing_from_the_file_are_refused_not_made_random(model_type, modality, tmp_path):
    """transformers initialises weights absent from the file at random and only logs it (which
    fusionrt silenced): a state dict saved with a prefix (Lightning's ``model.``) or a partial file
    gave a checkpoint whose encoder was partly random, and every export check passed on it."""
    from safetensors.torch import load_file, save_file

    make = text_encoder_dir if modality == "text" else image_encoder_dir
    directory = make(tmp_path, model_type)
    weights = directory / "model.safetensors"
    state = load_file(str(weights))
    text, image = (directory, None) if modality == "text" else (None, directory)
    save_file({f"model.encoder.{k}": v for k, v in state.items()}, str(weights))
    with pytest.raises(InputError, match=rf"--{modality}-encoder .*: \d+ of the .*Model's weights are not in its "
                                         r"weights file, so they would be random .*names them with a prefix \(e.g. model.encoder."):
        load_encoders(text, image, ["a", "b"], max_seq_len=16)
    dropped = sorted(state)[:2]
    save_file({k: v for k, v in state.items() if k not in dropped}, str(weights))
    with pytest.raises(InputError, match=rf"2 of the .*would be random \(e.g. {dropped[0]}, {dropped[1]}\)$"):
        load_encoders(text, image, ["a", "b"], max_seq_len=16)
    save_file(state, str(weights))
    load_encoders(text, image, ["a", "b"], max_seq_len=16)  # the whole file loads


def test_a_vit_processor_that_gives_another_size_is_refused(tmp_path):
    directory = image_encoder_dir(tmp_path, "vit")
    (directory / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 48, "width": 48}}))
    with pytest.raises(InputError, match=r"gives \(48, 48\) images but the vit model takes \(32, 32\)"):
        load_encoders(text_encoder_dir(tmp_path, "bert"), directory, ["a", "b"])


# Hugging Face image processors as save_pretrained writes them into an encoder directory: a ViT's
# fixed size (squashed, no crop), the int size of older ViT files (N x N), ConvNeXt's from 384
# pixels (squashed to a square) and below (resize to S / crop_pct, center crop), ResNet's (the
# ConvNeXt processor), a BiT-style short side and crop. Sizes keep the test fast; the ViT's are
# its config's image_size (32).
HF_PROCESSORS = {
    "vit": ("vit", "ViTImageProcessor", {"size": {"height": 32, "width": 32}}),
    "vit-int-size": ("vit", "ViTImageProcessor", {"size": 32}),
    "convnext-384": ("convnext", "ConvNextImageProcessor", {"size": {"shortest_edge": 384}, "resample": 3}),
    "convnext-64": ("convnext", "ConvNextImageProcessor", {"size": {"shortest_edge": 64}, "crop_pct": 0.9}),
    "resnet-64": ("resnet", "ConvNextImageProcessor", {"size": {"shortest_edge": 64}}),
    "resnet-bit": ("resnet", "BitImageProcessor", {"size": {"shortest_edge": 72}, "crop_size": {"height": 64, "width": 48}}),
}


@pytest.mark.parametrize("case", sorted(HF_PROCESSORS))
def test_image_pixels_are_what_the_directorys_hugging_face_processor_makes(case, tmp_path, photo_dir):
    """image_processor_from_dir against AutoImageProcessor of the same directory, on non-square
    photographs (landscape 3:2, 640x427 JPEG, a 2:1 page): within one level of 255 (the crop
    resample's rounding; a squash has no crop and is bit for bit), on few pixels. JPEG drafting
    is off: at these small sizes it would scale rocket.jpg (tests/test_draft_decoding.py)."""
    import dataclasses

    import transformers
    from PIL import Image

    from fusionrt.model.hub import image_processor_from_dir

    model_type, class_name, keys = HF_PROCESSORS[case]
    directory = image_encoder_dir(tmp_path, model_type)
    getattr(transformers, class_name)(**{k: v for k, v in keys.items() if k != "size"}, image_mean=[0.5, 0.4, 0.3],
                                      image_std=[0.2, 0.25, 0.3]).save_pretrained(directory)
    path = directory / "preprocessor_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "size": keys["size"]}))  # as written, the int one too
    reference = transformers.AutoImageProcessor.from_pretrained(directory, use_fast=False)
    assert type(reference).__name__ == class_name
    processor = image_processor_from_dir(directory, FAMILIES[model_type], json.loads((directory / "config.json").read_text()))
    processor = dataclasses.replace(processor, jpeg_draft=False)
    level = 1 / 255 / min(processor.image_std)
    for name in ("coffee.png", "chelsea.png", "rocket.jpg", "page.png"):
        expected = reference(Image.open(photo_dir / name).convert("RGB"), return_tensors="np")["pixel_values"][0]
        got = processor.process_one(photo_dir / name)
        assert got.shape == expected.shape, (name, got.shape, expected.shape)
        difference = np.abs(got - expected)
        assert difference.max() <= level + 1e-5 and difference.mean() < level / 100, (name, difference.max() / level)
        if processor.fixed_hw == processor.resize_hw:  # squashed: no crop to fold in
            assert difference.max() <= 1e-5, name


# Files that leave keys out, or carry keys their class does not read: AutoImageProcessor takes the
# class's defaults (ViT's and ConvNeXt's mean and std are 0.5, not ImageNet's; ConvNeXt's size 384)
# and ignores the rest (a ViT or ConvNeXt file's crop keys). Each case: (model_type, file as written).
PARTIAL_PROCESSORS = {
    "vit-no-mean-std-resample": ("vit", {"image_processor_type": "ViTImageProcessor", "size": {"height": 32, "width": 32}}),
    "vit-crop-keys-ignored": ("vit", {"image_processor_type": "ViTImageProcessor", "size": {"height": 32, "width": 32},
                                      "do_center_crop": True, "crop_size": {"height": 16, "width": 16}}),
    "vit-older-feature-extractor": ("vit", {"feature_extractor_type": "ViTFeatureExtractor", "size": 32}),
    "convnext-no-size-mean-std": ("convnext", {"image_processor_type": "ConvNextImageProcessor"}),
    "resnet-empty-file": ("resnet", {}),
    "resnet-vit-file-without-size": ("resnet", {"image_processor_type": "ViTImageProcessor"}),
    "convnext-crop-keys-ignored": ("convnext", {"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 48},
                                                "crop_size": {"height": 16, "width": 16}, "do_center_crop": True}),
    "resnet-no-type": ("resnet", {"size": {"shortest_edge": 48}, "crop_pct": 0.9, "do_center_crop": True,
                                  "crop_size": {"height": 16, "width": 16}}),
    "resnet-bit-defaults": ("resnet", {"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 40}}),
    "resnet-bit-ignores-crop-pct": ("resnet", {"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 40},
                                               "crop_pct": 0.9, "crop_size": 32}),
    "resnet-vit-int-size": ("resnet", {"feature_extractor_type": "ViTFeatureExtractor", "size": 40}),
    "resnet-older-convnext-int-size": ("resnet", {"feature_extractor_type": "ConvNextFeatureExtractor", "size": 40,
                                                  "image_mean": 0.5, "image_std": 0.25}),
    "convnext-fast-name": ("convnext", {"image_processor_type": "ConvNextImageProcessorFast", "size": {"shortest_edge": 40}}),
    "resnet-bit-crop-without-resize": ("resnet", {"image_processor_type": "BitImageProcessor", "do_resize": False,
                                                  "crop_size": {"height": 64, "width": 48}}),
}


@pytest.mark.parametrize("case", sorted(PARTIAL_PROCESSORS))
def test_keys_a_file_leaves_out_take_the_hugging_face_class_defaults(case, tmp_path, photo_dir):
    """image_processor_from_dir against AutoImageProcessor of a file with keys left out or not
    read by its class: the same mean, std, filter, size and crop (within one level of 255, as
    above). It used ImageNet's mean and std (2.2x the values of a 0.5-std model) and cropped."""
    import dataclasses

    import transformers
    from PIL import Image

    from fusionrt.model.hub import image_processor_from_dir

    model_type, keys = PARTIAL_PROCESSORS[case]
    directory = image_encoder_dir(tmp_path, model_type)
    (directory / "preprocessor_config.json").write_text(json.dumps(keys))
    reference = transformers.AutoImageProcessor.from_pretrained(directory, use_fast=False)
    processor = image_processor_from_dir(directory, FAMILIES[model_type], json.loads((directory / "config.json").read_text()))
    processor = dataclasses.replace(processor, jpeg_draft=False)
    assert list(processor.image_mean) == pytest.approx(list(np.broadcast_to(reference.image_mean, 3)))
    assert list(processor.image_std) == pytest.approx(list(np.broadcast_to(reference.image_std, 3)))
    assert processor.resample == int(reference.resample)
    level = 1 / 255 / min(processor.image_std)
    for name in ("chelsea.png", "page.png"):
        expected = reference(Image.open(photo_dir / name).convert("RGB"), return_tensors="np")["pixel_values"][0]
        got = processor.process_one(photo_dir / name)
        assert got.shape == expected.shape, (name, got.shape, expected.shape)
        difference = np.abs(got - expected)
        assert difference.max() <= level + 1e-5 and difference.mean() < level / 100, (name, difference.max() / level)


@pytest.mark.parametrize("model_type, keys", [
    ("vit", {"image_processor_type": "ViTImageProcessor", "do_resize": False, "size": {"height": 32, "width": 32}}),
    ("convnext", {"image_processor_type": "ConvNextImageProcessor", "do_resize": False, "size": {"shortest_edge": 48}}),
    ("resnet", {"image_processor_type": "BitImageProcessor", "do_resize": False, "do_center_crop": False}),
])
def test_do_resize_false_without_a_crop_is_refused_naming_it(model_type, keys, tmp_path, photo_dir):
    """Hugging Face's processor then gives each image at its own size (ConvNeXt crops only inside
    its resize): fusionrt, which batches one size, refuses the file naming the key. A ConvNeXt's
    was center-cropped from the unresized image and a ViT's failed with 'output size depends on
    the input'."""
    import transformers
    from PIL import Image

    from fusionrt.model.hub import image_processor_from_dir

    directory = image_encoder_dir(tmp_path, model_type)
    (directory / "preprocessor_config.json").write_text(json.dumps(keys))
    reference = transformers.AutoImageProcessor.from_pretrained(directory, use_fast=False)
    image = Image.open(photo_dir / "chelsea.png").convert("RGB")
    assert reference(image, return_tensors="np")["pixel_values"].shape[2:] == (image.height, image.width)
    with pytest.raises(InputError, match=f"sets do_resize false, so Hugging Face's {keys['image_processor_type']} gives each image"):
        image_processor_from_dir(directory, FAMILIES[model_type], json.loads((directory / "config.json").read_text()))


def test_a_bit_short_side_without_a_crop_is_refused_naming_it(tmp_path, photo_dir):
    """BitImageProcessor with do_center_crop false keeps each image's aspect ratio (Hugging Face
    gives chelsea.png at 40 x 53): fusionrt refuses it naming the keys. It gave the 40 x 40
    center crop, pixels the checkpoint never saw."""
    import transformers
    from PIL import Image

    from fusionrt.model.hub import image_processor_from_dir

    keys = {"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 40}, "do_center_crop": False}
    directory = image_encoder_dir(tmp_path, "resnet")
    (directory / "preprocessor_config.json").write_text(json.dumps(keys))
    reference = transformers.AutoImageProcessor.from_pretrained(directory, use_fast=False)
    image = Image.open(photo_dir / "chelsea.png").convert("RGB")
    height, width = reference(image, return_tensors="np")["pixel_values"].shape[2:]
    assert min(height, width) == 40 and height != width
    with pytest.raises(InputError, match="sets a shortest_edge size and no center crop, so Hugging Face's BitImageProcessor gives each"):
        image_processor_from_dir(directory, FAMILIES["resnet"], json.loads((directory / "config.json").read_text()))


def test_an_image_processor_transformers_does_not_know_is_refused_as_transformers_does(tmp_path):
    """A misspelt image_processor_type: AutoImageProcessor raises; fusionrt raised nothing and
    applied its generic rules when the file wrote mean, std and filter."""
    import transformers

    from fusionrt.model.hub import image_processor_from_dir

    keys = {"image_processor_type": "BitImageProcesor", "size": {"height": 32, "width": 32},
            "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 2}
    directory = image_encoder_dir(tmp_path, "resnet")
    (directory / "preprocessor_config.json").write_text(json.dumps(keys))
    with pytest.raises(ValueError):
        transformers.AutoImageProcessor.from_pretrained(directory, use_fast=False)
    with pytest.raises(InputError, match=r"names image processor 'BitImageProcesor', which transformers [0-9.]+ does not know"):
        image_processor_from_dir(directory, FAMILIES["resnet"], json.loads((directory / "config.json").read_text()))


def test_a_vit_without_preprocessor_config_gets_vit_image_processors_mean_and_std(tmp_path):
    """ViTImageProcessor()'s mean and std (0.5) at the config's image_size; it had ImageNet's."""
    from transformers import ViTImageProcessor

    directory = image_encoder_dir(tmp_path, "vit")
    (directory / "preprocessor_config.json").unlink()
    processor = load_encoders(text_encoder_dir(tmp_path, "bert"), directory, ["a", "b"]).image_processor
    reference = ViTImageProcessor()
    assert (processor.output_hw, processor.do_center_crop) == ((32, 32), False)
    assert (list(processor.image_mean), list(processor.image_std), processor.resample) == (
        reference.image_mean, reference.image_std, int(reference.resample))


def test_an_unknown_image_processor_class_must_write_mean_std_and_resample(tmp_path):
    """fusionrt does not know a CLIPImageProcessor's defaults: a file naming it that leaves them
    out is refused, naming them, rather than given ImageNet's; written out, it loads."""
    from fusionrt.model.hub import image_processor_from_dir

    directory = image_encoder_dir(tmp_path, "resnet")
    keys = {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}}
    (directory / "preprocessor_config.json").write_text(json.dumps(keys))
    config = json.loads((directory / "config.json").read_text())
    with pytest.raises(InputError, match="'CLIPImageProcessor'.*leaves out image_mean, image_std, resample: write them"):
        image_processor_from_dir(directory, FAMILIES["resnet"], config)
    keys.update(image_mean=[0.4] * 3, image_std=[0.3] * 3, resample=3)
    (directory / "preprocessor_config.json").write_text(json.dumps(keys))
    processor = image_processor_from_dir(directory, FAMILIES["resnet"], config)
    assert (processor.output_hw, processor.image_mean, processor.resample) == ((32, 32), (0.4,) * 3, 3)


def test_max_seq_len_beyond_roberta_positions_is_refused(tmp_path):
    # 66 position embeddings, numbered from pad_token_id + 1 = 2: 64 usable positions
    directory = text_encoder_dir(tmp_path, "roberta")
    assert load_encoders(directory, None, ["a", "b"]).model.config.max_seq_len == 64
    with pytest.raises(InputError, match="max_seq_len=65 exceeds the roberta text encoder's 64 positions"):
        load_encoders(directory, None, ["a", "b"], max_seq_len=65)


def test_the_docs_snippet_saves_a_checkpoint_that_loads(tmp_path, photo_dir):
    """docs/encoders.md's snippet, run as written (its names bound to test directories)."""
    import re
    from pathlib import Path

    import torch

    from fusionrt.model import load_checkpoint

    doc = (Path(__file__).parents[2] / "docs" / "encoders.md").read_text()
    [snippet] = re.findall(r"```python\n(.*?)```", doc, re.S)
    names = {"TEXT_DIR": text_encoder_dir(tmp_path, "roberta"), "IMAGE_DIR": image_encoder_dir(tmp_path, "convnext"),
             "IMAGES": [photo_dir / "coffee.png", photo_dir / "chelsea.png"], "CHECKPOINT_DIR": tmp_path / "ckpt"}
    exec(compile(snippet, "docs/encoders.md", "exec"), names)
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.config.labels == ["negative", "positive"] and ckpt.config.text_config["model_type"] == "roberta"
    with torch.inference_mode():
        again = ckpt.model(**names["batch"]).logits
        trained = names["model"](**names["batch"]).logits
    assert torch.equal(again, trained)


def test_cli_train_takes_encoder_directories(tmp_path, tiny_data, capsys):
    from fusionrt.cli import main
    from fusionrt.model import load_checkpoint

    text, image = text_encoder_dir(tmp_path, "distilbert", tokenizer="vocab"), image_encoder_dir(tmp_path, "vit")
    out = tmp_path / "ckpt"
    assert main(["train", str(tiny_data), "-o", str(out), "--epochs", "2", "--text-encoder", str(text), "--image-encoder", str(image)]) == 0
    ckpt = load_checkpoint(out)
    assert (ckpt.config.text_config["model_type"], ckpt.config.image_config["model_type"]) == ("distilbert", "vit")
    assert ckpt.tokenizer.inputs == ("input_ids", "attention_mask")
    assert main(["train", str(tiny_data), "-o", str(tmp_path / "x"), "--base", str(out), "--text-encoder", str(text)]) == 1
    assert "not both" in capsys.readouterr().err
    assert main(["train", str(tiny_data), "-o", str(tmp_path / "y"), "--text-encoder", str(image)]) == 1
    assert "text encoder model_type 'vit' is not supported" in capsys.readouterr().err


# Stride-32 and stride-8 nets small enough that an interior cell's receptive field fits the image.
_STRIDE_32_LITE = {"stages": ((1, 3, 2, 1, 8), (1, 3, 2, 1, 8), (1, 5, 2, 1, 8), (1, 3, 2, 1, 8)), "stem_channels": 8, "head_channels": 8}
_STRIDE_32_RESNET = {"embedding_size": 8, "hidden_sizes": [8, 8, 8, 8], "depths": [1, 1, 1, 1], "layer_type": "basic", "hidden_act": "relu"}
RECEPTIVE_FIELD_CASES = [
    ("efficientnet-lite0", _STRIDE_32_LITE, 256), ("resnet", _STRIDE_32_RESNET, 512),
    ("resnet", IMAGE_CONFIGS["resnet"], 96), ("convnext", IMAGE_CONFIGS["convnext"], 96),
]


@pytest.mark.parametrize("family,config,size", RECEPTIVE_FIELD_CASES, ids=[f"{f}-{s}" for f, _, s in RECEPTIVE_FIELD_CASES])
def test_receptive_field_shift_is_where_a_cell_looks(family, config, size):
    """The family row's ``receptive_field_shift`` (what the heat map uses) against the module: with
    every weight positive, the pixels that move an interior cell's feature are its receptive field,
    whose centre must be the cell's centre moved by ``shift * (stride - 1) / 2`` pixels."""
    import torch

    from fusionrt.explanation import grid_shape

    row = FAMILIES[family]
    model = row.build(dict(config), None).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):  # positive, of mean 1 / fan-in: no ReLU6 saturates
                fan_in = module.weight[0].numel()
                module.weight.copy_((module.weight.abs() + 0.01) / (module.weight.abs().mean() + 0.01) / fan_in)
    x = (torch.rand(1, 3, size, size) + 0.1).requires_grad_(True)
    out = model(pixel_values=x)
    fmap = out.last_hidden_state if hasattr(out, "last_hidden_state") else out  # (1, C, h, w)
    h, w = grid_shape(row.features(out).shape[1], size, size)
    assert fmap.shape[-2:] == (h, w)
    stride = size // h
    i, j = h // 2, w // 2
    # (from the map itself: torch 2.13's CPU backward through the regions' transposed view gives
    # EfficientNet-Lite's input a gradient over whole rows that a finite difference shows is not there)
    fmap[0, :, i, j].sum().backward()
    moved = x.grad[0].abs().sum(0)  # (size, size)
    rows, cols = (torch.nonzero(moved.sum(axis)).flatten() for axis in (1, 0))
    assert 0 < rows[0] and rows[-1] < size - 1 and 0 < cols[0] and cols[-1] < size - 1  # the field fits the image
    expected = (i + 0.5) * stride + row.receptive_field_shift * (stride - 1) / 2
    assert (rows[0] + rows[-1] + 1) / 2 == expected and (cols[0] + cols[-1] + 1) / 2 == (j + 0.5) * stride + row.receptive_field_shift * (stride - 1) / 2


@pytest.mark.parametrize("model_type", ["resnet", "convnext"])
def test_an_image_encoder_without_preprocessor_config_gets_imagenets_resize_256_crop_224(tmp_path, model_type):
    """image_processor_from_dir's documented default (docs/encoders.md: "or ImageNet's"): the short
    side resized to 256, a 224x224 center crop; it cropped 256x256."""
    directory = image_encoder_dir(tmp_path, model_type)
    (directory / "preprocessor_config.json").unlink()
    processor = load_encoders(text_encoder_dir(tmp_path, "bert"), directory, ["a", "b"]).image_processor
    assert processor.output_hw == (224, 224)
    assert processor.size == {"shortest_edge": 256}
