"""Speed of the optimized bundles against PyTorch, contenders measured in one process, as ratios.

Usage: python benchmarks/export_speedups.py [--workdir fusionrt-demo] [--threads 2] [--iterations 25]

Needs the demo's checkpoint and bundles (run `fusionrt demo` first). Contenders, all at batch 8 on
the same held-out captions and pictures, with the same thread count:
  - PyTorch eager: the checkpoint's model as users run it (transformers' default attention,
    torch.inference_mode, FP32);
  - the fp32, fp16 and int8 bundles through fusionrt.Engine, and an int8-dynamic bundle exported
    here (the text encoder's activations quantized per batch: faster, batch-dependent answers);
  - the FP32 text encoder with and without ONNX Runtime's transformer fusions (the unfused graph
    is the raw export, as written for --target tensorrt), at sequence lengths 16 and 64.
Prints medians in ms and the ratios the optimized-export issue targets.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from fusionrt import Engine
from fusionrt.bench import interleaved_medians
from fusionrt.engine.loaders import ort_session
from fusionrt.engine.session import SessionOptions
from fusionrt.export import ExportOptions, export_bundle
from fusionrt.model import load_checkpoint
from fusionrt.model.data import read_jsonl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="fusionrt-demo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=25, help="interleaved rounds; medians over them")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", default=None, help="also write the medians and ratios here")
    args = parser.parse_args()
    work = Path(args.workdir)
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(work / "checkpoint")
    examples = read_jsonl(work / "checkpoint" / "heldout.jsonl")[: args.batch_size]
    texts, images = [e.text for e in examples], [e.image for e in examples]
    it = args.iterations

    def torch_pipeline():
        feed, _ = ckpt.tokenizer(texts)
        feed["pixel_values"] = ckpt.image_processor(images)
        with torch.inference_mode():
            return ckpt.model(**{k: torch.from_numpy(v) for k, v in feed.items()})

    feed, _ = ckpt.tokenizer(texts)
    feed["pixel_values"] = ckpt.image_processor(images)
    tensors = {k: torch.from_numpy(v) for k, v in feed.items()}

    def torch_model():
        with torch.inference_mode():
            return ckpt.model(**tensors)

    contenders = {"pytorch/model": torch_model, "pytorch/pipeline": torch_pipeline}
    for precision in ("fp32", "fp16", "int8"):
        engine = Engine.from_bundle(work / "bundles" / precision, intra_op_num_threads=args.threads)
        contenders[f"{precision}/model"] = lambda e=engine: e.run(feed)
        contenders[f"{precision}/pipeline"] = lambda e=engine: e.predict(texts, images)

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dynamic = export_bundle(work / "checkpoint", Path(tmp) / "int8-dynamic", ExportOptions(precision="int8-dynamic"), progress=False)
        engine = Engine.from_bundle(dynamic, intra_op_num_threads=args.threads)
        contenders["int8-dynamic/model"] = lambda e=engine: e.run(feed)
        contenders["int8-dynamic/pipeline"] = lambda e=engine: e.predict(texts, images)
        unfused = export_bundle(work / "checkpoint", Path(tmp) / "unfused", ExportOptions(target="tensorrt"), progress=False)
        rng = np.random.default_rng(0)
        opts = SessionOptions(intra_op_num_threads=args.threads)
        for name, path in (("text_unfused", unfused / "text_encoder.onnx"), ("text_fused", work / "bundles" / "fp32" / "text_encoder.onnx")):
            sess = ort_session(path, opts)
            for seq in (16, 64):
                ids = rng.integers(1000, 20000, (args.batch_size, seq))
                text_feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
                contenders[f"{name}/seq{seq}_ms"] = lambda s=sess, f=text_feed: s.run(None, f)
        seconds = interleaved_medians(contenders, warmup=2, rounds=it)

    results: dict = {}
    for key, sec in seconds.items():
        name, kind = key.split("/")
        results.setdefault(name, {})[kind if kind.endswith("_ms") else f"{kind}_ms"] = round(sec * 1e3, 2)
    pt, fused, unfused_ms = results["pytorch"], results["text_fused"], results["text_unfused"]
    ratios = {
        "int8_model_vs_pytorch": pt["model_ms"] / results["int8"]["model_ms"],
        "int8_pipeline_vs_pytorch": pt["pipeline_ms"] / results["int8"]["pipeline_ms"],
        "int8_dynamic_model_vs_pytorch": pt["model_ms"] / results["int8-dynamic"]["model_ms"],
        "int8_dynamic_pipeline_vs_pytorch": pt["pipeline_ms"] / results["int8-dynamic"]["pipeline_ms"],
        "fp32_model_vs_pytorch": pt["model_ms"] / results["fp32"]["model_ms"],
        "fp16_model_vs_pytorch": pt["model_ms"] / results["fp16"]["model_ms"],
        "text_fused_vs_unfused_seq16": unfused_ms["seq16_ms"] / fused["seq16_ms"],
        "text_fused_vs_unfused_seq64": unfused_ms["seq64_ms"] / fused["seq64_ms"],
    }
    print(json.dumps(results, indent=2))
    print(f"INT8 model-only speedup over PyTorch eager: {ratios['int8_model_vs_pytorch']:.2f}x (target >= 3.0x)")
    print(f"INT8 whole-pipeline speedup over PyTorch eager: {ratios['int8_pipeline_vs_pytorch']:.2f}x (target >= 1.7x)")
    print(f"INT8-dynamic model-only / whole-pipeline speedup over PyTorch eager: "
          f"{ratios['int8_dynamic_model_vs_pytorch']:.2f}x / {ratios['int8_dynamic_pipeline_vs_pytorch']:.2f}x")
    print(f"FP32 model-only speedup over PyTorch eager: {ratios['fp32_model_vs_pytorch']:.2f}x")
    print(f"FP32 text encoder fused vs unfused: seq 16 {ratios['text_fused_vs_unfused_seq16']:.2f}x, "
          f"seq 64 {ratios['text_fused_vs_unfused_seq64']:.2f}x (target >= 1.1x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"batch_size": args.batch_size, "threads": args.threads,
                                               "median_ms": results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
