#!/usr/bin/env python3
"""Independent numpy reference of GPTQ, used by the Rust tests to check quantstudio's GPTQ (INT4 group-wise).

Usage
-----
  gptq_reference.py check EXCHANGE.safetensors
  gptq_reference.py hessian --model FOLDER --text FILE --layer NAME --exchange EXCHANGE.safetensors

Both print one JSON report on stdout and exit 0 when every check passes, 1 when one fails, 2 on a usage error or
a malformed exchange file (the message on stderr). Needs numpy; `hessian` also needs torch, transformers and
tokenizers. The INT4 formulas (scale, zero point, rounding, all in float32) are those of reference_check.py
(`ref_int4`), imported from this folder, so that GPTQ and round-to-nearest are judged with the very same grid.

The exchange file (written by a Rust test)
------------------------------------------
  weight       F32 [rows, cols]       the layer's weight
  hessian      F64 [cols, cols]       H = sum over the calibration tokens of x x^T (no 2/n factor)
  codes        I8  [rows, cols]       quantstudio's INT4 codes, -8..7
  scales       F32 [rows, cols/G]     quantstudio's group scales
  zero_points  I32 [rows, cols/G]     quantstudio's group zero points (0 when symmetric)
  __metadata__ group_size, symmetric ("true"/"false"), act_order ("true"/"false"), damp_percent (a fraction, e.g.
               "0.01"), block_size ("128"), gptq_output_error and rtn_output_error (quantstudio's figures).
`hessian` mode reads `hessian` only.

The GPTQ reference (float64, except the INT4 formulas, which work on float32 values)
-------------------------------------------------------------------------------------
 1. W = weight, H = hessian (copies). Dead columns (H[d, d] == 0): H[d, d] = 1, W[:, d] = 0.
 2. act_order: the group parameters are fixed first ("static groups"): group g of row r (original columns
    g*G..(g+1)*G of W after step 1, cast to float32) gets ref_int4's scale and zero point. Then
    perm = stable argsort of -diag(H) (descending, ties by ascending index); W = W[:, perm], H = H[perm][:, perm].
 3. H += damp_percent * mean(diag(H)) * I.
 4. U = the upper Cholesky factor of H^-1 (H^-1 = U^T U), computed as the original GPTQ code does:
    L = cholesky(H), H^-1 = L^-T L^-1, U = cholesky(H^-1)^T.
 5. Blocks of B = block_size columns, i1 = 0, B, 2B, ...; i2 = min(i1 + B, cols); W1 = W[:, i1:i2], Err1 = 0.
    For column i of the block (col = i1 + i):
      - without act_order, when col % G == 0: the parameters of group col/G are ref_int4's of W1[:, i:i+G], the
        group's current (already updated) values as float32 (G divides B: a group never crosses a block);
      - g = perm[col] // G with act_order, else col // G;
      - q = clip(rint(f32(W1[:, i]) / scale) + zp, -8, 7), dequantized f32(q - zp) * scale; the code is stored at
        the original column (perm[col] with act_order);
      - err = (W1[:, i] - dequantized) / U[col, col]; W1[:, i+1:] -= err U[col, col+1:i2]; Err1[:, i] = err.
    After the block: W[:, i2:] -= Err1 U[i1:i2, i2:].
 6. The output error of a dequantized weight W^ against `weight`, with the original `hessian` (undamped, dead
    columns untouched):  e = sum_r (w_r - w^_r)^T H (w_r - w^_r) / sum_r w_r^T H w_r  (= |WX - W^X|^2 / |WX|^2).
    RTN is ref_int4 of `weight` itself (no GPTQ).

Checks of `check` (relative differences are |a - b| / |b|, b the reference)
--------------------------------------------------------------------------
 a. quantstudio's codes, scales and zero points are consistent: codes and zero points in -8..7 (zero points 0 when
    symmetric), and the output error of its dequantized weight equals its gptq_output_error within 1e-6.
 b. its rtn_output_error equals the numpy RTN output error within 1e-6.
 c. its codes equal the reference GPTQ's, or else its output error is within 1 % of the reference's (a different
    rounding order of the float64 linear algebra flips a few codes that sit on a rounding boundary, and every flip
    changes what GPTQ does with the later columns, so code equality alone is too strict).
 d. GPTQ beats RTN: the reference GPTQ output error is below the RTN one.
Report: rows, cols, group_size, symmetric, act_order, code_agreement (fraction of codes equal to the
reference's), ref_gptq_output_error, studio_gptq_output_error (quantstudio's figure), studio_codes_output_error
(numpy's error of quantstudio's codes), rtn_output_error (numpy's), studio_rtn_output_error, ok, failures.

`hessian`: an independent Hessian from Hugging Face transformers
----------------------------------------------------------------
The model of FOLDER runs in float32 on the CPU (eval mode), one text sample at a time (batch 1), with a forward
hook on the nn.Linear module NAME; H = sum of x x^T over the tokens of every sample, in float64, is compared with
the exchange file's `hessian`: relative Frobenius difference |H_hf - H_file| / |H_hf| <= 1e-4.
The text is read as quantstudio reads text data (src/runtime/data.rs EvalData::from_text, then the calibration
run of src/calib/calibrate.rs):
  - the file is UTF-8, split into lines as Rust's str::lines does ("\n" or "\r\n"); lines that are empty or only
    whitespace (Rust's char::is_whitespace) are skipped, the others are not trimmed;
  - every line is encoded with FOLDER/tokenizer.json, special tokens added, with the padding and truncation that
    file sets (all-MiniLM-L6-v2: truncated to 128 tokens and padded to a fixed 128; longer samples lose their
    tail, and the padding is what the next rule removes);
  - a sequence's trailing padded positions (mask false) are not run, the rows of any other padded position are
    left out of H, and a sequence without a real position adds nothing.
Report: layer, module (the module the name resolved to), samples (sequences that added tokens), tokens, cols,
hessian_rel_diff, ok, failures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_check as rc  # noqa: E402  (the INT4 formulas and the safetensors parser)

F32 = np.float32
REL_FIGURE = 1e-6  # quantstudio's reported output errors against numpy's
REL_GPTQ_ERROR = 0.01  # quantstudio's GPTQ output error against the reference's, when the codes differ
REL_HESSIAN = 1e-4  # Frobenius, quantstudio's Hessian against the transformers one
# Rust's char::is_whitespace (the Unicode White_Space property), which str::trim strips; Python's str.strip would
# also strip U+001C..U+001F
RUST_WHITESPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
                   "\u200a\u2028\u2029\u202f\u205f\u3000")


class UsageError(Exception):
    """A bad argument or a malformed exchange file (exit 2)."""


# ----------------------------------------------------------------------------
# exchange file
# ----------------------------------------------------------------------------
def read_exchange(path: Path, names: dict) -> tuple:
    """-> ({name: array}, metadata). names: tensor name -> expected safetensors dtype."""
    try:
        tensors = rc.read_safetensors(path)
        with open(path, "rb") as f:  # the metadata, which read_safetensors skips
            header_len = int.from_bytes(f.read(8), "little")
            metadata = json.loads(f.read(header_len)).get("__metadata__") or {}
    except (OSError, ValueError, rc.FormatError) as e:
        raise UsageError(f"{path}: {e}") from e
    out = {}
    for name, dtype in names.items():
        if name not in tensors:
            raise UsageError(f"{path}: no tensor {name!r}")
        if tensors[name].dtype != dtype:
            raise UsageError(f"{path}: {name} is {tensors[name].dtype}, expected {dtype}")
        out[name] = tensors[name].raw
    return out, metadata


def meta_value(metadata: dict, key: str, parse):
    if key not in metadata:
        raise UsageError(f"the exchange file's metadata has no {key!r}")
    try:
        return parse(metadata[key])
    except ValueError as e:
        raise UsageError(f"metadata {key}={metadata[key]!r}: {e}") from e


def parse_bool(s: str) -> bool:
    if s not in ("true", "false"):
        raise ValueError("expected true or false")
    return s == "true"


# ----------------------------------------------------------------------------
# INT4 (reference_check.ref_int4's formulas)
# ----------------------------------------------------------------------------
def group_params(x: np.ndarray, symmetric: bool, group_size: int) -> tuple:
    """x [rows, cols] (cast to float32) -> ref_int4's (scale f32 [rows, cols/G], zp int64 [rows, cols/G])."""
    _, scale, zp, _ = rc.ref_int4(np.ascontiguousarray(x, dtype=F32), symmetric, group_size)
    return scale, zp


def quantize_with(x: np.ndarray, scale: np.ndarray, zp: np.ndarray) -> tuple:
    """x f32 with given parameters (broadcast against x) -> (codes int8, dequantized f32): the second half of
    ref_int4, q = clip(rint(f32(x / scale)) + zp, -8, 7), NaN -> zp, x^ = f32(q - zp) * scale."""
    with np.errstate(all="ignore"):
        r = np.rint((x / scale).astype(F32))
        q = np.clip(r.astype(np.float64) + zp, rc.INT4_QMIN, rc.INT4_QMAX)
        q = np.where(np.isnan(x), np.broadcast_to(zp, q.shape), q).astype(np.int64)
        return q.astype(np.int8), dequantize_with(q, scale, zp)


def dequantize_with(q: np.ndarray, scale: np.ndarray, zp: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return ((q.astype(np.int64) - zp).astype(F32) * scale).astype(F32)


def dequantize(codes: np.ndarray, scales: np.ndarray, zps: np.ndarray, group_size: int) -> np.ndarray:
    """codes [rows, cols], scales/zps [rows, cols/G] -> f32 [rows, cols]."""
    return dequantize_with(codes, np.repeat(scales.astype(F32), group_size, axis=1),
                           np.repeat(zps.astype(np.int64), group_size, axis=1))


def output_error(weight: np.ndarray, w_hat: np.ndarray, hessian: np.ndarray) -> float:
    """sum_r (w_r - w^_r)^T H (w_r - w^_r) / sum_r w_r^T H w_r, in float64 (0 when WX is 0 everywhere, as
    quantstudio's)."""
    w = weight.astype(np.float64)
    d = w - w_hat.astype(np.float64)
    signal = np.sum((w @ hessian) * w)
    return float(np.sum((d @ hessian) * d) / signal) if signal > 0 else 0.0


# ----------------------------------------------------------------------------
# GPTQ
# ----------------------------------------------------------------------------
def upper_cholesky_of_inverse(h: np.ndarray) -> np.ndarray:
    """U with H^-1 = U^T U, the original GPTQ way: cholesky(H), cholesky_inverse, cholesky of that, transposed."""
    low = np.linalg.cholesky(h)
    low_inv = np.linalg.solve(low, np.eye(h.shape[0]))
    h_inv = low_inv.T @ low_inv
    return np.linalg.cholesky(h_inv).T


def gptq(weight: np.ndarray, hessian: np.ndarray, group_size: int, symmetric: bool, act_order: bool,
         damp_percent: float, block_size: int) -> tuple:
    """-> (codes int8 [rows, cols], scales f32 [rows, cols/G], zps int64 [rows, cols/G], w_hat f32 [rows, cols]),
    all in the original column order (the algorithm of the module docstring)."""
    rows, cols = weight.shape
    w = weight.astype(np.float64)
    h = hessian.astype(np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    scales = np.zeros((rows, cols // group_size), dtype=F32)
    zps = np.zeros((rows, cols // group_size), dtype=np.int64)
    perm = np.arange(cols)
    if act_order:
        scales, zps = group_params(w, symmetric, group_size)
        perm = np.argsort(-np.diag(h), kind="stable")
        w = w[:, perm]
        h = h[perm][:, perm]
    h[np.diag_indices(cols)] += damp_percent * np.mean(np.diag(h))
    u = upper_cholesky_of_inverse(h)

    codes = np.zeros((rows, cols), dtype=np.int8)
    w_hat = np.zeros((rows, cols), dtype=F32)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        for i in range(i2 - i1):
            col = i1 + i
            if not act_order and col % group_size == 0:
                s, z = group_params(w1[:, i:i + group_size], symmetric, group_size)
                scales[:, col // group_size], zps[:, col // group_size] = s[:, 0], z[:, 0]
            orig = perm[col]
            g = orig // group_size
            q, x_hat = quantize_with(w1[:, i].astype(F32), scales[:, g], zps[:, g])
            codes[:, orig], w_hat[:, orig] = q, x_hat
            err = (w1[:, i] - x_hat.astype(np.float64)) / u[col, col]
            w1[:, i + 1:] -= np.outer(err, u[col, col + 1:i2])
            err1[:, i] = err
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return codes, scales, zps, w_hat


# ----------------------------------------------------------------------------
# mode `check`
# ----------------------------------------------------------------------------
def rel(a: float, ref: float) -> float:
    """|a - ref| / |ref|; 0 when equal, inf when only ref is 0."""
    if a == ref:
        return 0.0
    return abs(a - ref) / abs(ref) if ref else float("inf")


def check(path: Path) -> dict:
    t, meta = read_exchange(path, {"weight": "F32", "hessian": "F64", "codes": "I8", "scales": "F32",
                                   "zero_points": "I32"})
    weight, hessian = t["weight"], t["hessian"]
    G = meta_value(meta, "group_size", int)
    symmetric = meta_value(meta, "symmetric", parse_bool)
    act_order = meta_value(meta, "act_order", parse_bool)
    damp_percent = meta_value(meta, "damp_percent", float)
    block_size = meta_value(meta, "block_size", int)
    studio_gptq = meta_value(meta, "gptq_output_error", float)
    studio_rtn = meta_value(meta, "rtn_output_error", float)
    if weight.ndim != 2:
        raise UsageError(f"weight is {list(weight.shape)}, expected [rows, cols]")
    rows, cols = weight.shape
    if G <= 0 or cols % G or block_size <= 0 or (not act_order and block_size % G):
        raise UsageError(f"group size {G} must divide the {cols} columns (and the block size {block_size} when "
                         "act_order is off)")
    for name, shape in (("hessian", (cols, cols)), ("codes", (rows, cols)), ("scales", (rows, cols // G)),
                        ("zero_points", (rows, cols // G))):
        if t[name].shape != shape:
            raise UsageError(f"{name} is {list(t[name].shape)}, expected {list(shape)}")
    if not (np.isfinite(weight).all() and np.isfinite(hessian).all()):
        raise UsageError("weight and hessian must be finite")

    failures = []
    codes, scales, zps = t["codes"], t["scales"], t["zero_points"].astype(np.int64)
    # a. quantstudio's own figure from its codes, scales and zero points
    for name, a in (("codes", codes), ("zero_points", zps)):
        if ((a < rc.INT4_QMIN) | (a > rc.INT4_QMAX)).any():
            failures.append(f"a: {name} outside {rc.INT4_QMIN}..{rc.INT4_QMAX}")
    if symmetric and zps.any():
        failures.append("a: symmetric, but zero_points are not all 0")
    studio_codes_err = output_error(weight, dequantize(codes, scales, zps, G), hessian)
    if rel(studio_gptq, studio_codes_err) > REL_FIGURE:
        failures.append(f"a: gptq_output_error {studio_gptq!r} but its codes/scales/zero points give "
                        f"{studio_codes_err!r} (relative {rel(studio_gptq, studio_codes_err):.3g} > {REL_FIGURE})")
    # b. round-to-nearest
    _, _, _, rtn_hat = rc.ref_int4(weight.astype(F32), symmetric, G)
    rtn_err = output_error(weight, rtn_hat, hessian)
    if rel(studio_rtn, rtn_err) > REL_FIGURE:
        failures.append(f"b: rtn_output_error {studio_rtn!r}, numpy's {rtn_err!r} "
                        f"(relative {rel(studio_rtn, rtn_err):.3g} > {REL_FIGURE})")
    # c. the codes against the reference GPTQ's
    ref_codes, _, _, ref_hat = gptq(weight, hessian, G, symmetric, act_order, damp_percent, block_size)
    ref_err = output_error(weight, ref_hat, hessian)
    agreement = float(np.mean(codes == ref_codes))
    if agreement < 1.0 and rel(studio_codes_err, ref_err) > REL_GPTQ_ERROR:
        failures.append(f"c: {agreement:.4%} of the codes equal the reference's, and their output error "
                        f"{studio_codes_err!r} is {rel(studio_codes_err, ref_err):.3g} off the reference's "
                        f"{ref_err!r} (> {REL_GPTQ_ERROR})")
    # d. GPTQ beats round-to-nearest
    if not ref_err < rtn_err:
        failures.append(f"d: the reference GPTQ output error {ref_err!r} is not below RTN's {rtn_err!r}")
    return {"rows": rows, "cols": cols, "group_size": G, "symmetric": symmetric, "act_order": act_order,
            "code_agreement": agreement, "ref_gptq_output_error": ref_err, "studio_gptq_output_error": studio_gptq,
            "studio_codes_output_error": studio_codes_err, "rtn_output_error": rtn_err,
            "studio_rtn_output_error": studio_rtn, "ok": not failures, "failures": failures}


# ----------------------------------------------------------------------------
# mode `hessian`
# ----------------------------------------------------------------------------
def text_samples(path: Path) -> list:
    """The lines quantstudio keeps (module docstring): Rust's str::lines, then the non-blank ones, untrimmed."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: {e}") from e
    pieces = text.split("\n")
    lines = [p[:-1] if p.endswith("\r") else p for p in pieces[:-1]] + pieces[-1:]  # "\r" only before "\n"
    return [line for line in lines if line.strip(RUST_WHITESPACE)]


def find_linear(model, name: str):
    """-> (module name, nn.Linear) for a tensor-file layer name (a trailing ".weight" ignored): the module of that
    name, else the one the name gives once leading components are dropped (e.g. a "bert." or "0.auto_model."
    prefix the file has and the loaded model does not), else the only module whose name ends with ".NAME"."""
    import torch
    modules = dict(model.named_modules())
    name = name.removesuffix(".weight")
    parts = name.split(".")
    found = next((".".join(parts[k:]) for k in range(len(parts)) if ".".join(parts[k:]) in modules), None)
    if found is None:
        ends = [m for m in modules if m.endswith("." + name)]
        found = ends[0] if len(ends) == 1 else None
    if found is None:
        raise UsageError(f"no module of the model matches the layer {name!r}")
    if not isinstance(modules[found], torch.nn.Linear):
        raise UsageError(f"module {found!r} is a {type(modules[found]).__name__}, not an nn.Linear")
    return found, modules[found]


def hessian_check(folder: Path, text: Path, layer: str, exchange: Path) -> dict:
    import inspect

    import tokenizers
    import torch
    import transformers

    t, _ = read_exchange(exchange, {"hessian": "F64"})
    samples = text_samples(text)
    tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    encodings = tokenizer.encode_batch(samples, add_special_tokens=True)

    config = transformers.AutoConfig.from_pretrained(folder)
    causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    model = auto.from_pretrained(folder, dtype=torch.float32).to("cpu").eval()
    module_name, module = find_linear(model, layer)
    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters

    cols = module.in_features
    h = np.zeros((cols, cols), dtype=np.float64)
    real = None  # the mask of the sequence being run
    tokens = used = 0

    def hook(_module, inputs, _output):
        x = inputs[0].detach().reshape(-1, cols).numpy().astype(np.float64)[real]
        h[...] += x.T @ x

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for enc in encodings:
                mask = np.array(enc.attention_mask, dtype=bool)
                if not mask.any():
                    continue
                n = int(np.flatnonzero(mask)[-1]) + 1  # trailing padding is not run
                real = mask[:n]
                kwargs = {"input_ids": torch.tensor([enc.ids[:n]]),
                          "attention_mask": torch.tensor([enc.attention_mask[:n]])}
                if takes_types:
                    kwargs["token_type_ids"] = torch.tensor([enc.type_ids[:n]])
                model(**kwargs)
                tokens += int(real.sum())
                used += 1
    finally:
        handle.remove()

    failures = []
    got = t["hessian"]
    if got.shape != h.shape:
        failures.append(f"the exchange file's hessian is {list(got.shape)}, the layer has {cols} inputs")
        diff = None
    else:
        norm = np.linalg.norm(h)
        diff = float(np.linalg.norm(h - got) / norm) if norm else None
        if diff is None:
            failures.append("the layer saw no token with a non-zero input: nothing to compare")
        elif not diff <= REL_HESSIAN:
            failures.append(f"relative Frobenius difference {diff:.3g} > {REL_HESSIAN}")
    return {"layer": layer, "module": module_name, "samples": used, "tokens": tokens, "cols": cols,
            "hessian_rel_diff": diff, "ok": not failures, "failures": failures}


# ----------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("check", help="check quantstudio's GPTQ codes against the reference")
    c.add_argument("exchange", type=Path)
    hs = sub.add_parser("hessian", help="check the exchange file's Hessian against transformers")
    hs.add_argument("--model", type=Path, required=True, help="Hugging Face model folder (with tokenizer.json)")
    hs.add_argument("--text", type=Path, required=True, help="text file, one sample per line")
    hs.add_argument("--layer", required=True, help="the layer's name in the model's safetensors file")
    hs.add_argument("--exchange", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        if args.mode == "check":
            report = check(args.exchange)
        else:
            report = hessian_check(args.model, args.text, args.layer, args.exchange)
    except UsageError as e:
        print(f"gptq_reference.py: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
