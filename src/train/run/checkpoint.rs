//! Checkpoints: the tensors (parameters, optimizer state) in a safetensors file, and the rest
//! (step, RNG seed, data position, what was trained) in a JSON file beside it that also holds
//! the tensors file's SHA-256.
//!
//! Both files are written atomically: to a temporary name, `fsync`ed, renamed into place, and
//! the directory `fsync`ed. The tensors file goes first and the JSON last, so a JSON file only
//! exists for a complete tensors file, and the older checkpoints are removed only after the
//! new JSON is in place: a process killed anywhere in a save leaves the previous checkpoint
//! whole (tests kill it at every [`SavePoint`]). What an interrupted save leaves behind
//! (temporary files, a tensors file without its JSON) is removed by the next save.
//!
//! Loading takes the newest checkpoint that verifies (its JSON parses, its tensors file has the
//! recorded checksum): a truncated or altered newest one is reported by name ([`Damaged`]) and
//! the one before it is used. The two newest checkpoints are kept.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::base::safetensors::{self, OutTensor, TensorFile};
use crate::base::{Precision, Tensor};
use crate::train::run::fault;
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

/// Where a save may be interrupted on purpose ([`SaveFault::KillAt`]), in the order a save
/// passes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SavePoint {
    /// Half of the tensors file's temporary copy written.
    TensorsPartial,
    /// The tensors file in place, its JSON not yet written.
    TensorsRenamed,
    /// Half of the JSON file's temporary copy written.
    JsonPartial,
    /// The JSON file in place, older checkpoints not yet removed.
    JsonRenamed,
    /// The oldest checkpoint's JSON removed, its tensors file not yet.
    Pruning,
}

impl SavePoint {
    pub const ALL: [SavePoint; 5] = [
        SavePoint::TensorsPartial,
        SavePoint::TensorsRenamed,
        SavePoint::JsonPartial,
        SavePoint::JsonRenamed,
        SavePoint::Pruning,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SavePoint::TensorsPartial => "tensors_partial",
            SavePoint::TensorsRenamed => "tensors_renamed",
            SavePoint::JsonPartial => "json_partial",
            SavePoint::JsonRenamed => "json_renamed",
            SavePoint::Pruning => "pruning",
        }
    }
}

impl std::str::FromStr for SavePoint {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        SavePoint::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = SavePoint::ALL.iter().map(|p| p.name()).collect();
                format!("POINT '{s}' is not one of {}", names.join(", "))
            })
    }
}

/// A fault met while saving, injected by tests ([`crate::train::run::fault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveFault {
    /// Writing the tensors file fails half-way, as on a full disk.
    DiskFull,
    /// The process kills itself at this point.
    KillAt(SavePoint),
}

/// Writes a checkpoint for `meta.step` into `dir` (created if needed) and returns the JSON
/// file's path. `meta.tensors_file` and `meta.sha256` are filled in here. `fault` is a test's
/// injected fault (`None` in real runs). On an error nothing of the new checkpoint is left
/// and the older ones are untouched.
pub fn save(
    dir: &Path,
    meta: &CheckpointMeta,
    tensors: &[(&str, &[usize], &[f32])],
    fault: Option<SaveFault>,
) -> Result<PathBuf> {
    let kill_at = |point| {
        if fault == Some(SaveFault::KillAt(point)) {
            fault::kill_self();
        }
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let stem = format!("ckpt-{:010}", meta.step);
    let tensors_name = format!("{stem}.safetensors");
    let tensors_path = dir.join(&tensors_name);

    let out: Vec<(&str, OutTensor)> = tensors
        .iter()
        .map(|&(name, shape, data)| (name, OutTensor::F32 { shape, data }))
        .collect();
    let bytes = safetensors::serialize(&tensors_path, &out, &Default::default())?;
    let cut = match fault {
        Some(SaveFault::DiskFull) => Some(Cut::DiskFull),
        Some(SaveFault::KillAt(SavePoint::TensorsPartial)) => Some(Cut::Kill),
        _ => None,
    };
    write_atomic(&tensors_path, &bytes, cut)?;
    // The tensors file's rename is made durable before the JSON that vouches for it exists.
    sync_dir(dir)?;
    kill_at(SavePoint::TensorsRenamed);

    let mut meta = meta.clone();
    meta.format = FORMAT;
    meta.tensors_file = tensors_name;
    meta.sha256 = sha256_hex(&bytes);
    let json_path = dir.join(format!("{stem}.json"));
    let json = serde_json::to_string_pretty(&meta)
        .map_err(|e| Error::invalid(json_path.display().to_string(), e.to_string()))?;
    let cut = (fault == Some(SaveFault::KillAt(SavePoint::JsonPartial))).then_some(Cut::Kill);
    write_atomic(&json_path, json.as_bytes(), cut)?;
    sync_dir(dir)?;
    kill_at(SavePoint::JsonRenamed);
    prune(dir, || kill_at(SavePoint::Pruning))?;
    Ok(json_path)
}

/// The newest intact checkpoint of a directory, and the newer ones that are not.
#[derive(Debug)]
pub struct Latest {
    pub meta: CheckpointMeta,
    pub tensors: HashMap<String, Tensor>,
    /// Its JSON file.
    pub json: PathBuf,
    /// Checkpoints newer than this one that did not load, newest first.
    pub damaged: Vec<Damaged>,
}

/// A checkpoint that did not load: a truncated or altered file, a missing tensors file.
#[derive(Clone, Debug, PartialEq)]
pub struct Damaged {
    pub json: PathBuf,
    /// Why, naming the file.
    pub error: String,
}

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "checkpoint {} is damaged: {}",
            self.json.display(),
            self.error
        )
    }
}

/// The newest checkpoint in `dir` that loads and verifies, with the newer ones that did not;
/// `Ok(None)` when the directory has none. When every checkpoint is damaged it is an error
/// naming each one: starting afresh would silently lose the run.
pub fn load_latest(dir: &Path) -> Result<Option<Latest>> {
    let mut damaged = Vec::new();
    for (_, json) in list(dir)?.into_iter().rev() {
        match load(&json) {
            Ok((meta, tensors)) => {
                return Ok(Some(Latest {
                    meta,
                    tensors,
                    json,
                    damaged,
                }));
            }
            Err(e) => damaged.push(Damaged {
                json,
                error: e.to_string(),
            }),
        }
    }
    if damaged.is_empty() {
        return Ok(None);
    }
    let all: Vec<String> = damaged.iter().map(|d| d.error.clone()).collect();
    Err(Error::invalid(
        dir.display().to_string(),
        format!(
            "no intact checkpoint to resume from ({}); remove the directory to start afresh",
            all.join("; ")
        ),
    ))
}

/// Renames damaged checkpoints out of the way (`ckpt-N.json` to `ckpt-N.json.damaged`, and
/// its tensors file alike), so that neither a later resume nor pruning counts them, and they
/// stay for a look. A run that resumes from an older checkpoint does this first.
pub fn set_aside(damaged: &[Damaged]) -> Result<()> {
    for d in damaged {
        for path in [d.json.clone(), d.json.with_extension("safetensors")] {
            let mut aside = path.clone().into_os_string();
            aside.push(".damaged");
            match std::fs::rename(&path, &aside) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(&path, e));
                }
                _ => {}
            }
        }
    }
    Ok(())
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
    Ok(files(dir)?
        .into_iter()
        .filter(|(_, name, _)| name.ends_with(".json"))
        .map(|(step, _, path)| (step, path))
        .collect())
}

/// Every `ckpt-<step>.*` file in `dir` as `(step, file name, path)`, oldest step first.
fn files(dir: &Path) -> Result<Vec<(u64, String, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        let step = name
            .strip_prefix("ckpt-")
            .and_then(|n| n.split_once('.'))
            .and_then(|(n, _)| n.parse::<u64>().ok());
        if let Some(step) = step {
            found.push((step, name, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Removes all but the newest [`KEEP`] checkpoints, and what interrupted saves left behind
/// (temporary files, tensors files without a JSON). `between` runs after the first JSON is
/// removed (a test's kill point).
fn prune(dir: &Path, mut between: impl FnMut()) -> Result<()> {
    let all = list(dir)?;
    let kept: Vec<u64> = all.iter().rev().take(KEEP).map(|&(s, _)| s).collect();
    for (_, json) in all.iter().take(all.len().saturating_sub(KEEP)) {
        // The JSON goes first: a checkpoint without its JSON is never loaded.
        std::fs::remove_file(json).map_err(|e| Error::io(json, e))?;
        between();
    }
    for (step, name, path) in files(dir)? {
        let leftover =
            name.ends_with(".tmp") || (name.ends_with(".safetensors") && !kept.contains(&step));
        if leftover {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// How a test cuts a write short.
#[derive(Clone, Copy, PartialEq)]
enum Cut {
    /// Half the bytes written, then "no space left on device".
    DiskFull,
    /// Half the bytes written, then the process is killed.
    Kill,
}

/// Writes `bytes` to `path` through a temporary file in the same directory: write, fsync,
/// rename. Readers see the old file or the whole new one, never a part; on an error the
/// temporary file is removed.
fn write_atomic(path: &Path, bytes: &[u8], cut: Option<Cut>) -> Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        let (head, tail) = match cut {
            Some(_) => bytes.split_at(bytes.len() / 2),
            None => (bytes, &[][..]),
        };
        f.write_all(head)?;
        match cut {
            Some(Cut::Kill) => {
                f.sync_all()?;
                fault::kill_self()
            }
            Some(Cut::DiskFull) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!("no space left on device (injected by {})", fault::ENV),
                ));
            }
            None => {}
        }
        f.write_all(tail)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
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
