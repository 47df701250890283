#!/usr/bin/env bash
# Reproduce the README's performance table (CPU, 2 threads) in one run: about 8 minutes on 2 cores
# (3 of them `fusionrt demo` exporting the bundles), plus 2-3 when the checkpoint must be trained.
# Run from the project root in the environment of the README's first command.
# Writes $WORK/benchmarks/{export,engine,served}.json, $WORK/benchmarks/report/ (fusionrt bench)
# and $WORK/benchmarks/table.md, the table itself, also printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-fusionrt-demo}
THREADS=${THREADS:-2}
OUT="$WORK/benchmarks"
SECONDS=0
# Always through the demo: it reuses the checkpoint only when its training recipe is current and
# re-exports the bundles with this code, so the table never measures stale bundles.
fusionrt demo --workdir "$WORK" --threads "$THREADS" --benchmark off --triton off
mkdir -p "$OUT"
python benchmarks/export_speedups.py --workdir "$WORK" --threads "$THREADS" --json "$OUT/export.json"
python benchmarks/engine_runtime.py --bundle "$WORK/bundles/int8" --threads "$THREADS" --json "$OUT/engine.json"
fusionrt bench "$WORK/bundles/fp32" "$WORK/bundles/int8" --checkpoint "$WORK/checkpoint" \
  --batch-sizes 1,8 --threads "$THREADS" --duration-s 5 --report "$OUT/report"
python benchmarks/served_vs_inprocess.py --bundle "$WORK/bundles/int8" --threads "$THREADS" --json "$OUT/served.json"
python benchmarks/table.py "$OUT" --elapsed-s "$SECONDS"
