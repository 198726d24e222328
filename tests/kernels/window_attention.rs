//! `kernels/window_attention.cu` against `window_attention::cpu`: every window size and head
//! width in the encoder's layout, one query over token rows with several heads (the decoder),
//! the fused launch bit for bit equal to per-head launches, shape errors, and the backward.

use attnrt::gpu::{self, Gpu, testing::gpu_or_skip};
use attnrt::kernels::window_attention::cpu::{Head, window_attention, window_attention_backward};
use attnrt::kernels::window_attention::{
    AttentionOperands, AttentionShape, BackwardHead, BackwardOperands, BackwardOutputs, SlotLayout,
    WindowAttentionKernels,
};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::{assert_close, assert_within, down, poisoned, random, rng, to_bits, up};

/// One window-attention problem in the kernel's layouts.
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

    /// `(out, head_out)` as the kernel should write them (`out` NaN where untouched): the
    /// reference per head and batch item, on q, k, v gathered from the layouts.
    fn expected(&self) -> (Vec<f32>, Vec<f32>) {
        let s = &self.shape;
        let hd = s.hd;
        let tokens = if self.slot_token.is_some() {
            s.n_keys
        } else {
            s.n_queries
        };
        let mut out = vec![f32::NAN; tokens * s.batch * self.out_row];
        let mut head_out = vec![f32::NAN; s.batch * s.n_queries * hd];
        let gather = |x: &[f32], layout: SlotLayout, b: usize, z: usize, slots: usize| {
            (0..slots)
                .flat_map(|slot| {
                    let at = b * layout.batch + slot * layout.slot + z * s.head_stride;
                    x[at..at + hd].to_vec()
                })
                .collect::<Vec<f32>>()
        };
        for z in 0..s.heads {
            for b in 0..s.batch {
                let o = window_attention(&Head {
                    w: s.w,
                    hd,
                    q: &gather(&self.q, self.q_layout, b, z, s.n_queries),
                    k: &gather(&self.k, self.kv_layout, b, z, s.n_keys),
                    v: &gather(&self.v, self.kv_layout, b, z, s.n_keys),
                    sr: &self.sr,
                    key_pad: Some(&self.key_pad[b * s.n_keys..(b + 1) * s.n_keys]),
                    bias: self.bias.as_deref(),
                });
                for slot in 0..s.n_queries {
                    let token = self.slot_token.as_ref().map_or(slot, |t| t[slot] as usize);
                    let dst = (token * s.batch + b) * self.out_row + self.out_channel + z * hd;
                    out[dst..dst + hd].copy_from_slice(&o[slot * hd..(slot + 1) * hd]);
                    let h = (b * s.n_queries + slot) * hd;
                    head_out[h..h + hd].copy_from_slice(&o[slot * hd..(slot + 1) * hd]);
                }
            }
        }
        (out, head_out)
    }

    /// The case's operands on the device, outputs poisoned (NaN).
    fn upload(&self, gpu: &Gpu) -> OnDevice {
        let st = gpu.stream();
        let (want_out, want_head) = self.expected();
        OnDevice {
            q: up(gpu, &self.q),
            k: up(gpu, &self.k),
            v: up(gpu, &self.v),
            bias: self.bias.as_ref().map(|b| up(gpu, b)),
            sr: up(gpu, &self.sr),
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
        kernels: &WindowAttentionKernels,
        with_head_out: bool,
    ) -> (Vec<f32>, Vec<f32>) {
        let mut d = self.upload(gpu);
        kernels
            .run(
                gpu.stream(),
                &self.shape,
                self.operands(&mut d, with_head_out),
            )
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
        (down(gpu, &self.out), down(gpu, &self.head_out))
    }
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
fn window_attention_matches_the_cpu_reference_for_every_window() {
    let test = "window_attention_matches_the_cpu_reference_for_every_window";
    let Some(gpu) = gpu_or_skip(test) else {
        return;
    };
    let kernels = WindowAttentionKernels::load(&gpu).unwrap();
    let mut rng = rng(8);
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
        let (out, head_out) = case.run_on(&gpu, &kernels, true);
        assert_written_exactly(&format!("w={w} out"), &out, &want_out);
        assert_close(&format!("w={w} head_out"), &head_out, &want_head);
        // Without head_out, the same result.
        let (out2, _) = case.run_on(&gpu, &kernels, false);
        assert_eq!(
            to_bits(&out),
            to_bits(&out2),
            "w={w}: head_out must not change out"
        );
    }
}

/// The fused kernel runs heads of different windows and lengths in one launch, each exactly
/// (bit for bit) as its own launch would.
#[test]
fn window_attention_fused_equals_per_head_launches() {
    let Some(gpu) = gpu_or_skip("window_attention_fused_equals_per_head_launches") else {
        return;
    };
    let kernels = WindowAttentionKernels::load(&gpu).unwrap();
    let mut rng = rng(9);
    let st = gpu.stream();
    for (hd, batch) in [(16, 2), (32, 1)] {
        // (w, windows): 1..4 query tiles each, partial last tiles.
        let cases: Vec<AttentionCase> = [(1, 37), (2, 13), (4, 5), (8, 3), (2, 40)]
            .into_iter()
            .map(|(w, windows)| AttentionCase::window(&mut rng, w, hd, windows, batch))
            .collect();
        let alone: Vec<_> = cases
            .iter()
            .map(|c| c.run_on(&gpu, &kernels, true))
            .collect();
        let mut dev: Vec<OnDevice> = cases.iter().map(|c| c.upload(&gpu)).collect();
        let sets: Vec<_> = cases
            .iter()
            .zip(dev.iter_mut())
            .map(|(c, d)| kernels.prepare(st, &c.shape, c.operands(d, true)).unwrap())
            .collect();
        kernels.launch_fused(st, &sets).unwrap();
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
fn window_attention_fused_rejects_mixed_head_widths() {
    let Some(gpu) = gpu_or_skip("window_attention_fused_rejects_mixed_head_widths") else {
        return;
    };
    let kernels = WindowAttentionKernels::load(&gpu).unwrap();
    let mut rng = rng(10);
    let st = gpu.stream();
    let cases = [
        AttentionCase::window(&mut rng, 2, 16, 4, 1),
        AttentionCase::window(&mut rng, 2, 32, 4, 1),
    ];
    let mut dev: Vec<OnDevice> = cases.iter().map(|c| c.upload(&gpu)).collect();
    let sets: Vec<_> = cases
        .iter()
        .zip(dev.iter_mut())
        .map(|(c, d)| kernels.prepare(st, &c.shape, c.operands(d, false)).unwrap())
        .collect();
    let err = kernels.launch_fused(st, &sets).unwrap_err().to_string();
    assert!(err.contains("share head width"), "{err}");
    let err = kernels.launch_fused(st, &[]).unwrap_err().to_string();
    assert!(err.contains("no attention"), "{err}");
}

#[test]
fn window_attention_of_one_query_over_token_rows_with_several_heads() {
    let test = "window_attention_of_one_query_over_token_rows_with_several_heads";
    let Some(gpu) = gpu_or_skip(test) else {
        return;
    };
    let kernels = WindowAttentionKernels::load(&gpu).unwrap();
    let mut rng = rng(9);
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
    let (out, _) = case.run_on(&gpu, &kernels, false);
    assert_written_exactly("one query", &out, &want_out);
}

#[test]
fn window_attention_rejects_unsupported_shapes() {
    let Some(gpu) = gpu_or_skip("window_attention_rejects_unsupported_shapes") else {
        return;
    };
    let kernels = WindowAttentionKernels::load(&gpu).unwrap();
    let mut rng = rng(10);
    // hd = 6 does not divide the 256 threads: an error naming the kernel, nothing launched.
    let case = AttentionCase::window(&mut rng, 2, 6, 3, 1);
    let st = gpu.stream();
    let (q, k, v, sr) = (
        up(&gpu, &case.q),
        up(&gpu, &case.k),
        up(&gpu, &case.v),
        up(&gpu, &case.sr),
    );
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
    let err = kernels.run(st, &case.shape, ops).unwrap_err().to_string();
    assert!(
        err.contains("window_attention") && err.contains("head width 6"),
        "{err}"
    );
}

/// The backward of every head of `n` images on the trainer's `[n, heads, t, hd]` buffers
/// (head `h` with window `sides[h]`), against the reference per image and head: fresh random
/// operands, every output and the scratch poisoned first. The kernels sum in f32 over
/// recomputed probabilities (with the cancellation of `dP - sum p dP`): held to 1e-4.
fn check_backward(gpu: &Gpu, n: usize, t: usize, hd: usize, sides: &[usize], seed: u64) {
    let s = gpu.stream();
    let kernels = WindowAttentionKernels::load(gpu).unwrap();
    let mut rng = rng(seed);
    let heads = sides.len();
    let len = n * heads * t * hd;
    // q arrives pre-scaled; scores of order one keep the softmax away from one-hot.
    let q: Vec<f32> = random(&mut rng, len).iter().map(|v| 0.5 * v).collect();
    let (k, v, dout) = (
        random(&mut rng, len),
        random(&mut rng, len),
        random(&mut rng, len),
    );
    let srs: Vec<Vec<f32>> = sides.iter().map(|w| random(&mut rng, w * w)).collect();
    let (dq_, dk_, dv_, ddout) = (up(gpu, &q), up(gpu, &k), up(gpu, &v), up(gpu, &dout));
    let dsr: Vec<_> = srs.iter().map(|sr| up(gpu, sr)).collect();
    let (mut p, mut ds) = (
        poisoned(gpu, n * heads * t * t),
        poisoned(gpu, n * heads * t * t),
    );
    let (mut dq, mut dk, mut dv) = (poisoned(gpu, len), poisoned(gpu, len), poisoned(gpu, len));
    for (head, &w) in sides.iter().enumerate() {
        let h = BackwardHead {
            n,
            w,
            t,
            hd,
            heads,
            head,
        };
        let x = BackwardOperands {
            q: &dq_,
            k: &dk_,
            v: &dv_,
            dout: &ddout,
            sr: (w > 1).then_some(&dsr[head]),
        };
        let out = BackwardOutputs {
            p: &mut p,
            ds: &mut ds,
            dq: &mut dq,
            dk: &mut dk,
            dv: &mut dv,
        };
        kernels.backward(s, &h, &x, out).unwrap();
    }
    let mut want = [vec![0.0f32; len], vec![0.0; len], vec![0.0; len]];
    let block = t * hd;
    for i in 0..n * heads {
        let at = i * block..(i + 1) * block;
        let w = sides[i % heads];
        let g = window_attention_backward(
            &Head {
                w,
                hd,
                q: &q[at.clone()],
                k: &k[at.clone()],
                v: &v[at.clone()],
                sr: &srs[i % heads],
                key_pad: None,
                bias: None,
            },
            &dout[at.clone()],
        );
        for (to, from) in want.iter_mut().zip([g.dq, g.dk, g.dv]) {
            to[at.clone()].copy_from_slice(&from);
        }
    }
    let label = format!("n {n}, t {t}, hd {hd}, windows {sides:?}");
    for (name, got, want) in [
        ("dq", &dq, &want[0]),
        ("dk", &dk, &want[1]),
        ("dv", &dv, &want[2]),
    ] {
        assert_within(&format!("{name}, {label}"), &down(gpu, got), want, 1e-4);
    }
}

#[test]
fn window_attention_backward_matches_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("window_attention_backward_matches_the_cpu_reference") else {
        return;
    };
    // An 8x8 grid with every window (the last two as the shifted heads' sizes), and 48 slots
    // (not a multiple of the 32 lanes that walk a row), several images.
    check_backward(&gpu, 2, 64, 16, &[1, 2, 4, 8], 21);
    check_backward(&gpu, 3, 48, 8, &[1, 2, 4], 22);
}
