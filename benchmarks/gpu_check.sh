#!/usr/bin/env bash
# GPU check: run the GPU-marked tests and a short GPU benchmark, at most ~8 minutes.
# Needs an NVIDIA GPU and onnxruntime-gpu instead of onnxruntime:
#   pip uninstall -y onnxruntime && pip install -c constraints.txt -e ".[test]" onnxruntime-gpu
# Not run on the CPU-only machines this project was built on.
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import onnxruntime, sys
providers = onnxruntime.get_available_providers()
print("onnxruntime", onnxruntime.__version__, providers)
if "CUDAExecutionProvider" not in providers:
    sys.exit("CUDAExecutionProvider not available: install onnxruntime-gpu on a machine with an NVIDIA GPU")
PY
timeout 300 pytest -m gpu -q
WORK=${WORK:-fusionrt-demo}
[ -d "$WORK/bundles/int8" ] || timeout 300 fusionrt demo --workdir "$WORK"
timeout 180 python - "$WORK" <<'PY'
import sys
from fusionrt import Engine
from fusionrt.bench import interleaved_medians
from fusionrt.model.data import read_jsonl
work = sys.argv[1]
ex = read_jsonl(f"{work}/checkpoint/heldout.jsonl")[:8]
contenders = {}
for precision in ("fp32", "fp16", "int8"):
    for providers in (["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]):
        e = Engine.from_bundle(f"{work}/bundles/{precision}", providers=providers)
        feed = e.preprocess([x.text for x in ex], [x.image for x in ex])
        contenders[f"{precision}/{providers[0]}"] = lambda e=e, f=feed: e.run(f)
for name, s in interleaved_medians(contenders, warmup=3, rounds=20).items():
    print(f"{name}: {s * 1e3:.1f} ms per batch of 8")
PY
