#!/usr/bin/env python3
"""onnxruntime's side of `tools/bench/bench_deploy.sh`: a BERT sentence encoder (all-MiniLM-L6-v2) in FP32 and after
`onnxruntime.quantization.quantize_dynamic(weight_type=QInt8, per_channel=True)`, on the same graph, sentences and
thread count as quantstudio's side. Two quantized graphs: `int8-matmul` (op_types_to_quantize=["MatMul"]: the
linear layers; embeddings stay FP32 as in quantstudio's plans) and `int8-default` (quantize_dynamic's default op
types, which also turn the three embedding tables into INT8 + DequantizeLinear).

The FP32 graph is the one `tools/bench/bench_peer.py` builds by hand from config.json + model.safetensors (imported from
there, not copied) and is checked here against that file's numpy forward pass. quantize_dynamic turns it into
INT8 graphs (per-channel symmetric INT8 weights, activations quantized per tensor to UINT8 at run time; no
pre-processing, reduce_range False).

Measured:
  - latency: one sequence of --seq tokens, all real (ids (i * 7919 + 101) mod vocab, the synthetic sequence
    `quantstudio bench` times), the FP32 and quantized sessions run in turns: 3 warm-up rounds, then --repeat rounds;
    median and p95 with quantstudio's rule (the sorted time at index round((n - 1) * q)). Twice: with ORT's
    default thread pools (their threads spin while waiting for work), FP32 and every quantized graph in turns; then
    FP32 and int8-matmul in turns with session.intra_op.allow_spinning=0. On a loaded machine, or with several
    sessions in one process, the spinning threads of one session take CPU from the other's runs.
  - mean cosine: every sentence of SENTENCES (one per line) tokenised by bench_peer.py's WordPiece on vocab.txt,
    padded to --seq with attention mask 0 (as the model's tokenizer.json pads), run by both sessions; the sentence
    embedding is the mean of last_hidden_state over the real tokens (f64 sums) divided by its L2 norm, then cast
    to f32; cosine in f64; the mean over sentences. This is `bert::sentence_embedding` and `eval::cosine` of
    quantstudio (src/runtime/bert.rs, src/runtime/eval.rs).
  - weights: bytes of the graph's initializers; disk: size of the .onnx file.
  - each quantized graph's op types, which MatMuls quantize_dynamic quantized (weight MatMuls have a constant second
    input; Q.K^T and attention.V have two activations), and the op types ORT runs after ORT_ENABLE_ALL.
  - tokenisation: when the `tokenizers` package is importable, the WordPiece ids are compared with those of the
    model's tokenizer.json (the tokenizer quantstudio uses; the Python package wraps the same Rust crate).

Usage: bench_deploy_peer.py MODEL_FOLDER SENTENCES [--repeat 40] [--threads 2] [--seq 128]
                            [--write-ids FILE.safetensors]   -> one JSON document on stdout, progress on stderr.
--write-ids saves the padded ids (input_ids, attention_mask, token_type_ids as int64 [sentences, seq]) so that
quantstudio can be run on exactly these ids. Exit status 1 when a check fails.
Needs numpy, onnx, onnxruntime, safetensors (versions are printed in the JSON).
"""
import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_peer as bp  # noqa: E402  (sets the BLAS thread count from --threads before numpy loads)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: E402

WARMUP_ROUNDS = 3  # as `quantstudio bench`
# ORT FP32 against the numpy forward of bench_peer.py: relative to the output scale, as bench_peer.py checks.
GRAPH_CHECK_TOLERANCE = 1e-3
# The quantized graphs: (name, op_types_to_quantize). "int8-matmul" quantizes the MatMuls only (embeddings stay
# FP32, as in quantstudio's plans: the like-for-like peer); "int8-default" is quantize_dynamic's default, which
# also quantizes the three embedding Gathers (INT8 tables + DequantizeLinear).
VARIANTS = [("int8-matmul", ["MatMul"]), ("int8-default", None)]


def session(model_bytes, threads, spinning):
    """A CPU session as bench_peer.py makes them (ORT_ENABLE_ALL, `threads` intra-op threads, sequential), with the
    intra-op pool's spinning on (ORT's default) or off."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def percentile(sorted_ms, q):
    """quantstudio's percentile (src/runtime/latency.rs): the sorted value at index round((n - 1) * q)."""
    if not sorted_ms:
        return 0.0
    return sorted_ms[int(round((len(sorted_ms) - 1) * q))]


def sentence_embedding(hidden, mask):
    """Mean of the rows of `hidden` [S, D] where `mask` is set, in f64, L2-normalised, as f32."""
    rows = hidden[mask.astype(bool)].astype(np.float64)
    mean = rows.sum(axis=0) / max(len(rows), 1)
    norm = float(np.sqrt((mean * mean).sum()))
    return (mean / norm).astype(np.float32) if norm > 0 else np.zeros_like(mean, dtype=np.float32)


def cosine(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = float(np.sqrt((a * a).sum())), float(np.sqrt((b * b).sum()))
    if na > 0 and nb > 0:
        return float((a * b).sum()) / (na * nb)
    return 1.0 if na == nb else 0.0


def initializer_bytes(model):
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def matmul_census(model):
    """MatMul-like nodes by kind: those whose second input is an initializer (weights) and the rest."""
    inits = {t.name for t in model.graph.initializer}
    out = Counter()
    for n in model.graph.node:
        if n.op_type in ("MatMul", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul"):
            b = n.input[1] if len(n.input) > 1 else ""
            out[f"{n.op_type} ({'constant weights' if b in inits else 'two activations'})"] += 1
    return dict(sorted(out.items()))


def op_types(model):
    c = Counter((n.domain + "." if n.domain else "") + n.op_type for n in model.graph.node)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def tokenizer_json_ids(model_dir, sentences):
    """ids of the model's tokenizer.json for each sentence (real tokens only), or None without `tokenizers`."""
    try:
        from tokenizers import Tokenizer, __version__
    except ImportError:
        return None, None
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    ids = []
    for s in sentences:
        e = tok.encode(s)
        ids.append([i for i, m in zip(e.ids, e.attention_mask) if m])
    return ids, __version__


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("sentences")
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--write-ids", metavar="FILE")
    args = ap.parse_args()
    S = args.seq
    checks = []

    def check(what, ok, detail):
        checks.append({"what": what, "ok": bool(ok), "detail": detail})
        bp.log(f"  check {what}: {detail} {'OK' if ok else 'FAIL'}")

    cfg, raw = bp.load_dir(args.model_dir)
    w = bp.bert_weights(raw)
    vocab_size = cfg["vocab_size"]
    with open(os.path.join(args.model_dir, "vocab.txt"), encoding="utf-8") as fh:
        vocab = {t.rstrip("\n"): i for i, t in enumerate(fh)}
    with open(args.sentences, encoding="utf-8") as fh:
        sentences = [line.rstrip("\n") for line in fh if line.strip()]

    # Tokenisation: WordPiece on vocab.txt, padded to S; compared with tokenizer.json's ids.
    wp = [bp.wordpiece(s, vocab) for s in sentences]
    too_long = [i for i, t in enumerate(wp) if len(t) > S]
    if too_long:
        raise SystemExit(f"sentences {too_long} have more than {S} tokens; shorten them (truncation would differ)")
    tj, tokenizers_version = tokenizer_json_ids(args.model_dir, sentences)
    tokenization = {"sentences": len(sentences), "tokens_min": min(map(len, wp)), "tokens_max": max(map(len, wp)),
                    "tokens_mean": round(sum(map(len, wp)) / len(wp), 2)}
    if tj is not None:
        differ = [i for i, (a, b) in enumerate(zip(wp, tj)) if a != b]
        tokenization.update({"tokenizers_version": tokenizers_version, "differing_sentences": differ})
        check("WordPiece on vocab.txt == tokenizer.json ids", not differ,
              f"{len(sentences) - len(differ)}/{len(sentences)} sentences identical")
    ids = np.zeros((len(sentences), S), np.int64)
    mask = np.zeros((len(sentences), S), np.int64)
    for i, t in enumerate(wp):
        ids[i, :len(t)] = t
        mask[i, :len(t)] = 1
    types = np.zeros((len(sentences), S), np.int64)
    if args.write_ids:
        from safetensors.numpy import save_file
        save_file({"input_ids": ids, "attention_mask": mask, "token_type_ids": types}, args.write_ids)

    # FP32, then one quantized graph per variant.
    names = ["fp32"] + [v[0] for v in VARIANTS]
    model_bytes, sizes, ops, quantize_s = {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as td:
        fp32_path = os.path.join(td, "fp32.onnx")
        fp32_model = bp.bert_onnx(w, cfg, S)
        onnx.save(fp32_model, fp32_path)
        ops["fp32 graph: matmuls"] = matmul_census(fp32_model)
        for name, op_kinds in [("fp32", None)] + VARIANTS:
            if name == "fp32":
                model, path = fp32_model, fp32_path
            else:
                path = os.path.join(td, f"{name}.onnx")
                t0 = time.perf_counter()
                quantize_dynamic(fp32_path, path, weight_type=QuantType.QInt8, per_channel=True,
                                 op_types_to_quantize=op_kinds)
                quantize_s[name] = round(time.perf_counter() - t0, 2)
                model = onnx.load(path)
                ops[f"{name} graph: matmuls"] = matmul_census(model)
                ops[f"{name} graph: ops"] = op_types(model)
            sizes[name] = (initializer_bytes(model), os.path.getsize(path))
            model_bytes[name] = model.SerializeToString()
            opt = os.path.join(td, f"{name}-opt.onnx")
            bp.session(model_bytes[name], args.threads, True, opt)
            ops[f"{name} after ORT_ENABLE_ALL: ops"] = bp.op_histogram(opt)
    sessions = {name: session(model_bytes[name], args.threads, spinning=True) for name in names}
    s_fp32 = sessions["fp32"]

    # The timed sequence: quantstudio bench's synthetic tokens, all real.
    timed_ids = (np.arange(S, dtype=np.int64) * 7919 + 101) % vocab_size
    feeds = {"input_ids": timed_ids[None, :], "token_type_ids": np.zeros((1, S), np.int64),
             "attention_mask": np.ones((1, S), np.int64)}

    # The FP32 graph against bench_peer.py's numpy forward: on the timed sequence, and a padded sentence against
    # the same sentence unpadded (the mask path the cosines use).
    npm = bp.BertNumpy(w, cfg)
    hid = s_fp32.run(["last_hidden_state"], feeds)[0]
    hid_np = npm(feeds["input_ids"], feeds["token_type_ids"], feeds["attention_mask"])[0]
    _, rel = bp.rel_diff(hid, hid_np)
    check("ORT FP32 graph vs numpy (timed sequence)", rel < GRAPH_CHECK_TOLERANCE,
          f"max|diff| / max|ref| {rel:.2e} (< {GRAPH_CHECK_TOLERANCE:g})")
    n0 = int(mask[0].sum())
    hid0 = s_fp32.run(["last_hidden_state"], {"input_ids": ids[:1], "token_type_ids": types[:1],
                                              "attention_mask": mask[:1]})[0][0]
    emb_np = npm(ids[:1, :n0], types[:1, :n0], mask[:1, :n0])[1][0]
    c = cosine(sentence_embedding(hid0, mask[0]), emb_np)
    check("ORT FP32 padded sentence 0 vs numpy unpadded", 1.0 - c < GRAPH_CHECK_TOLERANCE,
          f"cosine {c:.7f} ({n0} of {S} tokens)")

    # Cosines of each quantized graph's embeddings against FP32's.
    cosines = {name: [] for name, _ in VARIANTS}
    for i in range(len(sentences)):
        f = {"input_ids": ids[i:i + 1], "token_type_ids": types[i:i + 1], "attention_mask": mask[i:i + 1]}
        e32 = sentence_embedding(s_fp32.run(["last_hidden_state"], f)[0][0], mask[i])
        for name, c in cosines.items():
            c.append(cosine(sentence_embedding(sessions[name].run(["last_hidden_state"], f)[0][0], mask[i]), e32))
    del s_fp32

    # Latency: ORT's defaults (spinning thread pools) with FP32 and every quantized graph in turns, then FP32 and
    # the bar's peer in turns again with spinning off.
    configurations = []
    for spinning, group in [(True, names), (False, ["fp32", VARIANTS[0][0]])]:
        if not spinning:
            sessions = None  # the spinning pools go before the others are timed
            sessions = {name: session(model_bytes[name], args.threads, spinning=False) for name in group}
        times = {name: [] for name in group}
        for r in range(WARMUP_ROUNDS + args.repeat):
            for name in group:
                start = time.perf_counter()
                sessions[name].run(["last_hidden_state"], feeds)
                if r >= WARMUP_ROUNDS:
                    times[name].append((time.perf_counter() - start) * 1e3)
        for name in group:
            t = sorted(times[name])
            weights, disk = sizes[name]
            conf = {"name": name, "spinning": spinning, "latency_ms_median": percentile(t, 0.5),
                    "latency_ms_p95": percentile(t, 0.95), "weights_bytes": weights, "disk_bytes": disk,
                    "mean_cosine": 1.0}
            if name != "fp32":
                conf.update({"mean_cosine": float(np.mean(cosines[name])), "min_cosine": float(np.min(cosines[name])),
                             "quantize_dynamic": {"weight_type": "QInt8", "per_channel": True, "reduce_range": False,
                                                  "op_types_to_quantize": dict(VARIANTS)[name] or "default",
                                                  "seconds": quantize_s[name]}})
            configurations.append(conf)
    doc = {"tool": "onnxruntime", "onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
           "threads": args.threads, "seq": S, "repeat": args.repeat, "warmup_rounds": WARMUP_ROUNDS,
           "configurations": configurations, "tokenization": tokenization, "ops": ops, "checks": checks,
           "checks_ok": all(c["ok"] for c in checks)}
    print(json.dumps(doc))
    sys.exit(0 if doc["checks_ok"] else 1)


if __name__ == "__main__":
    main()
