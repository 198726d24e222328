//! `attnrt-train`: Slow-Down-fair multi-job data-parallel training.
//!
//! Without `--simulate`, a job file with one job trains it directly
//! (`attnrt-train/train_cli.rs`); a file with several runs them all at once, one worker
//! process each, under the DR manager (`attnrt-train/multi_cli.rs`, `attnrt::multijob`). With
//! `--simulate` the file runs through the discrete-event simulator instead. Both print a table
//! and can write the JSON report, the manager's decision log and an SVG plot. Exit codes: 0
//! success, 1 bad input, I/O error or a failed job, 2 usage error, 130 stopped by
//! SIGINT/SIGTERM (after a checkpoint).

// The argument docs are clap's help text, where `[manager]` names a TOML table, not a link.
#![allow(rustdoc::broken_intra_doc_links)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};

use attnrt::sched::decisions::DecisionLog;
use attnrt::sched::jobs::ManagerConfig;
use attnrt::sched::plot::write_trace_svg;
use attnrt::sched::sim::Trace;
use attnrt::sched::{JobFile, PolicyKind, Report, SimOptions, simulate};

#[path = "attnrt-train/multi_cli.rs"]
mod multi_cli;
#[path = "attnrt-train/train_cli.rs"]
mod train_cli;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PolicyArg {
    /// Keep each job's initial_dr from the file (even if none).
    Static,
    /// Every job split evenly over all GPUs.
    Even,
    /// One GPU per job, round-robin by job order, fixed.
    Packed,
    /// The thesis' Algorithms 1 and 2 (Slow-Down and utilisation driven).
    Thesis,
    /// The thesis' algorithms without their oscillations (sticky lone GPUs, own load discounted).
    ThesisStable,
    /// Every round, the DRs that minimise the largest predicted Slow-Down (cost model).
    Minmax,
}

impl From<PolicyArg> for PolicyKind {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Static => PolicyKind::Static,
            PolicyArg::Even => PolicyKind::Even,
            PolicyArg::Packed => PolicyKind::Packed,
            PolicyArg::Thesis => PolicyKind::Thesis,
            PolicyArg::ThesisStable => PolicyKind::ThesisStable,
            PolicyArg::Minmax => PolicyKind::Minmax,
        }
    }
}

/// Slow-Down-fair multi-job data-parallel training on a shared multi-GPU machine.
///
/// Several training jobs share the GPUs; a manager sets each job's distribution ratio (how
/// its mini-batch is split over the GPUs) so that no job is slowed down much more than the
/// others. Without --simulate, every job of the file trains for real, each in a process of
/// its own, concurrently, while the manager measures GPU utilisation and each job's
/// Slow-Down and changes DRs (a file with one job just trains it). With --simulate, the job
/// file runs through a deterministic simulator instead (no GPU needed).
///
/// Examples:
///   attnrt-train --jobs examples/multijob-2gpu.toml --policy thesis \
///       --checkpoint-dir ckpt --report run.json --plot run.svg --write-sim calibrated.toml
///   attnrt-train --simulate --jobs examples/thesis-4gpu.toml --policy thesis \
///       --report thesis.json --plot thesis.svg
///   attnrt-train --jobs examples/train-mlp-synthetic.toml --gpus 0,1 \
///       --checkpoint-dir ckpt --checkpoint-every 50 --report run.json
#[derive(Debug, Parser)]
#[command(name = "attnrt-train", version, verbatim_doc_comment)]
struct Args {
    /// Simulate the job file instead of training (uses the [simulation] and [job.sim] tables).
    #[arg(long)]
    simulate: bool,

    /// The job file (TOML): [manager], [simulation] and [[job]] tables; see docs/SCHEDULING.md.
    #[arg(long, value_name = "FILE")]
    jobs: PathBuf,

    /// The policy; overrides [manager] policy.
    #[arg(long, value_enum, value_name = "NAME")]
    policy: Option<PolicyArg>,

    /// Write the JSON report here ("-" for standard output; the table then goes to stderr).
    #[arg(long, value_name = "PATH")]
    report: Option<PathBuf>,

    /// Write an SVG plot of each job's Slow-Down and each GPU's utilisation over time.
    #[arg(long, value_name = "PATH")]
    plot: Option<PathBuf>,

    /// Overrides [manager] sd_threshold (thesis policy: jobs below it never move).
    #[arg(long, value_name = "SD")]
    sd_threshold: Option<f64>,

    /// Overrides [manager] util_threshold, percentage points (thesis policy).
    #[arg(long, value_name = "PCT")]
    util_threshold: Option<f64>,

    /// Overrides [manager] period_s, seconds between manager rounds.
    #[arg(long, value_name = "SECONDS")]
    period: Option<f64>,

    /// Print every distribution-ratio change the manager makes (to stderr).
    #[arg(long)]
    log_changes: bool,

    /// Write the manager's decision log (every admission and round, with the measured
    /// inputs) as JSON.
    #[arg(long, value_name = "PATH")]
    decisions: Option<PathBuf>,

    /// Multi-job runs: write the job file with [simulation] and [job.sim] fitted to the
    /// calibration measurements, for --simulate.
    #[arg(long, value_name = "PATH")]
    write_sim: Option<PathBuf>,

    /// Multi-job runs: take each job's exclusive iteration time from [job.sim] instead of
    /// measuring it alone before the run.
    #[arg(long)]
    no_calibrate: bool,

    /// Internal: run as the worker process of this job (started by the manager).
    #[arg(long, value_name = "JOB", hide = true)]
    worker: Option<String>,

    #[command(flatten)]
    train: train_cli::TrainArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(job) = &args.worker {
        return ExitCode::from(multi_cli::worker(job, &args.jobs, &args.train));
    }
    let result = if args.simulate {
        run_simulation(&args).map(|()| ExitCode::SUCCESS)
    } else {
        match JobFile::load(&args.jobs) {
            Ok(file) if file.jobs.len() == 1 => {
                return train_cli::main(&args.jobs, args.report.as_deref(), &args.train);
            }
            Ok(file) => multi_cli::run(&args, file),
            Err(e) => Err(e),
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("attnrt-train: {e}");
        ExitCode::from(1)
    })
}

/// Checks `--plot` names an SVG file (the one format built in).
fn check_plot_path(args: &Args) -> attnrt::Result<()> {
    match &args.plot {
        Some(plot)
            if plot
                .extension()
                .is_some_and(|e| !e.eq_ignore_ascii_case("svg")) =>
        {
            Err(attnrt::Error::invalid(
                format!("--plot {}", plot.display()),
                "only SVG is built in; give a path ending in .svg",
            ))
        }
        _ => Ok(()),
    }
}

/// The policy settings: the file's [manager] table with the flags' overrides.
fn manager_config(args: &Args, file: &JobFile) -> ManagerConfig {
    file.manager.overridden(
        args.policy.map(PolicyKind::from),
        args.sd_threshold,
        args.util_threshold,
        args.period,
    )
}

/// Prints `summary` and writes the report, decision log and plot the flags ask for. With
/// `--report -` the JSON goes to standard output and the summary to standard error.
fn write_outputs(
    args: &Args,
    summary: &str,
    report: &Report,
    trace: &Trace,
    decisions: Option<&DecisionLog>,
) -> attnrt::Result<()> {
    let to_stdout = args.report.as_deref() == Some(Path::new("-"));
    if to_stdout {
        eprintln!("{summary}");
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", report.to_json()).map_err(|e| attnrt::Error::io("-", e))?;
    } else {
        println!("{summary}");
        if let Some(path) = &args.report {
            std::fs::write(path, report.to_json() + "\n")
                .map_err(|e| attnrt::Error::io(path, e))?;
        }
    }
    if let (Some(path), Some(log)) = (&args.decisions, decisions) {
        std::fs::write(path, log.to_json() + "\n").map_err(|e| attnrt::Error::io(path, e))?;
    }
    if args.log_changes {
        for c in &trace.changes {
            eprintln!(
                "t={:>8.2}s  {:<16} SD {:>6.3}  {} -> {}  {:?}",
                c.time_s, trace.job_names[c.job], c.sd, c.from, c.to, c.action
            );
        }
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "{} on {} GPUs: {}",
            report.policy,
            report.gpus,
            args.jobs.display()
        );
        write_trace_svg(trace, &title, path)?;
    }
    Ok(())
}

fn run_simulation(args: &Args) -> attnrt::Result<()> {
    check_plot_path(args)?;
    let origin = args.jobs.display().to_string();
    let file = JobFile::load(&args.jobs)?;
    let manager = manager_config(args, &file);
    let options = SimOptions {
        policy: Some(manager.policy),
        sd_threshold: Some(manager.sd_threshold),
        util_threshold: Some(manager.util_threshold),
        period_s: Some(manager.period_s),
        trace: args.plot.is_some() || args.log_changes,
        decisions: args.decisions.is_some(),
    };
    let started = Instant::now();
    let outcome = simulate(&file, &origin, &options)?;
    let wall = started.elapsed().as_secs_f64();
    let summary = format!(
        "{}\n{} manager rounds, {} DR changes, {} iterations, {} events; simulated in {:.3} s",
        outcome.report.table(),
        outcome.stats.rounds,
        outcome.stats.dr_changes,
        outcome.stats.iterations,
        outcome.stats.events,
        wall
    );
    write_outputs(
        args,
        &summary,
        &outcome.report,
        &outcome.trace,
        outcome.decisions.as_ref(),
    )
}
