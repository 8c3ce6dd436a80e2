#!/usr/bin/env bash
# Benchmark the quantstudio analysis pass (per-channel INT8) against the same pass in numpy.
#
# Usage: tools/bench/bench_pass.sh [DIR]          (DIR defaults to /tmp/quantstudio-bench)
# Env:   PYTHON (default /tmp/pyref/bin/python if present, else python3; needs numpy),
#        REPEAT (timed runs per measurement, best reported, default 3), GB (model size, default 1.0).
#
# Generates DIR/{f32,bf16}/model.safetensors if missing (tools/fixtures/make_bench_model.py), builds the release
# binary (no GUI), then for each model, with the page cache warm, runs `quantstudio throughput` (which also
# measures the read bandwidth of the mapped file) and tools/bench/numpy_pass.py, and prints a markdown table.
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
BIN="$ROOT/target/release/quantstudio"
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
        --repeat "$REPEAT" --json)
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

echo
echo "| model | input GB | read GB/s (mmap) | quantstudio GB/s | % of read bandwidth | numpy GB/s | quantstudio/numpy |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo
echo "Machine: nproc=$(nproc), CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); quantstudio $REV: $THREADS rayon threads, $IMPL kernels; numpy $("$PYTHON" -c 'import numpy; print(numpy.__version__)'); best of $REPEAT after a warm-up; GB = 1e9 bytes of float weights."
echo
echo "Commands:"
printf '    %s\n' "${COMMANDS[@]}"
