#!/usr/bin/env bash
# Reproduce the README's performance numbers (CPU, 2 threads). About 10 minutes on 2 cores.
# Run from the project root in the environment of the README's first command.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-fusionrt-demo}
THREADS=${THREADS:-2}
[ -f "$WORK/bundles/int8/manifest.json" ] || fusionrt demo --workdir "$WORK" --threads "$THREADS"
python benchmarks/export_speedups.py --workdir "$WORK" --threads "$THREADS"
python benchmarks/engine_runtime.py --bundle "$WORK/bundles/int8" --threads "$THREADS"
fusionrt bench "$WORK/bundles/fp32" "$WORK/bundles/int8" --checkpoint "$WORK/checkpoint" \
  --batch-sizes 1,8 --threads "$THREADS" --duration-s 5 --report "$WORK/report"
