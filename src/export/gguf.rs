//! The GGUF target: one `.gguf` file that llama.cpp (llama-cli, llama-server, llama-perplexity, …) loads, for
//! Llama-family checkpoints (`model_type` `llama`) with a byte-level BPE tokenizer (`tokenizer.json`).
//!
//! The file is GGUF version 3: the magic `GGUF`, the version, the tensor and key-value counts, typed key-values
//! (metadata, tokenizer), one info per tensor (name, dims in ggml order: `ne[0]` is the row length, the innermost
//! dimension; type; offset in the data section), then the data section, which starts and keeps every tensor at a
//! multiple of `general.alignment` (32) bytes. All integers are little-endian. The header is written first from the
//! planned tensor list, then each tensor's data row by row ([`GgmlType::encode_row`]), so a model is never held in
//! memory; the file is written beside the destination and renamed into place when complete.
//!
//! Metadata and names follow llama.cpp's `convert_hf_to_gguf.py` for `LlamaForCausalLM`: `token_embd`,
//! `blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}`, `output_norm`,
//! `output` (absent when the embeddings are tied). The rows of `attn_q` and `attn_k` are permuted as the converter
//! does (Hugging Face stores each head's rotary halves one after the other, llama.cpp interleaves them): row
//! `(head, i, half)` of the file is row `(head, half, i)` of the checkpoint ([`permuted_row`]).
//!
//! Tensor types: 1-D tensors (the norms) are F32, as llama.cpp keeps them; a 2-D tensor planned FP16 is F16, BF16
//! is BF16, FP32 ("kept") keeps its stored type (F32, F16, BF16; F64 becomes F32). A layer planned in one of llama.cpp's
//! block formats (Q8_0, Q4_0, Q4_K, Q6_K) is written in it, block for block as `llama-quantize` writes it
//! ([`crate::quant::ggml`]). INT8 and FP8 layers have no GGUF type: the check reports them as not expressible.
//!
//! The tokenizer's pre-tokenizer name (`tokenizer.ggml.pre`) is how llama.cpp picks its splitting regex. The
//! converter derives it from a hash of the Hugging Face tokenizer's output on a test text; quantstudio matches the
//! pre-tokenizer configuration instead and knows two families: a byte-level regex pre-tokenizer that splits digits
//! one by one (a `Digits` step, or a vocabulary with no multi-digit token) is `smollm` (SmolLM, SmolLM2), one that
//! keeps digit runs is `gpt-2`. Anything else is refused with the reason, as are SentencePiece-style tokenizers
//! (`tokenizer.model`, byte fallback) and other architectures.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::{Compatibility, LayerCheck, Treatment};
use crate::error::{Error, Result};
use crate::model::writer::temp_path_for;
use crate::model::{DType, LayerId, Model, TensorId};
use crate::progress::Progress;
use crate::quant::ggml::{self, BlockFormat};
use crate::quant::pass::TensorData;
use crate::quant::{Plan, Precision, params};

/// The file magic, `GGUF` read as a little-endian u32.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The GGUF version written.
pub const VERSION: u32 = 3;
/// Alignment of the data section and of every tensor in it, in bytes (`general.alignment`).
pub const ALIGNMENT_BYTES: u64 = 32;
/// Metadata key holding the recipe that reproduces the plan.
pub const RECIPE_KEY: &str = "quantstudio.recipe";
/// Rows of a tensor converted and written at a time.
const ROWS_PER_WRITE: usize = 256;

/// A tensor element type of ggml, with its id in GGUF tensor infos.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// One of llama.cpp's block formats (Q8_0, Q4_0, Q4_K, Q6_K), written block for block as `llama-quantize` does.
    Block(BlockFormat),
}

impl GgmlType {
    /// The `ggml_type` id written in tensor infos.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Bf16 => 30,
            GgmlType::Block(format) => format.ggml_type_id(),
        }
    }

    /// The type with `ggml_type` id `id`, if it is one quantstudio writes.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        [GgmlType::F32, GgmlType::F16, GgmlType::Bf16]
            .into_iter()
            .chain(BlockFormat::ALL.map(GgmlType::Block))
            .find(|t| t.id() == id)
    }

    /// Values per block (1 for the float types).
    pub fn block_values(self) -> usize {
        match self {
            GgmlType::Block(format) => format.block_values(),
            _ => 1,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::Bf16 => 2,
            GgmlType::Block(format) => format.block_bytes(),
        }
    }

    /// Whether a row of `len` values can be stored (a whole number of blocks).
    pub fn fits_row(self, len: usize) -> bool {
        len.is_multiple_of(self.block_values())
    }

    /// Bytes of a row of `len` values (a whole number of blocks).
    pub fn row_bytes(self, len: usize) -> u64 {
        (len / self.block_values() * self.block_bytes()) as u64
    }

    /// Whether the type is a quantized block format (then `general.quantization_version` is written).
    pub fn is_quantized(self) -> bool {
        matches!(self, GgmlType::Block(_))
    }

    /// The `LLAMA_FTYPE_*` of a file whose weights are mostly of this type (`general.file_type`; llama.cpp only
    /// prints it): `MOSTLY_Q4_0` 2, `MOSTLY_Q8_0` 7, `MOSTLY_Q4_K_M` 15 (the mix `llama-quantize` calls Q4_K), and
    /// `MOSTLY_Q6_K` 18.
    pub fn file_type(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Bf16 => 32,
            GgmlType::Block(BlockFormat::Q4_0) => 2,
            GgmlType::Block(BlockFormat::Q8_0) => 7,
            GgmlType::Block(BlockFormat::Q4K) => 15,
            GgmlType::Block(BlockFormat::Q6K) => 18,
        }
    }

    /// Appends the encoding of one row to `out`: little-endian values, F16 and BF16 rounded to nearest even with
    /// saturation (`docs/QUANTIZATION.md`).
    pub fn encode_row(self, row: &[f32], out: &mut Vec<u8>) {
        match self {
            GgmlType::F32 => out.extend(row.iter().flat_map(|x| x.to_le_bytes())),
            GgmlType::F16 => out.extend(row.iter().flat_map(|&x| params::to_fp16(x).to_le_bytes())),
            GgmlType::Bf16 => out.extend(row.iter().flat_map(|&x| params::to_bf16(x).to_le_bytes())),
            GgmlType::Block(format) => out.extend(ggml::quantize_row(format, row)),
        }
    }

    /// Name as llama.cpp prints it.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Bf16 => "BF16",
            GgmlType::Block(format) => format.name(),
        }
    }
}

/// A typed GGUF metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `GGUF_TYPE_UINT32`.
    U32(u32),
    /// `GGUF_TYPE_INT32`.
    I32(i32),
    /// `GGUF_TYPE_FLOAT32`.
    F32(f32),
    /// `GGUF_TYPE_BOOL`.
    Bool(bool),
    /// `GGUF_TYPE_STRING` (UTF-8, u64 length, no terminator).
    Str(String),
    /// `GGUF_TYPE_UINT64`.
    U64(u64),
    /// An array of strings.
    StrArray(Vec<String>),
    /// An array of INT32.
    I32Array(Vec<i32>),
    /// An array of FLOAT32.
    F32Array(Vec<f32>),
}

/// `gguf_type` ids of metadata values.
mod value_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U32(_) => value_type::U32,
            Value::I32(_) => value_type::I32,
            Value::F32(_) => value_type::F32,
            Value::Bool(_) => value_type::BOOL,
            Value::Str(_) => value_type::STRING,
            Value::U64(_) => value_type::U64,
            Value::StrArray(_) | Value::I32Array(_) | Value::F32Array(_) => value_type::ARRAY,
        }
    }

    /// Appends the value's type id and payload.
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend(self.type_id().to_le_bytes());
        match self {
            Value::U32(v) => out.extend(v.to_le_bytes()),
            Value::I32(v) => out.extend(v.to_le_bytes()),
            Value::F32(v) => out.extend(v.to_le_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::Str(s) => put_str(out, s),
            Value::U64(v) => out.extend(v.to_le_bytes()),
            Value::StrArray(items) => {
                out.extend(value_type::STRING.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|s| put_str(out, s));
            }
            Value::I32Array(items) => {
                out.extend(value_type::I32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|v| out.extend(v.to_le_bytes()));
            }
            Value::F32Array(items) => {
                out.extend(value_type::F32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|v| out.extend(v.to_le_bytes()));
            }
        }
    }
}

/// One tensor of a GGUF file: name, dims in ggml order (`ne[0]` = row length) and type.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensor {
    /// Name in the file (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
}

impl GgufTensor {
    /// Bytes of its data (rows times the row size), before alignment padding.
    pub fn size_bytes(&self) -> u64 {
        let row_len = self.dims.first().copied().unwrap_or(1) as usize;
        let rows: u64 = self.dims.iter().skip(1).product();
        rows * self.ggml_type.row_bytes(row_len)
    }
}

fn align(offset: u64) -> u64 {
    offset.div_ceil(ALIGNMENT_BYTES) * ALIGNMENT_BYTES
}

/// The header (magic to the end of the tensor infos, padded to the alignment) for `metadata` and `tensors` in
/// file order; returns it with each tensor's offset in the data section.
pub fn header_bytes(metadata: &[(String, Value)], tensors: &[GgufTensor]) -> (Vec<u8>, Vec<u64>) {
    let mut out = Vec::new();
    out.extend(MAGIC);
    out.extend(VERSION.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_str(&mut out, key);
        value.encode(&mut out);
    }
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for tensor in tensors {
        put_str(&mut out, &tensor.name);
        out.extend((tensor.dims.len() as u32).to_le_bytes());
        tensor.dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
        out.extend(tensor.ggml_type.id().to_le_bytes());
        out.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset = align(offset + tensor.size_bytes());
    }
    out.resize(align(out.len() as u64) as usize, 0);
    (out, offsets)
}

/// Writes a GGUF file tensor by tensor into a temp file beside the destination. Call
/// [`GgufWriter::write_tensor`] for the planned tensors in order (several calls per tensor are fine), then
/// [`GgufWriter::finish`]; dropping it unfinished removes the temp file.
pub struct GgufWriter {
    tensors: Vec<GgufTensor>,
    next: usize,
    written_in_tensor: u64,
    out: Option<BufWriter<File>>,
    temp_path: PathBuf,
    final_path: PathBuf,
}

impl GgufWriter {
    /// Creates the temp file beside `path` and writes the header.
    pub fn create(path: &Path, metadata: &[(String, Value)], tensors: Vec<GgufTensor>) -> Result<GgufWriter> {
        let temp_path = temp_path_for(path);
        let file = File::create(&temp_path).map_err(|e| Error::io("cannot create", &temp_path, e))?;
        let mut writer = GgufWriter {
            tensors,
            next: 0,
            written_in_tensor: 0,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            temp_path,
            final_path: path.to_owned(),
        };
        let (header, _) = header_bytes(metadata, &writer.tensors);
        writer.raw_write(&header)?;
        Ok(writer)
    }

    fn misuse(&self, problem: String) -> Error {
        Error::WriterMisuse { problem, path: self.final_path.clone() }
    }

    fn raw_write(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Err(self.misuse("writer already finished".into()));
        };
        out.write_all(bytes).map_err(|e| Error::io("cannot write", &self.temp_path, e))
    }

    /// Appends bytes of tensor `name`, which must be the next planned one; its padding follows once its planned
    /// length is complete.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let Some(expected) = self.tensors.get(self.next) else {
            return Err(self.misuse(format!("export wrote unplanned tensor {name:?}")));
        };
        let total = expected.size_bytes();
        if expected.name != name || self.written_in_tensor + bytes.len() as u64 > total {
            return Err(self.misuse(format!("export wrote tensor {name:?} out of plan")));
        }
        self.raw_write(bytes)?;
        self.written_in_tensor += bytes.len() as u64;
        if self.written_in_tensor == total {
            let padding = align(total) - total;
            self.raw_write(&vec![0u8; padding as usize])?;
            self.next += 1;
            self.written_in_tensor = 0;
        }
        Ok(())
    }

    /// Flushes, syncs and renames the temp file into place; returns its size. Fails if a tensor was not written.
    pub fn finish(mut self) -> Result<u64> {
        if let Some(missing) = self.tensors.get(self.next) {
            return Err(self.misuse(format!("export did not write tensor {:?}", missing.name)));
        }
        let out = self.out.take().ok_or_else(|| self.misuse("writer already finished".into()))?;
        let file = out.into_inner().map_err(|e| Error::io("cannot write", &self.temp_path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io("cannot sync", &self.temp_path, e))?;
        let size_bytes = file.metadata().map_err(|e| Error::io("cannot stat", &self.temp_path, e))?.len();
        drop(file);
        std::fs::rename(&self.temp_path, &self.final_path)
            .map_err(|e| Error::io("cannot rename", &self.final_path, e))?;
        Ok(size_bytes)
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

/// What [`read_header`] found: the version, the metadata, the tensor infos with their offsets, and where the data
/// section starts.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufHeader {
    /// GGUF version.
    pub version: u32,
    /// Key-values in file order (arrays of other element types are skipped over and left out).
    pub metadata: Vec<(String, Value)>,
    /// Tensors in file order with their offsets relative to the data section.
    pub tensors: Vec<(GgufTensor, u64)>,
    /// Byte offset of the data section in the file.
    pub data_offset_bytes: u64,
}

impl GgufHeader {
    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// A bounds-checked cursor over header bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: u64) -> std::result::Result<&[u8], String> {
        let n = usize::try_from(n).map_err(|_| "length overflows".to_owned())?;
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or("header is truncated")?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let slice = self.take(N as u64)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let len = self.u64()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not UTF-8".to_owned())
    }

    /// Reads one value of type `kind`; `None` for types quantstudio does not keep (read past).
    fn value(&mut self, kind: u32) -> std::result::Result<Option<Value>, String> {
        Ok(match kind {
            value_type::U8 | value_type::I8 | value_type::BOOL => {
                let [b] = self.array::<1>()?;
                (kind == value_type::BOOL).then_some(Value::Bool(b != 0))
            }
            value_type::U16 | value_type::I16 => {
                self.take(2)?;
                None
            }
            value_type::U32 => Some(Value::U32(self.u32()?)),
            value_type::I32 => Some(Value::I32(i32::from_le_bytes(self.array()?))),
            value_type::F32 => Some(Value::F32(f32::from_le_bytes(self.array()?))),
            value_type::U64 => Some(Value::U64(self.u64()?)),
            value_type::I64 | value_type::F64 => {
                self.take(8)?;
                None
            }
            value_type::STRING => Some(Value::Str(self.string()?)),
            value_type::ARRAY => {
                let item = self.u32()?;
                let count = self.u64()?;
                if count > self.bytes.len() as u64 {
                    return Err("an array is longer than the file".into());
                }
                let mut items = Vec::new();
                for _ in 0..count {
                    items.push(self.value(item)?);
                }
                let items = items.into_iter();
                match item {
                    value_type::STRING => Some(Value::StrArray(
                        items.filter_map(|v| if let Some(Value::Str(s)) = v { Some(s) } else { None }).collect(),
                    )),
                    value_type::I32 => Some(Value::I32Array(
                        items.filter_map(|v| if let Some(Value::I32(x)) = v { Some(x) } else { None }).collect(),
                    )),
                    value_type::F32 => Some(Value::F32Array(
                        items.filter_map(|v| if let Some(Value::F32(x)) = v { Some(x) } else { None }).collect(),
                    )),
                    _ => None,
                }
            }
            other => return Err(format!("unknown value type {other}")),
        })
    }
}

/// Reads and checks the header of the GGUF file at `path`: magic, version 3, every key-value, every tensor info
/// (type known, offsets aligned and in order, data inside the file).
pub fn read_header(path: &Path) -> Result<GgufHeader> {
    let bad = |problem: String| Error::BadGguf { problem, path: path.to_owned() };
    let mut file = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io("cannot stat", path, e))?.len();
    // The header of a large vocabulary is a few MB; 256 MB is far more than any header needs.
    let mut bytes = Vec::new();
    (&mut file).take(256 << 20).read_to_end(&mut bytes).map_err(|e| Error::io("cannot read", path, e))?;
    let mut cursor = Cursor { bytes: &bytes, at: 0 };
    if cursor.take(4).map_err(&bad)? != MAGIC {
        return Err(bad("it does not start with GGUF".into()));
    }
    let version = cursor.u32().map_err(&bad)?;
    if version != VERSION {
        return Err(bad(format!("version {version}, expected {VERSION}")));
    }
    let tensor_count = cursor.u64().map_err(&bad)?;
    let kv_count = cursor.u64().map_err(&bad)?;
    let mut metadata = Vec::new();
    for _ in 0..kv_count {
        let key = cursor.string().map_err(&bad)?;
        let kind = cursor.u32().map_err(&bad)?;
        if let Some(value) = cursor.value(kind).map_err(&bad)? {
            metadata.push((key, value));
        }
    }
    let mut tensors = Vec::new();
    let mut expected_offset = 0u64;
    for _ in 0..tensor_count {
        let name = cursor.string().map_err(&bad)?;
        let n_dims = cursor.u32().map_err(&bad)?;
        if n_dims > 4 {
            return Err(bad(format!("tensor {name:?} has {n_dims} dimensions")));
        }
        let dims = (0..n_dims).map(|_| cursor.u64()).collect::<std::result::Result<Vec<_>, _>>().map_err(&bad)?;
        let type_id = cursor.u32().map_err(&bad)?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| bad(format!("tensor {name:?} has type {type_id}")))?;
        let offset = cursor.u64().map_err(&bad)?;
        if offset != expected_offset {
            return Err(bad(format!("tensor {name:?} is at offset {offset}, expected {expected_offset}")));
        }
        let tensor = GgufTensor { name, dims, ggml_type };
        expected_offset = align(offset + tensor.size_bytes());
        tensors.push((tensor, offset));
    }
    let data_offset_bytes = align(cursor.at as u64);
    if data_offset_bytes + expected_offset > file_len {
        return Err(bad(format!("the data section needs {expected_offset} bytes, the file is {file_len}")));
    }
    Ok(GgufHeader { version, metadata, tensors, data_offset_bytes })
}

/// How one checkpoint tensor becomes a GGUF tensor.
#[derive(Clone, Debug)]
struct Mapped {
    source: TensorId,
    name: String,
    /// Heads of the rotary permutation (Q: attention heads, K: KV heads), `None` for other tensors.
    permute_heads: Option<usize>,
}

/// What a Llama checkpoint needs to become a GGUF file (everything except the plan's tensor types).
struct LlamaSource {
    metadata: Vec<(String, Value)>,
    tensors: Vec<Mapped>,
}

fn config_value<'a>(config: &'a serde_json::Map<String, Json>, key: &str) -> Option<&'a Json> {
    config.get(key).filter(|v| !v.is_null())
}

fn config_u64(config: &serde_json::Map<String, Json>, key: &str) -> std::result::Result<u64, String> {
    config_value(config, key).and_then(Json::as_u64).ok_or_else(|| format!("config.json has no integer {key}"))
}

/// Reads the config, maps every tensor to its GGUF name and reads the tokenizer; `Err` says why the checkpoint
/// cannot be a GGUF source.
fn llama_source(model: &Model) -> std::result::Result<LlamaSource, String> {
    let config = model.config.as_ref().ok_or("GGUF export needs a model folder with config.json")?;
    let model_type = config_value(config, "model_type").and_then(Json::as_str).unwrap_or("none");
    if model_type != "llama" {
        return Err(format!("GGUF export writes Llama-family models only (model_type llama), this is {model_type}"));
    }
    if let Some(scaling) = config_value(config, "rope_scaling") {
        let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(Json::as_str);
        if kind != Some("default") {
            return Err(format!("rope scaling {} is not written to GGUF yet", kind.unwrap_or("?")));
        }
    }
    for bias in ["attention_bias", "mlp_bias"] {
        if config_value(config, bias).and_then(Json::as_bool) == Some(true) {
            return Err(format!("{bias} is true: GGUF export writes Llama models without biases"));
        }
    }
    let hidden = config_u64(config, "hidden_size")?;
    let layers = config_u64(config, "num_hidden_layers")?;
    let heads = config_u64(config, "num_attention_heads")?;
    let kv_heads = config_value(config, "num_key_value_heads").and_then(Json::as_u64).unwrap_or(heads);
    let intermediate = config_u64(config, "intermediate_size")?;
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(format!("config.json has {heads} attention heads and {kv_heads} KV heads"));
    }
    let head_dim = config_value(config, "head_dim").and_then(Json::as_u64).unwrap_or(hidden / heads);
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(format!("head dimension {head_dim} is not even: no rotary halves to interleave"));
    }
    let context = config_value(config, "max_position_embeddings").and_then(Json::as_u64).unwrap_or(2048);
    let eps = config_value(config, "rms_norm_eps").and_then(Json::as_f64).unwrap_or(1e-6);
    let rope_theta = config_value(config, "rope_theta")
        .or_else(|| config_value(config, "rope_parameters").and_then(|p| p.get("rope_theta")))
        .and_then(Json::as_f64)
        .unwrap_or(10_000.0);
    let tensors = map_tensors(model, layers as usize, heads as usize, kv_heads as usize)?;
    let vocab = crate::export::gguf_vocab::read(model, config)?;
    let name = model.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let arch = "llama";
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::Str(arch.into())),
        ("general.type".into(), Value::Str("model".into())),
        ("general.name".into(), Value::Str(name)),
        ("general.alignment".into(), Value::U32(ALIGNMENT_BYTES as u32)),
    ];
    let arch_key = |key: &str| format!("{arch}.{key}");
    let u32_of = |v: u64| Value::U32(u32::try_from(v).unwrap_or(u32::MAX));
    metadata.extend([
        (arch_key("block_count"), u32_of(layers)),
        (arch_key("context_length"), u32_of(context)),
        (arch_key("embedding_length"), u32_of(hidden)),
        (arch_key("feed_forward_length"), u32_of(intermediate)),
        (arch_key("attention.head_count"), u32_of(heads)),
        (arch_key("attention.head_count_kv"), u32_of(kv_heads)),
        (arch_key("rope.freq_base"), Value::F32(rope_theta as f32)),
        (arch_key("attention.layer_norm_rms_epsilon"), Value::F32(eps as f32)),
        (arch_key("attention.key_length"), u32_of(head_dim)),
        (arch_key("attention.value_length"), u32_of(head_dim)),
        (arch_key("vocab_size"), u32_of(vocab.tokens.len() as u64)),
        (arch_key("rope.dimension_count"), u32_of(head_dim)),
    ]);
    metadata.extend(vocab.metadata());
    Ok(LlamaSource { metadata, tensors })
}

/// The GGUF name of every tensor of a Llama checkpoint, in file order; `Err` names the tensors with no GGUF name
/// or a missing one.
fn map_tensors(
    model: &Model,
    layers: usize,
    heads: usize,
    kv_heads: usize,
) -> std::result::Result<Vec<Mapped>, String> {
    let mut wanted: Vec<(String, String, Option<usize>)> =
        vec![("model.embed_tokens.weight".into(), "token_embd.weight".into(), None)];
    for n in 0..layers {
        let hf = |s: &str| format!("model.layers.{n}.{s}.weight");
        let gg = |s: &str| format!("blk.{n}.{s}.weight");
        wanted.extend([
            (hf("input_layernorm"), gg("attn_norm"), None),
            (hf("self_attn.q_proj"), gg("attn_q"), Some(heads)),
            (hf("self_attn.k_proj"), gg("attn_k"), Some(kv_heads)),
            (hf("self_attn.v_proj"), gg("attn_v"), None),
            (hf("self_attn.o_proj"), gg("attn_output"), None),
            (hf("post_attention_layernorm"), gg("ffn_norm"), None),
            (hf("mlp.gate_proj"), gg("ffn_gate"), None),
            (hf("mlp.up_proj"), gg("ffn_up"), None),
            (hf("mlp.down_proj"), gg("ffn_down"), None),
        ]);
    }
    wanted.push(("model.norm.weight".into(), "output_norm.weight".into(), None));
    let tied = model.config.as_ref().and_then(|c| config_value(c, "tie_word_embeddings")).and_then(Json::as_bool);
    let has_head = model.tensor_by_name("lm_head.weight").is_some();
    if has_head && tied != Some(true) {
        wanted.push(("lm_head.weight".into(), "output.weight".into(), None));
    }
    let mut missing = Vec::new();
    let mut mapped = Vec::new();
    for (hf, name, permute_heads) in &wanted {
        match model.tensor_by_name(hf) {
            Some(source) => mapped.push(Mapped { source, name: name.clone(), permute_heads: *permute_heads }),
            None => missing.push(hf.as_str()),
        }
    }
    if !missing.is_empty() {
        return Err(format!("the checkpoint lacks {} tensor(s) of a Llama model: {}", missing.len(), list(&missing)));
    }
    let known: std::collections::HashSet<&str> = wanted.iter().map(|(hf, _, _)| hf.as_str()).collect();
    let unknown: Vec<&str> = model
        .tensors
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !known.contains(n) && *n != "lm_head.weight" && !n.ends_with("rotary_emb.inv_freq"))
        .collect();
    if !unknown.is_empty() {
        return Err(format!("{} tensor(s) have no GGUF name in a Llama model: {}", unknown.len(), list(&unknown)));
    }
    for m in &mapped {
        let info = model.tensor(m.source);
        if !info.is_analysable() || info.shape.is_empty() || info.shape.len() > 2 {
            return Err(format!(
                "tensor {} is {} {:?}, not a float vector or matrix",
                info.name, info.dtype, info.shape
            ));
        }
        if let Some(h) = m.permute_heads
            && !info.shape[0].is_multiple_of(2 * h)
        {
            return Err(format!("tensor {} has {} rows, not a multiple of 2 x {h} heads", info.name, info.shape[0]));
        }
    }
    Ok(mapped)
}

fn list(names: &[&str]) -> String {
    const SHOWN: usize = 4;
    let shown = names.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN { format!("{shown} and {} more", names.len() - SHOWN) } else { shown }
}

/// The checkpoint row written as row `row` of a permuted Q or K matrix with `rows` rows and `heads` heads
/// (`convert_hf_to_gguf`'s `LlamaModel.permute`): within each head, file row `2 i + half` is checkpoint row
/// `half * head_rows / 2 + i`.
pub fn permuted_row(row: usize, rows: usize, heads: usize) -> usize {
    let head_rows = rows / heads;
    let (head, within) = (row / head_rows, row % head_rows);
    let (i, half) = (within / 2, within % 2);
    head * head_rows + half * (head_rows / 2) + i
}

/// The GGUF type of tensor `id` under `plan`, or why it has none.
fn tensor_type(model: &Model, plan: &Plan, id: TensorId) -> std::result::Result<GgmlType, String> {
    let info = model.tensor(id);
    if info.shape.len() < 2 {
        return Ok(GgmlType::F32);
    }
    let ggml_type = match plan.tensor(model, id) {
        Precision::Fp32 => match info.dtype {
            DType::F16 => GgmlType::F16,
            DType::BF16 => GgmlType::Bf16,
            _ => GgmlType::F32,
        },
        Precision::Fp16 => GgmlType::F16,
        Precision::Bf16 => GgmlType::Bf16,
        Precision::Q8_0 => GgmlType::Block(BlockFormat::Q8_0),
        Precision::Q4_0 => GgmlType::Block(BlockFormat::Q4_0),
        Precision::Q4K => GgmlType::Block(BlockFormat::Q4K),
        Precision::Q6K => GgmlType::Block(BlockFormat::Q6K),
        precision @ (Precision::Int8(_) | Precision::Fp8(_)) => {
            return Err(format!("{precision}: GGUF has no such type (use Q8_0)"));
        }
        precision @ Precision::Int4(_) => {
            return Err(format!("{precision}: GGUF has no such type (use Q4_K or Q4_0)"));
        }
    };
    let row_len = info.shape.last().copied().unwrap_or(0);
    if !ggml_type.fits_row(row_len) {
        return Err(format!(
            "{}: rows of {row_len} are not whole blocks of {}",
            ggml_type.name(),
            ggml_type.block_values()
        ));
    }
    Ok(ggml_type)
}

/// What the GGUF target does with every layer of `plan`; llama.cpp loads what it can write.
pub fn check(model: &Model, plan: &Plan) -> Compatibility {
    let model_refusal = llama_source(model).err();
    let layers = (0..model.layers.len())
        .map(|index| {
            let layer = LayerId(index);
            let problems: Vec<String> =
                model.layer(layer).tensors.iter().filter_map(|&id| tensor_type(model, plan, id).err()).collect();
            let treatment = if let Some(problem) = problems.first() {
                Treatment::NotExpressible(problem.clone())
            } else {
                match plan.layer(layer) {
                    Precision::Fp32 => Treatment::Kept,
                    _ => Treatment::Cast,
                }
            };
            let fix = problems.first().map(|_| block_fix(model, plan, layer));
            LayerCheck { layer, treatment, refusals: Vec::new(), fix }
        })
        .collect();
    Compatibility { target: super::Target::Gguf, model_refusal, layers }
}

/// What a layer GGUF cannot write gets instead, where its rows are whole blocks: Q8_0, llama.cpp's 8-bit type, for
/// an INT8 or FP8 layer; Q4_K (rows of whole 256-blocks) or Q4_0 for an INT4 layer; otherwise the float type of its
/// table (FP16, or BF16 for BF16 tables).
fn block_fix(model: &Model, plan: &Plan, layer: LayerId) -> Precision {
    let main = model.main_tensor(layer).unwrap_or(TensorId(0));
    let shape = &model.tensor(main).shape;
    let fits = |format| shape.len() == 2 && GgmlType::Block(format).fits_row(shape[1]);
    match plan.layer(layer) {
        Precision::Int8(_) | Precision::Fp8(_) if fits(BlockFormat::Q8_0) => Precision::Q8_0,
        Precision::Int4(_) if fits(BlockFormat::Q4K) => Precision::Q4K,
        Precision::Int4(_) if fits(BlockFormat::Q4_0) => Precision::Q4_0,
        _ => super::float_fix(model, main),
    }
}

/// Bytes tensor `id` takes in the GGUF file under `plan` (its stored size when it is not written).
pub fn planned_bytes(model: &Model, plan: &Plan, id: TensorId) -> u64 {
    let info = model.tensor(id);
    let row_len = info.shape.last().copied().unwrap_or(1);
    let rows = if info.shape.is_empty() { 1 } else { info.numel() / row_len.max(1) } as u64;
    match tensor_type(model, plan, id) {
        Ok(t) => rows * t.row_bytes(row_len),
        Err(_) => info.size_bytes(),
    }
}

/// Writes the planned model as one GGUF file at `path` (temp file beside it, renamed into place); returns its
/// size in bytes.
pub fn write(model: &Model, plan: &Plan, path: &Path, progress: &Progress) -> Result<u64> {
    let refused = |problems: Vec<String>| Error::ExportRefused {
        target: super::Target::Gguf.to_string(),
        problems,
        forceable: false,
        path: path.to_owned(),
    };
    let source = llama_source(model).map_err(|reason| refused(vec![reason]))?;
    let mut tensors = Vec::with_capacity(source.tensors.len());
    let mut counts: BTreeMap<u32, (u64, GgmlType)> = BTreeMap::new();
    for m in &source.tensors {
        let info = model.tensor(m.source);
        let ggml_type = tensor_type(model, plan, m.source).map_err(|p| refused(vec![format!("{}: {p}", info.name)]))?;
        if info.shape.len() == 2 {
            counts.entry(ggml_type.id()).or_insert((0, ggml_type)).0 += info.numel() as u64;
        }
        tensors.push(GgufTensor {
            name: m.name.clone(),
            dims: info.shape.iter().rev().map(|&d| d as u64).collect(),
            ggml_type,
        });
    }
    let majority = counts.values().max_by_key(|(n, t)| (*n, std::cmp::Reverse(t.id()))).map(|(_, t)| *t);
    let mut metadata = source.metadata;
    metadata.push(("general.file_type".into(), Value::U32(majority.unwrap_or(GgmlType::F32).file_type())));
    if tensors.iter().any(|t| t.ggml_type.is_quantized()) {
        metadata.push(("general.quantization_version".into(), Value::U32(2)));
    }
    metadata.push((RECIPE_KEY.into(), Value::Str(plan.to_recipe(model).to_json())));
    let total_elements: u64 = source.tensors.iter().map(|m| model.tensor(m.source).numel() as u64).sum();
    progress.start_stage("exporting", total_elements);
    let mut writer = GgufWriter::create(path, &metadata, tensors.clone())?;
    let mut buf = Vec::new();
    let mut bytes = Vec::new();
    for (m, tensor) in source.tensors.iter().zip(&tensors) {
        let data = TensorData::of(model, m.source)?;
        let (rows, cols) = (data.rows, data.cols);
        let rows = if model.tensor(m.source).shape.len() < 2 { 1 } else { rows };
        let cols = if model.tensor(m.source).shape.len() < 2 { data.len() } else { cols };
        let mut row = 0;
        while row < rows {
            progress.check()?;
            let end = (row + ROWS_PER_WRITE).min(rows);
            bytes.clear();
            for out_row in row..end {
                let src = m.permute_heads.map_or(out_row, |h| permuted_row(out_row, rows, h));
                let values = data.values(src * cols..(src + 1) * cols, &mut buf);
                tensor.ggml_type.encode_row(values, &mut bytes);
            }
            writer.write_tensor(&tensor.name, &bytes)?;
            progress.advance(((end - row) * cols) as u64);
            row = end;
        }
    }
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_interleaves_the_rotary_halves_of_each_head() {
        // 2 heads of 4 rows: checkpoint rows (a0 a1 b0 b1) become (a0 b0 a1 b1) in each head.
        let order: Vec<usize> = (0..8).map(|r| permuted_row(r, 8, 2)).collect();
        assert_eq!(order, vec![0, 2, 1, 3, 4, 6, 5, 7]);
    }

    #[test]
    fn header_offsets_are_aligned_and_the_reader_reads_them_back() {
        let tensors = vec![
            GgufTensor { name: "a".into(), dims: vec![3], ggml_type: GgmlType::F32 },
            GgufTensor { name: "b".into(), dims: vec![5, 2], ggml_type: GgmlType::F16 },
            GgufTensor { name: "c".into(), dims: vec![8, 1], ggml_type: GgmlType::Bf16 },
        ];
        let metadata = vec![
            ("general.architecture".to_owned(), Value::Str("llama".into())),
            ("k.ints".to_owned(), Value::I32Array(vec![1, -2])),
            ("k.floats".to_owned(), Value::F32Array(vec![0.5])),
            ("k.strings".to_owned(), Value::StrArray(vec!["x".into(), "".into()])),
            ("k.flag".to_owned(), Value::Bool(true)),
        ];
        let (header, offsets) = header_bytes(&metadata, &tensors);
        assert_eq!(offsets, vec![0, 32, 64]);
        assert!((header.len() as u64).is_multiple_of(ALIGNMENT_BYTES));
        let dir = std::env::temp_dir().join(format!("quantstudio-gguf-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.gguf");
        let mut writer = GgufWriter::create(&path, &metadata, tensors.clone()).unwrap();
        writer.write_tensor("a", &[0; 12]).unwrap();
        assert!(writer.write_tensor("c", &[0; 2]).is_err(), "out of order");
        writer.write_tensor("b", &[0; 20]).unwrap();
        writer.write_tensor("c", &[0; 16]).unwrap();
        let size = writer.finish().unwrap();
        assert_eq!(size, header.len() as u64 + 64 + 32);
        let read = read_header(&path).unwrap();
        assert_eq!(read.metadata, metadata);
        assert_eq!(
            read.tensors.iter().map(|(t, o)| (t.clone(), *o)).collect::<Vec<_>>(),
            tensors.into_iter().zip(offsets).collect::<Vec<_>>()
        );
        assert_eq!(read.data_offset_bytes, header.len() as u64);
        // A truncated file is refused by name.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(matches!(read_header(&path), Err(Error::BadGguf { .. })));
        std::fs::write(&path, &bytes[..40]).unwrap();
        assert!(matches!(read_header(&path), Err(Error::BadGguf { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
