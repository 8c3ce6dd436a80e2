//! Grouping tensors into layers by name, and guessing each layer's kind from its name and shape.

use std::cmp::Ordering;

/// What a layer is, as far as its name and shapes tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    /// A matrix multiply: a 2-D weight.
    Linear,
    /// A convolution: a weight with 3 or more dimensions.
    Conv,
    /// A lookup table: a 2-D weight whose name says embedding.
    Embedding,
    /// Layer, RMS or batch normalisation.
    Norm,
    /// Anything else (1-D parameters, buffers, integer tensors…).
    Other,
}

impl LayerKind {
    /// Lowercase name for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            LayerKind::Linear => "linear",
            LayerKind::Conv => "conv",
            LayerKind::Embedding => "embedding",
            LayerKind::Norm => "norm",
            LayerKind::Other => "other",
        }
    }
}

/// The layer a tensor belongs to: its name without the last dotted component (`x.weight` -> `x`), or the whole
/// name when it has no dot.
pub fn layer_name(tensor_name: &str) -> &str {
    match tensor_name.rsplit_once('.') {
        Some((layer, _)) if !layer.is_empty() => layer,
        _ => tensor_name,
    }
}

/// Classifies a layer from its name and the shape of its main tensor (`None` when it has no float tensor).
pub fn classify(layer_name: &str, main_shape: Option<&[usize]>) -> LayerKind {
    let lower = layer_name.to_ascii_lowercase();
    let components: Vec<&str> = lower.split('.').collect();
    let last = components.last().copied().unwrap_or("");
    let is_norm = lower.contains("norm") || components.iter().any(|c| is_norm_abbreviation(c));
    let Some(shape) = main_shape else { return LayerKind::Other };
    if is_norm && shape.len() <= 1 {
        return LayerKind::Norm;
    }
    let is_embedding =
        lower.contains("embed") || matches!(last, "wte" | "wpe" | "tok_embeddings" | "word_embeddings" | "shared");
    match shape.len() {
        2 if is_embedding => LayerKind::Embedding,
        2 => LayerKind::Linear,
        3.. => LayerKind::Conv,
        _ if is_norm => LayerKind::Norm,
        _ => LayerKind::Other,
    }
}

/// `ln`, `ln_f`, `ln1`, `bn`, `bn_2`, `bn1`: the usual short names of layer and batch norms.
fn is_norm_abbreviation(component: &str) -> bool {
    ["ln", "bn"].iter().any(|prefix| {
        component
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('_') || rest.chars().all(|c| c.is_ascii_digit()))
    })
}

/// Compares names so that digit runs compare as numbers: `layers.2` before `layers.10`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let a_len = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let b_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (a_num, b_num) = (trim_zeros(&a[..a_len]), trim_zeros(&b[..b_len]));
                let by_value = a_num.len().cmp(&b_num.len()).then_with(|| a_num.cmp(b_num));
                if by_value != Ordering::Equal {
                    return by_value;
                }
                let by_text = a[..a_len].cmp(&b[..b_len]);
                if by_text != Ordering::Equal {
                    return by_text;
                }
                a = &a[a_len..];
                b = &b[b_len..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|&&c| c == b'0').count();
    &digits[zeros..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names() {
        assert_eq!(layer_name("fc1.weight"), "fc1");
        assert_eq!(layer_name("model.layers.0.mlp.down_proj.bias"), "model.layers.0.mlp.down_proj");
        assert_eq!(layer_name("scale"), "scale");
        assert_eq!(layer_name(".weird"), ".weird");
    }

    #[test]
    fn kinds() {
        assert_eq!(classify("fc1", Some(&[128, 64])), LayerKind::Linear);
        assert_eq!(classify("conv1", Some(&[8, 1, 3, 3])), LayerKind::Conv);
        assert_eq!(classify("model.embed_tokens", Some(&[1000, 64])), LayerKind::Embedding);
        assert_eq!(classify("bert.embeddings.word_embeddings", Some(&[1000, 64])), LayerKind::Embedding);
        assert_eq!(classify("model.layers.0.input_layernorm", Some(&[64])), LayerKind::Norm);
        assert_eq!(classify("encoder.layer.0.attention.output.LayerNorm", Some(&[64])), LayerKind::Norm);
        assert_eq!(classify("transformer.h.0.ln_1", Some(&[64])), LayerKind::Norm);
        assert_eq!(classify("bn1", Some(&[64])), LayerKind::Norm);
        assert_eq!(classify("pooler.dense", Some(&[64, 64])), LayerKind::Linear);
        assert_eq!(classify("cls.predictions", Some(&[1000])), LayerKind::Other);
        assert_eq!(classify("position_ids", None), LayerKind::Other);
        assert_eq!(classify("lm_head", Some(&[1000, 64])), LayerKind::Linear);
    }

    #[test]
    fn natural_order() {
        let mut names = vec!["layers.10.w", "layers.2.w", "layers.1.w", "layers.02.w", "a"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(names, ["a", "layers.1.w", "layers.02.w", "layers.2.w", "layers.10.w"]);
    }
}
