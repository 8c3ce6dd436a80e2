//! A streaming safetensors writer: the header is written from the planned tensor list, then each tensor's bytes
//! in the same order, into a temp file that is renamed into place once complete.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::DType;
use crate::error::{Error, Result};

/// A tensor to be written: name, dtype and shape (its byte length follows from them).
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedTensor {
    /// Name in the file.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
}

impl PlannedTensor {
    /// Byte length of its data.
    pub fn size_bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size_bytes()
    }
}

/// The header JSON (padded with spaces to a multiple of 8 bytes) for tensors written in the given order.
pub fn header_json(tensors: &[PlannedTensor], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    if !metadata.is_empty() {
        map.insert("__metadata__".into(), serde_json::to_value(metadata).unwrap_or_default());
    }
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + t.size_bytes();
        map.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype.as_str(), "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut bytes = serde_json::to_vec(&serde_json::Value::Object(map)).unwrap_or_default();
    while !(8 + bytes.len()).is_multiple_of(8) {
        bytes.push(b' ');
    }
    bytes
}

/// Writes a safetensors file tensor by tensor. Call [`TensorFileWriter::write_tensor`] once per planned tensor,
/// in order, then [`TensorFileWriter::finish`]; dropping it unfinished removes the temp file.
pub struct TensorFileWriter {
    tensors: Vec<PlannedTensor>,
    next: usize,
    written_in_tensor: usize,
    out: Option<BufWriter<File>>,
    temp_path: PathBuf,
    final_path: PathBuf,
}

impl TensorFileWriter {
    /// Creates the temp file beside `path` and writes the header.
    pub fn create(path: &Path, tensors: Vec<PlannedTensor>, metadata: &BTreeMap<String, String>) -> Result<Self> {
        let temp_path = temp_path_for(path);
        let file = File::create(&temp_path).map_err(|e| Error::io("cannot create", &temp_path, e))?;
        let mut writer = TensorFileWriter {
            tensors,
            next: 0,
            written_in_tensor: 0,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            temp_path,
            final_path: path.to_owned(),
        };
        let header = header_json(&writer.tensors, metadata);
        writer.raw_write(&(header.len() as u64).to_le_bytes())?;
        writer.raw_write(&header)?;
        Ok(writer)
    }

    /// The file this writer puts in place when finished.
    pub fn path(&self) -> &Path {
        &self.final_path
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

    /// Appends bytes of the current tensor; may be called several times per tensor. A tensor is complete when
    /// its planned byte length has been written.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        // Zero-length tensors need no bytes: the exporter may write them (empty) or pass over them.
        while self.written_in_tensor == 0
            && self.tensors.get(self.next).is_some_and(|t| t.size_bytes() == 0 && t.name != name)
        {
            self.next += 1;
        }
        let Some(expected) = self.tensors.get(self.next) else {
            return Err(self.misuse(format!("export wrote unplanned tensor {name:?}")));
        };
        let total = expected.size_bytes();
        if expected.name != name || self.written_in_tensor + bytes.len() > total {
            return Err(self.misuse(format!("export wrote tensor {name:?} out of plan")));
        }
        self.raw_write(bytes)?;
        self.written_in_tensor += bytes.len();
        if self.written_in_tensor == total {
            self.next += 1;
            self.written_in_tensor = 0;
        }
        Ok(())
    }

    /// Flushes, syncs and renames the temp file into place. Fails if a planned tensor was not written.
    pub fn finish(mut self) -> Result<u64> {
        while self.tensors.get(self.next).is_some_and(|t| t.size_bytes() == 0) {
            self.next += 1;
        }
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

impl Drop for TensorFileWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

/// The temp file used while writing `path`: a hidden sibling with the process id.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` via a temp file + fsync + rename, so that `path` is never seen half-written.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let temp_path = temp_path_for(path);
    let result = (|| {
        let mut file = File::create(&temp_path).map_err(|e| Error::io("cannot create", &temp_path, e))?;
        file.write_all(bytes).map_err(|e| Error::io("cannot write", &temp_path, e))?;
        file.sync_all().map_err(|e| Error::io("cannot sync", &temp_path, e))?;
        std::fs::rename(&temp_path, path).map_err(|e| Error::io("cannot rename", path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp_path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(name: &str, shape: &[usize]) -> PlannedTensor {
        PlannedTensor { name: name.into(), dtype: DType::F32, shape: shape.to_vec() }
    }

    fn plan() -> Vec<PlannedTensor> {
        vec![planned("empty.first", &[0, 4]), planned("a", &[2]), planned("empty.mid", &[3, 0]), planned("b", &[1])]
    }

    #[test]
    fn zero_length_tensors_may_be_written_empty_or_passed_over() {
        let dir = std::env::temp_dir().join(format!("quantstudio-writer-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for written_empty in [true, false] {
            let path = dir.join(format!("zero-{written_empty}.safetensors"));
            let mut writer = TensorFileWriter::create(&path, plan(), &BTreeMap::new()).unwrap();
            if written_empty {
                writer.write_tensor("empty.first", &[]).unwrap();
            }
            writer.write_tensor("a", &[0; 8]).unwrap();
            if written_empty {
                writer.write_tensor("empty.mid", &[]).unwrap();
            }
            writer.write_tensor("b", &[0; 4]).unwrap();
            writer.finish().unwrap();
            assert!(path.is_file());
        }
        // A non-empty tensor still cannot be passed over.
        let path = dir.join("skipped.safetensors");
        let mut writer = TensorFileWriter::create(&path, plan(), &BTreeMap::new()).unwrap();
        assert!(writer.write_tensor("b", &[0; 4]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
