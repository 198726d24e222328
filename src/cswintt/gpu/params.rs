//! The transformer's parameters on the device, uploaded once, in the shapes the kernels read.

use std::sync::Arc;

use cudarc::driver::CudaStream;

use crate::error::Result;
use crate::gpu::{DeviceBuffer, upload};
use crate::model::weights::{LayerNorm, Linear, Weights};

/// `y = x W^T + b`: `weight` `(out, inp)`, `bias` `(out)`.
pub(super) struct DeviceLinear {
    pub weight: DeviceBuffer<f32>,
    pub bias: DeviceBuffer<f32>,
    pub out: usize,
    pub inp: usize,
}

impl DeviceLinear {
    fn new(s: &Arc<CudaStream>, lin: &Linear) -> Result<DeviceLinear> {
        Self::rows(s, lin, 0, lin.out_features())
    }

    /// Output rows `[from, to)` of `lin` (a slice of a fused projection such as `in_proj`).
    fn rows(s: &Arc<CudaStream>, lin: &Linear, from: usize, to: usize) -> Result<DeviceLinear> {
        Self::stack(s, &[(lin, from, to)])
    }

    /// Output rows of several layers stacked into one projection, in order.
    fn stack(s: &Arc<CudaStream>, parts: &[(&Linear, usize, usize)]) -> Result<DeviceLinear> {
        let inp = parts.first().map_or(0, |(l, _, _)| l.in_features());
        let (mut w, mut b) = (Vec::new(), Vec::new());
        for (lin, from, to) in parts {
            w.extend_from_slice(&lin.weight.data[from * inp..to * inp]);
            b.extend_from_slice(&lin.bias.data[*from..*to]);
        }
        Ok(DeviceLinear {
            out: b.len(),
            inp,
            weight: upload(s, &w)?,
            bias: upload(s, &b)?,
        })
    }

    /// `(n, out, inp)`, the GEMM shape for `n` input rows.
    pub fn shape(&self, n: usize) -> (usize, usize, usize) {
        (n, self.out, self.inp)
    }
}

pub(super) struct DeviceLayerNorm {
    pub gamma: DeviceBuffer<f32>,
    pub beta: DeviceBuffer<f32>,
}

impl DeviceLayerNorm {
    fn new(s: &Arc<CudaStream>, ln: &LayerNorm) -> Result<DeviceLayerNorm> {
        Ok(DeviceLayerNorm {
            gamma: upload(s, &ln.weight.data)?,
            beta: upload(s, &ln.bias.data)?,
        })
    }
}

pub(super) struct EncoderParams {
    pub qkv: DeviceLinear,
    pub output: DeviceLinear,
    pub ff1: DeviceLinear,
    pub ff2: DeviceLinear,
    pub norm1: DeviceLayerNorm,
    pub norm2: DeviceLayerNorm,
}

/// One decoder layer. Only the parts of the attention projections that are used: the self
/// attention has one query and one key, so its softmax is exactly 1 and its output is
/// `out_proj(v)` (q and k projections drop out); the cross attention's k and v depend only
/// on the encoder output and live, for all layers at once, in [`DeviceParams::cross_kv`].
pub(super) struct DecoderParams {
    pub self_v: DeviceLinear,
    pub self_out: DeviceLinear,
    pub cross_q: DeviceLinear,
    pub cross_out: DeviceLinear,
    pub linear1: DeviceLinear,
    pub linear2: DeviceLinear,
    pub norm1: DeviceLayerNorm,
    pub norm2: DeviceLayerNorm,
    pub norm3: DeviceLayerNorm,
}

pub(super) struct DeviceParams {
    pub encoder: Vec<EncoderParams>,
    pub decoder: Vec<DecoderParams>,
    /// Every decoder layer's cross-attention k|v projection, stacked: `(dec_layers * 2c, c)`;
    /// one GEMM over the encoder output serves all layers.
    pub cross_kv: DeviceLinear,
    pub post_norm: DeviceLayerNorm,
}

impl DeviceParams {
    pub fn upload(s: &Arc<CudaStream>, w: &Weights) -> Result<DeviceParams> {
        let c = w.config.d_model;
        let encoder = w
            .encoder
            .iter()
            .map(|l| {
                Ok(EncoderParams {
                    qkv: DeviceLinear::new(s, &l.qkv)?,
                    output: DeviceLinear::new(s, &l.output)?,
                    ff1: DeviceLinear::new(s, &l.ff1)?,
                    ff2: DeviceLinear::new(s, &l.ff2)?,
                    norm1: DeviceLayerNorm::new(s, &l.norm1)?,
                    norm2: DeviceLayerNorm::new(s, &l.norm2)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let decoder = w
            .decoder
            .iter()
            .map(|l| {
                Ok(DecoderParams {
                    self_v: DeviceLinear::rows(s, &l.self_attn.in_proj, 2 * c, 3 * c)?,
                    self_out: DeviceLinear::new(s, &l.self_attn.out_proj)?,
                    cross_q: DeviceLinear::rows(s, &l.cross_attn.in_proj, 0, c)?,
                    cross_out: DeviceLinear::new(s, &l.cross_attn.out_proj)?,
                    linear1: DeviceLinear::new(s, &l.linear1)?,
                    linear2: DeviceLinear::new(s, &l.linear2)?,
                    norm1: DeviceLayerNorm::new(s, &l.norm1)?,
                    norm2: DeviceLayerNorm::new(s, &l.norm2)?,
                    norm3: DeviceLayerNorm::new(s, &l.norm3)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let kv_parts: Vec<_> = w
            .decoder
            .iter()
            .map(|l| (&l.cross_attn.in_proj, c, 3 * c))
            .collect();
        Ok(DeviceParams {
            encoder,
            decoder,
            cross_kv: DeviceLinear::stack(s, &kv_parts)?,
            post_norm: DeviceLayerNorm::new(s, &w.post_norm)?,
        })
    }
}
