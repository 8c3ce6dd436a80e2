//! Typed reads of `config.json` fields, with errors that name the field.

use crate::error::{Error, Result};

/// A parsed `config.json` object.
pub type ConfigMap = serde_json::Map<String, serde_json::Value>;

/// "Running this model is unavailable: ...", about a field of `config.json` (named by its bare file name here:
/// the caller that knows the folder completes it with [`Error::in_folder`]).
pub fn unsupported(reason: String) -> Error {
    Error::BadArchitecture { reason, path: CONFIG_FILE.into() }
}

/// The file name of a model folder's configuration.
pub const CONFIG_FILE: &str = "config.json";

/// A non-negative integer field; `default` when absent (`None`: the field is required).
pub fn usize_field(c: &ConfigMap, key: &str, default: Option<usize>) -> Result<usize> {
    match c.get(key) {
        None | Some(serde_json::Value::Null) => default.ok_or_else(|| unsupported(format!("{key} is missing"))),
        Some(v) => v
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| unsupported(format!("{key} is {v}, not a non-negative integer"))),
    }
}

/// A number field; `default` when absent.
pub fn f32_field(c: &ConfigMap, key: &str, default: f32) -> Result<f32> {
    match c.get(key) {
        None | Some(serde_json::Value::Null) => Ok(default),
        Some(v) => v.as_f64().map(|v| v as f32).ok_or_else(|| unsupported(format!("{key} is {v}, not a number"))),
    }
}

/// A boolean field; `default` when absent.
pub fn bool_field(c: &ConfigMap, key: &str, default: bool) -> Result<bool> {
    match c.get(key) {
        None | Some(serde_json::Value::Null) => Ok(default),
        Some(v) => v.as_bool().ok_or_else(|| unsupported(format!("{key} is {v}, not true or false"))),
    }
}

/// A string field; `default` when absent.
pub fn string<'c>(c: &'c ConfigMap, key: &str, default: &'c str) -> Result<&'c str> {
    match c.get(key) {
        None | Some(serde_json::Value::Null) => Ok(default),
        Some(v) => v.as_str().ok_or_else(|| unsupported(format!("{key} is {v}, not a string"))),
    }
}

/// Refuses a string field that is present with another value than `expected`.
pub fn expect_str(c: &ConfigMap, key: &str, expected: &str) -> Result<()> {
    match string(c, key, expected)? {
        v if v == expected => Ok(()),
        other => Err(unsupported(format!("{key} {other:?} is not implemented (only {expected:?})"))),
    }
}
