//! What a run of `attnrt-train` leaves behind: the summary, the JSON report, the decision log,
//! the list of DR changes and the plot, as the flags ask; and the manager's settings from the
//! file and the flags.

use std::io::Write as _;
use std::path::Path;

use attnrt::multijob::JobFile;
use attnrt::sched::decisions::DecisionLog;
use attnrt::sched::jobs::ManagerConfig;
use attnrt::sched::jobs::limits::check_period;
use attnrt::sched::plot::write_trace_svg;
use attnrt::sched::{Report, Trace};
use attnrt::{Error, Result};

use super::args::Args;

/// Checks `--plot` names an SVG file (the one format built in).
pub fn check_plot_path(args: &Args) -> Result<()> {
    match &args.plot {
        Some(plot)
            if plot
                .extension()
                .is_some_and(|e| !e.eq_ignore_ascii_case("svg")) =>
        {
            Err(Error::invalid(
                format!("--plot {}", plot.display()),
                "only SVG is built in; give a path ending in .svg",
            ))
        }
        _ => Ok(()),
    }
}

/// The policy settings: the file's [manager] table with the flags' overrides.
/// `--period` is held to the file's bounds: a zero or tiny period would spin the manager.
pub fn manager_config(args: &Args, file: &JobFile) -> Result<ManagerConfig> {
    if let Some(p) = args.period {
        check_period(p).map_err(|e| Error::invalid(format!("--period {p:?}"), e))?;
    }
    Ok(file.sched.manager.overridden(
        args.policy,
        args.sd_threshold,
        args.util_threshold,
        args.period,
    ))
}

/// Prints `summary` and writes the report, decision log and plot the flags ask for. With
/// `--report -` the JSON goes to standard output and the summary to standard error.
pub fn write(
    args: &Args,
    jobs: &Path,
    summary: &str,
    report: &Report,
    trace: &Trace,
    decisions: Option<&DecisionLog>,
) -> Result<()> {
    let to_stdout = args.report.as_deref() == Some(Path::new("-"));
    if to_stdout {
        eprintln!("{summary}");
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", report.to_json()).map_err(|e| Error::io("-", e))?;
    } else {
        println!("{summary}");
        if let Some(path) = &args.report {
            std::fs::write(path, report.to_json() + "\n").map_err(|e| Error::io(path, e))?;
        }
    }
    if let (Some(path), Some(log)) = (&args.decisions, decisions) {
        std::fs::write(path, log.to_json() + "\n").map_err(|e| Error::io(path, e))?;
    }
    if args.log_changes {
        for c in &trace.changes {
            eprintln!("t={:>8.2}s  {}", c.time_s, trace.describe(c));
        }
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "{} on {} {}s: {}",
            report.policy,
            report.gpus,
            trace.unit,
            jobs.display()
        );
        write_trace_svg(trace, &title, path)?;
    }
    Ok(())
}
