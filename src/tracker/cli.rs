//! `attnrt-infer`'s tracker modes: tracking sequences (`--frames`), checking a tracker golden
//! file (`--check` on a file of format `cswintt-tracker`), and timing the tracking step
//! (`--model TRACKER` alone). The binary flattens [`TrackArgs`] into its flags and hands
//! over to [`run`], which writes its report to the writer it is given, tells the binary
//! what happens meanwhile through [`Event`]s (the binary draws the progress bar), and
//! returns the exit status, or `None` when the command is the transformer's.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::cpu::CpuNetwork;
use super::dataset::{Prefetch, Sequence, find_sequences};
use super::eval::{Metrics, evaluate, mean, success_plot};
use super::frame::{BBox, Frame};
use super::golden::{CheckLine, CheckOptions, Measure, check_golden};
use super::gpu::gpu_network;
use super::track::{DEFAULT_UPDATE_INTERVAL, Network, OpTiming, StageTimes, Tracker};
use super::weights::{FORMAT, TrackerWeights, is_tracker};
use crate::base::devices::Device;
use crate::base::{LatencyStats, Precision, TensorFile};
use crate::cswintt::Mode;
use crate::cswintt::gpu::trace::chrome_trace;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::gpu_or_cpu;
use crate::model::golden::weights_for_golden;

/// Frames decoded ahead of the tracker, per sequence.
const DECODE_AHEAD: usize = 32;
/// The most decoder threads a sequence gets.
const MAX_DECODERS: usize = 16;

/// The tracker's own flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TrackArgs {
    /// Track a sequence: a folder of JPEG/PNG frames (in name order) with groundtruth.txt
    /// (first line the initial box x,y,w,h), a LaSOT (img/ + groundtruth.txt), GOT-10k or
    /// OTB (img/ + groundtruth_rect.txt) sequence, or a dataset root (every sequence below
    /// it). Repeat for several. Needs --model with a whole tracker.
    #[arg(long, value_name = "DIR")]
    pub frames: Vec<PathBuf>,

    /// The first frame's box x,y,w,h (pixels), instead of groundtruth.txt's first line; one
    /// sequence only.
    #[arg(long, value_name = "X,Y,W,H", allow_hyphen_values = true)]
    pub init: Option<BBox>,

    /// Replace the dynamic template every N frames (when the confidence exceeds 0.5).
    /// Default: the model's metadata `update_interval`, else the dataset's (25 for GOT-10k,
    /// 200 for LaSOT and others).
    #[arg(long, value_name = "N")]
    pub update_interval: Option<usize>,

    /// Write one x,y,w,h line per frame (the first is the initial box); with several
    /// sequences, a folder with one NAME.txt per sequence.
    #[arg(long, value_name = "FILE")]
    pub boxes: Option<PathBuf>,

    /// Write one confidence per frame (the first frame's, the initial box, is 1); with
    /// several sequences, a folder with one NAME.txt per sequence.
    #[arg(long, value_name = "FILE")]
    pub scores: Option<PathBuf>,

    /// Write every frame with its box drawn (green; the ground truth in red) as
    /// DIR/SEQUENCE/FRAME.jpg.
    #[arg(long, value_name = "DIR")]
    pub show: Option<PathBuf>,

    /// Draw the success plot of the evaluated sequences as SVG.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// When timing the step (GPU): time every operation of one search step on its own
    /// (each convolution with its shape, cuDNN's algorithm and its FLOP rate): GPU time per
    /// call from a CUDA graph of 20 calls, host time to queue one call.
    #[arg(long)]
    pub ops: bool,
}

impl TrackArgs {
    /// The flags that only make sense with `--frames`, when given.
    fn tracking_only(&self) -> Option<&'static str> {
        [
            (self.init.is_some(), "--init"),
            (self.update_interval.is_some(), "--update-interval"),
            (self.boxes.is_some(), "--boxes"),
            (self.scores.is_some(), "--scores"),
            (self.show.is_some(), "--show"),
            (self.plot.is_some(), "--plot"),
        ]
        .into_iter()
        .find_map(|(set, name)| set.then_some(name))
    }
}

/// The flags the tracker shares with the transformer's commands.
#[derive(Debug, Clone, Copy)]
pub struct Shared<'a> {
    pub model: Option<&'a Path>,
    pub check: Option<&'a Path>,
    pub device: Device,
    pub precision: Precision,
    /// The transformer's head dispatch on the GPU.
    pub mode: Mode,
    /// Capture each tracking step into one CUDA graph (GPU).
    pub graph: bool,
    pub json: bool,
    pub iters: Option<usize>,
    pub warmup: Option<usize>,
    pub seed: u64,
    /// Write one search step as a Chrome trace (GPU): the first tracked frame's with
    /// `--frames`, a random frame's when timing.
    pub trace: Option<&'a Path>,
}

/// What a run reports while it works, for the binary to show (a progress bar, notices).
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    /// A one-line notice for the user.
    Notice(String),
    /// A sequence starts.
    Sequence { name: &'a str, frames: usize },
    /// `done` frames of the sequence are tracked, at `fps` frames per second so far.
    Frame { done: usize, fps: f64 },
    /// The sequence is done.
    SequenceDone,
}

/// Runs the tracker mode the flags ask for, writing the report to `out` and telling
/// `events` what happens meanwhile; `Ok(None)` when the flags ask for the transformer alone.
/// Returns the exit status
/// (0, or 1 when a check failed).
pub fn run(
    args: &TrackArgs,
    shared: &Shared,
    out: &mut dyn Write,
    events: &mut dyn FnMut(Event),
) -> Result<Option<u8>> {
    if !args.frames.is_empty() {
        if shared.check.is_some() {
            return Err(Error::invalid(
                "--frames",
                "cannot be combined with --check",
            ));
        }
        let model = shared.model.ok_or_else(|| {
            Error::invalid(
                "--frames",
                "needs --model with a whole tracker (TRACKER.safetensors)",
            )
        })?;
        let weights = Arc::new(TrackerWeights::load(model)?);
        let net = network(weights.clone(), shared, events)?;
        if args.ops {
            return Err(Error::invalid(
                "--ops",
                "applies to timing the step (--model TRACKER alone), not to --frames",
            ));
        }
        return track(args, shared, model, weights, net, out, events).map(Some);
    }
    if let Some(flag) = args.tracking_only() {
        return Err(Error::invalid(
            flag,
            "applies to tracking; pass --frames DIR",
        ));
    }
    if args.ops && shared.check.is_some() {
        return Err(Error::invalid(
            "--ops",
            "applies to timing the step (--model TRACKER alone), not to --check",
        ));
    }
    if let Some(golden) = shared.check {
        let file = TensorFile::open(golden)?;
        if file.meta_value("format") != Some(FORMAT) {
            return Ok(None);
        }
        let model = match shared.model {
            Some(m) => m.to_path_buf(),
            None => weights_for_golden(golden)
                .filter(|p| p.is_file())
                .ok_or_else(|| {
                    Error::invalid(
                        format!("--check {}", golden.display()),
                        "a tracker golden file's weights are not shipped: make them with \
                     `python3 make_weights.py GOLDEN OUT.safetensors` (beside the golden file) \
                     and pass --model OUT.safetensors",
                    )
                })?,
        };
        let weights = Arc::new(TrackerWeights::load(&model)?);
        let net = network(weights, shared, events)?;
        return check(golden, &model, net, shared, out).map(Some);
    }
    if let Some(model) = shared.model
        && is_tracker(&TensorFile::open(model)?)
    {
        let weights = Arc::new(TrackerWeights::load(model)?);
        let net = network(weights.clone(), shared, events)?;
        return time_step(shared, args.ops, model, weights, net, out).map(Some);
    }
    if args.ops {
        return Err(Error::invalid(
            "--ops",
            "times a whole tracker's operations: pass --model TRACKER.safetensors (this model is \
             the transformer alone)",
        ));
    }
    Ok(None)
}

/// The network on the device the flags ask for: `cpu` the CPU reference (f32 only),
/// `cuda[:N]` the GPU network (an error when unavailable), `auto` as [`auto_device`] says.
fn network(
    weights: Arc<TrackerWeights>,
    shared: &Shared,
    events: &mut dyn FnMut(Event),
) -> Result<Box<dyn Network>> {
    let cpu = |weights: Arc<TrackerWeights>| -> Result<Box<dyn Network>> {
        shared
            .precision
            .require("the tracker's CPU reference", &[Precision::F32])?;
        Ok(Box::new(CpuNetwork::new(weights)?))
    };
    let gpu = |n: usize, weights: Arc<TrackerWeights>| -> Result<Box<dyn Network>> {
        let gpu = Gpu::open(n)?;
        gpu_network(gpu, weights, shared.mode, shared.precision, shared.graph)
    };
    match shared.device {
        Device::Cpu => cpu(weights),
        Device::Cuda(n) => gpu(n, weights),
        Device::Auto => auto_device(gpu(0, weights.clone()), || cpu(weights), events),
    }
}

/// `--device auto` ([`gpu_or_cpu`]), with a notice when it runs on the CPU.
pub fn auto_device<N>(
    gpu: Result<N>,
    cpu: impl FnOnce() -> Result<N>,
    events: &mut dyn FnMut(Event),
) -> Result<N> {
    let (network, why) = gpu_or_cpu(gpu, cpu)?;
    if let Some(reason) = why {
        events(Event::Notice(format!(
            "no GPU used ({reason}); the tracker runs on the CPU reference"
        )));
    }
    Ok(network)
}

fn write_err(e: std::io::Error) -> Error {
    Error::io("standard output", e)
}

/// One tracked sequence.
struct SequenceRun {
    seq: Sequence,
    boxes: Vec<BBox>,
    scores: Vec<f64>,
    interval: usize,
    /// Seconds inside `Tracker::track` (and `initialise`), of them the first frame's
    /// (`initialise`: on a GPU it also plans every convolution and captures the step's
    /// graphs, a one-time cost a short sequence feels), and from the first frame requested to
    /// the last box (decoding included).
    track_s: f64,
    first_s: f64,
    wall_s: f64,
    metrics: Option<Metrics>,
    /// The traced step's stages, `(name, ms)`, for the sequence `--trace` traced.
    trace: Option<Vec<(String, f64)>>,
}

impl SequenceRun {
    fn fps(&self) -> f64 {
        self.boxes.len() as f64 / self.track_s.max(1e-12)
    }
    fn fps_end_to_end(&self) -> f64 {
        self.boxes.len() as f64 / self.wall_s.max(1e-12)
    }
    /// Frames/s inside `Tracker::track` after the first frame (none: 0).
    fn fps_after_first(&self) -> f64 {
        let rest = self.boxes.len().saturating_sub(1) as f64;
        rest / (self.track_s - self.first_s).max(1e-12)
    }
}

fn track(
    args: &TrackArgs,
    shared: &Shared,
    model: &Path,
    weights: Arc<TrackerWeights>,
    mut net: Box<dyn Network>,
    out: &mut dyn Write,
    events: &mut dyn FnMut(Event),
) -> Result<u8> {
    let mut seqs = Vec::new();
    for dir in &args.frames {
        seqs.extend(find_sequences(dir)?);
    }
    let mut names = BTreeSet::new();
    for s in &seqs {
        if !names.insert(s.name.clone()) {
            return Err(Error::invalid(
                "--frames",
                format!(
                    "two sequences are named '{}' (their results files would collide)",
                    s.name
                ),
            ));
        }
    }
    if args.init.is_some() && seqs.len() > 1 {
        return Err(Error::invalid(
            "--init",
            format!("gives one box, but --frames holds {} sequences", seqs.len()),
        ));
    }
    if args.update_interval == Some(0) {
        return Err(Error::invalid("--update-interval", "must be at least 1"));
    }
    let several = seqs.len() > 1;
    let mut runs = Vec::with_capacity(seqs.len());
    let mut describe = String::new();
    for seq in seqs {
        let interval = args
            .update_interval
            .or(weights.config.update_interval)
            .unwrap_or_else(|| seq.layout.update_interval());
        describe = format!("{} on {}", net.describe(), net.device());
        let mut tracker = Tracker::new(net, interval)?;
        // The first sequence's first tracked frame is the one traced.
        let trace = shared.trace.filter(|_| runs.is_empty());
        let run = track_sequence(&mut tracker, seq, args, trace, events)?;
        runs.push(run);
        net = tracker.into_network();
    }
    let files = |path: &Option<PathBuf>, what: fn(&SequenceRun) -> Vec<String>| -> Result<()> {
        let Some(p) = path else { return Ok(()) };
        if several {
            std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
        }
        for r in &runs {
            let target = if several {
                p.join(format!("{}.txt", r.seq.name))
            } else {
                p.clone()
            };
            let mut text = what(r).join("\n");
            text.push('\n');
            std::fs::write(&target, text).map_err(|e| Error::io(&target, e))?;
        }
        Ok(())
    };
    files(&args.boxes, |r| {
        r.boxes.iter().map(|b| b.to_string()).collect()
    })?;
    files(&args.scores, |r| {
        r.scores.iter().map(|s| s.to_string()).collect()
    })?;
    let evaluated: Vec<&SequenceRun> = runs.iter().filter(|r| r.metrics.is_some()).collect();
    let per_seq: Vec<Metrics> = evaluated.iter().filter_map(|r| r.metrics.clone()).collect();
    let overall = mean(&per_seq);
    if let Some(p) = &args.plot {
        let mut curves: Vec<(String, &Metrics)> = evaluated
            .iter()
            .filter_map(|r| r.metrics.as_ref().map(|m| (r.seq.name.clone(), m)))
            .collect();
        if let (true, Some(o)) = (evaluated.len() > 1, &overall) {
            curves.insert(0, (format!("all {} sequences", evaluated.len()), o));
        }
        if curves.is_empty() {
            return Err(Error::invalid(
                "--plot",
                "no sequence has ground truth for every frame, so there is nothing to plot",
            ));
        }
        success_plot(p, &curves)?;
    }

    if shared.json {
        let seqs: Vec<_> = runs
            .iter()
            .map(|r| {
                json!({
                    "name": r.seq.name,
                    "dir": r.seq.dir.display().to_string(),
                    "layout": r.seq.layout.name(),
                    "frames": r.boxes.len(),
                    "update_interval": r.interval,
                    "fps": r.fps(),
                    "fps_end_to_end": r.fps_end_to_end(),
                    "first_frame_s": r.first_s,
                    "fps_after_first": r.fps_after_first(),
                    "metrics": r.metrics,
                    "trace": r.trace.as_ref().map(|t| trace_json(shared.trace, t)),
                })
            })
            .collect();
        let j = json!({
            "model": model.display().to_string(),
            "engine": describe,
            "sequences": seqs,
            "overall": overall,
            "boxes": args.boxes.as_ref().map(|p| p.display().to_string()),
            "scores": args.scores.as_ref().map(|p| p.display().to_string()),
            "plot": args.plot.as_ref().map(|p| p.display().to_string()),
        });
        writeln!(out, "{j}").map_err(write_err)?;
        return Ok(0);
    }
    let w = &weights;
    writeln!(
        out,
        "model:    {}: tracker, c={}, search {} px (x{}), template {} px (x{})",
        model.display(),
        w.d_model(),
        w.config.search_crop,
        w.config.search_factor,
        w.config.template_crop,
        w.config.template_factor
    )
    .map_err(write_err)?;
    writeln!(out, "engine:   {describe}").map_err(write_err)?;
    for r in &runs {
        let scores = match &r.metrics {
            Some(m) => metrics_line(m),
            None => "not evaluated (the ground truth does not cover every frame)".into(),
        };
        writeln!(
            out,
            "{}: {} frames ({}, update interval {}), {:.2} frames/s tracking ({:.2} after the \
             first frame's {:.0} ms set-up), {:.2} end to end; {scores}",
            r.seq.name,
            r.boxes.len(),
            r.seq.layout.name(),
            r.interval,
            r.fps(),
            r.fps_after_first(),
            r.first_s * 1e3,
            r.fps_end_to_end(),
        )
        .map_err(write_err)?;
    }
    for (r, t) in runs.iter().filter_map(|r| r.trace.as_ref().map(|t| (r, t))) {
        let what = format!("{}'s first tracked frame", r.seq.name);
        write_trace_table(out, shared.trace, &what, t)?;
    }
    if let (true, Some(o)) = (evaluated.len() > 1, &overall) {
        writeln!(
            out,
            "overall ({} sequences, {} frames): {}",
            evaluated.len(),
            o.frames,
            metrics_line(o)
        )
        .map_err(write_err)?;
    }
    for (name, p) in [
        ("boxes", &args.boxes),
        ("scores", &args.scores),
        ("show", &args.show),
        ("plot", &args.plot),
    ] {
        if let Some(p) = p {
            writeln!(out, "{name:<8}  {}", p.display()).map_err(write_err)?;
        }
    }
    Ok(0)
}

fn metrics_line(m: &Metrics) -> String {
    format!(
        "success AUC {:.1}, precision@20px {:.1}, normalised precision {:.1} ({} frames counted)",
        100.0 * m.auc,
        100.0 * m.precision,
        100.0 * m.norm_precision,
        m.frames
    )
}

/// Tracks one sequence with frames decoded ahead on other threads, each frame's step told
/// the next frame ([`Tracker::track_ahead`]); with `trace`, the first tracked frame's step
/// is also traced into that file (before it is tracked, outside the timings).
fn track_sequence<N: Network>(
    tracker: &mut Tracker<N>,
    seq: Sequence,
    args: &TrackArgs,
    trace: Option<&Path>,
    events: &mut dyn FnMut(Event),
) -> Result<SequenceRun> {
    let (init, init_ctx) = match (&args.init, &seq.groundtruth) {
        (Some(b), _) => (*b, "--init".to_string()),
        (None, Some(gt)) => (gt.initial()?, format!("{}:1", gt.path.display())),
        (None, None) => {
            return Err(Error::invalid(
                seq.dir.display().to_string(),
                "has no groundtruth.txt (or groundtruth_rect.txt) to start from; pass --init x,y,w,h",
            ));
        }
    };
    let n = seq.frames.len();
    // Every core but the tracking thread's decodes: a 1280x720 JPEG takes a core 12-16 ms
    // (the `image` crate), so four decoders (the earlier limit) held an H100's 1.8 ms step to
    // 317 frames/s end to end (docs/PERF.md).
    let threads = std::thread::available_parallelism()
        .map_or(1, |p| p.get().saturating_sub(1))
        .clamp(1, MAX_DECODERS);
    let mut frames = Prefetch::new(seq.frames.clone(), threads, DECODE_AHEAD).peekable();
    events(Event::Sequence {
        name: &seq.name,
        frames: n,
    });
    let show_dir = args.show.as_ref().map(|d| d.join(&seq.name));
    if let Some(d) = &show_dir {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let (mut boxes, mut scores) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut track_s, mut first_s) = (0.0, 0.0);
    let mut traced = None;
    let start = Instant::now();
    let mut i = 0;
    while let Some(frame) = frames.next() {
        let frame = frame?;
        let path = &seq.frames[i];
        // Each frame moves from here into the next iteration's `frame`: the address the
        // network knows a staged frame by stays the frame's (see `track_ahead`).
        let next = match frames.peek() {
            Some(Ok(f)) => Some(f),
            _ => None,
        };
        if let (1, Some(p), Some(state)) = (i, trace, tracker.state()) {
            let t = write_trace(tracker.network_mut(), &frame, &state, p)
                .map_err(|e| Error::invalid(path.display().to_string(), e.to_string()))?;
            traced = Some(t);
        }
        let t0 = Instant::now();
        let (bbox, score) = if i == 0 {
            tracker.initialise(&frame, init).map_err(|e| {
                Error::invalid(init_ctx.clone(), format!("in {}: {e}", path.display()))
            })?;
            (init, 1.0)
        } else {
            let r = tracker
                .track_ahead(&frame, next)
                .map_err(|e| Error::invalid(path.display().to_string(), e.to_string()))?;
            (r.bbox, r.confidence)
        };
        let took = t0.elapsed().as_secs_f64();
        track_s += took;
        if i == 0 {
            first_s = took;
        }
        if let Some(d) = &show_dir {
            let truth = seq
                .groundtruth
                .as_ref()
                .and_then(|g| g.boxes.get(i).copied().flatten());
            save_shown(&frame, &bbox, truth.as_ref(), d, path)?;
        }
        boxes.push(bbox);
        scores.push(score);
        events(Event::Frame {
            done: boxes.len(),
            fps: boxes.len() as f64 / track_s.max(1e-12),
        });
        i += 1;
    }
    events(Event::SequenceDone);
    let metrics = if seq.fully_annotated() {
        seq.groundtruth
            .as_ref()
            .and_then(|g| evaluate(&boxes, &g.boxes))
    } else {
        None
    };
    Ok(SequenceRun {
        interval: tracker.update_interval(),
        seq,
        boxes,
        scores,
        track_s,
        first_s,
        wall_s: start.elapsed().as_secs_f64(),
        metrics,
        trace: traced,
    })
}

/// Writes `frame` with `bbox` drawn in green (and `truth` in red) as `dir/STEM.jpg`.
fn save_shown(
    frame: &Frame,
    bbox: &BBox,
    truth: Option<&BBox>,
    dir: &Path,
    src: &Path,
) -> Result<()> {
    let mut f = frame.clone();
    if let Some(t) = truth {
        draw_box(&mut f, t, [230, 40, 40]);
    }
    draw_box(&mut f, bbox, [40, 230, 40]);
    let stem = src
        .file_stem()
        .map_or_else(|| "frame".into(), |s| s.to_string_lossy().into_owned());
    let path = dir.join(format!("{stem}.jpg"));
    let img = image::RgbImage::from_raw(f.width as u32, f.height as u32, f.data)
        .ok_or_else(|| Error::invalid(path.display().to_string(), "frame size"))?;
    img.save(&path).map_err(|e| {
        Error::invalid(
            path.display().to_string(),
            format!("cannot write the frame: {e}"),
        )
    })
}

/// A 2-pixel rectangle outline, clipped to the frame.
fn draw_box(f: &mut Frame, b: &BBox, rgb: [u8; 3]) {
    let (w, h) = (f.width as i64, f.height as i64);
    let (x0, y0) = (b.x.round() as i64, b.y.round() as i64);
    let (x1, y1) = (
        (b.x + b.w).round() as i64 - 1,
        (b.y + b.h).round() as i64 - 1,
    );
    let mut put = |x: i64, y: i64| {
        if (0..w).contains(&x) && (0..h).contains(&y) {
            let i = ((y * w + x) * 3) as usize;
            f.data[i..i + 3].copy_from_slice(&rgb);
        }
    };
    for t in 0..2 {
        for x in x0..=x1 {
            put(x, y0 + t);
            put(x, y1 - t);
        }
        for y in y0..=y1 {
            put(x0 + t, y);
            put(x1 - t, y);
        }
    }
}

fn check(
    golden: &Path,
    model: &Path,
    net: Box<dyn Network>,
    shared: &Shared,
    out: &mut dyn Write,
) -> Result<u8> {
    let t0 = Instant::now();
    let device = net.device();
    let options = CheckOptions::for_precision(shared.precision);
    let report = check_golden(golden, net, options)?;
    let seconds = t0.elapsed().as_secs_f64();
    let engine = &report.engine;
    if shared.json {
        let mut j =
            serde_json::to_value(&report).map_err(|e| Error::invalid("--json", e.to_string()))?;
        j["model"] = json!(model.display().to_string());
        j["device"] = json!(device);
        j["precision"] = json!(shared.precision.to_string());
        j["failed"] = json!(report.failed());
        j["passed"] = json!(report.passed());
        j["run_s"] = json!(seconds);
        writeln!(out, "{j}").map_err(write_err)?;
    } else {
        writeln!(
            out,
            "check:   {} against {}",
            golden.display(),
            model.display()
        )
        .map_err(write_err)?;
        writeln!(
            out,
            "engine:  {engine} on {device}; relative errors ||ours - expected||_F / \
             ||expected||_F within max({:.0e}, 4 x the original's f32 error per family); crops \
             within 1 grey level (the network runs on the golden's own crops); masks, resize \
             factors and update decisions exact; free-running states within {} px",
            options.floor, options.free_px
        )
        .map_err(write_err)?;
        for l in &report.lines {
            writeln!(out, "{}", check_line(l)).map_err(write_err)?;
        }
        for n in &report.skipped {
            writeln!(out, "{n:<44} skipped (not produced)").map_err(write_err)?;
        }
        writeln!(
            out,
            "{}: {} tensors, {} over tolerance, {} frames tracked, {seconds:.1} s",
            if report.passed() { "PASS" } else { "FAIL" },
            report.lines.len(),
            report.failed(),
            report.frames
        )
        .map_err(write_err)?;
    }
    Ok(if report.passed() { 0 } else { 1 })
}

/// One line of the check report.
pub fn check_line(l: &CheckLine) -> String {
    let verdict = if l.ok { "ok" } else { "FAIL" };
    let what = match l.measure {
        Measure::RelErr => format!("rel err {:.3e} (tol {:.1e})", l.value, l.tolerance),
        Measure::GreyLevels => format!(
            "max diff {} grey levels ({} of {} values differ; tol 1)",
            l.value, l.differing, l.values
        ),
        Measure::Mismatches => format!("{} of {} values differ (exact)", l.differing, l.values),
        Measure::AbsPx => format!("max abs {:.3e} px (tol {})", l.value, l.tolerance),
    };
    format!("{:<44} {what}  {verdict}", l.name)
}

/// Calls of each operation `--ops` times.
pub const OPS_REPS: usize = 20;

/// Tracks `iters` random frames after `warmup` and reports the step's latency and stages;
/// with `ops`, every operation of one more step timed on its own.
fn time_step(
    shared: &Shared,
    ops: bool,
    model: &Path,
    weights: Arc<TrackerWeights>,
    net: Box<dyn Network>,
    out: &mut dyn Write,
) -> Result<u8> {
    let (warmup, iters) = (shared.warmup.unwrap_or(1), shared.iters.unwrap_or(5));
    let interval = weights
        .config
        .update_interval
        .unwrap_or(DEFAULT_UPDATE_INTERVAL);
    let mut tracker = Tracker::new(net, interval)?;
    let (w, h) = (1280usize, 720usize);
    let mut rng = ChaCha8Rng::seed_from_u64(shared.seed);
    let frames: Vec<Frame> = (0..4)
        .map(|_| Frame::new(h, w, (0..w * h * 3).map(|_| rng.random::<u8>()).collect()))
        .collect::<Result<_>>()?;
    let start = BBox::new(600.0, 320.0, 80.0, 60.0);
    tracker.initialise(&frames[0], start)?;
    let describe = format!(
        "{} on {}",
        tracker.network().describe(),
        tracker.network().device()
    );
    // Random frames move the box anywhere; it starts over from the middle when the
    // prediction shrinks it to the clip margin, so every step crops a real search region.
    // Whether the step also replaced the template.
    let step = |tracker: &mut Tracker<Box<dyn Network>>, i: usize| -> Result<bool> {
        let (frame, next) = (&frames[i % frames.len()], &frames[(i + 1) % frames.len()]);
        let tracked = tracker.track_ahead(frame, Some(next))?;
        let b = tracked.bbox;
        if b.w <= 10.0 || b.h <= 10.0 {
            tracker.set_state(start);
        }
        Ok(tracked.template_updated)
    };
    let mut lat = Vec::with_capacity(iters);
    // The timed steps that did not replace the template: the search alone.
    let mut search_lat = Vec::with_capacity(iters);
    let mut stages = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        let t0 = Instant::now();
        let updated = step(&mut tracker, i)?;
        if i >= warmup {
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            lat.push(ms);
            if !updated {
                search_lat.push(ms);
            }
            stages.extend(tracker.network().stage_times());
        }
    }
    let updates = lat.len() - search_lat.len();
    let search_stats = LatencyStats::new(&search_lat);
    if stages.is_empty() {
        // An engine that replays one graph a step times its stages only in eager steps:
        // a few of those after the timed ones.
        tracker.network_mut().set_stage_timing(true);
        for i in 0..iters.min(20) {
            step(&mut tracker, i)?;
            stages.extend(tracker.network().stage_times());
        }
        tracker.network_mut().set_stage_timing(false);
    }
    let memory = tracker.network().device_memory();
    let traced = match (shared.trace, tracker.state()) {
        (Some(p), Some(state)) => Some(write_trace(tracker.network_mut(), &frames[0], &state, p)?),
        _ => None,
    };
    let op_rows = match (ops, tracker.state()) {
        (true, Some(state)) => Some(
            tracker
                .network_mut()
                .profile_ops(&frames[0], &state, OPS_REPS)?,
        ),
        _ => None,
    };
    if lat.is_empty() {
        return Err(Error::invalid(
            "--iters",
            "must be at least 1 to time the tracking step",
        ));
    }
    let stats = LatencyStats::new(&lat)
        .ok_or_else(|| Error::invalid("--iters", "must be at least 1 to time the tracking step"))?;
    let mut avg = StageTimes::default();
    for s in &stages {
        avg.crop += s.crop / stages.len() as f64;
        avg.backbone += s.backbone / stages.len() as f64;
        avg.transformer += s.transformer / stages.len() as f64;
        avg.heads += s.heads / stages.len() as f64;
    }
    if shared.json {
        let j = json!({
            "model": model.display().to_string(),
            "engine": describe,
            "frame": [w, h],
            "warmup": warmup,
            "iters": iters,
            "latency_ms": {"p50": stats.p50, "p90": stats.p90, "p99": stats.p99, "mean": stats.mean},
            "template_updates": updates,
            "update_interval": interval,
            "search_latency_ms": search_stats.as_ref().map(|s| {
                json!({"p50": s.p50, "p90": s.p90, "p99": s.p99, "mean": s.mean})
            }),
            "fps": stats.per_second(1.0),
            "stages_ms": (!stages.is_empty()).then_some(avg),
            "device_memory_bytes": memory,
            "trace": traced.as_ref().map(|t| trace_json(shared.trace, t)),
            "ops": op_rows.as_ref().map(|rows| json!({"reps": OPS_REPS, "rows": rows})),
        });
        writeln!(out, "{j}").map_err(write_err)?;
    } else {
        writeln!(
            out,
            "model:   {}: whole tracker, one step (crop -> box) per frame",
            model.display()
        )
        .map_err(write_err)?;
        writeln!(out, "engine:  {describe}").map_err(write_err)?;
        writeln!(
            out,
            "run:     random {w}x{h} frames, warmup {warmup}, iters {iters}"
        )
        .map_err(write_err)?;
        writeln!(out, "latency: {stats}").map_err(write_err)?;
        if updates > 0 {
            writeln!(
                out,
                "updates: {updates} of the {} timed steps also replaced the template (every \
                 {interval} frames when confident); the others alone: {}",
                lat.len(),
                search_stats.map_or_else(|| "none".to_string(), |s| s.to_string())
            )
            .map_err(write_err)?;
        }
        writeln!(out, "fps:     {:.2} frames/s", stats.per_second(1.0)).map_err(write_err)?;
        if !stages.is_empty() {
            let parts: Vec<String> = avg
                .named()
                .iter()
                .map(|(n, v)| format!("{n} {v:.3}"))
                .collect();
            writeln!(out, "stages:  {} ms (mean)", parts.join(", ")).map_err(write_err)?;
        }
        if let Some(m) = memory {
            writeln!(
                out,
                "memory:  {:.1} MiB of device memory in use (the whole device)",
                m as f64 / (1 << 20) as f64
            )
            .map_err(write_err)?;
        }
        if let Some(t) = &traced {
            write_trace_table(out, shared.trace, "a random frame", t)?;
        }
        if let Some(rows) = &op_rows {
            write_ops_table(out, rows)?;
        }
    }
    Ok(0)
}

/// `--ops`: one line per operation (GPU time per call in a graph, its FLOP rate, the host's
/// time to queue it, the eager wall-clock per call, a convolution's shape and plan, and on
/// a line below, the forward algorithms cuDNN's benchmark timed), then the sums per layer,
/// over the corner head, over the convolutions and over everything.
fn write_ops_table(out: &mut dyn Write, rows: &[OpTiming]) -> Result<()> {
    writeln!(
        out,
        "ops:     every operation of one search step on its own, {OPS_REPS} calls each: GPU us \
         per call in one CUDA graph, host us to queue one, eager us per call waited for"
    )
    .map_err(write_err)?;
    writeln!(
        out,
        "         {:<22} {:>9} {:>8} {:>8} {:>9}  shape and plan",
        "op", "GPU us", "TFLOP/s", "host us", "eager us"
    )
    .map_err(write_err)?;
    let rate = |flops: f64, us: f64| {
        if flops > 0.0 && us > 0.0 {
            format!("{:.2}", flops / us * 1e-6)
        } else {
            "-".into()
        }
    };
    for r in rows {
        writeln!(
            out,
            "         {:<22} {:>9.1} {:>8} {:>8.1} {:>9.1}  {}",
            r.name,
            r.graph_us,
            rate(r.flops, r.graph_us),
            r.host_us,
            r.eager_us,
            r.detail
        )
        .map_err(write_err)?;
        if !r.candidates.is_empty() {
            writeln!(out, "{:>69}  cuDNN's benchmark: {}", "", r.candidates).map_err(write_err)?;
        }
    }
    // Sums over the rows `keep` picks: FLOPs, GPU, host and eager us.
    let sum = |keep: &dyn Fn(&OpTiming) -> bool| {
        rows.iter()
            .filter(|r| keep(r))
            .fold([0.0; 4], |[f, g, h, e], r| {
                [f + r.flops, g + r.graph_us, h + r.host_us, e + r.eager_us]
            })
    };
    // Each group of rows named `GROUP.…` (layer1, layer2, layer3, corner), then the
    // convolutions and everything.
    let group = |r: &OpTiming| r.name.split_once('.').map(|(g, _)| g.to_string());
    let groups: Vec<String> = rows.iter().filter_map(group).fold(Vec::new(), |mut g, n| {
        if !g.contains(&n) {
            g.push(n);
        }
        g
    });
    let mut sums: Vec<(String, [f64; 4])> = groups
        .iter()
        .map(|g| {
            let in_group = |r: &OpTiming| group(r).as_ref() == Some(g);
            (format!("({g})"), sum(&in_group))
        })
        .collect();
    sums.push(("(convolutions)".into(), sum(&|r| r.flops > 0.0)));
    sums.push(("(all)".into(), sum(&|_| true)));
    for (name, [flops, graph, host, eager]) in sums {
        writeln!(
            out,
            "         {name:<22} {graph:>9.1} {:>8} {host:>8.1} {eager:>9.1}  {:.2} GFLOP",
            rate(flops, graph),
            flops * 1e-9
        )
        .map_err(write_err)?;
    }
    Ok(())
}

/// `--trace FILE`: one search of `frame` around `state`, traced (a span per stage, from CUDA
/// events), written to `path` as a Chrome trace; returns its stages as `(name, ms)`.
fn write_trace(
    net: &mut dyn Network,
    frame: &Frame,
    state: &BBox,
    path: &Path,
) -> Result<Vec<(String, f64)>> {
    let spans = net.trace(frame, state)?;
    std::fs::write(path, chrome_trace(&spans).to_string()).map_err(|e| Error::io(path, e))?;
    Ok(spans
        .iter()
        .map(|s| (s.name.clone(), s.end_ms - s.start_ms))
        .collect())
}

fn trace_json(path: Option<&Path>, stages: &[(String, f64)]) -> serde_json::Value {
    let stages: Vec<_> = stages
        .iter()
        .map(|(name, ms)| json!({"stage": name, "ms": ms}))
        .collect();
    json!({"file": path.map(|p| p.display().to_string()), "stages": stages})
}

/// The traced step's stages, one line each, and where the trace went.
fn write_trace_table(
    out: &mut dyn Write,
    path: Option<&Path>,
    what: &str,
    stages: &[(String, f64)],
) -> Result<()> {
    let file = path.map_or_else(String::new, |p| format!(" -> {}", p.display()));
    writeln!(
        out,
        "trace:   one eager step of {what}{file} (open in ui.perfetto.dev)"
    )
    .map_err(write_err)?;
    for (name, ms) in stages {
        writeln!(out, "         {name:<22} {ms:>8.3} ms").map_err(write_err)?;
    }
    let total: f64 = stages.iter().map(|(_, ms)| ms).sum();
    writeln!(out, "         {:<22} {total:>8.3} ms", "(sum)").map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_says_when_it_runs_on_the_cpu() {
        let mut notices = Vec::new();
        let mut events = |e: Event| {
            if let Event::Notice(n) = e {
                notices.push(n)
            }
        };
        let none = Err(Error::NoGpu {
            reason: "the CUDA driver reports 0 devices".into(),
        });
        assert_eq!(auto_device(none, || Ok("cpu"), &mut events).unwrap(), "cpu");
        assert_eq!(
            auto_device(Ok("gpu"), || Ok("cpu"), &mut events).unwrap(),
            "gpu"
        );
        assert_eq!(notices.len(), 1);
        assert!(notices[0].contains("0 devices"), "{notices:?}");
    }
}
