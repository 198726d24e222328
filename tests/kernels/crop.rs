//! `kernels/crop.cu` against `crop::cpu` (the tracker's crop, OpenCV's fixed-point resize):
//! bit for bit, on the GPU and on the host emulator (`scripts/emulator/crop.cpp`), over
//! random frames and windows that exercise every resize path (copy, exact 2x area,
//! bilinear up and down, taps on exact pixels) and windows partly outside the frame on every
//! side.

use std::io::Write;
use std::process::{Command, Stdio};

use attnrt::gpu::{self, testing::gpu_or_skip};
use attnrt::kernels::crop::cpu::{Crop, CropWindow, crop_resize};
use attnrt::kernels::crop::{CropExtras, CropKernels, DeviceWindow};
use half::bf16;
use rand::Rng;

use crate::rng;

/// One case: a frame, a window in it and the output side.
struct Case {
    height: usize,
    width: usize,
    frame: Vec<u8>,
    window: CropWindow,
    output: usize,
}

/// The window of side `size` at `(x1, y1)` as the tracker computes its padding.
fn window(size: usize, x1: i64, y1: i64, width: usize, height: usize) -> CropWindow {
    let (x2, y2) = (x1 + size as i64, y1 + size as i64);
    CropWindow {
        size,
        x1,
        y1,
        x1_pad: (-x1).max(0) as usize,
        x2_pad: (x2 - width as i64 + 1).max(0) as usize,
        y1_pad: (-y1).max(0) as usize,
        y2_pad: (y2 - height as i64 + 1).max(0) as usize,
    }
}

/// Random frames and windows; `small` keeps them emulator-sized.
fn cases(seed: u64, small: bool) -> Vec<Case> {
    let mut rng = rng(seed);
    let outputs: &[usize] = if small {
        &[32, 40, 64]
    } else {
        &[128, 384, 96]
    };
    let mut cases = Vec::new();
    for (i, &output) in outputs.iter().cycle().take(15).enumerate() {
        let (height, width) = if small {
            (rng.random_range(30..90), rng.random_range(30..120))
        } else {
            (rng.random_range(200..500), rng.random_range(200..700))
        };
        let frame: Vec<u8> = (0..height * width * 3).map(|_| rng.random()).collect();
        // Every resize path: a copy, the exact 2x area reduction, up and down bilinear, and
        // 3x down, where every tap lands on a pixel (weight 0 on its neighbour: the mask must
        // not count the neighbour).
        let size = match i % 5 {
            0 => output,
            1 => 2 * output,
            2 => rng.random_range(output / 3..output),
            3 => rng.random_range(output + 1..3 * output),
            _ => 3 * output,
        };
        // Corners that put the window partly outside on each side, or inside.
        let (x1, y1) = loop {
            let x1 = rng.random_range(-(size as i64) / 2..width as i64 - size as i64 / 4);
            let y1 = rng.random_range(-(size as i64) / 2..height as i64 - size as i64 / 4);
            if window(size, x1, y1, width, height).fits(width, height) {
                break (x1, y1);
            }
        };
        cases.push(Case {
            height,
            width,
            window: window(size, x1, y1, width, height),
            frame,
            output,
        });
    }
    cases
}

fn reference(c: &Case) -> Crop {
    crop_resize(&c.frame, c.height, c.width, &c.window, c.output)
}

fn bf16_bits(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect()
}

fn f32_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn check(what: &str, c: &Case, pixels: &[u8], mask: &[u8], f32s: &[f32], bf16s: &[u16]) {
    let want = reference(c);
    let w = &c.window;
    let label = format!(
        "{what}: {}x{} frame, window {} at ({}, {}) -> {}",
        c.width, c.height, w.size, w.x1, w.y1, c.output
    );
    assert_eq!(pixels, want.pixels.as_slice(), "{label}: pixels");
    assert_eq!(mask, want.mask.as_slice(), "{label}: mask");
    let normal = want.normalised();
    assert_eq!(f32_bits(f32s), f32_bits(&normal), "{label}: f32");
    assert_eq!(bf16s, bf16_bits(&normal).as_slice(), "{label}: bf16");
}

#[test]
fn crop_matches_the_cpu_reference_bit_for_bit() {
    let Some(gpu) = gpu_or_skip("crop_matches_the_cpu_reference_bit_for_bit") else {
        return;
    };
    let s = gpu.stream();
    let kernels = CropKernels::load(&gpu).unwrap();
    let mut win = DeviceWindow::new(s).unwrap();
    for c in cases(61, false) {
        let n = c.output * c.output;
        let frame = gpu::upload(s, &c.frame).unwrap();
        win.write(s, &c.window, c.width, c.height).unwrap();
        let mut out = crate::poisoned(&gpu, n * 3);
        let mut outb = gpu::upload(s, &vec![bf16::NAN; n * 3]).unwrap();
        let mut pixels = gpu::upload(s, &vec![0xABu8; n * 3]).unwrap();
        let mut mask = gpu::upload(s, &vec![0xABu8; n]).unwrap();
        let extras = CropExtras {
            pixels: Some(pixels.as_view_mut()),
            mask: Some(mask.as_view_mut()),
        };
        let size = (c.height, c.width);
        kernels
            .run(s, &frame, size, &win, c.output, &mut out, extras)
            .unwrap();
        kernels
            .run(
                s,
                &frame,
                size,
                &win,
                c.output,
                &mut outb,
                CropExtras::default(),
            )
            .unwrap();
        let outb: Vec<u16> = gpu::download(s, &outb)
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect();
        check(
            "GPU",
            &c,
            &gpu::download(s, &pixels).unwrap(),
            &gpu::download(s, &mask).unwrap(),
            &crate::down(&gpu, &out),
            &outb,
        );
    }
    // A window written for another frame size is refused.
    let e = kernels.run(
        s,
        &gpu::upload(s, &[0u8; 30]).unwrap(),
        (2, 5),
        &win,
        8,
        &mut crate::poisoned(&gpu, 192),
        CropExtras::default(),
    );
    assert!(e.unwrap_err().to_string().contains("frame"));
}

/// Builds `scripts/emulator/crop.cpp` with g++ (None without g++). The source is looked up in
/// the checkout the test was built in, else in the current directory: a staged test binary
/// runs from the repository root of another machine's copy of the tree.
fn build_emulator() -> Option<std::path::PathBuf> {
    let source = "scripts/emulator/crop.cpp";
    let built_in = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = if built_in.join(source).exists() {
        built_in
    } else {
        std::path::Path::new(".")
    };
    let out = std::env::temp_dir().join(format!("attnrt-crop-emulator-{}", std::process::id()));
    let status = Command::new("g++")
        .args(["-std=c++17", "-O1"])
        .arg(format!("-I{}", root.join("kernels").display()))
        .arg("-o")
        .arg(&out)
        .arg(root.join(source))
        .status()
        .ok()?;
    assert!(status.success(), "g++ failed on scripts/emulator/crop.cpp");
    Some(out)
}

#[test]
fn crop_kernel_on_the_host_emulator_matches_the_cpu() {
    let Some(exe) = build_emulator() else {
        println!("skipped: crop_kernel_on_the_host_emulator_matches_the_cpu needs g++");
        return;
    };
    let cases = cases(62, true);
    let mut input = Vec::new();
    input.extend((cases.len() as i32).to_le_bytes());
    for c in &cases {
        let w = &c.window;
        let words = [
            c.height as i64,
            c.width as i64,
            c.output as i64,
            w.size as i64,
            w.x1,
            w.y1,
            w.x1_pad as i64,
            w.x2_pad as i64,
            w.y1_pad as i64,
            w.y2_pad as i64,
        ];
        for v in words {
            input.extend((v as i32).to_le_bytes());
        }
        input.extend(&c.frame);
    }
    let mut child = Command::new(&exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Fed from another thread: the emulator writes each case's output before reading the
    // next case, so one thread writing everything first would fill both pipes and wait.
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    let _ = std::fs::remove_file(&exe);
    assert!(out.status.success(), "the emulator failed");
    let mut rest = out.stdout.as_slice();
    let mut take = |n: usize| {
        let (a, b) = rest.split_at(n);
        rest = b;
        a
    };
    for c in &cases {
        let n = c.output * c.output;
        let pixels = take(n * 3).to_vec();
        let mask = take(n).to_vec();
        let f32s: Vec<f32> = take(n * 12)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let bf16s: Vec<u16> = take(n * 6)
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes(b.try_into().unwrap()))
            .collect();
        check("emulator", c, &pixels, &mask, &f32s, &bf16s);
    }
    assert!(rest.is_empty(), "the emulator wrote more than expected");
    println!("emulator: {} crops bit for bit", cases.len());
}
