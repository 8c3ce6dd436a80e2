//! The tokenizer of a GGUF export, read from a Hugging Face folder's `tokenizer.json`, `tokenizer_config.json`,
//! `config.json` and `chat_template.jinja` the way llama.cpp's converter reads them for a byte-level BPE
//! ("gpt2") tokenizer: every id up to the vocabulary size with its type (normal; control for special added tokens
//! and ones that look special such as `<|im_end|>`; user-defined for other added tokens; `[PADn]` unused for ids
//! with no token), the merges (`a b`, a space inside a part written as U+0120), the special token ids (from the
//! token strings of `tokenizer_config.json`, else the `*_token_id` of `config.json`), whether BOS/EOS are added (the
//! post-processor's template, else `add_bos_token`/`add_eos_token`), and the chat template.
//!
//! `tokenizer.ggml.pre` is chosen from the pre-tokenizer configuration (see [`pre_tokenizer_name`]).

use std::path::Path;

use serde_json::Value as Json;

use super::gguf::Value;
use crate::model::Model;

/// `llama_token_type` values.
mod token_type {
    pub const NORMAL: i32 = 1;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
}

/// A tokenizer as GGUF stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct Vocab {
    /// `tokenizer.ggml.pre`.
    pub pre: &'static str,
    /// Token texts by id.
    pub tokens: Vec<String>,
    /// Token types by id (`llama_token_type`).
    pub types: Vec<i32>,
    /// Merges, `left right`, highest priority first.
    pub merges: Vec<String>,
    /// Special token ids by GGUF name (`bos`, `eos`, `unknown`, `padding`).
    pub specials: Vec<(&'static str, u32)>,
    /// `tokenizer.ggml.add_bos_token`, when known.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`, when known.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`, when `tokenizer_config.json` says.
    pub add_space_prefix: Option<bool>,
    /// The Jinja chat template.
    pub chat_template: Option<String>,
}

impl Vocab {
    /// The `tokenizer.ggml.*` key-values, in the converter's order.
    pub fn metadata(&self) -> Vec<(String, Value)> {
        let key = |k: &str| format!("tokenizer.ggml.{k}");
        let mut out = vec![
            (key("model"), Value::Str("gpt2".into())),
            (key("pre"), Value::Str(self.pre.into())),
            (key("tokens"), Value::StrArray(self.tokens.clone())),
            (key("token_type"), Value::I32Array(self.types.clone())),
            (key("merges"), Value::StrArray(self.merges.clone())),
        ];
        for (name, id) in &self.specials {
            out.push((key(&format!("{name}_token_id")), Value::U32(*id)));
        }
        if let Some(add) = self.add_bos {
            out.push((key("add_bos_token"), Value::Bool(add)));
        }
        if let Some(add) = self.add_eos {
            out.push((key("add_eos_token"), Value::Bool(add)));
        }
        if let Some(add) = self.add_space_prefix {
            out.push((key("add_space_prefix"), Value::Bool(add)));
        }
        if let Some(template) = &self.chat_template {
            out.push(("tokenizer.chat_template".into(), Value::Str(template.clone())));
        }
        out
    }
}

fn read_json(path: &Path) -> std::result::Result<Option<Json>, String> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map(Some).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

/// Whether an added token looks like a control token although not marked special (the converter's rule).
fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<｜") && token.ends_with("｜>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

/// The llama.cpp pre-tokenizer name for a `tokenizer.json` pre-tokenizer, or why there is none.
///
/// llama.cpp's converter hashes the Hugging Face tokenizer's output on a test text and looks the hash up; that
/// needs the Python tokenizer. quantstudio reads the configuration: a byte-level pre-tokenizer with the GPT-2
/// regex (`ByteLevel` with `use_regex`, no prefix space), alone or after a `Digits` step, is the GPT-2 family;
/// whether digits are split one by one (an `individual_digits` step, or a vocabulary with no token of two or more
/// digits, so digit runs can never merge) tells `smollm` (llama.cpp splits `\p{N}` first) from `gpt-2`.
pub fn pre_tokenizer_name(
    pre: &Json,
    vocab: &serde_json::Map<String, Json>,
) -> std::result::Result<&'static str, String> {
    let steps: Vec<&Json> = match pre.get("type").and_then(Json::as_str) {
        Some("Sequence") => {
            pre.get("pretokenizers").and_then(Json::as_array).map(|a| a.iter().collect()).unwrap_or_default()
        }
        Some(_) => vec![pre],
        None => Vec::new(),
    };
    let kind = |s: &Json| s.get("type").and_then(Json::as_str).unwrap_or("?").to_owned();
    let described = steps.iter().map(|s| kind(s)).collect::<Vec<_>>().join(" + ");
    let refuse = || {
        Err(format!(
            "tokenizer.json pre-tokenizer {described} matches no family quantstudio names for llama.cpp \
             (byte-level GPT-2 regex: gpt-2, smollm)"
        ))
    };
    let (digits, byte_level) = match steps.as_slice() {
        [b] => (None, *b),
        [d, b] if kind(d) == "Digits" => (Some(*d), *b),
        _ => return refuse(),
    };
    let regex = byte_level.get("use_regex").and_then(Json::as_bool).unwrap_or(true);
    let prefix = byte_level.get("add_prefix_space").and_then(Json::as_bool).unwrap_or(false);
    if kind(byte_level) != "ByteLevel" || !regex || prefix {
        return refuse();
    }
    let split_digits = match digits {
        Some(d) => d.get("individual_digits").and_then(Json::as_bool) == Some(true),
        None => !vocab.keys().any(|t| t.chars().count() > 1 && t.chars().all(|c| c.is_ascii_digit())),
    };
    if digits.is_some() && !split_digits {
        return refuse();
    }
    Ok(if split_digits { "smollm" } else { "gpt-2" })
}

/// Reads the tokenizer of `model`'s folder; `Err` says why it cannot be written.
pub fn read(model: &Model, config: &serde_json::Map<String, Json>) -> std::result::Result<Vocab, String> {
    let folder = crate::runtime::model_folder(model);
    if folder.join("tokenizer.model").is_file() {
        return Err("SentencePiece tokenizers (tokenizer.model) are not written to GGUF yet".into());
    }
    let tokenizer = read_json(&folder.join("tokenizer.json"))?
        .ok_or("GGUF export needs tokenizer.json beside the weights (a byte-level BPE tokenizer)")?;
    let tokenizer_config = read_json(&folder.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let bpe = &tokenizer["model"];
    let model_kind = bpe.get("type").and_then(Json::as_str).unwrap_or("?");
    if model_kind != "BPE" {
        return Err(format!("tokenizer.json model is {model_kind}: GGUF export writes byte-level BPE tokenizers only"));
    }
    if bpe.get("byte_fallback").and_then(Json::as_bool) == Some(true) {
        return Err("tokenizer.json is a SentencePiece-style BPE (byte fallback): not written to GGUF yet".into());
    }
    let vocab = bpe.get("vocab").and_then(Json::as_object).ok_or("tokenizer.json has no model.vocab")?;
    let pre = pre_tokenizer_name(&tokenizer["pre_tokenizer"], vocab)?;

    // Ids: the vocabulary and the added tokens; the size is the config's vocab_size when larger.
    let added: Vec<(u32, String, bool)> = tokenizer
        .get("added_tokens")
        .and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| {
                    let id = u32::try_from(t.get("id")?.as_u64()?).ok()?;
                    let content = t.get("content")?.as_str()?.to_owned();
                    Some((id, content, t.get("special").and_then(Json::as_bool).unwrap_or(false)))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut by_id: std::collections::BTreeMap<u32, String> = std::collections::BTreeMap::new();
    for (token, id) in vocab {
        let id = id.as_u64().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| format!("token {token:?} has no id"))?;
        by_id.insert(id, token.clone());
    }
    for (id, content, _) in &added {
        by_id.insert(*id, content.clone());
    }
    // Two million ids is far beyond any real vocabulary: a larger id is a broken file, not a size to allocate.
    const MAX_TOKENS: u64 = 2_000_000;
    let highest = by_id.keys().next_back().map_or(0, |&i| u64::from(i) + 1);
    let size = config.get("vocab_size").and_then(Json::as_u64).unwrap_or(0).max(highest);
    if size > MAX_TOKENS {
        return Err(format!("the vocabulary has {size} ids, more than {MAX_TOKENS}"));
    }
    let mut tokens = Vec::with_capacity(size as usize);
    let mut types = Vec::with_capacity(size as usize);
    for id in 0..size as u32 {
        match by_id.get(&id) {
            None => {
                tokens.push(format!("[PAD{id}]"));
                types.push(token_type::UNUSED);
            }
            Some(token) => {
                let added = added.iter().find(|(i, _, _)| *i == id);
                types.push(match added {
                    Some((_, _, special)) if *special || looks_special(token) => token_type::CONTROL,
                    Some(_) => token_type::USER_DEFINED,
                    None => token_type::NORMAL,
                });
                tokens.push(token.clone());
            }
        }
    }

    let merges = match bpe.get("merges").and_then(Json::as_array) {
        None => Vec::new(),
        Some(list) => list
            .iter()
            .map(|m| match m {
                Json::String(s) => Ok(s.clone()),
                Json::Array(pair) if pair.len() == 2 => {
                    let part = |p: &Json| p.as_str().map(|s| s.replace(' ', "\u{120}"));
                    match (part(&pair[0]), part(&pair[1])) {
                        (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                        _ => Err("tokenizer.json has a merge that is not two strings".to_owned()),
                    }
                }
                _ => Err("tokenizer.json has a merge that is neither a string nor a pair".to_owned()),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?,
    };

    // Special tokens: the strings of tokenizer_config.json looked up among the added tokens, else config.json ids.
    let token_string = |typ: &str| -> Option<String> {
        match tokenizer_config.get(format!("{typ}_token"))? {
            Json::String(s) => Some(s.clone()),
            Json::Object(o) => o.get("content")?.as_str().map(str::to_owned),
            _ => None,
        }
    };
    let mut specials = Vec::new();
    for (typ, name) in [("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")] {
        let from_tokenizer =
            token_string(typ).and_then(|s| added.iter().find(|(_, c, _)| *c == s).map(|(id, _, _)| *id));
        let from_config =
            || config.get(&format!("{typ}_token_id")).and_then(Json::as_u64).and_then(|i| u32::try_from(i).ok());
        if let Some(id) = from_tokenizer.or_else(from_config).filter(|&id| u64::from(id) < size) {
            specials.push((name, id));
        }
    }

    // Whether BOS / EOS are added: a template post-processor that starts / ends with them, else the config flags.
    let (mut add_bos, mut add_eos) = (None, None);
    let post = &tokenizer["post_processor"];
    let processors: Vec<&Json> = match post.get("processors").and_then(Json::as_array) {
        Some(list) => list.iter().collect(),
        None if post.is_object() => vec![post],
        None => Vec::new(),
    };
    for processor in processors {
        match processor.get("type").and_then(Json::as_str) {
            Some("ByteLevel") => {
                add_bos.get_or_insert(false);
                add_eos.get_or_insert(false);
            }
            Some("TemplateProcessing") => {
                let single = processor.get("single").and_then(Json::as_array).cloned().unwrap_or_default();
                // The template of one sequence says it all: BOS is added exactly when it starts with the BOS
                // token, EOS when it ends with the EOS token (`[A]` alone adds neither).
                if !single.is_empty() {
                    let special = |j: Option<&Json>| {
                        j.and_then(|j| j.get("SpecialToken")?.get("id")?.as_str().map(str::to_owned))
                    };
                    add_bos = Some(special(single.first()).is_some_and(|t| Some(t) == token_string("bos")));
                    add_eos = Some(special(single.last()).is_some_and(|t| Some(t) == token_string("eos")));
                }
            }
            _ => {}
        }
    }
    let flag = |key: &str| tokenizer_config.get(key).and_then(Json::as_bool);
    let add_bos = add_bos.or_else(|| flag("add_bos_token"));
    let add_eos = add_eos.or_else(|| flag("add_eos_token"));
    let add_space_prefix = flag("add_prefix_space");

    let chat_template = match tokenizer_config.get("chat_template").and_then(Json::as_str) {
        Some(t) => Some(t.to_owned()),
        None => {
            let jinja = folder.join("chat_template.jinja");
            if jinja.is_file() {
                Some(std::fs::read_to_string(&jinja).map_err(|e| format!("cannot read {}: {e}", jinja.display()))?)
            } else {
                read_json(&folder.join("chat_template.json"))?
                    .and_then(|j| j.get("chat_template").and_then(Json::as_str).map(str::to_owned))
            }
        }
    };
    Ok(Vocab { pre, tokens, types, merges, specials, add_bos, add_eos, add_space_prefix, chat_template })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vocab(tokens: &[&str]) -> serde_json::Map<String, Json> {
        tokens.iter().enumerate().map(|(i, t)| (t.to_string(), json!(i))).collect()
    }

    #[test]
    fn pre_tokenizer_names_follow_the_configuration() {
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true});
        assert_eq!(pre_tokenizer_name(&byte_level, &vocab(&["a", "1", "2"])), Ok("smollm"));
        assert_eq!(pre_tokenizer_name(&byte_level, &vocab(&["a", "1", "12"])), Ok("gpt-2"));
        let digits = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level.clone()]});
        assert_eq!(pre_tokenizer_name(&digits, &vocab(&["12"])), Ok("smollm"));
        let metaspace = json!({"type": "Metaspace", "replacement": "\u{2581}"});
        let refusal = pre_tokenizer_name(&metaspace, &vocab(&[])).unwrap_err();
        assert!(refusal.contains("Metaspace"), "{refusal}");
        let prefixed = json!({"type": "ByteLevel", "add_prefix_space": true, "use_regex": true});
        assert!(pre_tokenizer_name(&prefixed, &vocab(&[])).is_err());
    }
}
