//! Activation buffers for one batch size, allocated once and reused by every run.

use std::sync::Arc;

use cudarc::driver::CudaStream;

use crate::error::{CudaContext as _, Result};
use crate::gpu::{DeviceBuffer, poison_nan};
use crate::kernels::linear::split_k;
use crate::kernels::window_attention::{AttentionShape, KeySplit};
use crate::model::config::Config;

pub(super) struct Activations {
    pub batch: usize,
    // Encoder, rows `token * batch + b` (`n = L_all * batch` rows).
    /// The layer input and output `(n, c)`; holds x0 after the upload.
    pub x: DeviceBuffer<f32>,
    /// After the first LayerNorm.
    pub x1: DeviceBuffer<f32>,
    /// q|k|v per head in window layout, `(3, H, batch, L_all, hd)`.
    pub qkv: DeviceBuffer<f32>,
    /// Heads after window reverse, concatenated, `(n, c)`.
    pub concat: DeviceBuffer<f32>,
    /// FFN hidden layer, `(n, ff)`.
    pub hidden: DeviceBuffer<f32>,
    /// Each head's own output before window reverse, `(batch, L_all, hd)` (captured layer 0).
    pub head_out: Vec<DeviceBuffer<f32>>,
    /// Column padding per head, `(H, batch, L_all)`.
    pub key_pad: DeviceBuffer<u8>,
    /// The merged padding mask `m`, `(batch, L_all)`.
    pub mask: DeviceBuffer<u8>,
    // Decoder, rows `b` (one query).
    /// Every decoder layer's cross-attention k|v of the encoder output, `(n, dec * 2c)`.
    pub mem_kv: DeviceBuffer<f32>,
    /// `qpos`, the query embedding per batch item, `(batch, c)`.
    pub qpos: DeviceBuffer<f32>,
    /// `t`; the next `t` (a LayerNorm reads `t` as its residual while writing `t_next`;
    /// then they swap); `t + qpos`.
    pub t: DeviceBuffer<f32>,
    pub t_next: DeviceBuffer<f32>,
    pub tq: DeviceBuffer<f32>,
    /// Projections and attention output, `(batch, c)`.
    pub proj: DeviceBuffer<f32>,
    pub attn: DeviceBuffer<f32>,
    /// Decoder FFN hidden layer, `(batch, ff)`.
    pub dhidden: DeviceBuffer<f32>,
    /// `hs = post_norm(t)`.
    pub hs: DeviceBuffer<f32>,
    /// k-split partial products of the linears followed by bias + residual + LayerNorm,
    /// `(splits, rows, c)`, sized for the largest of them.
    pub partial: DeviceBuffer<f32>,
    /// The counter of the decoder's split-k linears with their LayerNorm fused
    /// (`Epilogue::SplitKNorm`): zero between launches (allocated zeroed, never poisoned).
    pub norm_arrived: DeviceBuffer<u32>,
    /// Each encoder head's key split and workspace (heads run concurrently: one each).
    pub head_splits: Vec<SplitBuffers>,
    /// The decoder's cross attention's.
    pub cross_split: SplitBuffers,
}

/// One attention launch's key split and the workspace its blocks merge through.
pub(super) struct SplitBuffers {
    pub splits: usize,
    partial: DeviceBuffer<f32>,
    /// Zero between launches (allocated zeroed, never poisoned).
    arrived: DeviceBuffer<u32>,
}

impl SplitBuffers {
    fn new(s: &Arc<CudaStream>, shape: &AttentionShape, splits: usize) -> Result<SplitBuffers> {
        let (floats, counters) = if splits > 1 {
            (
                KeySplit::partial_len(shape, splits),
                KeySplit::arrived_len(shape),
            )
        } else {
            (1, 1)
        };
        Ok(SplitBuffers {
            splits,
            partial: s
                .alloc_zeros::<f32>(floats)
                .cuda(|| format!("allocating {floats} split attention partials"))?,
            arrived: s
                .alloc_zeros::<u32>(counters)
                .cuda(|| format!("allocating {counters} split attention counters"))?,
        })
    }

    /// The split to launch with (`None`: one block walks all keys).
    pub fn key_split(&mut self) -> Option<KeySplit<'_>> {
        (self.splits > 1).then(|| KeySplit {
            splits: self.splits,
            partial: self.partial.as_view_mut(),
            arrived: self.arrived.as_view_mut(),
        })
    }
}

impl Activations {
    /// `heads` and `cross`: each encoder head's attention shape and key splits, and the
    /// decoder cross attention's.
    pub fn new(
        s: &Arc<CudaStream>,
        cfg: &Config,
        batch: usize,
        heads: &[(AttentionShape, usize)],
        cross: (AttentionShape, usize),
    ) -> Result<Activations> {
        let (c, h, ff) = (cfg.d_model, cfg.nhead, cfg.dim_feedforward);
        let n = cfg.l_all() * batch;
        // The linears before a LayerNorm: output projections (k = c) and FFN2 (k = ff), on
        // the encoder's n rows and the decoder's batch rows.
        let partial = [(n, c), (n, ff), (batch, c), (batch, ff)]
            .iter()
            .map(|&(rows, k)| split_k(rows, c, k) * rows * c)
            .max()
            .unwrap_or(0);
        let f = |len: usize| -> Result<DeviceBuffer<f32>> {
            s.alloc_zeros::<f32>(len)
                .cuda(|| format!("allocating {len} activations"))
        };
        let u = |len: usize| -> Result<DeviceBuffer<u8>> {
            s.alloc_zeros::<u8>(len)
                .cuda(|| format!("allocating {len} mask bytes"))
        };
        Ok(Activations {
            batch,
            x: f(n * c)?,
            x1: f(n * c)?,
            qkv: f(3 * n * c)?,
            concat: f(n * c)?,
            hidden: f(n * ff)?,
            head_out: (0..h).map(|_| f(n * cfg.hd())).collect::<Result<_>>()?,
            key_pad: u(h * n)?,
            mask: u(n)?,
            mem_kv: f(n * cfg.dec_layers * 2 * c)?,
            qpos: f(batch * c)?,
            t: f(batch * c)?,
            t_next: f(batch * c)?,
            tq: f(batch * c)?,
            proj: f(batch * c)?,
            attn: f(batch * c)?,
            dhidden: f(batch * ff)?,
            hs: f(batch * c)?,
            partial: f(partial)?,
            norm_arrived: s
                .alloc_zeros::<u32>(1)
                .cuda(|| "allocating the fused LayerNorm's counters".to_string())?,
            head_splits: heads
                .iter()
                .map(|(shape, splits)| SplitBuffers::new(s, shape, *splits))
                .collect::<Result<_>>()?,
            cross_split: SplitBuffers::new(s, &cross.0, cross.1)?,
        })
    }

    /// Fills every float buffer with NaN, so that an element a run fails to write shows.
    pub fn poison(&mut self, s: &CudaStream) -> Result<()> {
        let Activations {
            batch: _,
            key_pad: _,
            mask: _,
            head_out,
            x,
            x1,
            qkv,
            concat,
            hidden,
            mem_kv,
            qpos,
            t,
            t_next,
            tq,
            proj,
            attn,
            dhidden,
            hs,
            partial,
            norm_arrived: _,
            head_splits,
            cross_split,
        } = self;
        let all = [
            x, x1, qkv, concat, hidden, mem_kv, qpos, t, t_next, tq, proj, attn, dhidden, hs,
            partial,
        ];
        let split_partials = head_splits
            .iter_mut()
            .chain(std::iter::once(cross_split))
            .map(|b| &mut b.partial);
        for b in all
            .into_iter()
            .chain(head_out.iter_mut())
            .chain(split_partials)
        {
            poison_nan(s, b)?;
        }
        Ok(())
    }
}
