#!/usr/bin/env bash
# Benchmark the quantstudio analysis pass (per-channel INT8; the table's figures, no histograms) against the same
# figures in numpy (tools/bench/numpy_pass.py --no-histograms), and the on-demand histograms of one 64M-element tensor (what the inspector waits for).
#
# Usage: tools/bench/bench_pass.sh [DIR]          (DIR defaults to /tmp/quantstudio-bench)
# Env:   PYTHON (default /tmp/pyref/bin/python if present, else python3; needs numpy),
#        REPEAT (timed runs per measurement, best reported, default 3), GB (model size, default 1.0).
#
# Generates DIR/{f32,bf16}/model.safetensors if missing (tools/fixtures/make_bench_model.py), builds the release
# binary (no GUI), then for each model, with the page cache warm, runs `quantstudio throughput` (which also
# measures the read bandwidth of the mapped file) and tools/bench/numpy_pass.py, and prints a markdown table.
# Then writes DIR/h64m/{f32,bf16}/model.safetensors (one 8192 x 8192 tensor, N(0, 0.02)) and prints the best time
# of its value and error histograms (`quantstudio throughput` times those of the model's largest tensor).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DIR="${1:-/tmp/quantstudio-bench}"
REPEAT="${REPEAT:-3}"
GB="${GB:-1.0}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x /tmp/pyref/bin/python ]]; then PYTHON=/tmp/pyref/bin/python; else PYTHON=python3; fi
fi
case "$(realpath -m "$DIR")/" in
    "$ROOT"/*) echo "refusing to write the >1 GB models inside the repository: $DIR" >&2; exit 1 ;;
esac

if [[ ! -f "$DIR/f32/model.safetensors" || ! -f "$DIR/bf16/model.safetensors" ]]; then
    echo "generating models in $DIR ..." >&2
    "$PYTHON" "$ROOT/tools/fixtures/make_bench_model.py" "$DIR" --gb "$GB" >&2
fi
(cd "$ROOT" && cargo build --release --no-default-features >&2)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/quantstudio"
REV="$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"  # source the binary was built from

# json FILE KEY: one value of a JSON document
json() { "$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
ROWS=()
COMMANDS=()
for kind in f32 bf16; do
    model="$DIR/$kind/model.safetensors"
    cat "$model" > /dev/null  # warm the page cache (both tools also warm up before timing)
    qs_cmd=("$BIN" throughput "$model" --precision int8 --per-channel --repeat "$REPEAT" --json)
    np_cmd=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$PYTHON" "$ROOT/tools/bench/numpy_pass.py" "$model"
        --repeat "$REPEAT" --json --no-histograms)
    COMMANDS+=("${qs_cmd[*]}" "${np_cmd[*]}")
    echo "running quantstudio on $kind ..." >&2
    "${qs_cmd[@]}" > "$OUT/qs.json"
    echo "running numpy on $kind ..." >&2
    "${np_cmd[@]}" > "$OUT/np.json"
    ROWS+=("$("$PYTHON" - "$kind" "$OUT/qs.json" "$OUT/np.json" <<'EOF'
import json, sys
kind, qs, np_ = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
assert qs["input_bytes"] == np_["input_bytes"], (qs["input_bytes"], np_["input_bytes"])
print(f"| {kind} | {qs['input_bytes'] / 1e9:.3f} | {qs['read_gb_per_s']:.2f} | {qs['pass_gb_per_s']:.3f} | "
      f"{100 * qs['fraction_of_read_bandwidth']:.1f}% | {np_['pass_gb_per_s']:.3f} | "
      f"{qs['pass_gb_per_s'] / np_['pass_gb_per_s']:.1f}x |")
EOF
)")
    THREADS="$(json "$OUT/qs.json" threads)"
    IMPL="$(json "$OUT/qs.json" implementation)"
done

# One 64M-element tensor, F32 and BF16: its histograms.
if [[ ! -f "$DIR/h64m/f32/model.safetensors" || ! -f "$DIR/h64m/bf16/model.safetensors" ]]; then
    echo "generating the 64M-element tensor in $DIR/h64m ..." >&2
    "$PYTHON" - "$ROOT/tools/fixtures" "$DIR/h64m" <<'EOF' >&2
import os, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from make_bench_model import header_bytes, to_bf16_bits
x = (np.random.default_rng(64).standard_normal((8192, 8192), dtype=np.float32) * np.float32(0.02))
plan = [("model.layers.0.mlp.up_proj.weight", x.shape)]
for kind, dtype, data in [("f32", "F32", x), ("bf16", "BF16", to_bf16_bits(x.reshape(-1)))]:
    os.makedirs(f"{sys.argv[2]}/{kind}", exist_ok=True)
    with open(f"{sys.argv[2]}/{kind}/model.safetensors", "wb") as f:
        f.write(header_bytes(plan, dtype, data.dtype.itemsize))
        f.write(data.tobytes())
EOF
fi
HIST_ROWS=()
for kind in f32 bf16; do
    model="$DIR/h64m/$kind/model.safetensors"
    cat "$model" > /dev/null
    h_cmd=("$BIN" throughput "$model" --precision int8 --per-channel --repeat "$REPEAT" --json)
    COMMANDS+=("${h_cmd[*]}")
    echo "timing the histograms of the $kind 64M-element tensor ..." >&2
    "${h_cmd[@]}" > "$OUT/h.json"
    HIST_ROWS+=("$("$PYTHON" - "$kind" "$OUT/h.json" <<'EOF'
import json, sys
kind, h = sys.argv[1], json.load(open(sys.argv[2]))
print(f"| {kind} | {h['histograms_elements']:,} | {1e3 * h['histograms_secs']:.1f} | "
      f"{1e9 * h['histograms_secs'] / h['histograms_elements']:.2f} | {1e3 * h['pass_secs']:.1f} |")
EOF
)")
done

echo
echo "| model | input GB | read GB/s (mmap) | quantstudio GB/s | % of read bandwidth | numpy GB/s | quantstudio/numpy |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo
echo "| one tensor | elements | histograms ms | ns per element | table figures ms |"
echo "|---|---|---|---|---|"
printf '%s\n' "${HIST_ROWS[@]}"
echo
echo "Machine: nproc=$(nproc), CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); quantstudio $REV: $THREADS rayon threads, $IMPL kernels; numpy $("$PYTHON" -c 'import numpy; print(numpy.__version__)'); best of $REPEAT after a warm-up; GB = 1e9 bytes of float weights."
echo
echo "Commands:"
printf '    %s\n' "${COMMANDS[@]}"
