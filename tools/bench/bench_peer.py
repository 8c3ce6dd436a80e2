#!/usr/bin/env python3
"""Peer benchmark for the quantstudio FP32 runtime: the same models run by onnxruntime and by plain numpy.

Builds the ONNX graph of each model by hand (onnx.helper, opset 17; no torch, no exporter) from the model
folder's config.json + model.safetensors, checks it against an independent numpy forward pass, and times
`InferenceSession.run` (ORT_ENABLE_ALL, intra_op_num_threads=--threads, CPU EP) and the numpy forward.

Setup (the versions these figures were taken with):
  python3 -m venv /tmp/peer-venv
  /tmp/peer-venv/bin/pip install numpy==2.4.6 safetensors==0.8.0 onnx==1.23.2 onnxruntime==1.32.0 sympy==1.14.0
  (sympy only for the optional fused-BERT case via onnxruntime.transformers.optimizer)

Run:
  M=$(/tmp/peer-venv/bin/python tools/check/reference_check.py --fetch-minilm /tmp/minilm)
  /tmp/peer-venv/bin/python tools/bench/bench_peer.py "$M" --kind bert [--seq 128]
  /tmp/peer-venv/bin/python tools/fixtures/make_bench_llama.py /tmp/bench-llama
  /tmp/peer-venv/bin/python tools/bench/bench_peer.py /tmp/bench-llama --kind llama [--past 127] [--seq 128]
  /tmp/peer-venv/bin/python tools/bench/bench_peer.py sample-models/digits-cnn --kind graph
  common options: [--repeats 50] [--threads 2] [--json] [--no-prefill] [--dump-onnx DIR]

Kinds
-----
bert   HF BertModel folder (tensor names with or without a `bert.` prefix). Batch 1, --seq tokens, all valid
       (input_ids, token_type_ids = 0, attention_mask = 1). Embeddings (word + position + token_type,
       LayerNormalization), per layer: Q/K/V MatMul+Add, heads, QK^T / sqrt(head_dim) + additive mask
       ((1 - mask) * -10000), Softmax, PV, output dense, residual, LayerNorm, FFN with exact erf GELU,
       residual, LayerNorm -> last_hidden_state; masked mean pooling + L2 normalisation -> sentence_embedding.
       Extra checks: padding a short sentence to --seq with mask 0 gives the same embedding as running it
       unpadded (mask + pooling path); for all-MiniLM-L6-v2 the cosine scores of the sentence-transformers
       semantic-search example ("A man is eating pasta." vs 5 sentences, WordPiece on vocab.txt) must equal the
       published 0.7035 0.5272 0.1889 0.1047 0.0980. A second timed case, seq<S>-fused, runs the same graph after
       onnxruntime.transformers.optimizer (model_type bert: fused Attention, EmbedLayerNormalization,
       SkipLayerNormalization, BiasGelu; needs sympy), i.e. what an optimum/ORT BERT deployment runs.
llama  Llama folder (tools/fixtures/make_bench_llama.py). Decode step: 1 token at position --past against a KV cache of
       --past positions (inputs input_ids [1,1], past_key_i/past_value_i [1,kv_heads,past,head_dim]; outputs
       logits [1,1,vocab] and present_key_i/present_value_i [1,kv_heads,past+1,head_dim]). RMSNorm, HF
       rotate_half RoPE (cos/sin computed in the graph from the past length), GQA, softmax, o_proj, residual,
       SwiGLU MLP, final norm, lm_head. Prefill: --seq tokens, causal mask, logits for every position
       [1,seq,vocab] (as HF LlamaForCausalLM.forward does) plus the present KV. GQA is computed without copying
       K/V: Q [1,H,S,d] is viewed as [1,KV,H/KV,S,d] and MatMul broadcasts K/V [1,KV,1,T,d] over the group
       axis; this is exactly repeat_kv (query head h uses kv head h // (H/KV)).
       Extra check: numpy decode at --past with the cache from a numpy prefill of --past tokens equals the last
       row of a numpy prefill of --past+1 tokens (cache and rotary positions are consistent).
graph  quantstudio-graph model.json chain (conv2d / relu / flatten / linear; docs/MODEL-JSON.md). Batch 1 and
       batch 256 (eval images, tiled if fewer); accuracy of the ONNX graph on eval.safetensors.

Timing: median and p95 of wall time (ms) over --repeats calls after 5 warm-up calls, same inputs every call.
numpy uses OpenBLAS with --threads threads (OPENBLAS_NUM_THREADS/OMP_NUM_THREADS are set before numpy is
imported). Also reported: ORT with graph optimisation disabled (ORT_DISABLE_ALL) and the op types left after
ORT_ENABLE_ALL (from SessionOptions.optimized_model_filepath), i.e. what ORT fused.
numpy has no erf: the numpy BERT uses Abramowitz-Stegun 7.1.26 (|error| <= 1.5e-7), far below the checks.
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter

# numpy's thread count must be fixed before numpy is imported.
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--threads", type=int, default=2)
_threads = str(_pre.parse_known_args()[0].threads)
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = _threads

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

F32 = np.float32
OPSET = 17
WARMUP = 5


# ----------------------------------------------------------------------------------------------------------
# ONNX graph builder
# ----------------------------------------------------------------------------------------------------------
class G:
    def __init__(self):
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.n = 0
        self._consts = {}

    def fresh(self, p):
        self.n += 1
        return f"{p}_{self.n}"

    def init(self, arr, name=None):
        name = name or self.fresh("w")
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def c(self, value, dtype=F32):
        """A small constant (cached by value)."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(arr, self.fresh("c"))
        return self._consts[key]

    def i64(self, value):
        return self.c(value, np.int64)

    def op(self, op_type, inputs, n_out=1, out=None, domain=None, **attrs):
        outs = [out] if out else [self.fresh(op_type) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.fresh(op_type + "_n"),
                                           domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    def input(self, name, elem, shape):
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, src, name, elem, shape):
        self.op("Identity", [src], out=name)
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def model(self, name):
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bench_peer")
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m

    # layers -------------------------------------------------------------------------------------------
    def linear(self, x, weight, bias=None):
        """x @ weight.T (+ bias); weight in PyTorch's [out, in] layout, stored transposed as [in, out]."""
        y = self.op("MatMul", [x, self.init(np.ascontiguousarray(weight.T))])
        return self.op("Add", [y, self.init(bias)]) if bias is not None else y


# ----------------------------------------------------------------------------------------------------------
# onnxruntime helpers
# ----------------------------------------------------------------------------------------------------------
def session(model_bytes, threads, optimize=True, dump=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if dump:
        so.optimized_model_filepath = dump
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def op_histogram(path):
    m = onnx.load(path, load_external_data=False)
    c = Counter((n.domain + "." if n.domain else "") + n.op_type for n in m.graph.node)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def bench(fn, repeats):
    for _ in range(WARMUP):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts = np.array(ts)
    return float(np.median(ts)), float(np.percentile(ts, 95))


def rel_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b))), float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


class Report:
    def __init__(self, args):
        self.args = args
        self.runs, self.checks, self.notes = [], [], []
        self.fused = {}

    def check(self, what, got, ref, tol=1e-3):
        absd, reld = rel_diff(got, ref)
        ok = reld < tol
        self.checks.append({"what": what, "max_abs_diff": absd, "rel_to_scale": reld, "ok": ok})
        log(f"  check {what}: max|diff| {absd:.3e}, relative to output scale {reld:.3e} "
            f"(< {tol:g}) {'OK' if ok else 'FAIL'}")
        return ok

    def flag(self, what, ok, detail=""):
        self.checks.append({"what": what, "ok": bool(ok), "detail": detail})
        log(f"  check {what}: {detail} {'OK' if ok else 'FAIL'}")

    def time_case(self, label, shape, model, feeds, numpy_fn, dump_name=None):
        """Time ORT (optimised, then unoptimised) and numpy on one case."""
        a = self.args
        mb = model.SerializeToString()
        with tempfile.TemporaryDirectory() as td:
            dump = os.path.join(td, "opt.onnx")
            s = session(mb, a.threads, True, dump)
            self.fused[label] = op_histogram(dump)
        s0 = session(mb, a.threads, False)
        out_names = [o.name for o in s.get_outputs()]
        y_opt = s.run(out_names, feeds)
        y_no = s0.run(out_names, feeds)
        for n, yo, yn in zip(out_names, y_opt, y_no):
            self.check(f"{label}: ORT ENABLE_ALL vs DISABLE_ALL ({n})", yo, yn, tol=1e-4)
        med, p95 = bench(lambda: s.run(out_names, feeds), a.repeats)
        med0, p950 = bench(lambda: s0.run(out_names, feeds), a.repeats)
        del s0
        if numpy_fn is None:  # same numpy forward as the previous case
            nmed, np95 = self.runs[-1]["numpy_ms_median"], self.runs[-1]["numpy_ms_p95"]
        else:
            nmed, np95 = bench(numpy_fn, a.repeats)
        run = {"case": label, "shape": shape, "onnxruntime_ms_median": med, "onnxruntime_ms_p95": p95,
               "onnxruntime_noopt_ms_median": med0, "onnxruntime_noopt_ms_p95": p950,
               "numpy_ms_median": nmed, "numpy_ms_p95": np95}
        self.runs.append(run)
        log(f"  timed {label}: ORT {med:.3f} ms (p95 {p95:.3f}), ORT no-opt {med0:.3f} ms, numpy {nmed:.3f} ms")
        return run

    def emit(self, kind, extra=None):
        a = self.args
        first = self.runs[0]
        obj = {"kind": kind, "shape": first["shape"],
               "onnxruntime_ms_median": first["onnxruntime_ms_median"],
               "onnxruntime_ms_p95": first["onnxruntime_ms_p95"],
               "numpy_ms_median": first["numpy_ms_median"],
               "threads": a.threads, "onnxruntime_version": ort.__version__,
               "numpy_version": np.__version__, "onnx_version": onnx.__version__, "opset": OPSET,
               "repeats": a.repeats, "warmup": WARMUP,
               "checks_ok": all(c["ok"] for c in self.checks),
               "loadavg_1m_at_end": round(os.getloadavg()[0], 2), "notes": self.notes,
               "runs": self.runs, "checks": self.checks, "ort_ops_after_optimization": self.fused}
        if extra:
            obj.update(extra)
        if a.json:
            print(json.dumps(obj))
            return obj
        print()
        print(f"kind {kind}   onnxruntime {ort.__version__}   numpy {np.__version__}   onnx {onnx.__version__}   "
              f"threads {a.threads}   repeats {a.repeats} (+{WARMUP} warm-up)")
        hdr = f"{'case':<14} {'shape':<34} {'ORT med':>9} {'ORT p95':>9} {'ORT noopt':>10} {'numpy med':>10} {'numpy p95':>10}"
        print(hdr)
        print("-" * len(hdr))
        for r in self.runs:
            print(f"{r['case']:<14} {r['shape']:<34} {r['onnxruntime_ms_median']:>9.3f} {r['onnxruntime_ms_p95']:>9.3f}"
                  f" {r['onnxruntime_noopt_ms_median']:>10.3f} {r['numpy_ms_median']:>10.3f} {r['numpy_ms_p95']:>10.3f}")
        print("(ms; ORT noopt = ORT_DISABLE_ALL median)")
        if extra:
            for k, v in extra.items():
                print(f"{k}: {v}")
        for label, h in self.fused.items():
            print(f"ORT ops after ENABLE_ALL [{label}]: " + ", ".join(f"{k} x{v}" for k, v in h.items()))
        for n in self.notes:
            print("note:", n)
        print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f} (2 cores; > ~0.5 means something else ran)")
        print(f"checks: {sum(c['ok'] for c in self.checks)}/{len(self.checks)} passed")
        return obj


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def load_dir(d):
    with open(os.path.join(d, "config.json")) as fh:
        cfg = json.load(fh)
    return cfg, load_file(os.path.join(d, "model.safetensors"))


# ----------------------------------------------------------------------------------------------------------
# BERT
# ----------------------------------------------------------------------------------------------------------
def bert_weights(raw):
    if any(k.startswith("bert.") for k in raw):
        return {k[len("bert."):]: v for k, v in raw.items() if k.startswith("bert.")}
    return dict(raw)


def bert_onnx(w, cfg, S):
    g = G()
    D, H, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    dh, eps = D // H, float(cfg.get("layer_norm_eps", 1e-12))
    ids = g.input("input_ids", TensorProto.INT64, [1, S])
    tt = g.input("token_type_ids", TensorProto.INT64, [1, S])
    mask = g.input("attention_mask", TensorProto.INT64, [1, S])

    def ln(x, p):
        return g.op("LayerNormalization", [x, g.init(w[p + ".weight"]), g.init(w[p + ".bias"])], axis=-1,
                    epsilon=eps)

    e = "embeddings."
    x = g.op("Gather", [g.init(w[e + "word_embeddings.weight"]), ids])
    pos = g.init(np.arange(S, dtype=np.int64)[None, :])
    x = g.op("Add", [x, g.op("Gather", [g.init(w[e + "position_embeddings.weight"]), pos])])
    x = g.op("Add", [x, g.op("Gather", [g.init(w[e + "token_type_embeddings.weight"]), tt])])
    x = ln(x, e + "LayerNorm")

    # extended mask as HF BERT exports it: mask[:, None, None, :] -> float -> (1 - m) * -10000, [1,1,1,S]
    m4 = g.op("Unsqueeze", [g.op("Unsqueeze", [mask, g.i64([1])]), g.i64([2])])
    add_mask = g.op("Mul", [g.op("Sub", [g.c(1.0), g.op("Cast", [m4], to=TensorProto.FLOAT)]), g.c(-10000.0)])
    heads = g.i64([0, 0, H, dh])
    for i in range(L):
        p = f"encoder.layer.{i}."
        lin = lambda x, n: g.linear(x, w[p + n + ".weight"], w[p + n + ".bias"])  # noqa: E731
        q = g.op("Transpose", [g.op("Reshape", [lin(x, "attention.self.query"), heads])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [lin(x, "attention.self.key"), heads])], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [lin(x, "attention.self.value"), heads])], perm=[0, 2, 1, 3])
        s = g.op("Div", [g.op("MatMul", [q, k]), g.c(math.sqrt(dh))])
        pr = g.op("Softmax", [g.op("Add", [s, add_mask])], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [pr, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, g.i64([0, 0, D])])
        x = ln(g.op("Add", [lin(ctx, "attention.output.dense"), x]), p + "attention.output.LayerNorm")
        h = lin(x, "intermediate.dense")
        # exact GELU as PyTorch exports it: x * 0.5 * (1 + erf(x / sqrt 2))
        gl = g.op("Mul", [g.op("Mul", [h, g.op("Add", [g.op("Erf", [g.op("Div", [h, g.c(math.sqrt(2.0))])]),
                                                     g.c(1.0)])]), g.c(0.5)])
        x = ln(g.op("Add", [lin(gl, "output.dense"), x]), p + "output.LayerNorm")
    g.output(x, "last_hidden_state", TensorProto.FLOAT, [1, S, D])
    m3 = g.op("Unsqueeze", [g.op("Cast", [mask], to=TensorProto.FLOAT), g.i64([2])])  # [1,S,1]
    summed = g.op("ReduceSum", [g.op("Mul", [x, m3]), g.i64([1])], keepdims=0)  # [1,D]
    cnt = g.op("Max", [g.op("ReduceSum", [m3, g.i64([1])], keepdims=0), g.c(1e-9)])  # [1,1]
    mean = g.op("Div", [summed, cnt])
    nrm = g.op("Max", [g.op("ReduceL2", [mean], axes=[-1], keepdims=1), g.c(1e-12)])
    g.output(g.op("Div", [mean, nrm]), "sentence_embedding", TensorProto.FLOAT, [1, D])
    return g.model("bert")


def erf_np(x):
    # Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7
    s = np.sign(x)
    a = np.abs(x)
    t = F32(1.0) / (F32(1.0) + F32(0.3275911) * a)
    y = F32(1.0) - (((((F32(1.061405429) * t - F32(1.453152027)) * t) + F32(1.421413741)) * t
                     - F32(0.284496736)) * t + F32(0.254829592)) * t * np.exp(-a * a)
    return s * y


class BertNumpy:
    def __init__(self, w, cfg):
        self.cfg = cfg
        self.D, self.H, self.L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
        self.eps = F32(cfg.get("layer_norm_eps", 1e-12))
        self.w = {k: np.ascontiguousarray(v.T) if v.ndim == 2 and "embeddings" not in k else v
                  for k, v in w.items()}

    def ln(self, x, p):
        mu = x.mean(-1, keepdims=True)
        xc = x - mu
        var = (xc * xc).mean(-1, keepdims=True)
        return xc / np.sqrt(var + self.eps) * self.w[p + ".weight"] + self.w[p + ".bias"]

    def lin(self, x, p):
        return x @ self.w[p + ".weight"] + self.w[p + ".bias"]

    def __call__(self, ids, tt, mask):
        w, D, H = self.w, self.D, self.H
        dh = D // H
        S = ids.shape[1]
        e = "embeddings."
        x = (w[e + "word_embeddings.weight"][ids[0]] + w[e + "position_embeddings.weight"][:S]
             + w[e + "token_type_embeddings.weight"][tt[0]])
        x = self.ln(x, e + "LayerNorm")  # [S,D]
        maskf = mask[0].astype(F32)
        add_mask = (F32(1.0) - maskf) * F32(-10000.0)
        scale = F32(1.0 / math.sqrt(dh))
        for i in range(self.L):
            p = f"encoder.layer.{i}."
            q = self.lin(x, p + "attention.self.query").reshape(S, H, dh).transpose(1, 0, 2)
            k = self.lin(x, p + "attention.self.key").reshape(S, H, dh).transpose(1, 2, 0)
            v = self.lin(x, p + "attention.self.value").reshape(S, H, dh).transpose(1, 0, 2)
            s = (q @ k) * scale + add_mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(1, 0, 2).reshape(S, D)
            x = self.ln(self.lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            h = self.lin(x, p + "intermediate.dense")
            h = h * F32(0.5) * (F32(1.0) + erf_np(h * F32(1.0 / math.sqrt(2.0))))
            x = self.ln(self.lin(h, p + "output.dense") + x, p + "output.LayerNorm")
        mean = (x * maskf[:, None]).sum(0) / max(maskf.sum(), F32(1e-9))
        emb = mean / max(np.linalg.norm(mean), F32(1e-12))
        return x[None], emb[None].astype(F32)


def vocab_is_minilm(d, cfg):
    return cfg.get("hidden_size") == 384 and cfg.get("num_hidden_layers") == 6 and "minilm" in (
        d.lower() + cfg.get("_name_or_path", "").lower())


def ort_transformers_fuse(model, cfg):
    """The offline BERT fusions of onnxruntime.transformers.optimizer (Attention with packed QKV,
    EmbedLayerNormalization, SkipLayerNormalization, BiasGelu), as optimum / the ORT docs apply them to an
    exported BERT. None when the optimizer cannot run (it needs sympy)."""
    try:
        import logging
        from onnxruntime.transformers.optimizer import optimize_model
        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        with tempfile.TemporaryDirectory() as td:
            p = os.path.join(td, "m.onnx")
            onnx.save(model, p)
            o = optimize_model(p, model_type="bert", num_heads=cfg["num_attention_heads"],
                               hidden_size=cfg["hidden_size"], opt_level=0)
        return o.model, o.get_fused_operator_statistics()
    except ImportError as e:
        log(f"  (no fused run: {e})")
        return None


def wordpiece(text, vocab):
    ids = [vocab["[CLS]"]]
    import re
    for word in re.findall(r"\w+|[^\w\s]", text.lower()):
        start, pieces = 0, []
        while start < len(word):
            end = len(word)
            while end > start:
                sub = ("##" if start else "") + word[start:end]
                if sub in vocab:
                    pieces.append(vocab[sub])
                    break
                end -= 1
            if end == start:
                pieces = [vocab["[UNK]"]]
                break
            start = end
        ids += pieces
    return ids + [vocab["[SEP]"]]


def run_bert(args, rep):
    cfg, raw = load_dir(args.model_dir)
    w = bert_weights(raw)
    S, D = args.seq, cfg["hidden_size"]
    log(f"bert: {cfg.get('_name_or_path', args.model_dir)}: hidden {D}, {cfg['num_attention_heads']} heads, "
        f"{cfg['num_hidden_layers']} layers, seq {S}")
    if S > cfg["max_position_embeddings"]:
        raise SystemExit(f"--seq {S} > max_position_embeddings {cfg['max_position_embeddings']}")
    model = bert_onnx(w, cfg, S)
    if args.dump_onnx:
        onnx.save(model, os.path.join(args.dump_onnx, f"bert-seq{S}.onnx"))
    npm = BertNumpy(w, cfg)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, cfg["vocab_size"], size=(1, S), dtype=np.int64)
    ids[0, 0], ids[0, -1] = 101, 102
    tt = np.zeros((1, S), np.int64)
    mask = np.ones((1, S), np.int64)
    feeds = {"input_ids": ids, "token_type_ids": tt, "attention_mask": mask}

    s = session(model.SerializeToString(), args.threads)
    hid, emb = s.run(["last_hidden_state", "sentence_embedding"], feeds)
    hid_np, emb_np = npm(ids, tt, mask)
    rep.check("bert last_hidden_state ONNX vs numpy", hid, hid_np)
    rep.check("bert sentence_embedding ONNX vs numpy", emb, emb_np)

    # padding/mask path: a short sentence padded to S with mask 0 == the same sentence unpadded (numpy).
    vocab_path = os.path.join(args.model_dir, "vocab.txt")
    extra, padded = {}, []
    if os.path.exists(vocab_path):
        with open(vocab_path, encoding="utf-8") as fh:
            vocab = {t.rstrip("\n"): i for i, t in enumerate(fh)}
        # The sentence-transformers semantic-search example (all-MiniLM-L6-v2): query "A man is eating
        # pasta." against this corpus prints scores 0.7035, 0.5272, 0.1889, 0.1047, 0.0980 (4 decimals).
        query = "A man is eating pasta."
        corpus = ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse.",
                  "A man is riding a white horse on an enclosed ground.", "A cheetah is running behind its prey."]
        published = [0.7035, 0.5272, 0.1889, 0.1047, 0.0980]
        embs = []
        for sent in [query] + corpus:
            tok = wordpiece(sent, vocab)[:S]
            n = len(tok)
            pid = np.zeros((1, S), np.int64)
            pid[0, :n] = tok
            pm = np.zeros((1, S), np.int64)
            pm[0, :n] = 1
            e_onnx = s.run(["sentence_embedding"], {"input_ids": pid, "token_type_ids": tt, "attention_mask": pm})[0]
            e_np = npm(np.array([tok], np.int64), np.zeros((1, n), np.int64), np.ones((1, n), np.int64))[1]
            rep.check(f"bert padded ({n} of {S} tokens) ONNX vs unpadded numpy", e_onnx, e_np)
            embs.append(e_onnx[0])
            padded.append((pid, pm, e_np))
        cos = [float(embs[0] @ e) for e in embs[1:]]
        if vocab_is_minilm(args.model_dir, cfg):
            rep.flag("bert cosines vs published all-MiniLM-L6-v2 example", max(abs(a - b) for a, b in zip(cos, published))
                     < 6e-4, "ours " + " ".join(f"{c:.4f}" for c in cos) + " | published "
                     + " ".join(f"{c:.4f}" for c in published))
        extra["semantic_search_cosines"] = [round(c, 4) for c in cos]
    del s
    shape = f"[1,{S}] -> [1,{S},{D}] + [1,{D}]"
    rep.time_case(f"seq{S}", shape, model, feeds, lambda: npm(ids, tt, mask))
    fused = ort_transformers_fuse(model, cfg)
    if fused is None:
        rep.notes.append("onnxruntime.transformers optimizer unavailable (needs sympy): no fused-Attention run")
    else:
        fm, stats = fused
        extra["ort_transformers_fusions"] = {k: v for k, v in stats.items() if v}
        s = session(fm.SerializeToString(), args.threads)
        hid_f, emb_f = s.run(["last_hidden_state", "sentence_embedding"], feeds)
        rep.check("bert (ORT-fused) last_hidden_state vs numpy", hid_f, hid_np)
        rep.check("bert (ORT-fused) sentence_embedding vs numpy", emb_f, emb_np)
        for pid, pm, e_np in padded[:2]:
            e_f = s.run(["sentence_embedding"], {"input_ids": pid, "token_type_ids": tt, "attention_mask": pm})[0]
            rep.check(f"bert (ORT-fused) padded ({int(pm.sum())} of {S}) vs unpadded numpy", e_f, e_np)
        del s
        rep.time_case(f"seq{S}-fused", shape, fm, feeds, None)
    return rep.emit("bert", extra)


# ----------------------------------------------------------------------------------------------------------
# Llama
# ----------------------------------------------------------------------------------------------------------
def llama_dims(cfg):
    D, H = cfg["hidden_size"], cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads", H)
    dh = cfg.get("head_dim") or D // H
    return D, H, KV, dh, cfg["num_hidden_layers"], cfg["vocab_size"]


def inv_freq(cfg, dh):
    theta = float(cfg.get("rope_theta", 10000.0))
    return (1.0 / theta ** (np.arange(0, dh, 2, dtype=np.float64) / dh)).astype(F32)


def llama_onnx(w, cfg, mode):
    """mode 'decode': input_ids [1,1] + past KV [1,KV,'past',dh]; 'prefill': input_ids [1,'seq'], causal."""
    g = G()
    D, H, KV, dh, L, V = llama_dims(cfg)
    rep_ = H // KV
    eps = float(cfg.get("rms_norm_eps", 1e-6))
    decode = mode == "decode"
    ids = g.input("input_ids", TensorProto.INT64, [1, 1 if decode else "seq"])
    pasts = []
    if decode:
        for i in range(L):
            pasts.append((g.input(f"past_key_{i}", TensorProto.FLOAT, [1, KV, "past", dh]),
                          g.input(f"past_value_{i}", TensorProto.FLOAT, [1, KV, "past", dh])))
    zero = g.i64(0)
    one = g.i64(1)
    n_new = g.op("Squeeze", [g.op("Shape", [ids], start=1, end=2)])  # scalar S
    start = g.op("Squeeze", [g.op("Shape", [pasts[0][0]], start=2, end=3)]) if decode else zero
    end = g.op("Add", [start, n_new])
    pos = g.op("Range", [start, end, one])  # [S] positions of the new tokens
    freqs = g.op("Mul", [g.op("Unsqueeze", [g.op("Cast", [pos], to=TensorProto.FLOAT), g.i64([1])]),
                         g.init(inv_freq(cfg, dh)[None, :])])  # [S, dh/2]
    embf = g.op("Concat", [freqs, freqs], axis=-1)  # [S, dh]
    cos, sin = g.op("Cos", [embf]), g.op("Sin", [embf])
    mask = None
    if not decode:
        kpos = g.op("Range", [zero, end, one])  # [T]
        later = g.op("Greater", [g.op("Unsqueeze", [kpos, g.i64([0])]), g.op("Unsqueeze", [pos, g.i64([1])])])
        mask = g.op("Where", [later, g.c(-np.inf), g.c(0.0)])  # [S, T]

    def rms(x, name):
        ms = g.op("ReduceMean", [g.op("Pow", [x, g.c(2.0)])], axes=[-1], keepdims=1)
        return g.op("Mul", [g.op("Div", [x, g.op("Sqrt", [g.op("Add", [ms, g.c(eps)])])]), g.init(w[name])])

    def rope(t):  # t [1, heads, S, dh]
        a, b = g.op("Split", [t, g.i64([dh // 2, dh // 2])], n_out=2, axis=-1)
        rot = g.op("Concat", [g.op("Neg", [b]), a], axis=-1)
        return g.op("Add", [g.op("Mul", [t, cos]), g.op("Mul", [rot, sin])])

    x = g.op("Gather", [g.init(w["model.embed_tokens.weight"]), ids])  # [1,S,D]
    presents = []
    for i in range(L):
        p = f"model.layers.{i}."
        h = rms(x, p + "input_layernorm.weight")
        q = g.op("Transpose", [g.op("Reshape", [g.linear(h, w[p + "self_attn.q_proj.weight"]), g.i64([0, 0, H, dh])])],
                 perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [g.linear(h, w[p + "self_attn.k_proj.weight"]), g.i64([0, 0, KV, dh])])],
                 perm=[0, 2, 1, 3])
        v = g.op("Transpose", [g.op("Reshape", [g.linear(h, w[p + "self_attn.v_proj.weight"]), g.i64([0, 0, KV, dh])])],
                 perm=[0, 2, 1, 3])
        q, k = rope(q), rope(k)
        if decode:
            k = g.op("Concat", [pasts[i][0], k], axis=2)
            v = g.op("Concat", [pasts[i][1], v], axis=2)
        presents.append((k, v))  # [1,KV,T,dh]
        q5 = g.op("Reshape", [q, g.i64([1, KV, rep_, -1, dh])])  # head h = kv * rep + r
        k5t = g.op("Transpose", [g.op("Unsqueeze", [k, g.i64([2])])], perm=[0, 1, 2, 4, 3])  # [1,KV,1,dh,T]
        v5 = g.op("Unsqueeze", [v, g.i64([2])])  # [1,KV,1,T,dh]
        s = g.op("Div", [g.op("MatMul", [q5, k5t]), g.c(math.sqrt(dh))])  # [1,KV,rep,S,T]
        if mask is not None:
            s = g.op("Add", [s, mask])
        pr = g.op("Softmax", [s], axis=-1)
        ctx = g.op("Reshape", [g.op("MatMul", [pr, v5]), g.i64([1, H, -1, dh])])
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), g.i64([0, 0, H * dh])])
        x = g.op("Add", [x, g.linear(ctx, w[p + "self_attn.o_proj.weight"])])
        h = rms(x, p + "post_attention_layernorm.weight")
        gate = g.linear(h, w[p + "mlp.gate_proj.weight"])
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate])])
        up = g.linear(h, w[p + "mlp.up_proj.weight"])
        x = g.op("Add", [x, g.linear(g.op("Mul", [act, up]), w[p + "mlp.down_proj.weight"])])
    x = rms(x, "model.norm.weight")
    S_ = 1 if decode else "seq"
    T_ = "past_plus_1" if decode else "seq"
    g.output(g.linear(x, w["lm_head.weight"]), "logits", TensorProto.FLOAT, [1, S_, V])
    for i, (k, v) in enumerate(presents):
        g.output(k, f"present_key_{i}", TensorProto.FLOAT, [1, KV, T_, dh])
        g.output(v, f"present_value_{i}", TensorProto.FLOAT, [1, KV, T_, dh])
    return g.model(f"llama-{mode}")


class LlamaNumpy:
    def __init__(self, w, cfg):
        self.D, self.H, self.KV, self.dh, self.L, self.V = llama_dims(cfg)
        self.eps = F32(cfg.get("rms_norm_eps", 1e-6))
        self.inv = inv_freq(cfg, self.dh)
        self.w = {k: np.ascontiguousarray(v.T) if v.ndim == 2 and k != "model.embed_tokens.weight" else v
                  for k, v in w.items()}

    def rms(self, x, name):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * self.w[name]

    def __call__(self, ids, past=None):
        """ids [1,S]; past: list of (k, v) [1,KV,P,dh] or None. -> logits [1,S,V], presents."""
        w, H, KV, dh = self.w, self.H, self.KV, self.dh
        S = ids.shape[1]
        P = 0 if past is None else past[0][0].shape[2]
        T = P + S
        rep = H // KV
        pos = np.arange(P, T, dtype=F32)
        fr = pos[:, None] * self.inv[None, :]
        emb = np.concatenate([fr, fr], -1)
        cos, sin = np.cos(emb), np.sin(emb)
        half = dh // 2

        def rope(t):  # [heads, S, dh]
            rot = np.concatenate([-t[..., half:], t[..., :half]], -1)
            return t * cos + rot * sin

        x = w["model.embed_tokens.weight"][ids[0]]  # [S,D]
        causal = np.where(np.arange(T)[None, :] > np.arange(P, T)[:, None], F32(-np.inf), F32(0.0))
        scale = F32(1.0 / math.sqrt(dh))
        presents = []
        for i in range(self.L):
            p = f"model.layers.{i}."
            h = self.rms(x, p + "input_layernorm.weight")
            q = rope((h @ w[p + "self_attn.q_proj.weight"]).reshape(S, H, dh).transpose(1, 0, 2))
            k = rope((h @ w[p + "self_attn.k_proj.weight"]).reshape(S, KV, dh).transpose(1, 0, 2))
            v = (h @ w[p + "self_attn.v_proj.weight"]).reshape(S, KV, dh).transpose(1, 0, 2)
            if past is not None:
                k = np.concatenate([past[i][0][0], k], 1)
                v = np.concatenate([past[i][1][0], v], 1)
            presents.append((k[None], v[None]))
            kr = np.repeat(k, rep, axis=0)  # repeat_kv: head h uses kv head h // rep
            vr = np.repeat(v, rep, axis=0)
            s = (q @ kr.transpose(0, 2, 1)) * scale + causal
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ vr).transpose(1, 0, 2).reshape(S, H * dh)
            x = x + ctx @ w[p + "self_attn.o_proj.weight"]
            h = self.rms(x, p + "post_attention_layernorm.weight")
            gt = h @ w[p + "mlp.gate_proj.weight"]
            up = h @ w[p + "mlp.up_proj.weight"]
            x = x + (gt / (F32(1.0) + np.exp(-gt)) * up) @ w[p + "mlp.down_proj.weight"]
        x = self.rms(x, "model.norm.weight")
        return (x @ w["lm_head.weight"])[None].astype(F32), presents


def run_llama(args, rep):
    cfg, w = load_dir(args.model_dir)
    D, H, KV, dh, L, V = llama_dims(cfg)
    P, S = args.past, args.seq
    log(f"llama: hidden {D}, {H} heads / {KV} kv heads, head_dim {dh}, {L} layers, vocab {V}; past {P}, seq {S}")
    npm = LlamaNumpy(w, cfg)
    rng = np.random.default_rng(0)
    toks = rng.integers(3, V, size=(1, max(P + 1, S)), dtype=np.int64)

    dec = llama_onnx(w, cfg, "decode")
    if args.dump_onnx:
        onnx.save(dec, os.path.join(args.dump_onnx, "llama-decode.onnx"))
    # the cache: a numpy prefill of the first P tokens
    _, past = npm(toks[:, :P]) if P > 0 else (None, [(np.zeros((1, KV, 0, dh), F32),) * 2 for _ in range(L)])
    new = toks[:, P:P + 1]
    feeds = {"input_ids": new}
    for i, (k, v) in enumerate(past):
        feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = np.ascontiguousarray(k), np.ascontiguousarray(v)
    logits_np, pres_np = npm(new, past)
    full_np, _ = npm(toks[:, :P + 1])
    rep.check(f"llama numpy decode@{P} vs numpy prefill of {P + 1} (last row)", logits_np, full_np[:, -1:])
    s = session(dec.SerializeToString(), args.threads)
    outs = s.run(None, feeds)
    names = [o.name for o in s.get_outputs()]
    got = dict(zip(names, outs))
    rep.check("llama decode logits ONNX vs numpy", got["logits"], logits_np)
    rep.check("llama decode present KV ONNX vs numpy",
              np.concatenate([np.concatenate([got[f"present_key_{i}"], got[f"present_value_{i}"]]).ravel()
                              for i in range(L)]),
              np.concatenate([np.concatenate([k, v]).ravel() for k, v in pres_np]))
    del s
    rep.time_case(f"decode@{P}", f"[1,1] + KV {L}x2x[1,{KV},{P},{dh}] -> [1,1,{V}]", dec, feeds,
                  lambda: npm(new, past))

    if not args.no_prefill and S > 0:
        pre = llama_onnx(w, cfg, "prefill")
        if args.dump_onnx:
            onnx.save(pre, os.path.join(args.dump_onnx, "llama-prefill.onnx"))
        ids = toks[:, :S]
        s = session(pre.SerializeToString(), args.threads)
        lo = s.run(["logits"], {"input_ids": ids})[0]
        ln_, _ = npm(ids)
        rep.check(f"llama prefill {S} logits ONNX vs numpy", lo, ln_)
        del s
        rep.time_case(f"prefill{S}", f"[1,{S}] causal -> [1,{S},{V}]", pre, {"input_ids": ids}, lambda: npm(ids))
    return rep.emit("llama", {"tokens_per_s_onnxruntime_decode": round(1e3 / rep.runs[0]["onnxruntime_ms_median"], 1)})


# ----------------------------------------------------------------------------------------------------------
# quantstudio-graph (model.json)
# ----------------------------------------------------------------------------------------------------------
def graph_plan(d):
    with open(os.path.join(d, "model.json")) as fh:
        doc = json.load(fh)
    if doc.get("format") != "quantstudio-graph" or doc.get("version") != 1:
        raise SystemExit("not a quantstudio-graph version 1 document")
    w = load_file(os.path.join(d, "model.safetensors"))
    return doc, w


def graph_onnx(doc, w):
    g = G()
    in_shape = doc["inputs"][0]["shape"]
    x = g.input("input", TensorProto.FLOAT, ["N"] + list(in_shape))
    for op in doc["ops"]:
        kind = op["op"]
        if kind == "conv2d":
            sh, sw = op.get("stride", [1, 1])
            ph, pw = op.get("padding", [0, 0])
            ins = [x, g.init(w[op["weight"]])] + ([g.init(w[op["bias"]])] if op.get("bias") else [])
            x = g.op("Conv", ins, strides=[sh, sw], pads=[ph, pw, ph, pw], dilations=[1, 1], group=1)
        elif kind == "relu":
            x = g.op("Relu", [x])
        elif kind == "flatten":
            x = g.op("Flatten", [x], axis=1)
        elif kind == "linear":
            ins = [x, g.init(w[op["weight"]])] + ([g.init(w[op["bias"]])] if op.get("bias") else [])
            x = g.op("Gemm", ins, transB=1)
        else:
            raise SystemExit(f"unknown op {kind}")
    g.output(x, "output", TensorProto.FLOAT, ["N"] + list(doc["outputs"][0]["shape"]))
    return g.model("quantstudio-graph")


def graph_numpy(doc, w):
    ops = []
    for op in doc["ops"]:
        if op["op"] == "conv2d":
            wt = w[op["weight"]]
            O = wt.shape[0]
            ops.append(("conv", wt.reshape(O, -1).T.copy(), w[op["bias"]] if op.get("bias") else None,
                        wt.shape[2:], op.get("stride", [1, 1]), op.get("padding", [0, 0])))
        elif op["op"] == "relu":
            ops.append(("relu",))
        elif op["op"] == "flatten":
            ops.append(("flatten",))
        elif op["op"] == "linear":
            ops.append(("linear", w[op["weight"]].T.copy(), w[op["bias"]] if op.get("bias") else None))

    def fwd(x):
        for op in ops:
            if op[0] == "conv":
                _, wm, b, (kh, kw), (sh, sw), (ph, pw) = op
                N, C, Hh, Ww = x.shape
                xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
                win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
                OH, OW = win.shape[2], win.shape[3]
                cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(N * OH * OW, C * kh * kw)  # im2col (copies)
                y = cols @ wm
                if b is not None:
                    y += b
                x = y.reshape(N, OH, OW, -1).transpose(0, 3, 1, 2)
            elif op[0] == "relu":
                x = np.maximum(x, F32(0.0))
            elif op[0] == "flatten":
                x = np.ascontiguousarray(x).reshape(x.shape[0], -1)
            elif op[0] == "linear":
                x = x @ op[1]
                if op[2] is not None:
                    x = x + op[2]
        return x
    return fwd


def run_graph(args, rep):
    doc, w = graph_plan(args.model_dir)
    model = graph_onnx(doc, w)
    if args.dump_onnx:
        onnx.save(model, os.path.join(args.dump_onnx, "graph.onnx"))
    fwd = graph_numpy(doc, w)
    ev = load_file(os.path.join(args.model_dir, "eval.safetensors"))
    xs, labels = ev["inputs"].astype(F32), ev["labels"]
    s = session(model.SerializeToString(), args.threads)
    out = s.run(["output"], {"input": xs})[0]
    rep.check(f"graph output ONNX vs numpy (eval set, {len(xs)} images)", out, fwd(xs))
    acc = float((out.argmax(1) == labels).mean())
    correct = int((out.argmax(1) == labels).sum())
    expected = None
    try:
        with open(os.path.join(args.model_dir, "config.json")) as fh:
            expected = json.load(fh).get("training", {}).get("eval_correct")
    except OSError:
        pass
    rep.flag("graph ONNX accuracy on eval.safetensors", expected is None or correct == expected,
             f"{correct}/{len(xs)} = {100 * acc:.2f}% (config.json training.eval_correct: {expected})")
    del s
    out_shape = doc["outputs"][0]["shape"]
    ins = list(doc["inputs"][0]["shape"])
    for n in (1, 256):
        xb = np.ascontiguousarray(np.resize(xs, (n,) + xs.shape[1:]).astype(F32))
        rep.time_case(f"batch{n}", f"[{n},{','.join(map(str, ins))}] -> [{n},{','.join(map(str, out_shape))}]",
                      model, {"input": xb}, lambda xb=xb: fwd(xb))
    return rep.emit("graph", {"eval_accuracy_onnx": f"{correct}/{len(xs)} = {100 * acc:.2f}%"})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--kind", required=True, choices=["bert", "llama", "graph"])
    ap.add_argument("--seq", type=int, default=128, help="bert sequence length / llama prefill length")
    ap.add_argument("--past", type=int, default=127, help="llama decode: KV cache length")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-prefill", action="store_true", help="llama: skip the prefill case")
    ap.add_argument("--dump-onnx", metavar="DIR", help="also save the built (unoptimised) ONNX models in DIR")
    args = ap.parse_args()
    if args.dump_onnx:
        os.makedirs(args.dump_onnx, exist_ok=True)
    rep = Report(args)
    obj = {"bert": run_bert, "llama": run_llama, "graph": run_graph}[args.kind](args, rep)
    sys.exit(0 if obj["checks_ok"] else 1)


if __name__ == "__main__":
    main()
