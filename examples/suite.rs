//! Runs every policy on the workload suite (`attnrt::sched::suite`) and prints one table per
//! policy (the mean and worst ratio of its maximum Slow-Down to each workload's lower bound,
//! how often it is the fairest, mean Slow-Down, Jain's index, makespan, utilisation), then
//! each workload's bound and maximum Slow-Downs:
//!
//!     cargo run --release --example suite -- [--seed N] [--workloads N] [--plot PATH.svg]
//!         [--write DIR] [--policies static,even,...]
//!
//! `--write DIR` also writes each workload's job file (for `attnrt-train --simulate`).
//! `--scale GPUSxJOBS` instead simulates every policy on one synthetic workload of that size
//! (`sched::workload::synthetic`, Poisson arrivals scaled to the machine) and times each.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use attnrt::multijob::JobFile;
use attnrt::sched::bound::file_bound;
use attnrt::sched::suite::{
    DEFAULT_SEED, DEFAULT_WORKLOADS, generate, run, suite_svg, summary_table, workload_table,
};
use attnrt::sched::workload::{SyntheticSpec, synthetic};
use attnrt::sched::{PolicyKind, SimOptions, simulate};

struct Args {
    seed: u64,
    workloads: usize,
    plot: Option<PathBuf>,
    write: Option<PathBuf>,
    policies: Vec<PolicyKind>,
    scale: Option<(usize, usize)>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seed: DEFAULT_SEED,
        workloads: DEFAULT_WORKLOADS,
        plot: None,
        write: None,
        policies: PolicyKind::ALL.to_vec(),
        scale: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--seed" => a.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--workloads" => {
                a.workloads = value()?.parse().map_err(|e| format!("--workloads: {e}"))?
            }
            "--plot" => a.plot = Some(value()?.into()),
            "--write" => a.write = Some(value()?.into()),
            "--policies" => {
                a.policies = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--scale" => {
                let v = value()?;
                let (g, j) = v
                    .split_once('x')
                    .ok_or(format!("--scale {v}: expected GPUSxJOBS, e.g. 1024x5000"))?;
                let num = |s: &str| s.parse::<usize>().map_err(|e| format!("--scale {v}: {e}"));
                a.scale = Some((num(g)?, num(j)?));
            }
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("suite: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match args.scale {
        Some((gpus, jobs)) => scale(&args, gpus, jobs),
        None => suite(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("suite: {e}");
            ExitCode::from(1)
        }
    }
}

fn suite(args: &Args) -> attnrt::Result<()> {
    let started = Instant::now();
    let workloads = generate(args.seed, args.workloads)?;
    if let Some(dir) = &args.write {
        std::fs::create_dir_all(dir).map_err(|e| attnrt::Error::io(dir, e))?;
        for w in &workloads {
            let path = dir.join(format!("{}.toml", w.name));
            let text = JobFile::from_workload(w.workload.clone()).to_toml()?;
            std::fs::write(&path, text).map_err(|e| attnrt::Error::io(&path, e))?;
        }
    }
    let rows = run(&workloads, &args.policies)?;
    println!(
        "suite: {} workloads (seed {}), {} policies, {:.1} s\n",
        rows.len(),
        args.seed,
        args.policies.len(),
        started.elapsed().as_secs_f64()
    );
    println!("{}", summary_table(&rows, &args.policies));
    println!("{}", workload_table(&rows, &args.policies));
    if let Some(path) = &args.plot {
        let title = format!(
            "max Slow-Down over the lower bound, suite seed {}",
            args.seed
        );
        let svg = suite_svg(&rows, &args.policies, &title)?;
        std::fs::write(path, svg).map_err(|e| attnrt::Error::io(path, e))?;
    }
    Ok(())
}

fn scale(args: &Args, gpus: usize, jobs: usize) -> attnrt::Result<()> {
    // The 64x500 workload's density: one arrival every 1.5 s per 64 GPUs.
    let base = SyntheticSpec::scale_64x500();
    let spec = SyntheticSpec {
        gpus,
        jobs,
        seed: args.seed,
        mean_interarrival_s: base.mean_interarrival_s * 64.0 / gpus as f64,
        ..base
    };
    let file = synthetic(&spec)?.file;
    let started = Instant::now();
    let bound = file_bound(&file, "scale")?;
    println!(
        "{gpus} GPUs, {jobs} jobs (seed {}): lower bound {bound:.3} in {:.1} s",
        args.seed,
        started.elapsed().as_secs_f64()
    );
    println!(
        "| policy | max SD | max SD / bound | mean SD | Jain | makespan (s) | util (%) | rounds | DR changes | wall (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &p in &args.policies {
        let started = Instant::now();
        let out = simulate(
            &file,
            "scale",
            &SimOptions {
                policy: Some(p),
                ..SimOptions::default()
            },
        )?;
        let r = &out.report;
        println!(
            "| `{p}` | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {:.1} | {} | {} | {:.1} |",
            r.max_slowdown,
            r.max_slowdown / bound,
            r.mean_slowdown,
            r.jain_index,
            r.makespan_s,
            r.mean_gpu_util,
            out.stats.rounds,
            out.stats.dr_changes,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
