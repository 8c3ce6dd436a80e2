#!/usr/bin/env python3
"""The studio's FP32 perplexity (`eval --perplexity`) against transformers + torch computing the same chunked
perplexity independently, as llama-perplexity defines it:

- the whole text (one trailing newline dropped) is tokenised with the model's tokenizer, special tokens added;
- it is cut into min(--chunks, tokens // ctx) chunks of ctx tokens; each chunk's first token becomes BOS when the
  tokenizer adds BOS; each chunk runs alone;
- the logits at positions ctx//2 .. ctx-2 predict the next token; nll = -log_softmax(logits)[next] in float64;
- PPL = exp(mean nll), +/- = PPL * sqrt((mean(nll^2) - mean^2) / (count - 1)).

Passes when the perplexity is within PPL_REL_TOL of the studio's, the ± within PPL_ERR_REL_TOL, and the token and
chunk counts are equal. Needs torch and transformers:

    python3 tools/check/check_perplexity.py MODEL_FOLDER --text FILE --quantstudio target/debug/quantstudio \
        [--ctx 128] [--chunks 2]
"""
import argparse
import json
import math
import subprocess
import sys

import torch
import transformers

# The studio's forward runs in float32 like torch's here; the perplexity of the two agrees to float32 noise.
PPL_REL_TOL = 1e-3
PPL_ERR_REL_TOL = 1e-2


def reference(model_folder, text_path, ctx, max_chunks):
    with open(text_path, encoding="utf-8") as f:
        text = f.read()
    if text.endswith("\n"):
        text = text[:-1]
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_folder)
    tokens = tokenizer(text, add_special_tokens=True)["input_ids"]
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    bos = with_special[0] if len(with_special) == len(without) + 1 and with_special[1:] == without else None
    chunks = len(tokens) // ctx
    if max_chunks is not None:
        chunks = min(chunks, max_chunks)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    model.eval()
    first = ctx // 2
    nll_sum, nll2_sum, count = 0.0, 0.0, 0
    for c in range(chunks):
        chunk = tokens[c * ctx:(c + 1) * ctx]
        inputs = list(chunk)
        if bos is not None:
            inputs[0] = bos
        with torch.no_grad():
            logits = model(torch.tensor([inputs])).logits[0].to(torch.float64)
        log_probs = torch.log_softmax(logits[first:ctx - 1], dim=-1)
        targets = torch.tensor(chunk[first + 1:ctx])
        nll = -log_probs[torch.arange(len(targets)), targets]
        nll_sum += float(nll.sum())
        nll2_sum += float((nll * nll).sum())
        count += len(targets)
    mean = nll_sum / count
    ppl = math.exp(mean)
    variance = nll2_sum / count - mean * mean
    error = ppl * math.sqrt(variance / (count - 1)) if variance > 0 else 0.0
    return {"text_tokens": len(tokens), "chunks": chunks, "scored_tokens": count, "bos_token": bos,
            "ppl": ppl, "error": error}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--text", required=True)
    parser.add_argument("--quantstudio", required=True)
    parser.add_argument("--ctx", type=int, default=128)
    parser.add_argument("--chunks", type=int, default=2)
    args = parser.parse_args()

    command = [args.quantstudio, "eval", args.model, "--precision", "fp32", "--perplexity", args.text,
               "--ctx", str(args.ctx), "--chunks", str(args.chunks), "--json"]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        print(run.stderr)
        sys.exit("quantstudio eval --perplexity failed")
    ours = json.loads(run.stdout)
    ref = reference(args.model, args.text, args.ctx, args.chunks)
    print(f"studio:       PPL = {ours['fp32_perplexity']['value']:.4f} +/- {ours['fp32_perplexity']['error']:.5f}"
          f" ({ours['chunks']} chunks, {ours['scored_tokens']} scored of {ours['text_tokens']} tokens,"
          f" BOS {ours['bos_token']})")
    print(f"transformers: PPL = {ref['ppl']:.4f} +/- {ref['error']:.5f}"
          f" ({ref['chunks']} chunks, {ref['scored_tokens']} scored of {ref['text_tokens']} tokens,"
          f" BOS {ref['bos_token']})")
    failures = []
    for key in ["text_tokens", "chunks", "scored_tokens", "bos_token"]:
        if ours[key] != ref[key]:
            failures.append(f"{key}: studio {ours[key]}, transformers {ref[key]}")
    ppl_rel = abs(ours["fp32_perplexity"]["value"] - ref["ppl"]) / ref["ppl"]
    if not ppl_rel <= PPL_REL_TOL:
        failures.append(f"perplexity differs by {ppl_rel:.2e} (relative), more than {PPL_REL_TOL}")
    err_rel = abs(ours["fp32_perplexity"]["error"] - ref["error"]) / max(ref["error"], 1e-12)
    if not err_rel <= PPL_ERR_REL_TOL:
        failures.append(f"the +/- differs by {err_rel:.2e} (relative), more than {PPL_ERR_REL_TOL}")
    if ours["plan_perplexity"] != ours["fp32_perplexity"] or ours["kl_mean"]["value"] != 0.0:
        failures.append("an FP32 plan does not reproduce FP32")
    if failures:
        print("\n".join("FAIL: " + f for f in failures))
        sys.exit(1)
    print(f"perplexity agrees within {ppl_rel:.2e} (tolerance {PPL_REL_TOL})")
    print("ALL CHECKS PASSED")


if __name__ == "__main__":
    main()
