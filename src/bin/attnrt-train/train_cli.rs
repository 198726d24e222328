//! The real-training path of `attnrt-train`: flags, device selection, progress output and the
//! final report. The training itself is `attnrt::train`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use indicatif::{ProgressBar, ProgressStyle};

use attnrt::sched::report::{JobReport, Report};
use attnrt::sched::{DistributionRatio, JobFile};
use attnrt::train::optim::OptimizerKind;
use attnrt::train::{
    Devices, Precision, TrainOptions, open_engine, open_job, optimizer_for, precision_for, train,
};
use attnrt::{Error, Result};

/// Flags of real training (ignored with --simulate).
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Devices: `all` (every GPU; the CPU when there is none), `cpu`, `cpu:N` (N shards in
    /// turn on the CPU: rehearses an N-GPU machine), or GPU ordinals like `0,1`.
    #[arg(long, value_name = "LIST", default_value = "all")]
    pub gpus: String,

    /// Distribution ratio over the chosen devices, tenths like `2,8`; overrides the job's
    /// initial_dr (default even).
    #[arg(long, value_name = "TENTHS")]
    pub dr: Option<String>,

    /// Seed for initialisation, sample order and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// `adamw` or `sgd` (momentum 0.9); overrides the jobs' `optimizer` (default adamw).
    #[arg(long)]
    pub optimizer: Option<OptimizerKind>,

    /// Learning rate; overrides the jobs' `lr` (default 1e-3).
    #[arg(long)]
    pub lr: Option<f32>,

    /// `f32` or `bf16`: the linear layers' GEMM operands (bf16 accumulates in f32; weights,
    /// optimizer state and gradients stay f32); overrides the jobs' `precision` (default f32).
    #[arg(long)]
    pub precision: Option<Precision>,

    /// Directory for checkpoints (safetensors + JSON; one subdirectory per job when the file
    /// has several).
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,

    /// Checkpoint every K steps (0: only on SIGINT/SIGTERM and at the end).
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub checkpoint_every: u64,

    /// Continue from the newest checkpoint in --checkpoint-dir.
    #[arg(long)]
    pub resume: bool,

    /// Print a loss/accuracy/throughput line every N steps (default: 10 lines per run).
    #[arg(long, value_name = "N")]
    log_every: Option<u64>,

    /// Batches the loader prepares ahead.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub prefetch: usize,
}

/// Runs real training and maps the result to an exit code.
pub fn main(jobs: &Path, report: Option<&Path>, args: &TrainArgs) -> ExitCode {
    match run(jobs, report, args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(130),
        Err(e) => {
            eprintln!("attnrt-train: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(jobs_path: &Path, report_path: Option<&Path>, args: &TrainArgs) -> Result<bool> {
    let origin = jobs_path.display().to_string();
    let file = JobFile::load(jobs_path)?;
    let [spec] = file.jobs.as_slice() else {
        return Err(Error::invalid(
            &origin,
            format!("has {} jobs, this path trains exactly one", file.jobs.len()),
        ));
    };
    if args.resume && args.checkpoint_dir.is_none() {
        return Err(Error::invalid("--resume", "needs --checkpoint-dir"));
    }
    let (devices, notice) = Devices::parse(&args.gpus)?;
    if let Some(n) = notice {
        eprintln!("attnrt-train: {n}");
    }
    let count = devices.count();
    let dr = match &args.dr {
        Some(text) => parse_dr(text, count)?,
        None => match spec.initial_dr(count, &origin)? {
            Some(dr) => dr,
            None => DistributionRatio::even(count)?,
        },
    };

    let job = open_job(spec, &origin, args.seed)?;
    let optimizer = optimizer_for(spec, args.optimizer, args.lr)?;
    let precision = precision_for(spec, args.precision)?;
    let mut engine = open_engine(&devices, &job, optimizer, precision, args.seed)?;
    if let Some(notice) = engine.notice() {
        eprintln!("attnrt-train: {notice}");
    }
    eprintln!(
        "job '{}': {} on {} ({} samples), batch {}, {} iterations, {}, {precision} GEMMs, \
         on {devices}, DR {dr}",
        job.name,
        job.model_name,
        job.dataset.name(),
        job.dataset.len(),
        job.batch_size,
        job.iterations,
        optimizer,
    );

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| Error::io("signal handler", e))?;
    }
    let opts = TrainOptions {
        seed: args.seed,
        optimizer,
        precision,
        dr: dr.clone(),
        checkpoint_dir: args.checkpoint_dir.clone(),
        checkpoint_every: args.checkpoint_every,
        resume: args.resume,
        prefetch: args.prefetch,
        stop,
        dr_updates: None,
    };

    let bar = ProgressBar::new(job.iterations);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(job.name.clone());
    let log_every = args.log_every.unwrap_or((job.iterations / 10).max(1));
    let outcome = train(&job, engine.as_mut(), &opts, &mut |p| {
        bar.set_position(p.step);
        bar.set_message(format!("loss {:.4} acc {:.3}", p.loss, p.accuracy));
        if p.step % log_every == 0 || p.step == p.iterations {
            let line = format!(
                "step {:>6}/{}  loss {:.4}  acc {:.3}  {:.0} samples/s",
                p.step, p.iterations, p.loss, p.accuracy, p.samples_per_s
            );
            // A hidden bar (no terminal) drops its println, so logs go to stderr directly.
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
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
        return Ok(false);
    }
    let steady = outcome
        .steady_samples_per_s
        .map(|r| format!(" ({r:.0} after the first step)"))
        .unwrap_or_default();
    println!(
        "done: {} steps, loss {:.4}, accuracy {:.3}, {:.0} samples/s{steady}, {:.2} s",
        outcome.step, outcome.loss, outcome.accuracy, outcome.samples_per_s, outcome.elapsed_s
    );

    // Alone on the machine, the job's completion time is its exclusive time: SD = 1.
    let report = Report::new(
        "alone",
        count,
        vec![JobReport {
            name: job.name.clone(),
            completion_s: outcome.elapsed_s,
            exclusive_s: outcome.elapsed_s,
            slowdown: 1.0,
        }],
        outcome.elapsed_s,
        &(0..count)
            .map(|g| if dr.uses(g) { outcome.elapsed_s } else { 0.0 })
            .collect::<Vec<_>>(),
    );
    match report_path {
        Some(p) if p == Path::new("-") => println!("{}", report.to_json()),
        Some(p) => std::fs::write(p, report.to_json() + "\n").map_err(|e| Error::io(p, e))?,
        None => {}
    }
    Ok(true)
}

/// `--dr` over `count` devices.
pub fn parse_dr(text: &str, count: usize) -> Result<DistributionRatio> {
    let units: Vec<i64> = text
        .split(',')
        .map(|u| u.trim().parse::<i64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::invalid(format!("--dr {text}"), "expected tenths like 2,8"))?;
    if units.len() != count {
        return Err(Error::invalid(
            format!("--dr {text}"),
            format!("has {} entries for {count} devices", units.len()),
        ));
    }
    DistributionRatio::from_signed(&units).map_err(|p| Error::invalid(format!("--dr {text}"), p))
}
