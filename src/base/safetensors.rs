//! Safetensors files, the one reader and writer for model weights, golden files, inputs and
//! outputs, and training checkpoints: tensors read as `f32` (from f32, f16 or bf16) or as masks,
//! with errors that name the file and the tensor; tensors written as f32 or u8 with metadata.
//!
//! A file is read whole and its header checked against the bytes it holds before any tensor is
//! decoded, so a header that claims absurd sizes is an error naming the file, and every
//! allocation is bounded by the file's real size, never by what its header says.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub use ::safetensors::Dtype;
use ::safetensors::tensor::{Metadata, TensorInfo};
use ::safetensors::{SafeTensors, View};

use super::tensor::{Tensor, shape_string};
use crate::error::{Error, Result};

/// A safetensors file read into memory, with its header parsed and validated.
pub struct TensorFile {
    label: PathBuf,
    bytes: Vec<u8>,
    header_len: usize,
    meta: Metadata,
}

impl std::fmt::Debug for TensorFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TensorFile({})", self.label.display())
    }
}

impl TensorFile {
    /// Reads and validates `path`: a missing or unreadable file is [`Error::Io`]; a file
    /// that is not safetensors, or whose data is shorter than its header says
    /// (truncated), is [`Error::Invalid`] naming the file.
    pub fn open(path: impl AsRef<Path>) -> Result<TensorFile> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        TensorFile::from_bytes(path, bytes)
    }

    /// Parses bytes already in memory; `label` names them in errors.
    pub fn from_bytes(label: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<TensorFile> {
        let label = label.into();
        let ctx = || label.display().to_string();
        let describe = |e: ::safetensors::SafeTensorError| -> String {
            use ::safetensors::SafeTensorError as E;
            match e {
                E::MetadataIncompleteBuffer => format!(
                    "truncated (or padded) safetensors file: the header's tensor offsets do \
                     not match the {} bytes of data the file holds",
                    bytes.len().saturating_sub(8 + header_len_hint(&bytes))
                ),
                E::InvalidHeaderLength => format!(
                    "not a safetensors file, or truncated inside its header: the header \
                     length {} exceeds the file size {}",
                    header_len_hint(&bytes),
                    bytes.len()
                ),
                E::HeaderTooSmall => format!(
                    "not a safetensors file: {} bytes, too short for a header",
                    bytes.len()
                ),
                other => format!("not a readable safetensors file ({other})"),
            }
        };
        // Validates the whole layout: the header's length against the file, each tensor's
        // size against its shape and dtype (overflow checked), and the offsets against the
        // data, which they must cover exactly (this catches truncation).
        let (header_len, meta) =
            SafeTensors::read_metadata(&bytes).map_err(|e| Error::invalid(ctx(), describe(e)))?;
        Ok(TensorFile {
            label,
            bytes,
            header_len,
            meta,
        })
    }

    /// The path (or label) the file was read from.
    pub fn path(&self) -> &Path {
        &self.label
    }

    /// `"FILE: tensor 'NAME'"`, the error context for one tensor.
    pub fn context(&self, name: &str) -> String {
        format!("{}: tensor '{name}'", self.label.display())
    }

    /// `"FILE: metadata 'KEY'"`, the error context for one metadata field.
    pub fn meta_context(&self, key: &str) -> String {
        format!("{}: metadata '{key}'", self.label.display())
    }

    /// The `__metadata__` strings of the header (empty when there are none).
    pub fn metadata(&self) -> BTreeMap<String, String> {
        self.meta
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// One metadata value.
    pub fn meta_value(&self, key: &str) -> Option<&str> {
        self.meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(key))
            .map(|s| s.as_str())
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.meta.tensors().keys().cloned().collect();
        v.sort();
        v
    }

    pub fn contains(&self, name: &str) -> bool {
        self.meta.info(name).is_some()
    }

    /// The shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.meta.info(name).map(|i| i.shape.as_slice())
    }

    /// The dtype of tensor `name`, if present.
    pub fn dtype(&self, name: &str) -> Option<Dtype> {
        self.meta.info(name).map(|i| i.dtype)
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.meta
            .info(name)
            .ok_or_else(|| Error::invalid(self.context(name), "missing from the file"))
    }

    fn raw(&self, info: &TensorInfo) -> &[u8] {
        let start = 8 + self.header_len;
        &self.bytes[start + info.data_offsets.0..start + info.data_offsets.1]
    }

    /// Tensor `name` as `f32`, converted from f32, f16 or bf16 (other dtypes are an error),
    /// and checked to be finite.
    pub fn f32(&self, name: &str) -> Result<Tensor> {
        let t = self.decode_f32(name)?;
        if let Some(i) = t.data.iter().position(|x| !x.is_finite()) {
            return Err(Error::invalid(
                self.context(name),
                format!(
                    "non-finite value {} at flat index {i} (of {})",
                    t.data[i],
                    t.data.len()
                ),
            ));
        }
        Ok(t)
    }

    /// Tensor `name` exactly as stored: F32 only, non-finite values kept. For files written
    /// in f32 by this crate (checkpoints), where another dtype means another file and the
    /// NaN of a diverged run is part of the state.
    pub fn f32_exact(&self, name: &str) -> Result<Tensor> {
        let dtype = self.info(name)?.dtype;
        if dtype != Dtype::F32 {
            return Err(Error::invalid(
                self.context(name),
                format!("expected F32, found {dtype:?}"),
            ));
        }
        self.decode_f32(name)
    }

    fn decode_f32(&self, name: &str) -> Result<Tensor> {
        let info = self.info(name)?;
        let raw = self.raw(info);
        let data: Vec<f32> = match info.dtype {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::invalid(
                    self.context(name),
                    format!("unsupported dtype {other:?}: expected F32, F16 or BF16"),
                ));
            }
        };
        Ok(Tensor {
            shape: info.shape.clone(),
            data,
        })
    }

    /// Tensor `name` as `f64`: F64 as stored, F32/F16/BF16 converted; checked to be finite.
    pub fn f64(&self, name: &str) -> Result<(Vec<usize>, Vec<f64>)> {
        let info = self.info(name)?;
        if info.dtype != Dtype::F64 {
            let t = self.f32(name)?;
            return Ok((t.shape, t.data.iter().map(|&v| v as f64).collect()));
        }
        let data: Vec<f64> = self
            .raw(info)
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            return Err(Error::invalid(
                self.context(name),
                format!("non-finite value {} at flat index {i}", data[i]),
            ));
        }
        Ok((info.shape.clone(), data))
    }

    /// Tensor `name`'s bytes; it must be U8 (images, masks, flags).
    pub fn u8(&self, name: &str) -> Result<(Vec<usize>, Vec<u8>)> {
        let info = self.info(name)?;
        if info.dtype != Dtype::U8 {
            return Err(Error::invalid(
                self.context(name),
                format!("unsupported dtype {:?}: expected U8", info.dtype),
            ));
        }
        Ok((info.shape.clone(), self.raw(info).to_vec()))
    }

    /// Like [`TensorFile::f32`], and checks the shape.
    pub fn f32_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.check_shape(name, shape)?;
        self.f32(name)
    }

    /// Checks that tensor `name` exists and has `shape`.
    pub fn check_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
        let info = self.info(name)?;
        if info.shape != shape {
            return Err(Error::invalid(
                self.context(name),
                format!(
                    "expected shape {}, found {}",
                    shape_string(shape),
                    shape_string(&info.shape)
                ),
            ));
        }
        Ok(())
    }

    /// A padding mask: nonzero = padded. Accepts U8, BOOL, I8, I32, I64 (any nonzero is
    /// padded) and F32/F16/BF16 (nonzero is padded; NaN is an error). Returns 0/1 bytes.
    pub fn mask(&self, name: &str, shape: &[usize]) -> Result<Vec<u8>> {
        self.check_shape(name, shape)?;
        let info = self.info(name)?;
        let raw = self.raw(info);
        let ints = |size: usize| -> Vec<u8> {
            raw.chunks_exact(size)
                .map(|c| u8::from(c.iter().any(|&b| b != 0)))
                .collect()
        };
        Ok(match info.dtype {
            Dtype::U8 | Dtype::BOOL | Dtype::I8 => ints(1),
            Dtype::I32 | Dtype::U32 => ints(4),
            Dtype::I64 | Dtype::U64 => ints(8),
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => self
                .f32(name)?
                .data
                .iter()
                .map(|&x| u8::from(x != 0.0))
                .collect(),
            other => {
                return Err(Error::invalid(
                    self.context(name),
                    format!("unsupported dtype {other:?} for a mask: expected U8 or BOOL"),
                ));
            }
        })
    }
}

/// The header length a safetensors file declares (its first 8 bytes), or 0.
fn header_len_hint(bytes: &[u8]) -> usize {
    bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
        .unwrap_or(0)
}

/// A tensor to write, borrowed: `f32` data or a `u8` mask.
#[derive(Debug, Clone, Copy)]
pub enum OutTensor<'a> {
    F32 { shape: &'a [usize], data: &'a [f32] },
    U8 { shape: &'a [usize], data: &'a [u8] },
}

impl<'a> From<&'a Tensor> for OutTensor<'a> {
    fn from(t: &'a Tensor) -> Self {
        OutTensor::F32 {
            shape: &t.shape,
            data: &t.data,
        }
    }
}

impl OutTensor<'_> {
    fn len(&self) -> usize {
        match self {
            OutTensor::F32 { data, .. } => data.len(),
            OutTensor::U8 { data, .. } => data.len(),
        }
    }
}

impl View for &OutTensor<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            OutTensor::F32 { .. } => Dtype::F32,
            OutTensor::U8 { .. } => Dtype::U8,
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            OutTensor::F32 { shape, .. } | OutTensor::U8 { shape, .. } => shape,
        }
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            OutTensor::F32 { data, .. } => Cow::Borrowed(bytemuck::cast_slice(data)),
            OutTensor::U8 { data, .. } => Cow::Borrowed(data),
        }
    }
    fn data_len(&self) -> usize {
        match self {
            OutTensor::F32 { data, .. } => data.len() * 4,
            OutTensor::U8 { data, .. } => data.len(),
        }
    }
}

/// Serializes tensors (little-endian, as safetensors requires) with metadata strings; the
/// header has no `__metadata__` when `metadata` is empty. `label` names the file in errors.
pub fn serialize<N: AsRef<str>>(
    label: &Path,
    tensors: &[(N, OutTensor<'_>)],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    for (name, t) in tensors {
        let shape = (&t).shape();
        if shape.iter().product::<usize>() != t.len() {
            return Err(Error::invalid(
                format!("{}: tensor '{}'", label.display(), name.as_ref()),
                format!(
                    "shape {} needs {} values, the data holds {}",
                    shape_string(shape),
                    shape.iter().product::<usize>(),
                    t.len()
                ),
            ));
        }
    }
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let meta = (!meta.is_empty()).then_some(meta);
    ::safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_ref(), t)), meta)
        .map_err(|e| Error::invalid(label.display().to_string(), e.to_string()))
}

/// Writes tensors with metadata strings to `path`.
pub fn write_file<N: AsRef<str>>(
    path: impl AsRef<Path>,
    tensors: &[(N, OutTensor<'_>)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let bytes = serialize(path, tensors, metadata)?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file whose header is `json`, followed by `data` bytes.
    fn file_with_header(json: &str, data: usize) -> Vec<u8> {
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend(json.as_bytes());
        bytes.extend(vec![0u8; data]);
        bytes
    }

    fn invalid(bytes: Vec<u8>) -> String {
        match TensorFile::from_bytes("bad.safetensors", bytes) {
            Err(e @ Error::Invalid { .. }) => e.to_string(),
            Err(e) => panic!("expected Error::Invalid, got {e:?}"),
            Ok(f) => panic!("expected an error, got {f:?}"),
        }
    }

    #[test]
    fn a_header_claiming_absurd_sizes_is_an_error_naming_the_file() {
        // A header length of 2^64 - 1, and one of 1 TB, in a 16-byte file.
        for n in [u64::MAX, 1 << 40] {
            let mut bytes = n.to_le_bytes().to_vec();
            bytes.extend([b'{', b'}', 0, 0, 0, 0, 0, 0]);
            let msg = invalid(bytes);
            assert!(msg.starts_with("bad.safetensors: "), "{msg}");
        }
        // A tensor of 2^40 x 2^40 elements (the byte count overflows), and one of 2^40 f32
        // values whose offsets claim 4 TB the file does not hold.
        for (shape, end) in [
            ("[1099511627776, 1099511627776]", 16u64),
            ("[1099511627776]", 1 << 42),
        ] {
            let json =
                format!(r#"{{"t":{{"dtype":"F32","shape":{shape},"data_offsets":[0,{end}]}}}}"#);
            let msg = invalid(file_with_header(&json, 16));
            assert!(msg.starts_with("bad.safetensors: "), "{msg}");
        }
    }

    #[test]
    fn written_tensors_read_back_and_a_wrong_length_names_the_tensor() {
        let t = Tensor::new(vec![2, 2], vec![1.0, -2.0, f32::NAN, 4.0]).unwrap();
        let mask = [0u8, 1, 1];
        let tensors = [
            ("t", OutTensor::from(&t)),
            (
                "m",
                OutTensor::U8 {
                    shape: &[3],
                    data: &mask,
                },
            ),
        ];
        let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let label = Path::new("out.safetensors");
        let f = TensorFile::from_bytes(label, serialize(label, &tensors, &meta).unwrap()).unwrap();
        assert_eq!(f.names(), ["m", "t"]);
        assert_eq!(f.meta_value("k"), Some("v"));
        assert_eq!(f.mask("m", &[3]).unwrap(), mask);
        // The NaN is kept by the exact reader and refused, by name, by the checked one.
        let back = f.f32_exact("t").unwrap();
        assert_eq!(back.shape, [2, 2]);
        assert!(back.data[2].is_nan());
        let msg = f.f32("t").unwrap_err().to_string();
        assert!(msg.contains("out.safetensors: tensor 't'") && msg.contains("non-finite"));
        let msg = f.f32_exact("m").unwrap_err().to_string();
        assert!(msg.contains("tensor 'm'") && msg.contains("expected F32, found U8"));

        let short = [(
            "s",
            OutTensor::F32 {
                shape: &[3],
                data: &[1.0, 2.0],
            },
        )];
        let msg = serialize(label, &short, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("out.safetensors: tensor 's'") && msg.contains("needs 3 values"),
            "{msg}"
        );
    }
}
