#!/usr/bin/env bash
# Starts the studio under Xvfb on the bundled sample, takes a screenshot, and fails if it is blank or uniform.
# Usage: tools/check/window_smoke.sh BINARY SCREENSHOT.png   (needs xvfb-run and imagemagick)
set -euo pipefail
binary=$1
shot=$2
export XDG_RUNTIME_DIR=$(mktemp -d)
chmod 700 "$XDG_RUNTIME_DIR"
unset WGPU_BACKEND
xvfb-run -a -s "-screen 0 1280x800x24 -nolisten tcp" bash -c '
  "$0" & app=$!
  sleep 10
  if ! kill -0 $app 2>/dev/null; then echo "the window exited early"; exit 1; fi
  import -window root "$1"
  kill $app; wait $app 2>/dev/null || true
' "$binary" "$shot"
# A real window has text and panels: many distinct colours and a clearly non-zero spread.
colors=$(convert "$shot" -format %k info:)
spread=$(convert "$shot" -colorspace Gray -format "%[fx:standard_deviation]" info:)
echo "screenshot $shot: $colors colours, grey standard deviation $spread"
if [ "$colors" -lt 16 ] || awk "BEGIN { exit !($spread < 0.02) }"; then
  echo "the screenshot is blank or uniform"
  exit 1
fi
echo "window smoke test passed"
