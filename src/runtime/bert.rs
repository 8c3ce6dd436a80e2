//! BERT encoders (`model_type` "bert", Hugging Face `BertModel`): embeddings, post-norm encoder layers, and
//! sentence embeddings by attention-masked mean pooling and L2 normalisation.

use std::sync::Arc;

use super::TokenSequence;
use super::config::{self, ConfigMap};
use super::linear::{Embedding, Linear, Tap, no_tap};
use super::ops::{self, AttentionShape};
use super::weights::{Weight, WeightSource};
use crate::error::Result;

/// The parts of a `BertConfig` the forward pass uses.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// Token vocabulary.
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Longest sequence the position table covers.
    pub max_position_embeddings: usize,
    /// Segment (token type) vocabulary.
    pub type_vocab_size: usize,
    /// Added to the variance in every layer norm.
    pub layer_norm_eps: f32,
    /// The feed-forward activation.
    pub activation: Activation,
}

/// Feed-forward activations a BERT config may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `"gelu"`: exact erf GELU.
    Gelu,
    /// `"relu"`.
    Relu,
}

impl BertConfig {
    /// Reads the fields from a parsed `config.json`; refuses what this runtime does not implement.
    pub fn from_config(c: &ConfigMap) -> Result<BertConfig> {
        config::expect_str(c, "position_embedding_type", "absolute")?;
        let activation = match config::string(c, "hidden_act", "gelu")? {
            "gelu" => Activation::Gelu,
            "relu" => Activation::Relu,
            other => return Err(config::unsupported(format!("hidden_act {other:?} (gelu and relu are implemented)"))),
        };
        let cfg = BertConfig {
            vocab_size: config::usize_field(c, "vocab_size", None)?,
            hidden_size: config::usize_field(c, "hidden_size", None)?,
            num_hidden_layers: config::usize_field(c, "num_hidden_layers", None)?,
            num_attention_heads: config::usize_field(c, "num_attention_heads", None)?,
            intermediate_size: config::usize_field(c, "intermediate_size", None)?,
            max_position_embeddings: config::usize_field(c, "max_position_embeddings", Some(512))?,
            type_vocab_size: config::usize_field(c, "type_vocab_size", Some(2))?,
            layer_norm_eps: config::f32_field(c, "layer_norm_eps", 1e-12)?,
            activation,
        };
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(config::unsupported(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        Ok(cfg)
    }
}

#[derive(Debug)]
struct Norm {
    weight: Arc<Weight>,
    bias: Arc<Weight>,
}

impl Norm {
    fn load(w: &WeightSource, name: &str, dim: usize) -> Result<Norm> {
        // Old checkpoints name them gamma/beta.
        let (wn, bn) = if w.has(&format!("{name}.gamma")) { ("gamma", "beta") } else { ("weight", "bias") };
        Ok(Norm {
            weight: w.get(&format!("{name}.{wn}"), Some(&[dim]))?,
            bias: w.get(&format!("{name}.{bn}"), Some(&[dim]))?,
        })
    }

    fn apply(&self, x: &mut [f32], eps: f32) {
        ops::layer_norm(x, self.weight.values.len(), &self.weight.values, &self.bias.values, eps);
    }
}

#[derive(Debug)]
struct EncoderLayer {
    qkv: Qkv,
    attention_out: Linear,
    attention_norm: Norm,
    intermediate: Linear,
    output: Linear,
    output_norm: Norm,
}

/// The query, key and value projections.
#[derive(Debug)]
enum Qkv {
    /// Side by side (`[hidden, 3·hidden]`): one product instead of three (their inputs are quantized alike).
    Fused(Linear),
    /// Apart, when their inputs are quantized differently.
    Split(Vec<Linear>),
}

impl Qkv {
    /// Queries, keys and values of `rows` rows, `[rows, hidden]` each.
    fn apply(&self, x: &[f32], rows: usize, h: usize, tap: &mut Tap) -> [Vec<f32>; 3] {
        match self {
            Qkv::Fused(linear) => {
                let qkv = linear.apply(x, rows, tap);
                let mut parts =
                    [Vec::with_capacity(rows * h), Vec::with_capacity(rows * h), Vec::with_capacity(rows * h)];
                for row in qkv.chunks_exact(3 * h) {
                    for (j, part) in parts.iter_mut().enumerate() {
                        part.extend_from_slice(&row[j * h..(j + 1) * h]);
                    }
                }
                parts
            }
            Qkv::Split(parts) => [0, 1, 2].map(|j| parts[j].apply(x, rows, tap)),
        }
    }
}

/// A BERT encoder ready to run.
#[derive(Debug)]
pub struct BertNet {
    /// Its configuration.
    pub config: BertConfig,
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    embeddings_norm: Norm,
    layers: Vec<EncoderLayer>,
}

/// The tensor-name prefix of a BERT checkpoint: none (`BertModel`) or `bert.` (task heads around it).
pub fn name_prefix(weights: &WeightSource) -> Option<&'static str> {
    ["", "bert."].into_iter().find(|p| weights.has(&format!("{p}embeddings.word_embeddings.weight")))
}

impl BertNet {
    /// Binds every weight, checking names and shapes against the config.
    pub fn build(config: BertConfig, w: &WeightSource) -> Result<BertNet> {
        let p = name_prefix(w).ok_or_else(|| w.missing("embeddings.word_embeddings.weight"))?;
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let n = format!("{p}encoder.layer.{l}");
                Ok(EncoderLayer {
                    qkv: match Linear::load_side_by_side(
                        w,
                        &["query", "key", "value"].map(|part| format!("{n}.attention.self.{part}")),
                        h,
                        h,
                        true,
                    )? {
                        Ok(fused) => Qkv::Fused(fused),
                        Err(parts) => Qkv::Split(parts),
                    },
                    attention_out: Linear::load(w, &format!("{n}.attention.output.dense"), h, h, true)?,
                    attention_norm: Norm::load(w, &format!("{n}.attention.output.LayerNorm"), h)?,
                    intermediate: Linear::load(w, &format!("{n}.intermediate.dense"), i, h, true)?,
                    output: Linear::load(w, &format!("{n}.output.dense"), h, i, true)?,
                    output_norm: Norm::load(w, &format!("{n}.output.LayerNorm"), h)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BertNet {
            word_embeddings: Embedding::load(
                w,
                &format!("{p}embeddings.word_embeddings.weight"),
                config.vocab_size,
                h,
            )?,
            position_embeddings: Embedding::load(
                w,
                &format!("{p}embeddings.position_embeddings.weight"),
                config.max_position_embeddings,
                h,
            )?,
            token_type_embeddings: Embedding::load(
                w,
                &format!("{p}embeddings.token_type_embeddings.weight"),
                config.type_vocab_size,
                h,
            )?,
            embeddings_norm: Norm::load(w, &format!("{p}embeddings.LayerNorm"), h)?,
            layers,
            config,
        })
    }

    /// Checks a sequence against the vocabularies and the position table.
    pub fn check(&self, seq: &TokenSequence) -> Result<()> {
        seq.check(self.config.vocab_size, Some(self.config.type_vocab_size), self.config.max_position_embeddings)
    }

    /// The last hidden state `[tokens, hidden]` of one sequence; masked tokens are not attended to.
    pub fn forward(&self, seq: &TokenSequence) -> Result<Vec<f32>> {
        self.forward_tapped(seq, &mut no_tap())
    }

    /// [`BertNet::forward`], showing the input of every linear layer to `tap`.
    pub fn forward_tapped(&self, seq: &TokenSequence, tap: &mut Tap) -> Result<Vec<f32>> {
        self.check(seq)?;
        let h = self.config.hidden_size;
        let t = seq.ids.len();
        let mut x = vec![0.0f32; t * h];
        for (pos, row) in x.chunks_exact_mut(h).enumerate() {
            // word + segment + position, added in that order.
            self.word_embeddings.add_row_into(seq.ids[pos] as usize, row);
            self.token_type_embeddings.add_row_into(seq.type_ids[pos] as usize, row);
            self.position_embeddings.add_row_into(pos, row);
        }
        let eps = self.config.layer_norm_eps;
        self.embeddings_norm.apply(&mut x, eps);
        let heads = self.config.num_attention_heads;
        let shape = AttentionShape { queries: t, keys: t, heads, kv_heads: heads, head_dim: h / heads, causal: false };
        for layer in &self.layers {
            let [q, k, v] = layer.qkv.apply(&x, t, h, tap);
            let context = ops::attention(&q, &k, &v, Some(&seq.mask), shape);
            let mut attended = layer.attention_out.apply(&context, t, tap);
            ops::add_in_place(&mut attended, &x);
            layer.attention_norm.apply(&mut attended, eps);
            let mut inner = layer.intermediate.apply(&attended, t, tap);
            match self.config.activation {
                Activation::Gelu => ops::gelu(&mut inner),
                Activation::Relu => ops::relu(&mut inner),
            }
            x = layer.output.apply(&inner, t, tap);
            ops::add_in_place(&mut x, &attended);
            layer.output_norm.apply(&mut x, eps);
        }
        Ok(x)
    }
}

/// Sentence embedding: the mean of the hidden states of unmasked tokens, scaled to unit L2 norm
/// (sentence-transformers' mean pooling + `Normalize`). Sums in f64; a zero vector stays zero.
pub fn sentence_embedding(hidden: &[f32], mask: &[bool], dim: usize) -> Vec<f32> {
    let mut sum = vec![0.0f64; dim];
    let mut count = 0usize;
    for (row, _) in hidden.chunks_exact(dim).zip(mask).filter(|(_, m)| **m) {
        count += 1;
        for (s, v) in sum.iter_mut().zip(row) {
            *s += *v as f64;
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / count.max(1) as f64).collect();
    let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
    mean.iter().map(|v| if norm > 0.0 { (v / norm) as f32 } else { 0.0 }).collect()
}
