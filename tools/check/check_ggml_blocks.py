#!/usr/bin/env python3
"""llama.cpp block formats from gguf-py's numpy implementation, for quantstudio's byte-for-byte check (tests/ggml.rs).

Usage
-----
  check_ggml_blocks.py --make DIR        writes DIR/inputs.safetensors
  check_ggml_blocks.py --dequantize DIR  reads DIR/inputs.safetensors and DIR/ours.safetensors,
                                         writes DIR/decoded.safetensors
  check_ggml_blocks.py --pairs DIR F32.gguf QUANT.gguf [QUANT.gguf ...]
                                         writes DIR/pairs.safetensors: llama-quantize's blocks with their inputs

Each mode prints one JSON line (the only stdout line).

--make: seeded inputs, each F32 [rows, 512] (512 = two Q4_K/Q6_K super-blocks, sixteen Q8_0/Q4_0 blocks):
- x_normal    N(0, 0.02), as trained weights are;
- x_outliers  N(0, 0.02) with about one value in 200 multiplied by 50 (both signs);
- x_zero      N(0, 1) with the first 256 values of every row zero (an all-zero super-block) and values
              32..64 of the second half zero (an all-zero Q8_0/Q4_0 block inside a non-zero super-block);
- x_tiny      N(0, 1e-7) and, on half the rows, N(0, 1e-30) (scales below f16's range: stored as 0 or subnormal);
- x_ties      integers and half-integers up to 127 with 127 or -127 in every 32-block (Q8_0 scale exactly 1, so
              half-integers are rounding ties), and constant rows;
and gguf-py's quantization of each for the two formats it implements: gguf_q8_0_<case>, gguf_q4_0_<case>
(U8 [rows, 544] and [rows, 288]: gguf.quants.quantize). The JSON line: {"cases": [...], "gguf": version}.

--dequantize: for every U8 tensor <format>_<case> of ours.safetensors (our blocks, format one of q8_0, q4_0, q4_k,
q6_k), gguf.quants.dequantize of them as F32 [rows, 512] under the same name. The JSON line: {"mse": {format:
{case: mse against x_<case>}}}.

--pairs: for every tensor of each QUANT.gguf (written by `llama-quantize --pure F32.gguf QUANT.gguf TYPE`) stored
in Q8_0, Q4_0, Q4_K or Q6_K, and in layers 0, 1, 15 and 29 or the token embedding (its first 1024 rows), the F32
input rows from F32.gguf as x_<n> and the blocks as <format>_<n> (U8 [rows, bytes]). The JSON line: {"pairs":
[[n, tensor name, format], ...]}. tests/ggml.rs `blocks_match_llama_quantize` (ignored; run with
QUANTSTUDIO_GGML_PAIRS=DIR) holds our blocks to them byte for byte.

Needs numpy, safetensors and gguf (gguf-py, llama.cpp's Python package).
"""

import argparse
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

import gguf
from gguf import GGMLQuantizationType as T

COLS = 512
ROWS = 16
FORMATS = {"q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_k": T.Q4_K, "q6_k": T.Q6_K}


def inputs(seed):
    rng = np.random.default_rng(seed)
    normal = (rng.standard_normal((ROWS, COLS)) * 0.02).astype(np.float32)
    outliers = (rng.standard_normal((ROWS, COLS)) * 0.02).astype(np.float32)
    mask = rng.random((ROWS, COLS)) < 0.005
    outliers[mask] *= np.float32(50.0)
    zero = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    zero[:, :256] = 0.0
    zero[:, 256 + 32 : 256 + 64] = 0.0
    tiny = (rng.standard_normal((ROWS, COLS)) * 1e-7).astype(np.float32)
    tiny[ROWS // 2 :] = (rng.standard_normal((ROWS - ROWS // 2, COLS)) * 1e-30).astype(np.float32)
    ties = (rng.integers(-254, 255, (ROWS, COLS)) / 2.0).astype(np.float32)
    ties[:, ::32] = np.where(rng.random((ROWS, COLS // 32)) < 0.5, 127.0, -127.0).astype(np.float32)
    ties[-2:] = np.float32(0.75)
    ties[-1] = np.float32(-3.0)
    return {"normal": normal, "outliers": outliers, "zero": zero, "tiny": tiny, "ties": ties}


def make(folder, seed):
    tensors = {}
    cases = inputs(seed)
    for case, x in cases.items():
        tensors[f"x_{case}"] = x
        for name in ("q8_0", "q4_0"):
            tensors[f"gguf_{name}_{case}"] = np.ascontiguousarray(gguf.quants.quantize(x, FORMATS[name]))
    save_file(tensors, os.path.join(folder, "inputs.safetensors"))
    return {"cases": list(cases), "gguf": gguf_version()}


def dequantize(folder):
    x = load_file(os.path.join(folder, "inputs.safetensors"))
    ours = load_file(os.path.join(folder, "ours.safetensors"))
    decoded = {}
    mse = {}
    for name, blocks in sorted(ours.items()):
        parts = name.split("_")
        fmt, case = "_".join(parts[:2]), "_".join(parts[2:])
        values = gguf.quants.dequantize(blocks, FORMATS[fmt]).astype(np.float32, copy=False)
        decoded[name] = np.ascontiguousarray(values.reshape(blocks.shape[0], COLS))
        reference = x[f"x_{case}"].astype(np.float64)
        mse.setdefault(fmt, {})[case] = float(np.mean((reference - decoded[name]) ** 2))
    save_file(decoded, os.path.join(folder, "decoded.safetensors"))
    return {"mse": mse}


def pairs(folder, f32_path, quant_paths):
    names = {v: k for k, v in FORMATS.items()}
    inputs = {t.name: t for t in gguf.GGUFReader(f32_path).tensors}
    tensors = {}
    listed = []
    wanted = ("blk.0.", "blk.1.", "blk.15.", "blk.29.", "token_embd.")
    for path in quant_paths:
        for t in gguf.GGUFReader(path).tensors:
            fmt = names.get(t.tensor_type)
            if fmt is None or not t.name.startswith(wanted):
                continue
            x = np.asarray(inputs[t.name].data, dtype=np.float32)
            q = np.asarray(t.data, dtype=np.uint8)
            rows = min(x.shape[0], 1024)
            n = len(listed)
            tensors[f"x_{n}"] = np.ascontiguousarray(x[:rows])
            tensors[f"{fmt}_{n}"] = np.ascontiguousarray(q[:rows])
            listed.append([n, t.name, fmt])
    save_file(tensors, os.path.join(folder, "pairs.safetensors"))
    return {"pairs": listed}


def gguf_version():
    try:
        from importlib.metadata import version

        return version("gguf")
    except Exception:  # noqa: BLE001 - the version is informative only
        return "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--make", metavar="DIR")
    mode.add_argument("--dequantize", metavar="DIR")
    mode.add_argument("--pairs", nargs="+", metavar="PATH")
    parser.add_argument("--seed", type=int, default=18)
    args = parser.parse_args()
    if args.pairs:
        if len(args.pairs) < 3:
            parser.error("--pairs DIR F32.gguf QUANT.gguf [QUANT.gguf ...]")
        summary = pairs(args.pairs[0], args.pairs[1], args.pairs[2:])
    elif args.make:
        summary = make(args.make, args.seed)
    else:
        summary = dequantize(args.dequantize)
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
