//! `attnrt-train --simulate`: the job file through the discrete-event simulator.

use std::path::Path;
use std::time::Instant;

use attnrt::Result;
use attnrt::multijob::JobFile;
use attnrt::sched::{SimOptions, simulate};

use super::args::Args;
use super::output;

pub fn run(args: &Args, jobs: &Path, file: &JobFile) -> Result<()> {
    output::check_plot_path(args)?;
    let origin = jobs.display().to_string();
    let manager = output::manager_config(args, file)?;
    let options = SimOptions {
        policy: Some(manager.policy),
        sd_threshold: Some(manager.sd_threshold),
        util_threshold: Some(manager.util_threshold),
        period_s: Some(manager.period_s),
        trace: args.plot.is_some() || args.log_changes,
        decisions: args.decisions.is_some(),
        skip_bound: false,
    };
    let started = Instant::now();
    let outcome = simulate(&file.sched, &origin, &options)?;
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
    output::write(
        args,
        jobs,
        &summary,
        &outcome.report,
        &outcome.trace,
        outcome.decisions.as_ref(),
    )
}
