//! `attnrt-train` end to end: a run killed with SIGKILL resumes from its last checkpoint and
//! ends with exactly the parameters of an uninterrupted run; SIGTERM checkpoints and exits
//! with 130; a file with several jobs is refused; `--precision` and the `precision` key, and
//! a resume in another precision. On the CPU always, and on GPU 0 as well when one is usable.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use attnrt::train::{Precision, checkpoint};

mod common;

fn binary() -> PathBuf {
    common::bin("attnrt-train", env!("CARGO_BIN_EXE_attnrt-train"))
}

/// A small CIFAR-10-format dataset and a one-job file of `iterations` steps, in `dir`.
fn job_file(dir: &Path, iterations: u64) -> PathBuf {
    let mut bytes = Vec::new();
    for r in 0..64usize {
        bytes.push((r % 10) as u8);
        bytes.extend((0..3072).map(|p| ((p * (r % 10 + 1)) % 256) as u8));
    }
    std::fs::write(dir.join("data_batch_1.bin"), bytes).unwrap();
    let path = dir.join("job.toml");
    std::fs::write(
        &path,
        format!(
            "[[job]]\nname = \"tiny\"\nmodel = \"mlp:8\"\ndataset = \"cifar10:{}\"\n\
             batch_size = 16\niterations = {iterations}\n",
            dir.display()
        ),
    )
    .unwrap();
    path
}

fn train(job: &Path, ckpt: &Path, device: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(binary());
    c.arg("--jobs")
        .arg(job)
        .args([
            "--gpus",
            device,
            "--optimizer",
            "sgd",
            "--lr",
            "0.01",
            "--checkpoint-dir",
        ])
        .arg(ckpt)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Waits until `dir` holds a checkpoint of at least `step`; panics after a minute or if the
/// child ends first.
fn wait_for_checkpoint(child: &mut Child, dir: &Path, step: u64) -> u64 {
    let start = Instant::now();
    loop {
        if let Ok(Some((m, _))) = checkpoint::load_latest(dir)
            && m.step >= step
        {
            return m.step;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before checkpoint {step}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no checkpoint {step} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn devices() -> Vec<&'static str> {
    let mut d = vec!["cpu"];
    if attnrt::gpu::testing::gpu_or_skip("train_cli on GPU 0").is_some() {
        d.push("0");
    }
    d
}

#[test]
fn sigkill_then_resume_matches_an_uninterrupted_run() {
    for device in devices() {
        let dir = tempfile::tempdir().unwrap();
        let job = job_file(dir.path(), 300);
        let (whole, killed) = (dir.path().join("whole"), dir.path().join("killed"));
        let out = train(&job, &whole, device, &[]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let mut child = train(&job, &killed, device, &["--checkpoint-every", "2"])
            .spawn()
            .unwrap();
        let at = wait_for_checkpoint(&mut child, &killed, 4);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (meta, _) = checkpoint::load_latest(&killed).unwrap().unwrap();
        assert!(
            meta.step >= at && meta.step < 300,
            "killed at step {}",
            meta.step
        );

        let out = train(
            &job,
            &killed,
            device,
            &["--checkpoint-every", "2", "--resume"],
        )
        .output()
        .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        assert!(log.contains("resumed from step"), "{log}");

        let (m1, t1) = checkpoint::load_latest(&whole).unwrap().unwrap();
        let (m2, t2) = checkpoint::load_latest(&killed).unwrap().unwrap();
        assert_eq!((m1.step, m2.step), (300, 300));
        assert_eq!(t1.len(), t2.len());
        for (name, a) in &t1 {
            // The same work in the same order on the same device: equal bit for bit.
            assert_eq!(a, &t2[name], "{device}: tensor {name} differs after resume");
        }
    }
}

#[test]
fn sigterm_checkpoints_and_exits_130() {
    for device in devices() {
        let dir = tempfile::tempdir().unwrap();
        let job = job_file(dir.path(), 100_000);
        let ckpt = dir.path().join("ckpt");
        let child = train(&job, &ckpt, device, &["--checkpoint-every", "1000"])
            .spawn()
            .unwrap();
        // The first checkpoint would be at 1000: wait for training to be under way instead.
        std::thread::sleep(Duration::from_millis(1500));
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = child.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{device}: {log}");
        assert!(log.contains("stopped by a signal"), "{log}");
        let (meta, _) = checkpoint::load_latest(&ckpt).unwrap().unwrap();
        assert!(meta.step > 0 && meta.step < 100_000);
    }
}

#[test]
fn corrupted_checkpoint_stops_resume_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let job = job_file(dir.path(), 4);
    let ckpt = dir.path().join("ckpt");
    assert!(train(&job, &ckpt, "cpu", &[]).status().unwrap().success());
    let tensors = ckpt.join("ckpt-0000000004.safetensors");
    let mut bytes = std::fs::read(&tensors).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&tensors, bytes).unwrap();
    let out = train(&job, &ckpt, "cpu", &["--resume"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("corrupted") && log.contains("ckpt-0000000004.safetensors"),
        "{log}"
    );
}

/// `--precision`: a bad value is a usage error naming the flag; a bad `precision` key names
/// the file, the job and the key; the key sets a run's precision and the flag overrides it,
/// as recorded in the checkpoint (bf16 emulated on the CPU); resuming a bf16 checkpoint in
/// f32 is refused with both named, and in bf16 it resumes.
#[test]
fn precision_flag_key_checkpoint_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let job = job_file(dir.path(), 4);
    let ckpt = dir.path().join("ckpt");
    let out = train(&job, &ckpt, "cpu", &["--precision", "fp16"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(
        log.contains("--precision") && log.contains("'fp16' is not one of f32, bf16"),
        "{log}"
    );

    let with_key = |value: &str| {
        let path = dir.path().join(format!("job-{value}.toml"));
        let text = std::fs::read_to_string(&job).unwrap();
        std::fs::write(&path, format!("{text}precision = \"{value}\"\n")).unwrap();
        path
    };
    let bad = with_key("half");
    let out = train(&bad, &ckpt, "cpu", &[]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("{}: job 'tiny': precision", bad.display()))
            && log.contains("'half'"),
        "{log}"
    );

    let bf16 = with_key("bf16");
    let overridden = dir.path().join("f32");
    let runs = [
        (&ckpt, vec![], Precision::Bf16),
        (&overridden, vec!["--precision", "f32"], Precision::F32),
    ];
    for (dir, flags, want) in runs {
        let out = train(&bf16, dir, "cpu", &flags).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (meta, _) = checkpoint::load_latest(dir).unwrap().unwrap();
        assert_eq!(meta.precision, want, "{flags:?}");
    }

    let out = train(&job, &ckpt, "cpu", &["--resume"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("was written with precision bf16, this run has f32"),
        "{log}"
    );
    let out = train(&job, &ckpt, "cpu", &["--resume", "--precision", "bf16"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && log.contains("resumed from step 4"),
        "{log}"
    );
}
