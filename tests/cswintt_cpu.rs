//! CPU reference properties beyond the golden files: batch items are independent, other
//! search/template sizes work, padding changes the result only where it should, runs
//! are deterministic, and the plan's index maps are consistent.

use std::sync::Arc;

use attnrt::base::Tensor;
use attnrt::base::relative_error;
use attnrt::cswintt::cpu::CpuReference;
use attnrt::cswintt::plan::{HeadPlan, Plan};
use attnrt::cswintt::{Backend, Inputs, Outputs};
use attnrt::kernels::window_attention::cpu::shifted_pos;
use attnrt::model::config::Config;
use attnrt::model::synthetic::{Padding, random_inputs, synthetic_weights};
use proptest::prelude::*;

fn run(cfg: &Config, seed: u64, inputs: &Inputs) -> Outputs {
    let w = Arc::new(synthetic_weights(cfg, seed));
    CpuReference::new(w).unwrap().forward(inputs, true).unwrap()
}

/// Batch item `bi` of a `(L, b, c)` tensor, as `(L, 1, c)` data.
fn item(t: &Tensor, bi: usize) -> Vec<f32> {
    let (b, c) = (t.shape[1], t.shape[2]);
    t.data
        .chunks_exact(b * c)
        .flat_map(|row| row[bi * c..(bi + 1) * c].to_vec())
        .collect()
}

fn slice_inputs(i: &Inputs, bi: usize) -> Inputs {
    let c = i.search.shape[3];
    let sub = |t: &Tensor| {
        let side = t.shape[0];
        Tensor {
            shape: vec![side, side, 1, c],
            data: t
                .data
                .chunks_exact(i.batch * c)
                .flat_map(|row| row[bi * c..(bi + 1) * c].to_vec())
                .collect(),
        }
    };
    let m = |v: &[u8]| {
        let n = v.len() / i.batch;
        v[bi * n..(bi + 1) * n].to_vec()
    };
    Inputs {
        batch: 1,
        template1: sub(&i.template1),
        template2: sub(&i.template2),
        search: sub(&i.search),
        template1_mask: m(&i.template1_mask),
        template2_mask: m(&i.template2_mask),
        search_mask: m(&i.search_mask),
        query_embed: i.query_embed.clone(),
    }
}

#[test]
fn batch_items_are_independent() {
    let cfg = Config::tiny();
    let inputs = random_inputs(&cfg, 3, 11, Padding::Borders, false);
    let all = run(&cfg, 3, &inputs);
    for bi in 0..3 {
        let one = run(&cfg, 3, &slice_inputs(&inputs, bi));
        for name in ["search_feat", "hs", "encoder.1", "decoder.0"] {
            let err = relative_error(
                &item(all.get(name).unwrap(), bi),
                &one.get(name).unwrap().data,
            )
            .unwrap();
            assert!(err < 1e-12, "item {bi} {name}: {err}");
        }
    }
}

#[test]
fn other_sizes_run() {
    // S=16, T=8 (384 tokens); and S=32, T=16 with a smaller model.
    for (s, t, c, heads) in [(16, 8, 32, 8), (32, 16, 16, 4)] {
        let cfg = Config {
            d_model: c,
            nhead: heads,
            dim_feedforward: 2 * c,
            enc_layers: 1,
            dec_layers: 1,
            search_size: s,
            template_size: t,
            window_sizes: attnrt::model::config::default_windows(heads),
        };
        cfg.validate("test").unwrap();
        let inputs = random_inputs(&cfg, 2, 1, Padding::Borders, false);
        let out = run(&cfg, 1, &inputs);
        assert_eq!(out.search_feat.shape, [s * s, 2, c]);
        assert_eq!(out.hs.shape, [1, 2, c]);
        assert!(out.search_feat.data.iter().all(|x| x.is_finite()));
        assert!(out.hs.data.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn deterministic_and_padding_matters() {
    let cfg = Config::tiny();
    let plain = random_inputs(&cfg, 1, 4, Padding::None, false);
    let mut padded = plain.clone();
    padded.search_mask[0] = 1;
    padded.search_mask[1] = 1;
    let a = run(&cfg, 9, &plain);
    let b = run(&cfg, 9, &plain);
    assert_eq!(a, b);
    let p = run(&cfg, 9, &padded);
    assert_ne!(a.hs, p.hs);
    // Head 0 (w = 1) masks single tokens, so its output changes.
    assert_ne!(a.get("encoder.0.head.0"), p.get("encoder.0.head.0"));
    // Head 3 (w = 8) masks only fully padded windows: two pixels change nothing.
    assert_eq!(a.get("encoder.0.head.3"), p.get("encoder.0.head.3"));
}

#[test]
fn backend_trait_and_query_fallback() {
    let cfg = Config::tiny();
    let w = Arc::new(synthetic_weights(&cfg, 2));
    let mut be: Box<dyn Backend> = Box::new(CpuReference::new(w.clone()).unwrap());
    assert_eq!(be.device(), "cpu");
    assert_eq!(be.tolerance(), 1e-5);
    // Inputs without a query use the model's.
    let mut inputs = random_inputs(&cfg, 1, 0, Padding::None, false);
    let a = be.run(&inputs, false).unwrap();
    assert!(a.intermediates.is_none());
    inputs.query_embed = w.query_embed.clone();
    assert_eq!(be.run(&inputs, false).unwrap().hs, a.hs);
    // A model without a query and inputs without one: an error, not a panic.
    let mut w2 = (*w).clone();
    w2.query_embed = None;
    inputs.query_embed = None;
    let err = CpuReference::new(Arc::new(w2))
        .unwrap()
        .forward(&inputs, false)
        .unwrap_err();
    assert!(err.to_string().contains("query_embed"), "{err}");
}

#[test]
fn wrong_inputs_are_errors() {
    let cfg = Config::tiny();
    let w = Arc::new(synthetic_weights(&cfg, 2));
    let cpu = CpuReference::new(w).unwrap();
    let mut i = random_inputs(&cfg, 1, 0, Padding::None, false);
    i.search.data[5] = f32::NAN;
    assert!(
        cpu.forward(&i, false)
            .unwrap_err()
            .to_string()
            .contains("non-finite")
    );
    let mut i = random_inputs(&cfg, 1, 0, Padding::None, false);
    i.batch = 2;
    assert!(
        cpu.forward(&i, false)
            .unwrap_err()
            .to_string()
            .contains("expected shape")
    );
}

#[test]
fn gathered_bias_and_padding_shapes() {
    let cfg = Config::released();
    let w = synthetic_weights(&cfg, 1);
    let plan = Plan::new(&cfg).unwrap();
    for h in &plan.heads {
        let b = h
            .gathered_bias(w.rel_bias_tables.get(&h.w).map(|t| t.as_slice()))
            .unwrap();
        assert_eq!(b.is_some(), h.w != 8, "head {}", h.head);
        if let Some(b) = b {
            assert_eq!(b.len(), h.l * h.l_all);
        }
        let mut mask = vec![0u8; 2 * cfg.l_all()];
        // Batch item 1: pad the whole first template.
        mask[cfg.l_all()..cfg.l_all() + 64].fill(1);
        let wp = h.window_padding(&mask, 2);
        assert_eq!(wp.len(), 2 * h.l);
        assert!(wp[..h.l].iter().all(|&x| x == 0));
        let t1_windows = 64 / (h.w * h.w);
        assert!(wp[h.l..h.l + t1_windows].iter().all(|&x| x == 1));
        assert!(wp[h.l + t1_windows..].iter().all(|&x| x == 0));
        let cp = h.column_padding(&wp, 2);
        assert_eq!(cp.iter().filter(|&&x| x != 0).count(), 64);
    }
    // A table of the wrong length is an error.
    let h = &plan.heads[0];
    assert!(h.gathered_bias(Some(&[0.0; 10])).is_err());
    assert!(h.gathered_bias(None).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// For any valid geometry and head, P(w, s) is a permutation, the reverse map is its
    /// inverse, slots stay inside their region, and only the search region moves with
    /// the shift.
    #[test]
    fn partition_properties(
        tk in 1usize..4,
        sk in 1usize..5,
        wi in 0usize..4,
        shifted in any::<bool>(),
    ) {
        let w = [1, 2, 4, 8][wi];
        let cfg = Config {
            search_size: 8 * sk,
            template_size: 8 * tk,
            ..Config::tiny()
        };
        // Heads 0..3 unshifted, 4..7 shifted by w/2.
        let h = HeadPlan::new(&cfg, wi + if shifted { 4 } else { 0 });
        prop_assert_eq!(h.w, w);
        let p = h.partition_index();
        let r = h.reverse_index();
        let unshifted = h.mask_partition_index();
        let mut seen = vec![false; cfg.l_all()];
        for (slot, &t) in p.iter().enumerate() {
            let t = t as usize;
            prop_assert!(!seen[t]);
            seen[t] = true;
            prop_assert_eq!(r[t] as usize, slot);
            let region = |x: usize| (x >= cfg.template_tokens()) as u8 + (x >= cfg.search_offset()) as u8;
            prop_assert_eq!(region(t), region(unshifted[slot] as usize));
            if t < cfg.search_offset() {
                prop_assert_eq!(t, unshifted[slot] as usize);
            }
        }
        // Shift tables: each (a, e) is a permutation of window positions.
        for a in 0..w {
            for e in 0..w {
                let mut s: Vec<usize> = (0..w * w).map(|pos| shifted_pos(w, pos, a, e)).collect();
                s.sort_unstable();
                prop_assert_eq!(s, (0..w * w).collect::<Vec<_>>());
            }
        }
    }
}
