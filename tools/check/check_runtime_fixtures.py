#!/usr/bin/env python3
"""Plain-numpy reference forward passes for the runtime fixtures, checked against their goldens.

This file is the *spec* the Rust FP32 runtime follows. It reads ONLY what a runtime would read
from a fixture folder -- `config.json` and `model.safetensors` (PyTorch tensor names, PyTorch
layouts: nn.Linear weight is [out_features, in_features], y = x @ W.T + b) -- plus the inputs
stored in `golden.safetensors`, runs BertModel / LlamaForCausalLM in numpy, and asserts the
result matches the goldens that tools/fixtures/make_runtime_fixtures.py computed with Hugging Face
transformers' Flax models (max abs diff < 1e-4 on non-padded positions).

It also runs a few deliberately *wrong* variants (tanh GELU, ignoring rope_theta, GPT-J style
interleaved rotary, tiled instead of repeated KV heads, no padding mask, ...) and asserts each of
them misses the goldens by a wide margin, i.e. that the fixtures can actually catch those bugs.

If the `tokenizers` package is importable it also re-encodes `inputs.txt` with the fixture's
`tokenizer.json` and checks the ids stored in the golden file.

Needs numpy and safetensors only (no jax / flax / transformers):

    python3 tools/check/check_runtime_fixtures.py                 # checks tests/fixtures/tiny-*
    python3 tools/check/check_runtime_fixtures.py --fixtures DIR  # a different fixtures root

(with the fixture venv: /tmp/fixture-venv/bin/python tools/check/check_runtime_fixtures.py)
"""
import argparse
import json
import math
import os
import sys

import numpy as np
from safetensors.numpy import load_file

TOL = 1e-4
# A wrong variant must miss the goldens by at least this much to count as "caught": 5x the
# tolerance. The subtlest one, tanh-approximated instead of erf GELU, misses by ~9e-4, so a runtime
# test should not use a tolerance looser than 1e-4 (a correct f32 forward is within ~5e-6).
MUTANT_MIN_DIFF = 5 * TOL
# HF adds finfo(float32).min (not -inf) to the scores of masked keys (Flax and PyTorch alike).
MASK_NEG = float(np.finfo(np.float32).min)


# ----------------------------------------------------------------------------------------------
# shared pieces
# ----------------------------------------------------------------------------------------------
def linear(x, w, b=None):
    """PyTorch nn.Linear: w is [out, in]; y = x @ w.T (+ b)."""
    y = x @ w.T
    return y if b is None else y + b


def softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu_erf(x):
    """Exact GELU, x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)). HF "gelu" in PyTorch and Flax."""
    return (0.5 * x * (1.0 + _erf(x.astype(np.float64) / math.sqrt(2.0)))).astype(x.dtype)


def gelu_tanh(x):
    """The tanh approximation ("gelu_new" / "gelu_pytorch_tanh"); used only as a wrong variant."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def layer_norm(x, w, b, eps):
    """Biased variance over the last axis; eps inside the square root (torch.nn.LayerNorm)."""
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def rms_norm(x, w, eps):
    """LlamaRMSNorm: x / sqrt(mean(x^2) + eps) * w (no mean subtraction, no bias)."""
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def attention(q, k, v, allowed):
    """q [N,Hq,T,D], k/v [N,Hq,S,D], allowed bool broadcastable to [N,Hq,T,S] -> [N,Hq,T,D].

    scores = q k^T / sqrt(D); disallowed entries get + finfo(f32).min (a finite large negative),
    then softmax over keys. No row is fully masked for these fixtures (every sample has >= 1 real
    token, and with right padding a padded query still sees the real tokens before it), so -inf
    would give identical results."""
    scores = (q @ np.swapaxes(k, -1, -2)) / math.sqrt(q.shape[-1])
    scores = scores + np.where(allowed, 0.0, MASK_NEG).astype(scores.dtype)
    return softmax(scores) @ v


def split_heads(x, n_heads):
    """[N,T,n_heads*D] -> [N,n_heads,T,D] (head h = columns h*D .. (h+1)*D-1)."""
    n, t, _ = x.shape
    return x.reshape(n, t, n_heads, -1).transpose(0, 2, 1, 3)


def merge_heads(x):
    """[N,H,T,D] -> [N,T,H*D]."""
    n, h, t, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(n, t, h * d)


# ----------------------------------------------------------------------------------------------
# BERT (transformers BertModel, absolute position embeddings, post-LayerNorm encoder)
# ----------------------------------------------------------------------------------------------
def bert_forward(cfg, W, input_ids, attention_mask, token_type_ids, dtype=np.float64,
                 gelu=gelu_erf, use_mask=True, use_token_type=True):
    """Returns (last_hidden_state [N,T,H], pooler_output [N,H])."""
    W = {k: v.astype(dtype) for k, v in W.items()}
    eps = cfg["layer_norm_eps"]
    n_heads = cfg["num_attention_heads"]
    assert cfg.get("position_embedding_type", "absolute") == "absolute"
    assert cfg["hidden_act"] == "gelu"  # exact (erf) GELU
    n, t = input_ids.shape

    # embeddings: word + position (0..T-1, whatever the padding) + token type, then LayerNorm
    pos = np.arange(t)
    x = W["embeddings.word_embeddings.weight"][input_ids] + W["embeddings.position_embeddings.weight"][pos][None]
    if use_token_type:
        x = x + W["embeddings.token_type_embeddings.weight"][token_type_ids]
    x = layer_norm(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"], eps)

    # key padding mask: query i may attend key j iff attention_mask[n, j] == 1 (padded queries too)
    allowed = (attention_mask[:, None, None, :] > 0) if use_mask else np.ones((1, 1, 1, 1), bool)

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q = split_heads(linear(x, W[p + "attention.self.query.weight"], W[p + "attention.self.query.bias"]), n_heads)
        k = split_heads(linear(x, W[p + "attention.self.key.weight"], W[p + "attention.self.key.bias"]), n_heads)
        v = split_heads(linear(x, W[p + "attention.self.value.weight"], W[p + "attention.self.value.bias"]), n_heads)
        a = merge_heads(attention(q, k, v, allowed))
        a = linear(a, W[p + "attention.output.dense.weight"], W[p + "attention.output.dense.bias"])
        x = layer_norm(a + x, W[p + "attention.output.LayerNorm.weight"], W[p + "attention.output.LayerNorm.bias"], eps)

        h = gelu(linear(x, W[p + "intermediate.dense.weight"], W[p + "intermediate.dense.bias"]))
        h = linear(h, W[p + "output.dense.weight"], W[p + "output.dense.bias"])
        x = layer_norm(h + x, W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"], eps)

    # pooler: tanh(dense(hidden state of the first token, [CLS]))
    pooled = np.tanh(linear(x[:, 0], W["pooler.dense.weight"], W["pooler.dense.bias"]))
    return x, pooled


def mean_pool_l2(last_hidden_state, attention_mask):
    """sentence-transformers Pooling(mean) + Normalize: masked mean over tokens, then x / max(|x|, 1e-12)."""
    m = attention_mask[..., None].astype(last_hidden_state.dtype)
    mean = (last_hidden_state * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------------------------
# Llama (transformers LlamaForCausalLM, no rope_scaling, no biases)
# ----------------------------------------------------------------------------------------------
def rope_cos_sin(positions, head_dim, theta, dtype):
    """inv_freq[i] = theta^(-2i/d), i = 0..d/2-1; angle[p, i] = p * inv_freq[i];
    cos/sin tables are [T, d] with the d/2 angles repeated twice (HF 'rotate_half' layout)."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    ang = positions[:, None].astype(np.float64) * inv_freq[None, :]
    emb = np.concatenate([ang, ang], axis=-1)
    return np.cos(emb).astype(dtype), np.sin(emb).astype(dtype)


def rotate_half(x):
    """[x1, x2] -> [-x2, x1] with x1 = first half, x2 = second half of the head dim."""
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def apply_rope(x, cos, sin, style="half"):
    """x [N,H,T,D]; HF convention: x * cos + rotate_half(x) * sin (pairs (i, i + D/2))."""
    if style == "half":
        return x * cos + rotate_half(x) * sin
    # wrong variant: GPT-J / Meta-original interleaved pairs (2i, 2i+1) on the same HF weights
    d = x.shape[-1]
    c, s = cos[..., : d // 2], sin[..., : d // 2]
    xe, xo = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = xe * c - xo * s
    out[..., 1::2] = xe * s + xo * c
    return out


def llama_forward(cfg, W, input_ids, attention_mask, dtype=np.float64, rope_theta=None,
                  rope_style="half", kv_expand="repeat", use_pad_mask=True, tied=None):
    """Returns logits [N,T,V]. Positions are 0..T-1 for every row (right padding)."""
    W = {k: v.astype(dtype) for k, v in W.items()}
    eps = cfg["rms_norm_eps"]
    n_heads = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_heads
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_heads
    theta = cfg.get("rope_theta", 10000.0) if rope_theta is None else rope_theta
    assert cfg["hidden_act"] == "silu"
    assert cfg.get("rope_scaling") is None
    assert not cfg.get("attention_bias", False) and not cfg.get("mlp_bias", False)
    if tied is None:
        tied = cfg.get("tie_word_embeddings", False)
    n, t = input_ids.shape

    x = W["model.embed_tokens.weight"][input_ids]
    cos, sin = rope_cos_sin(np.arange(t), head_dim, theta, dtype)

    # causal AND key-padding: query i may attend key j iff j <= i and attention_mask[n, j] == 1
    causal = np.tril(np.ones((t, t), bool))[None, None]
    allowed = causal & (attention_mask[:, None, None, :] > 0) if use_pad_mask else causal

    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = split_heads(linear(h, W[p + "self_attn.q_proj.weight"]), n_heads)
        k = split_heads(linear(h, W[p + "self_attn.k_proj.weight"]), n_kv)
        v = split_heads(linear(h, W[p + "self_attn.v_proj.weight"]), n_kv)
        q, k = apply_rope(q, cos, sin, rope_style), apply_rope(k, cos, sin, rope_style)
        # GQA: query head h uses kv head h // (n_heads / n_kv)  (each kv head repeated, not tiled)
        rep = n_heads // n_kv
        if kv_expand == "repeat":
            k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        else:  # wrong variant: tiled, query head h uses kv head h % n_kv
            k, v = np.tile(k, (1, rep, 1, 1)), np.tile(v, (1, rep, 1, 1))
        a = merge_heads(attention(q, k, v, allowed))
        x = x + linear(a, W[p + "self_attn.o_proj.weight"])

        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        h = silu(linear(h, W[p + "mlp.gate_proj.weight"])) * linear(h, W[p + "mlp.up_proj.weight"])
        x = x + linear(h, W[p + "mlp.down_proj.weight"])

    x = rms_norm(x, W["model.norm.weight"], eps)
    # tie_word_embeddings: the file has no lm_head.weight; the output projection is embed_tokens
    head = W["model.embed_tokens.weight"] if tied else W["lm_head.weight"]
    return linear(x, head)


# ----------------------------------------------------------------------------------------------
# checking
# ----------------------------------------------------------------------------------------------
def load_fixture(d):
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    return cfg, load_file(os.path.join(d, "model.safetensors")), load_file(os.path.join(d, "golden.safetensors"))


def max_diff(a, b, mask=None):
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    if mask is not None:
        d = d[mask.astype(bool)]
    return float(d.max())


def check_tokenizer(d, g, keys):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        print(f"  tokenizer: skipped (python package 'tokenizers' not importable)")
        return
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "inputs.txt"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    enc = tok.encode_batch(lines)
    got = {
        "input_ids": np.array([e.ids for e in enc], np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
    }
    for k in keys:
        assert got[k].shape == g[k].shape and np.array_equal(got[k], g[k]), f"{d}: tokenizer {k} mismatch"
    print(f"  tokenizer: tokenizer.json re-encodes inputs.txt to the stored {', '.join(keys)} {g['input_ids'].shape}")


class Report:
    def __init__(self):
        self.failures = []

    def ok(self, name, diff):
        good = diff < TOL
        print(f"  {'PASS' if good else 'FAIL'} {name}: max abs diff {diff:.3e} (< {TOL:g})")
        if not good:
            self.failures.append(name)

    def mutant(self, name, diff):
        caught = diff > MUTANT_MIN_DIFF
        print(f"  {'caught' if caught else 'MISSED'} wrong variant '{name}': max abs diff {diff:.3e}")
        if not caught:
            self.failures.append("mutant " + name)


def check_bert(d, rep):
    cfg, W, g = load_fixture(d)
    print(f"{d}: BertModel, vocab {cfg['vocab_size']}, hidden {cfg['hidden_size']}, "
          f"layers {cfg['num_hidden_layers']}, heads {cfg['num_attention_heads']}")
    check_tokenizer(d, g, ["input_ids", "attention_mask", "token_type_ids"])
    ids, am, tt = g["input_ids"], g["attention_mask"], g["token_type_ids"]
    real = am.astype(bool)
    for dtype in (np.float64, np.float32):
        hs, pooled = bert_forward(cfg, W, ids, am, tt, dtype=dtype)
        name = np.dtype(dtype).name
        rep.ok(f"{name} last_hidden_state (non-padded)", max_diff(hs, g["last_hidden_state"], real))
        print(f"       {name} last_hidden_state incl. padded positions: {max_diff(hs, g['last_hidden_state']):.3e}")
        rep.ok(f"{name} pooler_output", max_diff(pooled, g["pooler_output"]))
        rep.ok(f"{name} sentence_embedding", max_diff(mean_pool_l2(hs, am), g["sentence_embedding"]))
    # the goldens' own pooling, from the golden hidden states
    rep.ok("sentence_embedding from golden last_hidden_state",
           max_diff(mean_pool_l2(g["last_hidden_state"].astype(np.float64), am), g["sentence_embedding"]))
    for label, kw in [("tanh GELU", dict(gelu=gelu_tanh)), ("no attention mask", dict(use_mask=False)),
                      ("no token_type embedding", dict(use_token_type=False))]:
        hs, _ = bert_forward(cfg, W, ids, am, tt, **kw)
        rep.mutant(label, max_diff(hs, g["last_hidden_state"], real))


def check_llama(d, rep, mutants):
    cfg, W, g = load_fixture(d)
    tied = cfg.get("tie_word_embeddings", False)
    print(f"{d}: LlamaForCausalLM, vocab {cfg['vocab_size']}, hidden {cfg['hidden_size']}, layers "
          f"{cfg['num_hidden_layers']}, heads {cfg['num_attention_heads']}/{cfg['num_key_value_heads']} kv, "
          f"rope_theta {cfg.get('rope_theta')}, tied {tied}")
    assert ("lm_head.weight" in W) != tied, "lm_head.weight must be present iff tie_word_embeddings is false"
    check_tokenizer(d, g, ["input_ids", "attention_mask"])
    ids, am = g["input_ids"], g["attention_mask"]
    real = am.astype(bool)
    for dtype in (np.float64, np.float32):
        logits = llama_forward(cfg, W, ids, am, dtype=dtype)
        name = np.dtype(dtype).name
        rep.ok(f"{name} logits (non-padded)", max_diff(logits, g["logits"], real))
        print(f"       {name} logits incl. padded positions: {max_diff(logits, g['logits']):.3e}")
    # right padding: real tokens never see the pads (causal), so the padding mask only changes
    # the (meaningless) logits at padded positions -- check those to make it count anyway.
    pads = ~real
    if pads.any():
        logits = llama_forward(cfg, W, ids, am, use_pad_mask=False)
        rep.mutant("no padding mask (padded positions)", max_diff(logits, g["logits"], pads))
    for label, kw in mutants:
        logits = llama_forward(cfg, W, ids, am, **kw)
        rep.mutant(label, max_diff(logits, g["logits"], real))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixtures", default=os.path.join(here, "..", "..", "tests", "fixtures"))
    args = ap.parse_args()
    root = os.path.normpath(args.fixtures)
    rep = Report()
    check_bert(os.path.join(root, "tiny-bert"), rep)
    check_llama(os.path.join(root, "tiny-llama"), rep, [
        ("rope_theta ignored (10000)", dict(rope_theta=10000.0)),
        ("interleaved (GPT-J) rotary", dict(rope_style="interleaved")),
        ("kv heads tiled instead of repeated", dict(kv_expand="tile")),
        ("lm_head tied to embed_tokens", dict(tied=True)),
    ])
    check_llama(os.path.join(root, "tiny-llama-tied"), rep, [
        ("interleaved (GPT-J) rotary", dict(rope_style="interleaved")),
    ])
    if rep.failures:
        print("FAILED: " + "; ".join(rep.failures))
        sys.exit(1)
    print("all runtime fixtures match their goldens")


if __name__ == "__main__":
    main()
