#!/usr/bin/env python3
"""llama.cpp as the judge of quantstudio's GGUF exports of a real Llama-family model.

For each plan (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K and a hybrid: every type the studio writes) this script
1. writes the recipe and exports it with `quantstudio quantize MODEL --recipe R --target gguf -o OUT.gguf`;
2. runs `llama-perplexity` on that file and `quantstudio eval MODEL --recipe R --perplexity TEXT --json` on the same
   text, context size and chunks, and requires the two perplexities to agree within --max-diff-percent (1%);
3. runs `llama-quantize --pure` on the F32 export for F16, BF16, Q8_0, Q4_0, Q4_K and Q6_K and requires every tensor
   of every export that llama-quantize wrote in the same type to be byte-identical to it, and the F16, BF16, Q8_0
   and Q4_0 exports to have every tensor in llama-quantize's type.

Nothing is converted by llama.cpp's Python tools: the studio's GGUF files are the input.

The text: llama.cpp's BPE pre-tokenizer splits runs of whitespace before a non-space character differently from
Hugging Face's tokenizers ("\\n\\n  0"), which shifts every later chunk. The default text is therefore the GNU GPL
version 3 as Debian ships it (/usr/share/common-licenses/GPL-3) with each paragraph on one line, whitespace runs
collapsed, paragraphs separated by one newline; both tokenizers give the same 7040 SmolLM2 tokens for it.

Usage: judge.py STUDIO_BINARY LLAMA_BIN_DIR MODEL_FOLDER WORK_DIR [--text FILE] [--ctx 512] [--chunks 0]
                [--threads 2] [--max-diff-percent 1.0] [--markdown]
LLAMA_BIN_DIR is what tools/llama/build_llama_cpp.sh prints; WORK_DIR receives the exports, recipes and
judge.json. The numpy and gguf Python packages must be importable. Exits 1 when any check fails.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from check_llama_cpp import FINAL, run  # noqa: E402

import gguf  # noqa: E402

LICENSE = pathlib.Path("/usr/share/common-licenses/GPL-3")

# name -> (recipe default, rules); defaults apply to every layer (norms stay FP32, as llama.cpp keeps them).
PLANS = {
    "F32": ("fp32", []),
    "F16": ("fp16", []),
    "BF16": ("bf16", []),
    "Q8_0": ("q8_0", []),
    "Q4_0": ("q4_0", []),
    "Q4_K": ("q4_k", []),
    "Q6_K": ("q6_k", []),
    "hybrid": ("q4_0", [("*down_proj*", "q4_k"), ("*embed_tokens*", "q8_0"), ("*v_proj*", "q8_0")]),
}
LLAMA_QUANTIZE_TYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"]
MUST_MATCH_EVERY_TENSOR = ["F16", "BF16", "Q8_0", "Q4_0"]


def reflow(source, destination):
    paragraphs = [" ".join(p.split()) for p in source.read_text().split("\n\n")]
    destination.write_text("\n".join(p for p in paragraphs if p) + "\n")


def recipe(default, rules):
    return {
        "format": "quantstudio-recipe",
        "version": 1,
        "default": {"precision": default},
        "default_scope": "all",
        "rules": [{"pattern": pattern, "precision": precision} for pattern, precision in rules],
    }


def studio(binary, args):
    proc = subprocess.run([str(binary), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"quantstudio {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def tensors(path):
    reader = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, bytes(t.data.tobytes())) for t in reader.tensors}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("studio")
    ap.add_argument("llama_bin")
    ap.add_argument("model")
    ap.add_argument("work")
    ap.add_argument("--text", help=f"default: {LICENSE}, reflowed")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=0, help="0: every whole chunk")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-diff-percent", type=float, default=1.0)
    ap.add_argument("--markdown", action="store_true", help="print the results as a markdown table too")
    args = ap.parse_args()
    binary = pathlib.Path(args.studio).resolve()
    bin_dir = pathlib.Path(args.llama_bin)
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.text:
        text = pathlib.Path(args.text)
    else:
        if not LICENSE.exists():
            sys.exit(f"{LICENSE}: not found; pass --text")
        text = work / "gpl3-paragraphs.txt"
        reflow(LICENSE, text)
    chunk_args = ["--chunks", str(args.chunks)] if args.chunks > 0 else []
    failures = []
    results = {"model": args.model, "text": str(text), "ctx": args.ctx, "plans": {}}

    for name, (default, rules) in PLANS.items():
        start = time.time()
        recipe_path = work / f"{name}.recipe.json"
        recipe_path.write_text(json.dumps(recipe(default, rules), indent=2))
        out = work / f"studio-{name}.gguf"
        studio(binary, ["quantize", args.model, "--recipe", str(recipe_path), "--target", "gguf", "-o", str(out),
                        "--overwrite"])
        row = {"file": str(out), "size_bytes": out.stat().st_size}
        code, log = run(bin_dir, "llama-perplexity", [
            "-m", str(out), "-f", str(text), "-c", str(args.ctx), "-t", str(args.threads), "--no-repack",
            *chunk_args])
        found = FINAL.search(log)
        if code != 0 or not found:
            print(log[-4000:], file=sys.stderr)
            sys.exit(f"llama-perplexity on {out} exited {code} without a final estimate")
        row["llama_ppl"], row["llama_ppl_error"] = float(found.group(1)), float(found.group(2))
        report = json.loads(studio(binary, [
            "eval", args.model, "--recipe", str(recipe_path), "--perplexity", str(text),
            "--ctx", str(args.ctx), *chunk_args, "--json"]))
        row["studio_ppl"] = report["plan_perplexity"]["value"]
        row["studio_ppl_error"] = report["plan_perplexity"]["error"]
        row["studio_chunks"] = report["chunks"]
        row["diff_percent"] = 100.0 * (row["studio_ppl"] - row["llama_ppl"]) / row["llama_ppl"]
        if not abs(row["diff_percent"]) <= args.max_diff_percent:
            failures.append(f"{name}: studio PPL {row['studio_ppl']:.4f} vs llama-perplexity "
                            f"{row['llama_ppl']:.4f} ({row['diff_percent']:+.3f}%)")
        row["seconds"] = round(time.time() - start, 1)
        results["plans"][name] = row
        print(f"{name}: {json.dumps(row)}", file=sys.stderr)

    # llama-quantize's own quantization of the studio's F32 export, tensor by tensor.
    theirs = {}
    for qtype in LLAMA_QUANTIZE_TYPES:
        out = work / f"llama-quantize-{qtype}.gguf"
        code, log = run(bin_dir, "llama-quantize", ["--pure", str(work / "studio-F32.gguf"), str(out), qtype])
        if code != 0:
            print(log[-4000:], file=sys.stderr)
            sys.exit(f"llama-quantize --pure {qtype} exited {code}")
        theirs[qtype] = tensors(out)
    for name in PLANS:
        if name == "F32":
            continue
        ours = tensors(work / f"studio-{name}.gguf")
        compared = identical = 0
        for tensor, (kind, data) in ours.items():
            if kind not in theirs:
                continue
            their_kind, their_data = theirs[kind][tensor]
            if their_kind != kind:
                continue
            compared += 1
            if data == their_data:
                identical += 1
            else:
                failures.append(f"{name}: tensor {tensor} ({kind}) differs from llama-quantize's")
        if name in MUST_MATCH_EVERY_TENSOR:
            differing = [t for t, (kind, _) in ours.items() if kind != theirs[name][t][0]]
            for tensor in differing:
                failures.append(f"{name}: tensor {tensor} is {ours[tensor][0]}, llama-quantize wrote "
                                f"{theirs[name][tensor][0]}")
        if compared == 0:
            failures.append(f"{name}: no tensor in a type llama-quantize also wrote")
        results["plans"][name].update({"tensors": len(ours), "quantized_compared": compared,
                                       "quantized_identical": identical})

    results["failures"] = failures
    (work / "judge.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results))
    if args.markdown:
        print("\n| plan | GGUF size (MB) | llama-perplexity | quantstudio eval | difference | converted tensors "
              "identical to llama-quantize's |\n|---|---:|---:|---:|---:|---:|")
        for name, row in results["plans"].items():
            size = f"{row['size_bytes'] / 1e6:.2f}"
            if "llama_ppl" in row:
                ppl = (f"{row['llama_ppl']:.4f} ± {row['llama_ppl_error']:.4f} | {row['studio_ppl']:.4f} ± "
                       f"{row['studio_ppl_error']:.4f} | {row['diff_percent']:+.3f}%")
            else:
                ppl = "– | – | –"
            same = (f"{row['quantized_identical']}/{row['quantized_compared']}"
                    if "quantized_compared" in row else "–")
            print(f"| {name} | {size} | {ppl} | {same} |")
    if failures:
        print("\n".join(["FAILED:", *failures]), file=sys.stderr)
        sys.exit(1)
    print("ALL CHECKS PASSED", file=sys.stderr)


if __name__ == "__main__":
    main()
