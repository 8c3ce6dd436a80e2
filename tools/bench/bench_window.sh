#!/usr/bin/env bash
# Frame times of the studio window while the worker computes the statistics of a >= 1 GB model.
# Usage: tools/bench/bench_window.sh [MODEL] [SECONDS]   (default model: /tmp/quantstudio-bench/f32, made by
#        tools/fixtures/make_bench_model.py; needs xvfb-run). Prints the JSON the window writes with --frame-stats:
#        ui_ms_* = time the UI thread spends per frame in quantstudio's code (event draining + layout + commands),
#        frame_interval_ms_* = time between frames (includes Xvfb's software rendering).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
model=${1:-/tmp/quantstudio-bench/f32}
seconds=${2:-20}
(cd "$root" && cargo build --release >&2)
export XDG_RUNTIME_DIR=$(mktemp -d)
chmod 700 "$XDG_RUNTIME_DIR"
unset WGPU_BACKEND
# A fresh profile so that no persisted layout or state changes the run.
export HOME=$(mktemp -d)
xvfb-run -a -s "-screen 0 1280x800x24 -nolisten tcp" \
  "$root/target/release/quantstudio" --frame-stats "$seconds" "$model" 2>&1 | grep '^{' || {
  echo "no frame statistics were printed" >&2
  exit 1
}
