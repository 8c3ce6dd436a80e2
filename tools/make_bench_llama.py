#!/usr/bin/env python3
"""Write a small random-initialised Llama-style Hugging Face folder (F32) for runtime benchmarks.

Usage: python tools/make_bench_llama.py OUT_DIR [--seed 0]

OUT_DIR/config.json (model_type llama, LlamaForCausalLM) and OUT_DIR/model.safetensors with the
LlamaForCausalLM PyTorch names and layouts (Linear weights are [out, in]):
  hidden 768, 12 heads (head_dim 64), 4 key-value heads, intermediate 2048, 4 layers, vocab 8192,
  rope_theta 10000, rms_norm_eps 1e-5, tie_word_embeddings false  (about 38 M parameters, 152 MB).
Matrices and embeddings are N(0, 0.02); RMSNorm weights are 1 + N(0, 0.02) (a zero-mean norm weight would
wipe out the signal). Deterministic for a given --seed (numpy PCG64). Needs numpy and safetensors.
"""
import argparse
import json
import os

import numpy as np
from safetensors.numpy import save_file

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "num_hidden_layers": 4,
    "vocab_size": 8192,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "use_cache": True,
    "torch_dtype": "float32",
    "transformers_version": "4.44.0",
}


def tensors(cfg, seed):
    rng = np.random.default_rng(seed)
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg["head_dim"]
    nq, nkv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd

    def mat(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)).astype(np.float32)

    def norm(n):
        return (np.float32(1.0) + rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)).astype(np.float32)

    out = {"model.embed_tokens.weight": mat(v, d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = norm(d)
        out[p + "self_attn.q_proj.weight"] = mat(nq, d)
        out[p + "self_attn.k_proj.weight"] = mat(nkv, d)
        out[p + "self_attn.v_proj.weight"] = mat(nkv, d)
        out[p + "self_attn.o_proj.weight"] = mat(d, nq)
        out[p + "post_attention_layernorm.weight"] = norm(d)
        out[p + "mlp.gate_proj.weight"] = mat(f, d)
        out[p + "mlp.up_proj.weight"] = mat(f, d)
        out[p + "mlp.down_proj.weight"] = mat(d, f)
    out["model.norm.weight"] = norm(d)
    out["lm_head.weight"] = mat(v, d)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    t = tensors(CONFIG, args.seed)
    save_file(t, os.path.join(args.out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(args.out_dir, "config.json"), "w") as fh:
        json.dump(CONFIG, fh, indent=2)
        fh.write("\n")
    n = sum(a.size for a in t.values())
    print(f"wrote {args.out_dir}: {len(t)} tensors, {n} parameters ({4 * n / 1e6:.1f} MB F32)")


if __name__ == "__main__":
    main()
