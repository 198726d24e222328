//! `kernels/window_attention.cu` against `window_attention::cpu`, in every precision (f32 exact
//! FMAs, tf32 and bf16 tensor cores) held to the precision's tolerance: every window size,
//! head widths with and without a variant of their own (1, 4, 5, 17, 33, 100, 128: padded to
//! 16, 32, 64 or 128 channels), key splits (several blocks per query tile merged by the last),
//! partial query tiles and key chunks, padded keys, batch > 1, and the decoder's one query over
//! token rows with several heads. Outputs and split workspaces are poisoned (NaN) first, so an
//! unwritten element fails; each case runs twice on one split workspace (the counters must
//! come back to zero) and must give the same bits. The fused launch equals per-head launches
//! bit for bit. Then shape errors, and the backward.

use attnrt::base::Precision;
use attnrt::gpu::{self, Gpu, testing::gpu_or_skip};
use attnrt::kernels::window_attention::cpu::{Head, window_attention, window_attention_backward};
use attnrt::kernels::window_attention::{
    AttentionOperands, AttentionShape, BackwardHead, BackwardOperands, BackwardOutputs, KeySplit,
    SlotLayout, WindowAttentionKernels,
};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::{assert_within, down, poisoned, random, rng, to_bits, up};

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

    /// The decoder's cross attention: one query, keys are `(tokens, batch, row)` rows of a
    /// wider buffer, heads `hd` channels apart.
    fn one_query(
        rng: &mut ChaCha8Rng,
        heads: usize,
        hd: usize,
        tokens: usize,
        batch: usize,
    ) -> Self {
        let c = heads * hd;
        let row = 2 * c + 4;
        let mut key_pad: Vec<u8> = (0..batch * tokens)
            .map(|_| u8::from(rng.random_bool(0.4)))
            .collect();
        for b in 0..batch {
            key_pad[b * tokens] = 0;
        }
        let kv = random(rng, tokens * batch * row);
        AttentionCase {
            shape: AttentionShape {
                w: 1,
                hd,
                n_queries: 1,
                n_keys: tokens,
                batch,
                heads,
                head_stride: hd,
            },
            q: random(rng, batch * c),
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

    /// The case's operands on the device, outputs and split workspace poisoned (NaN).
    fn upload(&self, gpu: &Gpu, splits: usize) -> OnDevice {
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
            splits,
            partial: poisoned(gpu, KeySplit::partial_len(&self.shape, splits).max(1)),
            arrived: st
                .alloc_zeros::<u32>(KeySplit::arrived_len(&self.shape))
                .unwrap(),
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
            split: (d.splits > 1).then(|| KeySplit {
                splits: d.splits,
                partial: d.partial.as_view_mut(),
                arrived: d.arrived.as_view_mut(),
            }),
        }
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
    splits: usize,
    partial: gpu::DeviceBuffer<f32>,
    arrived: gpu::DeviceBuffer<u32>,
}

impl OnDevice {
    /// `(out, head_out)`.
    fn download(&self, gpu: &Gpu) -> (Vec<f32>, Vec<f32>) {
        (down(gpu, &self.out), down(gpu, &self.head_out))
    }

    fn counters(&self, gpu: &Gpu) -> Vec<u32> {
        gpu::download(gpu.stream(), &self.arrived).unwrap()
    }
}

/// Compares where the expected value is written, and requires NaN (untouched) elsewhere.
fn assert_written_exactly(what: &str, got: &[f32], want: &[f32], tol: f64) {
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
    assert_within(what, &g, &w, tol);
}

/// Runs `case` twice on one workspace (re-poisoning the outputs) and checks both runs: the
/// values against the CPU loop, untouched elements, counters back at zero, equal bits.
fn check_case(
    gpu: &Gpu,
    kernel: &WindowAttentionKernels,
    what: &str,
    case: &AttentionCase,
    splits: usize,
) {
    let tol = kernel.precision().tolerance();
    let (want_out, want_head) = case.expected();
    let single = case.shape.heads == 1;
    let st = gpu.stream();
    let mut d = case.upload(gpu, splits);
    let mut first = None;
    for run in 0..2 {
        gpu::poison_nan(st, &mut d.out).unwrap();
        gpu::poison_nan(st, &mut d.head_out).unwrap();
        let prepared = kernel
            .prepare(st, &case.shape, case.operands(&mut d, single))
            .unwrap();
        assert!(
            (1..=splits.max(1)).contains(&prepared.splits()),
            "{what}: splits"
        );
        kernel.launch(st, &prepared).unwrap();
        let (out, head_out) = d.download(gpu);
        let what = format!(
            "{what} ({}, run {run}, {} splits)",
            kernel.precision(),
            prepared.splits()
        );
        assert_written_exactly(&what, &out, &want_out, tol);
        if single {
            assert_written_exactly(&format!("{what} head_out"), &head_out, &want_head, tol);
        }
        assert!(
            d.counters(gpu).iter().all(|&c| c == 0),
            "{what}: split counters not reset"
        );
        match &first {
            None => first = Some(to_bits(&out)),
            Some(bits) => assert_eq!(bits, &to_bits(&out), "{what}: runs differ"),
        }
    }
}

/// Every precision, window size and a spread of head widths (padded to each variant), with
/// and without key splits, partial tiles and chunks, padding and batch > 1.
#[test]
fn every_precision_window_and_width_matches_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("every_precision_window_and_width_matches_the_cpu_reference")
    else {
        return;
    };
    let mut rng = rng(16);
    // (w, hd, windows, batch, splits): 37, 52, 80 slots leave the last tile and chunk partly
    // empty; 150 w = 1 windows are three chunks; w = 8 spans several tiles. w = 1 and 2 run
    // the rows body in bf16 at every variant's width, padded (8, 20, 40, 5, 1, 100) or not.
    let cases = [
        (1, 8, 37, 2, 1),
        (1, 32, 150, 1, 1),
        (1, 32, 150, 2, 3),
        (1, 20, 77, 2, 2),
        (1, 40, 130, 1, 3),
        (1, 128, 70, 1, 2),
        (2, 16, 13, 3, 1),
        (2, 5, 40, 2, 2),
        (2, 1, 20, 1, 1),
        (2, 100, 20, 1, 2),
        (4, 64, 5, 2, 1),
        (4, 4, 13, 2, 4),
        (4, 33, 9, 1, 2),
        (8, 32, 3, 2, 1),
        (8, 8, 13, 1, 5),
        (8, 17, 4, 2, 4),
    ];
    for precision in Precision::ALL {
        let kernel = WindowAttentionKernels::load_precision(&gpu, precision).unwrap();
        for (w, hd, windows, batch, splits) in cases {
            let case = AttentionCase::window(&mut rng, w, hd, windows, batch);
            check_case(
                &gpu,
                &kernel,
                &format!("w={w} hd={hd} windows={windows} batch={batch}"),
                &case,
                splits,
            );
        }
    }
}

/// The decoder's cross attention (one query, token rows, several heads), unsplit and split
/// into one block per key chunk (704 keys: the released size).
#[test]
fn one_query_over_token_rows_with_several_heads() {
    let Some(gpu) = gpu_or_skip("one_query_over_token_rows_with_several_heads") else {
        return;
    };
    let mut rng = rng(17);
    for precision in Precision::ALL {
        let kernel = WindowAttentionKernels::load_precision(&gpu, precision).unwrap();
        for (heads, hd, tokens, batch, splits) in
            [(3, 8, 45, 2, 1), (8, 32, 704, 2, 11), (2, 4, 300, 1, 3)]
        {
            let case = AttentionCase::one_query(&mut rng, heads, hd, tokens, batch);
            let what = format!("one query, {heads} heads of {hd}, {tokens} keys, batch {batch}");
            check_case(&gpu, &kernel, &what, &case, splits);
        }
    }
}

/// The fused launch runs heads of different windows, lengths and splits in one launch, each
/// exactly (bit for bit) as its own launch would.
#[test]
fn fused_launch_equals_per_head_launches() {
    let Some(gpu) = gpu_or_skip("fused_launch_equals_per_head_launches") else {
        return;
    };
    let mut rng = rng(18);
    let st = gpu.stream();
    for precision in Precision::ALL {
        let kernel = WindowAttentionKernels::load_precision(&gpu, precision).unwrap();
        for (hd, batch) in [(16, 2), (32, 1), (24, 1)] {
            // (w, windows, splits): 1..4 query tiles each, partial last tiles.
            let cases: Vec<(AttentionCase, usize)> = [
                (1, 200, 3),
                (2, 13, 1),
                (4, 5, 2),
                (8, 3, 3),
                (2, 40, 2),
                (1, 37, 1),
            ]
            .into_iter()
            .map(|(w, windows, splits)| {
                (
                    AttentionCase::window(&mut rng, w, hd, windows, batch),
                    splits,
                )
            })
            .collect();
            let mut alone = Vec::new();
            for (c, splits) in &cases {
                let mut d = c.upload(&gpu, *splits);
                kernel.run(st, &c.shape, c.operands(&mut d, true)).unwrap();
                alone.push(d.download(&gpu));
            }
            let mut dev: Vec<OnDevice> = cases.iter().map(|(c, s)| c.upload(&gpu, *s)).collect();
            let sets: Vec<_> = cases
                .iter()
                .zip(dev.iter_mut())
                .map(|((c, _), d)| kernel.prepare(st, &c.shape, c.operands(d, true)).unwrap())
                .collect();
            kernel.launch_fused(st, &sets).unwrap();
            for (((case, _), d), (out, head_out)) in cases.iter().zip(&dev).zip(&alone) {
                let w = case.shape.w;
                let (fused_out, fused_head) = d.download(&gpu);
                let what = format!("fused {precision} hd={hd} w={w}");
                assert_eq!(to_bits(&fused_out), to_bits(out), "{what}: out");
                assert_eq!(to_bits(&fused_head), to_bits(head_out), "{what}: head_out");
                let (want_out, _) = case.expected();
                assert_written_exactly(&what, &fused_out, &want_out, precision.tolerance());
                assert!(d.counters(&gpu).iter().all(|&c| c == 0), "{what}: counters");
            }
        }
    }
}

/// Head widths past 128 and windows that are not a power of two are errors naming the
/// kernel; a split workspace too small is an error naming it; fused sets of different
/// variants are refused. Nothing is launched.
#[test]
fn unsupported_shapes_and_small_workspaces_are_errors() {
    let Some(gpu) = gpu_or_skip("unsupported_shapes_and_small_workspaces_are_errors") else {
        return;
    };
    let kernel = WindowAttentionKernels::load(&gpu).unwrap();
    let mut rng = rng(19);
    let st = gpu.stream();
    let wide = AttentionCase::window(&mut rng, 2, 129, 3, 1);
    let mut d = wide.upload(&gpu, 1);
    let err = kernel
        .run(st, &wide.shape, wide.operands(&mut d, false))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("window_attention") && err.contains("head width 129"),
        "{err}"
    );

    let case = AttentionCase::window(&mut rng, 1, 16, 200, 1);
    let mut d = case.upload(&gpu, 1);
    let mut ops = case.operands(&mut d, false);
    let mut small = poisoned(&gpu, 10);
    let mut arrived = st.alloc_zeros::<u32>(4).unwrap();
    ops.split = Some(KeySplit {
        splits: 3,
        partial: small.as_view_mut(),
        arrived: arrived.as_view_mut(),
    });
    let err = kernel.run(st, &case.shape, ops).unwrap_err().to_string();
    assert!(err.contains("split partial"), "{err}");

    let narrow = AttentionCase::window(&mut rng, 2, 16, 4, 1);
    let broad = AttentionCase::window(&mut rng, 2, 17, 4, 1);
    let (mut dn, mut db) = (narrow.upload(&gpu, 1), broad.upload(&gpu, 1));
    let sets = [
        kernel
            .prepare(st, &narrow.shape, narrow.operands(&mut dn, false))
            .unwrap(),
        kernel
            .prepare(st, &broad.shape, broad.operands(&mut db, false))
            .unwrap(),
    ];
    let err = kernel.launch_fused(st, &sets).unwrap_err().to_string();
    assert!(err.contains("share head width"), "{err}");
    let err = kernel.launch_fused(st, &[]).unwrap_err().to_string();
    assert!(err.contains("no attention"), "{err}");
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
