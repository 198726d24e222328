//! Compiles every `kernels/*.cu` into a fatbin with nvcc and writes `$OUT_DIR/kernels.rs`,
//! the registry that embeds them with `include_bytes!`.
//!
//! Without nvcc the crate still builds: the registry then has no images, a cargo warning says
//! so, and GPU use returns an error naming the fix. The `require-kernels` feature turns a
//! missing nvcc into a build error. When no nvcc is found but the machine has an NVIDIA driver
//! (libcuda loads), the build first runs `scripts/setup-cuda.sh` itself (the pinned nvcc and
//! cuDNN, from PyPI, into `.cuda/`), with a cargo warning, so a fresh GPU machine gets the GPU
//! path from a plain `cargo build`; `ATTNRT_OFFLINE=1` skips that (the CPU fallback, or a
//! machine without network).
//!
//! nvcc is looked for in this order: `NVCC`, `CUDA_HOME`/`CUDA_PATH` (`bin/nvcc`), `PATH`, then
//! the project-local toolchain that `scripts/setup-cuda.sh` installs (recorded in
//! `.cuda/nvcc-path`). `ATTNRT_CUDA_ARCHS` overrides the targets: a comma-separated list of
//! `sm_XX` (SASS) and `compute_XX` (PTX) entries.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// SASS for Ampere, Ada and Hopper, plus PTX for compute_90 so newer GPUs can JIT.
const DEFAULT_ARCHS: &str = "sm_80,sm_86,sm_89,sm_90,compute_90";
const LOCAL_NVCC_RECORD: &str = ".cuda/nvcc-path";
/// `ATTNRT_OFFLINE=1`: never run `scripts/setup-cuda.sh` from the build.
const OFFLINE: &str = "ATTNRT_OFFLINE";

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernel_dir = root.join("kernels");

    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "ATTNRT_CUDA_ARCHS",
        OFFLINE,
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed={LOCAL_NVCC_RECORD}");

    let mut sources = Vec::new();
    let mut headers = Vec::new();
    for entry in fs::read_dir(&kernel_dir).expect("kernels/ directory") {
        let path = entry.expect("kernels/ entry").path();
        println!("cargo:rerun-if-changed={}", path.display());
        match path.extension().and_then(|e| e.to_str()) {
            Some("cu") => sources.push(path),
            Some("cuh") | Some("h") => headers.push(path),
            _ => {}
        }
    }
    sources.sort();

    let archs = env::var("ATTNRT_CUDA_ARCHS").unwrap_or_else(|_| DEFAULT_ARCHS.to_string());
    let gencode = gencode_flags(&archs);
    let require = env::var_os("CARGO_FEATURE_REQUIRE_KERNELS").is_some();

    let nvcc = find_nvcc(&root).or_else(|| install_nvcc(&root));
    let images: Vec<Option<PathBuf>> = match &nvcc {
        Some(nvcc) => compile_all(nvcc, &sources, &kernel_dir, &out_dir, &gencode),
        None => {
            let msg = "nvcc not found (NVCC, CUDA_HOME, CUDA_PATH, PATH, .cuda/): CUDA kernels \
                       were not compiled and GPU use will fail; run scripts/setup-cuda.sh";
            if require {
                panic!("feature require-kernels: {msg}");
            }
            println!("cargo:warning={msg}");
            vec![None; sources.len()]
        }
    };
    write_registry(&out_dir, &sources, &images, &archs, nvcc.as_deref());
}

fn gencode_flags(archs: &str) -> Vec<String> {
    let mut flags = Vec::new();
    for arch in archs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        if let Some(num) = arch.strip_prefix("sm_") {
            flags.push(format!("-gencode=arch=compute_{num},code=sm_{num}"));
        } else if let Some(num) = arch.strip_prefix("compute_") {
            flags.push(format!("-gencode=arch=compute_{num},code=compute_{num}"));
        } else {
            panic!("ATTNRT_CUDA_ARCHS: '{arch}' is neither sm_XX nor compute_XX (in '{archs}')");
        }
    }
    assert!(
        !flags.is_empty(),
        "ATTNRT_CUDA_ARCHS: no architectures in '{archs}'"
    );
    flags
}

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(var) {
            let p = PathBuf::from(home).join("bin").join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let record = fs::read_to_string(root.join(LOCAL_NVCC_RECORD)).ok()?;
    let p = PathBuf::from(record.trim());
    p.is_file().then_some(p)
}

/// Runs `scripts/setup-cuda.sh` when this machine has an NVIDIA driver and the build may go
/// online, and returns the nvcc it installed; `None` (with a warning saying why) otherwise.
fn install_nvcc(root: &Path) -> Option<PathBuf> {
    if env::var(OFFLINE).is_ok_and(|v| v == "1") || !nvidia_driver_present() {
        return None;
    }
    let script = root.join("scripts").join("setup-cuda.sh");
    println!(
        "cargo:warning=no nvcc found, but this machine has an NVIDIA driver: running {} \
         (installs the pinned nvcc 13.0 and cuDNN from PyPI into .cuda/, once; {OFFLINE}=1 \
         skips this)",
        script.display()
    );
    match Command::new("bash").arg(&script).output() {
        Ok(out) if out.status.success() => find_nvcc(root),
        Ok(out) => {
            let tail = |b: &[u8]| {
                let text = String::from_utf8_lossy(b);
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(5)..].join(" | ")
            };
            println!(
                "cargo:warning={} failed ({}): {} {}",
                script.display(),
                out.status,
                tail(&out.stderr),
                tail(&out.stdout)
            );
            None
        }
        Err(e) => {
            println!("cargo:warning=could not run {}: {e}", script.display());
            None
        }
    }
}

/// Whether the CUDA driver library loads here, as it must for any GPU use.
fn nvidia_driver_present() -> bool {
    // SAFETY: loading libcuda runs no code with preconditions; nothing is called in it.
    unsafe { libloading::Library::new("libcuda.so.1") }.is_ok()
}

/// Compiles the sources in parallel, one nvcc process per file.
fn compile_all(
    nvcc: &Path,
    sources: &[PathBuf],
    include: &Path,
    out_dir: &Path,
    gencode: &[String],
) -> Vec<Option<PathBuf>> {
    std::thread::scope(|s| {
        let jobs: Vec<_> = sources
            .iter()
            .map(|src| s.spawn(move || compile_one(nvcc, src, include, out_dir, gencode)))
            .collect();
        jobs.into_iter()
            .map(|j| Some(j.join().expect("nvcc thread")))
            .collect()
    })
}

fn compile_one(
    nvcc: &Path,
    src: &Path,
    include: &Path,
    out_dir: &Path,
    gencode: &[String],
) -> PathBuf {
    let stem = src.file_stem().unwrap().to_str().unwrap();
    let out = out_dir.join(format!("{stem}.fatbin"));
    let mut cmd = Command::new(nvcc);
    cmd.arg("-fatbin")
        .arg("-O3")
        .arg("-lineinfo")
        .arg("-std=c++17")
        .arg("--threads=0")
        .arg(format!("-I{}", include.display()))
        .args(gencode)
        .arg("-o")
        .arg(&out)
        .arg(src);
    let shown = format!("{cmd:?}");
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run nvcc: {e}\ncommand: {shown}"));
    if !output.status.success() {
        panic!(
            "nvcc failed on {} ({})\ncommand: {shown}\nstderr:\n{}\nstdout:\n{}",
            src.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    out
}

/// Writes the registry: one `KernelModule` variant per `.cu` file, with its embedded image
/// when it was compiled.
fn write_registry(
    out_dir: &Path,
    sources: &[PathBuf],
    images: &[Option<PathBuf>],
    archs: &str,
    nvcc: Option<&Path>,
) {
    let mut code = String::new();
    let names: Vec<String> = sources
        .iter()
        .map(|s| s.file_stem().unwrap().to_str().unwrap().to_string())
        .collect();
    let variant = |name: &str| -> String {
        name.split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect()
    };
    writeln!(code, "/// One compiled module per `kernels/*.cu` file.").unwrap();
    writeln!(
        code,
        "#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]"
    )
    .unwrap();
    writeln!(code, "pub enum KernelModule {{").unwrap();
    for n in &names {
        writeln!(code, "    /// `kernels/{n}.cu`\n    {},", variant(n)).unwrap();
    }
    writeln!(code, "}}\n").unwrap();
    writeln!(code, "impl KernelModule {{").unwrap();
    writeln!(code, "    pub const ALL: &'static [KernelModule] = &[").unwrap();
    for n in &names {
        writeln!(code, "        KernelModule::{},", variant(n)).unwrap();
    }
    writeln!(code, "    ];\n").unwrap();
    writeln!(
        code,
        "    /// The source file's stem, e.g. `smoke` for `kernels/smoke.cu`."
    )
    .unwrap();
    writeln!(
        code,
        "    pub fn name(self) -> &'static str {{\n        match self {{"
    )
    .unwrap();
    for n in &names {
        writeln!(code, "            KernelModule::{} => {n:?},", variant(n)).unwrap();
    }
    writeln!(code, "        }}\n    }}\n").unwrap();
    writeln!(
        code,
        "    /// The embedded fatbin, or `None` when this build had no nvcc."
    )
    .unwrap();
    writeln!(
        code,
        "    pub fn image(self) -> Option<&'static [u8]> {{\n        match self {{"
    )
    .unwrap();
    for (n, img) in names.iter().zip(images) {
        match img {
            Some(p) => writeln!(
                code,
                "            KernelModule::{} => Some(include_bytes!({:?})),",
                variant(n),
                p.display().to_string()
            ),
            None => writeln!(code, "            KernelModule::{} => None,", variant(n)),
        }
        .unwrap();
    }
    writeln!(code, "        }}\n    }}\n}}\n").unwrap();
    writeln!(
        code,
        "/// The targets the fatbins hold (`ATTNRT_CUDA_ARCHS` at build time)."
    )
    .unwrap();
    writeln!(code, "pub const CUDA_ARCHS: &str = {archs:?};").unwrap();
    let nvcc_str = nvcc.map(|p| p.display().to_string());
    writeln!(
        code,
        "/// The nvcc that compiled the kernels, or `None` when none was found."
    )
    .unwrap();
    writeln!(code, "pub const NVCC: Option<&str> = {nvcc_str:?};").unwrap();
    fs::write(out_dir.join("kernels.rs"), code).expect("write kernels.rs");
}
