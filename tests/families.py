"""Tiny random Hugging Face encoder directories, one per family row (what ``save_pretrained`` writes),
for the family tests. Each builds in about a second."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import WORDS, build_tiny_tokenizer

_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
         "max_position_embeddings": 64, "type_vocab_size": 2}
# RoBERTa-style: pad id 1, positions from padding_idx + 1 (66 - 1 - 1 = 64 usable positions).
_ROBERTA = {**_BERT, "max_position_embeddings": 66, "type_vocab_size": 1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
TEXT_CONFIGS = {
    "bert": _BERT,
    "electra": {**_BERT, "embedding_size": 16},
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "max_position_embeddings": 64},
}
IMAGE_CONFIGS = {
    "resnet": {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "basic",
               "hidden_act": "relu", "downsample_in_first_stage": False},
    "convnext": {"num_stages": 2, "hidden_sizes": [8, 16], "depths": [1, 1]},
    "vit": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "image_size": 32, "patch_size": 8},
}
# fusionrt's own EfficientNet-Lite (EfficientNetLiteConfig fields): three stages striding 8, 24 channels out.
TINY_LITE = {"stages": ((1, 3, 1, 1, 8), (1, 3, 2, 2, 8), (2, 5, 2, 2, 16)), "stem_channels": 8, "head_channels": 24}
# Each text family with an image family: every row of both modalities is exported.
PAIRS = [("bert", "resnet"), ("roberta", "vit"), ("xlm-roberta", "convnext"), ("distilbert", "efficientnet-lite0"), ("electra", "vit")]
BPE_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0-4: pad is 1


def build_bpe_files(directory: Path) -> int:
    """``vocab.json`` + ``merges.txt`` of a byte-level BPE trained on the test words; returns its size."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(WORDS)] * 4, vocab_size=400, min_frequency=1, special_tokens=BPE_SPECIALS, show_progress=False)
    directory.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(directory))
    return bpe.get_vocab_size()


def text_encoder_dir(root: Path, model_type: str, tokenizer: str = "json", seed: int = 0) -> Path:
    """A text encoder directory: ``config.json``, ``model.safetensors`` and tokenizer files,
    ``tokenizer="json"`` (tokenizer.json, plus vocab files) or ``"vocab"`` (vocab files only)."""
    import torch
    from transformers import AutoConfig, AutoModel

    out = root / f"{model_type}-{tokenizer}"
    if model_type in ("roberta", "xlm-roberta"):
        vocab = build_bpe_files(out)
        if tokenizer == "json":
            from tokenizers import processors
            from tokenizers.implementations import ByteLevelBPETokenizer

            tok = ByteLevelBPETokenizer.from_file(str(out / "vocab.json"), str(out / "merges.txt"), trim_offsets=True)._tokenizer
            tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
            tok.save(str(out / "tokenizer.json"))
    else:
        vocab = build_tiny_tokenizer(out)
        if tokenizer != "json":
            (out / "tokenizer.json").unlink()
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, vocab_size=vocab + 3, **TEXT_CONFIGS[model_type])
    AutoModel.from_config(config).save_pretrained(out)
    return out


def image_encoder_dir(root: Path, model_type: str, seed: int = 0) -> Path:
    """An image encoder directory: ``config.json``, ``model.safetensors``, ``preprocessor_config.json``
    (32x32 crops, the ViT's image_size); ``efficientnet-lite0`` as fusionrt's own module with
    :data:`TINY_LITE`."""
    import torch

    out = root / model_type
    torch.manual_seed(seed)
    if model_type == "efficientnet-lite0":
        from safetensors.torch import save_file

        from fusionrt.model.efficientnet_lite import EfficientNetLite, EfficientNetLiteConfig

        config = EfficientNetLiteConfig.from_dict(TINY_LITE)
        out.mkdir(parents=True)
        save_file(EfficientNetLite(config).state_dict(), str(out / "model.safetensors"))
        (out / "config.json").write_text(json.dumps(config.to_dict()))
    else:
        from transformers import AutoConfig, AutoModel

        AutoModel.from_config(AutoConfig.for_model(model_type, **IMAGE_CONFIGS[model_type])).save_pretrained(out)
    pp = {"image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": 40}, "resample": 2,
          "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    if model_type == "vit":  # ViT's own processor form: a fixed size, no crop
        pp = {"do_resize": True, "size": {"height": 32, "width": 32}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    (out / "preprocessor_config.json").write_text(json.dumps(pp))
    return out
