//! `attnrt-infer` as a tracker, through the built binary: the whole golden check, tracking
//! frames folders in every dataset layout with every output, evaluation, timing, and each
//! kind of bad input (a clear error naming the file, line or flag; exit status 2).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use attnrt::tracker::synthetic::{SyntheticSpec, write_synthetic_tracker};
use serde_json::Value;

fn run(args: &[&str]) -> Output {
    Command::new(common::bin(
        "attnrt-infer",
        env!("CARGO_BIN_EXE_attnrt-infer"),
    ))
    .args(args)
    .output()
    .expect("attnrt-infer runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs and expects success; returns stdout.
fn ok(args: &[&str]) -> String {
    let o = run(args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{args:?}: {out}\n{err}");
    out
}

/// Runs and expects exit status 2 with every `needles` in the error.
fn fails(args: &[&str], needles: &[&str]) {
    let o = run(args);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {out}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: '{n}' not in: {err}");
    }
}

#[test]
fn golden_check_passes_whole() {
    let g = common::tracker_golden();
    let t0 = Instant::now();
    let out = ok(&[
        "--model",
        s(&g.weights),
        "--check",
        s(&g.golden),
        "--device",
        "cpu",
        "--json",
    ]);
    eprintln!("whole golden check: {:.1} s", t0.elapsed().as_secs_f64());
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["passed"], true, "{out}");
    assert_eq!(j["frames"], 8);
    assert_eq!(j["skipped"].as_array().unwrap().len(), 0, "{out}");
    // Every expected.* tensor of the file, and our crops of the first template.
    let file = attnrt::base::TensorFile::open(&g.golden).unwrap();
    let expected = file
        .names()
        .iter()
        .filter(|n| n.starts_with("expected."))
        .count();
    assert_eq!(j["lines"].as_array().unwrap().len(), expected + 2);
}

/// A textured frame with a bright 30 x 24 square at `(x, y)`.
fn frame(w: u32, h: u32, x: u32, y: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |c, r| {
        if (x..x + 30).contains(&c) && (y..y + 24).contains(&r) {
            image::Rgb([230, 190, 150])
        } else {
            image::Rgb([((r * 7 + c * 3) % 97) as u8, ((r + c) % 50) as u8, 90])
        }
    })
}

/// A sequence folder: `n` frames (in the subfolder `sub`, or `dir` itself for "."), the
/// square moving 3 px right a frame, and a ground-truth file (its name and the separator
/// of its fields) unless `None`.
fn sequence(dir: &Path, sub: &str, n: u32, ext: &str, gt: Option<(&str, &str)>) -> PathBuf {
    let frames = if sub == "." {
        dir.to_path_buf()
    } else {
        dir.join(sub)
    };
    std::fs::create_dir_all(&frames).unwrap();
    let mut lines = Vec::new();
    for i in 0..n {
        frame(160, 120, 40 + 3 * i, 30)
            .save(frames.join(format!("{:08}.{ext}", i + 1)))
            .unwrap();
        lines.push([40 + 3 * i, 30, 30, 24]);
    }
    if let Some((name, sep)) = gt {
        let text: Vec<String> = lines
            .iter()
            .map(|l| l.map(|v| v.to_string()).join(sep))
            .collect();
        std::fs::write(dir.join(name), text.join("\n") + "\n").unwrap();
    }
    dir.to_path_buf()
}

/// `n` frames in `dir` itself with a comma-separated `groundtruth.txt`.
fn plain_sequence(dir: &Path, n: u32, ext: &str) -> PathBuf {
    sequence(dir, ".", n, ext, Some(("groundtruth.txt", ",")))
}

struct Setup {
    dir: tempfile::TempDir,
    model: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.safetensors");
    write_synthetic_tracker(&model, &SyntheticSpec::tiny(), 5).unwrap();
    Setup { dir, model }
}

impl Setup {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Tracks `dir` on the CPU with `extra` flags and returns what it printed.
    fn track(&self, dir: &Path, extra: &[&str]) -> String {
        let mut args = vec![
            "--model",
            s(&self.model),
            "--frames",
            s(dir),
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        ok(&args)
    }

    /// [`Setup::track`]'s JSON report.
    fn track_json(&self, dir: &Path, extra: &[&str]) -> Value {
        let json: Vec<&str> = ["--json"].iter().chain(extra).copied().collect();
        serde_json::from_str(&self.track(dir, &json)).unwrap()
    }
}

#[test]
fn tracks_a_frames_folder_with_every_output() {
    let st = setup();
    let seq = plain_sequence(&st.path("seq"), 6, "png");
    let (boxes, scores, show, plot) = (
        st.path("b.txt"),
        st.path("s.txt"),
        st.path("show"),
        st.path("p.svg"),
    );
    let j = st.track_json(
        &seq,
        &[
            "--boxes",
            s(&boxes),
            "--scores",
            s(&scores),
            "--show",
            s(&show),
            "--plot",
            s(&plot),
        ],
    );
    let seq0 = &j["sequences"][0];
    assert_eq!(seq0["frames"], 6);
    assert_eq!(seq0["layout"], "frames folder");
    assert_eq!(seq0["update_interval"], 200);
    assert!(seq0["fps"].as_f64().unwrap() > 0.0);
    assert!(seq0["fps_after_first"].as_f64().unwrap() > 0.0);
    assert!(seq0["first_frame_s"].as_f64().unwrap() > 0.0);
    let m = &seq0["metrics"];
    assert_eq!(m["frames"], 6);
    assert_eq!(m["success"].as_array().unwrap().len(), 21);
    let b = std::fs::read_to_string(&boxes).unwrap();
    let lines: Vec<&str> = b.lines().collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[0], "40,30,30,24");
    for l in &lines {
        let v: Vec<f64> = l.split(',').map(|x| x.parse().unwrap()).collect();
        assert!(v.len() == 4 && v[2] >= 10.0 && v[3] >= 10.0, "{l}");
    }
    let sc: Vec<f64> = std::fs::read_to_string(&scores)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(sc.len(), 6);
    assert_eq!(sc[0], 1.0);
    assert!(sc[1..].iter().all(|&v| v > 0.0 && v < 1.0));
    let shown = std::fs::read_dir(show.join("seq")).unwrap().count();
    assert_eq!(shown, 6);
    assert!(image::open(show.join("seq/00000003.jpg")).is_ok());
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));

    // Text output: one line for the sequence with its scores.
    let out = st.track(&seq, &[]);
    assert!(
        out.contains("seq: 6 frames") && out.contains("success AUC"),
        "{out}"
    );
}

#[test]
fn dataset_layouts_and_several_sequences() {
    let st = setup();
    let root = st.path("root");
    // LaSOT: img/ and groundtruth.txt (tabs), an absent target on the last line.
    let lasot = sequence(
        &root.join("cat/cat-1"),
        "img",
        4,
        "jpg",
        Some(("groundtruth.txt", "\t")),
    );
    let gt = std::fs::read_to_string(lasot.join("groundtruth.txt")).unwrap();
    let mut lines: Vec<&str> = gt.lines().collect();
    lines[3] = "NaN,NaN,NaN,NaN";
    std::fs::write(lasot.join("groundtruth.txt"), lines.join("\n")).unwrap();
    // GOT-10k: frames and groundtruth.txt, with its label files.
    let got = plain_sequence(&root.join("got/GOT-10k_Test_000001"), 3, "jpg");
    std::fs::write(got.join("absence.label"), "0\n0\n0\n").unwrap();
    // OTB: img/ and groundtruth_rect.txt (spaces).
    sequence(
        &root.join("otb/Square"),
        "img",
        3,
        "jpg",
        Some(("groundtruth_rect.txt", " ")),
    );
    let boxes = st.path("boxes");
    let j = st.track_json(&root, &["--boxes", s(&boxes)]);
    let seqs = j["sequences"].as_array().unwrap();
    let by_name = |n: &str| {
        seqs.iter()
            .find(|s| s["name"] == n)
            .unwrap_or_else(|| panic!("{n}: {j}"))
    };
    assert_eq!(by_name("cat-1")["layout"], "LaSOT");
    assert_eq!(by_name("cat-1")["update_interval"], 200);
    // The absent frame is left out of the metrics.
    assert_eq!(by_name("cat-1")["metrics"]["frames"], 3);
    assert_eq!(by_name("GOT-10k_Test_000001")["layout"], "GOT-10k");
    assert_eq!(by_name("GOT-10k_Test_000001")["update_interval"], 25);
    assert_eq!(by_name("Square")["layout"], "OTB");
    assert_eq!(j["overall"]["frames"], 3 + 3 + 3);
    for (name, n) in [("cat-1", 4), ("GOT-10k_Test_000001", 3), ("Square", 3)] {
        let text = std::fs::read_to_string(boxes.join(format!("{name}.txt"))).unwrap();
        assert_eq!(text.lines().count(), n, "{name}");
    }
    // --update-interval overrides the dataset's.
    let j = st.track_json(&got, &["--update-interval", "2"]);
    assert_eq!(j["sequences"][0]["update_interval"], 2);
}

#[test]
fn init_box_without_ground_truth_is_not_evaluated() {
    let st = setup();
    let seq = sequence(&st.path("seq"), ".", 3, "png", None);
    let j = st.track_json(&seq, &["--init", "40,30,30,24"]);
    assert_eq!(j["sequences"][0]["frames"], 3);
    assert!(j["sequences"][0]["metrics"].is_null());
    assert!(j["overall"].is_null());
    // Only the first line of ground truth (GOT-10k's test set): tracked, not evaluated.
    std::fs::write(seq.join("groundtruth.txt"), "40 30 30 24\n").unwrap();
    let out = st.track(&seq, &[]);
    assert!(out.contains("not evaluated"), "{out}");
}

#[test]
fn timing_the_tracking_step() {
    let st = setup();
    let out = ok(&[
        "--model",
        s(&st.model),
        "--device",
        "cpu",
        "--iters",
        "2",
        "--warmup",
        "0",
        "--json",
    ]);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert!(j["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(j["fps"].as_f64().unwrap() > 0.0);
    assert!(j["template_updates"].as_u64().unwrap() <= 2, "{out}");
    for stage in ["crop", "backbone", "transformer", "heads"] {
        assert!(j["stages_ms"][stage].as_f64().unwrap() >= 0.0, "{out}");
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let st = setup();
    let m = s(&st.model).to_string();
    let track = |dir: &Path, extra: &[&str], needles: &[&str]| {
        let mut args = vec!["--model", m.as_str(), "--frames", s(dir), "--device", "cpu"];
        args.extend_from_slice(extra);
        fails(&args, needles);
    };
    // A sequence of `n` frames with `text` as its ground truth.
    let with_gt = |name: &str, n: u32, text: &str| {
        let seq = sequence(&st.path(name), ".", n, "png", None);
        std::fs::write(seq.join("groundtruth.txt"), text).unwrap();
        seq
    };
    // A missing folder.
    track(&st.path("nowhere"), &[], &["nowhere", "no such folder"]);
    // A folder without frames.
    std::fs::create_dir_all(st.path("empty")).unwrap();
    track(&st.path("empty"), &[], &["empty", "no frames"]);

    // Ground-truth lines: a non-number, too few fields, NaN or a non-positive size first.
    for (i, (line, needle)) in [
        ("40,30,abc,24", "'abc' is not a number"),
        ("40,30,30", "expected 4 numbers"),
        ("nan,30,30,24", "initial box"),
        ("40,30,0,24", "initial box"),
        ("40,30,-3,24", "initial box"),
    ]
    .into_iter()
    .enumerate()
    {
        let seq = with_gt(&format!("gt{i}"), 2, &format!("{line}\n40,30,30,24\n"));
        track(&seq, &[], &["groundtruth.txt:1", needle]);
    }
    // A bad later line names its line.
    let seq = with_gt("gt_late", 3, "40,30,30,24\n43,30,30,24\n1;2;3;4\n");
    track(&seq, &[], &["groundtruth.txt:3"]);
    // More boxes than frames.
    let seq = with_gt("gt_long", 2, "40,30,30,24\n40,30,30,24\n40,30,30,24\n");
    track(&seq, &[], &["3 boxes for 2 frames"]);
    // No ground truth and no --init.
    let seq = sequence(&st.path("no_gt"), ".", 2, "png", None);
    track(&seq, &[], &["groundtruth.txt", "--init"]);
    // --trace times a GPU engine's stages; the CPU reference has none to give.
    let trace = st.path("trace.json");
    track(
        &with_gt("traced", 2, "40,30,30,24\n"),
        &["--trace", s(&trace)],
        &["--trace", "needs a GPU engine"],
    );
    assert!(!trace.exists());
    // --ops times the step's operations: not with --frames, nor on the CPU reference.
    track(
        &with_gt("ops", 2, "40,30,30,24\n"),
        &["--ops"],
        &["--ops", "not to --frames"],
    );
    fails(
        &["--model", &m, "--device", "cpu", "--iters", "1", "--ops"],
        &["--ops", "needs a GPU engine"],
    );
    // ... nor on the transformer alone (the built-in model), which it would otherwise ignore.
    fails(&["--iters", "1", "--ops"], &["--ops", "whole tracker"]);
    // A box outside the image (from --init and from groundtruth.txt).
    track(&seq, &["--init", "500,30,30,24"], &["--init", "outside"]);
    track(&seq, &["--init", "40,30,30"], &["--init"]);
    let seq = with_gt("outside", 2, "-100,-100,20,20\n");
    track(&seq, &[], &["groundtruth.txt:1", "outside"]);

    // A corrupt frame, named.
    let seq = plain_sequence(&st.path("corrupt"), 3, "jpg");
    std::fs::write(
        seq.join("00000002.jpg"),
        b"\xff\xd8\xff\xe0 not really a jpeg",
    )
    .unwrap();
    track(&seq, &[], &["00000002.jpg", "decode"]);
    // Frames of different sizes.
    let seq = plain_sequence(&st.path("sizes"), 3, "png");
    frame(120, 100, 40, 30)
        .save(seq.join("00000003.png"))
        .unwrap();
    track(&seq, &[], &["00000003.png", "120x100", "160x120"]);

    // A transformer-only model asked to track.
    let golden = attnrt::model::golden::golden_dir().unwrap();
    let transformer = golden.join("tiny_s1.weights.safetensors");
    let seq = plain_sequence(&st.path("ok"), 2, "png");
    fails(
        &["--model", s(&transformer), "--frames", s(&seq)],
        &["holds only a transformer", "convert_checkpoint.py"],
    );
    // Flags that need others.
    fails(&["--frames", s(&seq)], &["--frames", "--model"]);
    fails(&["--boxes", "x.txt"], &["--boxes", "--frames"]);
    fails(
        &[
            "--model",
            &m,
            "--frames",
            s(&seq),
            "--frames",
            s(&st.path("no_gt")),
            "--init",
            "1,1,20,20",
        ],
        &["--init", "2 sequences"],
    );
    fails(
        &["--model", &m, "--frames", s(&seq), "--device", "cuda:99"],
        &["no usable GPU"],
    );
    fails(
        &[
            "--model",
            &m,
            "--frames",
            s(&seq),
            "--device",
            "cpu",
            "--precision",
            "bf16",
        ],
        &["bf16"],
    );
    fails(
        &["--model", &m, "--frames", s(&seq), "--update-interval", "0"],
        &["--update-interval"],
    );
    fails(
        &["--model", &m, "--frames", s(&seq), "--frames", s(&seq)],
        &["two sequences are named 'ok'"],
    );
    let no_gt = st.path("no_gt");
    fails(
        &[
            "--model",
            &m,
            "--frames",
            s(&no_gt),
            "--plot",
            s(&st.path("p.svg")),
            "--init",
            "40,30,30,24",
        ],
        &["--plot", "nothing to plot"],
    );
}
