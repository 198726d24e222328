//! Optimizers: SGD with momentum and AdamW, with the update rule written once here for the
//! CPU and mirrored exactly by the `sgd_f32` / `adamw_f32` kernels in `kernels/train_ops.cu`.

use std::fmt;
use std::str::FromStr;

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
        match *self {
            Optimizer::Sgd {
                lr,
                momentum,
                weight_decay,
            } => {
                let v = &mut state[0];
                for i in 0..params.len() {
                    let g = grads[i] + weight_decay * params[i];
                    v[i] = momentum * v[i] + g;
                    params[i] -= lr * v[i];
                }
            }
            Optimizer::AdamW {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                let (c1, c2) = self.bias_corrections(t);
                let (m, rest) = state.split_at_mut(1);
                let (m, v) = (&mut m[0], &mut rest[0]);
                for i in 0..params.len() {
                    let g = grads[i];
                    m[i] = beta1 * m[i] + (1.0 - beta1) * g;
                    v[i] = beta2 * v[i] + (1.0 - beta2) * g * g;
                    let update = (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
                    params[i] -= lr * (weight_decay * params[i] + update);
                }
            }
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
