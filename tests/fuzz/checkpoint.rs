//! Training checkpoints (their JSON and their tensors) and the manager's saved run
//! (`manager.json`), as `--resume` reads them.

use std::path::Path;

use attnrt::base::{DistributionRatio, Precision};
use attnrt::multijob::saved::{FILE_NAME, SavedJob, SavedRun};
use attnrt::sched::report::{FailedJob, JobReport};
use attnrt::train::checkpoint::{self, CheckpointMeta};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

use crate::harness::{bounded, config, damaged, damaged_safetensors};

fn meta() -> CheckpointMeta {
    CheckpointMeta {
        format: checkpoint::FORMAT,
        step: 12,
        seed: 7,
        data_position: 96,
        job: "job-a".into(),
        model: "mlp".into(),
        dataset: "synthetic".into(),
        batch_size: 8,
        optimizer: "adamw(lr=0.001)".into(),
        precision: Precision::F32,
        tensors_file: String::new(),
        sha256: String::new(),
    }
}

/// A checkpoint's two files, as `checkpoint::save` writes them.
fn seed() -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let w = [0.5f32, -1.0, 2.0, f32::NAN, 0.0, 3.0];
    let json = checkpoint::save(
        dir.path(),
        &meta(),
        &[("w", &[2, 3], &w), ("b", &[1], &[1.0])],
        None,
    )
    .unwrap();
    let tensors = json.with_extension("safetensors");
    (
        std::fs::read(&json).unwrap(),
        std::fs::read(tensors).unwrap(),
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Damaged JSON, damaged tensors, and whether to record the damaged tensors' checksum in the
/// JSON (so that the damage reaches the tensor reader, past the checksum).
fn damaged_checkpoint() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, bool)> {
    let (json, tensors) = seed();
    (
        damaged(vec![json], 3),
        damaged_safetensors(vec![tensors], 3),
        any::<bool>(),
    )
}

fn write_checkpoint(dir: &Path, json: &[u8], tensors: &[u8], fix_sha: bool) {
    let mut json = json.to_vec();
    if fix_sha
        && let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&json)
        && let Some(obj) = v.as_object_mut()
    {
        obj.insert("sha256".into(), sha256_hex(tensors).into());
        json = serde_json::to_vec(&v).unwrap();
    }
    std::fs::write(dir.join("ckpt-0000000012.json"), json).unwrap();
    std::fs::write(dir.join("ckpt-0000000012.safetensors"), tensors).unwrap();
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn checkpoints((json, tensors, fix_sha) in damaged_checkpoint()) {
        bounded("checkpoint", move || {
            let dir = tempfile::tempdir().unwrap();
            write_checkpoint(dir.path(), &json, &tensors, fix_sha);
            let _ = checkpoint::load(&dir.path().join("ckpt-0000000012.json"));
            // What --resume does: the newest intact checkpoint, the damaged ones set aside.
            if let Ok(Some(latest)) = checkpoint::load_latest(dir.path()) {
                let _ = checkpoint::set_aside(&latest.damaged);
            }
        });
    }

    #[test]
    fn saved_runs(json in damaged(vec![saved_run_seed()], 4)) {
        bounded("manager.json", move || {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(FILE_NAME), json).unwrap();
            let _ = SavedRun::load(dir.path(), &["a", "b", "c"], 2);
        });
    }
}

fn saved_run_seed() -> Vec<u8> {
    let run = SavedRun {
        clock_s: 12.5,
        busy_s: vec![10.0, 3.5],
        jobs: vec![
            SavedJob::Unfinished {
                name: "a".into(),
                calibration: None,
                dr: Some(DistributionRatio::new(vec![3, 7]).unwrap()),
            },
            SavedJob::Finished {
                report: JobReport {
                    name: "b".into(),
                    completion_s: 4.0,
                    exclusive_s: 2.0,
                    slowdown: 2.0,
                },
            },
            SavedJob::Failed {
                failure: FailedJob {
                    name: "c".into(),
                    step: 3,
                    error: "out of memory".into(),
                },
            },
        ],
    };
    serde_json::to_vec_pretty(&run).unwrap()
}

/// A checkpoint whose JSON names a tensors file outside its own directory is refused: a
/// damaged or planted JSON cannot make `--resume` read any file on the machine.
#[test]
fn checkpoint_tensors_file_cannot_leave_its_directory() {
    let (json, tensors) = seed();
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("job-a");
    std::fs::create_dir(&inner).unwrap();
    std::fs::write(dir.path().join("outside.safetensors"), &tensors).unwrap();
    let outside = dir.path().join("outside.safetensors");
    for name in [
        "../outside.safetensors".to_string(),
        outside.display().to_string(),
        "..".to_string(),
        String::new(),
    ] {
        let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v["tensors_file"] = name.clone().into();
        std::fs::write(inner.join("ckpt-0000000012.json"), v.to_string()).unwrap();
        let e = checkpoint::load(&inner.join("ckpt-0000000012.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensors_file"), "{name}: {e}");
    }
}

/// A saved run that does not fit the run resuming it (device count, impossible times) is an
/// error naming the file, not a run that indexes past its devices or starts at 10^308 s.
#[test]
fn saved_run_values_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let good: serde_json::Value = serde_json::from_slice(&saved_run_seed()).unwrap();
    let names = ["a", "b", "c"];
    std::fs::write(dir.path().join(FILE_NAME), good.to_string()).unwrap();
    assert!(SavedRun::load(dir.path(), &names, 2).unwrap().is_some());
    let e = SavedRun::load(dir.path(), &names, 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains(FILE_NAME) && e.contains("busy_s"), "{e}");
    for (key, value, named) in [
        ("clock_s", serde_json::json!(1e308), "clock_s"),
        ("clock_s", serde_json::json!(-1.0), "clock_s"),
        ("busy_s", serde_json::json!([1.0, -2.0]), "busy_s"),
    ] {
        let mut v = good.clone();
        v[key] = value;
        std::fs::write(dir.path().join(FILE_NAME), v.to_string()).unwrap();
        let e = SavedRun::load(dir.path(), &names, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains(FILE_NAME) && e.contains(named), "{key}: {e}");
    }
    let mut v = good.clone();
    v["jobs"][0]["dr"] = serde_json::json!([10]);
    std::fs::write(dir.path().join(FILE_NAME), v.to_string()).unwrap();
    let e = SavedRun::load(dir.path(), &names, 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("job 'a'") && e.contains("dr"), "{e}");
}
