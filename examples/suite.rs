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
//! (`sched::workload::synthetic`, Poisson arrivals scaled to the machine; `--scale 64x500`
//! is `examples/scale-64gpu.toml`) and times each, wall-clock and CPU (the process's user and
//! system time: on a shared machine the wall-clock time counts the other processes too);
//! `--no-bound` skips the bound there.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use attnrt::multijob::JobFile;
use attnrt::sched::bound::file_bound;
use attnrt::sched::plot::suite_svg;
use attnrt::sched::suite::{
    DEFAULT_SEED, DEFAULT_WORKLOADS, generate, run, summary_table, workload_table,
};
use attnrt::sched::workload::{SyntheticSpec, synthetic};
use attnrt::sched::{PolicyKind, SimOptions, simulate};

struct Args {
    /// Default: the suite's, or the scale workload's.
    seed: Option<u64>,
    workloads: usize,
    plot: Option<PathBuf>,
    write: Option<PathBuf>,
    policies: Vec<PolicyKind>,
    scale: Option<(usize, usize)>,
    no_bound: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seed: None,
        workloads: DEFAULT_WORKLOADS,
        plot: None,
        write: None,
        policies: PolicyKind::ALL.to_vec(),
        scale: None,
        no_bound: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--seed" => a.seed = Some(value()?.parse().map_err(|e| format!("--seed: {e}"))?),
            "--no-bound" => a.no_bound = true,
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
    let seed = args.seed.unwrap_or(DEFAULT_SEED);
    let workloads = generate(seed, args.workloads)?;
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
        seed,
        args.policies.len(),
        started.elapsed().as_secs_f64()
    );
    println!("{}", summary_table(&rows, &args.policies));
    println!("{}", workload_table(&rows, &args.policies));
    if let Some(path) = &args.plot {
        let title = format!("max Slow-Down over the lower bound, suite seed {seed}");
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
        seed: args.seed.unwrap_or(base.seed),
        mean_interarrival_s: base.mean_interarrival_s * 64.0 / gpus as f64,
        ..base
    };
    let file = synthetic(&spec)?.file;
    let bound = if args.no_bound {
        None
    } else {
        let (wall, cpu) = (Instant::now(), cpu_s());
        let bound = file_bound(&file, "scale")?;
        println!(
            "{gpus} GPUs, {jobs} jobs (seed {}): lower bound {bound:.3} in {:.1} s ({:.1} s CPU)",
            spec.seed,
            wall.elapsed().as_secs_f64(),
            cpu_s() - cpu
        );
        Some(bound)
    };
    println!(
        "| policy | max SD | max SD / bound | mean SD | Jain | makespan (s) | util (%) | rounds | \
         DR changes | wall (s) | CPU (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &p in &args.policies {
        let (wall, cpu) = (Instant::now(), cpu_s());
        let out = simulate(
            &file,
            "scale",
            &SimOptions {
                policy: Some(p),
                skip_bound: true,
                ..SimOptions::default()
            },
        )?;
        let (wall, cpu) = (wall.elapsed().as_secs_f64(), cpu_s() - cpu);
        let r = &out.report;
        let ratio = bound.map_or("-".into(), |b| format!("{:.3}", r.max_slowdown / b));
        println!(
            "| `{p}` | {:.3} | {ratio} | {:.3} | {:.3} | {:.0} | {:.1} | {} | {} | {wall:.1} | \
             {cpu:.1} |",
            r.max_slowdown,
            r.mean_slowdown,
            r.jain_index,
            r.makespan_s,
            r.mean_gpu_util,
            out.stats.rounds,
            out.stats.dr_changes,
        );
    }
    Ok(())
}

/// This process's CPU time so far (user and system), seconds; NaN where `/proc` cannot tell.
fn cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // After the command name (which may hold spaces): fields 3 onwards; utime and stime are
    // fields 14 and 15, in clock ticks of 1/100 s on Linux.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (tick(11), tick(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}
