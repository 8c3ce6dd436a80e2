#!/usr/bin/env python3
"""Write a synthetic Llama-like benchmark model, F32 and its BF16 twin.

Usage: python tools/make_bench_model.py OUT_DIR [--gb 1.0] [--seed 0]

Writes OUT_DIR/f32/model.safetensors (at least --gb * 1e9 bytes of F32 weights),
OUT_DIR/bf16/model.safetensors (the same values rounded to BF16, nearest-even) and a
config.json next to each. Weights are N(0, 0.02) with a few outliers per matrix; norms
are 1 + N(0, 0.02). Deterministic for a given --seed. Needs only numpy (the safetensors
format is written by hand: numpy has no bfloat16). Peak memory is one tensor.
"""
import argparse
import json
import os

import numpy as np

HIDDEN, INTER = 4096, 11008


def tensor_plan(target_bytes):
    """(name, shape) pairs, layer by layer, until the F32 total reaches target_bytes."""
    plan, total, layer = [], 0, 0
    while True:
        p = f"model.layers.{layer}."
        for name, shape in [
            ("input_layernorm.weight", (HIDDEN,)),
            ("self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
            ("self_attn.k_proj.weight", (HIDDEN, HIDDEN)),
            ("self_attn.v_proj.weight", (HIDDEN, HIDDEN)),
            ("self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
            ("post_attention_layernorm.weight", (HIDDEN,)),
            ("mlp.gate_proj.weight", (INTER, HIDDEN)),
            ("mlp.up_proj.weight", (INTER, HIDDEN)),
            ("mlp.down_proj.weight", (HIDDEN, INTER)),
        ]:
            plan.append((p + name, shape))
            total += 4 * int(np.prod(shape))
            if total >= target_bytes:
                return plan, layer + 1
        layer += 1


def header_bytes(plan, dtype, itemsize):
    """The safetensors header (8-byte LE length + JSON padded with spaces to 8 bytes)."""
    meta, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in plan:
        size = itemsize * int(np.prod(shape))
        meta[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(meta, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def to_bf16_bits(x):
    """float32 -> bfloat16 bits, round to nearest even (NaN kept quiet)."""
    bits = x.view(np.uint32)
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)


def generate(rng, name, shape):
    if len(shape) == 1:  # norm weights sit around 1
        return (1.0 + 0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= np.float32(0.02)
    # a few outliers: 32 entries of magnitude 0.2 .. 2
    flat = x.reshape(-1)
    idx = rng.choice(flat.size, 32, replace=False)
    flat[idx] = (rng.choice([-1.0, 1.0], 32) * rng.uniform(0.2, 2.0, 32)).astype(np.float32)
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--gb", type=float, default=1.0, help="minimum F32 weight bytes, in 1e9 bytes")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    plan, layers = tensor_plan(args.gb * 1e9)
    rng = np.random.default_rng(args.seed)
    files = {}
    for kind, dtype, itemsize, torch_dtype in [("f32", "F32", 4, "float32"), ("bf16", "BF16", 2, "bfloat16")]:
        folder = os.path.join(args.out_dir, kind)
        os.makedirs(folder, exist_ok=True)
        config = {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
            "intermediate_size": INTER, "num_hidden_layers": layers, "num_attention_heads": 32,
            "torch_dtype": torch_dtype,
        }
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        files[kind] = open(os.path.join(folder, "model.safetensors.tmp"), "wb")
        files[kind].write(header_bytes(plan, dtype, itemsize))

    for name, shape in plan:  # generate each tensor once, write both files
        x = generate(rng, name, shape)
        files["f32"].write(np.ascontiguousarray(x, dtype="<f4"))
        files["bf16"].write(np.ascontiguousarray(to_bf16_bits(x), dtype="<u2"))

    for kind, f in files.items():
        f.close()
        final = os.path.join(args.out_dir, kind, "model.safetensors")
        os.replace(final + ".tmp", final)
        print(f"wrote {final}: {os.path.getsize(final) / 1e9:.3f} GB, {len(plan)} tensors")


if __name__ == "__main__":
    main()
