"""The multimodal classifier: a text encoder, an image encoder (each a row of
:mod:`fusionrt.model.families`: BERT, RoBERTa, XLM-R, DistilBERT, ELECTRA; ResNet, ConvNeXt, ViT),
fusion head.

The whole model is in this file:

    input_ids, attention_mask[, token_type_ids] (B, S) int64 -> text encoder  -> T (B, S, Ht)
    pixel_values (B, 3, H, W) float32                        -> image encoder -> I (B, L, Hi)
        (CNN: feature map (B, Hi, h, w) -> L = h*w regions; ViT: L = patch tokens without CLS)
    head: project to d_model; text tokens attend to image regions (multi-head cross-attention);
          masked mean of text tokens, mean of image regions;
          modality attention alpha_i = softmax_i(u_i^T W_a phi), u_i = tanh(W_u x_i + b_u)
          (the context-vector attention of Yang et al., 2016, "Hierarchical Attention Networks",
          eqs. 8-10, applied over modalities as in Moon et al., 2018, "Multimodal Named Entity
          Recognition"); z = sum_i alpha_i x_i; MLP -> logits (B, num_labels).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from fusionrt.errors import CheckpointError
from fusionrt.model.config import MultimodalConfig
from fusionrt.model.families import IMAGE, TEXT, family

WEIGHTS_NAME = "model.safetensors"


class MultimodalOutput(NamedTuple):
    logits: torch.Tensor  # (B, num_labels) float32
    modality_weights: torch.Tensor  # (B, 2) float32: alpha for (text, image)


class ExplainOutput(NamedTuple):
    """What :meth:`FusionHead.explain` returns (the ``fusion_head_explain`` graph's outputs)."""

    logits: torch.Tensor  # (B, num_labels) float32
    modality_weights: torch.Tensor  # (B, 2) float32
    cross_attention: torch.Tensor  # (B, heads, S, L) float32: softmax probabilities, rows sum to 1
    token_contributions: torch.Tensor  # (B, S) float32: <alpha_text * m_s / n * t_s, dlogit_c/dz>
    region_contributions: torch.Tensor  # (B, L) float32: <alpha_image / L * v_r, dlogit_c/dz>
    region_grad_cam: torch.Tensor  # (B, L) float32: <x_r, w>, w the mean over regions of dlogit_c/dx_r (Grad-CAM before its ReLU)


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Scaled dot-product attention over projected q (B, S, D), k and v (B, L, D) -> (B, S, D).

    Scale ``1/sqrt(D / num_heads)`` (Vaswani et al., 2017, eq. 1); the same contract as ONNX
    Runtime's ``com.microsoft.MultiHeadAttention`` with its default scale.
    """
    return attention_with_weights(q, k, v, num_heads)[0]


def attention_with_weights(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`multi_head_attention` and its probabilities: ``(out (B, S, D), weights (B, h, S, L))``."""
    b, _, d = q.shape
    h, hd = num_heads, d // num_heads
    q = q.reshape(b, -1, h, hd).transpose(1, 2)  # (B, h, S, hd)
    k = k.reshape(b, -1, h, hd).transpose(1, 2)  # (B, h, L, hd)
    v = v.reshape(b, -1, h, hd).transpose(1, 2)  # (B, h, L, hd)
    weights = torch.softmax(q @ k.transpose(-2, -1) * hd**-0.5, dim=-1)  # (B, h, S, L)
    return (weights @ v).transpose(1, 2).reshape(b, -1, d), weights  # (B, S, D), (B, h, S, L)


class _FusedMultiHeadAttention(torch.autograd.Function):
    """Exports as one ``com.microsoft.MultiHeadAttention`` node (inference only, no backward)."""

    @staticmethod
    def forward(ctx, q, k, v, num_heads: int):
        return multi_head_attention(q, k, v, num_heads)

    @staticmethod
    def symbolic(g, q, k, v, num_heads: int):
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=num_heads)
        out.setType(q.type())
        return out


class CrossAttention(nn.Module):
    """Multi-head attention of queries (B, S, D) over keys/values (B, L, D); S may differ from L.

    Written out (not ``nn.MultiheadAttention``, whose exported graph ONNX Runtime does not fuse):
    when ``export_fused`` is set, ONNX export emits the attention core as one
    ``com.microsoft.MultiHeadAttention`` node; otherwise as standard MatMul/Softmax ops.
    """

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.export_fused = False

    def forward(self, query: torch.Tensor, key_value: torch.Tensor) -> torch.Tensor:
        q = self.q_proj(query)  # (B, S, D)
        k = self.k_proj(key_value)  # (B, L, D)
        v = self.v_proj(key_value)  # (B, L, D)
        if self.export_fused and torch.onnx.is_in_onnx_export():
            out = _FusedMultiHeadAttention.apply(q, k, v, self.num_heads)
        else:
            out = multi_head_attention(q, k, v, self.num_heads)
        return self.out_proj(out)  # (B, S, D)

    def forward_with_weights(self, query: torch.Tensor, key_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` (always unfused) and the attention probabilities ``(B, heads, S, L)``."""
        out, weights = attention_with_weights(
            self.q_proj(query), self.k_proj(key_value), self.v_proj(key_value), self.num_heads
        )
        return self.out_proj(out), weights


class FusionHead(nn.Module):
    """Cross-attention fusion, modality attention and the MLP classifier."""

    def __init__(self, text_hidden: int, image_hidden: int, config: MultimodalConfig):
        super().__init__()
        d = config.d_model
        self.text_proj = nn.Linear(text_hidden, d)
        self.text_norm = nn.LayerNorm(d)
        # Image features of a ResNet grow with depth (residual sums): normalize before fusing.
        self.image_proj = nn.Linear(image_hidden, d)
        self.image_norm = nn.LayerNorm(d)
        self.cross_attn = CrossAttention(d, config.num_heads)
        self.attn_norm = nn.LayerNorm(d)
        self.modality_proj = nn.Linear(d, d)  # W_u, b_u
        self.modality_context = nn.Linear(d, d, bias=False)  # W_a
        self.modality_query = nn.Parameter(torch.randn(d) * d**-0.5)  # phi
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Sequential(
            nn.Linear(d, config.classifier_hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.classifier_hidden, config.num_labels),
        )

    def forward(
        self, text_features: torch.Tensor, attention_mask: torch.Tensor, image_features: torch.Tensor
    ) -> MultimodalOutput:
        t = self.text_norm(self.text_proj(text_features))  # (B, S, D)
        v = self.image_norm(self.image_proj(image_features))  # (B, L, D)
        t = self.attn_norm(t + self.dropout(self.cross_attn(t, v)))  # (B, S, D)
        _, _, alpha, z = self._fuse(t, attention_mask, v)
        return MultimodalOutput(self.classifier(self.dropout(z)), alpha)

    def _fuse(self, t: torch.Tensor, attention_mask: torch.Tensor, v: torch.Tensor):
        """Pooling and modality attention: ``(m (B, S, 1), x (B, 2, D), alpha (B, 2), z (B, D))``."""
        m = attention_mask.unsqueeze(-1).to(t.dtype)  # (B, S, 1)
        x_text = (t * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)
        x_image = v.mean(1)  # (B, D)
        x = torch.stack([x_text, x_image], dim=1)  # (B, 2, D)
        u = torch.tanh(self.modality_proj(x))  # (B, 2, D)
        scores = (u * self.modality_context(self.modality_query)).sum(-1)  # (B, 2)
        alpha = torch.softmax(scores, dim=-1)  # (B, 2)
        z = (alpha.unsqueeze(-1) * x).sum(1)  # (B, D)
        return m, x, alpha, z

    def explain(
        self, text_features: torch.Tensor, attention_mask: torch.Tensor, image_features: torch.Tensor
    ) -> ExplainOutput:
        """The forward pass (inference) plus what explains it, for the predicted class c.

        ``g = dlogit_c/dz`` is written out (the classifier is Linear-GELU-Linear, GELU exact:
        ``gelu'(h) = Phi(h) + h phi(h)``), so the graph needs no autograd. Since
        ``z = sum_s alpha_text m_s/n t_s + sum_r alpha_image/L v_r``, the contributions
        ``<., g>`` of tokens and regions add up to ``<z, g>`` (gradient x input at the fused
        representation). Tokens ``t_s`` already hold what they attended to (``cross_attention``).

        ``region_grad_cam`` is Grad-CAM (Selvaraju et al., 2017, eq. 1-2, before its ReLU) on the
        image encoder's last map ``x``: ``<x_r, w>`` with ``w`` the mean over regions of
        ``dlogit_c/dx_r``, the gradient through every path of the head (the image mean, the
        cross-attention's keys and values, the modality weights), its backward written out
        (:meth:`_grad_at_regions`, then the ``image_norm`` LayerNorm's and ``image_proj``'s).
        """
        y = self.image_proj(image_features)  # (B, L, D)
        v = self.image_norm(y)  # (B, L, D)
        t0 = self.text_norm(self.text_proj(text_features))  # (B, S, D)
        ca = self.cross_attn
        q, k, values = ca.q_proj(t0), ca.k_proj(v), ca.v_proj(v)
        mixed, weights = attention_with_weights(q, k, values, ca.num_heads)  # (B, S, D) before out_proj, (B, h, S, L)
        h = t0 + ca.out_proj(mixed)  # (B, S, D)
        t = self.attn_norm(h)  # (B, S, D)
        m, pooled, alpha, z = self._fuse(t, attention_mask, v)
        first, last = self.classifier[0], self.classifier[3]
        hidden = first(z)  # (B, Hc)
        logits = last(self.classifier[1](hidden))  # (B, C)
        target = logits.argmax(-1)  # (B,)
        gelu_grad = 0.5 * (1.0 + torch.erf(hidden * 2**-0.5)) + hidden * torch.exp(-0.5 * hidden * hidden) * (2 * torch.pi) ** -0.5
        g = (last.weight[target] * gelu_grad) @ first.weight  # (B, D)
        n = m.sum(1).clamp(min=1.0)  # (B, 1)
        tokens = alpha[:, :1] * (t @ g.unsqueeze(-1)).squeeze(-1) * m.squeeze(-1) / n  # (B, S)
        regions = alpha[:, 1:] * (v @ g.unsqueeze(-1)).squeeze(-1) / v.shape[1]  # (B, L)
        dv = self._grad_at_regions(g, alpha, pooled, m / n.unsqueeze(-1), h, q, k, values, weights)
        dx = _layer_norm_backward(y, self.image_norm, dv) @ self.image_proj.weight  # (B, L, Hi): dlogit_c/dx_r
        grad_cam = (image_features @ dx.mean(1).unsqueeze(-1)).squeeze(-1)  # (B, L): channel weights averaged over regions
        return ExplainOutput(logits, alpha, weights, tokens, regions, grad_cam)

    def _grad_at_regions(self, g, alpha, pooled, share, h, q, k, values, weights) -> torch.Tensor:
        """``dlogit_c/dv (B, L, D)`` at the normalized image regions, given ``g = dlogit_c/dz
        (B, D)``, the modality weights ``alpha (B, 2)``, the pooled ``(x_text, x_image) (B, 2, D)``,
        each token's pooling share ``m_s / n (B, S, 1)``, the cross-attention block's input to
        ``attn_norm`` ``h (B, S, D)``, its projected ``q``, ``k``, ``values`` and probabilities
        ``weights (B, heads, S, L)``. Chain rule, path by path (scale ``1/sqrt(hd)`` as
        :func:`attention_with_weights`)."""
        # z = sum_m alpha_m x_m, alpha = softmax(<tanh(W_u x_m + b_u), W_a phi>):
        # dlogit/dscore_text = -dlogit/dscore_image = alpha_t alpha_i <g, x_text - x_image>
        u = torch.tanh(self.modality_proj(pooled))  # (B, 2, D)
        delta = alpha[:, 0] * alpha[:, 1] * ((pooled[:, 0] - pooled[:, 1]) * g).sum(-1)  # (B,)
        dscore = torch.stack([delta, -delta], 1).unsqueeze(-1)  # (B, 2, 1)
        dscore_dpooled = ((1 - u * u) * self.modality_context(self.modality_query)) @ self.modality_proj.weight  # (B, 2, D)
        dpooled = alpha.unsqueeze(-1) * g.unsqueeze(1) + dscore * dscore_dpooled  # (B, 2, D): at (x_text, x_image)
        dh = _layer_norm_backward(h, self.attn_norm, share * dpooled[:, :1])  # (B, S, D): through the text mean
        ca = self.cross_attn
        b, heads = q.shape[0], ca.num_heads
        split = lambda a: a.reshape(b, a.shape[1], heads, -1).transpose(1, 2)  # noqa: E731  (B, h, N, hd)
        merge = lambda a: a.transpose(1, 2).reshape(b, a.shape[2], -1)  # noqa: E731  (B, N, D)
        dmixed = split(dh @ ca.out_proj.weight)  # (B, h, S, hd)
        dvalues = weights.transpose(-2, -1) @ dmixed  # (B, h, L, hd)
        dweights = dmixed @ split(values).transpose(-2, -1)  # (B, h, S, L)
        dscores = weights * (dweights - (dweights * weights).sum(-1, keepdim=True))  # softmax's backward
        dk = dscores.transpose(-2, -1) @ split(q) * split(q).shape[-1] ** -0.5  # (B, h, L, hd)
        return dpooled[:, 1:] / k.shape[1] + merge(dk) @ ca.k_proj.weight + merge(dvalues) @ ca.v_proj.weight


def _layer_norm_backward(pre: torch.Tensor, norm: nn.LayerNorm, upstream: torch.Tensor) -> torch.Tensor:
    """The gradient at ``pre (..., D)`` of a LayerNorm ``norm`` whose output receives ``upstream``:
    with ``yhat = (pre - mean) / sigma`` and ``a = gamma * upstream``,
    ``(a - mean(a) - yhat * mean(a * yhat)) / sigma`` (means over the D features)."""
    centred = pre - pre.mean(-1, keepdim=True)
    inv_sigma = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + norm.eps)
    yhat = centred * inv_sigma
    a = upstream * norm.weight
    return inv_sigma * (a - a.mean(-1, keepdim=True) - yhat * (a * yhat).mean(-1, keepdim=True))


class MultimodalClassifier(nn.Module):
    """Text+image classifier (see the module docstring for the architecture).

    Args:
        config: the :class:`MultimodalConfig`; its ``text_config`` and ``image_config`` build the
            encoders of their families' rows (``model_type``; none means ``bert`` and ``resnet``).
        attn_implementation: the text encoder's attention kernel; ``None`` is transformers'
            default (SDPA), ``"eager"`` the explicit MatMul/Softmax form that ONNX Runtime's
            transformer optimizer fuses (export uses it).

    Attributes:
        text_family / image_family: the :class:`~fusionrt.model.families.EncoderFamily` rows.
    """

    def __init__(self, config: MultimodalConfig, attn_implementation: str | None = None):
        super().__init__()
        self.config = config
        self.text_family = family(config.text_config, TEXT)
        self.image_family = family(config.image_config, IMAGE)
        self.text_encoder = self.text_family.build(dict(config.text_config), attn_implementation)
        self.image_encoder = self.image_family.build(dict(config.image_config), attn_implementation)
        self.head = FusionHead(
            self.text_family.hidden_size(config.text_config), self.image_family.hidden_size(config.image_config), config
        )

    @property
    def text_inputs(self) -> tuple[str, ...]:
        """The text encoder's inputs: ``input_ids``, ``attention_mask`` and, for families that
        take them, ``token_type_ids``."""
        return self.text_family.inputs

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, S) int64 ids and mask (and types, ignored by families without them) -> text_features (B, S, Ht) float32."""
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.text_family.features(self.text_encoder(**{k: given[k] for k in self.text_inputs}))

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 -> image_features (B, L, Hi) float32."""
        return self.image_family.features(self.image_encoder(pixel_values=pixel_values))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> MultimodalOutput:
        """Returns ``logits (B, num_labels) float32`` and ``modality_weights (B, 2) float32``."""
        text_features = self.encode_text(input_ids, attention_mask, token_type_ids)
        image_features = self.encode_image(pixel_values)
        return self.head(text_features, attention_mask, image_features)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` (no pickle), with the permissions the
        user's umask gives (safetensors' ``save_file`` creates an owner-only file)."""
        from safetensors.torch import save

        from fusionrt.utils import atomic_write_bytes

        Path(directory).mkdir(parents=True, exist_ok=True)
        self.config.save(directory)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write_bytes(Path(directory) / WEIGHTS_NAME, save(state, metadata={"format": "pt"}))

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, attn_implementation: str | None = None
    ) -> "MultimodalClassifier":
        """Load ``config.json`` and ``model.safetensors``; the model is returned in eval mode.

        Raises:
            CheckpointError: a file is missing, or the weights lack or add parameters (named).
        """
        from safetensors.torch import load_file

        config = MultimodalConfig.load(directory)
        weights = Path(directory) / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"checkpoint weights missing: {weights} (only safetensors is read)")
        model = cls(config, attn_implementation)
        state = load_file(str(weights))
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatch
            raise CheckpointError(f"{weights} does not match {Path(directory) / 'config.json'}: {exc}") from None
        problems = []
        if result.missing_keys:
            problems.append(f"missing weights: {', '.join(result.missing_keys)}")
        if result.unexpected_keys:
            problems.append(f"unexpected weights: {', '.join(result.unexpected_keys)}")
        if problems:
            raise CheckpointError(f"{weights} does not match {Path(directory) / 'config.json'}: " + "; ".join(problems))
        return model.eval()
