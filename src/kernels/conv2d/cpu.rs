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

use super::Conv2dShape;

/// Memory layout of the input, the residual and the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// `(batch, channels, height, width)`, PyTorch's.
    #[default]
    Nchw,
    /// `(batch, height, width, channels)`, channels contiguous.
    Nhwc,
}

/// One call of the reference: the convolution's geometry (shared with the GPU launcher),
/// the layout of its activations, and whether a ReLU ends the epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2d {
    pub shape: Conv2dShape,
    pub relu: bool,
    pub layout: Layout,
}

impl Conv2d {
    /// `shape` without ReLU, NHWC.
    pub fn nhwc(shape: Conv2dShape) -> Conv2d {
        Conv2d {
            shape,
            relu: false,
            layout: Layout::Nhwc,
        }
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
    conv.shape.check()?;
    let lens = [
        ("input", Some(input.len()), conv.shape.input_len()),
        ("weight", Some(weight.len()), conv.shape.weight_len()),
        ("bias", bias.map(<[f32]>::len), conv.shape.out_channels),
        (
            "residual",
            residual.map(<[f32]>::len),
            conv.shape.output_len(),
        ),
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
    let (n, cin, h, w) = (
        conv.shape.batch,
        conv.shape.in_channels,
        conv.shape.height,
        conv.shape.width,
    );
    let (cout, oh, ow) = (
        conv.shape.out_channels,
        conv.shape.out_size()[0],
        conv.shape.out_size()[1],
    );
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
    let (g, cin_g, cout_g) = (
        conv.shape.groups,
        cin / conv.shape.groups,
        cout / conv.shape.groups,
    );
    let (kh, kw) = (conv.shape.kernel_h, conv.shape.kernel_w);
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
                        let iy = (oy * conv.shape.stride + ky) as isize - conv.shape.pad as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..kw {
                            let ix =
                                (ox * conv.shape.stride + kx) as isize - conv.shape.pad as isize;
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

/// Checks an NHWC backward call's operand lengths, then `dy`'s (named in errors), and gives
/// the sizes its loops walk: `[h, w, cin, cout]`, `[oh, ow, stride, pad]` and
/// `[kh, kw, cin / groups, cout / groups]`.
fn check_backward(
    conv: &Conv2d,
    pass: &str,
    dy: &[f32],
    operands: &[(&str, usize, usize)],
) -> Result<[[usize; 4]; 3]> {
    conv.shape.check()?;
    if conv.layout != Layout::Nhwc {
        return Err(Error::invalid(
            format!("conv2d {pass}"),
            "the backward references take NHWC tensors",
        ));
    }
    let dy = ("dy", dy.len(), conv.shape.output_len());
    for &(name, got, want) in operands.iter().chain([&dy]) {
        if got != want {
            return Err(Error::invalid(
                format!("conv2d {pass} {name}"),
                format!("expected {want} values for {conv:?}, found {got}"),
            ));
        }
    }
    let g = &conv.shape;
    let (cin, cout) = (g.in_channels, g.out_channels);
    let [oh, ow] = g.out_size();
    Ok([
        [g.height, g.width, cin, cout],
        [oh, ow, g.stride, g.pad],
        [g.kernel_h, g.kernel_w, cin / g.groups, cout / g.groups],
    ])
}

/// The input's gradient `dx` (NHWC) of the convolution alone, given the output's gradient
/// `dy` (NHWC) and the `(out, in / groups, kh, kw)` weight: every input pixel gathers the
/// output pixels its value reached, in f64. (The epilogue's ReLU and residual add are
/// other ops' gradients; `conv.relu` is ignored.)
pub fn backward_data(conv: &Conv2d, weight: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
    let [[h, w, cin, cout], [oh, ow, s, pad], [kh, kw, cin_g, cout_g]] = check_backward(
        conv,
        "backward data",
        dy,
        &[("weight", weight.len(), conv.shape.weight_len())],
    )?;
    // The output pixel (oy) that tap ky of input row iy feeds, if any.
    let tap = |i: usize, k: usize, out: usize| -> Option<usize> {
        let o = (i + pad).checked_sub(k)?;
        (o % s == 0 && o / s < out).then_some(o / s)
    };
    let mut dx = vec![0.0f32; conv.shape.input_len()];
    dx.par_chunks_mut(cin).enumerate().for_each(|(p, px)| {
        let (b, iy, ix) = (p / (h * w), p / w % h, p % w);
        for (c, v) in px.iter_mut().enumerate() {
            let (g, ci) = (c / cin_g, c % cin_g);
            let mut acc = 0.0f64;
            for ky in 0..kh {
                let Some(oy) = tap(iy, ky, oh) else { continue };
                for kx in 0..kw {
                    let Some(ox) = tap(ix, kx, ow) else { continue };
                    let grad = &dy[((b * oh + oy) * ow + ox) * cout..][..cout];
                    for o in g * cout_g..(g + 1) * cout_g {
                        let wv = weight[((o * cin_g + ci) * kh + ky) * kw + kx];
                        acc += grad[o] as f64 * wv as f64;
                    }
                }
            }
            *v = acc as f32;
        }
    });
    Ok(dx)
}

/// The weight's gradient `(out, in / groups, kh, kw)` of the convolution, given its NHWC
/// `input` and the output's gradient `dy`: sums over the batch and every output pixel, in
/// f64.
pub fn backward_filter(conv: &Conv2d, input: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
    let [[h, w, cin, cout], [oh, ow, s, pad], [kh, kw, cin_g, cout_g]] = check_backward(
        conv,
        "backward filter",
        dy,
        &[("input", input.len(), conv.shape.input_len())],
    )?;
    let per_out = cin_g * kh * kw;
    let mut dw = vec![0.0f32; conv.shape.weight_len()];
    dw.par_chunks_mut(per_out).enumerate().for_each(|(o, dwo)| {
        let c0 = o / cout_g * cin_g;
        let mut acc = vec![0.0f64; per_out];
        for b in 0..conv.shape.batch {
            for oy in 0..oh {
                for ox in 0..ow {
                    let g = dy[((b * oh + oy) * ow + ox) * cout + o] as f64;
                    for ky in 0..kh {
                        let iy = (oy * s + ky) as isize - pad as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..kw {
                            let ix = (ox * s + kx) as isize - pad as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let px = ((b * h + iy as usize) * w + ix as usize) * cin + c0;
                            for (ci, &xv) in input[px..px + cin_g].iter().enumerate() {
                                acc[(ci * kh + ky) * kw + kx] += g * xv as f64;
                            }
                        }
                    }
                }
            }
        }
        for (d, a) in dwo.iter_mut().zip(&acc) {
            *d = *a as f32;
        }
    });
    Ok(dw)
}

/// The bias's gradient `(out)`: the output's gradient `dy` (NHWC) summed over the batch
/// and every pixel, in f64.
pub fn backward_bias(conv: &Conv2d, dy: &[f32]) -> Result<Vec<f32>> {
    check_backward(conv, "backward bias", dy, &[])?;
    let mut acc = vec![0.0f64; conv.shape.out_channels];
    for px in dy.chunks(conv.shape.out_channels) {
        for (a, &g) in acc.iter_mut().zip(px) {
            *a += g as f64;
        }
    }
    Ok(acc.into_iter().map(|a| a as f32).collect())
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
        let relu = c.relu;
        let c = &c.shape;
        let [oh, ow] = c.out_size();
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
                        if relu {
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
            let shape = Conv2dShape::new(n, [h, w], cin, cout, k)
                .with_stride(s)
                .with_pad(p)
                .with_groups(g);
            let mut c = Conv2d {
                shape,
                relu,
                layout: Layout::Nchw,
            };
            let x = values(shape.input_len(), 3 * i as u64 + 1);
            let wt = values(shape.weight_len(), 3 * i as u64 + 2);
            let b = has_b.then(|| values(cout, 7));
            let r = has_r.then(|| values(shape.output_len(), 3 * i as u64 + 3));
            let want = direct(&c, &x, &wt, b.as_deref(), r.as_deref());
            let got_nchw = conv2d(&c, &x, &wt, b.as_deref(), r.as_deref()).unwrap();
            let err = got_nchw
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err <= 1e-6, "case {i} NCHW: max abs err {err}");

            c.layout = Layout::Nhwc;
            let [oh, ow] = shape.out_size();
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

    /// `<conv(x, w), dy> = <x, backward_data(dy)> = <w, backward_filter(x, dy)>`, and the
    /// bias gradient sums dy: the backward references are the forward's adjoints.
    #[test]
    fn backward_passes_are_the_forward_adjoints() {
        let dot = |a: &[f32], b: &[f32]| -> f64 {
            a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
        };
        let cases = [
            // (batch, cin, h, w, cout, kh, kw, stride, pad, groups)
            (2, 3, 13, 11, 8, 7, 7, 2, 3, 1),
            (1, 8, 9, 10, 12, 3, 3, 2, 1, 1),
            (2, 12, 7, 6, 6, 3, 3, 1, 1, 3),
            (1, 10, 8, 9, 10, 3, 3, 2, 1, 10),
            (1, 6, 6, 7, 4, 1, 1, 2, 0, 2),
            (1, 4, 6, 9, 5, 3, 5, 3, 2, 1),
        ];
        for (i, &(n, cin, h, w, cout, kh, kw, s, p, g)) in cases.iter().enumerate() {
            let shape = Conv2dShape {
                kernel_w: kw,
                ..Conv2dShape::new(n, [h, w], cin, cout, kh)
                    .with_stride(s)
                    .with_pad(p)
                    .with_groups(g)
            };
            let c = Conv2d::nhwc(shape);
            let x = values(shape.input_len(), 5 * i as u64 + 1);
            let wt = values(shape.weight_len(), 5 * i as u64 + 2);
            let dy = values(shape.output_len(), 5 * i as u64 + 3);
            let y = conv2d(&c, &x, &wt, None, None).unwrap();
            let want = dot(&y, &dy);
            let dx = backward_data(&c, &wt, &dy).unwrap();
            let dw = backward_filter(&c, &x, &dy).unwrap();
            for (what, got) in [("data", dot(&x, &dx)), ("filter", dot(&wt, &dw))] {
                let err = (got - want).abs() / want.abs().max(1.0);
                assert!(err < 1e-5, "case {i} backward {what}: {got} vs {want}");
            }
            let db = backward_bias(&c, &dy).unwrap();
            let sum0: f64 = dy.iter().step_by(cout).map(|&v| v as f64).sum();
            assert!((db[0] as f64 - sum0).abs() < 1e-4, "case {i} bias");
        }
        let nchw = Conv2d {
            layout: Layout::Nchw,
            ..Conv2d::nhwc(Conv2dShape::new(1, [3, 3], 2, 2, 1))
        };
        let e = backward_bias(&nchw, &[0.0; 18]).unwrap_err().to_string();
        assert!(e.contains("NHWC"), "{e}");
        let e = backward_data(
            &Conv2d {
                layout: Layout::Nhwc,
                ..nchw
            },
            &[0.0; 3],
            &[0.0; 18],
        );
        assert!(
            e.unwrap_err()
                .to_string()
                .contains("conv2d backward data weight")
        );
    }

    #[test]
    fn bad_operands_are_errors() {
        let shape = Conv2dShape::new(1, [5, 5], 4, 6, 3).with_pad(1);
        let c = Conv2d::nhwc(shape);
        let x = vec![0.0; shape.input_len()];
        let w = vec![0.0; shape.weight_len()];
        let e = conv2d(&c, &x[1..], &w, None, None).unwrap_err().to_string();
        assert!(e.contains("conv2d input"), "{e}");
        let e = conv2d(&c, &x, &w, Some(&[0.0; 5]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("conv2d bias"), "{e}");
        let bad = Conv2d::nhwc(shape.with_groups(4));
        let e = conv2d(&bad, &x, &w, None, None).unwrap_err().to_string();
        assert!(e.contains("groups"), "{e}");
        let bad = Conv2d::nhwc(Conv2dShape {
            kernel_h: 9,
            ..shape
        });
        assert!(conv2d(&bad, &x, &w, None, None).is_err());
    }
}
