//! One model replica on one GPU: its parameters, gradients and optimizer state (flat f32
//! vectors in the [`Layout`](super::model::Layout) order), activation buffers sized for the
//! largest shard seen, and the forward/backward pass: GEMMs through cuBLAS, the rest through
//! `kernels/train_ops.cu`.
//!
//! Row-major activations meet column-major cuBLAS by computing transposes: a row-major
//! `[r x c]` matrix is a column-major `[c x r]` one, so `Y = X W^T` is issued as
//! `Y^T = W X^T`, and likewise for the two backward products.

use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PinnedHostSlice};
use rayon::prelude::*;

use super::cpu::ShardStats;
use super::engine::State;
use super::model::ModelSpec;
use super::optim::Optimizer;
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::Gpu;
use crate::kernels::train_ops;

pub struct Replica {
    gpu: Arc<Gpu>,
    blas: CudaBlas,
    dims: Vec<usize>,
    optimizer: Optimizer,
    params: CudaSlice<f32>,
    grads: CudaSlice<f32>,
    state: Vec<CudaSlice<f32>>,
    /// Rows the buffers below hold.
    capacity: usize,
    /// `acts[0]` is the input, `acts[l + 1]` layer `l`'s output (after ReLU).
    acts: Vec<CudaSlice<f32>>,
    labels: CudaSlice<u32>,
    /// Two gradient buffers of the widest layer, used in turns by the backward pass.
    dbuf: [CudaSlice<f32>; 2],
    stats: CudaSlice<f32>,
    /// Page-locked staging for the shard, so the copy to the device is a real async DMA.
    pinned_x: Option<PinnedHostSlice<f32>>,
    pinned_y: Option<PinnedHostSlice<u32>>,
    /// Rows in the last shard, for [`stats`](Self::stats).
    last_rows: usize,
}

impl Replica {
    /// A replica of `model` with parameters `params` and optimizer state `state` (one vector
    /// per [`Optimizer::state_slots`]).
    pub fn new(
        gpu: Arc<Gpu>,
        model: &ModelSpec,
        optimizer: Optimizer,
        params: &[f32],
        state: &[Vec<f32>],
    ) -> Result<Replica> {
        let ModelSpec::Mlp { dims } = model else {
            return Err(Error::invalid(
                "model",
                "the ViT trains on the CPU engine only for now (--gpus cpu); its GPU replica \
                 is not built yet (docs/TRAINING.md)",
            ));
        };
        let s = gpu.stream().clone();
        let blas = CudaBlas::new(s.clone()).map_err(|e| Error::Blas {
            what: format!("creating a cuBLAS handle on cuda:{}", gpu.ordinal()),
            source: e,
        })?;
        let up = |v: &[f32]| {
            s.clone_htod(v)
                .cuda(|| format!("uploading {} values", v.len()))
        };
        let params_d = up(params)?;
        let grads = s
            .alloc_zeros::<f32>(params.len())
            .cuda(|| "allocating gradients".into())?;
        let state_d = state.iter().map(|v| up(v)).collect::<Result<Vec<_>>>()?;
        let widest = dims.iter().copied().max().unwrap_or(1);
        let one = |n: usize| s.alloc_zeros::<f32>(n.max(1)).cuda(|| "allocating".into());
        Ok(Replica {
            blas,
            dims: dims.clone(),
            optimizer,
            params: params_d,
            grads,
            state: state_d,
            capacity: 0,
            acts: Vec::new(),
            labels: s.alloc_zeros::<u32>(1).cuda(|| "allocating".into())?,
            dbuf: [one(widest)?, one(widest)?],
            stats: one(2)?,
            pinned_x: None,
            pinned_y: None,
            last_rows: 0,
            gpu,
        })
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The gradient buffer's device address, for peers' all-reduce kernels.
    pub fn grads_ptr(&self) -> u64 {
        let (p, _) = self.grads.device_ptr(self.gpu.stream());
        p
    }

    pub fn grads_mut(&mut self) -> &mut CudaSlice<f32> {
        &mut self.grads
    }

    /// Grows the activation buffers to hold `rows` samples.
    fn reserve(&mut self, rows: usize) -> Result<()> {
        if rows <= self.capacity {
            return Ok(());
        }
        let s = self.gpu.stream().clone();
        let alloc = |n: usize| {
            s.alloc_zeros::<f32>(n)
                .cuda(|| format!("allocating {n} activations"))
        };
        self.acts = self
            .dims
            .iter()
            .map(|&d| alloc(rows * d))
            .collect::<Result<_>>()?;
        let widest = self.dims.iter().copied().max().unwrap_or(1);
        self.dbuf = [alloc(rows * widest)?, alloc(rows * widest)?];
        self.labels = s
            .alloc_zeros::<u32>(rows)
            .cuda(|| "allocating labels".into())?;
        self.capacity = rows;
        Ok(())
    }

    /// Makes the page-locked staging buffers exactly `rows` samples long: a copy moves a
    /// whole pinned buffer, so its length must be the shard's. Shard sizes change only with the
    /// DR, so this reallocates rarely.
    fn stage_exactly(&mut self, rows: usize) -> Result<()> {
        if self.pinned_y.as_ref().is_some_and(|p| p.len() == rows) {
            return Ok(());
        }
        // Drop the old buffers first (their drop waits for pending copies).
        self.pinned_x = None;
        self.pinned_y = None;
        let ctx = self.gpu.ctx().clone();
        // SAFETY: the staging buffers are written in full before each copy reads them.
        unsafe {
            self.pinned_x = Some(
                ctx.alloc_pinned::<f32>(rows * self.dims[0])
                    .cuda(|| "allocating pinned staging".into())?,
            );
            self.pinned_y = Some(
                ctx.alloc_pinned::<u32>(rows)
                    .cuda(|| "allocating pinned staging".into())?,
            );
        }
        Ok(())
    }

    /// Enqueues forward and backward over a shard (`x`: `rows x features`), leaving the
    /// gradient of `scale * sum(loss)` in the gradient buffer. An empty shard zeroes it.
    pub fn forward_backward(&mut self, x: &[f32], labels: &[u32], scale: f32) -> Result<()> {
        let rows = labels.len();
        self.last_rows = rows;
        let s = self.gpu.stream().clone();
        s.memset_zeros(&mut self.stats)
            .cuda(|| "zeroing stats".into())?;
        if rows == 0 {
            return s
                .memset_zeros(&mut self.grads)
                .cuda(|| "zeroing gradients".into());
        }
        self.reserve(rows)?;
        self.stage_exactly(rows)?;
        let (px, py) = match (&mut self.pinned_x, &mut self.pinned_y) {
            (Some(px), Some(py)) => (px, py),
            _ => unreachable!("stage_exactly allocates the staging buffers"),
        };
        // The shard can be tens of MB: copy it in parallel, one copy thread is the bottleneck.
        px.as_mut_slice()
            .cuda(|| "waiting for staging".into())?
            .par_chunks_mut(1 << 16)
            .zip(x.par_chunks(1 << 16))
            .for_each(|(d, s)| d.copy_from_slice(s));
        py.as_mut_slice()
            .cuda(|| "waiting for staging".into())?
            .copy_from_slice(labels);
        s.memcpy_htod(&*px, &mut self.acts[0].slice_mut(..x.len()))
            .cuda(|| "copying the shard to the GPU".into())?;
        s.memcpy_htod(&*py, &mut self.labels.slice_mut(..rows))
            .cuda(|| "copying labels to the GPU".into())?;

        let layers = self.dims.len() - 1;
        let mut offsets = Vec::with_capacity(layers);
        let mut at = 0;
        for w in self.dims.windows(2) {
            offsets.push((at, at + w[0] * w[1]));
            at += w[0] * w[1] + w[1];
        }
        for l in 0..layers {
            let (din, dout) = (self.dims[l], self.dims[l + 1]);
            let (wo, bo) = offsets[l];
            let (inputs, outputs) = self.acts.split_at_mut(l + 1);
            let (x, y) = (&inputs[l], &mut outputs[0]);
            gemm(
                &self.blas,
                "forward Y = X W^T",
                (CUBLAS_OP_T, CUBLAS_OP_N),
                (dout, rows, din),
                (din, din, dout),
                &self.params.slice(wo..bo),
                x,
                y,
            )?;
            let b = self.params.slice(bo..bo + dout);
            train_ops::bias_act(&self.gpu, &s, y, &b, rows, dout, l + 1 < layers)?;
        }
        let classes = self.dims[layers];
        let [d0, d1] = &mut self.dbuf;
        train_ops::softmax_xent(
            &self.gpu,
            &s,
            &self.acts[layers],
            &self.labels,
            d0,
            &mut self.stats,
            rows,
            classes,
            scale,
        )?;
        let (mut dy, mut dx) = (d0, d1);
        for l in (0..layers).rev() {
            let (din, dout) = (self.dims[l], self.dims[l + 1]);
            let (wo, bo) = offsets[l];
            let x = &self.acts[l];
            {
                let (mut gw, mut gb) = self.grads.split_at_mut(bo);
                gemm(
                    &self.blas,
                    "backward dW = dY^T X",
                    (CUBLAS_OP_N, CUBLAS_OP_T),
                    (din, dout, rows),
                    (din, dout, din),
                    x,
                    &*dy,
                    &mut gw.slice_mut(wo..bo),
                )?;
                train_ops::bias_grad(&self.gpu, &s, &*dy, &mut gb.slice_mut(..dout), rows, dout)?;
            }
            if l > 0 {
                gemm(
                    &self.blas,
                    "backward dX = dY W",
                    (CUBLAS_OP_N, CUBLAS_OP_N),
                    (din, rows, dout),
                    (din, dout, din),
                    &self.params.slice(wo..bo),
                    &*dy,
                    dx,
                )?;
                train_ops::relu_backward(&self.gpu, &s, dx, x, rows * din)?;
                std::mem::swap(&mut dy, &mut dx);
            }
        }
        Ok(())
    }

    /// Waits for the step's work and returns the last shard's loss and correct count.
    pub fn stats(&mut self) -> Result<ShardStats> {
        let s = self.gpu.stream();
        let v = s.clone_dtoh(&self.stats).cuda(|| "reading stats".into())?;
        s.synchronize().cuda(|| "synchronising".into())?;
        Ok(ShardStats {
            loss: f64::from(v[0]),
            correct: if self.last_rows == 0 { 0 } else { v[1] as u64 },
        })
    }

    /// Enqueues optimizer step `t` (from 1) with the gradient buffer as it is now.
    pub fn optimizer_step(&mut self, t: u64) -> Result<()> {
        let s = self.gpu.stream().clone();
        let (c1, c2) = self.optimizer.bias_corrections(t);
        match self.optimizer {
            Optimizer::Sgd {
                lr,
                momentum,
                weight_decay,
            } => train_ops::sgd(
                &self.gpu,
                &s,
                &mut self.params,
                &self.grads,
                &mut self.state[0],
                [lr, momentum, weight_decay],
            ),
            Optimizer::AdamW {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                let (m, v) = self.state.split_at_mut(1);
                train_ops::adamw(
                    &self.gpu,
                    &s,
                    &mut self.params,
                    &self.grads,
                    &mut m[0],
                    &mut v[0],
                    [lr, beta1, beta2, eps, weight_decay, c1, c2],
                )
            }
        }
    }

    /// Parameters and optimizer state, and the gradients, copied to the host.
    pub fn download(&self) -> Result<(State, Vec<f32>)> {
        let s = self.gpu.stream();
        let get = |b: &CudaSlice<f32>| s.clone_dtoh(b).cuda(|| "downloading state".into());
        let params = get(&self.params)?;
        let optimizer = self.state.iter().map(get).collect::<Result<Vec<_>>>()?;
        let grads = get(&self.grads)?;
        s.synchronize().cuda(|| "synchronising".into())?;
        Ok((State { params, optimizer }, grads))
    }

    /// Replaces parameters and optimizer state (resume).
    pub fn upload(&mut self, params: &[f32], state: &[Vec<f32>]) -> Result<()> {
        let s = self.gpu.stream().clone();
        s.memcpy_htod(params, &mut self.params)
            .cuda(|| "uploading parameters".into())?;
        for (d, h) in self.state.iter_mut().zip(state) {
            s.memcpy_htod(h.as_slice(), d)
                .cuda(|| "uploading optimizer state".into())?;
        }
        s.synchronize().cuda(|| "synchronising".into())
    }
}

/// One cuBLAS SGEMM, column-major: `C[m x n] = op(A) op(B)` (C overwritten).
#[allow(clippy::too_many_arguments)]
fn gemm<A: DevicePtr<f32>, B: DevicePtr<f32>, C: DevicePtrMut<f32>>(
    blas: &CudaBlas,
    what: &str,
    (transa, transb): (
        cudarc::cublas::sys::cublasOperation_t,
        cudarc::cublas::sys::cublasOperation_t,
    ),
    (m, n, k): (usize, usize, usize),
    (lda, ldb, ldc): (usize, usize, usize),
    a: &A,
    b: &B,
    c: &mut C,
) -> Result<()> {
    let cfg = GemmConfig {
        transa,
        transb,
        m: m as i32,
        n: n as i32,
        k: k as i32,
        alpha: 1.0f32,
        lda: lda as i32,
        ldb: ldb as i32,
        beta: 0.0,
        ldc: ldc as i32,
    };
    // SAFETY: the caller passes buffers of at least the sizes the shapes imply (the replica
    // sizes them from the layout and `reserve`).
    unsafe { blas.gemm(cfg, a, b, c) }.map_err(|e| Error::Blas {
        what: format!("{what} ({m}x{n}x{k})"),
        source: e,
    })
}
