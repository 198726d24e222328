//! `attnrt-train`: Slow-Down-fair multi-job data-parallel training.
//!
//! For now only `--simulate` exists: it runs the job file through the discrete-event
//! simulator with the chosen policy, prints a table, and optionally writes the JSON report
//! and an SVG plot. Exit codes: 0 success, 1 bad input or I/O error, 2 usage error or a mode
//! that is not implemented yet.

// The argument docs are clap's help text, where `[manager]` names a TOML table, not a link.
#![allow(rustdoc::broken_intra_doc_links)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};

use attnrt::sched::plot::write_trace_svg;
use attnrt::sched::{JobFile, PolicyKind, SimOptions, simulate};

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
}

impl From<PolicyArg> for PolicyKind {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Static => PolicyKind::Static,
            PolicyArg::Even => PolicyKind::Even,
            PolicyArg::Packed => PolicyKind::Packed,
            PolicyArg::Thesis => PolicyKind::Thesis,
        }
    }
}

/// Slow-Down-fair multi-job data-parallel training on a shared multi-GPU machine.
///
/// Several training jobs share the GPUs; a manager sets each job's distribution ratio (how
/// its mini-batch is split over the GPUs) so that no job is slowed down much more than the
/// others. With --simulate, the job file runs through a deterministic simulator instead of
/// on GPUs (no GPU needed). Real training is not implemented yet.
///
/// Example:
///   attnrt-train --simulate --jobs examples/thesis-4gpu.toml --policy thesis \
///       --report thesis.json --plot thesis.svg
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
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.simulate {
        eprintln!(
            "attnrt-train: real training is not implemented yet; \
             run with --simulate to simulate the job file"
        );
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attnrt-train: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> attnrt::Result<()> {
    if let Some(plot) = &args.plot
        && plot
            .extension()
            .is_some_and(|e| !e.eq_ignore_ascii_case("svg"))
    {
        return Err(attnrt::Error::invalid(
            format!("--plot {}", plot.display()),
            "only SVG is built in; give a path ending in .svg",
        ));
    }
    let origin = args.jobs.display().to_string();
    let file = JobFile::load(&args.jobs)?;
    let options = SimOptions {
        policy: args.policy.map(PolicyKind::from),
        sd_threshold: args.sd_threshold,
        util_threshold: args.util_threshold,
        period_s: args.period,
        trace: args.plot.is_some() || args.log_changes,
    };
    let started = Instant::now();
    let outcome = simulate(&file, &origin, &options)?;
    let wall = started.elapsed().as_secs_f64();

    if args.log_changes {
        for c in &outcome.trace.changes {
            eprintln!(
                "t={:>8.2}s  {:<16} SD {:>6.3}  {} -> {}  {:?}",
                c.time_s, outcome.trace.job_names[c.job], c.sd, c.from, c.to, c.action
            );
        }
    }
    let to_stdout = args.report.as_deref() == Some(Path::new("-"));
    let summary = format!(
        "{}\n{} manager rounds, {} DR changes, {} iterations, {} events; simulated in {:.3} s",
        outcome.report.table(),
        outcome.stats.rounds,
        outcome.stats.dr_changes,
        outcome.stats.iterations,
        outcome.stats.events,
        wall
    );
    if to_stdout {
        eprintln!("{summary}");
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", outcome.report.to_json()).map_err(|e| attnrt::Error::io("-", e))?;
    } else {
        println!("{summary}");
        if let Some(path) = &args.report {
            std::fs::write(path, outcome.report.to_json() + "\n")
                .map_err(|e| attnrt::Error::io(path, e))?;
        }
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "{} on {} GPUs: {}",
            outcome.report.policy, outcome.report.gpus, origin
        );
        write_trace_svg(&outcome.trace, &title, path)?;
    }
    Ok(())
}
