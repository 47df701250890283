#!/usr/bin/env bash
# Reproduce the README's performance table (CPU, 2 threads) in one run: about 6 minutes on 2 cores
# with the demo's bundles in place, plus about 4 for `fusionrt demo` when they are not.
# Run from the project root in the environment of the README's first command.
# Writes $WORK/benchmarks/{export,engine,served}.json, $WORK/benchmarks/report/ (fusionrt bench)
# and $WORK/benchmarks/table.md, the table itself, also printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-fusionrt-demo}
THREADS=${THREADS:-2}
OUT="$WORK/benchmarks"
SECONDS=0
[ -f "$WORK/bundles/int8/manifest.json" ] || fusionrt demo --workdir "$WORK" --threads "$THREADS" --benchmark off --triton off
mkdir -p "$OUT"
python benchmarks/export_speedups.py --workdir "$WORK" --threads "$THREADS" --json "$OUT/export.json"
python benchmarks/engine_runtime.py --bundle "$WORK/bundles/int8" --threads "$THREADS" --json "$OUT/engine.json"
fusionrt bench "$WORK/bundles/fp32" "$WORK/bundles/int8" --checkpoint "$WORK/checkpoint" \
  --batch-sizes 1,8 --threads "$THREADS" --duration-s 5 --report "$OUT/report"
python benchmarks/served_vs_inprocess.py --bundle "$WORK/bundles/int8" --threads "$THREADS" --json "$OUT/served.json"
python benchmarks/table.py "$OUT" --elapsed-s "$SECONDS"
