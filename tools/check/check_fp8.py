#!/usr/bin/env python3
"""FP8 E4M3 codes from independent implementations, for quantstudio's bit-for-bit check (tests/fp8.rs).

Usage
-----
  check_fp8.py --out DIR [--seed N] [--random N]

Writes DIR/fp8.safetensors and prints one JSON line (the only stdout line) describing what it wrote.

Tensors
-------
- x          F32 [n]   the inputs: seeded random f32 bit patterns (every magnitude, NaN and inf included);
                       seeded log-uniform magnitudes over [2^-16, 2^12), both signs; every E4M3 value and every
                       midpoint between neighbouring values (464, the midpoint past 448, included), each with the
                       f32 on either side, both signs; for every sign, f32 exponent and top 3 mantissa bits the
                       low 20 bits 0, 1, 0x7FFFF, 0x80000, 0x80001, 0xFFFFF (the rounding ties of every binade);
                       zeros, -0, f32 subnormals, +-inf, NaN of both signs and with payloads, f32 max, values
                       around +-448 and +-464.
- ml_dtypes  U8 [n]    np.clip(x, -448, 448).astype(ml_dtypes.float8_e4m3fn), as bits.
- torch      U8 [n]    torch.clamp(x, -448, 448).to(torch.float8_e4m3fn), as bits (only when torch imports).
- weight     F32 [rows, cols]  seeded weights for the per-channel check (row 0 all zero; one -0.0, one NaN-free
                       outlier row, rows of very different magnitudes).
- ct_scale   F32 [rows, 1] and ct_codes U8 [rows, cols]: compressed-tensors' FP8 per-channel weight quantization
                       (calculate_qparams + quantize with QuantizationArgs(num_bits=8, type="float",
                       strategy="channel", symmetric=True)), only when compressed_tensors and torch import.

The JSON line: {"values": n, "torch": bool, "compressed_tensors": bool,
                "torch_vs_ml_dtypes_mismatches": k | null, "versions": {...}}.

Needs numpy, safetensors and ml_dtypes; torch and compressed-tensors are optional.
"""

import argparse
import json
import os
import sys

import numpy as np

try:
    import ml_dtypes
except ImportError:
    sys.exit("check_fp8.py needs ml_dtypes (pip install ml_dtypes)")
from safetensors.numpy import save_file

E4M3_MAX = np.float32(448.0)


def e4m3_grid():
    """The 127 non-negative finite E4M3 values, in code order, from ml_dtypes' own decoding."""
    codes = np.arange(0x7F, dtype=np.uint8)
    return codes.view(ml_dtypes.float8_e4m3fn).astype(np.float32)


def with_neighbours(points):
    points = np.asarray(points, dtype=np.float32)
    up = np.nextafter(points, np.float32(np.inf))
    down = np.nextafter(points, np.float32(-np.inf))
    both = np.concatenate([down, points, up])
    return np.concatenate([both, -both])


def inputs(seed, n_random):
    rng = np.random.default_rng(seed)
    parts = []
    parts.append(rng.integers(0, 2**32, size=n_random, dtype=np.uint64).astype(np.uint32).view(np.float32))
    magnitude = np.exp2(rng.uniform(-16.0, 12.0, size=n_random)).astype(np.float32)
    sign = np.where(rng.integers(0, 2, size=n_random) == 1, np.float32(-1), np.float32(1))
    parts.append(magnitude * sign)
    grid = e4m3_grid()
    midpoints = (grid[:-1] + grid[1:]) / np.float32(2)  # exact in f32 (at most 5 significant bits)
    parts.append(with_neighbours(np.concatenate([grid, midpoints, [464.0, 480.0, 512.0]])))
    high = np.arange(4096, dtype=np.uint32) << np.uint32(20)
    low = np.array([0, 1, 0x7FFFF, 0x80000, 0x80001, 0xFFFFF], dtype=np.uint32)
    parts.append((high[:, None] | low[None, :]).reshape(-1).view(np.float32))
    tiny = np.array([1e-45, 1e-40, 1.1754942e-38, 1.1754944e-38, 2**-10, 2**-7, 2**-6], dtype=np.float32)
    special_bits = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0x7F800000,
                             0xFF800000, 0x00000000, 0x80000000, 0x7F7FFFFF, 0xFF7FFFFF], dtype=np.uint32)
    parts.append(with_neighbours(tiny))
    parts.append(special_bits.view(np.float32))
    return np.concatenate(parts).astype(np.float32)


def weights(seed):
    rng = np.random.default_rng(seed + 1)
    rows, cols = 24, 61
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w *= np.exp2(rng.uniform(-20.0, 20.0, size=(rows, 1))).astype(np.float32)
    w[0] = 0.0
    w[1, 3] = -0.0
    w[2, 5] = np.float32(1e4)  # an outlier: most of its row lands on subnormal codes
    w[3] = np.float32(3e38) * np.sign(w[3])  # near f32 max: the scale must keep 448 * scale finite
    return w


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write fp8.safetensors into")
    parser.add_argument("--seed", type=int, default=20240806)
    parser.add_argument("--random", type=int, default=500_000, help="random values of each kind")
    args = parser.parse_args()

    x = inputs(args.seed, args.random)
    with np.errstate(invalid="ignore"):
        ml = np.clip(x, -E4M3_MAX, E4M3_MAX).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    tensors = {"x": x, "ml_dtypes": ml}
    versions = {"numpy": np.__version__, "ml_dtypes": ml_dtypes.__version__}
    summary = {"values": int(x.size), "torch": False, "compressed_tensors": False,
               "torch_vs_ml_dtypes_mismatches": None}

    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        versions["torch"] = torch.__version__
        t = torch.clamp(torch.from_numpy(x.copy()), -448.0, 448.0).to(torch.float8_e4m3fn)
        tc = t.view(torch.uint8).numpy().copy()
        tensors["torch"] = tc
        summary["torch"] = True
        summary["torch_vs_ml_dtypes_mismatches"] = int(np.count_nonzero(tc != ml))

        w = weights(args.seed)
        tensors["weight"] = w
        try:
            import compressed_tensors
            from compressed_tensors.quantization import QuantizationArgs
            from compressed_tensors.quantization.lifecycle.forward import quantize
            from compressed_tensors.quantization.utils import calculate_qparams
        except ImportError:
            compressed_tensors = None
        if compressed_tensors is not None:
            versions["compressed_tensors"] = compressed_tensors.__version__
            qargs = QuantizationArgs(num_bits=8, type="float", strategy="channel", symmetric=True)
            wt = torch.from_numpy(w.copy())
            scale, zero_point = calculate_qparams(wt.amin(dim=1, keepdim=True), wt.amax(dim=1, keepdim=True), qargs)
            codes = quantize(wt, scale, zero_point, qargs, dtype=torch.float8_e4m3fn)
            tensors["ct_scale"] = scale.to(torch.float32).numpy().copy()
            tensors["ct_codes"] = codes.view(torch.uint8).numpy().copy()
            summary["compressed_tensors"] = True

    summary["versions"] = versions
    os.makedirs(args.out, exist_ok=True)
    save_file(tensors, os.path.join(args.out, "fp8.safetensors"))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
