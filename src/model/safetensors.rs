//! Reading one `.safetensors` file: the header is parsed and validated, the data stays memory-mapped.
//!
//! Layout: an 8-byte little-endian header length `n`, `n` bytes of UTF-8 JSON, then the data buffer. The JSON maps
//! tensor names to `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the data buffer) plus an
//! optional `__metadata__` string map. Every rule of that format is checked here, with `get` and checked arithmetic,
//! so a truncated or hostile file gives a named [`Error`] and never a panic.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use super::dtype::DType;
use crate::error::{Error, Result};

/// Largest header accepted, as in the reference implementation: anything larger is treated as hostile.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor entry of a header.
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderTensor {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Byte range inside the data buffer.
    pub data: Range<usize>,
}

/// A parsed and validated header.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// Offset of the data buffer from the start of the file.
    pub data_start: usize,
    /// The `__metadata__` map (empty when absent).
    pub metadata: BTreeMap<String, String>,
    /// Tensors in data-offset order.
    pub tensors: Vec<HeaderTensor>,
}

/// A memory-mapped safetensors file with its validated header.
pub struct SafetensorsFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its header.
    pub header: Header,
    mmap: Mmap,
}

impl fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.header.tensors.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Maps `path` and validates its header. Only the header pages are touched.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
        let len_bytes = file.metadata().map_err(|e| Error::io("cannot stat", path, e))?.len();
        if len_bytes == 0 {
            return Err(Error::EmptyFile { path: path.to_owned() });
        }
        // SAFETY: the map is read-only and private to this process. Like every mmap-based reader (the
        // safetensors crate included) we assume the file is not truncated or rewritten by another process while
        // it is open; quantstudio itself never writes to an input model (exports go to a temp file + rename).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io("cannot map", path, e))?;
        let header = parse_header(&mmap, path)?;
        Ok(Self { path: path.to_owned(), header, mmap })
    }

    /// The bytes of a tensor of this file.
    pub fn tensor_bytes(&self, data: &Range<usize>) -> &[u8] {
        // Ranges were validated against the file length in `parse_header`.
        &self.mmap[self.header.data_start + data.start..self.header.data_start + data.end]
    }

    /// The whole mapped file (for benchmarks of raw read bandwidth).
    pub fn file_bytes(&self) -> &[u8] {
        &self.mmap
    }
}

/// Parses and validates the header of a complete safetensors file held in `bytes`.
pub fn parse_header(bytes: &[u8], path: &Path) -> Result<Header> {
    let path_buf = || path.to_owned();
    let file_bytes = bytes.len() as u64;
    if bytes.is_empty() {
        return Err(Error::EmptyFile { path: path_buf() });
    }
    let Some(prefix) = bytes.get(..8) else {
        return Err(Error::FileTooShort { len_bytes: file_bytes, path: path_buf() });
    };
    let mut len_le = [0u8; 8];
    len_le.copy_from_slice(prefix);
    let header_bytes = u64::from_le_bytes(len_le);
    let header_end = header_bytes.checked_add(8).filter(|&end| end <= file_bytes && header_bytes <= MAX_HEADER_BYTES);
    let Some(header_end) = header_end else {
        return Err(Error::HeaderLength { header_bytes, file_bytes, path: path_buf() });
    };
    let header_end = header_end as usize;
    let json = std::str::from_utf8(&bytes[8..header_end]).map_err(|_| Error::HeaderNotUtf8 { path: path_buf() })?;
    let entries: Entries =
        serde_json::from_str(json).map_err(|e| Error::HeaderNotJson { reason: e.to_string(), path: path_buf() })?;

    let data_bytes = bytes.len() - header_end;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.0.len());
    let mut seen = HashSet::with_capacity(entries.0.len());
    for (name, value) in entries.0 {
        if !seen.insert(name.clone()) {
            return Err(Error::DuplicateTensor { name, path: path_buf() });
        }
        if name == "__metadata__" {
            metadata = parse_metadata(value, path)?;
            continue;
        }
        tensors.push(parse_tensor(name, value, data_bytes, path)?);
    }
    check_coverage(&mut tensors, data_bytes, path)?;
    Ok(Header { data_start: header_end, metadata, tensors })
}

fn parse_metadata(value: serde_json::Value, path: &Path) -> Result<BTreeMap<String, String>> {
    let serde_json::Value::Object(map) = value else {
        return Err(Error::HeaderNotJson { reason: "__metadata__ is not an object".into(), path: path.to_owned() });
    };
    map.into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(text) => Ok((key, text)),
            _ => Err(Error::HeaderNotJson {
                reason: format!("__metadata__ value {key:?} is not a string"),
                path: path.to_owned(),
            }),
        })
        .collect()
}

#[derive(serde::Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

fn parse_tensor(name: String, value: serde_json::Value, data_bytes: usize, path: &Path) -> Result<HeaderTensor> {
    let raw: RawTensor = serde_json::from_value(value)
        .map_err(|e| Error::HeaderNotJson { reason: format!("tensor {name:?}: {e}"), path: path.to_owned() })?;
    let Some(dtype) = DType::parse(&raw.dtype) else {
        return Err(Error::UnsupportedDtype { name, dtype: raw.dtype, path: path.to_owned() });
    };
    let (begin, end) = raw.data_offsets;
    if begin > end {
        return Err(Error::BadOffsets {
            name,
            problem: format!("data offsets [{begin}, {end}] are reversed"),
            path: path.to_owned(),
        });
    }
    if end > data_bytes as u64 {
        return Err(Error::BadOffsets {
            name,
            problem: format!("data offsets [{begin}, {end}] reach beyond the {data_bytes}-byte data buffer"),
            path: path.to_owned(),
        });
    }
    let expected_bytes = raw
        .shape
        .iter()
        .try_fold(dtype.size_bytes() as u64, |acc, &dim| acc.checked_mul(dim))
        .filter(|&bytes| usize::try_from(bytes).is_ok());
    let actual_bytes = end - begin;
    let shape: Vec<usize> = raw.shape.iter().map(|&d| d as usize).collect();
    if expected_bytes != Some(actual_bytes) {
        return Err(Error::ShapeMismatch {
            name,
            shape,
            dtype: dtype.to_string(),
            expected_bytes: expected_bytes.unwrap_or(u64::MAX),
            actual_bytes,
            path: path.to_owned(),
        });
    }
    Ok(HeaderTensor { name, dtype, shape, data: begin as usize..end as usize })
}

/// The data buffer must be covered exactly: sorted by offset, tensors follow each other with no overlap and no
/// gap, and the last one ends where the file ends.
fn check_coverage(tensors: &mut [HeaderTensor], data_bytes: usize, path: &Path) -> Result<()> {
    tensors.sort_by(|a, b| (a.data.start, a.data.end).cmp(&(b.data.start, b.data.end)).then(a.name.cmp(&b.name)));
    let mut expected_start = 0usize;
    for tensor in tensors.iter() {
        if tensor.data.start < expected_start {
            return Err(Error::BadOffsets {
                name: tensor.name.clone(),
                problem: format!(
                    "data offsets [{}, {}] overlap the previous tensor",
                    tensor.data.start, tensor.data.end
                ),
                path: path.to_owned(),
            });
        }
        if tensor.data.start > expected_start {
            return Err(Error::BadOffsets {
                name: tensor.name.clone(),
                problem: format!("data offsets leave a gap of {} bytes before it", tensor.data.start - expected_start),
                path: path.to_owned(),
            });
        }
        expected_start = tensor.data.end;
    }
    if expected_start != data_bytes {
        let name = tensors.last().map(|t| t.name.clone()).unwrap_or_default();
        return Err(Error::BadOffsets {
            name,
            problem: format!(
                "{} bytes after the last tensor are not covered by any tensor",
                data_bytes - expected_start
            ),
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// The header's top-level entries in file order, duplicates kept so that they can be reported.
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a json object of tensors")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// Builds the bytes of a safetensors file from a JSON header text and a data buffer (tests and tools).
pub fn assemble(header_json: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + header_json.len() + data.len());
    bytes.extend_from_slice(&(header_json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(header_json.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(header: &str, data_len: usize) -> Result<Header> {
        parse_header(&assemble(header, &vec![0u8; data_len]), Path::new("t.safetensors"))
    }

    #[test]
    fn valid_header_is_sorted_by_offset() {
        let header = parse(
            r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"a":{"dtype":"I8","shape":[2,4],"data_offsets":[0,8]}}"#,
            16,
        )
        .unwrap();
        assert_eq!(header.metadata.get("format").map(String::as_str), Some("pt"));
        let names: Vec<_> = header.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(header.tensors[1].shape, [2]);
    }

    #[test]
    fn empty_and_short_files() {
        assert!(matches!(parse_header(&[], Path::new("x")), Err(Error::EmptyFile { .. })));
        assert!(matches!(parse_header(&[1, 2, 3], Path::new("x")), Err(Error::FileTooShort { len_bytes: 3, .. })));
    }

    #[test]
    fn header_length_beyond_file_or_absurd() {
        let mut bytes = assemble("{}", &[]);
        bytes[0] = 200;
        assert!(matches!(parse_header(&bytes, Path::new("x")), Err(Error::HeaderLength { header_bytes: 200, .. })));
        let mut bytes = assemble("{}", &[]);
        bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse_header(&bytes, Path::new("x")), Err(Error::HeaderLength { .. })));
    }

    #[test]
    fn header_not_utf8_or_not_json() {
        let mut bytes = assemble("{\"a\":1}", &[]);
        bytes[9] = 0xFF;
        assert!(matches!(parse_header(&bytes, Path::new("x")), Err(Error::HeaderNotUtf8 { .. })));
        assert!(matches!(parse("not json", 0), Err(Error::HeaderNotJson { .. })));
        assert!(matches!(parse("[1,2]", 0), Err(Error::HeaderNotJson { .. })));
        assert!(matches!(parse(r#"{"a":{"dtype":"F32"}}"#, 0), Err(Error::HeaderNotJson { .. })));
        assert!(matches!(parse(r#"{"__metadata__":{"k":1}}"#, 0), Err(Error::HeaderNotJson { .. })));
    }

    #[test]
    fn offsets_out_of_range_overlapping_or_with_gaps() {
        let out = r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}"#;
        assert!(matches!(parse(out, 4), Err(Error::BadOffsets { .. })));
        let reversed = r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}"#;
        assert!(matches!(parse(reversed, 4), Err(Error::BadOffsets { .. })));
        let overlap = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#;
        let err = parse(overlap, 6).unwrap_err();
        assert!(err.to_string().contains("overlap"), "{err}");
        let gap = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}"#;
        assert!(parse(gap, 6).unwrap_err().to_string().contains("gap"));
        let trailing = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#;
        assert!(parse(trailing, 5).unwrap_err().to_string().contains("not covered"));
    }

    #[test]
    fn shape_dtype_mismatch_unknown_dtype_and_duplicates() {
        let mismatch = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        assert!(matches!(parse(mismatch, 8), Err(Error::ShapeMismatch { expected_bytes: 12, actual_bytes: 8, .. })));
        let overflow = r#"{"a":{"dtype":"F32","shape":[18446744073709551615,4],"data_offsets":[0,8]}}"#;
        assert!(matches!(parse(overflow, 8), Err(Error::ShapeMismatch { .. })));
        let unknown = r#"{"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}"#;
        assert!(matches!(parse(unknown, 1), Err(Error::UnsupportedDtype { .. })));
        let duplicate = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
        assert!(matches!(parse(duplicate, 2), Err(Error::DuplicateTensor { .. })));
    }

    #[test]
    fn zero_sized_tensors_and_scalars_are_fine() {
        let header = parse(
            r#"{"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}"#,
            4,
        )
        .unwrap();
        assert_eq!(header.tensors.len(), 2);
    }
}
