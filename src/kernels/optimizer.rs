//! Launchers for `kernels/optimizer.cu`: one optimizer step over a flat parameter vector.
//! The step's numbers are [`Sgd`] and [`AdamW`], which the CPU reference ([`cpu`]) takes too.

pub mod cpu;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::KernelModule;
use super::launch::{Args, elementwise};
use crate::error::Result;
use crate::gpu::{Gpu, Kernel};

/// One SGD-with-momentum step: `g' = g + weight_decay * p`, `v = momentum * v + g'`,
/// `p -= lr * v`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

/// One AdamW step; `c1`, `c2` are the step's bias corrections `1 - beta^t`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub c1: f32,
    pub c2: f32,
}

/// `sgd_f32` and `adamw_f32`, loaded once.
#[derive(Debug, Clone)]
pub struct OptimizerKernels {
    sgd: Kernel,
    adamw: Kernel,
}

impl OptimizerKernels {
    pub fn load(gpu: &Gpu) -> Result<OptimizerKernels> {
        let k = |name| gpu.kernel(KernelModule::Optimizer, name);
        Ok(OptimizerKernels {
            sgd: k("sgd_f32")?,
            adamw: k("adamw_f32")?,
        })
    }

    /// One SGD step over all of `p`, with velocity `v`.
    pub fn sgd(
        &self,
        stream: &CudaStream,
        p: &mut impl DevicePtrMut<f32>,
        g: &impl DevicePtr<f32>,
        v: &mut impl DevicePtrMut<f32>,
        step: Sgd,
    ) -> Result<()> {
        let n = p.len();
        let args = Args::new(&self.sgd, stream)
            .output("p", p, n)?
            .input("g", g, n)?
            .output("v", v, n)?
            .long(n)
            .float(step.lr)
            .float(step.momentum)
            .float(step.weight_decay);
        // SAFETY: sgd_f32(float* p, const float* g, float* v, long long n, float lr,
        // float momentum, float weight_decay); every buffer holds n.
        unsafe { args.launch(elementwise(n)) }
    }

    /// One AdamW step over all of `p`, with moments `m` and `v`.
    pub fn adamw(
        &self,
        stream: &CudaStream,
        p: &mut impl DevicePtrMut<f32>,
        g: &impl DevicePtr<f32>,
        (m, v): (&mut impl DevicePtrMut<f32>, &mut impl DevicePtrMut<f32>),
        step: AdamW,
    ) -> Result<()> {
        let n = p.len();
        let args = Args::new(&self.adamw, stream)
            .output("p", p, n)?
            .input("g", g, n)?
            .output("m", m, n)?
            .output("v", v, n)?
            .long(n)
            .float(step.lr)
            .float(step.beta1)
            .float(step.beta2)
            .float(step.eps)
            .float(step.weight_decay)
            .float(step.c1)
            .float(step.c2);
        // SAFETY: adamw_f32(float* p, const float* g, float* m, float* v, long long n, then
        // seven floats in this order); every buffer holds n.
        unsafe { args.launch(elementwise(n)) }
    }
}
