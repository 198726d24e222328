//! `attnrt-infer`: runs the CSWinTT transformer on the CPU reference or the GPU engine,
//! times it, checks it against golden files, and writes outputs; with a whole tracker,
//! tracks sequences of frames (`attnrt::tracker::cli`).

mod args;
mod golden;
mod track_view;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use serde_json::json;

use attnrt::cswintt::gpu::trace::{Overlap, chrome_trace, head_overlap};
use attnrt::cswintt::{Backend, EngineOptions, Inputs, flops};
use attnrt::cswintt::{select_backend, time_runs};
use attnrt::gpu::nvtx;
use attnrt::model::Weights;
use attnrt::model::synthetic::{self, Padding};
use attnrt::{Error, Result};

use args::Args;
use golden::check_golden;
use track_view::TrackView;

fn main() -> ExitCode {
    let args = Args::parse();
    for n in nvtx::notices() {
        eprintln!("attnrt-infer: {n}");
    }
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("attnrt-infer: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    let shared = attnrt::tracker::cli::Shared {
        model: args.model.as_deref(),
        check: args.check.as_deref(),
        device: args.device,
        precision: args.precision,
        mode: args.mode,
        graph: args.graph,
        json: args.json,
        iters: args.iters,
        warmup: args.warmup,
        seed: args.seed,
        trace: args.trace.as_deref(),
    };
    let mut view = TrackView::new(args.json);
    let tracked =
        attnrt::tracker::cli::run(&args.track, &shared, &mut std::io::stdout(), &mut |e| {
            view.show(e)
        })?;
    if let Some(code) = tracked {
        return Ok(ExitCode::from(code));
    }
    if args.batch == Some(0) {
        return Err(Error::invalid("--batch", "must be at least 1"));
    }
    let (weights, model_desc) = Weights::for_run(args.model.as_deref(), args.check.as_deref())?;
    let weights = Arc::new(weights);
    let cfg = weights.config.clone();
    let options = EngineOptions {
        mode: args.mode,
        precision: args.precision,
        graph: args.graph,
    };
    let selected = select_backend(args.device, weights.clone(), options)?;
    if let Some(n) = &selected.notice {
        eprintln!("attnrt-infer: {n}");
    }
    let mut backend = selected.backend;
    if let Some(golden) = &args.check {
        return check_golden(&args, golden, &cfg, &model_desc, backend.as_mut());
    }

    let inputs = match &args.input {
        Some(p) => {
            let inputs = Inputs::load(p, &cfg)?;
            if let Some(b) = args.batch.filter(|&b| b != inputs.batch) {
                let problem = format!("{b} disagrees with --input's batch {}", inputs.batch);
                return Err(Error::invalid("--batch", problem));
            }
            inputs
        }
        None => {
            let padding = if args.pad {
                Padding::Borders
            } else {
                Padding::None
            };
            let batch = args.batch.unwrap_or(1);
            let with_query = weights.query_embed.is_none();
            synthetic::random_inputs(&cfg, batch, args.seed, padding, with_query)
        }
    };
    let (warmup, iters) = (args.warmup.unwrap_or(2), args.iters.unwrap_or(10));
    let timing = time_runs(backend.as_mut(), &inputs, warmup, iters)?;
    if let Some(p) = &args.output {
        match timing.last {
            Some(o) => o.save(p)?,
            None => backend.run(&inputs, false)?.save(p)?,
        }
    }
    let overlap = match &args.trace {
        Some(p) => Some(write_trace(backend.as_mut(), &inputs, p)?),
        None => None,
    };

    let (batch, pass_flops) = (inputs.batch, flops(&cfg, inputs.batch));
    let trace = args.trace.as_deref().zip(overlap);
    if args.json {
        let mut j = json!({
            "model": model_desc,
            "config": cfg,
            "device": backend.device(),
            "engine": backend.describe(),
            "precision": backend.precision().to_string(),
            "mode": args.mode.to_string(),
            "graph": args.graph,
            "batch": batch,
            "tokens": cfg.l_all(),
            "warmup": warmup,
            "iters": iters,
            "flops_per_pass": pass_flops,
        });
        if let Some(s) = &timing.latency_ms {
            j["latency_ms"] = json!({"p50": s.p50, "p90": s.p90, "p99": s.p99, "mean": s.mean, "min": s.min, "max": s.max});
            j["fps"] = json!(s.per_second(batch as f64));
            j["gflops"] = json!(s.per_second(pass_flops) / 1e9);
        }
        if let Some((p, o)) = trace {
            j["trace"] = json!({
                "file": p.display().to_string(),
                "head_busy_ms": o.busy_ms,
                "head_union_ms": o.union_ms,
                "concurrency": o.concurrency(),
                "max_concurrent": o.max_concurrent,
            });
        }
        if let Some(p) = &args.output {
            j["output"] = json!(p.display().to_string());
        }
        println!("{j}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("model:   {model_desc}: {cfg}");
    println!("engine:  {} on {}", backend.describe(), backend.device());
    let tokens = cfg.l_all();
    println!("run:     batch {batch}, {tokens} tokens, warmup {warmup}, iters {iters}");
    match &timing.latency_ms {
        Some(s) => {
            println!("latency: {s}");
            let fps = s.per_second(batch as f64);
            println!("fps:     {fps:.2} frames/s (batch / mean latency)");
            println!(
                "compute: {:.1} GFLOP/s ({:.3} GFLOP per pass / mean latency; matrix products only)",
                s.per_second(pass_flops) / 1e9,
                pass_flops / 1e9
            );
        }
        None => println!("latency: no timed runs (--iters 0)"),
    }
    if let Some(p) = &args.output {
        println!("output:  search_feat, hs -> {}", p.display());
    }
    if let Some((p, o)) = trace {
        println!("trace:   one eager pass -> {}", p.display());
        println!("heads:   {o}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Times one pass as spans, writes them to `path` as a Chrome trace, and returns how much
/// the per-head attention spans overlapped.
fn write_trace(backend: &mut dyn Backend, inputs: &Inputs, path: &Path) -> Result<Overlap> {
    let spans = backend.trace(inputs)?;
    std::fs::write(path, chrome_trace(&spans).to_string())
        .map_err(|e| Error::invalid(format!("--trace {}", path.display()), e.to_string()))?;
    Ok(head_overlap(&spans))
}
