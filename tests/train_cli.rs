//! `attnrt-train` end to end: a run killed with SIGKILL resumes from its last checkpoint and
//! ends with exactly the parameters of an uninterrupted run, wherever the kill lands in a
//! save (each point of one, and at random); a damaged newest checkpoint is named and the one
//! before it resumed; a failed write stops or goes on as asked; SIGTERM checkpoints and exits
//! with 130; a file with several jobs is refused; `--precision` and the `precision` key, and
//! a resume in another precision. On the CPU always, and on GPU 0 as well when one is usable.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use attnrt::base::Tensor;
use attnrt::train::checkpoint::SavePoint;
use attnrt::train::{Precision, checkpoint, fault};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

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
        if let Ok(Some(c)) = checkpoint::load_latest(dir)
            && c.meta.step >= step
        {
            return c.meta.step;
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
        let meta = checkpoint::load_latest(&killed).unwrap().unwrap().meta;
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

        let whole = checkpoint::load_latest(&whole).unwrap().unwrap();
        let killed = checkpoint::load_latest(&killed).unwrap().unwrap();
        let (m1, t1, m2, t2) = (whole.meta, whole.tensors, killed.meta, killed.tensors);
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
        let meta = checkpoint::load_latest(&ckpt).unwrap().unwrap().meta;
        assert!(meta.step > 0 && meta.step < 100_000);
    }
}

/// The final checkpoint's tensors of a run in `dir`.
fn final_tensors(dir: &Path, iterations: u64) -> HashMap<String, Tensor> {
    let latest = checkpoint::load_latest(dir).unwrap().unwrap();
    assert_eq!(latest.meta.step, iterations, "{}", dir.display());
    latest.tensors
}

/// An uninterrupted run of `job` on the CPU with these flags, into `dir`.
fn uninterrupted(job: &Path, dir: &Path, flags: &[&str]) {
    let out = train(job, dir, "cpu", flags).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Names in `dir` that an interrupted save leaves (a temporary file, a tensors file without
/// its JSON).
fn leftovers(dir: &Path) -> usize {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names
        .iter()
        .filter(|n| {
            n.ends_with(".tmp")
                || n.strip_suffix(".safetensors")
                    .is_some_and(|stem| !names.contains(&format!("{stem}.json")))
        })
        .count()
}

#[test]
fn a_damaged_newest_checkpoint_is_named_and_resume_uses_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    let job = job_file(dir.path(), 8);
    let (whole, ckpt) = (dir.path().join("whole"), dir.path().join("ckpt"));
    uninterrupted(&job, &whole, &[]);
    assert!(
        train(&job, &ckpt, "cpu", &["--checkpoint-every", "2"])
            .status()
            .unwrap()
            .success()
    );
    let tensors = ckpt.join("ckpt-0000000008.safetensors");
    let mut bytes = std::fs::read(&tensors).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&tensors, bytes).unwrap();
    let out = train(&job, &ckpt, "cpu", &["--resume"]).output().unwrap();
    let log = stderr_of(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("ckpt-0000000008.json is damaged")
            && log.contains("corrupted")
            && log.contains("resuming from step 6")
            && log.contains("resumed from step 6"),
        "{log}"
    );
    assert!(ckpt.join("ckpt-0000000008.json.damaged").exists());
    assert_eq!(final_tensors(&ckpt, 8), final_tensors(&whole, 8));

    // Nothing intact: an error naming each file, never a silent fresh start.
    for name in ["ckpt-0000000006.json", "ckpt-0000000008.json"] {
        std::fs::write(ckpt.join(name), "{").unwrap();
    }
    let out = train(&job, &ckpt, "cpu", &["--resume"]).output().unwrap();
    let log = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("no intact checkpoint")
            && log.contains("ckpt-0000000006.json")
            && log.contains("ckpt-0000000008.json"),
        "{log}"
    );
}

/// A process killed at each point of a save (half a tensors file written, the tensors file
/// in place without its JSON, half a JSON written, the JSON in place, half-way through
/// removing the oldest checkpoint) resumes, and ends with the uninterrupted run's tensors.
#[test]
fn a_kill_at_every_point_of_a_save_leaves_a_resumable_state() {
    let dir = tempfile::tempdir().unwrap();
    let job = job_file(dir.path(), 10);
    let whole = dir.path().join("whole");
    uninterrupted(&job, &whole, &[]);
    let expected = final_tensors(&whole, 10);
    for point in SavePoint::ALL {
        let ckpt = dir.path().join(point.name());
        let out = train(&job, &ckpt, "cpu", &["--checkpoint-every", "2"])
            .env(fault::ENV, format!("kill@6:{}", point.name()))
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{point:?}: {}",
            stderr_of(&out)
        );
        // Until the new JSON is in place the checkpoint of step 4 is the newest intact one.
        let resumed_at = match point {
            SavePoint::JsonRenamed | SavePoint::Pruning => 6,
            _ => 4,
        };
        let out = train(&job, &ckpt, "cpu", &["--checkpoint-every", "2", "--resume"])
            .output()
            .unwrap();
        let log = stderr_of(&out);
        assert!(out.status.success(), "{point:?}: {log}");
        assert!(
            log.contains(&format!("resumed from step {resumed_at}")),
            "{point:?}: {log}"
        );
        assert_eq!(final_tensors(&ckpt, 10), expected, "{point:?}");
        assert_eq!(leftovers(&ckpt), 0, "{point:?}");
    }
}

/// SIGKILL at random (seeded) moments of a run that checkpoints every step, resuming after
/// each, up to 30 times, then once to the end: every resume succeeds, and the result is the
/// uninterrupted run's.
#[test]
fn random_kills_while_checkpointing_always_resume_to_the_same_result() {
    const ITERATIONS: u64 = 100;
    const KILLS: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let job = job_file(dir.path(), ITERATIONS);
    let whole = dir.path().join("whole");
    let timed = |flags: &[&str]| {
        let started = Instant::now();
        uninterrupted(&job, &whole, flags);
        started.elapsed()
    };
    let full = timed(&["--checkpoint-every", "1"]);
    // A resume with nothing left to train: the start-up a kill must outlast to land in a step.
    let startup = timed(&["--checkpoint-every", "1", "--resume"]);
    // Kills from half-way through the start-up to a few steps past it, so that some land
    // before any step and the run still gets through its steps in about KILLS kills.
    let window = startup.mul_f64(0.5)..startup + full.saturating_sub(startup) * 3 / KILLS as u32;
    let ckpt = dir.path().join("ckpt");
    let mut rng = ChaCha8Rng::seed_from_u64(19);
    let (mut kills, mut mid_save) = (0, 0);
    loop {
        let mut flags = vec!["--checkpoint-every", "1"];
        if ckpt.exists() {
            flags.push("--resume");
        }
        let mut child = train(&job, &ckpt, "cpu", &flags).spawn().unwrap();
        if kills < KILLS {
            std::thread::sleep(rng.random_range(window.clone()));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                mid_save += usize::from(leftovers(&ckpt) > 0);
                continue;
            }
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "after {kills} kills: {}",
            stderr_of(&out)
        );
        break;
    }
    println!("{kills} kills, {mid_save} of them left a save half-done");
    assert_eq!(
        final_tensors(&ckpt, ITERATIONS),
        final_tensors(&whole, ITERATIONS)
    );
}

/// A checkpoint that cannot be written (a full disk, injected): by default the run stops
/// with the error and the previous checkpoint; with `--on-checkpoint-error continue` it says
/// so, trains on, and ends as an uninterrupted run.
#[test]
fn a_failed_checkpoint_write_stops_or_goes_on_as_asked() {
    let dir = tempfile::tempdir().unwrap();
    let job = job_file(dir.path(), 8);
    let whole = dir.path().join("whole");
    uninterrupted(&job, &whole, &[]);

    let stops = dir.path().join("stops");
    let out = train(&job, &stops, "cpu", &["--checkpoint-every", "2"])
        .env(fault::ENV, "write_fail@4")
        .output()
        .unwrap();
    let log = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("checkpoint of step 4: not written")
            && log.contains("no space left on device")
            && log.contains("the checkpoint of step 2")
            && log.contains("is kept"),
        "{log}"
    );
    assert_eq!(
        checkpoint::load_latest(&stops).unwrap().unwrap().meta.step,
        2
    );
    assert_eq!(leftovers(&stops), 0);
    // The kept checkpoint resumes.
    let out = train(&job, &stops, "cpu", &["--resume"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(final_tensors(&stops, 8), final_tensors(&whole, 8));

    let goes_on = dir.path().join("goes-on");
    let out = train(
        &job,
        &goes_on,
        "cpu",
        &[
            "--checkpoint-every",
            "2",
            "--on-checkpoint-error",
            "continue",
        ],
    )
    .env(fault::ENV, "write_fail@4")
    .output()
    .unwrap();
    let log = stderr_of(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("checkpoint of step 4: not written") && log.contains("training goes on"),
        "{log}"
    );
    assert_eq!(final_tensors(&goes_on, 8), final_tensors(&whole, 8));

    let out = train(&job, &goes_on, "cpu", &["--on-checkpoint-error", "maybe"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("'maybe' is not one of stop, continue"));
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
        let meta = checkpoint::load_latest(dir).unwrap().unwrap().meta;
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
