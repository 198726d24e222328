//! `attnrt-train --jobs FILE` with several jobs: every job trains in a job process of its
//! own under the DR manager, and a job that fails, hangs or loses its manager costs no other
//! job anything. Each test runs on the CPU rehearsal of a two-device machine
//! (`--gpus cpu:2`, always) and on the machine's GPUs (`--gpus all`) when there are any; with
//! ATTNRT_REQUIRE_GPU=1 the GPU run is required.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use attnrt::sched::decisions::{DecisionLog, Entry, replay};
use attnrt::sched::report::Report;
use attnrt::train::fault;
use attnrt::train::run::checkpoint;

fn binary() -> PathBuf {
    common::bin("attnrt-train", env!("CARGO_BIN_EXE_attnrt-train"))
}

/// `cpu:2`, and `all` when a GPU is usable.
fn devices() -> Vec<&'static str> {
    let mut d = vec!["cpu:2"];
    if attnrt::gpu::testing::gpu_or_skip("multijob_cli on the GPUs").is_some() {
        d.push("all");
    }
    d
}

/// A job-file `[[job]]` of a small MLP on synthetic data.
fn job(name: &str, hidden: usize, batch: u64, iterations: u64, extra: &str) -> String {
    format!(
        "[[job]]\nname = \"{name}\"\nmodel = \"mlp:{hidden}\"\ndataset = \"synthetic:2000\"\n\
         batch_size = {batch}\niterations = {iterations}\n{extra}\n"
    )
}

fn write_jobs(dir: &Path, policy: &str, jobs: &[String]) -> PathBuf {
    let path = dir.join("jobs.toml");
    let text = format!(
        "[manager]\npolicy = \"{policy}\"\nperiod_s = 0.3\n\n{}",
        jobs.concat()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn manager(jobs: &Path, device: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.arg("--jobs")
        .arg(jobs)
        .args(["--gpus", device])
        .args(extra);
    cmd
}

fn report(path: &Path) -> Report {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn log_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn every_job_finishes_and_the_decisions_replay_through_the_policy_code() {
    for device in devices() {
        rehearse("thesis", device);
    }
}

#[test]
fn minmax_runs_live_on_four_devices_replays_and_is_predicted() {
    // `cpu:4`: four devices, so that the DRs are more than [10] and the policies differ.
    let mut devices = vec!["cpu:4"];
    if attnrt::gpu::testing::gpu_or_skip("minmax on the GPUs").is_some() {
        devices.push("all");
    }
    for device in devices {
        rehearse("minmax", device);
    }
}

/// Three jobs (one arriving late) under `policy` on `device`: every job finishes, the live
/// manager's decision log replays through the policy code, and the calibrated file
/// (`--write-sim`) simulates the run with the same policy, its own log replaying too.
fn rehearse(policy: &str, device: &str) {
    let dir = tempfile::tempdir().unwrap();
    let jobs = write_jobs(
        dir.path(),
        policy,
        &[
            job("a", 64, 64, 60, ""),
            job("b", 128, 128, 40, ""),
            job("late", 32, 32, 80, "arrival_s = 0.5"),
        ],
    );
    let path = |name: &str| dir.path().join(name);
    let out = manager(&jobs, device, &["--report"])
        .arg(path("r.json"))
        .arg("--decisions")
        .arg(path("d.json"))
        .arg("--write-sim")
        .arg(path("sim.toml"))
        .arg("--plot")
        .arg(path("p.svg"))
        .output()
        .unwrap();
    let log = log_of(&out);
    assert!(out.status.success(), "{policy} on {device}: {log}");
    let r = report(&path("r.json"));
    assert_eq!(r.policy, policy);
    assert_eq!(r.jobs.len(), 3, "{device}: {log}");
    assert!(r.failed.is_empty());
    for j in &r.jobs {
        assert!(
            j.slowdown.is_finite() && j.slowdown > 0.0,
            "{device}: {j:?}"
        );
        assert!(j.exclusive_s > 0.0 && j.completion_s > 0.0);
    }
    assert!(r.makespan_s > 0.0 && r.mean_gpu_util > 0.0);
    // The bound comes from the calibrated costs; measured times need not respect it.
    let bound = r.max_slowdown_bound.expect("a bound from the calibration");
    assert!(bound.is_finite() && bound > 0.0, "{bound}");

    // The live manager's decisions, replayed through a fresh manager of the same policy on
    // the recorded measurements (and, for minmax, the cost model it predicted from), are
    // reproduced one for one.
    let log_file =
        DecisionLog::from_json(&std::fs::read_to_string(path("d.json")).unwrap(), "d.json")
            .unwrap();
    let admissions = log_file
        .entries
        .iter()
        .filter(|e| matches!(e, Entry::Admit { .. }))
        .count();
    assert_eq!(admissions, 3);
    assert!(log_file.entries.len() > 3, "no rounds recorded");
    if policy == "minmax" {
        assert!(
            log_file
                .entries
                .iter()
                .any(|e| matches!(e, Entry::Round { model: Some(_), .. })),
            "no round recorded its cost model"
        );
    }
    assert_eq!(replay(&log_file).unwrap(), None);

    // The calibrated file predicts the run: the same policy, the same bound (the live one is
    // computed from that file), and a simulator's log that replays the same way.
    let out = Command::new(binary())
        .arg("--simulate")
        .arg("--jobs")
        .arg(path("sim.toml"))
        .arg("--decisions")
        .arg(path("sim-d.json"))
        .arg("--report")
        .arg(path("sim-r.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", log_of(&out));
    let predicted = report(&path("sim-r.json"));
    assert_eq!(predicted.policy, policy);
    let predicted_bound = predicted.max_slowdown_bound.unwrap();
    assert!(
        (predicted_bound - bound).abs() <= 1e-9 * bound,
        "{predicted_bound} {bound}"
    );
    assert!(predicted.max_slowdown >= bound * (1.0 - 1e-9));
    eprintln!(
        "{policy} on {device}: max Slow-Down {:.3} live, {:.3} predicted, bound {bound:.3}; \
         makespan {:.2} s live, {:.2} s predicted",
        r.max_slowdown, predicted.max_slowdown, r.makespan_s, predicted.makespan_s
    );
    let sim_log =
        DecisionLog::from_json(&std::fs::read_to_string(path("sim-d.json")).unwrap(), "sim")
            .unwrap();
    assert_eq!(replay(&sim_log).unwrap(), None);
}

/// The job processes of the manager `pid`, with their command lines.
fn job_processes_of(pid: u32) -> Vec<(u32, String)> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
        .map(|c| {
            let cmd = std::fs::read(format!("/proc/{c}/cmdline")).unwrap_or_default();
            (c, String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect()
}

/// Collects the manager's standard error on a thread; lines arrive on the channel.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits (up to two minutes) until every job of `names` shows `running` with at least
/// `steps` steps done in the live view's plain lines; returns everything read.
fn wait_until_running(lines: &mpsc::Receiver<String>, names: &[&str], steps: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = String::new();
    let mut ok = vec![false; names.len()];
    while !ok.iter().all(|&o| o) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("jobs never all ran {steps} steps:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
        for (k, name) in names.iter().enumerate() {
            let prefix = format!("job {name} ");
            if let Some(rest) = line
                .split("] ")
                .nth(1)
                .and_then(|r| r.strip_prefix(&prefix))
            {
                let step: u64 = rest
                    .trim_start()
                    .split('/')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                ok[k] |= rest.contains("running") && step >= steps;
            }
        }
    }
    seen
}

#[test]
fn failing_jobs_are_reported_and_the_others_finish() {
    for device in devices() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = write_jobs(
            dir.path(),
            "even",
            &[
                job("good", 64, 64, 120, ""),
                // A learning rate this large makes the loss NaN within a few steps.
                job(
                    "diverges",
                    64,
                    64,
                    100_000,
                    "optimizer = \"sgd\"\nlr = 1e30",
                ),
                job("killed", 32, 32, 100_000, ""),
                job("other", 32, 32, 150, ""),
            ],
        );
        let rep = dir.path().join("r.json");
        let mut child = manager(&jobs, device, &["--report"])
            .arg(&rep)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = stderr_lines(&mut child);
        let mut log = wait_until_running(&lines, &["killed"], 3);
        let (victim, _) = job_processes_of(child.id())
            .into_iter()
            .find(|(_, cmd)| cmd.contains("--job-process=killed"))
            .expect("the process of job 'killed'");
        assert!(
            Command::new("kill")
                .args(["-KILL", &victim.to_string()])
                .status()
                .unwrap()
                .success()
        );
        let status = child.wait().unwrap();
        log.extend(lines.iter().map(|l| l + "\n"));
        assert_eq!(status.code(), Some(1), "{device}: {log}");
        let r = report(&rep);
        let done: Vec<&str> = r.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(done, ["good", "other"], "{device}: {log}");
        let failed = |name: &str| r.failed.iter().find(|f| f.name == name).unwrap();
        assert!(
            failed("diverges").error.contains("loss is NaN")
                || failed("diverges").error.contains("loss is inf"),
            "{device}: {:?}",
            failed("diverges")
        );
        assert!(
            failed("killed").error.contains("SIGKILL") || failed("killed").error.contains("9"),
            "{device}: {:?}",
            failed("killed")
        );
        assert!(failed("killed").step >= 3);
    }
}

#[test]
fn bad_flags_and_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = write_jobs(
        dir.path(),
        "thesis",
        &[job("a", 8, 8, 1, ""), job("b", 8, 8, 1, "lr = -1.0")],
    );
    let out = manager(&jobs, "cpu:2", &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(log_of(&out).contains("job 'b': lr"), "{}", log_of(&out));

    let jobs = write_jobs(
        dir.path(),
        "thesis",
        &[job("a", 8, 8, 1, ""), job("b", 8, 8, 1, "")],
    );
    let out = manager(&jobs, "cpu:2", &["--dr", "5,5"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(log_of(&out).contains("--dr 5,5"), "{}", log_of(&out));
    let out = manager(&jobs, "cpu:2", &["--no-calibrate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(log_of(&out).contains("job 'a': sim"), "{}", log_of(&out));
}

/// A job that hangs (injected: no step after its fourth) is killed after `--hang-periods`
/// silent periods and reported, one that runs out of memory (injected) fails with that
/// error, and the other finishes; the rounds after the hang leave the hung job out, so its
/// devices go to the others.
#[test]
fn hung_and_out_of_memory_jobs_fail_alone() {
    for device in devices() {
        let dir = tempfile::tempdir().unwrap();
        // Long enough to outlast the hang's detection: a GPU runs these steps in well under a
        // millisecond.
        let scale = if device == "all" { 200 } else { 4 };
        let jobs = write_jobs(
            dir.path(),
            "thesis",
            &[
                job("good", 64, 64, 600 * scale, ""),
                job("stuck", 32, 32, 100_000, ""),
                job("oom", 32, 32, 100_000, ""),
            ],
        );
        let (rep, dec) = (dir.path().join("r.json"), dir.path().join("d.json"));
        let out = manager(&jobs, device, &["--hang-periods", "5", "--report"])
            .arg(&rep)
            .arg("--decisions")
            .arg(&dec)
            .env(fault::ENV, "stuck=hang@5,oom=oom@4")
            .output()
            .unwrap();
        let log = log_of(&out);
        assert_eq!(out.status.code(), Some(1), "{device}: {log}");
        let r = report(&rep);
        let done: Vec<&str> = r.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(done, ["good"], "{log}");
        let failed = |name: &str| r.failed.iter().find(|f| f.name == name).unwrap().clone();
        let stuck = failed("stuck");
        assert!(
            stuck.error.contains("hung: no step for") && stuck.error.contains("killed"),
            "{stuck:?}"
        );
        assert_eq!(stuck.step, 4, "{stuck:?}");
        let oom = failed("oom");
        assert!(oom.error.contains("out of GPU memory"), "{oom:?}");
        assert_eq!(oom.step, 3, "{oom:?}");
        assert!(log.contains("job stuck failed: hung"), "{log}");

        let rounds: Vec<Vec<usize>> =
            DecisionLog::from_json(&std::fs::read_to_string(&dec).unwrap(), "d")
                .unwrap()
                .entries
                .into_iter()
                .filter_map(|e| match e {
                    Entry::Round { jobs, .. } => Some(jobs.iter().map(|j| j.job).collect()),
                    Entry::Admit { .. } => None,
                })
                .collect();
        let last_with_stuck = rounds.iter().rposition(|r| r.contains(&1)).unwrap();
        let after = &rounds[last_with_stuck + 1..];
        if !after.iter().any(|r| r.contains(&0)) {
            // A fast machine can finish `good` before the hang is detected: nobody is left
            // to hand the devices to, and nothing to check.
            println!("{device}: good finished before the hang was detected: {rounds:?}");
            continue;
        }
        assert!(
            after.iter().any(|r| r == &[0]),
            "no round gave the others the hung job's devices: {rounds:?}"
        );
    }
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true)
}

/// How a test stops the manager half-way.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    /// SIGINT: it tells every job process to checkpoint, saves its state and exits with 130.
    Interrupt,
    /// SIGKILL: no chance to do anything; its job processes see their input close,
    /// checkpoint and exit by themselves.
    Kill,
}

/// Stops the manager of three running jobs as `how` says, then `--resume`s: every job
/// continues exactly where its checkpoint left it and finishes.
fn stop_then_resume(how: Stop) {
    for device in devices() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["p", "q", "r"];
        // Long enough that no job ends before the stop: a GPU runs these steps in well
        // under a millisecond.
        let scale = if device == "all" { 200 } else { 1 };
        let iterations = [400 * scale, 600 * scale, 300 * scale];
        let jobs = write_jobs(
            dir.path(),
            "thesis",
            &[
                job(names[0], 64, 64, iterations[0], ""),
                job(names[1], 32, 32, iterations[1], ""),
                job(names[2], 128, 64, iterations[2], ""),
            ],
        );
        let ckpt = dir.path().join("ckpt");
        let mut first = manager(&jobs, device, &["--checkpoint-dir"])
            .arg(&ckpt)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = stderr_lines(&mut first);
        let mut log = wait_until_running(&lines, &names, 3);
        let workers = job_processes_of(first.id());
        assert_eq!(workers.len(), 3, "{workers:?}");
        let signal = match how {
            Stop::Interrupt => "-INT",
            Stop::Kill => "-KILL",
        };
        assert!(
            Command::new("kill")
                .args([signal, &first.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let status = first.wait().unwrap();
        log.extend(lines.iter().map(|l| l + "\n"));
        if how == Stop::Interrupt {
            assert_eq!(status.code(), Some(130), "{device}: {log}");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !workers.iter().all(|&(pid, _)| ended(pid)) {
            assert!(
                Instant::now() < deadline,
                "{how:?}: job processes still alive: {workers:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(ckpt.join("manager.json").exists(), "{log}");
        let stopped_at: Vec<u64> = names
            .iter()
            .map(|n| {
                let dir = attnrt::multijob::supervisor::job_checkpoint_dir(&ckpt, n);
                checkpoint::load_latest(&dir).unwrap().unwrap().meta.step
            })
            .collect();
        assert!(
            stopped_at.iter().all(|&s| s >= 3),
            "{how:?}: {stopped_at:?}"
        );

        let rep = dir.path().join("r.json");
        let out = manager(&jobs, device, &["--resume", "--checkpoint-dir"])
            .arg(&ckpt)
            .arg("--report")
            .arg(&rep)
            .output()
            .unwrap();
        let log = log_of(&out);
        assert!(out.status.success(), "{how:?} {device}: {log}");
        for (name, step) in names.iter().zip(&stopped_at) {
            assert!(
                log.contains(&format!("job {name}: resumed from step {step}")),
                "{how:?} {device}: {name} at {step}: {log}"
            );
        }
        let r = report(&rep);
        assert_eq!(r.jobs.len(), 3, "{log}");
        for (name, iterations) in names.iter().zip(iterations) {
            let dir = attnrt::multijob::supervisor::job_checkpoint_dir(&ckpt, name);
            let meta = checkpoint::load_latest(&dir).unwrap().unwrap().meta;
            assert_eq!(meta.step, iterations);
        }
    }
}

#[test]
fn sigint_then_resume_keeps_every_jobs_progress() {
    stop_then_resume(Stop::Interrupt);
}

#[test]
fn a_killed_manager_leaves_every_job_resumable() {
    stop_then_resume(Stop::Kill);
}
