#!/usr/bin/env bash
# FP32 inference, side by side in one run: quantstudio's runtime (`quantstudio bench`) against onnxruntime and
# numpy (tools/bench/bench_peer.py, which builds the same networks as ONNX graphs and checks them against numpy) on
#   - all-MiniLM-L6-v2 (BERT, from PyPI) at sequence length 128, batch 1;
#   - a random Llama-style decoder (tools/fixtures/make_bench_llama.py: hidden 768, 4 layers, GQA 12/4, vocab 8192):
#     one token after 127 cached positions, and a 128-token prefill;
#   - the digits CNN sample: one image, and a batch of 256.
# Prints a Markdown table (medians, ms) with the ratio quantstudio / onnxruntime.
#
# Needs: python3 -m venv /tmp/peer-venv && /tmp/peer-venv/bin/pip install numpy==2.4.6 safetensors==0.8.0 \
#        onnx==1.23.2 onnxruntime==1.32.0 sympy==1.14.0
# Usage: bash tools/bench/bench_runtime.sh [REPEATS]      (run on a quiet machine: any other load skews both sides)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPEATS=${1:-50}
PY=${PEER_PYTHON:-/tmp/peer-venv/bin/python}
WORK=${BENCH_DIR:-/tmp/quantstudio-bench-runtime}
mkdir -p "$WORK"

cargo build --release --quiet
QS=target/release/quantstudio
MINILM=$("$PY" tools/check/reference_check.py --fetch-minilm "$WORK/minilm")
[ -f "$WORK/llama/model.safetensors" ] || "$PY" tools/fixtures/make_bench_llama.py "$WORK/llama" >&2
CNN=sample-models/digits-cnn

echo "commit $(git rev-parse --short HEAD), $(nproc) threads, $(date -u +%Y-%m-%d)" >&2
"$QS" bench "$MINILM" --seq 128 --batch 8 --repeat "$REPEATS" --json >"$WORK/qs-bert.json"
"$PY" tools/bench/bench_peer.py "$MINILM" --kind bert --seq 128 --repeats "$REPEATS" --json >"$WORK/peer-bert.json"
"$QS" bench "$WORK/llama" --past 127 --seq 128 --repeat "$REPEATS" --json >"$WORK/qs-llama.json"
"$PY" tools/bench/bench_peer.py "$WORK/llama" --kind llama --past 127 --seq 128 --repeats "$REPEATS" --json \
  >"$WORK/peer-llama.json"
"$QS" bench "$CNN" --batch 256 --repeat "$((REPEATS * 10))" --json >"$WORK/qs-cnn.json"
"$PY" tools/bench/bench_peer.py "$CNN" --kind graph --repeats "$((REPEATS * 10))" --json >"$WORK/peer-cnn.json"

"$PY" - "$WORK" <<'EOF'
import json, sys
w = sys.argv[1]
load = lambda name: json.load(open(f"{w}/{name}.json"))
def ours(name):
    c = load(f"qs-{name}")["configurations"][0]
    return c
def peer_case(name, case):
    runs = load(f"peer-{name}")["runs"]
    for r in runs:
        if r["case"] == case:
            return r
    raise SystemExit(f"no case {case} in peer-{name}: {[r['case'] for r in runs]}")
rows = []
b = ours("bert")
rows.append(("MiniLM-L6 (BERT), 1 sequence of 128 tokens; ORT on the plain graph", b["latency_ms_median"],
             peer_case("bert", "seq128")))
rows.append(("MiniLM-L6 (BERT), 1 sequence of 128 tokens; ORT after its BERT optimizer (fused attention)",
             b["latency_ms_median"], peer_case("bert", "seq128-fused")))
l = ours("llama")
rows.append(("Llama-style 38M, 1 token after 127 cached", l["latency_ms_median"], peer_case("llama", "decode@127")))
rows.append(("Llama-style 38M, prefill 128 tokens", 128 / l["throughput_per_s"] * 1e3, peer_case("llama", "prefill128")))
c = ours("cnn")
rows.append(("digits CNN, 1 image", c["latency_ms_median"], peer_case("cnn", "batch1")))
rows.append(("digits CNN, batch of 256", 256 / c["throughput_per_s"] * 1e3, peer_case("cnn", "batch256")))
print("| workload | quantstudio ms | onnxruntime ms | numpy ms | quantstudio / onnxruntime |")
print("|---|---|---|---|---|")
for name, q, p in rows:
    ort, npy = p["onnxruntime_ms_median"], p.get("numpy_ms_median")
    print(f"| {name} | {q:.3f} | {ort:.3f} | {npy:.3f} | {q / ort:.2f}x |")
EOF
