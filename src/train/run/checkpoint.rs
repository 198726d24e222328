//! Checkpoints: the tensors (parameters, optimizer state) in a safetensors file, and the rest
//! (step, RNG seed, data position, what was trained) in a JSON file beside it that also holds
//! the tensors file's SHA-256.
//!
//! Both files are written atomically: to a temporary name, `fsync`ed, renamed into place, and
//! the directory `fsync`ed. The tensors file goes first and the JSON last, so a JSON file only
//! exists for a complete tensors file; a crash in between leaves an orphan that the next save
//! overwrites. Loading takes the JSON with the highest step and checks the checksum: a
//! truncated or altered tensors file is an error naming it, never silently used.
//! The two newest checkpoints are kept.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::base::safetensors::{self, OutTensor, TensorFile};
use crate::base::{Precision, Tensor};
use crate::{Error, Result};

/// Checkpoints kept in a directory; older ones are removed after a save.
const KEEP: usize = 2;

/// What a checkpoint's JSON file holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    pub format: u32,
    /// Steps completed; training resumes at this step.
    pub step: u64,
    /// The seed that fixes initialisation, sample order and augmentation; with `step` it is
    /// the whole RNG state (every draw is a function of the seed and a position).
    pub seed: u64,
    /// Samples consumed so far (`step * batch_size`): the data position.
    pub data_position: u64,
    pub job: String,
    pub model: String,
    pub dataset: String,
    pub batch_size: u64,
    /// The optimizer, as the trainer names it (e.g. `adamw(lr=0.001,...)`).
    pub optimizer: String,
    /// The GEMMs' precision (`f32` or `bf16`); the tensors are f32 masters either way.
    /// Checkpoints written before it was recorded were f32.
    #[serde(default)]
    pub precision: Precision,
    /// The tensors file, relative to the JSON file's directory.
    pub tensors_file: String,
    /// Lower-case hex SHA-256 of the tensors file.
    pub sha256: String,
}

pub const FORMAT: u32 = 1;

/// Writes a checkpoint for `meta.step` into `dir` (created if needed) and returns the JSON
/// file's path. `meta.tensors_file` and `meta.sha256` are filled in here.
pub fn save(
    dir: &Path,
    meta: &CheckpointMeta,
    tensors: &[(&str, &[usize], &[f32])],
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let stem = format!("ckpt-{:010}", meta.step);
    let tensors_name = format!("{stem}.safetensors");
    let tensors_path = dir.join(&tensors_name);

    let out: Vec<(&str, OutTensor)> = tensors
        .iter()
        .map(|&(name, shape, data)| (name, OutTensor::F32 { shape, data }))
        .collect();
    let bytes = safetensors::serialize(&tensors_path, &out, &Default::default())?;
    write_atomic(&tensors_path, &bytes)?;

    let mut meta = meta.clone();
    meta.format = FORMAT;
    meta.tensors_file = tensors_name;
    meta.sha256 = sha256_hex(&bytes);
    let json_path = dir.join(format!("{stem}.json"));
    let json = serde_json::to_string_pretty(&meta)
        .map_err(|e| Error::invalid(json_path.display().to_string(), e.to_string()))?;
    write_atomic(&json_path, json.as_bytes())?;
    sync_dir(dir)?;
    prune(dir)?;
    Ok(json_path)
}

/// The newest checkpoint in `dir`, checked; `Ok(None)` when the directory has none.
pub fn load_latest(dir: &Path) -> Result<Option<(CheckpointMeta, HashMap<String, Tensor>)>> {
    match list(dir)?.pop() {
        Some((_, json)) => load(&json).map(Some),
        None => Ok(None),
    }
}

/// The step of the newest checkpoint in `dir` (from its file name; nothing is read or
/// verified), `None` when the directory has none.
pub fn latest_step(dir: &Path) -> Result<Option<u64>> {
    Ok(list(dir)?.pop().map(|(step, _)| step))
}

/// Loads the checkpoint whose JSON file is `json_path`, verifying the tensors file's checksum.
pub fn load(json_path: &Path) -> Result<(CheckpointMeta, HashMap<String, Tensor>)> {
    let text = std::fs::read_to_string(json_path).map_err(|e| Error::io(json_path, e))?;
    let meta: CheckpointMeta = serde_json::from_str(&text)
        .map_err(|e| Error::invalid(json_path.display().to_string(), e.to_string()))?;
    if meta.format != FORMAT {
        return Err(Error::invalid(
            json_path.display().to_string(),
            format!(
                "checkpoint format {} is not the supported {FORMAT}",
                meta.format
            ),
        ));
    }
    // A plain file name: a damaged or planted JSON must not make a resume read elsewhere.
    if Path::new(&meta.tensors_file).file_name() != Some(std::ffi::OsStr::new(&meta.tensors_file)) {
        return Err(Error::invalid(
            json_path.display().to_string(),
            format!(
                "tensors_file '{}' must be a file name in the checkpoint's directory",
                meta.tensors_file
            ),
        ));
    }
    let dir = json_path.parent().unwrap_or(Path::new("."));
    let tensors_path = dir.join(&meta.tensors_file);
    let bytes = std::fs::read(&tensors_path).map_err(|e| Error::io(&tensors_path, e))?;
    let actual = sha256_hex(&bytes);
    if actual != meta.sha256 {
        return Err(Error::invalid(
            tensors_path.display().to_string(),
            format!(
                "checkpoint is corrupted: SHA-256 is {actual}, {} records {}",
                json_path.display(),
                meta.sha256
            ),
        ));
    }
    let file = TensorFile::from_bytes(&tensors_path, bytes)?;
    let tensors = file
        .names()
        .into_iter()
        .map(|name| Ok((name.clone(), file.f32_exact(&name)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    Ok((meta, tensors))
}

/// The checkpoints in `dir` as `(step, json path)`, oldest first.
fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("ckpt-"))
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(step) = step {
            found.push((step, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Removes all but the newest [`KEEP`] checkpoints.
fn prune(dir: &Path) -> Result<()> {
    let all = list(dir)?;
    for (_, json) in all.iter().take(all.len().saturating_sub(KEEP)) {
        let tensors = json.with_extension("safetensors");
        // The JSON goes first: a checkpoint without its JSON is never loaded.
        std::fs::remove_file(json).map_err(|e| Error::io(json, e))?;
        if tensors.exists() {
            std::fs::remove_file(&tensors).map_err(|e| Error::io(&tensors, e))?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same directory: write, fsync,
/// rename. Readers see the old file or the whole new one, never a part.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Makes the renames in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
