//! `attnrt-train`: Slow-Down-fair multi-job data-parallel training.
//!
//! Without `--simulate`, a job file with one job trains it directly (`single.rs`); a file with
//! several runs them all at once, one job process each, under the DR manager (`multi.rs`,
//! `attnrt::multijob`, with the live view of `view.rs`). With `--simulate` the file runs
//! through the discrete-event simulator instead (`simulate.rs`). `--check` and `--describe`
//! check one CNN training step against a golden file and describe a CNN (`cnn.rs`). Each prints a table and can
//! write the JSON report, the manager's decision log and an SVG plot (`output.rs`). Exit codes:
//! 0 success, 1 bad input, I/O error or a failed job, 2 usage error, 130 stopped by
//! SIGINT/SIGTERM (after a checkpoint).

// The argument docs are clap's help text, where `[manager]` names a TOML table, not a link.
#![allow(rustdoc::broken_intra_doc_links)]

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use attnrt::multijob::JobFile;
use attnrt::multijob::job_process;

mod args;
mod cnn;
mod multi;
mod output;
mod simulate;
mod single;
mod view;

use args::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    for n in attnrt::gpu::nvtx::notices() {
        eprintln!("attnrt-train: {n}");
    }
    if let Some(job) = &args.job_process {
        return match job_process::serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // Not eprintln!: with the manager gone its standard error may be closed too.
                let _ = writeln!(std::io::stderr(), "attnrt-train job process '{job}': {e}");
                ExitCode::from(1)
            }
        };
    }
    if let Some(golden) = &args.check {
        return cnn::check(golden, &args.train.gpus).unwrap_or_else(|e| {
            eprintln!("attnrt-train: {e}");
            ExitCode::from(1)
        });
    }
    if let Some(model) = &args.describe {
        return cnn::describe(model, args.classes, args.size).unwrap_or_else(|e| {
            eprintln!("attnrt-train: {e}");
            ExitCode::from(1)
        });
    }
    let Some(jobs) = args.jobs.clone() else {
        // clap requires --jobs without --job-process; this is its message for it.
        let e = Args::command().error(
            clap::error::ErrorKind::MissingRequiredArgument,
            "--jobs <FILE> is required",
        );
        e.exit()
    };
    run(&args, &jobs).unwrap_or_else(|e| {
        eprintln!("attnrt-train: {e}");
        ExitCode::from(1)
    })
}

fn run(args: &Args, jobs: &Path) -> attnrt::Result<ExitCode> {
    let file = JobFile::load(jobs)?;
    if args.simulate {
        return simulate::run(args, jobs, &file).map(|()| ExitCode::SUCCESS);
    }
    if args.train.resume && args.train.checkpoint_dir.is_none() {
        return Err(attnrt::Error::invalid("--resume", "needs --checkpoint-dir"));
    }
    let count = file.sched.jobs.len();
    if args.train.show_convs && count != 1 {
        return Err(attnrt::Error::invalid(
            "--show-convs",
            format!(
                "works with a one-job file; {} has {count} jobs",
                jobs.display()
            ),
        ));
    }
    if count == 1 {
        single::run(args, jobs, &file)
    } else {
        multi::run(args, jobs, file)
    }
}
