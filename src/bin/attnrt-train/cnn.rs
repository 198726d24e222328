//! `--check GOLDEN`: one CNN training step against a train-step golden file, one line per
//! quantity family; `--describe MODEL`: a CNN's layers, parameters and FLOPs.

use std::path::Path;
use std::process::ExitCode;

use attnrt::base::{DeviceList, Devices};
use attnrt::train::data::ImageShape;
use attnrt::train::models::cnn::{Arch, CnnConfig, build, golden};
use attnrt::{Error, Result};

/// Runs the check on the CPU (`all` means the CPU here: the GPU path is not built yet);
/// exit 1 when a family is over its tolerance.
pub fn check(path: &Path, gpus: &DeviceList) -> Result<ExitCode> {
    if let DeviceList::Named(Devices::Gpus(_)) = gpus {
        return Err(Error::invalid(
            "--gpus",
            "the CNN GPU path is not built yet: check on the CPU (--gpus cpu)",
        ));
    }
    let started = std::time::Instant::now();
    let report = golden::check(path)?;
    println!(
        "{}: {} on the CPU, batch {} of {}x{}, one step in {:.2} s",
        path.display(),
        report.model,
        report.batch,
        report.size,
        report.size,
        started.elapsed().as_secs_f64()
    );
    for f in &report.families {
        println!(
            "{:<10} error {:.3e}  tolerance {:.3e}  {}  ({})",
            f.name,
            f.error,
            f.tolerance,
            if f.passed() { "ok" } else { "OVER" },
            f.what
        );
    }
    Ok(if report.passed() {
        println!("passed");
        ExitCode::SUCCESS
    } else {
        println!("failed");
        ExitCode::from(1)
    })
}

pub fn describe(model: &str, classes: usize, size: usize) -> Result<ExitCode> {
    let arch = Arch::from_name(model).ok_or_else(|| {
        Error::invalid(
            "--describe",
            format!(
                "'{model}' is not one of {}",
                Arch::ALL.map(Arch::name).join(", ")
            ),
        )
    })?;
    let image = ImageShape {
        channels: 3,
        height: size,
        width: size,
    };
    let graph = build(
        CnnConfig {
            arch,
            classes,
            image,
        },
        "--size/--classes",
    )?;
    println!("{model}, {classes} classes, {size}x{size} input");
    print!("{}", graph.describe());
    Ok(ExitCode::SUCCESS)
}
