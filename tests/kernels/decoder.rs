//! `kernels/decoder.cu` against `decoder::cpu`, in every precision (f32 FMAs; operands rounded
//! to tf32 and bf16 as the tensor cores round them) held to the precision's tolerance: the
//! released widths on a short memory, odd widths (scalar loads, a head width of 5, ff not a
//! multiple of 4), batch 1, 3 and 9 (two row groups), padded keys, and plans for 1, 132 and
//! 1000 multiprocessors (one k chunk and one key split per product, up to many). Outputs and
//! the workspace are poisoned (NaN) first, so an unwritten element fails; each case runs twice
//! on one workspace (the counters must come back to zero) and must give the same bits. Then
//! shape errors.

use attnrt::base::Precision;
use attnrt::gpu::{Gpu, testing::gpu_or_skip};
use attnrt::kernels::decoder::cpu::decoder_f64;
use attnrt::kernels::decoder::{
    DecoderDims, DecoderIo, DecoderKernels, DecoderPlan, DecoderWeights, DecoderWorkspace,
    LayerRef, LinearRef, LinearSplit, NormRef,
};
use rand_chacha::ChaCha8Rng;

use crate::{TOL, assert_within, down, poisoned, random, rng, to_bits, up};

const EPS: f32 = 1e-5;

fn tolerance(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => TOL,
        p => p.tolerance(),
    }
}

/// Random parameters of `dims` on the host: weights scaled by `in^-0.5` (activations stay
/// near unit size through the layers), LayerNorm gains near 1.
struct HostParams {
    linears: Vec<[(Vec<f32>, Vec<f32>); 6]>,
    norms: Vec<[(Vec<f32>, Vec<f32>); 3]>,
    post: (Vec<f32>, Vec<f32>),
}

impl HostParams {
    fn new(rng: &mut ChaCha8Rng, d: DecoderDims) -> HostParams {
        let mut lin = |out: usize, inp: usize| {
            let s = (inp as f32).powf(-0.5);
            let w = random(rng, out * inp).iter().map(|v| v * s).collect();
            (w, random(rng, out))
        };
        let (c, ff) = (d.c, d.ff);
        let linears = (0..d.layers)
            .map(|_| {
                [
                    lin(c, c),
                    lin(c, c),
                    lin(c, c),
                    lin(c, c),
                    lin(ff, c),
                    lin(c, ff),
                ]
            })
            .collect();
        let mut norm = || {
            let g = random(rng, c).iter().map(|v| 1.0 + 0.2 * v).collect();
            (g, random(rng, c))
        };
        let norms = (0..d.layers).map(|_| [norm(), norm(), norm()]).collect();
        HostParams {
            linears,
            norms,
            post: norm(),
        }
    }

    fn layers(&self) -> Vec<LayerRef<'_>> {
        fn l(p: &(Vec<f32>, Vec<f32>)) -> LinearRef<'_> {
            LinearRef {
                weight: &p.0,
                bias: &p.1,
            }
        }
        fn n(p: &(Vec<f32>, Vec<f32>)) -> NormRef<'_> {
            NormRef {
                gamma: &p.0,
                beta: &p.1,
            }
        }
        self.linears
            .iter()
            .zip(&self.norms)
            .map(|(lin, norm)| LayerRef {
                self_v: l(&lin[0]),
                self_out: l(&lin[1]),
                cross_q: l(&lin[2]),
                cross_out: l(&lin[3]),
                linear1: l(&lin[4]),
                linear2: l(&lin[5]),
                norm1: n(&norm[0]),
                norm2: n(&norm[1]),
                norm3: n(&norm[2]),
            })
            .collect()
    }

    fn post(&self) -> NormRef<'_> {
        NormRef {
            gamma: &self.post.0,
            beta: &self.post.1,
        }
    }
}

fn check(gpu: &Gpu, precision: Precision, d: DecoderDims, batch: usize, sms: usize) {
    let s = gpu.stream();
    let mut rng = rng(17 + (d.c * 31 + batch * 7 + sms) as u64);
    let params = HostParams::new(&mut rng, d);
    let layers = params.layers();
    let mem_kv = random(&mut rng, d.l_all * batch * d.kv_row());
    let qpos = random(&mut rng, batch * d.c);
    // Every fifth key padded (shifted per row); the first key of each row never.
    let key_pad: Vec<u8> = (0..batch * d.l_all)
        .map(|i| u8::from(!i.is_multiple_of(d.l_all) && (i * 3 + i / d.l_all).is_multiple_of(5)))
        .collect();
    let scale = (d.hd() as f64).powf(-0.5);
    let (want_layers, want_hs) = decoder_f64(
        d,
        &layers,
        params.post(),
        &mem_kv,
        &key_pad,
        &qpos,
        batch,
        (scale, EPS as f64),
    );

    let kernels = DecoderKernels::load_precision(gpu, precision).unwrap();
    let weights = DecoderWeights::upload(s, d, &layers, params.post()).unwrap();
    let plan = DecoderPlan::new(d, batch, sms).unwrap();
    let mut work = DecoderWorkspace::new(s, d, plan).unwrap();
    work.poison(s).unwrap();
    let (dmem, dqpos) = (up(gpu, &mem_kv), up(gpu, &qpos));
    let dpad = attnrt::gpu::upload(s, &key_pad).unwrap();
    let mut outs = poisoned(gpu, d.layers * batch * d.c);
    let mut hs = poisoned(gpu, batch * d.c);
    let label = format!("{precision} {d:?} batch {batch}, {sms} SMs ({plan:?})");
    let mut first = None;
    for _ in 0..2 {
        let io = DecoderIo {
            mem_kv: dmem.as_view(),
            key_pad: dpad.as_view(),
            qpos: dqpos.as_view(),
            layers_out: outs.as_view_mut(),
            hs: hs.as_view_mut(),
        };
        kernels
            .run(s, &weights, &mut work, io, scale as f32, EPS)
            .unwrap();
        let (got_layers, got_hs) = (down(gpu, &outs), down(gpu, &hs));
        let tol = tolerance(precision);
        assert_within(&format!("{label}: layers"), &got_layers, &want_layers, tol);
        assert_within(&format!("{label}: hs"), &got_hs, &want_hs, tol);
        let bits = (to_bits(&got_layers), to_bits(&got_hs));
        match &first {
            None => first = Some(bits),
            Some(f) => assert!(*f == bits, "{label}: the second launch gave other bits"),
        }
    }
}

fn released_short() -> DecoderDims {
    DecoderDims {
        c: 256,
        ff: 2048,
        heads: 8,
        layers: 2,
        l_all: 200,
    }
}

fn odd() -> DecoderDims {
    DecoderDims {
        c: 20,
        ff: 30,
        heads: 4,
        layers: 3,
        l_all: 77,
    }
}

fn check_precision(test: &str, precision: Precision) {
    let Some(gpu) = gpu_or_skip(test) else {
        return;
    };
    for (d, batch, sms) in [
        (released_short(), 1, 132),
        (released_short(), 3, 1),
        (released_short(), 9, 1000),
        (odd(), 1, 1000),
        (odd(), 9, 132),
        (odd(), 3, 1),
    ] {
        check(&gpu, precision, d, batch, sms);
    }
}

#[test]
fn decoder_matches_the_cpu_reference() {
    check_precision("decoder_matches_the_cpu_reference", Precision::F32);
}

#[test]
fn decoder_tf32_matches_the_cpu_reference() {
    check_precision("decoder_tf32_matches_the_cpu_reference", Precision::Tf32);
}

#[test]
fn decoder_bf16_matches_the_cpu_reference() {
    check_precision("decoder_bf16_matches_the_cpu_reference", Precision::Bf16);
}

#[test]
fn decoder_plan_fills_the_gpu_at_the_released_size() {
    let d = DecoderDims {
        layers: 6,
        l_all: 704,
        ..released_short()
    };
    let plan = DecoderPlan::new(d, 1, 132).unwrap();
    // One wave of blocks a phase on 132 SMs: c x c projections in 2 k chunks of 128 (64
    // blocks), FFN1 16 columns a block (128), FFN2 4 k chunks of 512 (128), the attention 8
    // heads x 11 key splits of 64 (88); one post_norm block.
    let split = |chunk, columns| LinearSplit { chunk, columns };
    assert_eq!(
        (plan.proj, plan.ffn1, plan.ffn2, plan.keys_per_split),
        (split(128, 8), split(256, 16), split(512, 8), 64)
    );
    assert_eq!(plan.blocks, 6 * (4 * 64 + 88 + 128 + 128) + 1);
}

#[test]
fn decoder_rejects_bad_shapes() {
    let d = DecoderDims { heads: 3, ..odd() };
    let err = DecoderPlan::new(d, 1, 132).unwrap_err().to_string();
    assert!(err.contains("divisible by 3 heads"), "{err}");
    let wide = DecoderDims {
        c: 2048,
        ..released_short()
    };
    let err = DecoderPlan::new(wide, 1, 132).unwrap_err().to_string();
    assert!(err.contains("c = 2048"), "{err}");
    let err = DecoderPlan::new(odd(), 0, 132).unwrap_err().to_string();
    assert!(err.contains("batch 0"), "{err}");
    let Some(gpu) = gpu_or_skip("decoder_rejects_bad_shapes") else {
        return;
    };
    let mut rng = rng(3);
    let params = HostParams::new(&mut rng, odd());
    let mut layers = params.layers();
    let short = vec![0.0f32; 3];
    layers[1].linear2.bias = &short;
    let err = DecoderWeights::upload(gpu.stream(), odd(), &layers, params.post())
        .err()
        .expect("a short bias")
        .to_string();
    assert!(
        err.contains("decoder layer 1") && err.contains("linear2.bias"),
        "{err}"
    );
}
