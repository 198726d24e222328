//! Optimizers: SGD with momentum and AdamW, their hyper-parameters and bias corrections. The
//! update rules are the optimizer op's ([`crate::kernels::optimizer`]): the `sgd_f32` /
//! `adamw_f32` kernels and their CPU reference, which [`Optimizer::step_cpu`] runs.

use std::fmt;
use std::str::FromStr;

use crate::kernels::optimizer::{AdamW, Sgd, cpu};

/// One step of an [`Optimizer`], as `crate::kernels::optimizer` takes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Step {
    Sgd(Sgd),
    AdamW(AdamW),
}

/// An optimizer and its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    /// `v = momentum * v + (g + wd * p); p -= lr * v`.
    Sgd {
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    },
    /// Decoupled weight decay (Loshchilov & Hutter): `p -= lr * wd * p`, then the Adam step
    /// with bias correction.
    AdamW {
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
    },
}

impl Optimizer {
    /// The defaults for `sgd` and `adamw` at learning rate `lr`.
    pub fn sgd(lr: f32) -> Optimizer {
        Optimizer::Sgd {
            lr,
            momentum: 0.9,
            weight_decay: 0.0,
        }
    }

    pub fn adamw(lr: f32) -> Optimizer {
        Optimizer::AdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }

    /// State vectors per parameter: SGD's velocity, AdamW's two moments.
    pub fn state_slots(&self) -> usize {
        match self {
            Optimizer::Sgd { .. } => 1,
            Optimizer::AdamW { .. } => 2,
        }
    }

    /// Step `t` (counted from 1) on the CPU. `state` holds [`state_slots`](Self::state_slots)
    /// vectors, each as long as `params`.
    pub fn step_cpu(&self, t: u64, params: &mut [f32], grads: &[f32], state: &mut [Vec<f32>]) {
        match self.at_step(t) {
            Step::Sgd(s) => cpu::sgd(params, grads, &mut state[0], s),
            Step::AdamW(s) => {
                let (m, v) = state.split_at_mut(1);
                cpu::adamw(params, grads, (&mut m[0], &mut v[0]), s);
            }
        }
    }

    /// Step `t`'s numbers as the optimizer op takes them, on the GPU as on the CPU.
    pub fn at_step(&self, t: u64) -> Step {
        let (c1, c2) = self.bias_corrections(t);
        match *self {
            Optimizer::Sgd {
                lr,
                momentum,
                weight_decay,
            } => Step::Sgd(Sgd {
                lr,
                momentum,
                weight_decay,
            }),
            Optimizer::AdamW {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => Step::AdamW(AdamW {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                c1,
                c2,
            }),
        }
    }

    /// AdamW's `1 - beta^t` for both moments (1 for SGD), computed on the host in f64 so the
    /// CPU and GPU use the same values.
    pub fn bias_corrections(&self, t: u64) -> (f32, f32) {
        match *self {
            Optimizer::Sgd { .. } => (1.0, 1.0),
            Optimizer::AdamW { beta1, beta2, .. } => {
                let t = t.min(i32::MAX as u64) as i32;
                (
                    (1.0 - f64::from(beta1).powi(t)) as f32,
                    (1.0 - f64::from(beta2).powi(t)) as f32,
                )
            }
        }
    }
}

impl fmt::Display for Optimizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Optimizer::Sgd {
                lr,
                momentum,
                weight_decay,
            } => write!(
                f,
                "sgd(lr={lr},momentum={momentum},weight_decay={weight_decay})"
            ),
            Optimizer::AdamW {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => write!(
                f,
                "adamw(lr={lr},beta1={beta1},beta2={beta2},eps={eps},weight_decay={weight_decay})"
            ),
        }
    }
}

/// The optimizer's name on the command line and in job files: `sgd` or `adamw`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    AdamW,
}

impl FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adamw" => Ok(OptimizerKind::AdamW),
            _ => Err(format!("'{s}' is not one of sgd, adamw")),
        }
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::AdamW => "adamw",
        })
    }
}

impl OptimizerKind {
    pub fn with_lr(self, lr: f32) -> Optimizer {
        match self {
            OptimizerKind::Sgd => Optimizer::sgd(lr),
            OptimizerKind::AdamW => Optimizer::adamw(lr),
        }
    }
}
