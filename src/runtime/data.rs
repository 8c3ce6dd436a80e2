//! Evaluation data: preprocessed input tensors (the samples' splits), token sequences from a safetensors file, or
//! a text file with one sample per line, tokenised by the model's `tokenizer.json` with the padding and truncation
//! that file sets.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::{DType, Model};
use crate::quant::pass::TensorData;

/// One tokenised sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSequence {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Segment ids (BERT); zeros when the data has none.
    pub type_ids: Vec<u32>,
    /// `false` for padding: never attended to, never scored.
    pub mask: Vec<bool>,
}

impl TokenSequence {
    /// A sequence with every token real and segment 0.
    pub fn new(ids: Vec<u32>) -> TokenSequence {
        let len = ids.len();
        TokenSequence { ids, type_ids: vec![0; len], mask: vec![true; len] }
    }

    /// Number of unmasked tokens.
    pub fn valid_len(&self) -> usize {
        self.mask.iter().filter(|m| **m).count()
    }

    /// Checks ids against a vocabulary, segment ids against theirs, and the length against a position table.
    pub fn check(&self, vocab_size: usize, type_vocab_size: Option<usize>, max_positions: usize) -> Result<()> {
        let bad = |reason: String| Err(Error::BadSequence { reason, path: PathBuf::new() });
        if self.type_ids.len() != self.ids.len() || self.mask.len() != self.ids.len() {
            return bad("ids, segment ids and mask differ in length".into());
        }
        if self.ids.is_empty() {
            return bad("empty".into());
        }
        if self.ids.len() > max_positions {
            return bad(format!("{} tokens, the model has {max_positions} positions", self.ids.len()));
        }
        if let Some(id) = self.ids.iter().find(|&&id| id as usize >= vocab_size) {
            return bad(format!("token id {id} is outside the vocabulary of {vocab_size}"));
        }
        if let Some(types) = type_vocab_size
            && let Some(t) = self.type_ids.iter().find(|&&t| t as usize >= types)
        {
            return bad(format!("token type {t} is outside the {types} segment types"));
        }
        Ok(())
    }
}

/// What a model is evaluated on.
#[derive(Clone, Debug)]
pub enum EvalData {
    /// Preprocessed inputs `[N, …sample shape]`, with the expected class of each when labelled.
    Samples {
        /// All samples, row-major.
        inputs: Vec<f32>,
        /// The shape of one sample.
        sample_shape: Vec<usize>,
        /// Expected class per sample.
        labels: Option<Vec<i64>>,
    },
    /// Tokenised text.
    Sequences(Vec<TokenSequence>),
}

impl EvalData {
    /// Number of samples.
    pub fn len(&self) -> usize {
        match self {
            EvalData::Samples { inputs, sample_shape, .. } => {
                inputs.len() / sample_shape.iter().product::<usize>().max(1)
            }
            EvalData::Sequences(s) => s.len(),
        }
    }

    /// Whether there is nothing to evaluate.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads `path`: a `.safetensors` file of `inputs` (+ `labels`) or `input_ids` (+ `attention_mask`,
    /// `token_type_ids`), or a text file tokenised with `tokenizer.json` from `model_folder`.
    pub fn load(path: &Path, model_folder: &Path) -> Result<EvalData> {
        let data = if path.extension().is_some_and(|e| e == "safetensors") {
            Self::from_safetensors(path)?
        } else {
            Self::from_text(path, &model_folder.join("tokenizer.json"))?
        };
        if data.is_empty() {
            return Err(bad_data(path, "holds no samples".into()));
        }
        Ok(data)
    }

    /// The data file a model folder brings, if any: `eval.safetensors`, `eval.txt` or `inputs.txt`.
    pub fn default_path(model_folder: &Path) -> Option<PathBuf> {
        ["eval.safetensors", "eval.txt", "inputs.txt"].iter().map(|f| model_folder.join(f)).find(|p| p.is_file())
    }

    /// The calibration file a model folder brings, if any: `calib.safetensors` or `calib.txt`.
    pub fn default_calibration_path(model_folder: &Path) -> Option<PathBuf> {
        ["calib.safetensors", "calib.txt"].iter().map(|f| model_folder.join(f)).find(|p| p.is_file())
    }

    fn from_safetensors(path: &Path) -> Result<EvalData> {
        let file = Model::open(path)?;
        if file.tensor_by_name("inputs").is_some() {
            let (inputs, shape) = float_tensor(&file, "inputs")?;
            let labels = match file.tensor_by_name("labels") {
                None => None,
                Some(_) => {
                    let (labels, label_shape) = int_tensor(&file, "labels")?;
                    if label_shape != shape[..1] {
                        return Err(bad_data(path, format!("labels {label_shape:?} do not match inputs {shape:?}")));
                    }
                    Some(labels)
                }
            };
            let Some((_, sample_shape)) = shape.split_first() else {
                return Err(bad_data(path, "inputs is a scalar".into()));
            };
            return Ok(EvalData::Samples { inputs, sample_shape: sample_shape.to_vec(), labels });
        }
        if file.tensor_by_name("input_ids").is_none() {
            return Err(bad_data(path, "has neither an `inputs` nor an `input_ids` tensor".into()));
        }
        let (ids, shape) = int_tensor(&file, "input_ids")?;
        let [n, t] = shape[..] else {
            return Err(bad_data(path, format!("input_ids is {shape:?}, expected [samples, tokens]")));
        };
        if n == 0 || t == 0 {
            return Err(bad_data(path, format!("input_ids is {shape:?}: no tokens to run")));
        }
        let optional = |name: &str, default: i64| -> Result<Vec<i64>> {
            match file.tensor_by_name(name) {
                None => Ok(vec![default; n * t]),
                Some(_) => {
                    let (values, s) = int_tensor(&file, name)?;
                    if s != shape {
                        return Err(bad_data(path, format!("{name} is {s:?}, input_ids {shape:?}")));
                    }
                    Ok(values)
                }
            }
        };
        let mask = optional("attention_mask", 1)?;
        let types = optional("token_type_ids", 0)?;
        let to_u32 = |v: i64, what: &str| {
            u32::try_from(v).map_err(|_| bad_data(path, format!("{what} {v} is negative or too large")))
        };
        let mut sequences = Vec::with_capacity(n);
        for s in 0..n {
            let row = s * t..(s + 1) * t;
            sequences.push(TokenSequence {
                ids: ids[row.clone()].iter().map(|&v| to_u32(v, "token id")).collect::<Result<_>>()?,
                type_ids: types[row.clone()].iter().map(|&v| to_u32(v, "token type")).collect::<Result<_>>()?,
                mask: mask[row].iter().map(|&m| m != 0).collect(),
            });
        }
        Ok(EvalData::Sequences(sequences))
    }

    fn from_text(path: &Path, tokenizer_path: &Path) -> Result<EvalData> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if !tokenizer_path.is_file() {
            return Err(bad_data(
                path,
                format!("is text, and the model has no tokenizer.json ({}) to tokenise it", tokenizer_path.display()),
            ));
        }
        let tokenizer = load_tokenizer(tokenizer_path)?;
        let encodings =
            tokenizer.encode_batch(lines, true).map_err(|e| bad_data(path, format!("cannot be tokenised: {e}")))?;
        Ok(EvalData::Sequences(
            encodings
                .iter()
                .map(|e| TokenSequence {
                    ids: e.get_ids().to_vec(),
                    type_ids: e.get_type_ids().to_vec(),
                    mask: e.get_attention_mask().iter().map(|&m| m != 0).collect(),
                })
                .collect(),
        ))
    }
}

/// The most tokens a sequence may be padded to by a tokenizer.json's settings (`padding` `Fixed` length,
/// `pad_to_multiple_of`): larger values are refused before the tokenizer allocates them.
pub const MAX_PADDED_TOKENS: u64 = 32_768;

/// Reads a tokenizer.json: checked as JSON and for padding sizes first, because the tokenizers library panics on
/// some malformed files and allocates whatever padding length the file asks for.
pub(crate) fn load_tokenizer(tokenizer_path: &Path) -> Result<tokenizers::Tokenizer> {
    let text = std::fs::read_to_string(tokenizer_path).map_err(|e| Error::io("cannot read", tokenizer_path, e))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad_data(tokenizer_path, format!("is not valid JSON: {e}")))?;
    if let Some(padding) = doc.get("padding").filter(|p| !p.is_null()) {
        let fixed = padding.get("strategy").and_then(|s| s.get("Fixed"));
        for (field, value) in
            [("padding.strategy.Fixed", fixed), ("padding.pad_to_multiple_of", padding.get("pad_to_multiple_of"))]
        {
            let Some(value) = value.filter(|v| !v.is_null()) else { continue };
            if value.as_u64().is_none_or(|n| n > MAX_PADDED_TOKENS) {
                return Err(bad_data(
                    tokenizer_path,
                    format!("{field} is {value}, more than the {MAX_PADDED_TOKENS} tokens a sequence may have"),
                ));
            }
        }
    }
    let parsed = std::panic::catch_unwind(|| <tokenizers::Tokenizer as std::str::FromStr>::from_str(&text));
    match parsed {
        Ok(Ok(tokenizer)) => Ok(tokenizer),
        Ok(Err(e)) => Err(bad_data(tokenizer_path, format!("cannot be read as a tokenizer: {e}"))),
        Err(_) => {
            Err(bad_data(tokenizer_path, "cannot be read as a tokenizer (the tokenizers library panicked)".into()))
        }
    }
}

fn bad_data(path: &Path, problem: String) -> Error {
    Error::BadData { problem, path: path.to_owned() }
}

/// A float tensor of a data file, widened to f32, with its shape.
fn float_tensor(file: &Model, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
    let id = file.tensor_by_name(name).ok_or_else(|| bad_data(&file.path, format!("has no tensor {name:?}")))?;
    if !file.tensor(id).is_analysable() {
        return Err(bad_data(&file.path, format!("{name} is {}, expected a float tensor", file.tensor(id).dtype)));
    }
    let data = TensorData::of(file, id)?;
    let mut buf = Vec::new();
    Ok((data.values(0..data.len(), &mut buf).to_vec(), file.tensor(id).shape.clone()))
}

/// An integer tensor (I64, I32, I16, I8, U8) of a data file, as i64, with its shape.
fn int_tensor(file: &Model, name: &str) -> Result<(Vec<i64>, Vec<usize>)> {
    let id = file.tensor_by_name(name).ok_or_else(|| bad_data(&file.path, format!("has no tensor {name:?}")))?;
    let info = file.tensor(id);
    let bytes = file.tensor_bytes(id);
    let values: Vec<i64> = match info.dtype {
        DType::I64 => bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default())).collect(),
        DType::I32 => {
            bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap_or_default()) as i64).collect()
        }
        DType::I16 => bytes.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i64).collect(),
        DType::I8 => bytes.iter().map(|&b| b as i8 as i64).collect(),
        DType::U8 => bytes.iter().map(|&b| b as i64).collect(),
        other => return Err(bad_data(&file.path, format!("{name} is {other}, expected an integer tensor"))),
    };
    Ok((values, info.shape.clone()))
}
