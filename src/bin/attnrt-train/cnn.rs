//! `--check GOLDEN`: one CNN training step against a train-step golden file, one line per
//! quantity family; `--describe MODEL`: a CNN's layers, parameters and FLOPs.

use std::path::Path;
use std::process::ExitCode;

use attnrt::base::{DeviceList, Devices};
use attnrt::train::data::ImageShape;
use attnrt::train::gpu::cnn::golden_step;
use attnrt::train::models::cnn::{Arch, CnnConfig, build, golden};
use attnrt::{Error, Result};

/// Runs the check on the CPU, or on the one GPU `--gpus` names (`all` keeps the CPU, the
/// reference); exit 1 when a family is over its tolerance.
pub fn check(path: &Path, gpus: &DeviceList) -> Result<ExitCode> {
    let gpu = match gpus {
        DeviceList::Named(Devices::Gpus(list)) => match list[..] {
            [one] => Some(one),
            _ => {
                return Err(Error::invalid(
                    "--gpus",
                    format!("--check runs on one GPU, not {}", list.len()),
                ));
            }
        },
        _ => None,
    };
    let started = std::time::Instant::now();
    let (report, device) = match gpu {
        Some(ordinal) => (
            golden::check_with(path, |input| golden_step(ordinal, input))?,
            format!("GPU {ordinal}"),
        ),
        None => (golden::check(path)?, "the CPU".to_string()),
    };
    println!(
        "{}: {} on {device}, batch {} of {}x{}, one step in {:.2} s",
        path.display(),
        report.model,
        report.batch,
        report.size,
        report.size,
        started.elapsed().as_secs_f64()
    );
    for f in &report.families {
        let verdict = match (f.error <= f.tolerance, f.passed()) {
            (true, _) => "ok",
            (false, true) => "ok along its forward",
            (false, false) => "OVER",
        };
        println!(
            "{:<10} error {:.3e}  tolerance {:.3e}  {verdict}  ({})",
            f.name, f.error, f.tolerance, f.what
        );
        if let Some(e) = f.along {
            println!(
                "{:<10} error {e:.3e} against the CPU's step along this run's forward values \
                 (ReLU inputs within rounding of zero may flip between two f32 runs; docs/TRAINING.md)",
                ""
            );
        }
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
