//! Llama decoders (`model_type` "llama", Hugging Face `LlamaForCausalLM`): RMS norm, rotary position embedding,
//! grouped-query causal attention with a key/value cache, SwiGLU MLP, tied or separate output embedding.

use std::sync::Arc;

use super::TokenSequence;
use super::config::{self, ConfigMap};
use super::linear::{Embedding, Linear, Tap, no_tap};
use super::ops::{self, AttentionShape};
use super::weights::{Weight, WeightSource};
use crate::error::Result;

/// The parts of a `LlamaConfig` the forward pass uses.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Token vocabulary.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Added to the mean square in every RMS norm.
    pub rms_norm_eps: f32,
    /// Rotary embedding base.
    pub rope_theta: f32,
    /// Whether the output projection is the token embedding (no `lm_head.weight`).
    pub tie_word_embeddings: bool,
    /// Whether q/k/v/o projections have biases.
    pub attention_bias: bool,
    /// Longest sequence the model was trained for.
    pub max_position_embeddings: usize,
}

/// The rotary base: `rope_theta`, or `rope_parameters.rope_theta` as transformers 5 writes it (whose `rope_type`
/// must then be "default": scaled variants are not implemented).
fn rope_theta(c: &ConfigMap) -> Result<f32> {
    match c.get("rope_parameters") {
        None | Some(serde_json::Value::Null) => config::f32_field(c, "rope_theta", 10000.0),
        Some(serde_json::Value::Object(p)) => {
            let rope_type = config::string(p, "rope_type", "default")?;
            if rope_type != "default" {
                return Err(config::unsupported(format!(
                    "rope_parameters.rope_type {rope_type:?} is not implemented (plain rotary embedding only)"
                )));
            }
            config::f32_field(p, "rope_theta", config::f32_field(c, "rope_theta", 10000.0)?)
        }
        Some(other) => Err(config::unsupported(format!("rope_parameters is {other}, not an object"))),
    }
}

impl LlamaConfig {
    /// Reads the fields from a parsed `config.json`; refuses what this runtime does not implement.
    pub fn from_config(c: &ConfigMap) -> Result<LlamaConfig> {
        config::expect_str(c, "hidden_act", "silu")?;
        if c.get("rope_scaling").is_some_and(|v| !v.is_null()) {
            return Err(config::unsupported("rope_scaling is not implemented (plain rotary embedding only)".into()));
        }
        if config::bool_field(c, "mlp_bias", false)? {
            return Err(config::unsupported("mlp_bias true is not implemented".into()));
        }
        let hidden_size = config::usize_field(c, "hidden_size", None)?;
        let heads = config::usize_field(c, "num_attention_heads", None)?;
        if heads == 0 {
            return Err(config::unsupported("num_attention_heads is 0".into()));
        }
        let kv_heads = config::usize_field(c, "num_key_value_heads", Some(heads))?;
        let head_dim = config::usize_field(c, "head_dim", Some(hidden_size / heads))?;
        if kv_heads == 0 || heads % kv_heads != 0 || head_dim % 2 != 0 {
            return Err(config::unsupported(format!(
                "{heads} attention heads, {kv_heads} key/value heads of width {head_dim}: heads must be a multiple of \
                 key/value heads and the width even"
            )));
        }
        Ok(LlamaConfig {
            vocab_size: config::usize_field(c, "vocab_size", None)?,
            hidden_size,
            intermediate_size: config::usize_field(c, "intermediate_size", None)?,
            num_hidden_layers: config::usize_field(c, "num_hidden_layers", None)?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: config::f32_field(c, "rms_norm_eps", 1e-6)?,
            rope_theta: rope_theta(c)?,
            tie_word_embeddings: config::bool_field(c, "tie_word_embeddings", false)?,
            attention_bias: config::bool_field(c, "attention_bias", false)?,
            max_position_embeddings: config::usize_field(c, "max_position_embeddings", Some(2048))?,
        })
    }
}

#[derive(Debug)]
struct DecoderLayer {
    input_norm: Arc<Weight>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_attention_norm: Arc<Weight>,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A Llama decoder ready to run.
#[derive(Debug)]
pub struct LlamaNet {
    /// Its configuration.
    pub config: LlamaConfig,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    final_norm: Arc<Weight>,
    lm_head: Linear,
}

/// Keys and values of the positions seen so far, per layer, for incremental decoding.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    valid: Vec<bool>,
}

impl KvCache {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.valid.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.valid.is_empty()
    }

    /// Forgets every position from `len` on (no effect when `len >= self.len()`).
    pub fn truncate(&mut self, len: usize) {
        let positions = self.valid.len().max(1);
        for keys in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let width = keys.len() / positions;
            keys.truncate(len * width);
        }
        self.valid.truncate(len);
    }
}

impl LlamaNet {
    /// Binds every weight, checking names and shapes against the config.
    pub fn build(config: LlamaConfig, w: &WeightSource) -> Result<LlamaNet> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let q_width = config.num_attention_heads * config.head_dim;
        let kv_width = config.num_key_value_heads * config.head_dim;
        let bias = config.attention_bias;
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let n = format!("model.layers.{l}");
                Ok(DecoderLayer {
                    input_norm: w.get(&format!("{n}.input_layernorm.weight"), Some(&[h]))?,
                    q: Linear::load(w, &format!("{n}.self_attn.q_proj"), q_width, h, bias)?,
                    k: Linear::load(w, &format!("{n}.self_attn.k_proj"), kv_width, h, bias)?,
                    v: Linear::load(w, &format!("{n}.self_attn.v_proj"), kv_width, h, bias)?,
                    o: Linear::load(w, &format!("{n}.self_attn.o_proj"), h, q_width, bias)?,
                    post_attention_norm: w.get(&format!("{n}.post_attention_layernorm.weight"), Some(&[h]))?,
                    gate: Linear::load(w, &format!("{n}.mlp.gate_proj"), i, h, false)?,
                    up: Linear::load(w, &format!("{n}.mlp.up_proj"), i, h, false)?,
                    down: Linear::load(w, &format!("{n}.mlp.down_proj"), h, i, false)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed_tokens = Embedding::load(w, "model.embed_tokens.weight", config.vocab_size, h)?;
        let lm_head = if w.has("lm_head.weight") {
            Linear::load_tensors(w, "lm_head.weight", None, config.vocab_size, h)?
        } else if config.tie_word_embeddings {
            Linear::load_tensors(w, "model.embed_tokens.weight", None, config.vocab_size, h)?
        } else {
            return Err(config::unsupported(
                "no lm_head.weight and tie_word_embeddings is false: the output projection is missing".into(),
            ));
        };
        Ok(LlamaNet { final_norm: w.get("model.norm.weight", Some(&[h]))?, embed_tokens, lm_head, layers, config })
    }

    /// An empty cache for this model.
    pub fn new_cache(&self) -> KvCache {
        let layers = self.config.num_hidden_layers;
        KvCache { keys: vec![Vec::new(); layers], values: vec![Vec::new(); layers], valid: Vec::new() }
    }

    /// Runs `seq` after the positions already in `cache` (which it extends) and returns the logits
    /// `[tokens, vocab]`. Token `i` is at position `cache.len() + i`; masked tokens are never attended to.
    pub fn forward(&self, seq: &TokenSequence, cache: &mut KvCache) -> Result<Vec<f32>> {
        self.forward_tapped(seq, cache, &mut no_tap())
    }

    /// Checks a sequence against the vocabulary.
    pub fn check(&self, seq: &TokenSequence) -> Result<()> {
        seq.check(self.config.vocab_size, None, usize::MAX)
    }

    /// [`LlamaNet::forward`], showing the input of every linear layer to `tap`.
    pub fn forward_tapped(&self, seq: &TokenSequence, cache: &mut KvCache, tap: &mut Tap) -> Result<Vec<f32>> {
        let c = &self.config;
        self.check(seq)?;
        let (h, t) = (c.hidden_size, seq.ids.len());
        let first_position = cache.len();
        let mut x = vec![0.0f32; t * h];
        for (row, &id) in x.chunks_exact_mut(h).zip(&seq.ids) {
            self.embed_tokens.add_row_into(id as usize, row);
        }
        cache.valid.extend_from_slice(&seq.mask);
        let keys = cache.len();
        let shape = AttentionShape {
            queries: t,
            keys,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            causal: true,
        };
        for (l, layer) in self.layers.iter().enumerate() {
            let mut normed = x.clone();
            ops::rms_norm(&mut normed, h, &layer.input_norm.values, c.rms_norm_eps);
            let mut q = layer.q.apply(&normed, t, tap);
            let mut k = layer.k.apply(&normed, t, tap);
            let v = layer.v.apply(&normed, t, tap);
            ops::rotary(&mut q, c.num_attention_heads, c.head_dim, first_position, c.rope_theta);
            ops::rotary(&mut k, c.num_key_value_heads, c.head_dim, first_position, c.rope_theta);
            cache.keys[l].extend_from_slice(&k);
            cache.values[l].extend_from_slice(&v);
            let context = ops::attention(&q, &cache.keys[l], &cache.values[l], Some(&cache.valid), shape);
            let attended = layer.o.apply(&context, t, tap);
            ops::add_in_place(&mut x, &attended);
            let mut normed = x.clone();
            ops::rms_norm(&mut normed, h, &layer.post_attention_norm.values, c.rms_norm_eps);
            let mut gate = layer.gate.apply(&normed, t, tap);
            let up = layer.up.apply(&normed, t, tap);
            ops::silu(&mut gate);
            for (g, u) in gate.iter_mut().zip(&up) {
                *g *= u;
            }
            let down = layer.down.apply(&gate, t, tap);
            ops::add_in_place(&mut x, &down);
        }
        ops::rms_norm(&mut x, h, &self.final_norm.values, c.rms_norm_eps);
        Ok(self.lm_head.apply(&x, t, tap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn theta(json: &str) -> Result<f32> {
        rope_theta(&serde_json::from_str::<ConfigMap>(json).unwrap())
    }

    #[test]
    fn rope_theta_is_read_where_transformers_4_and_5_write_it() {
        assert_eq!(theta(r#"{}"#).unwrap(), 10000.0);
        assert_eq!(theta(r#"{"rope_theta": 500000.0}"#).unwrap(), 500000.0);
        assert_eq!(
            theta(r#"{"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}"#).unwrap(),
            100000.0
        );
        assert_eq!(theta(r#"{"rope_parameters": null, "rope_theta": 5.0}"#).unwrap(), 5.0);
        let scaled = theta(r#"{"rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0}}"#);
        assert!(scaled.unwrap_err().to_string().contains("llama3"));
        assert!(theta(r#"{"rope_parameters": 3}"#).is_err());
    }
}
