#!/usr/bin/env bash
# FP32 against each uniform plan as deployed (FP16, BF16, INT8 weight-only per channel, W8A8 with MSE clips), one
# `quantstudio bench` run per plan, with the plan's accuracy on DATA; prints a table and the JSON of every run.
# Usage: bash tools/bench/bench_plans.sh MODEL_FOLDER DATA [REPEAT]   (DATA also calibrates the W8A8 plan)
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=$1
DATA=$2
REPEAT=${3:-30}
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --no-default-features >&2
BIN=$TARGET/release/quantstudio
echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $(date -u +%F)" >&2
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$BIN" calibrate "$MODEL" --data "$DATA" --observer mse --write-recipe "$TMP/w8a8-recipe.json" --no-cache >/dev/null
for plan in fp16 bf16 int8 w8a8; do
  case $plan in
    w8a8) args=(--recipe "$TMP/w8a8-recipe.json") ;;
    int8) args=(--precision int8 --per-channel) ;;
    *) args=(--precision "$plan") ;;
  esac
  RAYON_NUM_THREADS=2 "$BIN" bench "$MODEL" "${args[@]}" --data "$DATA" --repeat "$REPEAT" --batch 8 --json > "$TMP/$plan.json"
done
python3 - "$TMP" <<'PY'
import json, sys, pathlib
tmp = pathlib.Path(sys.argv[1])
print(f"{'plan':>6} {'fp32 ms':>9} {'plan ms':>9} {'p95 ms':>8} {'speed-up':>9} {'thr/s':>8} {'mem MB':>13} {'disk MB':>13} {'quality':>22}")
docs = {}
for plan in ["fp16", "bf16", "int8", "w8a8"]:
    doc = json.loads((tmp / f"{plan}.json").read_text())
    docs[plan] = doc
    f, p = doc["configurations"]
    q = p.get("quality") or {}
    fq = f.get("quality") or {}
    quality = f"{q.get('metric', '-')} {q.get('value', float('nan')):.4f} (FP32 {fq.get('value', float('nan')):.4f})"
    print(f"{plan:>6} {f['latency_ms_median']:9.3f} {p['latency_ms_median']:9.3f} {p['latency_ms_p95']:8.3f} "
          f"{f['latency_ms_median'] / p['latency_ms_median']:8.2f}x {p['throughput_per_s']:8.1f} "
          f"{f['weights_bytes'] / 1e6:6.1f}->{p['weights_bytes'] / 1e6:5.1f} {f['disk_bytes'] / 1e6:6.1f}->{p['disk_bytes'] / 1e6:5.1f} {quality:>22}")
print(json.dumps(docs))
PY
