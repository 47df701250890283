import numpy as np
import pytest
import torch

from fusionrt import CheckpointError
from fusionrt.model import MultimodalClassifier, load_checkpoint
from fusionrt.model.encoders import RESNET50
from tests.conftest import random_feed, tiny_config


def _inputs(seed=0, batch=3, seq=9, vocab=100, hw=(32, 32)):
    feed = random_feed(np.random.default_rng(seed), batch, seq, vocab, hw, pixel_dtype="float32")
    return {k: torch.from_numpy(v) for k, v in feed.items()}


def test_forward_shapes_and_modality_weights():
    torch.manual_seed(0)
    model = MultimodalClassifier(tiny_config(100, num_labels=5)).eval()
    with torch.inference_mode():
        out = model(**_inputs())
    assert out.logits.shape == (3, 5) and out.logits.dtype == torch.float32
    assert out.modality_weights.shape == (3, 2) and out.modality_weights.dtype == torch.float32
    np.testing.assert_allclose(out.modality_weights.sum(-1).numpy(), 1.0, atol=1e-6)
    assert (out.modality_weights > 0).all()


def test_image_features_are_regions_of_last_map():
    torch.manual_seed(0)
    model = MultimodalClassifier(tiny_config(100)).eval()
    with torch.inference_mode():
        feats = model.encode_image(torch.randn(2, 3, 32, 32))
    # stem /4, second stage /2 -> 4x4 regions of 16 channels
    assert feats.shape == (2, 16, 16)


def test_padding_does_not_change_logits():
    """Extra padded positions (mask 0) must not change the prediction."""
    torch.manual_seed(0)
    model = MultimodalClassifier(tiny_config(100)).eval()
    x = _inputs(batch=2, seq=6)
    x["attention_mask"][:] = 1
    padded = {k: v.clone() for k, v in x.items()}
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        padded[k] = torch.cat([x[k], torch.zeros(2, 5, dtype=torch.int64)], 1)
    with torch.inference_mode():
        a, b = model(**x).logits, model(**padded).logits
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_resnet50_config_builds():
    small50 = dict(RESNET50, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], embedding_size=8)
    model = MultimodalClassifier(tiny_config(100, image_config=small50)).eval()
    with torch.inference_mode():
        out = model(**_inputs(hw=(64, 64)))
    assert out.logits.shape == (3, 4)
    assert model.image_encoder.config.layer_type == "bottleneck"


def test_checkpoint_round_trip(tiny_checkpoint, tmp_path):
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt.model.save_pretrained(tmp_path)
    again = MultimodalClassifier.from_pretrained(tmp_path)
    x = _inputs(vocab=50, seed=3)
    with torch.inference_mode():
        a, b = ckpt.model(**x), again(**x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.modality_weights, b.modality_weights)
    assert again.config.to_dict() == ckpt.config.to_dict()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))  # no pickle


def test_missing_and_unexpected_weights_are_named(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt.model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state.pop("head.classifier.0.weight")
    state["head.extra.weight"] = torch.zeros(2)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        MultimodalClassifier.from_pretrained(tmp_path)
    assert "missing weights: head.classifier.0.weight" in str(err.value)
    assert "unexpected weights: head.extra.weight" in str(err.value)


def test_missing_weights_file(tmp_path):
    tiny_config(100).save(tmp_path)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        MultimodalClassifier.from_pretrained(tmp_path)


def test_config_rejects_bad_values():
    with pytest.raises(CheckpointError, match="divisible"):
        cfg = tiny_config(100)
        type(cfg)(**{**cfg.__dict__, "num_heads": 5})
    with pytest.raises(CheckpointError, match="max_position_embeddings"):
        cfg = tiny_config(100)
        type(cfg)(**{**cfg.__dict__, "max_seq_len": 65})


def test_graph_grad_cam_equals_autograd():
    """FusionHead.explain's region_grad_cam (its backward written out: modality weights,
    text mean, attn_norm, the cross-attention's softmax, keys and values, image mean, image_norm)
    against torch.autograd's Grad-CAM through the whole head; float32 rounding (1e-5 of the range).
    The modality weights are kept away from 0 and 1 so that every path counts; masks right-padded,
    left-padded and holed."""
    torch.manual_seed(0)
    model = MultimodalClassifier(tiny_config(100, num_labels=5)).eval()
    head = model.head
    with torch.no_grad():  # LayerNorms whose affine parts are not the identity
        for norm in (head.image_norm, head.attn_norm, head.text_norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0, 0.1)
    x_in = _inputs(batch=4)
    x_in["attention_mask"][1, 5:] = 0  # right-padded
    x_in["attention_mask"][2, :3] = 0  # left-padded
    x_in["attention_mask"][3, 2:4] = 0  # a hole
    with torch.no_grad():
        text = model.encode_text(x_in["input_ids"], x_in["attention_mask"], x_in["token_type_ids"])
        image = model.encode_image(x_in["pixel_values"])
        got = head.explain(text, x_in["attention_mask"], image)
    alpha = got.modality_weights[:, 0]
    assert ((alpha > 0.05) & (alpha < 0.95)).all(), alpha
    x = image.clone().requires_grad_(True)
    logits = head(text, x_in["attention_mask"], x).logits
    logits.gather(1, logits.argmax(-1, keepdim=True)).sum().backward()
    expected = (x * x.grad.mean(1, keepdim=True)).sum(-1).detach()
    assert got.region_grad_cam.shape == (4, image.shape[1])
    scale = float(expected.abs().max())
    assert scale > 0
    np.testing.assert_allclose(got.region_grad_cam.numpy(), expected.numpy(), atol=1e-5 * scale)
