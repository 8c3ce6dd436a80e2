#!/usr/bin/env python3
"""The quantstudio analysis pass (per-channel symmetric INT8) in vectorized numpy, as a throughput peer.

Usage: python tools/bench/numpy_pass.py MODEL.safetensors [--repeat N] [--json] [--no-histograms]

Memory-maps the file, parses the safetensors header by hand, and for every F32/F16/BF16/F64 tensor (rows =
axis 0, row = everything after it; 0-D/1-D tensors are one row, as in quantstudio) computes:
  1. finite-only min, max, mean, std (population), absmax, NaN and Inf counts;
  2. per-row scale = absmax_row / 127 (f32, 1 when 0), q = clip(rint(x / scale), -127, 127), x_hat = q * scale;
  3. e = x - x_hat; sum e^2 and sum x^2 in float64, MSE, max |e|, SQNR dB;
  4. 256-bin histograms of x over [min, max] and of e over [-max_scale/2, max_scale/2] (clamped bin indices
     + np.bincount, the bin formula quantstudio uses); skipped with --no-histograms (the table's figures only,
     as quantstudio's analysis pass computes them).
std is sqrt(sum x^2 / n - mean^2) from the float64 sums (one pass fewer than a two-pass std).
Work buffers are allocated once and reused (out=), so the timed pass does not page-fault fresh memory.
Reports input weight bytes / best pass time (GB/s, 1e9 bytes) over --repeat runs after one warm-up.
"""
import argparse
import json
import math
import mmap
import time

import numpy as np

DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F64": np.dtype("<f8")}
BINS = 256


def open_model(path):
    """(mmap, [(name, dtype, shape, byte offset, byte length)]) for the float tensors of a .safetensors file."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    n = int.from_bytes(mm[:8], "little")
    header = json.loads(mm[8 : 8 + n])
    tensors = []
    for name, meta in header.items():
        if name != "__metadata__" and meta["dtype"] in DTYPES:
            start, end = meta["data_offsets"]
            tensors.append((name, meta["dtype"], meta["shape"], 8 + n + start, end - start))
    tensors.sort(key=lambda t: t[3])  # file order
    return mm, tensors


def bin_counts(v, lo, hi, t, ibuf):
    """256-bin histogram over [lo, hi]: clamp((v - lo) * (256 / (hi - lo)), 0, 255) truncated, then bincount.
    t is a float32 scratch array shaped like v (may be v itself, which is then overwritten)."""
    np.subtract(v, np.float32(lo), out=t)
    np.multiply(t, np.float32(BINS / (hi - lo)), out=t)
    np.clip(t, 0, BINS - 1, out=t)
    idx = ibuf[: v.size]
    np.copyto(idx, t.reshape(-1), casting="unsafe")  # float -> intp truncates (values are >= 0)
    return np.bincount(idx, minlength=BINS)


def analyze(x, fbuf, ibuf, histograms=True):
    """The full pass over one (rows, cols) float32 array; fbuf/ibuf are float32/intp work buffers."""
    row_min, row_max = x.min(axis=1), x.max(axis=1)
    lo, hi = row_min.min(), row_max.max()
    nan = inf = 0
    finite, xf = None, x
    if not (np.isfinite(lo) and np.isfinite(hi)):  # rare path (min/max propagate NaN): mask NaN/Inf out
        finite = np.isfinite(x)
        nan = int(np.isnan(x).sum())
        inf = x.size - int(finite.sum()) - nan
        row_min = np.where(finite, x, np.inf).min(axis=1)
        row_max = np.where(finite, x, -np.inf).max(axis=1)
        x = np.where(finite, x, np.float32(0))
        xf = x[finite]
        lo, hi = (xf.min(), xf.max()) if xf.size else (np.float32(0), np.float32(0))
    count = xf.size
    if count == 0:
        return {"count": x.size, "nan": nan, "inf": inf}
    # 1. statistics (float64 sums)
    sum_x = float(xf.sum(dtype=np.float64))
    sum_x2 = float(np.einsum("i,i->", xf.reshape(-1), xf.reshape(-1), dtype=np.float64))
    mean = sum_x / count
    std = math.sqrt(max(sum_x2 / count - mean * mean, 0.0))
    # 2. per-row symmetric INT8 round trip, in place in fbuf
    absmax_row = np.maximum(-np.minimum(row_min, 0), np.maximum(row_max, 0)).astype(np.float32)
    scale = absmax_row / np.float32(127)
    scale[~((scale > 0) & np.isfinite(scale))] = 1
    s = scale[:, None]
    e = fbuf[: x.size].reshape(x.shape)
    np.divide(x, s, out=e)
    np.rint(e, out=e)
    np.clip(e, -127, 127, out=e)
    np.multiply(e, s, out=e)  # x_hat
    np.subtract(x, e, out=e)  # 3. e = x - x_hat
    ef = e if finite is None else e[finite]
    sum_e2 = float(np.einsum("i,i->", ef.reshape(-1), ef.reshape(-1), dtype=np.float64))
    max_abs_e = float(max(ef.max(), -ef.min()))
    figures = {
        "count": x.size, "nan": nan, "inf": inf, "min": float(lo), "max": float(hi), "mean": mean, "std": std,
        "absmax": max(-float(lo), float(hi)), "mse": sum_e2 / count, "max_abs_error": max_abs_e,
        "sqnr_db": 10 * math.log10(sum_x2 / sum_e2) if sum_e2 > 0 else math.inf,
    }
    if not histograms:
        return figures
    # 4. histograms: the error one in place over e (no longer needed), then the values one in fbuf
    half = max(float(scale.max()) / 2, 1e-30)
    e_hist = bin_counts(ef, -half, half, ef, ibuf)
    lo_, hi_ = float(lo), float(hi)
    if not hi_ > lo_:  # constant tensor: [v - h, v + h] as quantstudio does
        h = max(0.5, abs(lo_) / 256)
        lo_, hi_ = lo_ - h, hi_ + h
    x_hist = bin_counts(xf, lo_, hi_, fbuf[: xf.size].reshape(xf.shape), ibuf)
    return {**figures, "value_hist": x_hist, "error_hist": e_hist}


def run_pass(mm, tensors, fbuf, ibuf, ubuf, histograms=True):
    """One full pass, tensor by tensor, over the mapped file."""
    results = {}
    for name, dtype, shape, offset, nbytes in tensors:
        raw = np.frombuffer(mm, dtype=DTYPES[dtype], count=nbytes // DTYPES[dtype].itemsize, offset=offset)
        if dtype == "F32":
            x = raw
        elif dtype == "BF16":  # bf16 bits -> the high half of float32 bits
            u = ubuf[: raw.size]
            np.copyto(u, raw)
            np.left_shift(u, 16, out=u)
            x = u.view(np.float32)
        else:
            x = raw.astype(np.float32)
        rows = shape[0] if len(shape) >= 2 else 1
        results[name] = analyze(x.reshape(rows, -1), fbuf, ibuf, histograms)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-histograms", action="store_true", help="the table's figures only (steps 1-3)")
    args = ap.parse_args()

    mm, tensors = open_model(args.model)
    input_bytes = sum(t[4] for t in tensors)
    largest = max((t[4] // DTYPES[t[1]].itemsize for t in tensors), default=0)
    fbuf, ibuf, ubuf = np.empty(largest, np.float32), np.empty(largest, np.intp), np.empty(largest, np.uint32)
    for b in (fbuf, ibuf, ubuf):
        b.fill(0)  # touch the pages now, not in the timed pass
    results = run_pass(mm, tensors, fbuf, ibuf, ubuf, not args.no_histograms)  # warm-up (page cache and mappings)
    best = math.inf
    for _ in range(max(args.repeat, 1)):
        start = time.perf_counter()
        results = run_pass(mm, tensors, fbuf, ibuf, ubuf, not args.no_histograms)
        best = min(best, time.perf_counter() - start)
    gbps = input_bytes / best / 1e9
    if args.json:
        out = {"input_bytes": input_bytes, "tensors": len(tensors), "pass_secs": best, "pass_gb_per_s": gbps,
               "repeat": args.repeat, "numpy": np.__version__, "histograms": not args.no_histograms,
               "worst_sqnr_db": min((r.get("sqnr_db", math.inf) for r in results.values()), default=None)}
        print(json.dumps(out, indent=2))
    else:
        print(f"numpy {np.__version__}, {len(tensors)} tensors, best of {args.repeat}")
        print(f"analysis pass: {input_bytes / 1e9:.3f} GB in {best:.4f} s = {gbps:.3f} GB/s")


if __name__ == "__main__":
    main()
