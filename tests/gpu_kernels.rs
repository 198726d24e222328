//! Each kernel of the GPU engine against a plain CPU loop (f64 accumulation) on odd sizes:
//! partial tiles, window counts that do not fill a block, batch > 1, several heads. Outputs
//! are poisoned (NaN) first, so an unwritten element fails. The linear kernels are also run in
//! tf32 and bf16 (tensor cores; tests named `*_tf32_*`, `*_bf16_*`), held to 2e-3 and 1e-2.
//! Skips without a GPU; `ATTNRT_REQUIRE_GPU=1` makes a missing GPU fail.

use attnrt::base::relative_error;
use attnrt::cswintt::Precision;
use attnrt::gpu::{self, Gpu, testing::gpu_or_skip};
use attnrt::kernels::layer_norm::{LayerNormKernel, NormInput};
use attnrt::kernels::linear::{Epilogue, LinearKernels, ROWS};
use attnrt::kernels::window_attention::{
    AttentionOperands, AttentionShape, SlotLayout, WindowAttentionKernel,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TOL: f64 = 1e-5;

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_within(what, got, want, TOL);
}

fn assert_within(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let err = relative_error(got, want).expect("same length");
    println!("{what}: relative error {err:.3e}");
    assert!(err <= tol, "{what}: relative error {err:e} > {tol:e}");
}

/// What each linear-kernel test holds a precision's GEMMs to against the f64 loop.
fn linear_tolerance(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => TOL,
        Precision::Tf32 => 2e-3,
        Precision::Bf16 => 1e-2,
    }
}

/// A NaN-filled device buffer of `n` floats.
fn poisoned(gpu: &Gpu, n: usize) -> gpu::DeviceBuffer<f32> {
    let s = gpu.stream();
    let mut b = gpu::upload(s, &vec![0.0f32; n]).unwrap();
    gpu::poison_nan(s, &mut b).unwrap();
    b
}

/// `x W^T + bias` in f64, `(n, m)`.
fn linear_cpu(x: &[f32], w: &[f32], bias: &[f32], n: usize, m: usize, k: usize) -> Vec<f64> {
    let mut y = vec![0.0f64; n * m];
    for r in 0..n {
        for c in 0..m {
            let dot: f64 = (0..k)
                .map(|i| x[r * k + i] as f64 * w[c * k + i] as f64)
                .sum();
            y[r * m + c] = dot + bias[c] as f64;
        }
    }
    y
}

#[test]
fn linear_epilogues_match_a_cpu_loop() {
    let Some(gpu) = gpu_or_skip("linear_epilogues_match_a_cpu_loop") else {
        return;
    };
    // n, m: not multiples of the 64x64 tile. k = 45: scalar loads, a partial 16-wide k
    // step; k = 48: float4 loads.
    for k in [45, 48] {
        check_linear(&gpu, Precision::F32, 131, 97, k);
    }
}

/// The tensor-core variants on odd sizes: partial tiles in n and m, a partial k step (k not
/// a multiple of 8 or 16), float4 loads, and a long k (several split chunks of many steps).
fn check_linear_tensor_cores(test: &str, precision: Precision) {
    let Some(gpu) = gpu_or_skip(test) else {
        return;
    };
    for (n, m, k) in [(131, 97, 45), (131, 97, 48), (70, 200, 1030), (5, 33, 256)] {
        check_linear(&gpu, precision, n, m, k);
    }
}

#[test]
fn linear_epilogues_tf32_match_a_cpu_loop() {
    check_linear_tensor_cores("linear_epilogues_tf32_match_a_cpu_loop", Precision::Tf32);
}

#[test]
fn linear_epilogues_bf16_match_a_cpu_loop() {
    check_linear_tensor_cores("linear_epilogues_bf16_match_a_cpu_loop", Precision::Bf16);
}

fn check_linear(gpu: &Gpu, precision: Precision, n: usize, m: usize, k: usize) {
    let s = gpu.stream();
    let kernels = LinearKernels::load_precision(gpu, precision).unwrap();
    let tol = linear_tolerance(precision);
    let label = format!("{precision} ({n}, {m}, {k})");
    let mut rng = ChaCha8Rng::seed_from_u64(5 + k as u64);
    let (x, w, bias) = (
        random(&mut rng, n * k),
        random(&mut rng, m * k),
        random(&mut rng, m),
    );
    let (dx, dw, db) = (
        gpu::upload(s, &x).unwrap(),
        gpu::upload(s, &w).unwrap(),
        gpu::upload(s, &bias).unwrap(),
    );
    let base = linear_cpu(&x, &w, &bias, n, m, k);
    let cases: Vec<(&str, Epilogue, Vec<f32>)> = vec![
        (
            "bias, scaled",
            Epilogue::Bias { scale: 0.375 },
            base.iter().map(|v| (v * 0.375) as f32).collect(),
        ),
        (
            "bias + relu",
            Epilogue::BiasRelu,
            base.iter().map(|v| v.max(0.0) as f32).collect(),
        ),
    ];
    for (what, epilogue, want) in cases {
        let mut out = poisoned(gpu, n * m);
        kernels
            .run(s, &dx, &dw, &db, (n, m, k), &mut out, epilogue)
            .unwrap();
        assert_within(
            &format!("{what}, {label}"),
            &gpu::download(s, &out).unwrap(),
            &want,
            tol,
        );
    }
    // Split over k in 3 chunks (of 16, 16 and 13 for k = 45): the partial products sum to
    // x W^T.
    let splits = 3;
    let mut out = poisoned(gpu, splits * n * m);
    let epilogue = Epilogue::SplitK { splits };
    kernels
        .run(s, &dx, &dw, &db, (n, m, k), &mut out, epilogue)
        .unwrap();
    let parts = gpu::download(s, &out).unwrap();
    let got: Vec<f32> = (0..n * m)
        .map(|e| (0..splits).map(|z| parts[z * n * m + e]).sum())
        .collect();
    let want: Vec<f32> = (0..n * m)
        .map(|e| (base[e] - bias[e % m] as f64) as f32)
        .collect();
    assert_within(&format!("split k, {label}"), &got, &want, tol);
}

/// Products of at most `ROWS` rows (the decoder's one query per batch item) run in the
/// few-rows kernels: every epilogue and precision, k odd (scalar loads), a multiple of 4
/// (float4 loads) and long (several chunks per lane), m not a multiple of a block's 8 columns.
#[test]
fn few_rows_linears_match_a_cpu_loop() {
    let Some(gpu) = gpu_or_skip("few_rows_linears_match_a_cpu_loop") else {
        return;
    };
    for precision in [Precision::F32, Precision::Tf32, Precision::Bf16] {
        for (n, m, k) in [(1, 97, 45), (2, 256, 256), (5, 37, 2048), (ROWS, 130, 48)] {
            check_linear(&gpu, precision, n, m, k);
        }
    }
}

#[test]
fn qkv_projection_writes_each_heads_window_layout() {
    check_qkv_windows(
        "qkv_projection_writes_each_heads_window_layout",
        Precision::F32,
        (23, 3, 3, 5, 19),
    );
}

#[test]
fn qkv_projection_tf32_writes_each_heads_window_layout() {
    let test = "qkv_projection_tf32_writes_each_heads_window_layout";
    check_qkv_windows(test, Precision::Tf32, (23, 3, 3, 5, 19));
    check_qkv_windows(test, Precision::Tf32, (41, 2, 4, 8, 67));
}

#[test]
fn qkv_projection_bf16_writes_each_heads_window_layout() {
    let test = "qkv_projection_bf16_writes_each_heads_window_layout";
    check_qkv_windows(test, Precision::Bf16, (23, 3, 3, 5, 19));
    check_qkv_windows(test, Precision::Bf16, (41, 2, 4, 8, 67));
}

/// `(tokens, batch, heads, hd, k)`: the QKV projection into each head's window layout.
fn check_qkv_windows(
    test: &str,
    precision: Precision,
    (tokens, batch, heads, hd, k): (usize, usize, usize, usize, usize),
) {
    let Some(gpu) = gpu_or_skip(test) else {
        return;
    };
    let s = gpu.stream();
    let kernels = LinearKernels::load_precision(&gpu, precision).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (c, n) = (heads * hd, tokens * batch);
    let m = 3 * c;
    let (x, w, bias) = (
        random(&mut rng, n * k),
        random(&mut rng, m * k),
        random(&mut rng, m),
    );
    // A random token -> slot permutation per head.
    let mut table = Vec::new();
    for _ in 0..heads {
        let mut p: Vec<u32> = (0..tokens as u32).collect();
        p.shuffle(&mut rng);
        table.extend(p);
    }
    let scale = 0.125;
    let y = linear_cpu(&x, &w, &bias, n, m, k);
    let mut want = vec![f32::NAN; 3 * n * c];
    for r in 0..n {
        let (t, b) = (r / batch, r % batch);
        for col in 0..m {
            let (which, h, ch) = (col / c, (col % c) / hd, col % hd);
            let slot = table[h * tokens + t] as usize;
            let v = if which == 0 {
                y[r * m + col] * scale as f64
            } else {
                y[r * m + col]
            };
            want[(((which * heads + h) * batch + b) * tokens + slot) * hd + ch] = v as f32;
        }
    }
    let (dx, dw, db, dt) = (
        gpu::upload(s, &x).unwrap(),
        gpu::upload(s, &w).unwrap(),
        gpu::upload(s, &bias).unwrap(),
        gpu::upload(s, &table).unwrap(),
    );
    let mut out = poisoned(&gpu, 3 * n * c);
    let epilogue = Epilogue::QkvWindows {
        token_slot: &dt,
        batch,
        heads,
        scale,
    };
    kernels
        .run(s, &dx, &dw, &db, (n, m, k), &mut out, epilogue)
        .unwrap();
    assert_within(
        &format!("qkv windows, {precision} ({tokens}, {batch}, {heads}, {hd}, {k})"),
        &gpu::download(s, &out).unwrap(),
        &want,
        linear_tolerance(precision),
    );
}

/// `LN(v) * gamma + beta` per row of `c`, in f64.
fn layer_norm_cpu(v: &[f64], gamma: &[f32], beta: &[f32], c: usize, eps: f32) -> Vec<f32> {
    let mut y = vec![0.0f32; v.len()];
    for (row, out) in v.chunks(c).zip(y.chunks_mut(c)) {
        let mean = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / c as f64;
        for j in 0..c {
            let z = (row[j] - mean) / (var + eps as f64).sqrt();
            out[j] = (z * gamma[j] as f64 + beta[j] as f64) as f32;
        }
    }
    y
}

#[test]
fn layer_norm_matches_a_cpu_loop() {
    let Some(gpu) = gpu_or_skip("layer_norm_matches_a_cpu_loop") else {
        return;
    };
    let s = gpu.stream();
    let kernel = LayerNormKernel::load(&gpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // 37 rows: the last block has idle warps; c = 100 is not a multiple of 32.
    let (rows, c, parts, eps) = (37, 100, 3, 1e-5f32);
    let x: Vec<f32> = random(&mut rng, parts * rows * c)
        .iter()
        .map(|v| 3.0 * v + 0.5)
        .collect();
    let (gamma, beta, bias, residual, add) = (
        random(&mut rng, c),
        random(&mut rng, c),
        random(&mut rng, c),
        random(&mut rng, rows * c),
        random(&mut rng, rows * c),
    );
    let up = |v: &[f32]| gpu::upload(s, v).unwrap();
    let (dx, dg, db, dbias, dres, dadd) = (
        up(&x),
        up(&gamma),
        up(&beta),
        up(&bias),
        up(&residual),
        up(&add),
    );

    // Plain LayerNorm of the first part, with the fused `+ add`.
    let first: Vec<f64> = x[..rows * c].iter().map(|&v| v as f64).collect();
    let want = layer_norm_cpu(&first, &gamma, &beta, c, eps);
    let want_plus: Vec<f32> = want.iter().zip(&add).map(|(a, b)| a + b).collect();
    let mut y = poisoned(&gpu, rows * c);
    let mut y_plus = poisoned(&gpu, rows * c);
    let plain = NormInput::of(dx.slice(..rows * c));
    let plus = Some((dadd.as_view(), y_plus.as_view_mut()));
    kernel.run(s, plain, &dg, &db, eps, &mut y, plus).unwrap();
    assert_close("layer norm", &gpu::download(s, &y).unwrap(), &want);
    assert_close("+ add", &gpu::download(s, &y_plus).unwrap(), &want_plus);

    // The linear epilogue: LN(part 0 + part 1 + part 2 + bias + residual).
    let sum: Vec<f64> = (0..rows * c)
        .map(|e| {
            let parts_sum: f64 = (0..parts).map(|p| x[p * rows * c + e] as f64).sum();
            parts_sum + bias[e % c] as f64 + residual[e] as f64
        })
        .collect();
    let want = layer_norm_cpu(&sum, &gamma, &beta, c, eps);
    let mut y = poisoned(&gpu, rows * c);
    let input = NormInput {
        parts: dx.as_view(),
        n_parts: parts,
        bias: Some(dbias.as_view()),
        residual: Some(dres.as_view()),
    };
    kernel.run(s, input, &dg, &db, eps, &mut y, None).unwrap();
    assert_close(
        "parts + bias + residual",
        &gpu::download(s, &y).unwrap(),
        &want,
    );
}

/// One window-attention problem with its CPU answer.
struct AttentionCase {
    shape: AttentionShape,
    q: Vec<f32>,
    q_layout: SlotLayout,
    k: Vec<f32>,
    v: Vec<f32>,
    kv_layout: SlotLayout,
    bias: Option<Vec<f32>>,
    key_pad: Vec<u8>,
    sr: Vec<f32>,
    slot_token: Option<Vec<u32>>,
    out_row: usize,
    out_channel: usize,
}

impl AttentionCase {
    /// Single-head encoder-style case: slots in window layout `(batch, n_keys, hd)`.
    fn window(rng: &mut ChaCha8Rng, w: usize, hd: usize, windows: usize, batch: usize) -> Self {
        let ww = w * w;
        let n_keys = windows * ww;
        let len = batch * n_keys * hd;
        let mut key_pad: Vec<u8> = (0..batch * windows)
            .flat_map(|_| {
                let pad = u8::from(rng.random_bool(0.3));
                std::iter::repeat_n(pad, ww)
            })
            .collect();
        // Keep one key window per batch item unpadded (a fully masked row is NaN).
        for b in 0..batch {
            key_pad[b * n_keys..b * n_keys + ww].fill(0);
        }
        let mut perm: Vec<u32> = (0..n_keys as u32).collect();
        perm.shuffle(rng);
        let (out_row, out_channel) = (hd + 3, 2);
        AttentionCase {
            shape: AttentionShape {
                w,
                hd,
                n_queries: n_keys,
                n_keys,
                batch,
                heads: 1,
                head_stride: 0,
            },
            q: random(rng, len),
            q_layout: SlotLayout {
                batch: n_keys * hd,
                slot: hd,
            },
            k: random(rng, len),
            v: random(rng, len),
            kv_layout: SlotLayout {
                batch: n_keys * hd,
                slot: hd,
            },
            bias: (w <= 4).then(|| random(rng, windows * n_keys)),
            key_pad,
            sr: random(rng, ww),
            slot_token: Some(perm),
            out_row,
            out_channel,
        }
    }

    /// Returns `(out, head_out)` as the kernel should write them (`out` NaN where untouched).
    fn expected(&self) -> (Vec<f32>, Vec<f32>) {
        let s = &self.shape;
        let (w, hd, ww) = (s.w, s.hd, s.w * s.w);
        let tokens = if self.slot_token.is_some() {
            s.n_keys
        } else {
            s.n_queries
        };
        let mut out = vec![f32::NAN; tokens * s.batch * self.out_row];
        let mut head_out = vec![f32::NAN; s.batch * s.n_queries * hd];
        let at = |layout: SlotLayout, b: usize, slot: usize, z: usize| {
            b * layout.batch + slot * layout.slot + z * s.head_stride
        };
        for z in 0..s.heads {
            for b in 0..s.batch {
                for i in 0..s.n_queries / ww {
                    let mut scores = vec![0.0f64; s.n_keys];
                    for (col, sc) in scores.iter_mut().enumerate() {
                        let (l, a, e) = (col / ww, (col % ww) / w, col % w);
                        let mut dot = 0.0f64;
                        for pos in 0..ww {
                            let (r, c) = (pos / w, pos % w);
                            let src = ((r + w - a) % w) * w + (c + w - e) % w;
                            let qo = at(self.q_layout, b, i * ww + pos, z);
                            let ko = at(self.kv_layout, b, l * ww + src, z);
                            for ch in 0..hd {
                                dot += self.q[qo + ch] as f64 * self.k[ko + ch] as f64;
                            }
                        }
                        if w > 1 {
                            dot = (dot + self.sr[col % ww] as f64) / ww as f64;
                        }
                        if self.key_pad[b * s.n_keys + col] != 0 {
                            dot = f64::NEG_INFINITY;
                        }
                        if let Some(bias) = &self.bias {
                            dot += bias[i * s.n_keys + col] as f64;
                        }
                        *sc = dot;
                    }
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = scores.iter().map(|x| (x - max).exp()).sum();
                    for pos in 0..ww {
                        let (r, c) = (pos / w, pos % w);
                        for ch in 0..hd {
                            let mut o = 0.0f64;
                            for (col, sc) in scores.iter().enumerate() {
                                let (l, a, e) = (col / ww, (col % ww) / w, col % w);
                                let src = ((r + w - a) % w) * w + (c + w - e) % w;
                                let vo = at(self.kv_layout, b, l * ww + src, z);
                                o += (sc - max).exp() / sum * self.v[vo + ch] as f64;
                            }
                            let slot = i * ww + pos;
                            let token = self.slot_token.as_ref().map_or(slot, |t| t[slot] as usize);
                            let dst = (token * s.batch + b) * self.out_row
                                + self.out_channel
                                + z * hd
                                + ch;
                            out[dst] = o as f32;
                            head_out[(b * s.n_queries + slot) * hd + ch] = o as f32;
                        }
                    }
                }
            }
        }
        (out, head_out)
    }

    /// The case's operands on the device, outputs poisoned (NaN).
    fn upload(&self, gpu: &Gpu) -> OnDevice {
        let st = gpu.stream();
        let up = |v: &[f32]| gpu::upload(st, v).unwrap();
        let (want_out, want_head) = self.expected();
        OnDevice {
            q: up(&self.q),
            k: up(&self.k),
            v: up(&self.v),
            bias: self.bias.as_ref().map(|b| up(b)),
            sr: up(&self.sr),
            pad: gpu::upload(st, &self.key_pad).unwrap(),
            slot_token: self
                .slot_token
                .as_ref()
                .map(|t| gpu::upload(st, t).unwrap()),
            out: poisoned(gpu, want_out.len()),
            head_out: poisoned(gpu, want_head.len()),
        }
    }

    fn operands<'a>(&self, d: &'a mut OnDevice, with_head_out: bool) -> AttentionOperands<'a> {
        AttentionOperands {
            q: d.q.as_view(),
            q_layout: self.q_layout,
            k: d.k.as_view(),
            v: d.v.as_view(),
            kv_layout: self.kv_layout,
            bias: d.bias.as_ref().map(|b| b.as_view()),
            key_pad: d.pad.as_view(),
            sr: Some(d.sr.as_view()),
            slot_token: d.slot_token.as_ref().map(|t| t.as_view()),
            out: d.out.as_view_mut(),
            out_row: self.out_row,
            out_channel: self.out_channel,
            head_out: with_head_out.then(|| d.head_out.as_view_mut()),
        }
    }

    fn run_on(
        &self,
        gpu: &Gpu,
        kernel: &WindowAttentionKernel,
        with_head_out: bool,
    ) -> (Vec<f32>, Vec<f32>) {
        let st = gpu.stream();
        let mut d = self.upload(gpu);
        kernel
            .run(st, &self.shape, self.operands(&mut d, with_head_out))
            .unwrap();
        d.download(gpu)
    }
}

/// An [`AttentionCase`]'s device buffers.
struct OnDevice {
    q: gpu::DeviceBuffer<f32>,
    k: gpu::DeviceBuffer<f32>,
    v: gpu::DeviceBuffer<f32>,
    bias: Option<gpu::DeviceBuffer<f32>>,
    sr: gpu::DeviceBuffer<f32>,
    pad: gpu::DeviceBuffer<u8>,
    slot_token: Option<gpu::DeviceBuffer<u32>>,
    out: gpu::DeviceBuffer<f32>,
    head_out: gpu::DeviceBuffer<f32>,
}

impl OnDevice {
    /// `(out, head_out)`.
    fn download(&self, gpu: &Gpu) -> (Vec<f32>, Vec<f32>) {
        let st = gpu.stream();
        (
            gpu::download(st, &self.out).unwrap(),
            gpu::download(st, &self.head_out).unwrap(),
        )
    }
}

fn to_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The fused kernel runs heads of different windows and lengths in one launch, each exactly
/// (bit for bit) as its own launch would.
#[test]
fn fused_window_attention_equals_per_head_launches() {
    let Some(gpu) = gpu_or_skip("fused_window_attention_equals_per_head_launches") else {
        return;
    };
    let kernel = WindowAttentionKernel::load(&gpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let st = gpu.stream();
    for (hd, batch) in [(16, 2), (32, 1)] {
        // (w, windows): 1..4 query tiles each, partial last tiles.
        let cases: Vec<AttentionCase> = [(1, 37), (2, 13), (4, 5), (8, 3), (2, 40)]
            .into_iter()
            .map(|(w, windows)| AttentionCase::window(&mut rng, w, hd, windows, batch))
            .collect();
        let alone: Vec<_> = cases
            .iter()
            .map(|c| c.run_on(&gpu, &kernel, true))
            .collect();
        let mut dev: Vec<OnDevice> = cases.iter().map(|c| c.upload(&gpu)).collect();
        let sets: Vec<_> = cases
            .iter()
            .zip(dev.iter_mut())
            .map(|(c, d)| kernel.prepare(st, &c.shape, c.operands(d, true)).unwrap())
            .collect();
        kernel.launch_fused(st, &sets).unwrap();
        for ((case, d), (out, head_out)) in cases.iter().zip(&dev).zip(&alone) {
            let w = case.shape.w;
            let (fused_out, fused_head) = d.download(&gpu);
            assert_eq!(to_bits(&fused_out), to_bits(out), "hd={hd} w={w}: out");
            assert_eq!(
                to_bits(&fused_head),
                to_bits(head_out),
                "hd={hd} w={w}: head_out"
            );
            let (want_out, _) = case.expected();
            assert_written_exactly(&format!("fused hd={hd} w={w}"), &fused_out, &want_out);
        }
    }
}

#[test]
fn fused_window_attention_rejects_mixed_head_widths() {
    let Some(gpu) = gpu_or_skip("fused_window_attention_rejects_mixed_head_widths") else {
        return;
    };
    let kernel = WindowAttentionKernel::load(&gpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let st = gpu.stream();
    let cases = [
        AttentionCase::window(&mut rng, 2, 16, 4, 1),
        AttentionCase::window(&mut rng, 2, 32, 4, 1),
    ];
    let mut dev: Vec<OnDevice> = cases.iter().map(|c| c.upload(&gpu)).collect();
    let sets: Vec<_> = cases
        .iter()
        .zip(dev.iter_mut())
        .map(|(c, d)| kernel.prepare(st, &c.shape, c.operands(d, false)).unwrap())
        .collect();
    let err = kernel.launch_fused(st, &sets).unwrap_err().to_string();
    assert!(err.contains("share head width"), "{err}");
    let err = kernel.launch_fused(st, &[]).unwrap_err().to_string();
    assert!(err.contains("no attention"), "{err}");
}

/// Compares where the expected value is written, and requires NaN (untouched) elsewhere.
fn assert_written_exactly(what: &str, got: &[f32], want: &[f32]) {
    let (mut g, mut w) = (Vec::new(), Vec::new());
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        if b.is_nan() {
            assert!(
                a.is_nan(),
                "{what}: element {i} should be untouched, found {a}"
            );
        } else {
            g.push(a);
            w.push(b);
        }
    }
    assert_close(what, &g, &w);
}

#[test]
fn window_attention_matches_a_cpu_loop_for_every_window() {
    let Some(gpu) = gpu_or_skip("window_attention_matches_a_cpu_loop_for_every_window") else {
        return;
    };
    let kernel = WindowAttentionKernel::load(&gpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    // (w, hd, windows, batch): window counts whose slots leave the last 64-slot query tile
    // and key chunk partly empty (37, 52, 80 slots), and w = 8 over several tiles.
    let cases = [
        (1, 8, 37, 2),
        (2, 16, 13, 3),
        (4, 64, 5, 2),
        (8, 32, 3, 2),
        (8, 8, 13, 1),
    ];
    for (w, hd, windows, batch) in cases {
        let case = AttentionCase::window(&mut rng, w, hd, windows, batch);
        let (want_out, want_head) = case.expected();
        let (out, head_out) = case.run_on(&gpu, &kernel, true);
        assert_written_exactly(&format!("w={w} out"), &out, &want_out);
        assert_close(&format!("w={w} head_out"), &head_out, &want_head);
        // Without head_out, the same result.
        let (out2, _) = case.run_on(&gpu, &kernel, false);
        assert_eq!(
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            out2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "w={w}: head_out must not change out"
        );
    }
}

#[test]
fn attention_of_one_query_over_token_rows_with_several_heads() {
    let Some(gpu) = gpu_or_skip("attention_of_one_query_over_token_rows_with_several_heads") else {
        return;
    };
    let kernel = WindowAttentionKernel::load(&gpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    // The decoder's cross attention: one query, keys are (tokens, batch, c) rows of a wider
    // buffer (stride `row`), heads `hd` channels apart.
    let (heads, hd, tokens, batch) = (3, 8, 45, 2);
    let c = heads * hd;
    let row = 2 * c + 4;
    let mut key_pad: Vec<u8> = (0..batch * tokens)
        .map(|_| u8::from(rng.random_bool(0.4)))
        .collect();
    key_pad[0] = 0;
    key_pad[tokens] = 0;
    let kv = random(&mut rng, tokens * batch * row);
    let case = AttentionCase {
        shape: AttentionShape {
            w: 1,
            hd,
            n_queries: 1,
            n_keys: tokens,
            batch,
            heads,
            head_stride: hd,
        },
        q: random(&mut rng, batch * c),
        q_layout: SlotLayout { batch: c, slot: 0 },
        k: kv.clone(),
        v: kv[c..].to_vec(),
        kv_layout: SlotLayout {
            batch: row,
            slot: batch * row,
        },
        bias: None,
        key_pad,
        sr: vec![0.0],
        slot_token: None,
        out_row: c,
        out_channel: 0,
    };
    let (want_out, _) = case.expected();
    let (out, _) = case.run_on(&gpu, &kernel, false);
    assert_written_exactly("one query", &out, &want_out);
}

#[test]
fn window_attention_rejects_unsupported_shapes() {
    let Some(gpu) = gpu_or_skip("window_attention_rejects_unsupported_shapes") else {
        return;
    };
    let kernel = WindowAttentionKernel::load(&gpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    // hd = 6 does not divide the 256 threads: an error naming the kernel, nothing launched.
    let case = AttentionCase::window(&mut rng, 2, 6, 3, 1);
    let st = gpu.stream();
    let up = |v: &[f32]| gpu::upload(st, v).unwrap();
    let (q, k, v, sr) = (up(&case.q), up(&case.k), up(&case.v), up(&case.sr));
    let pad = gpu::upload(st, &case.key_pad).unwrap();
    let mut out = poisoned(&gpu, case.shape.n_keys * case.out_row);
    let ops = AttentionOperands {
        q: q.as_view(),
        q_layout: case.q_layout,
        k: k.as_view(),
        v: v.as_view(),
        kv_layout: case.kv_layout,
        bias: None,
        key_pad: pad.as_view(),
        sr: Some(sr.as_view()),
        slot_token: None,
        out: out.as_view_mut(),
        out_row: case.out_row,
        out_channel: case.out_channel,
        head_out: None,
    };
    let err = kernel.run(st, &case.shape, ops).unwrap_err().to_string();
    assert!(
        err.contains("window_attention") && err.contains("head width 6"),
        "{err}"
    );
}
