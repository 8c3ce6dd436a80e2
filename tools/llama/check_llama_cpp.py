#!/usr/bin/env python3
"""The llama.cpp judge: runs llama.cpp's own tools on a GGUF file quantstudio wrote.

- `llama-perplexity -m MODEL.gguf -f TEXT -c CTX --chunks N`: llama.cpp loads the file and runs it; the final
  estimate ("Final estimate: PPL = x +/- y") is parsed and printed as JSON, and must be finite and below --max-ppl.
- with --quantize OUT_DIR: `llama-quantize --pure MODEL.gguf OUT_DIR/llama-<TYPE>.gguf <TYPE>` for each --types
  (Q8_0, Q4_0 by default), so llama.cpp's own quantization of the same F32 weights can be compared tensor by tensor
  with quantstudio's export of the same type.

Usage: check_llama_cpp.py BIN_DIR MODEL.gguf TEXT [--ctx 512] [--chunks 8] [--threads 2] [--max-ppl 100]
                          [--no-repack] [--quantize OUT_DIR [--types Q8_0 Q4_0]]
BIN_DIR is what tools/llama/build_llama_cpp.sh prints. Prints one JSON object; exits 1 when a tool fails or the
perplexity is not finite and below --max-ppl.
"""

import argparse
import json
import math
import os
import pathlib
import re
import subprocess
import sys

FINAL = re.compile(r"Final estimate: PPL = ([0-9.eE+-]+|nan|inf) \+/- ([0-9.eE+-]+|nan|inf)")


def run(bin_dir, tool, args):
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(bin_dir) + os.pathsep + env.get("LD_LIBRARY_PATH", "")
    proc = subprocess.run([str(bin_dir / tool), *args], env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin_dir")
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-ppl", type=float, default=100.0)
    ap.add_argument("--no-repack", action="store_true",
                    help="pass --no-repack to llama-perplexity: on a machine with AMX llama.cpp 0.3.36 "
                         "segfaults while repacking Q8_0/Q4_0 weights at load, files it wrote itself included")
    ap.add_argument("--quantize", metavar="OUT_DIR")
    ap.add_argument("--types", nargs="+", default=["Q8_0", "Q4_0"])
    args = ap.parse_args()
    bin_dir = pathlib.Path(args.bin_dir)
    result = {"model": args.model, "text": args.text, "ctx": args.ctx, "chunks": args.chunks}

    code, log = run(bin_dir, "llama-perplexity", [
        "-m", args.model, "-f", args.text, "-c", str(args.ctx), "--chunks", str(args.chunks), "-t", str(args.threads),
        *(["--no-repack"] if args.no_repack else []),
    ])
    found = FINAL.search(log)
    if code != 0 or not found:
        print(log[-4000:], file=sys.stderr)
        print(json.dumps({**result, "error": f"llama-perplexity exited {code} without a final estimate"}))
        sys.exit(1)
    ppl, error = float(found.group(1)), float(found.group(2))
    result.update({"ppl": ppl, "ppl_error": error})
    ok = math.isfinite(ppl) and ppl < args.max_ppl

    if args.quantize:
        out_dir = pathlib.Path(args.quantize)
        out_dir.mkdir(parents=True, exist_ok=True)
        result["quantized"] = {}
        for qtype in args.types:
            out = out_dir / f"llama-{qtype}.gguf"
            code, log = run(bin_dir, "llama-quantize", ["--pure", args.model, str(out), qtype])
            if code != 0:
                print(log[-4000:], file=sys.stderr)
                ok = False
            result["quantized"][qtype] = {"file": str(out), "exit": code,
                                          "bytes": out.stat().st_size if out.exists() else None}

    result["ok"] = ok
    print(json.dumps(result))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
