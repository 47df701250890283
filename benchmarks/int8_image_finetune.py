"""Quantization-aware fine-tuning of a static INT8 image encoder's weights, biases and activation
steps, with its QDQ graph and ops unchanged, and what it does to the explanation's top region
(issue 28.5). Measured in docs/performance-notes.md ("Fine-tuning the INT8 image encoder with its
quantization in the loop"); not part of the exporter (it did not reach 90% and costs minutes).

Usage:
    python benchmarks/int8_image_finetune.py --demo DEMO_DIR [--steps 200] [--workdir /tmp/int8-finetune]
        [--examples 256]

DEMO_DIR is what ``fusionrt demo`` writes (checkpoint/ with calibration.jsonl and heldout.jsonl;
bundles/fp32, int8, auto). The int8 bundle's image encoder (GPTQ-rounded) runs in PyTorch with
every activation fake-quantized at its graph's calibrated scale and zero point, every conv weight
rounded to its channel's step by a straight-through estimator (Bengio et al., 2013), and the steps
learnable (Esser et al., 2020, LSQ; here shrink-only, so ReLU6's [0, 6] holds); Adam moves them so
the last map (B, 49, 1280) matches the FP32 bundle's image encoder on the checkpoint's 128
calibration images and their mirror images (never a held-out one). The result replaces the image
encoder in copies of the int8 bundle (ONNX Runtime) and the auto bundle (OpenVINO); on the first
``--examples`` held-out pairs: the last map's relative L2 against FP32's (mean over items), and the
FP32 explanation graph's most relevant cell on FP32 text features with these image features
against FP32's (strict; among FP32's 3).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from explain_faithfulness import TIE, encoder_features, graph_regions  # noqa: E402

# Adam steps, images per step, learning rates (weights in units of their quantization step, biases
# in units of BIAS_UNIT bias steps: what one weight step moves at the top of a U8 input's range):
# measured on the default's EfficientNet-Lite0 (docs/performance-notes.md).
STEPS = 200
BATCH = 8
LR_CODES = 1e-2
LR_BIAS = 1e-2
LR_STEPS = 1e-2  # log activation steps
BIAS_UNIT = 127
SEED = 0


SUPPORTED_OPS = {"Conv", "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Cast", "Transpose", "Pad", "MaxPool",
                 "GlobalAveragePool", "Flatten", "Shape", "Slice", "Concat", "Reshape"}


class UnsupportedGraph(Exception):
    """The graph has an op :class:`QDQGraph` does not run (fine-tuning is then skipped)."""


def _attributes(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _onnx_pads(pads: list[int]) -> list[int]:
    """ONNX ``pads`` (all begins, then all ends) -> ``torch.nn.functional.pad``'s (last axis first)."""
    rank = len(pads) // 2
    return [p for axis in reversed(range(rank)) for p in (pads[axis], pads[axis + rank])]


def _conv(x, w, b, a: dict):
    import torch.nn.functional as F

    x = F.pad(x, _onnx_pads(a.get("pads", [0] * 2 * (x.dim() - 2))))
    return F.conv2d(x, w, b, stride=a.get("strides", 1), dilation=a.get("dilations", 1), groups=a.get("group", 1))


def _float_op(t: str, x: list, a: dict, const):
    """One float ONNX op on torch tensors (``x``: its inputs, ``None`` for absent ones;
    ``const(i)``: input ``i`` as a numpy constant)."""
    import torch
    import torch.nn.functional as F

    if t == "Conv":
        return _conv(x[0], x[1], x[2] if len(x) > 2 else None, a)
    simple = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}
    if t in simple:
        return simple[t](x[0], x[1])
    if t == "Relu":
        return torch.relu(x[0])
    if t == "Clip":
        lo, hi = (float(const(i)) if len(x) > i and x[i] is not None else None for i in (1, 2))
        return torch.clamp(x[0], lo, hi)
    if t == "Cast":
        return x[0].float()
    if t == "Transpose":
        return x[0].permute(*a["perm"])
    if t == "Pad":
        value = float(const(2)) if len(x) > 2 and x[2] is not None else 0.0
        return F.pad(x[0], _onnx_pads(const(1).tolist()), value=value)
    if t == "MaxPool":
        return F.max_pool2d(F.pad(x[0], _onnx_pads(a.get("pads", [0] * 4)), value=-np.inf), a["kernel_shape"],
                            a.get("strides", a["kernel_shape"]))
    if t == "GlobalAveragePool":
        return x[0].mean((2, 3), keepdim=True)
    if t == "Flatten":
        return x[0].flatten(a.get("axis", 1))
    if t == "Shape":
        return torch.tensor(x[0].shape)
    if t == "Slice":
        return x[0][int(const(1)[0]) : int(const(2)[0])]
    if t == "Concat":
        return torch.cat([v.reshape(-1) for v in x])
    if t == "Reshape":
        return x[0].reshape(*[int(d) or x[0].shape[i] for i, d in enumerate(x[1].tolist())])
    raise UnsupportedGraph(t)


class QDQGraph:
    """A QDQ ONNX graph as a differentiable torch function of its first input.

    Each QuantizeLinear is a fake quantization (``torch._fake_quantize_learnable_per_tensor_affine``,
    Esser et al., 2020, "Learned Step Size Quantization") at its zero point and a step
    ``scale * exp(min(u, 0))``: ``u`` a parameter per scale initializer, starting at 0, so a step
    can only shrink (an activation range implied by a removed Clip, ReLU6's [0, 6], stays inside
    it). Each weight with an INT8 initializer is ``clamp(round(codes), -127, 127) * scale`` per
    output channel, ``codes`` a float parameter starting at the graph's INT8 values (rounded with a
    straight-through estimator); each INT32 bias its dequantized value plus ``delta * unit``
    (``unit``: BIAS_UNIT of its original steps; ``delta`` a parameter starting at 0).

    Raises:
        UnsupportedGraph: an op outside the small set image encoders use (:func:`_float_op`).
    """

    def __init__(self, model):
        import torch
        from onnx import numpy_helper

        self.model = model
        self.nodes = list(model.graph.node)
        self.inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.codes: dict = {}  # DequantizeLinear output -> (codes (C, ...), scale (C, 1, ...))
        self.biases: dict = {}  # DequantizeLinear output -> (delta (C,), start (C,), unit (C,))
        self.steps = {n.input[1]: torch.nn.Parameter(torch.zeros(())) for n in self.nodes if n.op_type == "QuantizeLinear"}
        for n in self.nodes:
            if n.op_type != "DequantizeLinear" or n.input[0] not in self.inits:
                continue
            value, scale = self.inits[n.input[0]], self.inits[n.input[1]].astype(np.float32)
            if value.dtype == np.int8 and scale.ndim == 1:
                codes = torch.nn.Parameter(torch.from_numpy(value.astype(np.float32)))
                self.codes[n.output[0]] = (codes, torch.from_numpy(scale).view(-1, *[1] * (value.ndim - 1)))
            elif value.dtype == np.int32:
                start = torch.from_numpy(value.astype(np.float64) * scale).float()
                unit = torch.from_numpy(scale * BIAS_UNIT)  # (C,) about in_scale * w_scale * 127
                self.biases[n.output[0]] = (torch.nn.Parameter(torch.zeros_like(start)), start, unit)
        unsupported = {n.op_type for n in self.nodes} - {"QuantizeLinear", "DequantizeLinear"} - SUPPORTED_OPS
        if unsupported:
            raise UnsupportedGraph(", ".join(sorted(unsupported)))

    def parameters(self) -> tuple[list, list, list]:
        """``(weight codes, bias deltas, log activation steps)``: the trainable tensors."""
        return [c for c, _ in self.codes.values()], [b[0] for b in self.biases.values()], list(self.steps.values())

    def step(self, name: str):
        """The activation step of scale initializer ``name``, a 0-d tensor."""
        import torch

        return float(self.inits[name]) * torch.exp(torch.clamp(self.steps[name], max=0.0))

    def _quantize(self, n, values: dict):
        import torch

        zero = torch.tensor([float(self.inits[n.input[2]])])
        return torch._fake_quantize_learnable_per_tensor_affine(values[n.input[0]].float(), self.step(n.input[1]).view(1),
                                                                zero, 0, 255, 1.0)

    def _dequantize(self, n, values: dict):
        import torch

        if n.output[0] in self.codes:
            codes, scale = self.codes[n.output[0]]
            rounded = codes + (torch.round(codes) - codes).detach()  # straight-through rounding
            return torch.clamp(rounded, -127, 127) * scale
        if n.output[0] in self.biases:
            delta, start, unit = self.biases[n.output[0]]
            return start + delta * unit
        if n.input[0] in self.fake_quantized:
            return values[n.input[0]]
        scale = torch.from_numpy(self.inits[n.input[1]].astype(np.float32))
        zero = torch.from_numpy(self.inits[n.input[2]].astype(np.float32)) if len(n.input) > 2 else 0.0
        return (values[n.input[0]].float() - zero) * scale

    def __call__(self, x):
        """The graph's first output on ``x`` (the graph's first input, any dtype)."""
        import torch

        values = {k: torch.from_numpy(np.array(v)) for k, v in self.inits.items()}
        values[self.model.graph.input[0].name] = x
        self.fake_quantized = set()
        for n in self.nodes:
            if n.op_type == "DequantizeLinear":
                y = self._dequantize(n, values)
            elif n.op_type == "QuantizeLinear":
                y = self._quantize(n, values)
                self.fake_quantized.add(n.output[0])
            else:
                y = _float_op(n.op_type, [values[i] if i else None for i in n.input], _attributes(n),
                              lambda i, n=n: self.inits[n.input[i]])
            values[n.output[0]] = y
        return values[self.model.graph.output[0].name]

    def write(self) -> dict:
        """Writes the trained weights, biases and activation steps into the model's initializers
        (an INT32 bias re-encoded at its conv's new input step times its weight's step).

        Returns:
            ``{"changed_weights": INT8 values changed, "narrowed_ranges": activation steps shrunk}``.
        """
        import torch
        from onnx import numpy_helper

        inits = {t.name: t for t in self.model.graph.initializer}
        steps = {name: np.float32(self.step(name).detach()) for name in self.steps}
        dq = {n.output[0]: n for n in self.nodes if n.op_type == "DequantizeLinear"}
        changed = 0
        for n in self.nodes:
            if n.output[0] in self.codes:
                codes = torch.clamp(torch.round(self.codes[n.output[0]][0].detach()), -127, 127).numpy().astype(np.int8)
                changed += int((codes != self.inits[n.input[0]]).sum())
                inits[n.input[0]].CopyFrom(numpy_helper.from_array(codes, n.input[0]))
            elif n.op_type == "Conv" and len(n.input) > 2 and n.input[2] in self.biases:
                x, w, b = dq.get(n.input[0]), dq[n.input[1]], dq[n.input[2]]
                delta, start, unit = self.biases[n.input[2]]
                bias = (start + delta * unit).detach().double().numpy()
                scale = self.inits[b.input[1]].astype(np.float64)
                if x is not None and x.input[1] in steps:
                    scale = np.float64(steps[x.input[1]]) * self.inits[w.input[1]].astype(np.float64)
                live = scale > 0  # a channel whose weights are all zero has scale 0: its bias is 0 anyway
                codes = np.where(live, np.round(bias / np.where(live, scale, 1)), 0)
                inits[b.input[0]].CopyFrom(numpy_helper.from_array(np.clip(codes, -2**31, 2**31 - 1).astype(np.int32), b.input[0]))
                inits[b.input[1]].CopyFrom(numpy_helper.from_array(scale.astype(np.float32), b.input[1]))
        for name, value in steps.items():
            inits[name].CopyFrom(numpy_helper.from_array(np.array(value, np.float32), name))
        narrowed = sum(float(p.detach()) < 0 for p in self.steps.values())
        return {"changed_weights": changed, "narrowed_ranges": int(narrowed)}


def _mirrored(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` and their mirror images: uint8 ``(B, H, W, 3)`` or float ``(B, 3, H, W)``."""
    axis = 2 if pixels.ndim == 4 and pixels.shape[-1] == 3 and pixels.dtype == np.uint8 else -1
    return np.concatenate([pixels, np.flip(pixels, axis)])


def finetune_qdq(float_path: Path, qdq_path: Path, feeds: list[dict], steps: int = STEPS, batch: int = BATCH,
                 seed: int = SEED, rates: tuple[float, float, float] = (LR_CODES, LR_BIAS, LR_STEPS)) -> dict:
    """Fine-tune the INT8 weights and INT32 biases of ``qdq_path`` (in place) so that its first
    output matches ``float_path``'s on the calibration images (see the module docstring).

    Args:
        float_path: the float graph ``qdq_path`` was quantized from (same inputs and outputs).
        qdq_path: a QDQ image encoder (per-channel INT8 conv weights, U8 activations).
        feeds: calibration batches; their arrays under the graph's first input name are the
            images (mirror images are added).
        steps: Adam steps (``batch`` images each, drawn without replacement per step).
        seed: seeds the image draws (the result is deterministic given it, on one machine).
        rates: Adam's learning rates of the weights, the biases and the log activation steps.

    Returns:
        What was done, for the manifest: ``{"steps", "changed_weights", "loss_before", "loss_after"}``
        (losses: squared error over the float map's squared norm, mean of the first and last 10%
        of steps), or ``{"skipped": reason}`` when the graph has an op :class:`QDQGraph` lacks.
    """
    import onnx
    import torch

    from fusionrt.engine.loaders import ort_session
    from fusionrt.engine.session import SessionOptions

    model = onnx.load(str(qdq_path))
    try:
        graph = QDQGraph(model)
    except UnsupportedGraph as e:
        return {"skipped": f"op {e} not supported"}
    name = model.graph.input[0].name
    images = _mirrored(np.concatenate([f[name] for f in feeds]))
    session = ort_session(str(float_path), SessionOptions())
    targets = np.concatenate([session.run(None, {name: images[i : i + 32]})[0] for i in range(0, len(images), 32)])
    codes, biases, steps_ = graph.parameters()
    adam = torch.optim.Adam([{"params": p, "lr": r} for p, r in zip((codes, biases, steps_), rates)])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(adam, steps)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        pick = rng.choice(len(images), min(batch, len(images)), replace=False)
        target = torch.from_numpy(targets[pick])
        loss = ((graph(torch.from_numpy(np.ascontiguousarray(images[pick]))) - target) ** 2).sum() / (target**2).sum()
        adam.zero_grad()
        loss.backward()
        adam.step()
        schedule.step()
        losses.append(float(loss.detach()))
    tenth = max(1, steps // 10)
    written = graph.write()
    onnx.save(model, str(qdq_path))
    return {"steps": steps, **written, "loss_before": round(float(np.mean(losses[:tenth])), 5),
            "loss_after": round(float(np.mean(losses[-tenth:])), 5)}


def _slices(n: int, size: int = 32) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def _pixels(engine, examples) -> np.ndarray:
    return np.concatenate([engine.preprocess([e.text for e in examples[s]], [str(e.image) for e in examples[s]])["pixel_values"]
                           for s in _slices(len(examples))])


MARKER = ".int8-image-finetune"


def _swapped(bundle: Path, encoder: Path, dst: Path) -> Path:
    """A copy of ``bundle`` at ``dst`` with ``encoder`` as its image encoder (manifest hash updated)."""
    from fusionrt.bundle import sha256_file

    if dst.exists():
        if not (dst / MARKER).is_file():
            raise SystemExit(f"{dst} exists and this script did not write it: pass another --workdir")
        shutil.rmtree(dst)
    shutil.copytree(bundle, dst)
    (dst / MARKER).write_text("a bundle copy with a candidate image encoder, written by benchmarks/int8_image_finetune.py\n")
    shutil.copy(encoder, dst / "image_encoder.onnx")
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["graphs"]["image_encoder"]["sha256"] = sha256_file(dst / "image_encoder.onnx")
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dst


def evaluate(fp32, bundle: Path, ref: dict) -> dict:
    """Relative L2 of the last map, strict and tie-aware top region of ``bundle``'s image encoder."""
    from fusionrt import Engine

    with Engine.from_bundle(bundle, intra_op_num_threads=2) as engine:
        pixels = ref["pixels"]
        feats = np.concatenate([engine.runtime.infer_graph("image_encoder", {"pixel_values": pixels[s]})["image_features"]
                                for s in _slices(len(pixels))])
    rel = np.concatenate([graph_regions(fp32, {**ref["text"][i], "image_features": feats[s]})
                          for i, s in enumerate(_slices(len(pixels)))])
    n, f32 = len(feats), ref["image_features"]
    top = rel.argmax(1)
    return {"rel_l2": float(np.mean(np.linalg.norm((feats - f32).reshape(n, -1), axis=1) / np.linalg.norm(f32.reshape(n, -1), axis=1))),
            "strict": float(np.mean(top == ref["regions"].argmax(1))),
            "tie_aware": float(np.mean([t in np.argsort(-r)[:TIE] for t, r in zip(top, ref["regions"])]))}


def main() -> None:
    from fusionrt import Engine
    from fusionrt.model.data import read_jsonl

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", required=True)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--workdir", default="/tmp/int8-finetune")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--rates", default=f"{LR_CODES},{LR_BIAS},{LR_STEPS}",
                        help="Adam learning rates: weights, biases, log activation steps")
    args = parser.parse_args()
    demo, work = Path(args.demo), Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(2)
    held = read_jsonl(demo / "checkpoint/heldout.jsonl")[: args.examples]
    with Engine.from_bundle(demo / "bundles/fp32", intra_op_num_threads=2) as fp32:
        ref = {"pixels": _pixels(fp32, held), "text": [], "regions": [], "image_features": []}
        for s in _slices(len(held)):
            v = encoder_features(fp32, [e.text for e in held[s]], [str(e.image) for e in held[s]])
            ref["text"].append({k: v[k] for k in ("text_features", "attention_mask")})
            ref["regions"].append(graph_regions(fp32, v))
            ref["image_features"].append(v["image_features"])
        ref["regions"], ref["image_features"] = np.concatenate(ref["regions"]), np.concatenate(ref["image_features"])
        feeds = [{"pixel_values": _pixels(fp32, read_jsonl(demo / "checkpoint/calibration.jsonl"))}]
        candidate = work / "image_encoder.onnx"
        shutil.copy(demo / "bundles/int8/image_encoder.onnx", candidate)
        start = time.perf_counter()
        rates = tuple(float(r) for r in args.rates.split(","))
        done = finetune_qdq(demo / "bundles/fp32/image_encoder.onnx", candidate, feeds, steps=args.steps, rates=rates)
        done["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(done))
        for name in ("int8", "auto"):
            for label, encoder in (("gptq", demo / "bundles/int8/image_encoder.onnx"), ("finetuned", candidate)):
                got = evaluate(fp32, _swapped(demo / "bundles" / name, encoder, work / f"{name}-{label}"), ref)
                print(f"{name} ({'ONNX Runtime' if name == 'int8' else 'auto: OpenVINO'}) {label}: relative L2 {got['rel_l2']:.2%}, "
                      f"strict {got['strict']:.1%}, among FP32's {TIE} {got['tie_aware']:.1%}", flush=True)


if __name__ == "__main__":
    main()
