#!/usr/bin/env python3
"""Independent numpy check of quantstudio's calibration, W8A8 simulation and W8A8 export.

Usage
-----
  check_calibration.py --quantstudio BIN --model sample-models/digits-mlp [--work DIR]

The model folder must be a chain graph (config.json -> model.json with linear / relu / flatten ops) with
model.safetensors, calib.safetensors and eval.safetensors (`inputs`, `labels`). Nothing of the Rust side is
imported: the forward pass, the observers' reference values and the INT8 formulas are re-implemented here from
docs/CALIBRATION.md, docs/QUANTIZATION.md, docs/EVALUATION.md and docs/EXPORT.md. Needs numpy and safetensors.
Prints `ALL CHECKS PASSED` and exits 0, or lists every failure and exits 1 (2: usage / quantstudio failed).

What is checked, and the tolerances
-----------------------------------
1. Calibration (`calibrate --data calib.safetensors --json --no-cache`, once per observer: minmax,
   percentile:99.9, percentile:99.99, mse, entropy). A float32 numpy forward records the input of every linear
   layer on the calibration inputs.
   - `values` == rows * inputs exactly; `min`, `max`, `absmax` relative 1e-5 (our GEMM and quantstudio's f32
     GEMM sum in different orders; the first layer's input is the raw data and must match exactly anyway).
   - `clip` == `clips[label of the observer]`, the same `clips` in every run, `scale` == f32(clip) / f32(127).
   - min-max: clip == absmax (relative 1e-5).
   - percentile p: v = the exact sample percentile of |x| (the smallest sorted |x| such that the share of
     |x| <= v reaches p/100, zeros included). quantstudio's clip is the upper edge of the histogram bin that
     holds v (capped at absmax), so it must lie in [v - 2w, v + 2w] with w = 2 * range / 8192 and range the
     smallest power of two >= absmax (one bin of width w plus one bin of slack for the fold of negatives).
   - mse: the documented continuous error model on the raw values (no histogram),
         err(c) = sum_{0 < |x| <= c} (c/127)^2 / 12 + sum_{|x| > c} (|x| - c)^2,
     minimised over 4000 evenly spaced c in (0, absmax]; quantstudio's clip must have err within 2 % of that
     minimum (its search runs on 8192-bin centres, and minima are flat, so the clip itself is not compared).
   - entropy: 0 < clip <= absmax; and the documented KL search re-done in numpy on a numpy-built histogram
     (8192 bins over [-range, range), folded): KL(quantstudio's threshold i = clip / w) within 1e-9 relative of
     the smallest KL (KL values, not indices, are compared: near-ties may fall either way with another
     summation order).
2. W8A8 simulation (`eval --recipe R --data eval.safetensors --json`, R written by `calibrate --observer mse
   --write-recipe R`). Per layer from R: activations int8 -> input x_hat = clip(rint(x / s), -128, 127) * s,
   s = f32(clip) / f32(127) (clip 0 -> s = 1); symmetric INT8 weights per channel (or per tensor):
   scale = f32(absmax) / f32(127) (0 -> 1), q = clip(rint(w / scale), -127, 127), w_hat = q * scale, all float32.
   - `fp32_accuracy` and `accuracy` exactly equal to numpy's (first index on argmax ties); a difference of
     1/N in `accuracy` is tolerated only if some planned output has its top two logits within 1e-4 (reported).
   - `output_sqnr_db` within 0.05 dB of numpy's 10 log10(sum y^2 / sum (y - y_hat)^2) (f64 sums);
     `output_mse` relative 1.2 % (the same tolerance in other units).
3. Export (`quantize --recipe R -o OUT --json`), read with safetensors.numpy:
   - `M.input_scale` F32 [1] equal bit for bit to f32(clip) / f32(127); `M.weight` I8 with the codes of 2;
     `M.weight_scale` F32 [out, 1] (per tensor: [1]) bit for bit; no `M.weight_packed`; `M.bias` unchanged.
   - config.json: `quantization_config.config_groups` has an `int-quantized` group targeting exactly the W8A8
     layers, weights {num_bits 8, type int, symmetric, strategy channel|tensor}, input_activations
     {num_bits 8, type int, symmetric true, strategy tensor, dynamic false}.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

F127 = np.float32(127)
REL_STATS = 1e-5
MSE_ERR_SLACK = 0.02
MSE_GRID = 4000
SQNR_DB = 0.05
OUT_MSE_REL = 0.012
TIE_GAP = 1e-4
BINS = 8192
OBSERVERS = [("minmax", "min-max"), ("percentile:99.9", "percentile 99.9"),
             ("percentile:99.99", "percentile 99.99"), ("mse", "mse"), ("entropy", "entropy")]

failures: list[str] = []


def fail(msg: str) -> None:
    failures.append(msg)
    print(f"  FAIL {msg}")


def ok(msg: str) -> None:
    print(f"  ok   {msg}")


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def run(cmd: list[str]) -> dict:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"quantstudio failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout}\n{p.stderr}", file=sys.stderr)
        sys.exit(2)
    return json.loads(p.stdout)


# ---------------------------------------------------------------------------------------------------------------
# numpy forward pass of a chain graph (model.json)

def load_graph(model: Path):
    graph = json.loads((model / "model.json").read_text())
    weights = load_file(str(model / "model.safetensors"))
    for op in graph["ops"]:
        if op["op"] not in ("linear", "relu", "flatten"):
            sys.exit(f"check_calibration.py: op {op['op']!r} is not supported (linear, relu, flatten only)")
    return graph["ops"], weights


def layer_name(op: dict) -> str:
    w = op["weight"]
    return w[: -len(".weight")] if w.endswith(".weight") else w


def forward(ops, weights, x, plan=None, taps=None):
    """float32 forward on a batch. plan: name -> (w_hat, input scale or None); taps: name -> recorded input."""
    x = x.astype(np.float32)
    for op in ops:
        if op["op"] == "relu":
            x = np.maximum(x, np.float32(0))
        elif op["op"] == "flatten":
            x = x.reshape(x.shape[0], -1)
        else:
            name = layer_name(op)
            if taps is not None:
                taps[name] = x.copy()
            w = weights[op["weight"]].astype(np.float32)
            if plan is not None and name in plan:
                w, s = plan[name]
                if s is not None:
                    x = quant_input(x, s)
            x = x @ w.T
            if op.get("bias"):
                x = x + weights[op["bias"]].astype(np.float32)
            x = x.astype(np.float32)
    return x


# ---------------------------------------------------------------------------------------------------------------
# INT8 symmetric (docs/QUANTIZATION.md)

def sym_scale(absmax) -> np.ndarray:
    s = np.asarray(np.float32(absmax) / F127 if np.ndim(absmax) == 0 else absmax.astype(np.float32) / F127)
    s = np.where((s == 0) | ~np.isfinite(s), np.float32(1), s).astype(np.float32)
    return s


def codes(x, s, qmin=-127):
    return np.clip(np.rint(x / s), qmin, 127).astype(np.float32)


def quant_input(x, s):
    """A W8A8 layer's static input: the symmetric scale, codes saturated to [-128, 127] (as compressed-tensors and
    vLLM quantize inputs)."""
    return (codes(x, s, qmin=-128) * s).astype(np.float32)


def weight_params(w: np.ndarray, granularity: str):
    if granularity == "per_channel" and w.ndim >= 2:
        scale = sym_scale(np.abs(w.reshape(w.shape[0], -1)).max(axis=1)).reshape([-1] + [1] * (w.ndim - 1))
    elif granularity in ("per_channel", "per_tensor"):
        scale = sym_scale(np.abs(w).max()).reshape([1] * w.ndim)
    else:
        sys.exit(f"check_calibration.py: granularity {granularity!r} is not supported")
    q = codes(w, scale)
    return q.astype(np.int8), scale, (q * scale).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# observers' references (docs/CALIBRATION.md)

def exact_percentile(a_sorted: np.ndarray, p: float) -> float:
    need = p / 100.0 * a_sorted.size          # smallest count k with k >= p/100 * T (f64, as documented)
    k = max(1, math.ceil(need))
    return float(a_sorted[min(k, a_sorted.size) - 1])


def mse_err(nz_sorted: np.ndarray, cum1: np.ndarray, cum2: np.ndarray, c: np.ndarray) -> np.ndarray:
    """err(c) of the continuous model for an array of clips c (f64), over the nonzero |x| (sorted)."""
    n = nz_sorted.size
    i = np.searchsorted(nz_sorted, c, side="right")      # count of |x| <= c
    tail_n = n - i
    tail_s1 = cum1[-1] - cum1[i]
    tail_s2 = cum2[-1] - cum2[i]
    clipped = tail_s2 - 2 * c * tail_s1 + c * c * tail_n
    return i * (c / 127.0) ** 2 / 12.0 + np.maximum(clipped, 0.0)


def pow2_range(absmax: float) -> float:
    return 2.0 ** math.ceil(math.log2(absmax)) if absmax > 0 else 0.0


def folded_histogram(x: np.ndarray):
    x = x.astype(np.float64).ravel()
    w = 2.0 * pow2_range(float(np.abs(x).max())) / BINS
    b = np.clip(np.floor(x * (1.0 / w)) + BINS // 2, 0, BINS - 1).astype(np.int64)
    bins = np.bincount(b, minlength=BINS)
    return bins[BINS // 2:] + bins[BINS // 2 - 1::-1], w


def entropy_kl(h: np.ndarray, i: int, n: int, levels: int = 128) -> float:
    p = h[:i].astype(np.float64)
    p[i - 1] += h[i:n].sum()
    group = np.minimum(np.arange(i) // (i // levels), levels - 1)      # the last group runs to i
    sums = np.bincount(group, weights=h[:i].astype(np.float64), minlength=levels)
    nonzero = np.bincount(group, weights=(p > 0).astype(np.float64), minlength=levels)
    q = np.where(p > 0, sums[group] / np.maximum(nonzero[group], 1), 0.0)
    p, q = p / p.sum(), q / q.sum()
    for a in (p, q):
        z = a == 0
        a[~z] -= 1e-4 * z.sum() / (~z).sum()
        a[z] += 1e-4
        if (a <= 0).any():
            return math.inf
    return float(np.sum(p * np.log(p / q)))


def check_entropy(name: str, x: np.ndarray, clip: float, absmax: float) -> None:
    h, w = folded_histogram(x)
    n = int(np.flatnonzero(h)[-1]) + 1
    if n <= 128:
        want = min(n * w, absmax)
        if clip != want:
            fail(f"{name}: entropy clip {clip!r} != {want!r} (only {n} nonempty bins)")
        return
    kls = {i: entropy_kl(h, i, n) for i in range(128, n + 1)}
    best = min(kls, key=lambda i: (kls[i], i))
    i = n if clip == absmax else round(clip / w)
    if i not in kls or kls[i] > kls[best] * (1 + 1e-9):
        fail(f"{name}: entropy clip {clip!r} (threshold {i}) vs numpy's smallest KL {kls[best]:.12g} at "
             f"threshold {best} (clip {min(best * w, absmax)!r})")
    else:
        ok(f"{name}: entropy clip {clip:.9g} = threshold {i}, numpy argmin {best}, KL {kls[i]:.9g}")


def check_calibration(qs, model, ops, weights, work):
    print("== calibration")
    calib = load_file(str(model / "calib.safetensors"))
    taps: dict = {}
    forward(ops, weights, calib["inputs"], taps=taps)
    runs = {}
    for obs, label in OBSERVERS:
        runs[obs] = run([qs, "calibrate", str(model), "--data", str(model / "calib.safetensors"),
                         "--observer", obs, "--json", "--no-cache"])
    first = {l["name"]: l for l in runs["minmax"]["layers"]}
    if set(first) != set(taps):
        fail(f"calibrated layers {sorted(first)} != linear layers {sorted(taps)}")
    worst = {"stats": 0.0, "mse_ratio": 0.0}
    for name, x in taps.items():
        if name not in first:
            continue
        L = first[name]
        a = np.abs(x.astype(np.float64)).ravel()
        mn, mx, am = float(x.min()), float(x.max()), float(a.max())
        if L["values"] != x.size:
            fail(f"{name}: values {L['values']} != {x.shape[0]} x {x.shape[1]} = {x.size}")
        for key, want in (("min", mn), ("max", mx), ("absmax", am)):
            d = abs(L[key] - want) / max(am, 1e-30)        # relative to the layer's absmax (min is often 0)
            worst["stats"] = max(worst["stats"], d)
            if d > REL_STATS:
                fail(f"{name}: {key} quantstudio={L[key]!r} numpy={want!r} (rel {d:.3g} > {REL_STATS})")
        clips = L["clips"]
        for obs, label in OBSERVERS:
            R = {l["name"]: l for l in runs[obs]["layers"]}[name]
            if R["clips"] != clips or R["absmax"] != L["absmax"] or R["values"] != L["values"]:
                fail(f"{name}: --observer {obs} reports other statistics/clips than --observer minmax")
            if R["clip"] != clips[label]:
                fail(f"{name}: --observer {obs}: clip {R['clip']!r} != clips[{label!r}] {clips[label]!r}")
            want_s = sym_scale(np.float32(R["clip"]))
            if np.float32(R["scale"]) != want_s:
                fail(f"{name}: --observer {obs}: scale {R['scale']!r} != f32(clip)/127 = {float(want_s)!r}")
        # min-max
        if rel(clips["min-max"], am) > REL_STATS:
            fail(f"{name}: min-max clip {clips['min-max']!r} != absmax {am!r}")
        # percentiles
        a_sorted = np.sort(a)
        w = 2.0 * pow2_range(L["absmax"]) / BINS
        for p in (99.9, 99.99):
            v = exact_percentile(a_sorted, p)
            c = clips[f"percentile {p}"]
            if not (v - 2 * w <= c <= v + 2 * w):
                fail(f"{name}: percentile {p} clip {c!r} not in [v - 2w, v + 2w], v={v!r}, w={w!r}")
            else:
                ok(f"{name}: percentile {p}: clip {c:.9g}, exact v {v:.9g}, (clip - v)/w = {(c - v) / w:+.3f}")
        # mse
        nz = a_sorted[a_sorted > 0]
        cum1 = np.concatenate([[0.0], np.cumsum(nz)])
        cum2 = np.concatenate([[0.0], np.cumsum(nz * nz)])
        grid = np.linspace(am / MSE_GRID, am, MSE_GRID)
        errs = mse_err(nz, cum1, cum2, grid)
        best = int(np.argmin(errs))
        c = clips["mse"]
        ours = float(mse_err(nz, cum1, cum2, np.array([c], dtype=np.float64))[0])
        ratio = ours / errs[best]
        worst["mse_ratio"] = max(worst["mse_ratio"], ratio)
        if ratio > 1 + MSE_ERR_SLACK:
            fail(f"{name}: mse clip {c!r} has err {ours:.6g}, {ratio:.4f} x the numpy minimum {errs[best]:.6g} "
                 f"at c={grid[best]:.9g}")
        else:
            ok(f"{name}: mse clip {c:.9g} err/min = {ratio:.5f} (numpy argmin c = {grid[best]:.6g})")
        # entropy
        if not (0 < clips["entropy"] <= am):
            fail(f"{name}: entropy clip {clips['entropy']!r} not in (0, absmax={am!r}]")
        check_entropy(name, x, clips["entropy"], am)
        ok(f"{name}: values {x.size}, min {mn:.9g}, max {mx:.9g}, absmax {am:.9g}")
    print(f"  largest relative difference of min/max/absmax: {worst['stats']:.3g}; "
          f"largest mse err ratio: {worst['mse_ratio']:.5f}")


# ---------------------------------------------------------------------------------------------------------------
# W8A8 simulation and export

def make_plan(recipe, ops, weights):
    plan = {}
    for op in ops:
        if op["op"] != "linear":
            continue
        name = layer_name(op)
        spec = recipe.get("layers", {}).get(name)
        if spec is None or spec.get("precision") != "int8":
            continue
        if not spec.get("symmetric", True):
            sys.exit(f"check_calibration.py: {name}: asymmetric weights are not supported by this check")
        q, scale, w_hat = weight_params(weights[op["weight"]].astype(np.float32), spec.get("granularity", "per_tensor"))
        s = None
        if spec.get("activations") == "int8":
            s = sym_scale(np.float32(recipe["input_clips"][name]))
        plan[name] = {"q": q, "scale": scale, "w_hat": w_hat, "s": s, "spec": spec}
    return plan


def check_w8a8(qs, model, ops, weights, work):
    print("== W8A8 simulation")
    recipe_path = work / "w8a8-mse.json"
    run([qs, "calibrate", str(model), "--data", str(model / "calib.safetensors"), "--observer", "mse",
         "--write-recipe", str(recipe_path), "--json", "--no-cache"])
    recipe = json.loads(recipe_path.read_text())
    plan = make_plan(recipe, ops, weights)
    w8a8 = sorted(n for n, p in plan.items() if p["s"] is not None)
    if not w8a8:
        fail("the recipe written by calibrate has no W8A8 layer")
    ok(f"recipe: W8A8 layers {w8a8}, clips {recipe['input_clips']}")
    ev = load_file(str(model / "eval.safetensors"))
    x, labels = ev["inputs"], ev["labels"].astype(np.int64)
    n = x.shape[0]
    y = forward(ops, weights, x)
    yq = forward(ops, weights, x, plan={k: (p["w_hat"], p["s"]) for k, p in plan.items()})
    acc32 = float(np.mean(np.argmax(y, axis=1) == labels))
    accq = float(np.mean(np.argmax(yq, axis=1) == labels))
    e = (y.astype(np.float64) - yq.astype(np.float64))
    sqnr = 10 * math.log10(float(np.sum(y.astype(np.float64) ** 2)) / float(np.sum(e * e)))
    mse = float(np.mean(e * e))
    got = run([qs, "eval", str(model), "--recipe", str(recipe_path), "--data", str(model / "eval.safetensors"),
               "--json"])
    if got["fp32_accuracy"] != acc32:
        fail(f"fp32_accuracy quantstudio={got['fp32_accuracy']!r} numpy={acc32!r}")
    if got["accuracy"] != accq:
        top2 = np.sort(yq, axis=1)[:, -2:]
        near = np.flatnonzero(top2[:, 1] - top2[:, 0] < TIE_GAP)
        if abs(got["accuracy"] - accq) <= 1.0 / n + 1e-12 and near.size:
            print(f"  NOTE accuracy quantstudio={got['accuracy']!r} numpy={accq!r}: one flip, near-tie samples {near.tolist()}")
        else:
            fail(f"accuracy quantstudio={got['accuracy']!r} numpy={accq!r} (near-tie samples: {near.tolist()})")
    d = abs(got["output_sqnr_db"] - sqnr)
    if d > SQNR_DB:
        fail(f"output_sqnr_db quantstudio={got['output_sqnr_db']!r} numpy={sqnr!r} (diff {d:.4f} dB > {SQNR_DB})")
    if rel(got["output_mse"], mse) > OUT_MSE_REL:
        fail(f"output_mse quantstudio={got['output_mse']!r} numpy={mse!r}")
    ok(f"accuracy {got['accuracy']:.6f} (numpy {accq:.6f}), fp32_accuracy {got['fp32_accuracy']:.6f} "
       f"(numpy {acc32:.6f}), samples {n}")
    ok(f"output_sqnr_db {got['output_sqnr_db']:.5f} (numpy {sqnr:.5f}, diff {got['output_sqnr_db'] - sqnr:+.2e} dB); "
       f"output_mse rel diff {rel(got['output_mse'], mse):.2e}; max abs error {got['output_max_abs_error']:.6g} "
       f"(numpy {float(np.abs(e).max()):.6g})")
    return recipe_path, plan


def check_export(qs, model, weights, recipe_path, plan, work):
    print("== W8A8 export")
    out = work / "export"
    # --force: a model.json graph is not an architecture transformers or vLLM build; the layout is what is checked.
    run([qs, "quantize", str(model), "--recipe", str(recipe_path), "-o", str(out), "--force", "--json"])
    t = load_file(str(out / "model.safetensors"))
    for name, p in plan.items():
        want_scale_shape = (p["q"].shape[0], 1) if p["spec"].get("granularity") == "per_channel" else (1,)
        if f"{name}.weight_packed" in t:
            fail(f"{name}: weight_packed present in a W8A8 export")
        wq = t.get(f"{name}.weight")
        if wq is None or wq.dtype != np.int8 or wq.shape != p["q"].shape:
            fail(f"{name}.weight: want I8 {list(p['q'].shape)}, got "
                 f"{None if wq is None else (wq.dtype, list(wq.shape))}")
        elif not np.array_equal(wq, p["q"]):
            i = np.argwhere(wq != p["q"])
            fail(f"{name}.weight: {len(i)} code(s) differ, first at {i[0].tolist()}")
        ws = t.get(f"{name}.weight_scale")
        if ws is None or ws.dtype != np.float32 or ws.shape != want_scale_shape:
            fail(f"{name}.weight_scale: want F32 {list(want_scale_shape)}, got "
                 f"{None if ws is None else (ws.dtype, list(ws.shape))}")
        elif not np.array_equal(ws.view(np.uint32), p["scale"].reshape(want_scale_shape).view(np.uint32)):
            fail(f"{name}.weight_scale differs bit for bit from numpy's")
        if f"{name}.bias" in weights:
            b = t.get(f"{name}.bias")
            if b is None or b.dtype != weights[f"{name}.bias"].dtype or not np.array_equal(
                    b.view(np.uint8), weights[f"{name}.bias"].view(np.uint8)):
                fail(f"{name}.bias changed by the export")
        if p["s"] is not None:
            s = t.get(f"{name}.input_scale")
            if s is None or s.dtype != np.float32 or s.shape != (1,):
                fail(f"{name}.input_scale: want F32 [1], got {None if s is None else (s.dtype, list(s.shape))}")
            elif s.view(np.uint32)[0] != np.float32(p["s"]).view(np.uint32):
                fail(f"{name}.input_scale {float(s[0])!r} != f32(clip)/127 {float(p['s'])!r} bit for bit")
            else:
                ok(f"{name}: input_scale {float(s[0]):.9g}, weight I8 {list(wq.shape)}, "
                   f"weight_scale F32 {list(ws.shape)} bit-identical")
        elif f"{name}.input_scale" in t:
            fail(f"{name}: input_scale present on a weight-only layer")
    qc = json.loads((out / "config.json").read_text()).get("quantization_config") or {}
    if qc.get("quant_method") != "compressed-tensors":
        fail(f"config.json quant_method {qc.get('quant_method')!r}")
    w8a8 = {n for n, p in plan.items() if p["s"] is not None}
    groups = [g for g in (qc.get("config_groups") or {}).values() if g.get("format") == "int-quantized"]
    if len(groups) != 1:
        fail(f"config.json: want one int-quantized group, got {len(groups)}")
        return
    g = groups[0]
    if set(g.get("targets", [])) != w8a8:
        fail(f"int-quantized targets {g.get('targets')} != W8A8 layers {sorted(w8a8)}")
    strategies = {"channel" if p["spec"].get("granularity") == "per_channel" else "tensor"
                  for n, p in plan.items() if n in w8a8}
    gw = g.get("weights") or {}
    if not (gw.get("num_bits") == 8 and gw.get("type") == "int" and gw.get("symmetric") is True
            and {gw.get("strategy")} == strategies):
        fail(f"int-quantized weights {gw} (want 8-bit int symmetric, strategy {strategies})")
    ia = g.get("input_activations") or {}
    want = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "tensor", "dynamic": False}
    bad = {k: ia.get(k) for k in want if ia.get(k) != want[k]}
    if bad:
        fail(f"int-quantized input_activations {ia} differ from {want} in {bad}")
    else:
        ok(f"config.json: int-quantized group targets {sorted(g['targets'])}, weights strategy "
           f"{gw.get('strategy')}, input_activations static per-tensor INT8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quantstudio", required=True, metavar="BIN", help="the quantstudio binary")
    ap.add_argument("--model", required=True, type=Path, help="a chain-graph model folder (e.g. digits-mlp)")
    ap.add_argument("--work", type=Path, help="folder for the recipe and the export (default: a temp folder)")
    args = ap.parse_args()
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="check-calibration-")
        args.work = Path(tmp.name)
    args.work.mkdir(parents=True, exist_ok=True)
    ops, weights = load_graph(args.model)
    print(f"quantstudio: {args.quantstudio}\nmodel: {args.model}\nwork: {args.work}")
    check_calibration(args.quantstudio, args.model, ops, weights, args.work)
    recipe_path, plan = check_w8a8(args.quantstudio, args.model, ops, weights, args.work)
    check_export(args.quantstudio, args.model, weights, recipe_path, plan, args.work)
    if tmp is not None:
        tmp.cleanup()
    if failures:
        print(f"\n{len(failures)} CHECK(S) FAILED:")
        for f in failures:
            print(f"  - {f}")
        sys.exit(1)
    print("\nALL CHECKS PASSED")


if __name__ == "__main__":
    main()
