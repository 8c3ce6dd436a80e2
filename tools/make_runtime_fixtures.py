#!/usr/bin/env python3
"""Make the tiny BERT / Llama checkpoints and golden outputs that test the FP32 inference runtime.

What it writes (everything deterministic: fixed seeds, no network, no hub downloads):

  tests/fixtures/tiny-bert/        BertModel ("bert"): hidden 32, 2 layers, 4 heads, intermediate 64,
                                   exact-erf "gelu", layer_norm_eps 1e-12, max_position_embeddings 64
  tests/fixtures/tiny-llama/       LlamaForCausalLM ("llama"): hidden 32, 2 layers, 4 heads, 2 KV heads
                                   (GQA), SwiGLU intermediate 64, rms_norm_eps 1e-6, rope_theta 500000,
                                   tie_word_embeddings false (separate lm_head.weight)
  tests/fixtures/tiny-llama-tied/  LlamaForCausalLM: hidden 16, 2 layers, 2 heads = 2 KV heads,
                                   intermediate 32, default rope_theta 10000, tie_word_embeddings true
                                   (no lm_head.weight in the file); same tokenizer as tiny-llama

  each folder:
    config.json        a normal Hugging Face config (transformers' own to_json_string)
    model.safetensors  F32 weights under PyTorch names and layouts (nn.Linear weight [out, in],
                       nn.Embedding weight [num, dim], LayerNorm weight/bias, RMSNorm weight).
                       Random N(0, 0.2) matrices (10x HF's default 0.02), N(0, 0.1) biases and
                       norm weights 1 + N(0, 0.2), LayerNorm biases N(0, 0.1), so that a wrong
                       layout, norm, activation or rotary convention shows in the outputs.
    tokenizer.json     a tiny `tokenizers` tokenizer trained here on the sentences below, padding
                       (longest, right) and truncation (max_length 16) enabled IN the file.
                       BERT: WordPiece (vocab 200, "##" continuation prefix), BertNormalizer
                       (lowercase, strip accents), BertPreTokenizer, [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3
                       [MASK]=4, post-processor "[CLS] $A [SEP]". Its vocab comes from a small
                       deterministic re-implementation of WordPieceTrainer (train_wordpiece_vocab:
                       the library's trainer gives a different vocab on every run).
                       Llama: BPE (tokenizers' BpeTrainer, vocab 200, deterministic here) with a
                       Metaspace ("\u2581", prepend always) pre-tokenizer (SentencePiece style),
                       <unk>=0 <s>=1 </s>=2 <pad>=3, post-processor "<s> $A", pad token <pad>.
                       Inputs include a character outside each vocab ([UNK] / <unk>) and, for
                       BERT, accented letters (stripped by the normalizer).
    inputs.txt         6 samples, one per line; those longer than 16 tokens (2 for BERT, 3 for
                       Llama) are truncated to 16, the rest padded to 16.
    golden.safetensors input_ids, attention_mask (and for BERT token_type_ids), I64 [N, T], exactly
                       as tokenizer.json encodes inputs.txt as one batch, and the outputs of
                       transformers' Flax models on that batch with that attention mask:
                       BERT:  last_hidden_state F32 [N,T,H], pooler_output F32 [N,H] and
                              sentence_embedding F32 [N,H] = attention-masked mean of
                              last_hidden_state, L2-normalised (sentence-transformers style);
                       Llama: logits F32 [N,T,V] (right padding, position ids 0..T-1).

Two things the Flax models do not do the way the PyTorch models (and the runtime) do, and how this
script bridges them -- each bridge is checked by tools/check_runtime_fixtures.py's numpy forward:
  * FlaxLlama ignores config.rope_theta: its create_sinusoidal_positions() hard-codes base 10000
    (still so in transformers 4.57.6, the last 4.x). For tiny-llama (rope_theta 500000) the rotary
    table is rebuilt with the configured theta (rope_theta_patch below, same formula otherwise).
    tiny-llama-tied keeps theta 10000 and runs unpatched Flax code.
  * FlaxLlamaForCausalLM ignores tie_word_embeddings (always has its own lm_head kernel). For
    tiny-llama-tied the Flax lm_head kernel is set to embed_tokens.T, which is what tying means.

Run with (in a venv made like this; these are the exact versions it was last run with):

    python3 -m venv /tmp/fixture-venv
    /tmp/fixture-venv/bin/pip install "transformers==4.46.3" "flax==0.10.1" "jax[cpu]==0.4.35" \
        "jaxlib==0.4.35" "tokenizers==0.20.3" "numpy==2.1.3" "safetensors==0.4.5"
    /tmp/fixture-venv/bin/python tools/make_runtime_fixtures.py      # writes, then checks
    /tmp/fixture-venv/bin/python tools/check_runtime_fixtures.py     # check only (numpy+safetensors)

(transformers 5 dropped the Flax models, so transformers must stay < 5.)
Options: --out DIR (default tests/fixtures next to this tools/ folder), --no-check.
"""
import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax.traverse_util import flatten_dict, unflatten_dict  # noqa: E402
from transformers import BertConfig, FlaxBertModel, FlaxLlamaForCausalLM, LlamaConfig  # noqa: E402
from transformers.models.llama import modeling_flax_llama  # noqa: E402

# full-f32 matmuls (already the case on CPU; matters only if this ever runs on an accelerator)
jax.config.update("jax_default_matmul_precision", "highest")

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_LEN = 16
WEIGHT_STD = 0.2

# ----------------------------------------------------------------------------------------------
# text
# ----------------------------------------------------------------------------------------------
BERT_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A small model can still be a useful test of a large runtime.",
    "Quantization maps floating point weights to a few integer levels.",
    "Each layer of the encoder has attention and a feed forward block.",
    "The tokenizer splits words into smaller pieces when it has to.",
    "Padding makes every sample in a batch the same length.",
    "Truncation cuts a long sample down to the maximum length.",
    "We measure the error of every layer before and after rounding.",
    "Sentence embeddings are the mean of the token vectors.",
    "The attention mask hides the padding from the other tokens.",
    "Layer normalization keeps the activations in a sensible range.",
    "Random weights with a large spread make mistakes easy to see.",
    "She reads a book on the train every morning.",
    "They walked along the river until the sun went down.",
    "Our cat sleeps on the warm windowsill all afternoon.",
    "Rain is expected tomorrow, so bring an umbrella.",
    "He played the piano while his sister sang.",
    "The museum opens at nine and closes at five.",
    "Fresh bread smells wonderful early in the morning.",
    "Please send the report before the meeting on Friday.",
    "Mountains and lakes cover most of the northern region.",
    "The children built a castle of sand on the beach.",
    "A good test fails loudly when something is wrong.",
    "Numbers like 42 and 1024 appear in many examples.",
    "Golden outputs are computed once and stored in a file.",
    "The runtime reads the config, the weights and the tokenizer.",
    "Every token gets a position and a type embedding.",
    "The pooler takes the first token and applies a dense layer.",
    "Small vocabularies produce many word pieces.",
    "Coffee or tea? Both are fine, thank you!",
    "The library was quiet except for the ticking clock.",
    "Birds sing loudly in the garden at dawn.",
    "A cafe on the corner serves soup and sandwiches.",
    "Learning new things takes time and patience.",
    "The engineer checked the numbers twice.",
    "Dogs, cats and rabbits are common pets.",
]

BERT_INPUTS = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.",
    "Quantization error is measured layer by layer, and the attention mask hides padding from every token in the batch.",
    "Sentence embeddings",
    "A caf\u00e9 in Z\u00fcrich.",
    "Why? \u2615",
]

LLAMA_CORPUS = [
    "Once upon a time there was a little robot who loved to count.",
    "The robot counted stars, trees and drops of rain.",
    "Every night it told the moon how many it had found.",
    "The moon listened quietly and never said a word.",
    "One day the robot met a curious fox in the forest.",
    "The fox asked why anyone would count the rain.",
    "Because numbers are friends, the robot replied.",
    "They walked together through the tall green grass.",
    "A river sang softly as it ran over the stones.",
    "The fox jumped over the river and the robot rolled across a bridge.",
    "On the other side there was a village with red roofs.",
    "People in the village baked bread and grew apples.",
    "The baker gave the robot a warm loaf of bread.",
    "The robot could not eat, but it counted the seeds on top.",
    "Children laughed and followed the robot down the street.",
    "In the evening the sky turned orange, then purple, then dark.",
    "The stars came out one by one.",
    "The robot began to count again, and the fox fell asleep.",
    "def add(a, b): return a + b",
    "for i in range(10): print(i)",
    "The model predicts the next token from the tokens before it.",
    "Rotary position embeddings rotate pairs of query and key values.",
    "Grouped query attention shares key and value heads between query heads.",
    "The final norm is followed by the language model head.",
    "Small models are fast to run and easy to check.",
    "A tiny vocabulary means many short pieces per word.",
    "Hello there, how are you today?",
    "I am fine, thank you, and you?",
    "The weather is nice and the sun is shining.",
    "Let us go for a walk in the park.",
    "Numbers such as 3, 14 and 2024 appear here too.",
    "The end of the story is also a new beginning.",
]

LLAMA_INPUTS = [
    "Once upon a time",
    "The robot counted the stars.",
    "The fox and the robot walked together through the tall green grass to the village with red roofs and warm bread.",
    "Hi \u2615",
    "def add(a, b): return a + b",
    "Grouped query attention shares heads.",
]


# ----------------------------------------------------------------------------------------------
# tokenizers
# ----------------------------------------------------------------------------------------------
def train_wordpiece_vocab(tok, corpus, vocab_size, specials):
    """WordPiece vocabulary the way tokenizers' WordPieceTrainer builds one (BPE merges on words
    split into a first char and "##"-prefixed continuation chars, most frequent pair first), but
    deterministic: WordPieceTrainer numbers the "##x" pieces in HashMap order, so its tie-breaks
    and hence its vocab change from run to run. Here ties go to the lexicographically smallest
    pair. Words come from the tokenizer's own normalizer and pre-tokenizer."""
    words = {}
    for line in corpus:
        for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(line)):
            words[w] = words.get(w, 0) + 1
    splits = {w: [w[0]] + ["##" + c for c in w[1:]] for w in words}
    vocab = list(specials) + sorted({p for sp in splits.values() for p in sp})
    while len(vocab) < vocab_size:
        pairs = {}
        for w, sp in splits.items():
            for pair in zip(sp, sp[1:]):
                pairs[pair] = pairs.get(pair, 0) + words[w]
        if not pairs:
            break
        a, b = min(pairs, key=lambda p: (-pairs[p], p))
        merged = a + b[2:]
        for w, sp in splits.items():
            out, i = [], 0
            while i < len(sp):
                if i + 1 < len(sp) and sp[i] == a and sp[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(sp[i])
                    i += 1
            splits[w] = out
        if merged not in vocab:
            vocab.append(merged)
    return {t: i for i, t in enumerate(vocab)}


def build_bert_tokenizer():
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocab = train_wordpiece_vocab(tok, BERT_CORPUS, 200, specials)
    tok.model = models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##",
                                 max_input_chars_per_word=100)
    tok.add_special_tokens(specials)
    ids = {s: tok.token_to_id(s) for s in specials}
    assert ids == {s: i for i, s in enumerate(specials)}, ids
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.enable_padding(direction="right", pad_id=ids["[PAD]"], pad_type_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=MAX_LEN)
    return tok


def build_llama_tokenizer():
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=200, min_frequency=1, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(LLAMA_CORPUS, trainer=trainer)
    ids = {s: tok.token_to_id(s) for s in specials}
    assert ids == {s: i for i, s in enumerate(specials)}, ids
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", ids["<s>"])])
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.enable_padding(direction="right", pad_id=ids["<pad>"], pad_type_id=0, pad_token="<pad>")
    tok.enable_truncation(max_length=MAX_LEN)
    return tok


def write_tokenizer_and_inputs(tok, lines, out):
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "inputs.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    # encode exactly as a runtime would: load the written file, encode the lines as one batch
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    enc = tok.encode_batch(lines)
    batch = {
        "input_ids": np.array([e.ids for e in enc], np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
    }
    lens = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] == MAX_LEN and lens.max() == MAX_LEN and lens.min() < MAX_LEN / 2
    n_full = [len(e.overflowing) > 0 for e in enc]
    assert any(n_full), "no input was truncated"
    for line, e in zip(lines, enc):
        print(f"    {sum(e.attention_mask):2d} tokens{' (truncated)' if e.overflowing else ''}: {line!r} -> {e.tokens[:sum(e.attention_mask)]}")
    return batch


# ----------------------------------------------------------------------------------------------
# weights (PyTorch names and layouts) and their Flax twins
# ----------------------------------------------------------------------------------------------
class Init:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def mat(self, *shape):
        return (self.rng.standard_normal(shape) * WEIGHT_STD).astype(np.float32)

    def bias(self, n):
        return (self.rng.standard_normal(n) * 0.1).astype(np.float32)

    def norm(self, n):
        return (1.0 + self.rng.standard_normal(n) * 0.2).astype(np.float32)


def bert_pt_state(cfg, seed):
    r, H, I = Init(seed), cfg.hidden_size, cfg.intermediate_size
    s = {
        "embeddings.word_embeddings.weight": r.mat(cfg.vocab_size, H),
        "embeddings.position_embeddings.weight": r.mat(cfg.max_position_embeddings, H),
        "embeddings.token_type_embeddings.weight": r.mat(cfg.type_vocab_size, H),
        "embeddings.LayerNorm.weight": r.norm(H),
        "embeddings.LayerNorm.bias": r.bias(H),
    }
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for name, (o, n) in [("attention.self.query", (H, H)), ("attention.self.key", (H, H)),
                             ("attention.self.value", (H, H)), ("attention.output.dense", (H, H)),
                             ("intermediate.dense", (I, H)), ("output.dense", (H, I))]:
            s[p + name + ".weight"] = r.mat(o, n)
            s[p + name + ".bias"] = r.bias(o)
        for name in ["attention.output.LayerNorm", "output.LayerNorm"]:
            s[p + name + ".weight"] = r.norm(H)
            s[p + name + ".bias"] = r.bias(H)
    s["pooler.dense.weight"] = r.mat(H, H)
    s["pooler.dense.bias"] = r.bias(H)
    return s


def llama_pt_state(cfg, seed):
    r, H, I = Init(seed), cfg.hidden_size, cfg.intermediate_size
    D = cfg.hidden_size // cfg.num_attention_heads
    s = {"model.embed_tokens.weight": r.mat(cfg.vocab_size, H)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        s[p + "input_layernorm.weight"] = r.norm(H)
        s[p + "self_attn.q_proj.weight"] = r.mat(cfg.num_attention_heads * D, H)
        s[p + "self_attn.k_proj.weight"] = r.mat(cfg.num_key_value_heads * D, H)
        s[p + "self_attn.v_proj.weight"] = r.mat(cfg.num_key_value_heads * D, H)
        s[p + "self_attn.o_proj.weight"] = r.mat(H, cfg.num_attention_heads * D)
        s[p + "post_attention_layernorm.weight"] = r.norm(H)
        s[p + "mlp.gate_proj.weight"] = r.mat(I, H)
        s[p + "mlp.up_proj.weight"] = r.mat(I, H)
        s[p + "mlp.down_proj.weight"] = r.mat(H, I)
    s["model.norm.weight"] = r.norm(H)
    if not cfg.tie_word_embeddings:
        s["lm_head.weight"] = r.mat(cfg.vocab_size, H)
    return s


def pt_to_flax(state, template, prefix=()):
    """PyTorch state dict -> Flax params tree shaped like `template` (a freshly initialised model's
    params). Linear weight [out,in] -> Dense kernel [in,out]; Embedding weight -> embedding;
    LayerNorm weight -> scale; Flax RMSNorm keeps the name weight. Asserts a 1:1 match of names
    and shapes with the template, so nothing is silently left at its random init."""
    want = flatten_dict(template)
    got = {}
    for name, w in state.items():
        path = prefix + tuple(name.split("."))
        mod, leaf = path[:-1], path[-1]
        if leaf == "bias":
            key, val = mod + ("bias",), w
        elif mod + ("kernel",) in want:
            key, val = mod + ("kernel",), w.T
        elif mod + ("embedding",) in want:
            key, val = mod + ("embedding",), w
        elif mod + ("scale",) in want:
            key, val = mod + ("scale",), w
        else:
            key, val = mod + ("weight",), w
        assert key in want, f"{name}: no Flax param {key}"
        assert want[key].shape == val.shape, f"{name}: {val.shape} vs Flax {want[key].shape}"
        got[key] = jnp.asarray(np.ascontiguousarray(val))
    missing = set(want) - set(got)
    assert not missing, f"Flax params not set from the state dict: {sorted(missing)}"
    return unflatten_dict(got)


@contextlib.contextmanager
def rope_theta_patch(theta):
    """FlaxLlamaRotaryEmbedding builds its sin/cos table with create_sinusoidal_positions(num_pos, dim),
    which hard-codes base 10000 and ignores config.rope_theta. Swap in the same function with the
    configured base while the model runs (Flax re-runs setup() on every apply)."""
    orig = modeling_flax_llama.create_sinusoidal_positions

    def with_theta(num_pos, dim):
        inv_freq = 1.0 / (theta ** (np.arange(0, dim, 2) / dim))
        freqs = np.einsum("i , j -> i j", np.arange(num_pos), inv_freq).astype("float32")
        emb = np.concatenate((freqs, freqs), axis=-1)
        out = np.concatenate((np.sin(emb)[:, None, :], np.cos(emb)[:, None, :]), axis=-1)
        return jnp.array(out[:, :, :num_pos])

    # the replacement is the original formula: identical tables at the default base
    if theta == 10000.0:
        assert np.array_equal(np.asarray(orig(64, 8)), np.asarray(with_theta(64, 8)))
    modeling_flax_llama.create_sinusoidal_positions = with_theta
    try:
        yield
    finally:
        modeling_flax_llama.create_sinusoidal_positions = orig


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------
def write_config(cfg, out, required):
    d = json.loads(cfg.to_json_string(use_diff=True))
    d.pop("transformers_version", None)  # keep the file stable across transformers patch versions
    d.update({k: getattr(cfg, k) for k in required})  # spell out what the runtime reads, defaults too
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(d, f, indent=2, sort_keys=True)
        f.write("\n")


def fresh_dir(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)


def make_bert(out):
    fresh_dir(out)
    print(f"  {out}")
    tok = build_bert_tokenizer()
    batch = write_tokenizer_and_inputs(tok, BERT_INPUTS, out)
    cfg = BertConfig(
        vocab_size=tok.get_vocab_size(with_added_tokens=True), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, hidden_act="gelu", max_position_embeddings=64,
        type_vocab_size=2, layer_norm_eps=1e-12, initializer_range=WEIGHT_STD, pad_token_id=0,
        position_embedding_type="absolute", architectures=["BertModel"], torch_dtype="float32")
    write_config(cfg, out, ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                            "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size",
                            "layer_norm_eps", "position_embedding_type", "pad_token_id"])
    # seed 6 of 1..12: the one where tanh-GELU (a likely runtime bug) misses the golden by the most
    # (1.2e-3 vs 7e-4..1.0e-3 for the others); the other wrong variants miss by > 1 anyway
    state = bert_pt_state(cfg, seed=6)
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})

    model = FlaxBertModel(cfg, seed=0, dtype=jnp.float32)
    params = pt_to_flax(state, model.params)
    res = model(
        input_ids=jnp.asarray(batch["input_ids"], jnp.int32),
        attention_mask=jnp.asarray(batch["attention_mask"], jnp.int32),
        token_type_ids=jnp.asarray(batch["token_type_ids"], jnp.int32),
        position_ids=jnp.broadcast_to(jnp.arange(batch["input_ids"].shape[1]), batch["input_ids"].shape),
        params=params, train=False)
    hs = np.asarray(res.last_hidden_state, np.float32)
    m = batch["attention_mask"][..., None].astype(np.float64)
    mean = (hs.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    emb = mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
    golden = dict(batch)
    golden.update({"last_hidden_state": hs, "pooler_output": np.asarray(res.pooler_output, np.float32),
                   "sentence_embedding": emb.astype(np.float32)})
    save_file(golden, os.path.join(out, "golden.safetensors"))


def make_llama(out, tok, hidden, heads, kv_heads, inter, theta, tied, seed):
    fresh_dir(out)
    print(f"  {out}")
    batch = write_tokenizer_and_inputs(tok, LLAMA_INPUTS, out)
    batch.pop("token_type_ids")
    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(with_added_tokens=True), hidden_size=hidden, intermediate_size=inter,
        num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv_heads, hidden_act="silu",
        max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=theta, tie_word_embeddings=tied,
        initializer_range=WEIGHT_STD, bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"),
        pad_token_id=tok.token_to_id("<pad>"), architectures=["LlamaForCausalLM"], torch_dtype="float32")
    write_config(cfg, out, ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                            "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
                            "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
                            "tie_word_embeddings", "attention_bias", "mlp_bias"])
    state = llama_pt_state(cfg, seed=seed)
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})

    model = FlaxLlamaForCausalLM(cfg, seed=0, dtype=jnp.float32)
    flax_state = dict(state)
    if tied:  # Flax Llama has no weight tying: give its lm_head the embedding matrix
        flax_state["lm_head.weight"] = state["model.embed_tokens.weight"]
    params = pt_to_flax(flax_state, model.params)
    ids = batch["input_ids"]
    patch = rope_theta_patch(theta) if theta != 10000.0 else contextlib.nullcontext()
    with patch:
        res = model(
            input_ids=jnp.asarray(ids, jnp.int32),
            attention_mask=jnp.asarray(batch["attention_mask"], jnp.int32),
            position_ids=jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape),
            params=params, train=False)
    golden = dict(batch)
    golden["logits"] = np.asarray(res.logits, np.float32)
    save_file(golden, os.path.join(out, "golden.safetensors"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "fixtures"))
    ap.add_argument("--no-check", action="store_true")
    args = ap.parse_args()
    root = os.path.normpath(args.out)
    make_bert(os.path.join(root, "tiny-bert"))
    llama_tok = build_llama_tokenizer()
    make_llama(os.path.join(root, "tiny-llama"), llama_tok, hidden=32, heads=4, kv_heads=2, inter=64,
               theta=500000.0, tied=False, seed=2)
    make_llama(os.path.join(root, "tiny-llama-tied"), llama_tok, hidden=16, heads=2, kv_heads=2, inter=32,
               theta=10000.0, tied=True, seed=3)
    for name in ["tiny-bert", "tiny-llama", "tiny-llama-tied"]:
        d = os.path.join(root, name)
        sizes = {f: os.path.getsize(os.path.join(d, f)) for f in sorted(os.listdir(d))}
        total = sum(sizes.values())
        print(f"  {name}: {total / 1024:.1f} KiB " + ", ".join(f"{f} {s}" for f, s in sizes.items()))
        assert total < 300 * 1024
    if not args.no_check:
        sys.exit(subprocess.call([sys.executable, os.path.join(HERE, "check_runtime_fixtures.py"),
                                  "--fixtures", root]))


if __name__ == "__main__":
    main()
