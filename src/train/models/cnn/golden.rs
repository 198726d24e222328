//! One training step checked against a train-step golden file (PyTorch in f64, with the f32
//! error of PyTorch's own f32 run per quantity family): the model and weights from the file,
//! forward in train mode, cross-entropy, backward, and the running statistics' update, then
//! one [`Family`] line per family of compared quantities. The step itself is a function
//! ([`check_with`]): the CPU's ([`cpu_step`]) or a GPU's (`train::gpu::cnn::golden_step`).

use std::path::Path;

use crate::base::{Precision, TensorFile};
use crate::train::data::ImageShape;
use crate::{Error, Result};

use super::{Arch, CnnConfig, Graph, build, cpu};

/// The file's `format`.
pub const FORMAT: &str = "attnrt-train-step-golden";

/// One family's result: the error (see [`Family::what`]), and the tolerance, max(1e-4, 4x
/// PyTorch's own f32 error).
///
/// The gradients' families of a step that ran elsewhere than on the CPU (a GPU) also carry
/// `along`: the same error against the CPU's step along that run's own forward values
/// ([`cpu::forward_backward_along`]), and pass on either. A ReLU input within rounding of zero
/// makes the gradients of these models jump: PyTorch's own f32 step, or even its f64 one,
/// with the weights moved by 1e-7 misses the file's gradients by 1.5e-3..3.6e-3 on
/// `shufflenet_s1` (docs/TRAINING.md), so the file's tolerance holds for the gradients only
/// when no such input flips; along the run's own forward it holds whatever flips.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub error: f64,
    pub tolerance: f64,
    /// How the error is measured, and where it is worst.
    pub what: String,
    pub along: Option<f64>,
}

impl Family {
    pub fn passed(&self) -> bool {
        self.error <= self.tolerance || self.along.is_some_and(|e| e <= self.tolerance)
    }
}

/// A checked step: the model, the batch, and the families in the file's order.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub model: String,
    pub batch: usize,
    pub size: usize,
    pub families: Vec<Family>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.families.iter().all(Family::passed)
    }
}

/// `||a - b|| / ||b||` in f64 (0 when both are zero).
fn rel(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (f64::from(x) - f64::from(y)).powi(2);
        den += f64::from(y).powi(2);
    }
    if num == 0.0 { 0.0 } else { (num / den).sqrt() }
}

/// What a step starts from: the file's model (dropout off), weights, running statistics and
/// batch (`images`: `n x (3, s, s)`, channel-major).
pub struct StepInput<'a> {
    pub graph: &'a Graph,
    pub params: &'a [f32],
    pub buffers: &'a [f32],
    pub images: &'a [f32],
    pub labels: &'a [u32],
}

/// What a step gives: the logits (`n x classes`), the mean cross-entropy, the parameters'
/// gradient and the running statistics after their update.
pub struct StepOutput {
    pub logits: Vec<f32>,
    pub loss: f64,
    pub grads: Vec<f32>,
    pub buffers: Vec<f32>,
    /// The forward pass's values by value index (f32, NHWC; `None` where the run keeps none),
    /// for a step that did not run on the CPU: what the gradients are also checked along.
    pub values: Option<Vec<Option<Vec<f32>>>>,
}

/// The step on the CPU (the reference walker, f32).
pub fn cpu_step(input: &StepInput<'_>) -> Result<StepOutput> {
    let mut grads = vec![0.0f32; input.params.len()];
    let scale = 1.0 / input.labels.len() as f32;
    let pass = cpu::forward_backward(
        input.graph,
        Precision::F32,
        input.params,
        input.images,
        input.labels,
        scale,
        0,
        &mut grads,
    )?;
    let mut buffers = input.buffers.to_vec();
    input
        .graph
        .update_buffers(&mut buffers, &[(1.0, &pass.norms)])?;
    Ok(StepOutput {
        logits: pass.logits,
        loss: pass.stats.loss,
        grads,
        buffers,
        values: None,
    })
}

/// Runs the step of `path` on the CPU and compares.
pub fn check(path: &Path) -> Result<Report> {
    check_with(path, cpu_step)
}

/// Runs the step of `path` with `step` and compares.
pub fn check_with(
    path: &Path,
    step: impl FnOnce(&StepInput<'_>) -> Result<StepOutput>,
) -> Result<Report> {
    let file = TensorFile::open(path)?;
    let meta = |key: &str| {
        file.meta_value(key)
            .ok_or_else(|| Error::invalid(file.meta_context(key), "missing"))
    };
    let format = meta("format")?;
    if format != FORMAT {
        return Err(Error::invalid(
            file.meta_context("format"),
            format!("'{format}' is not a train-step golden file ({FORMAT})"),
        ));
    }
    let model = meta("model")?;
    let arch = Arch::from_name(model).ok_or_else(|| {
        Error::invalid(
            file.meta_context("model"),
            format!(
                "'{model}' is not one of {}",
                Arch::ALL.map(Arch::name).join(", ")
            ),
        )
    })?;
    let classes: usize = meta("classes")?
        .parse()
        .map_err(|_| Error::invalid(file.meta_context("classes"), "not a count"))?;
    let errors: serde_json::Value = serde_json::from_str(meta("f32_vs_f64_max_rel_err")?)
        .map_err(|e| Error::invalid(file.meta_context("f32_vs_f64_max_rel_err"), e.to_string()))?;
    let tolerance = |family: &str| -> Result<f64> {
        let e = errors.get(family).and_then(|v| v.as_f64()).ok_or_else(|| {
            Error::invalid(
                file.meta_context("f32_vs_f64_max_rel_err"),
                format!("no figure for '{family}'"),
            )
        })?;
        Ok((4.0 * e).max(1e-4))
    };

    let images = file.f32("input.images")?;
    let [batch, channels, height, width] = images.shape[..] else {
        return Err(Error::invalid(
            file.context("input.images"),
            "expected (batch, 3, size, size)",
        ));
    };
    let (_, labels) = file.i64("input.labels")?;
    if labels.len() != batch || labels.iter().any(|&l| l < 0 || l as usize >= classes) {
        return Err(Error::invalid(
            file.context("input.labels"),
            format!("expected {batch} labels in 0..{classes}"),
        ));
    }
    let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    let image = ImageShape {
        channels,
        height,
        width,
    };
    let graph = build(
        CnnConfig {
            arch,
            classes,
            image,
        },
        &file.context("input.images"),
    )?
    .without_dropout();
    let (params, buffers) = graph.load(&file, "weights.")?;
    let StepOutput {
        logits: got_logits,
        loss: got_loss,
        grads,
        buffers,
        values,
    } = step(&StepInput {
        graph: &graph,
        params: &params,
        buffers: &buffers,
        images: &images.data,
        labels: &labels,
    })?;
    // The CPU's gradients along the run's forward values (see `Family`).
    let along = match values {
        Some(values) => {
            let mut want = vec![0.0f32; params.len()];
            let scale = 1.0 / batch as f32;
            let (x, l) = (&images.data, &labels);
            cpu::forward_backward_along(
                &graph,
                Precision::F32,
                &params,
                x,
                l,
                scale,
                0,
                &values,
                &mut want,
            )?;
            Some(want)
        }
        None => None,
    };

    let mut families = Vec::new();
    let logits = file.f32_shaped("expected.logits", &[batch, classes])?;
    families.push(Family {
        name: "logits",
        error: rel(&got_logits, &logits.data),
        tolerance: tolerance("logits")?,
        what: "relative Frobenius error".into(),
        along: None,
    });
    let loss = file.f32_shaped("expected.loss", &[1])?;
    families.push(Family {
        name: "loss",
        error: (got_loss - f64::from(loss.data[0])).abs() / f64::from(loss.data[0]).abs(),
        tolerance: tolerance("loss")?,
        what: format!("relative error (loss {got_loss:.6})"),
        along: None,
    });

    // Gradient norms: the largest absolute error over the largest norm.
    let norm = |g: &[f32]| g.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
    let norm_error =
        |want: &dyn Fn(&crate::train::models::Slot) -> Result<f64>| -> Result<(f64, String)> {
            let (mut worst, mut worst_name, mut largest) = (0.0f64, String::new(), 0.0f64);
            for s in &graph.layout.slots {
                let (want, got) = (want(s)?, norm(&grads[s.range()]));
                largest = largest.max(want);
                if (got - want).abs() > worst {
                    worst = (got - want).abs();
                    worst_name = s.name.clone();
                }
            }
            Ok((worst / largest, worst_name))
        };
    let (e, at) = norm_error(&|s| {
        let name = format!("expected.grad_norm.{}", s.name);
        Ok(f64::from(file.f32_shaped(&name, &[1])?.data[0]))
    })?;
    let along_norms = along
        .as_ref()
        .map(|a| norm_error(&|s| Ok(norm(&a[s.range()]))))
        .transpose()?;
    families.push(Family {
        name: "grad_norm",
        error: e,
        tolerance: tolerance("grad_norm")?,
        what: format!("largest absolute error over the largest norm (worst: {at})"),
        along: along_norms.map(|(e, _)| e),
    });

    let worst_of =
        |prefix: &str, values: &dyn Fn(&str) -> Option<Vec<f32>>| -> Result<(f64, String)> {
            let mut worst = (0.0f64, String::new());
            for name in file.names() {
                let Some(short) = name.strip_prefix(prefix) else {
                    continue;
                };
                let ours = values(short).ok_or_else(|| {
                    Error::invalid(file.context(&name), format!("{model} has no such tensor"))
                })?;
                let want = file.f32(&name)?;
                if want.data.len() != ours.len() {
                    return Err(Error::invalid(
                        file.context(&name),
                        format!("expected {} values, found {}", ours.len(), want.data.len()),
                    ));
                }
                let e = rel(&ours, &want.data);
                if e >= worst.0 {
                    worst = (e, short.to_string());
                }
            }
            Ok(worst)
        };
    let slot_of = |layout: &super::Layout, all: &[f32], name: &str| {
        layout
            .slots
            .iter()
            .find(|s| s.name == name)
            .map(|s| all[s.range()].to_vec())
    };
    let (e, at) = worst_of("expected.grad.", &|n| slot_of(&graph.layout, &grads, n))?;
    // Along the run's forward: the same tensors against the CPU's gradients.
    let along_grads = along.as_ref().map(|a| {
        file.names()
            .iter()
            .filter_map(|name| name.strip_prefix("expected.grad."))
            .filter_map(|n| {
                let got = slot_of(&graph.layout, &grads, n)?;
                Some(rel(&got, &slot_of(&graph.layout, a, n)?))
            })
            .fold(0.0f64, f64::max)
    });
    families.push(Family {
        name: "grad",
        error: e,
        tolerance: tolerance("grad")?,
        what: format!("largest relative Frobenius error of a full gradient (worst: {at})"),
        along: along_grads,
    });
    let buffer_layout = graph.buffers();
    let (e, at) = worst_of("expected.buffer.", &|n| {
        slot_of(&buffer_layout, &buffers, n)
    })?;
    families.push(Family {
        name: "buffer",
        error: e,
        tolerance: tolerance("buffer")?,
        what: format!("largest relative Frobenius error of a running statistic (worst: {at})"),
        along: None,
    });
    Ok(Report {
        model: model.to_string(),
        batch,
        size: height,
        families,
    })
}
