//! A head's work as a value: its plan (window, shift, offsets) and the tables that depend
//! only on the weights and shapes, precomputed on the host and uploaded once.
//! [`HeadWork::prepare`] turns it and one layer's buffers into a checked launch value; the
//! dispatch modes differ only in how (and on which stream) those values are launched.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut};

use crate::cswintt::plan::HeadPlan;
use crate::error::Result;
use crate::gpu::{DeviceBuffer, upload};
use crate::kernels::window_attention::{
    AttentionOperands, KeySplit, PreparedAttention, SlotLayout, WindowAttentionKernels,
};
use crate::model::weights::Weights;

pub(super) struct HeadWork {
    pub plan: HeadPlan,
    /// `P(w, s)` as slot -> token: where the fused window reverse writes each output slot.
    slot_token: DeviceBuffer<u32>,
    /// `sr(a, e)`, `(w*w)`.
    sr: DeviceBuffer<f32>,
    /// `B_w` gathered from `rel_bias_table{w}`, `(L, L_all)`; `None` for `w == 8`.
    bias: Option<DeviceBuffer<f32>>,
}

/// What one head reads and writes in one layer, for batch `batch`.
pub(super) struct HeadIo<'a> {
    /// This head's q, k and v, each `(batch, L_all, hd)` in window (slot) order.
    pub q: CudaView<'a, f32>,
    pub k: CudaView<'a, f32>,
    pub v: CudaView<'a, f32>,
    /// Column padding `(batch, L_all)`.
    pub key_pad: CudaView<'a, u8>,
    /// The concatenated heads, `(L_all, batch, c)`; this head writes its `hd` channels.
    pub concat: CudaViewMut<'a, f32>,
    /// The output before window reverse, `(batch, L, w*w*hd)`, when captured.
    pub head_out: Option<CudaViewMut<'a, f32>>,
    /// The head's key split and its workspace, when split.
    pub split: Option<KeySplit<'a>>,
    pub batch: usize,
    pub c: usize,
}

impl HeadWork {
    /// Checks that the attention kernel supports this head, and uploads its tables.
    pub fn new(s: &Arc<CudaStream>, plan: &HeadPlan, weights: &Weights) -> Result<HeadWork> {
        WindowAttentionKernels::supports(plan.w, plan.hd)?;
        let table = weights.rel_bias_tables.get(&plan.w).map(|t| t.as_slice());
        let bias = plan
            .gathered_bias(table)?
            .map(|b| upload(s, &b))
            .transpose()?;
        Ok(HeadWork {
            plan: plan.clone(),
            slot_token: upload(s, &plan.partition_index())?,
            sr: upload(s, &plan.sr_table())?,
            bias,
        })
    }

    /// This head's attention (with fused window reverse into `io.concat`), checked and packed
    /// for a launch on `stream`.
    pub fn prepare(
        &self,
        kernel: &WindowAttentionKernels,
        stream: &CudaStream,
        io: HeadIo<'_>,
    ) -> Result<PreparedAttention> {
        let p = &self.plan;
        let layout = SlotLayout {
            batch: p.l_all * p.hd,
            slot: p.hd,
        };
        let shape = p.attention_shape(io.batch);
        let ops = AttentionOperands {
            q: io.q,
            q_layout: layout,
            k: io.k,
            v: io.v,
            kv_layout: layout,
            bias: self.bias.as_ref().map(|b| b.as_view()),
            key_pad: io.key_pad,
            sr: Some(self.sr.as_view()),
            slot_token: Some(self.slot_token.as_view()),
            out: io.concat,
            out_row: io.c,
            out_channel: p.channel_offset,
            head_out: io.head_out,
            split: io.split,
        };
        kernel.prepare(stream, &shape, ops)
    }
}
