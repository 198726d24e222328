//! The multi-job path of `attnrt-train`: the manager (a file with several jobs) and the worker
//! process it starts for each job (`--worker NAME`, hidden).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use attnrt::multijob::process::WorkerFlags;
use attnrt::multijob::simfile::calibrated_file;
use attnrt::multijob::supervisor::job_checkpoint_dir;
use attnrt::multijob::worker::{WorkerConfig, serve};
use attnrt::multijob::{RunConfig, run as run_jobs};
use attnrt::sched::JobFile;
use attnrt::train::Devices;
use attnrt::{Error, Result};

use super::train_cli::TrainArgs;
use super::{Args, check_plot_path, manager_config, write_outputs};

/// The worker process of job `job`; returns its exit code.
pub fn worker(job: &str, jobs: &std::path::Path, train: &TrainArgs) -> u8 {
    let devices = match Devices::parse(&train.gpus) {
        Ok((d, _)) => d,
        Err(e) => {
            eprintln!("attnrt-train worker '{job}': {e}");
            return 1;
        }
    };
    serve(&WorkerConfig {
        jobs_path: jobs.to_path_buf(),
        job: job.to_string(),
        devices,
        seed: train.seed,
        optimizer: train.optimizer,
        lr: train.lr,
        precision: train.precision,
        checkpoint_dir: train.checkpoint_dir.clone(),
        checkpoint_every: train.checkpoint_every,
        resume: train.resume,
        prefetch: train.prefetch,
    })
}

/// Runs every job of `file` under the manager.
pub fn run(args: &Args, file: JobFile) -> Result<ExitCode> {
    check_plot_path(args)?;
    if file.jobs.is_empty() {
        return Err(Error::invalid(
            args.jobs.display().to_string(),
            "has no [[job]]",
        ));
    }
    let train = &args.train;
    if let Some(dr) = &train.dr {
        return Err(Error::invalid(
            format!("--dr {dr}"),
            "applies to a one-job file; with several jobs the manager sets each job's DR \
             (give a job's starting split as initial_dr in the file)",
        ));
    }
    if train.resume && train.checkpoint_dir.is_none() {
        return Err(Error::invalid("--resume", "needs --checkpoint-dir"));
    }
    let (devices, notice) = Devices::parse(&train.gpus)?;
    if let Some(n) = notice {
        eprintln!("attnrt-train: {n}");
    }
    let manager = manager_config(args, &file);
    let params = manager.thesis_params()?;
    let exe = std::env::current_exe().map_err(|e| Error::io("this program's path", e))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| Error::io("signal handler", e))?;
    }
    eprintln!(
        "attnrt-train: {} jobs on {devices}, policy {}, period {} s",
        file.jobs.len(),
        manager.policy,
        manager.period_s
    );
    let cfg = RunConfig {
        origin: args.jobs.display().to_string(),
        flags: WorkerFlags {
            exe,
            jobs_path: args.jobs.clone(),
            devices: devices.clone(),
            seed: train.seed,
            optimizer: train.optimizer,
            lr: train.lr,
            precision: train.precision,
            checkpoint_every: train.checkpoint_every,
            prefetch: train.prefetch,
        },
        file,
        policy: manager.policy,
        params,
        period_s: manager.period_s,
        checkpoint_dir: train.checkpoint_dir.clone(),
        resume: train.resume,
        calibrate: !args.no_calibrate,
        stop,
    };
    let outcome = run_jobs(&cfg)?;
    let summary = format!(
        "{}\nGPU utilisation from {}; {} DR changes",
        outcome.report.table(),
        outcome.util_source,
        outcome.trace.changes.len()
    );
    write_outputs(
        args,
        &summary,
        &outcome.report,
        &outcome.trace,
        outcome.decisions.as_ref(),
    )?;
    if let Some(path) = &args.write_sim {
        let calibrated = calibrated_file(&cfg.file, devices.count(), &outcome.calibrations);
        std::fs::write(path, calibrated.to_toml()?).map_err(|e| Error::io(path, e))?;
    }
    if outcome.stopped {
        if let Some(dir) = &cfg.checkpoint_dir {
            eprintln!(
                "stopped by a signal; every job checkpointed under {} (e.g. {}); continue with \
                 --resume",
                dir.display(),
                job_checkpoint_dir(dir, &cfg.file.jobs[0].name).display()
            );
        } else {
            eprintln!("stopped by a signal; without --checkpoint-dir nothing was saved");
        }
        return Ok(ExitCode::from(130));
    }
    Ok(if outcome.report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
