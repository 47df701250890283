"""A realistic size of bring-your-own encoders (issue 25.5): a bert-base-size text encoder (768
hidden, 12 layers, 12 heads; random weights) + ResNet-50 (random weights), saved as Hugging Face
directories, loaded with ``fusionrt.model.load_encoders`` and exported fp32 and int8, each export in
its own process: wall time and peak RSS of that process.

Usage: python benchmarks/bert_base_resnet50.py WORKDIR [--precisions fp32,int8]

Writes WORKDIR/checkpoint, WORKDIR/bundle-<precision> and prints one JSON line per export; speed
against OpenVINO's default conversion: benchmarks/openvino_peers.py WORKDIR/bundle-* --checkpoint
WORKDIR/checkpoint --agreement 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
             "max_position_embeddings": 512, "type_vocab_size": 2}
SEQ = 64


def build(workdir: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModel

    from fusionrt.model import load_encoders
    from fusionrt.model.data import make_synthetic_dataset
    from fusionrt.model.encoders import RESNET50, minilm_path
    from fusionrt.model.train import TrainOptions, train

    text_dir, image_dir = workdir / "bert-base", workdir / "resnet50"
    torch.manual_seed(0)
    vocab = AutoConfig.from_pretrained(minilm_path()).vocab_size  # MiniLM's WordPiece vocabulary
    AutoModel.from_config(AutoConfig.for_model("bert", vocab_size=vocab, **BERT_BASE)).save_pretrained(text_dir)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        (text_dir / name).write_bytes((minilm_path() / name).read_bytes())
    AutoModel.from_config(AutoConfig.for_model("resnet", **RESNET50)).save_pretrained(image_dir)
    load_encoders(text_dir, image_dir, ["a", "b"], max_seq_len=SEQ)  # the directories load
    data = make_synthetic_dataset(workdir / "data", num_samples=256, seed=0)
    train(data, workdir / "checkpoint", options=TrainOptions(epochs=3, ablations=False, heldout_fraction=0.5),
          progress=False, text_encoder=text_dir, image_encoder=image_dir)
    return workdir / "checkpoint"


def export(checkpoint: Path, out: Path, precision: str) -> dict:
    # the command line (--precision auto is a search, not one export); the gate is off: random
    # encoder weights on a synthetic task say nothing about accuracy
    code = ("import resource, sys; from fusionrt.cli import main; code = main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); "
            "sys.exit(code)")
    argv = [str(checkpoint), "-o", str(out), "--precision", precision, "--min-agreement", "0", "--max-accuracy-drop", "100"]
    if precision == "auto":
        argv += ["--target", "auto"]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, "export", *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"fusionrt export {' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    peak_mib = max(int(v) for v in done.stdout.split()[-2:]) / 1024  # ru_maxrss is in KiB on Linux
    manifest = json.loads((out / "manifest.json").read_text())
    v = manifest["validation"]
    return {"precision": precision, "export_s": round(seconds, 1), "peak_rss_mib": round(peak_mib),
            "fused_attention": manifest["graphs"]["text_encoder"]["fused_ops"].get("Attention", 0),
            "top1_agreement": v["top1_agreement"], "eval_samples": v["eval_num_samples"],
            "max_abs_error": v["max_abs_error"], "cpu": manifest["cpu"]["model"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--precisions", default="fp32,int8")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = workdir / "checkpoint"
    if not (checkpoint / "model.safetensors").is_file():
        build(workdir)
    for precision in args.precisions.split(","):
        print(json.dumps(export(checkpoint, workdir / f"bundle-{precision}", precision)), flush=True)


if __name__ == "__main__":
    main()
