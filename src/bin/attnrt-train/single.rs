//! A job file with one job: train it alone on the chosen devices, with a progress bar, and
//! write the report (its Slow-Down is 1 by definition). The training is `attnrt::train`'s
//! [`Session`].

use std::path::Path;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use attnrt::base::{Devices, DistributionRatio};
use attnrt::multijob::JobFile;
use attnrt::sched::report::{JobReport, Report};
use attnrt::train::{HostMs, Session, resolve_devices, stop_on_signals};
use attnrt::{Error, Result};

use super::args::Args;

/// Trains the file's one job; exit code 0, or 130 when stopped by a signal.
pub fn run(args: &Args, jobs: &Path, file: &JobFile) -> Result<ExitCode> {
    let origin = jobs.display().to_string();
    let train = &args.train;
    let (devices, notice) = resolve_devices(&train.gpus)?;
    if let Some(n) = notice {
        eprintln!("attnrt-train: {n}");
    }
    let count = devices.count();
    let spec = &file.sched.jobs[0];
    let dr = match &train.dr {
        Some(text) => parse_dr(text, count)?,
        None => match spec.initial_dr(count, &origin)? {
            Some(dr) => dr,
            None => DistributionRatio::even(count)?,
        },
    };
    let mut session = Session::open(file.session_config(0, &origin, &devices, &train.settings()))?;
    if let Some(notice) = session.notice() {
        eprintln!("attnrt-train: {notice}");
    }
    for damaged in session.damaged() {
        eprintln!(
            "attnrt-train: {damaged}; set aside as *.damaged, resuming from step {}",
            session.start_step()
        );
    }
    let job = session.job();
    eprintln!(
        "job '{}': {} on {} ({} samples), batch {}, {} iterations, {}, {} GEMMs, on {devices}, \
         DR {dr}",
        job.name,
        job.model_name,
        job.dataset.name(),
        job.dataset.len(),
        job.batch_size,
        job.iterations,
        session.optimizer(),
        session.precision(),
    );
    let name = job.name.clone();
    let iterations = job.iterations;

    let bar = ProgressBar::new(iterations);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(name.clone());
    let log_every = train.log_every.unwrap_or((iterations / 10).max(1));
    let stop = stop_on_signals()?;
    // A hidden bar (no terminal) drops its println, so logs go to stderr directly.
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    let outcome = session.train(dr.clone(), stop, None, &mut |p| {
        bar.set_position(p.step);
        bar.set_message(format!("loss {:.4} acc {:.3}", p.loss, p.accuracy));
        if let Some(e) = &p.checkpoint_error {
            say(format!("attnrt-train: {e}; training goes on"));
        }
        if p.step % log_every == 0 || p.step == p.iterations {
            say(format!(
                "step {:>6}/{}  loss {:.4}  acc {:.3}  {:.0} samples/s",
                p.step, p.iterations, p.loss, p.accuracy, p.samples_per_s
            ));
        }
    })?;
    bar.finish_and_clear();
    if outcome.start_step > 0 {
        eprintln!("resumed from step {}", outcome.start_step);
    }
    if let Some(c) = &outcome.last_checkpoint {
        eprintln!("checkpoint: {}", c.display());
    }
    if outcome.stopped {
        eprintln!(
            "stopped by a signal at step {}; continue with --resume",
            outcome.step
        );
        return Ok(ExitCode::from(130));
    }
    let steady = outcome
        .steady_samples_per_s
        .map(|r| format!(" ({r:.0} after the first step)"))
        .unwrap_or_default();
    println!(
        "done: {} steps, loss {:.4}, accuracy {:.3}, {:.0} samples/s{steady}, {:.2} s",
        outcome.step, outcome.loss, outcome.accuracy, outcome.samples_per_s, outcome.elapsed_s
    );
    let loader = &outcome.loader;
    // Judged on the steps after the first (one step: nothing to judge).
    let steady = outcome.steady_s.zip(outcome.steady_samples_per_s);
    let limited = steady.is_some_and(|(s, rate)| loader.limited(s, rate));
    let share = steady.map_or(0.0, |(s, _)| 100.0 * loader.waited_s / s);
    println!(
        "loader: {:.0} samples/s; the steps after the first waited {:.2} s for batches ({:.1}% \
         of their time; both in steady state, once batches come in reused buffers){}",
        loader.samples_per_s,
        loader.waited_s,
        share,
        if limited {
            ": the loader, not the step, limits this run (more CPU threads, a deeper --prefetch, \
             or smaller images)"
        } else {
            ""
        }
    );
    let peaks_mib: Vec<Option<f64>> = outcome
        .memory_peaks
        .iter()
        .map(|b| b.map(|b| b as f64 / (1u64 << 20) as f64))
        .collect();
    if let (false, Devices::Gpus(ordinals)) = (peaks_mib.is_empty(), &devices) {
        let each: Vec<String> = peaks_mib
            .iter()
            .zip(ordinals)
            .map(|(p, g)| match p {
                Some(mib) => format!("{mib:.0} MiB on GPU {g}"),
                None => format!("not tracked on GPU {g}"),
            })
            .collect();
        println!(
            "gpu memory: peak in use during the steps {} (the allocator's high-water mark)",
            each.join(", ")
        );
    }
    // Whether the host keeps ahead of the GPU: beside the step's time above.
    let host_ms = outcome.host_times.and_then(|h| h.per_step_ms());
    if let (Some(ms), Devices::Gpus(ordinals)) = (host_ms, &devices) {
        let rest = ms.enqueue - ms.staging - ms.waiting - ms.pass;
        println!(
            "host: {:.2} ms a step enqueueing GPU {}'s work after the first step, {:.2} ms of it \
             copying the shard into page-locked memory, {:.2} waiting for the previous shard's \
             copy, {:.2} enqueueing forward and backward, {rest:.2} the rest (exchange, \
             optimizer, stats); beside it, {:.2} ms staging the next step's shard on another \
             thread ({:.0}% of the shards were staged so)",
            ms.enqueue,
            ordinals[0],
            ms.staging,
            ms.waiting,
            ms.pass,
            ms.ahead,
            ms.staged_ahead * 100.0
        );
    }
    if train.show_convs {
        if outcome.conv_paths.is_empty() {
            println!("convolutions: none ran on a GPU");
        }
        for line in &outcome.conv_paths {
            println!("conv {line}");
        }
    }

    // Alone on the machine, the job's completion time is its exclusive time: SD = 1.
    let report = Report::new(
        "alone",
        count,
        vec![JobReport {
            name,
            completion_s: outcome.elapsed_s,
            exclusive_s: outcome.elapsed_s,
            slowdown: 1.0,
        }],
        outcome.elapsed_s,
        &(0..count)
            .map(|g| if dr.uses(g) { outcome.elapsed_s } else { 0.0 })
            .collect::<Vec<_>>(),
    );
    // A one-job report also says how the loader kept up (the multi-job report, the
    // scheduler's, has times and Slow-Downs only).
    let json = serde_json::to_string_pretty(&WithLoader {
        report: &report,
        loader: LoaderReport {
            samples_per_s: loader.samples_per_s,
            waited_s: loader.waited_s,
            limited,
        },
        gpu_memory_peak_mib: peaks_mib,
        host_ms_per_step: host_ms,
        conv_paths: &outcome.conv_paths,
    })
    .map_err(|e| Error::parse("report", e))?;
    match args.report.as_deref() {
        Some(p) if p == Path::new("-") => println!("{json}"),
        Some(p) => std::fs::write(p, json + "\n").map_err(|e| Error::io(p, e))?,
        None => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// The report of a one-job run: the scheduler's fields, then `loader`.
#[derive(Serialize)]
struct WithLoader<'a> {
    #[serde(flatten)]
    report: &'a Report,
    loader: LoaderReport,
    /// Per GPU of the run, the most memory in use at once (MiB; null where the allocator
    /// keeps no mark); absent on the CPU.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    gpu_memory_peak_mib: Vec<Option<f64>>,
    /// The host's milliseconds a step on the first GPU's work after the first step; absent on
    /// the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    host_ms_per_step: Option<HostMs>,
    /// What ran each convolution pass on the first GPU; absent on the CPU.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    conv_paths: &'a [String],
}

/// The loader's rate, the steps' wait for batches, and whether that wait limited the run.
#[derive(Serialize)]
struct LoaderReport {
    samples_per_s: f64,
    waited_s: f64,
    limited: bool,
}

/// `--dr` over `count` devices.
fn parse_dr(text: &str, count: usize) -> Result<DistributionRatio> {
    DistributionRatio::parse(text, count).map_err(|p| Error::invalid(format!("--dr {text}"), p))
}
