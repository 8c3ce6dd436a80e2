//! BERT encoders (`model_type` "bert", Hugging Face `BertModel`): embeddings, post-norm encoder layers, and
//! sentence embeddings by attention-masked mean pooling and L2 normalisation.

use std::sync::Arc;

use super::TokenSequence;
use super::config::{self, ConfigMap};
use super::ops::{self, AttentionShape};
use super::weights::{Weight, WeightSource};
use crate::error::{Error, Result};

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

#[derive(Debug)]
struct Dense {
    weight: Arc<Weight>,
    bias: Arc<Weight>,
}

impl Dense {
    fn load(w: &WeightSource, name: &str, outputs: usize, inputs: usize) -> Result<Dense> {
        Ok(Dense {
            weight: w.get_linear(&format!("{name}.weight"), outputs, inputs)?,
            bias: w.get(&format!("{name}.bias"), Some(&[outputs]))?,
        })
    }

    /// Layers reading the same input, as one layer whose outputs are theirs side by side.
    fn concat(parts: &[Dense]) -> Dense {
        let inputs = parts[0].weight.shape[0];
        let outputs: usize = parts.iter().map(|p| p.weight.shape[1]).sum();
        let mut weight = Vec::with_capacity(inputs * outputs);
        for r in 0..inputs {
            for p in parts {
                let width = p.weight.shape[1];
                weight.extend_from_slice(&p.weight.values[r * width..(r + 1) * width]);
            }
        }
        let name = parts.iter().map(|p| p.weight.name.as_str()).collect::<Vec<_>>().join(" + ");
        let bias = parts.iter().flat_map(|p| p.bias.values.iter().copied()).collect();
        Dense {
            weight: Arc::new(Weight { name: name.clone(), shape: vec![inputs, outputs], values: weight }),
            bias: Arc::new(Weight { name, shape: vec![outputs], values: bias }),
        }
    }

    fn apply(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (inputs, outputs) = (self.weight.shape[0], self.weight.shape[1]);
        ops::linear(x, rows, inputs, &self.weight.values, outputs, Some(&self.bias.values))
    }
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
    /// Query, key and value projections side by side (`[hidden, 3·hidden]`): one product instead of three.
    qkv: Dense,
    attention_out: Dense,
    attention_norm: Norm,
    intermediate: Dense,
    output: Dense,
    output_norm: Norm,
}

/// A BERT encoder ready to run.
#[derive(Debug)]
pub struct BertNet {
    /// Its configuration.
    pub config: BertConfig,
    word_embeddings: Arc<Weight>,
    position_embeddings: Arc<Weight>,
    token_type_embeddings: Arc<Weight>,
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
        let p = name_prefix(w).ok_or_else(|| {
            Error::Unsupported("no embeddings.word_embeddings.weight: not a BertModel checkpoint".into())
        })?;
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let n = format!("{p}encoder.layer.{l}");
                Ok(EncoderLayer {
                    qkv: Dense::concat(&[
                        Dense::load(w, &format!("{n}.attention.self.query"), h, h)?,
                        Dense::load(w, &format!("{n}.attention.self.key"), h, h)?,
                        Dense::load(w, &format!("{n}.attention.self.value"), h, h)?,
                    ]),
                    attention_out: Dense::load(w, &format!("{n}.attention.output.dense"), h, h)?,
                    attention_norm: Norm::load(w, &format!("{n}.attention.output.LayerNorm"), h)?,
                    intermediate: Dense::load(w, &format!("{n}.intermediate.dense"), i, h)?,
                    output: Dense::load(w, &format!("{n}.output.dense"), h, i)?,
                    output_norm: Norm::load(w, &format!("{n}.output.LayerNorm"), h)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BertNet {
            word_embeddings: w.get(&format!("{p}embeddings.word_embeddings.weight"), Some(&[config.vocab_size, h]))?,
            position_embeddings: w.get(
                &format!("{p}embeddings.position_embeddings.weight"),
                Some(&[config.max_position_embeddings, h]),
            )?,
            token_type_embeddings: w
                .get(&format!("{p}embeddings.token_type_embeddings.weight"), Some(&[config.type_vocab_size, h]))?,
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
        self.check(seq)?;
        let h = self.config.hidden_size;
        let t = seq.ids.len();
        let mut x = vec![0.0f32; t * h];
        for (pos, row) in x.chunks_exact_mut(h).enumerate() {
            let word = &self.word_embeddings.values[seq.ids[pos] as usize * h..][..h];
            let position = &self.position_embeddings.values[pos * h..][..h];
            let segment = &self.token_type_embeddings.values[seq.type_ids[pos] as usize * h..][..h];
            for (j, v) in row.iter_mut().enumerate() {
                *v = word[j] + segment[j] + position[j];
            }
        }
        let eps = self.config.layer_norm_eps;
        self.embeddings_norm.apply(&mut x, eps);
        let heads = self.config.num_attention_heads;
        let shape = AttentionShape { queries: t, keys: t, heads, kv_heads: heads, head_dim: h / heads, causal: false };
        for layer in &self.layers {
            let qkv = layer.qkv.apply(&x, t);
            let (mut q, mut k, mut v) =
                (Vec::with_capacity(t * h), Vec::with_capacity(t * h), Vec::with_capacity(t * h));
            for row in qkv.chunks_exact(3 * h) {
                q.extend_from_slice(&row[..h]);
                k.extend_from_slice(&row[h..2 * h]);
                v.extend_from_slice(&row[2 * h..]);
            }
            let context = ops::attention(&q, &k, &v, Some(&seq.mask), shape);
            let mut attended = layer.attention_out.apply(&context, t);
            ops::add_in_place(&mut attended, &x);
            layer.attention_norm.apply(&mut attended, eps);
            let mut inner = layer.intermediate.apply(&attended, t);
            match self.config.activation {
                Activation::Gelu => ops::gelu(&mut inner),
                Activation::Relu => ops::relu(&mut inner),
            }
            x = layer.output.apply(&inner, t);
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
