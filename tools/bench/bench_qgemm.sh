#!/usr/bin/env bash
# INT8 and FP32 matrix products, quantstudio and onnxruntime side by side in one run (the shapes in docs/BENCHMARK.md, MiniLM's).
# qs int8: per-tensor dynamic activations; qs token: per-token (W8A8-dynamic); qs static: a given scale.
# Usage: bash tools/bench/bench_qgemm.sh [REPEAT]   (needs a Python with numpy, onnx and onnxruntime: PYTHON=...)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPEAT=${1:-30}
PYTHON=${PYTHON:-/tmp/peer-venv/bin/python}
if ! "$PYTHON" -c "import numpy, onnx, onnxruntime" 2>/dev/null; then
  echo "creating /tmp/peer-venv (numpy, onnx, onnxruntime)" >&2
  python3 -m venv /tmp/peer-venv
  /tmp/peer-venv/bin/pip install -q numpy==2.4.6 onnx==1.23.2 onnxruntime==1.32.0 sympy==1.14.0
  PYTHON=/tmp/peer-venv/bin/python
fi
cargo build --release --no-default-features --example bench_gemm >&2
echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $(date -u +%F)" >&2
OURS=$(RAYON_NUM_THREADS=2 "${CARGO_TARGET_DIR:-target}/release/examples/bench_gemm" "$REPEAT")
PEER=$("$PYTHON" tools/bench/bench_qgemm_peer.py "$REPEAT")
"$PYTHON" - "$OURS" "$PEER" <<'PY'
import json, sys
ours, peer = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"onnxruntime {peer['onnxruntime']}, repeat {ours['repeat']}, medians in ms, 2 threads")
print(f"{'shape':>14} {'qs fp32':>9} {'qs int8':>9} {'qs token':>9} {'qs static':>9} {'qs int8 gemm':>13} "
      f"{'ort fp32':>9} {'ort int8':>9} {'qs int8/fp32':>13} {'qs/ort int8':>12}")
for o, p in zip(ours["results"], peer["results"], strict=True):
    assert o["shape"] == p["shape"]
    print(f"{o['shape']:>14} {o['fp32_ms']:9.3f} {o['int8_dynamic_ms']:9.3f} {o['int8_per_token_ms']:9.3f} "
          f"{o['int8_static_ms']:9.3f} {o['int8_gemm_ms']:13.3f} "
          f"{p['fp32_ms']:9.3f} {p['int8_dynamic_ms']:9.3f} {o['fp32_ms'] / o['int8_dynamic_ms']:12.2f}x "
          f"{o['int8_dynamic_ms'] / p['int8_dynamic_ms']:11.2f}x")
print(json.dumps({"quantstudio": ours, "onnxruntime": peer}))
PY
