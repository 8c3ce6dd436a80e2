#!/usr/bin/env python3
"""Reads a GGUF file quantstudio wrote with the `gguf` package (llama.cpp's own reader, gguf.GGUFReader) and checks
it against the Hugging Face folder it came from: the Llama metadata from config.json, the tokenizer from
tokenizer.json (tokens, merges, special ids), and every tensor's values after the Q/K row permutation that
llama.cpp's convert_hf_to_gguf.py applies (written here from its formula, independently of the Rust code).

Usage: check_gguf.py FILE.gguf MODEL_FOLDER --types f32|f16|bf16
Prints ALL CHECKS PASSED, or the failures and exits 1.
"""

import argparse
import json
import pathlib
import sys

import numpy as np
import gguf
from safetensors.numpy import load_file

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


def field(reader, key):
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.contents()


def permute(w, n_head):
    """convert_hf_to_gguf's LlamaModel.permute: interleave the two rotary halves of each head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def bf16_bits(x):
    """Round-to-nearest-even float32 -> bfloat16 bits (finite values)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf_file")
    ap.add_argument("model")
    ap.add_argument("--types", choices=["f32", "f16", "bf16"], required=True)
    args = ap.parse_args()
    folder = pathlib.Path(args.model)
    config = json.loads((folder / "config.json").read_text())
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    reader = gguf.GGUFReader(args.gguf_file)

    # Metadata.
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    expected = {
        "general.architecture": "llama",
        "llama.block_count": config["num_hidden_layers"],
        "llama.context_length": config["max_position_embeddings"],
        "llama.embedding_length": config["hidden_size"],
        "llama.feed_forward_length": config["intermediate_size"],
        "llama.attention.head_count": heads,
        "llama.attention.head_count_kv": kv_heads,
        "llama.rope.dimension_count": head_dim,
        "general.alignment": 32,
        "tokenizer.ggml.model": "gpt2",
        "general.file_type": {"f32": 0, "f16": 1, "bf16": 32}[args.types],
    }
    for key, value in expected.items():
        check(field(reader, key) == value, f"{key} = {field(reader, key)!r}, expected {value!r}")
    check(np.isclose(field(reader, "llama.rope.freq_base"), rope), "rope.freq_base")
    check(np.isclose(field(reader, "llama.attention.layer_norm_rms_epsilon"), config["rms_norm_eps"]), "rms eps")
    check(reader.alignment == 32, f"alignment {reader.alignment}")

    # Tokenizer.
    tokens = field(reader, "tokenizer.ggml.tokens")
    vocab = dict(tokenizer["model"]["vocab"])
    for added in tokenizer.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    size = max(config["vocab_size"], max(vocab.values()) + 1)
    check(len(tokens) == size, f"{len(tokens)} tokens, expected {size}")
    check(field(reader, "llama.vocab_size") == size, "llama.vocab_size")
    by_id = {i: t for t, i in vocab.items()}
    wrong = [i for i in range(size) if tokens[i] != by_id.get(i, f"[PAD{i}]")]
    check(not wrong, f"{len(wrong)} tokens differ, first ids {wrong[:5]}")
    types = field(reader, "tokenizer.ggml.token_type")
    special = {a["id"] for a in tokenizer.get("added_tokens", []) if a.get("special")}
    check(all(types[i] == 3 for i in special), "special added tokens are CONTROL (3)")
    check(all(types[i] == 5 for i in range(size) if i not in by_id), "missing ids are UNUSED (5)")
    merges = tokenizer["model"].get("merges", [])
    merges = [m if isinstance(m, str) else " ".join(p.replace(" ", "\u0120") for p in m) for m in merges]
    check(list(field(reader, "tokenizer.ggml.merges") or []) == merges, "merges")
    for typ, key in [("bos", "bos_token_id"), ("eos", "eos_token_id")]:
        if config.get(f"{typ}_token_id") is not None:
            check(field(reader, f"tokenizer.ggml.{key}") == config[f"{typ}_token_id"], f"{key}")

    # Tensors.
    weights = {}
    for path in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(str(path)))
    names = {"model.embed_tokens.weight": ("token_embd.weight", None), "model.norm.weight": ("output_norm.weight", None)}
    if not config.get("tie_word_embeddings") and "lm_head.weight" in weights:
        names["lm_head.weight"] = ("output.weight", None)
    parts = {
        "input_layernorm": ("attn_norm", None), "self_attn.q_proj": ("attn_q", heads),
        "self_attn.k_proj": ("attn_k", kv_heads), "self_attn.v_proj": ("attn_v", None),
        "self_attn.o_proj": ("attn_output", None), "post_attention_layernorm": ("ffn_norm", None),
        "mlp.gate_proj": ("ffn_gate", None), "mlp.up_proj": ("ffn_up", None), "mlp.down_proj": ("ffn_down", None),
    }
    for n in range(config["num_hidden_layers"]):
        for hf, (gg, permute_heads) in parts.items():
            names[f"model.layers.{n}.{hf}.weight"] = (f"blk.{n}.{gg}.weight", permute_heads)
    tensors = {t.name: t for t in reader.tensors}
    check(len(tensors) == len(names), f"{len(tensors)} tensors, expected {len(names)}")
    want_type = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
                 "bf16": gguf.GGMLQuantizationType.BF16}[args.types]
    for hf, (gg, permute_heads) in names.items():
        t = tensors.get(gg)
        if t is None:
            failures.append(f"{gg} missing")
            continue
        source = weights[hf].astype(np.float32)
        if permute_heads:
            source = permute(source, permute_heads)
        check(list(t.shape) == list(reversed(source.shape)), f"{gg} shape {list(t.shape)}")
        wanted = gguf.GGMLQuantizationType.F32 if source.ndim == 1 else want_type
        check(t.tensor_type == wanted, f"{gg} type {t.tensor_type.name}, expected {wanted.name}")
        data = np.asarray(t.data)
        if t.tensor_type == gguf.GGMLQuantizationType.F32:
            same = np.array_equal(data.reshape(source.shape), source)
        elif t.tensor_type == gguf.GGMLQuantizationType.F16:
            same = np.array_equal(data.reshape(source.shape).view(np.uint16), source.astype(np.float16).view(np.uint16))
        else:
            same = np.array_equal(data.view(np.uint16).reshape(source.shape), bf16_bits(source))
        check(same, f"{gg} values differ from {hf}")

    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(f"{len(names)} tensors, {size} tokens: ALL CHECKS PASSED")


if __name__ == "__main__":
    main()
