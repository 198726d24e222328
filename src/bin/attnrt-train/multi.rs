//! A job file with several jobs: every job in a job process of its own under the DR manager
//! (`attnrt::multijob`), shown live (`view.rs`), then the report and outputs.

use std::path::Path;
use std::process::ExitCode;

use attnrt::multijob::simfile::calibrated_file;
use attnrt::multijob::supervisor::job_checkpoint_dir;
use attnrt::multijob::{JobFile, RunConfig, RunEvent, run as run_jobs};
use attnrt::train::{resolve_devices, stop_on_signals};
use attnrt::{Error, Result};

use super::args::Args;
use super::output;
use super::view::LiveView;

/// Runs every job of `file` under the manager.
pub fn run(args: &Args, jobs: &Path, file: JobFile) -> Result<ExitCode> {
    output::check_plot_path(args)?;
    if file.sched.jobs.is_empty() {
        return Err(Error::invalid(jobs.display().to_string(), "has no [[job]]"));
    }
    let train = &args.train;
    if let Some(dr) = &train.dr {
        return Err(Error::invalid(
            format!("--dr {dr}"),
            "applies to a one-job file; with several jobs the manager sets each job's DR \
             (give a job's starting split as initial_dr in the file)",
        ));
    }
    let (devices, notice) = resolve_devices(&train.gpus)?;
    if let Some(n) = notice {
        eprintln!("attnrt-train: {n}");
    }
    let manager = output::manager_config(args, &file)?;
    let params = manager.thesis_params()?;
    let exe = std::env::current_exe().map_err(|e| Error::io("this program's path", e))?;
    eprintln!(
        "attnrt-train: {} jobs on {devices}, policy {}, period {} s",
        file.sched.jobs.len(),
        manager.policy,
        manager.period_s
    );
    let cfg = RunConfig {
        origin: jobs.display().to_string(),
        exe,
        devices: devices.clone(),
        settings: train.settings(),
        file,
        policy: manager.policy,
        params,
        period_s: manager.period_s,
        hang_periods: args.hang_periods,
        calibrate: !args.no_calibrate,
        stop: stop_on_signals()?,
    };
    let mut view = LiveView::new(cfg.period_s);
    let outcome = run_jobs(&cfg, &mut |event| match event {
        RunEvent::Status(s) => view.show(s),
        RunEvent::Finished(s) => view.finish(s),
        RunEvent::Notice(line) => view.note(&format!("attnrt-train: {line}")),
        other => view.note(&other.to_string()),
    })?;
    let summary = format!(
        "{}\n{} utilisation from {}; {} DR changes",
        outcome.report.table(),
        outcome.trace.unit,
        outcome.util_source,
        outcome.trace.changes.len()
    );
    output::write(
        args,
        jobs,
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
        if let Some(dir) = &cfg.settings.checkpoint_dir {
            eprintln!(
                "stopped by a signal; every job checkpointed under {} (e.g. {}); continue with \
                 --resume",
                dir.display(),
                job_checkpoint_dir(dir, &cfg.file.sched.jobs[0].name).display()
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
