#!/usr/bin/env bash
# The deployed plans of quantstudio beside onnxruntime's quantize_dynamic, in one run, on a BERT sentence encoder
# (all-MiniLM-L6-v2): 128 tokens, 2 threads, the same sentences on both sides.
#
# quantstudio: one `quantstudio bench` per plan (FP32 and the plan timed in alternation; mean cosine of the sentence
# embeddings of the deployed plan against FP32 on SENTENCES): W8A8-dynamic, FP8 weight-only, FP8-dynamic, static
# W8A8 (`calibrate --observer mse` on SENTENCES; embeddings checked to stay FP32 in the recipe) and INT8 weight-only
# per channel. A plan whose --precision value this build refuses is skipped ("not available in this build").
# onnxruntime: tools/bench/bench_deploy_peer.py (FP32 and quantize_dynamic QInt8 per-channel graphs timed in turns, the
# same sentences tokenised by WordPiece on vocab.txt). The ids of both tokenisers are compared twice: id by id
# (the `tokenizers` package on tokenizer.json), and end to end (`quantstudio eval` on the text and on the peer's
# ids must give identical reports).
# Prints the machine, one table, whether the bar is met (W8A8-dynamic's mean cosine >= ORT's and its speed-up over
# our FP32 >= ORT's over its FP32, ORT with embeddings FP32 as ours), the ops of ORT's quantized graphs, then one
# line of JSON with everything.
#
# Usage: bash tools/bench/bench_deploy.sh MINILM_FOLDER [REPEAT]     (REPEAT timed runs after 3 warm-up runs; default 40)
#   M=$(/tmp/qs-venv/bin/python tools/check/reference_check.py --fetch-minilm /tmp/minilm); bash tools/bench/bench_deploy.sh "$M" 40
# Environment: PYTHON (numpy, onnx, onnxruntime, safetensors; default /tmp/qs-venv/bin/python),
#   SENTENCES (default tools/bench/data/sentences.txt), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:?usage: bash tools/bench/bench_deploy.sh MINILM_FOLDER [REPEAT]}
REPEAT=${2:-40}
PYTHON=${PYTHON:-/tmp/qs-venv/bin/python}
SENTENCES=${SENTENCES:-tools/bench/data/sentences.txt}
THREADS=2
SEQ=128
BATCH=4 # sequences per throughput run (not in the table; kept small)
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --no-default-features >&2
BIN=$TARGET/release/quantstudio
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

COMMIT=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- src Cargo.toml Cargo.lock || COMMIT="$COMMIT+uncommitted"
export BD_DATE BD_COMMIT BD_CPU BD_NPROC BD_FLAGS BD_LOAD_START BD_REPEAT BD_SENTENCES BD_MODEL
BD_DATE=$(date -u '+%F %T UTC')
BD_COMMIT=$COMMIT
BD_CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
BD_NPROC=$(nproc)
BD_FLAGS=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx2|fma|f16c|avx512f|avx512bw|avx512_vnni|avx_vnni|amx_int8' | tr '\n' ' ')
BD_LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
BD_REPEAT=$REPEAT
BD_SENTENCES=$SENTENCES
BD_MODEL=$MODEL
echo "commit $BD_COMMIT, $BD_NPROC cores ($BD_CPU), $BD_DATE, load $BD_LOAD_START" >&2

# Static W8A8: MSE clips calibrated on the sentences. The embeddings must stay FP32 (as in every other plan).
echo "calibrating static W8A8 (observer mse)" >&2
"$BIN" calibrate "$MODEL" --data "$SENTENCES" --observer mse --write-recipe "$TMP/w8a8-static-recipe.json" \
  --no-cache >/dev/null
"$PYTHON" - "$TMP/w8a8-static-recipe.json" >"$TMP/recipe-check.json" <<'PY'
import json, sys
path = sys.argv[1]
recipe = json.load(open(path))
# A layer is an embedding table when its name says so (BERT: embeddings.word_embeddings, ...).
fixed = [name for name, p in recipe["layers"].items() if "embeddings" in name and p.get("precision") != "fp32"]
for name in fixed:
    recipe["layers"][name] = {"precision": "fp32"}
if fixed:
    json.dump(recipe, open(path, "w"), indent=2)
    print(f"static W8A8 recipe: embeddings set back to FP32: {', '.join(fixed)}", file=sys.stderr)
count = lambda pred: sum(1 for p in recipe["layers"].values() if pred(p))
print(json.dumps({"embeddings_set_to_fp32": fixed,
                  "w8a8_layers": count(lambda p: p.get("activations") == "int8"),
                  "int8_weight_only_layers": count(lambda p: p.get("precision") == "int8" and "activations" not in p),
                  "fp32_layers": count(lambda p: p.get("precision") == "fp32")}))
PY

PLANS=(w8a8-dynamic fp8 fp8-dynamic w8a8-static int8)
for plan in "${PLANS[@]}"; do
  case $plan in
    w8a8-static) args=(--recipe "$TMP/w8a8-static-recipe.json") ;;
    int8) args=(--precision int8 --per-channel) ;;
    *) args=(--precision "$plan") ;;
  esac
  echo "quantstudio bench: $plan" >&2
  if RAYON_NUM_THREADS=$THREADS "$BIN" bench "$MODEL" "${args[@]}" --data "$SENTENCES" --seq "$SEQ" \
    --batch "$BATCH" --repeat "$REPEAT" --json >"$TMP/$plan.json" 2>"$TMP/$plan.err"; then
    echo ok >"$TMP/$plan.status"
  elif grep -q "invalid value '$plan'" "$TMP/$plan.err"; then
    echo "  $plan: not available in this build" >&2
    echo "not available in this build" >"$TMP/$plan.status"
  else
    echo "  $plan failed: $(tr '\n' ' ' <"$TMP/$plan.err")" >&2
    echo "failed: $(tr '\n' ' ' <"$TMP/$plan.err")" >"$TMP/$plan.status"
  fi
done

echo "onnxruntime: FP32 and quantize_dynamic" >&2
"$PYTHON" tools/bench/bench_deploy_peer.py "$MODEL" "$SENTENCES" --repeat "$REPEAT" --threads "$THREADS" --seq "$SEQ" \
  --write-ids "$TMP/ids.safetensors" >"$TMP/peer.json" || echo "  onnxruntime side: a check failed (see below)" >&2
if [ ! -s "$TMP/peer.json" ]; then
  echo "the onnxruntime side produced no result" >&2
  exit 1
fi
export BD_LOAD_END
BD_LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# End-to-end tokenisation check: quantstudio on its own tokenisation of the text and on the peer's ids.
echo "tokenisation check: quantstudio eval on the text and on the peer's ids" >&2
for input in text ids; do
  data=$SENTENCES
  [ "$input" = ids ] && data=$TMP/ids.safetensors
  RAYON_NUM_THREADS=$THREADS "$BIN" eval "$MODEL" --precision int8 --per-channel --data "$data" --json \
    >"$TMP/eval-$input.json"
done

"$PYTHON" - "$TMP" "${PLANS[@]}" <<'PY'
import json, os, sys
from pathlib import Path
tmp, plans = Path(sys.argv[1]), sys.argv[2:]
env = os.environ
labels = {"w8a8-dynamic": "W8A8-dynamic", "fp8": "FP8 weight-only", "fp8-dynamic": "FP8-dynamic",
          "w8a8-static": "W8A8 static (MSE)", "int8": "INT8 weight-only/ch"}
peer = json.loads((tmp / "peer.json").read_text())
recipe_check = json.loads((tmp / "recipe-check.json").read_text())
ours = {}
for plan in plans:
    status = (tmp / f"{plan}.status").read_text().strip()
    ours[plan] = {"status": status}
    if status == "ok":
        ours[plan]["bench"] = json.loads((tmp / f"{plan}.json").read_text())

print(f"date {env['BD_DATE']}   commit {env['BD_COMMIT']}   model {env['BD_MODEL']}")
print(f"machine: nproc {env['BD_NPROC']}, {env['BD_CPU']}; flags {env['BD_FLAGS'].strip()}")
print(f"load average (1/5/15 min) at start {env['BD_LOAD_START']}, at end {env['BD_LOAD_END']}")
print(f"onnxruntime {peer['onnxruntime']}, onnx {peer['onnx']}, numpy {peer['numpy']}; "
      f"tokenizers {peer['tokenization'].get('tokenizers_version', '-')} (Python, for the id check)")
print(f"workload: 1 sequence of {peer['seq']} tokens, {peer['threads']} threads, {env['BD_REPEAT']} timed runs after "
      f"{peer['warmup_rounds']} warm-up (each side: FP32 and quantized in turns); medians and p95 in ms")
tok = peer["tokenization"]
print(f"sentences: {env['BD_SENTENCES']}, {tok['sentences']} lines, {tok['tokens_min']}-{tok['tokens_max']} tokens "
      f"(mean {tok['tokens_mean']}), padded to {peer['seq']}")
print()
hdr = (f"{'side':<12} {'plan':<26} {'deployed on':<22} {'FP32 ms':>8} {'plan ms':>8} {'p95 ms':>8} {'speed-up':>8} "
       f"{'weights MB':>10} {'disk MB':>8} {'mean cos':>8} {'min cos':>8}")
print(hdr)
print("-" * len(hdr))
rows = []
fp32_shown = False
for plan in plans:
    o = ours[plan]
    if o["status"] != "ok":
        print(f"{'quantstudio':<12} {labels[plan]:<26} {o['status']}")
        continue
    f, p = o["bench"]["configurations"]
    if not fp32_shown:
        print(f"{'quantstudio':<12} {'FP32':<26} {'f32 GEMM':<22} {'':>8} {'':>8} {'':>8} {'':>8} "
              f"{f['weights_bytes'] / 1e6:10.1f} {f['disk_bytes'] / 1e6:8.1f} {1:8.4f} {'':>8}")
        fp32_shown = True
    ev = p.get("evaluation") or {}
    deployed = f"{p['integer_layers']} int, {p['compact_layers']} compact"
    speedup = f["latency_ms_median"] / p["latency_ms_median"]
    o["speedup"] = speedup
    o["mean_cosine"] = ev.get("mean_cosine")
    print(f"{'quantstudio':<12} {labels[plan]:<26} {deployed:<22} {f['latency_ms_median']:8.2f} "
          f"{p['latency_ms_median']:8.2f} {p['latency_ms_p95']:8.2f} {speedup:7.2f}x {p['weights_bytes'] / 1e6:10.1f} "
          f"{p['disk_bytes'] / 1e6:8.1f} {ev.get('mean_cosine', float('nan')):8.4f} {ev.get('min_cosine', float('nan')):8.4f}")
peer_names = {"int8-matmul": "quantize_dynamic", "int8-default": "quantize_dynamic +emb"}
fp32_by_spin = {c["spinning"]: c for c in peer["configurations"] if c["name"] == "fp32"}
pf = fp32_by_spin[True]
print(f"{'onnxruntime':<12} {'FP32':<26} {'MatMul/Gemm f32':<22} {'':>8} {'':>8} {'':>8} {'':>8} "
      f"{pf['weights_bytes'] / 1e6:10.1f} {pf['disk_bytes'] / 1e6:8.1f} {1:8.4f} {'':>8}")
for q in peer["configurations"]:
    if q["name"] == "fp32":
        continue
    pf = fp32_by_spin[q["spinning"]]
    deployed = "MatMulInteger x" + str(peer["ops"][f"{q['name']} graph: matmuls"].get("MatMulInteger (constant weights)", 0))
    q["speedup"] = pf["latency_ms_median"] / q["latency_ms_median"]
    label = peer_names.get(q["name"], q["name"]) + ("" if q["spinning"] else ", no spin")
    print(f"{'onnxruntime':<12} {label:<26} {deployed:<22} {pf['latency_ms_median']:8.2f} "
          f"{q['latency_ms_median']:8.2f} {q['latency_ms_p95']:8.2f} {q['speedup']:7.2f}x {q['weights_bytes'] / 1e6:10.1f} "
          f"{q['disk_bytes'] / 1e6:8.1f} {q['mean_cosine']:8.4f} {q['min_cosine']:8.4f}")
print()
print("deployed on: layers on the integer GEMM / on compact weights converted tile by tile (quantstudio), "
      "quantized MatMuls (ORT). FP32 ms: that side's FP32, timed in turns with the plan in the same run.")
print("quantize_dynamic: QInt8 weights, per_channel=True, dynamic per-tensor UINT8 activations; "
      "'+emb' is its default op types, which also quantize the 3 embedding tables (Gather); the other row "
      "quantizes the MatMuls only (embeddings FP32, like every quantstudio plan) and is the bar's peer. "
      "'no spin': the same two graphs timed again with session.intra_op.allow_spinning=0 (ORT's default spins).")
rc = recipe_check
print(f"static W8A8 recipe: {rc['w8a8_layers']} W8A8 layers, {rc['int8_weight_only_layers']} INT8 weight-only "
      f"(layers calibration does not run, e.g. the pooler), {rc['fp32_layers']} FP32 (embeddings, norms); embeddings set back "
      f"to FP32 by this script: {rc['embeddings_set_to_fp32'] or 'none needed'}")

# Tokenisation: id by id, and end to end.
et, ei = (json.loads((tmp / f"eval-{k}.json").read_text()) for k in ("text", "ids"))
strip = lambda d: {k: v for k, v in d.items() if k not in ("data", "model", "recipe")}
same_eval = strip(et) == strip(ei)
diff = tok.get("differing_sentences")
print(f"tokenisation: WordPiece (vocab.txt) vs tokenizer.json ids: "
      f"{'not checked (no tokenizers package)' if diff is None else ('identical for all ' + str(tok['sentences']) + ' sentences' if not diff else 'DIFFER for sentences ' + str(diff))}; "
      f"quantstudio eval on the text vs on the peer's ids: {'identical reports' if same_eval else 'DIFFERENT reports'}")
for c in peer["checks"]:
    if not c["ok"]:
        print(f"onnxruntime check FAILED: {c['what']}: {c['detail']}")

# The bar.
peer_q = next(q for q in peer["configurations"] if q["name"] == "int8-matmul" and q["spinning"])
peer_nospin = next(q for q in peer["configurations"] if q["name"] == "int8-matmul" and not q["spinning"])
w = ours.get("w8a8-dynamic", {})
bar = {}
if "speedup" in w:
    cos_ok = w["mean_cosine"] >= peer_q["mean_cosine"]
    speed_ok = w["speedup"] >= peer_q["speedup"]
    on_int = w["bench"]["configurations"][1]["integer_layers"]
    bar = {"cosine_ok": cos_ok, "speedup_ok": speed_ok, "met": cos_ok and speed_ok, "w8a8_dynamic_integer_layers": on_int}
    print(f"bar: W8A8-dynamic mean cosine {w['mean_cosine']:.4f} >= ORT {peer_q['mean_cosine']:.4f}: "
          f"{'yes' if cos_ok else 'NO'}; speed-up {w['speedup']:.2f}x >= ORT {peer_q['speedup']:.2f}x: "
          f"{'yes' if speed_ok else 'NO'}  =>  bar {'MET' if bar['met'] else 'NOT MET'}"
          + ("" if on_int else "  (W8A8-dynamic ran on no integer-GEMM layer in this build)"))
    print(f"     against ORT without spinning: speed-up {w['speedup']:.2f}x >= {peer_nospin['speedup']:.2f}x: "
          f"{'yes' if w['speedup'] >= peer_nospin['speedup'] else 'NO'}")
    bar["speedup_ok_against_no_spin"] = w["speedup"] >= peer_nospin["speedup"]
else:
    print(f"bar: cannot be judged: W8A8-dynamic {w.get('status', 'not run')}")
print("ORT graphs' matrix products: " + "; ".join(
    f"{key.split(' ')[0]}: " + ", ".join(f"{k} x{v}" for k, v in census.items())
    for key, census in peer["ops"].items() if key.endswith("graph: matmuls")))
print("ORT ops run after ORT_ENABLE_ALL (int8-matmul): " + ", ".join(
    f"{k} x{v}" for k, v in peer["ops"]["int8-matmul after ORT_ENABLE_ALL: ops"].items()))
print(json.dumps({"machine": {k[3:].lower(): env[k] for k in env if k.startswith("BD_")}, "recipe_check": rc,
                  "quantstudio": ours, "onnxruntime": peer, "tokenisation_end_to_end_identical": same_eval,
                  "bar": bar}))
ok = all(o["status"] == "ok" or o["status"] == "not available in this build" for o in ours.values())
sys.exit(0 if ok and peer["checks_ok"] and same_eval and diff in (None, []) else 1)
PY
