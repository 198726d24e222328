//! The CPU reference of `conv2d`: PyTorch's `Conv2d` (cross-correlation, zero padding, no
//! dilation) followed by a fused epilogue, in f32 storage with f64 accumulation:
//!
//! `out = relu?(conv(input, weight) + bias + residual)`
//!
//! with the bias per output channel and the residual (a tensor shaped like the output)
//! both optional. This is the epilogue cuDNN's fused convolution offers, and what a
//! ResNet bottleneck's last convolution needs (batch norm folded into weight and bias).
//!
//! Layouts: activations are `NCHW` (PyTorch's) or `NHWC` ([`Layout`]); the weight is
//! always PyTorch's `(out, in / groups, kh, kw)`. The computation runs in NHWC: every
//! output pixel's receptive field is gathered into an f64 row (im2col, zeros where it
//! overlaps the padding) and multiplied with the weight rows by the CPU reference's
//! SIMD dot-product kernels; blocks of output pixels run in parallel (rayon).

use std::borrow::Cow;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::linear::gemm;

/// Memory layout of the input, the residual and the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// `(batch, channels, height, width)`, PyTorch's.
    #[default]
    Nchw,
    /// `(batch, height, width, channels)`, channels contiguous.
    Nhwc,
}

/// One convolution: shapes, stride and padding (the same on both axes), groups, and
/// whether a ReLU ends the epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2d {
    pub batch: usize,
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
    pub relu: bool,
    pub layout: Layout,
}

impl Conv2d {
    /// Output height: `(height + 2 pad - kernel_h) / stride + 1`.
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.pad - self.kernel_h) / self.stride + 1
    }

    /// Output width: `(width + 2 pad - kernel_w) / stride + 1`.
    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.pad - self.kernel_w) / self.stride + 1
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.height * self.width
    }

    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_height() * self.out_width()
    }

    /// `out * (in / groups) * kh * kw`.
    pub fn weight_len(&self) -> usize {
        self.out_channels * (self.in_channels / self.groups.max(1)) * self.kernel_h * self.kernel_w
    }

    /// Multiply-accumulates of one call (for rates).
    pub fn macs(&self) -> usize {
        self.output_len() * (self.in_channels / self.groups.max(1)) * self.kernel_h * self.kernel_w
    }

    /// Checks that the geometry is possible: positive sizes and stride, channels divisible
    /// by the groups, and a kernel that fits the padded input.
    pub fn validate(&self) -> Result<()> {
        let fail = |problem: String| Err(Error::invalid("conv2d", problem));
        let sizes = [
            ("batch", self.batch),
            ("in_channels", self.in_channels),
            ("height", self.height),
            ("width", self.width),
            ("out_channels", self.out_channels),
            ("kernel_h", self.kernel_h),
            ("kernel_w", self.kernel_w),
            ("stride", self.stride),
            ("groups", self.groups),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return fail(format!("{name} must be at least 1 ({self:?})"));
        }
        if !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
        {
            return fail(format!(
                "groups {} must divide in_channels {} and out_channels {}",
                self.groups, self.in_channels, self.out_channels
            ));
        }
        if self.kernel_h > self.height + 2 * self.pad || self.kernel_w > self.width + 2 * self.pad {
            return fail(format!(
                "kernel {}x{} is larger than the padded input {}x{}",
                self.kernel_h,
                self.kernel_w,
                self.height + 2 * self.pad,
                self.width + 2 * self.pad
            ));
        }
        Ok(())
    }
}

/// Output pixels per parallel task (the rows of one im2col block).
const PIXELS: usize = 32;

/// `relu?(conv(input, weight) + bias + residual)` in `conv.layout`; see the module docs.
/// `weight` is `(out, in / groups, kh, kw)`, `bias` `(out)`, `residual` shaped like the
/// output. Lengths are checked; a mismatch is an error naming the operand.
pub fn conv2d(
    conv: &Conv2d,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> Result<Vec<f32>> {
    conv.validate()?;
    let lens = [
        ("input", Some(input.len()), conv.input_len()),
        ("weight", Some(weight.len()), conv.weight_len()),
        ("bias", bias.map(<[f32]>::len), conv.out_channels),
        ("residual", residual.map(<[f32]>::len), conv.output_len()),
    ];
    for (name, got, want) in lens {
        if let Some(got) = got
            && got != want
        {
            return Err(Error::invalid(
                format!("conv2d {name}"),
                format!("expected {want} values for {conv:?}, found {got}"),
            ));
        }
    }
    let (n, cin, h, w) = (conv.batch, conv.in_channels, conv.height, conv.width);
    let (cout, oh, ow) = (conv.out_channels, conv.out_height(), conv.out_width());
    let nhwc = |x: &'_ [f32], c: usize, hh: usize, ww: usize| -> Vec<f32> {
        let mut y = vec![0.0f32; x.len()];
        for b in 0..n {
            for ch in 0..c {
                for p in 0..hh * ww {
                    y[(b * hh * ww + p) * c + ch] = x[(b * c + ch) * hh * ww + p];
                }
            }
        }
        y
    };
    let (x, res): (Cow<[f32]>, Option<Cow<[f32]>>) = match conv.layout {
        Layout::Nhwc => (Cow::Borrowed(input), residual.map(Cow::Borrowed)),
        Layout::Nchw => (
            Cow::Owned(nhwc(input, cin, h, w)),
            residual.map(|r| Cow::Owned(nhwc(r, cout, oh, ow))),
        ),
    };

    // Weights as (out, kh, kw, in/groups): each output channel's row matches an NHWC
    // receptive field.
    let (g, cin_g, cout_g) = (conv.groups, cin / conv.groups, cout / conv.groups);
    let (kh, kw) = (conv.kernel_h, conv.kernel_w);
    let k = kh * kw * cin_g;
    let mut wk = vec![0.0f32; cout * k];
    for o in 0..cout {
        for ci in 0..cin_g {
            for ky in 0..kh {
                for kx in 0..kw {
                    wk[o * k + (ky * kw + kx) * cin_g + ci] =
                        weight[((o * cin_g + ci) * kh + ky) * kw + kx];
                }
            }
        }
    }

    let mut out = vec![0.0f32; n * oh * ow * cout];
    out.par_chunks_mut(PIXELS * cout)
        .enumerate()
        .for_each(|(blk, out_blk)| {
            let p0 = blk * PIXELS;
            let rows = out_blk.len() / cout;
            let mut patches = vec![0.0f64; rows * k];
            let mut acc = vec![0.0f64; rows * cout_g];
            for gi in 0..g {
                patches.fill(0.0);
                for r in 0..rows {
                    let p = p0 + r;
                    let (b, oy, ox) = (p / (oh * ow), p / ow % oh, p % ow);
                    let row = &mut patches[r * k..(r + 1) * k];
                    for ky in 0..kh {
                        let iy = (oy * conv.stride + ky) as isize - conv.pad as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..kw {
                            let ix = (ox * conv.stride + kx) as isize - conv.pad as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let src = ((b * h + iy as usize) * w + ix as usize) * cin + gi * cin_g;
                            let dst = &mut row[(ky * kw + kx) * cin_g..(ky * kw + kx + 1) * cin_g];
                            for (d, &s) in dst.iter_mut().zip(&x[src..src + cin_g]) {
                                *d = s as f64;
                            }
                        }
                    }
                }
                let wg = &wk[gi * cout_g * k..(gi + 1) * cout_g * k];
                gemm::nt_rows(&patches, rows, wg, cout_g, k, &mut acc);
                for r in 0..rows {
                    let o_row = &mut out_blk[r * cout + gi * cout_g..r * cout + (gi + 1) * cout_g];
                    let res_row = res.as_ref().map(|rs| {
                        &rs[(p0 + r) * cout + gi * cout_g..(p0 + r) * cout + (gi + 1) * cout_g]
                    });
                    for (j, o) in o_row.iter_mut().enumerate() {
                        let mut v = acc[r * cout_g + j];
                        if let Some(bias) = bias {
                            v += bias[gi * cout_g + j] as f64;
                        }
                        if let Some(rr) = res_row {
                            v += rr[j] as f64;
                        }
                        if conv.relu {
                            v = v.max(0.0);
                        }
                        *o = v as f32;
                    }
                }
            }
        });

    Ok(match conv.layout {
        Layout::Nhwc => out,
        Layout::Nchw => {
            let mut y = vec![0.0f32; out.len()];
            for b in 0..n {
                for p in 0..oh * ow {
                    for ch in 0..cout {
                        y[(b * cout + ch) * oh * ow + p] = out[(b * oh * ow + p) * cout + ch];
                    }
                }
            }
            y
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one output at a time in f64, NCHW.
    fn direct(
        c: &Conv2d,
        x: &[f32],
        wt: &[f32],
        bias: Option<&[f32]>,
        res: Option<&[f32]>,
    ) -> Vec<f32> {
        let (oh, ow) = (c.out_height(), c.out_width());
        let (cin_g, cout_g) = (c.in_channels / c.groups, c.out_channels / c.groups);
        let mut y = vec![0.0f32; c.output_len()];
        for b in 0..c.batch {
            for o in 0..c.out_channels {
                let gi = o / cout_g;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = bias.map_or(0.0, |bs| bs[o] as f64);
                        for ci in 0..cin_g {
                            let ic = gi * cin_g + ci;
                            for ky in 0..c.kernel_h {
                                for kx in 0..c.kernel_w {
                                    let iy = (oy * c.stride + ky) as isize - c.pad as isize;
                                    let ix = (ox * c.stride + kx) as isize - c.pad as isize;
                                    if iy < 0
                                        || ix < 0
                                        || iy >= c.height as isize
                                        || ix >= c.width as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((b * c.in_channels + ic) * c.height + iy as usize)
                                        * c.width
                                        + ix as usize];
                                    let wv =
                                        wt[((o * cin_g + ci) * c.kernel_h + ky) * c.kernel_w + kx];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        let idx = ((b * c.out_channels + o) * oh + oy) * ow + ox;
                        if let Some(r) = res {
                            s += r[idx] as f64;
                        }
                        if c.relu {
                            s = s.max(0.0);
                        }
                        y[idx] = s as f32;
                    }
                }
            }
        }
        y
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                z ^= z << 13;
                z ^= z >> 7;
                z ^= z << 17;
                (z % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn to_nhwc(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
        let mut y = vec![0.0; x.len()];
        for b in 0..n {
            for ch in 0..c {
                for p in 0..hw {
                    y[(b * hw + p) * c + ch] = x[(b * c + ch) * hw + p];
                }
            }
        }
        y
    }

    #[test]
    fn matches_the_definition_in_both_layouts() {
        let cases = [
            // (batch, cin, h, w, cout, k, stride, pad, groups, relu, bias, residual)
            (1, 3, 19, 17, 8, 7, 2, 3, 1, true, true, false),
            (2, 16, 9, 9, 12, 3, 1, 1, 1, false, true, true),
            (1, 16, 10, 11, 32, 3, 2, 1, 1, true, false, false),
            (1, 24, 8, 8, 40, 1, 2, 0, 1, false, true, false),
            (1, 12, 7, 6, 6, 3, 1, 1, 3, true, true, true),
            (1, 33, 5, 5, 1, 1, 1, 0, 1, false, true, false),
        ];
        for (i, &(n, cin, h, w, cout, k, s, p, g, relu, has_b, has_r)) in cases.iter().enumerate() {
            let mut c = Conv2d {
                batch: n,
                in_channels: cin,
                height: h,
                width: w,
                out_channels: cout,
                kernel_h: k,
                kernel_w: k,
                stride: s,
                pad: p,
                groups: g,
                relu,
                layout: Layout::Nchw,
            };
            let x = values(c.input_len(), 3 * i as u64 + 1);
            let wt = values(c.weight_len(), 3 * i as u64 + 2);
            let b = has_b.then(|| values(cout, 7));
            let r = has_r.then(|| values(c.output_len(), 3 * i as u64 + 3));
            let want = direct(&c, &x, &wt, b.as_deref(), r.as_deref());
            let got_nchw = conv2d(&c, &x, &wt, b.as_deref(), r.as_deref()).unwrap();
            let err = got_nchw
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err <= 1e-6, "case {i} NCHW: max abs err {err}");

            c.layout = Layout::Nhwc;
            let (oh, ow) = (c.out_height(), c.out_width());
            let got = conv2d(
                &c,
                &to_nhwc(&x, n, cin, h * w),
                &wt,
                b.as_deref(),
                r.as_ref().map(|r| to_nhwc(r, n, cout, oh * ow)).as_deref(),
            )
            .unwrap();
            assert_eq!(got, to_nhwc(&got_nchw, n, cout, oh * ow), "case {i} NHWC");
        }
    }

    #[test]
    fn bad_operands_are_errors() {
        let c = Conv2d {
            batch: 1,
            in_channels: 4,
            height: 5,
            width: 5,
            out_channels: 6,
            kernel_h: 3,
            kernel_w: 3,
            stride: 1,
            pad: 1,
            groups: 1,
            relu: false,
            layout: Layout::Nhwc,
        };
        let x = vec![0.0; c.input_len()];
        let w = vec![0.0; c.weight_len()];
        let e = conv2d(&c, &x[1..], &w, None, None).unwrap_err().to_string();
        assert!(e.contains("conv2d input"), "{e}");
        let e = conv2d(&c, &x, &w, Some(&[0.0; 5]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("conv2d bias"), "{e}");
        let bad = Conv2d { groups: 4, ..c };
        let e = conv2d(&bad, &x, &w, None, None).unwrap_err().to_string();
        assert!(e.contains("groups"), "{e}");
        let bad = Conv2d { kernel_h: 9, ..c };
        assert!(conv2d(&bad, &x, &w, None, None).is_err());
    }
}
