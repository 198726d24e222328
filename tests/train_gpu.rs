//! The trainer on GPUs: the replica's forward/backward against the CPU reference, the
//! all-reduce (several buffers on one GPU, and across 2, 3 and 4 GPUs where
//! present, peer and host-staged, over all participants or a subset), same-seed training under
//! different DR splits, a DR that changes between steps (idle GPUs, stale replicas refreshed),
//! and host staging against the peer path; the linear layers on cuBLASLt (epilogues, f32 and
//! bf16) and bf16 training (gradients against the CPU's emulation, steps on one and two GPUs,
//! learning like f32). Without a GPU each test prints
//! `skipped: <reason>` and passes; `ATTNRT_REQUIRE_GPU=1` makes that a failure. Tests that need
//! more GPUs than the machine has print the reason and return.
//!
//! Tolerances: gradients within 1e-4 relative (cuBLAS(Lt) sums in another order than the f64 CPU
//! reference); the all-reduce exactly (it adds in participant order, as the CPU check does);
//! 20 training steps under different splits within 2e-5 absolute for SGD and 2e-4 for AdamW
//! (splitting changes float summation order only; AdamW's normalised step amplifies that for
//! near-zero gradients); replicas of one run, and host staging against the peer path,
//! identical bit for bit; a replica copy exact. bf16 tolerances are stated at each test.

use std::sync::Arc;
use std::time::Instant;

use attnrt::gpu::{
    self, Gpu,
    testing::{gpu_or_skip, gpus_or_skip},
};
use attnrt::kernels::allreduce::MAX_PEERS;
use attnrt::kernels::linear::cpu::linear_f64;
use attnrt::sched::DistributionRatio;
use attnrt::train::Precision::{self, Bf16, F32};
use attnrt::train::data::Augment;
use attnrt::train::data::batches::{Batch, SampleOrder, fill_batch, shard_ranges};
use attnrt::train::exchange::allreduce::{self, HostExchange, Phase, PhaseEvents};
use attnrt::train::gpu::blas::{self, Batched, HeadBatch, MatrixBatch};
use attnrt::train::gpu::linear::{GemmEpilogue, Linear};
use attnrt::train::gpu::replica::Replica;
use attnrt::train::models::cpu::{ShardStats, forward_backward};
use attnrt::train::run::engine::ExchangeChoice;
use attnrt::train::{
    CnnOptions, CpuEngine, Dataset, Engine, Job, ModelSpec, Optimizer, Progress, ReplicaEngine,
    State, TrainOptions, train,
};
use cudarc::driver::DevicePtr;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn replica_gradients_match_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("replica_gradients_match_the_cpu_reference") else {
        return;
    };
    let model = ModelSpec::Mlp {
        dims: vec![37, 19, 13, 10],
    };
    let params = model.init(3);
    let opt = Optimizer::sgd(0.1);
    let state = State::fresh(params.clone(), &opt);
    let mut replica = Replica::new(gpu, &model, opt, F32, &params, &state.optimizer).unwrap();
    for rows in [11usize, 1, 40] {
        let x = random(rows * 37, rows as u64);
        let labels: Vec<u32> = (0..rows as u32).map(|i| (i * 7) % 10).collect();
        let scale = 1.0 / 64.0;
        replica.forward_backward(&x, &labels, scale).unwrap();
        let stats = replica.stats().unwrap();
        let (_, grads) = replica.download().unwrap();
        let mut want = vec![0.0; params.len()];
        let cpu = forward_backward(&model, F32, &params, &x, &labels, scale, &mut want);
        for (i, (g, w)) in grads.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * w.abs().max(1e-3),
                "rows {rows} param {i}: {g} vs {w}"
            );
        }
        assert!(
            (stats.loss - cpu.loss).abs() < 1e-5 * cpu.loss.max(1.0),
            "{stats:?} vs {cpu:?}"
        );
        assert_eq!(stats.correct, cpu.correct);
    }
    // An empty shard contributes zeros.
    replica.forward_backward(&[], &[], 1.0).unwrap();
    let (_, grads) = replica.download().unwrap();
    assert!(grads.iter().all(|&g| g == 0.0));
}

/// `model`'s GPU pass against the CPU reference for each batch size of `sizes`: every
/// gradient within 2e-3 relative plus 1e-5 of the largest gradient (f32 through 2 blocks
/// against f64 accumulation). Later sizes run on buffers that hold an earlier, larger
/// batch's values, which poisons anything a kernel should write and does not.
fn check_vit_replica(gpu: Arc<Gpu>, model: &str, sizes: &[usize]) {
    let data = Dataset::synthetic(8, 2);
    let model = ModelSpec::parse(model, data.shape(), 10, "test").unwrap();
    let params = model.init(7);
    let opt = Optimizer::sgd(0.1);
    let state = State::fresh(params.clone(), &opt);
    let mut replica = Replica::new(gpu, &model, opt, F32, &params, &state.optimizer).unwrap();
    for &n in sizes {
        let f = data.shape().features();
        let mut x = vec![0.0; n * f];
        let labels: Vec<u32> = x
            .chunks_mut(f)
            .enumerate()
            .map(|(i, out)| data.sample(i, Augment::None, out).unwrap())
            .collect();
        replica.forward_backward(&x, &labels, 0.25).unwrap();
        let stats = replica.stats().unwrap();
        let (_, grads) = replica.download().unwrap();
        let mut want = vec![0.0; params.len()];
        let cpu = forward_backward(&model, F32, &params, &x, &labels, 0.25, &mut want);
        let top = want.iter().fold(0.0f32, |m, w| m.max(w.abs()));
        let mut worst = 0.0f32;
        for (i, (g, w)) in grads.iter().zip(&want).enumerate() {
            let err = (g - w).abs();
            worst = worst.max(err / (w.abs() + 1e-3 * top));
            assert!(
                err <= 2e-3 * w.abs() + 1e-5 * top,
                "n {n} param {i}: {g} vs {w}"
            );
        }
        println!(
            "n {n}: worst scaled error {worst:.2e}, loss {} vs {}",
            stats.loss, cpu.loss
        );
        assert!((stats.loss - cpu.loss).abs() < 1e-4 * cpu.loss.max(1.0));
        assert_eq!(stats.correct, cpu.correct);
    }
}

/// The ViT's GPU pass (patch embedding, LayerNorm, batched attention, GELU MLP, mean pool,
/// head) against the CPU reference.
#[test]
fn vit_replica_gradients_match_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("vit_replica_gradients_match_the_cpu_reference") else {
        return;
    };
    // 2 after 5: buffers sized for a larger shard serve a smaller one.
    check_vit_replica(gpu, "vit:8,16,2,2,32", &[3, 5, 2]);
}

/// Attention's pointer-array batches refuse operands outside their buffer, operands that
/// disagree, and more images than they hold (an error, not a wild write).
#[test]
fn batched_gemm_operands_are_checked() {
    let Some(gpu) = gpu_or_skip("batched_gemm_operands_are_checked") else {
        return;
    };
    let s = gpu.stream();
    let hb = HeadBatch {
        n: 3,
        heads: 2,
        t: 4,
        dh: 8,
    };
    let rows = s.alloc_zeros::<f32>(3 * 4 * 3 * 16).unwrap();
    let probs = s.alloc_zeros::<f32>(3 * 2 * 16).unwrap();
    let q = MatrixBatch::new(s, &rows, hb.in_rows(48, 0)).unwrap();
    let k = MatrixBatch::new(s, &rows, hb.in_rows(48, 16)).unwrap();
    let p = MatrixBatch::new(s, &probs, hb.probs()).unwrap();
    let outside = MatrixBatch::new(s, &rows, hb.in_rows(48, 48))
        .err()
        .unwrap();
    assert!(outside.to_string().contains("buffer"), "{outside}");
    let cb = cudarc::cublas::CudaBlas::new(s.clone()).unwrap();
    blas::batched(&cb, Batched::XYt, &q, &k, &p, 3, 1.0).unwrap();
    let too_many = blas::batched(&cb, Batched::XYt, &q, &k, &p, 4, 1.0).unwrap_err();
    assert!(too_many.to_string().contains("4 images"), "{too_many}");
    let wrong_form = blas::batched(&cb, Batched::PX, &q, &k, &p, 3, 1.0).unwrap_err();
    assert!(wrong_form.to_string().contains("disagree"), "{wrong_form}");
}

/// The same with CSWinTT's window attention (forward by the inference kernel, backward by
/// `window_attention_backward_*_f32`), same tolerance: a 4x4 token grid (windows 1 and 2, the
/// second shifted) and an 8x8 one (windows 1, 2, 4, 8, the last two shifted by 2 and 4).
#[test]
fn vit_window_replica_gradients_match_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("vit_window_replica_gradients_match_the_cpu_reference") else {
        return;
    };
    check_vit_replica(gpu.clone(), "vit:8,16,2,2,32,win", &[5, 3]);
    check_vit_replica(gpu, "vit:4,32,2,4,32,win", &[4, 2]);
}

/// The CPU check: participant order, f32, as the kernel adds.
fn ordered_sum(bufs: &[Vec<f32>]) -> Vec<f32> {
    let mut sum = bufs[0].clone();
    for b in &bufs[1..] {
        sum.iter_mut().zip(b).for_each(|(s, x)| *s += x);
    }
    sum
}

/// Runs both phases with participants `members` (indices into `gpus` and `events`; rank `r` is
/// `members[r]` on `gpus[members[r]]`, its buffer `bufs[r]`), ordered by events as the engine
/// does, then waits for all of it.
fn direct_allreduce(
    gpus: &[Arc<Gpu>],
    events: &PhaseEvents,
    members: &[usize],
    bufs: &[u64],
    len: usize,
) {
    for (r, &m) in members.iter().enumerate() {
        let s = gpus[m].stream();
        // SAFETY: the buffers hold len values each and are reachable from every GPU.
        unsafe { allreduce::reduce_scatter(&gpus[m], s, bufs, r, len).unwrap() };
        events.record(m, Phase::ReduceScatter, s).unwrap();
    }
    for (r, &m) in members.iter().enumerate() {
        let s = gpus[m].stream();
        events
            .wait_for_others(members, m, Phase::ReduceScatter, s)
            .unwrap();
        // SAFETY: as above; the stream waits for phase 1 on every GPU.
        unsafe { allreduce::all_gather(&gpus[m], s, bufs, r, len).unwrap() };
        events.record(m, Phase::AllGather, s).unwrap();
    }
    for &m in members {
        events
            .wait_for_others(members, m, Phase::AllGather, gpus[m].stream())
            .unwrap();
    }
    gpus.iter().for_each(|g| g.sync().unwrap());
}

/// The participant sets to check among `n` GPUs (or buffers): all of them, and for 3 or more
/// the odd-numbered ones and the last (a subset whose ranks differ from its indices, as when
/// some GPUs of an engine are idle).
fn member_sets(n: usize) -> Vec<Vec<usize>> {
    let all: Vec<usize> = (0..n).collect();
    let subset: Vec<usize> = (1..n).filter(|k| k % 2 == 1 || k + 1 == n).collect();
    if n >= 3 { vec![all, subset] } else { vec![all] }
}

/// Odd sizes: chunks of different lengths, empty chunks (fewer values than participants), and
/// remainders after the kernels' float4 loads.
const ODD_LENS: [usize; 6] = [1, 3, 7, 1001, 100_003, 1_000_003];

/// Sums `len` random values per member of `members` (indices into `gpus`, each member's buffer
/// on its GPU) with the direct all-reduce and with host staging, and checks every member gets
/// the participant-order sum exactly. Host-staged outputs are poisoned before the sum.
fn check_allreduce(gpus: &[Arc<Gpu>], members: &[usize], len: usize, what: &str) {
    let host: Vec<Vec<f32>> = members
        .iter()
        .map(|&m| random(len, (gpus.len() * 1000 + m) as u64))
        .collect();
    let want = ordered_sum(&host);
    let upload = || -> Vec<_> {
        members
            .iter()
            .zip(&host)
            .map(|(&m, h)| gpu::upload(gpus[m].stream(), h).unwrap())
            .collect()
    };
    let what = format!("{what}, members {members:?}, len {len}");
    let bufs = upload();
    let ptrs: Vec<u64> = bufs
        .iter()
        .zip(members)
        .map(|(b, &m)| b.device_ptr(gpus[m].stream()).0)
        .collect();
    let events = PhaseEvents::new(gpus).unwrap();
    direct_allreduce(gpus, &events, members, &ptrs, len);
    for (b, &m) in bufs.iter().zip(members) {
        let got = gpu::download(gpus[m].stream(), b).unwrap();
        assert_eq!(got, want, "peer: {what}: member {m}");
    }
    let mut bufs = upload();
    let exchange = HostExchange::new(gpus, len).unwrap();
    for (b, &m) in bufs.iter().zip(members) {
        exchange.stage(&gpus[m], b, m).unwrap();
    }
    for (b, &m) in bufs.iter_mut().zip(members) {
        let s = gpus[m].stream();
        s.memcpy_htod(&vec![f32::NAN; len], b).unwrap();
        exchange.sum_into(&gpus[m], b, m, members).unwrap();
        assert_eq!(
            gpu::download(s, b).unwrap(),
            want,
            "host: {what}: member {m}"
        );
    }
}

#[test]
fn allreduce_sums_exactly_for_odd_sizes_and_2_3_4_participants_on_one_gpu() {
    let Some(gpu) =
        gpu_or_skip("allreduce_sums_exactly_for_odd_sizes_and_2_3_4_participants_on_one_gpu")
    else {
        return;
    };
    for n in [2usize, 3, 4, 8] {
        let gpus = vec![gpu.clone(); n];
        for members in member_sets(n) {
            for len in ODD_LENS {
                check_allreduce(&gpus, &members, len, &format!("{n} buffers on one GPU"));
            }
        }
    }
}

fn gpu_count() -> usize {
    gpu::device_count().unwrap_or(0)
}

/// GPUs 0 and 1 where the machine has two, else two replicas on GPU 0, which run the same
/// split, exchange and barriers; `test` says which it ran.
fn replica_pair(test: &str) -> Vec<usize> {
    if gpu_count() >= 2 {
        println!("{test}: a pair of replicas on GPUs 0 and 1");
        vec![0, 1]
    } else {
        println!("{test}: two replicas on GPU 0 (the machine has one GPU)");
        vec![0, 0]
    }
}

/// 2, 3 and 4 real GPUs (those the machine has; the others are skipped with a reason), every
/// odd size, all participants and a subset, peer and host-staged.
#[test]
fn allreduce_across_2_3_4_gpus_over_peer_memory() {
    const NAME: &str = "allreduce_across_2_3_4_gpus_over_peer_memory";
    for n in [2usize, 3, 4] {
        let Some(gpus) = gpus_or_skip(&format!("{NAME} ({n} GPUs)"), n) else {
            continue;
        };
        assert!(
            allreduce::enable_peer_access(&gpus).unwrap(),
            "peer access between {n} GPUs"
        );
        for members in member_sets(n) {
            for len in ODD_LENS {
                check_allreduce(&gpus, &members, len, &format!("{n} GPUs"));
            }
        }
        println!("{NAME}: {n} GPUs: exact");
    }
}

/// 20 steps of batch 64 of `data` (seed 5) on `engine` under DR `units`; every replica's
/// parameters, and each step's progress (loss, accuracy).
fn run(
    engine: &mut dyn Engine,
    model: &ModelSpec,
    (opt, precision): (Optimizer, Precision),
    units: &[u8],
    data: &Arc<Dataset>,
) -> (Vec<Vec<f32>>, Vec<Progress>) {
    let job = Job {
        name: "eq".into(),
        model_name: "mlp:64,32".into(),
        model: model.clone(),
        dataset: data.clone(),
        batch_size: 64,
        iterations: 20,
    };
    let opts = TrainOptions::in_memory(
        5,
        opt,
        precision,
        DistributionRatio::new(units.to_vec()).unwrap(),
    );
    let mut steps = Vec::new();
    train(&job, engine, &opts, &mut |p| steps.push(p.clone())).unwrap();
    (engine.replica_params().unwrap(), steps)
}

/// 1 GPU with batch B, 2 GPUs with DR [5,5], [2,8] and [10,0] (a zero share), and the CPU:
/// the same parameters after 20 steps. With one GPU the two "GPUs" are two replicas on it,
/// which runs the same split, exchange and barriers; with two, they are the real pair.
#[test]
fn same_seed_same_parameters_for_any_split() {
    let Some(_gpu) = gpu_or_skip("same_seed_same_parameters_for_any_split") else {
        return;
    };
    let pair = replica_pair("same_seed_same_parameters_for_any_split");
    let data = Arc::new(Dataset::synthetic(1024, 9));
    let model = ModelSpec::parse("mlp:64,32", data.shape(), 10, "test").unwrap();
    for (opt, tol) in [
        (Optimizer::sgd(0.05), 2e-5f32),
        (Optimizer::adamw(1e-3), 2e-4),
    ] {
        let fresh = State::fresh(model.init(5), &opt);
        let mut cpu = CpuEngine::new(model.clone(), opt, F32, 1, fresh.clone());
        let reference = run(&mut cpu, &model, (opt, F32), &[10], &data).0.remove(0);
        let mut one = ReplicaEngine::new(&[0], &model, opt, F32, &fresh).unwrap();
        let single = run(&mut one, &model, (opt, F32), &[10], &data).0.remove(0);
        let d = max_abs_diff(&single, &reference);
        println!("{opt}: 1 GPU vs CPU max |diff| {d:.2e}");
        assert!(d < tol, "{opt}: 1 GPU vs CPU {d}");
        for units in [[5u8, 5], [2, 8], [10, 0]] {
            let mut two = ReplicaEngine::new(&pair, &model, opt, F32, &fresh).unwrap();
            let replicas = run(&mut two, &model, (opt, F32), &units, &data).0;
            assert_eq!(
                replicas[0], replicas[1],
                "{opt} DR {units:?}: replicas differ"
            );
            let d = max_abs_diff(&replicas[0], &single);
            println!("{opt}: DR {units:?} vs 1 GPU max |diff| {d:.2e}");
            assert!(d < tol, "{opt}: DR {units:?} vs 1 GPU {d}");
        }
    }
}

/// The small ViT of the split tests, its data and initial state for `opt`.
fn small_vit(opt: &Optimizer) -> (ModelSpec, Arc<Dataset>, State) {
    let data = Arc::new(Dataset::synthetic(256, 3));
    let model = ModelSpec::parse("vit:8,32,2,4,64", data.shape(), 10, "test").unwrap();
    let fresh = State::fresh(model.init(2), opt);
    (model, data, fresh)
}

/// [`small_vit`] trained 20 steps on 1 GPU and on [`replica_pair`] with DR [2,8]: the
/// replicas bit for bit the same and within `tol` of 1 GPU, whose parameters it returns.
fn vit_split_matches_one_gpu(opt: Optimizer, precision: Precision, tol: f32) -> Vec<f32> {
    let (model, data, fresh) = small_vit(&opt);
    let pair = replica_pair(&format!("vit split, {precision}"));
    let mut one = ReplicaEngine::new(&[0], &model, opt, precision, &fresh).unwrap();
    let single = run(&mut one, &model, (opt, precision), &[10], &data)
        .0
        .remove(0);
    let mut two = ReplicaEngine::new(&pair, &model, opt, precision, &fresh).unwrap();
    let replicas = run(&mut two, &model, (opt, precision), &[2, 8], &data).0;
    assert_eq!(replicas[0], replicas[1], "{precision:?}: replicas differ");
    let d = max_abs_diff(&replicas[0], &single);
    println!("vit {precision:?}: DR [2,8] on {pair:?} vs 1 GPU max |diff| {d:.2e}");
    assert!(d < tol, "{precision:?}: DR [2,8] vs 1 GPU {d}");
    single
}

/// The ViT: 20 AdamW steps on 1 GPU and on a pair with DR [2,8] give the same parameters
/// (within 2e-4), and the replicas are identical.
#[test]
fn vit_same_seed_same_parameters_for_any_split() {
    if gpu_or_skip("vit_same_seed_same_parameters_for_any_split").is_some() {
        vit_split_matches_one_gpu(Optimizer::adamw(1e-3), F32, 2e-4);
    }
}

/// The DR for 0-based step `step` of [`changing_dr`]: three steps each of [10,0], [5,5],
/// [0,10], [3,7], [10,0], [0,10], so each GPU is idle, then stale, then refreshed more than
/// once, and the run ends with GPU 0 stale.
fn changing_dr(step: u64) -> [u8; 2] {
    const PHASES: [[u8; 2]; 6] = [[10, 0], [5, 5], [0, 10], [3, 7], [10, 0], [0, 10]];
    PHASES[(step / 3) as usize % PHASES.len()]
}

const CHANGING_STEPS: u64 = 18;

/// Steps `engine` through [`CHANGING_STEPS`] batches of 64 of `data` (seed 5), the DR of each
/// step from `dr` (one unit for a one-device engine), one step submitted ahead as the trainer
/// does (so a step on other GPUs is enqueued while the previous one may still run), and, when
/// `ahead`, each next batch named before a step is submitted ([`Engine::stage_ahead`]), as the
/// trainer does. Returns each step's stats, and checks that no device keeps a batch once its
/// step is enqueued (the trainer recycles it then).
fn run_steps(
    engine: &mut dyn Engine,
    data: &Dataset,
    dr: impl Fn(u64) -> Vec<u8>,
    ahead: bool,
) -> Vec<ShardStats> {
    let batch_size = 64;
    let mut order = SampleOrder::new(data.len(), 5);
    let mut batches = (0..CHANGING_STEPS).map(|step| {
        let mut batch = Batch {
            step,
            features: Vec::new(),
            labels: Vec::new(),
        };
        fill_batch(data, &mut order, step, batch_size, &mut batch).unwrap();
        Arc::new(batch)
    });
    let mut next = batches.next();
    let mut stats = Vec::new();
    for step in 0..CHANGING_STEPS {
        let batch = next.take().unwrap();
        next = batches.next();
        if let (true, Some(n)) = (ahead, &next) {
            engine.stage_ahead(n);
        }
        let shards = shard_ranges(&DistributionRatio::new(dr(step)).unwrap(), batch_size);
        engine.submit(step + 1, &batch, &shards).unwrap();
        assert_eq!(
            Arc::strong_count(&batch),
            1,
            "step {step}'s batch is still held"
        );
        if step > 0 {
            stats.push(engine.finish().unwrap());
        }
    }
    stats.push(engine.finish().unwrap());
    stats
}

/// A DR changing every 3 steps among [10,0], [5,5], [0,10], [3,7] on 2 GPUs: the same
/// parameters and optimizer state as 1 GPU with the whole batch (SGD within 2e-5, AdamW within
/// 2e-4), `state()` taken from the up-to-date GPU while the other is stale, and every replica
/// identical at the end.
#[test]
fn changing_dr_on_two_gpus_matches_one_gpu() {
    if gpus_or_skip("changing_dr_on_two_gpus_matches_one_gpu", 2).is_none() {
        return;
    }
    let data = Dataset::synthetic(1024, 9);
    let model = ModelSpec::parse("mlp:64,32", data.shape(), 10, "test").unwrap();
    for (opt, tol) in [
        (Optimizer::sgd(0.05), 2e-5f32),
        (Optimizer::adamw(1e-3), 2e-4),
    ] {
        let fresh = State::fresh(model.init(5), &opt);
        let mut one = ReplicaEngine::new(&[0], &model, opt, F32, &fresh).unwrap();
        run_steps(&mut one, &data, |_| vec![10], true);
        let want = one.state().unwrap();
        let mut two = ReplicaEngine::new(&[0, 1], &model, opt, F32, &fresh).unwrap();
        // Peer access makes the refreshes device-to-device copies; without it they go through
        // the host, and the test still holds.
        println!(
            "{opt}: {}",
            two.notice().unwrap_or_else(|| "peer path".into())
        );
        run_steps(&mut two, &data, |s| changing_dr(s).to_vec(), true);
        // The last steps ran on GPU 1 alone: GPU 0 is stale, and the state must be GPU 1's.
        let got = two.state().unwrap();
        let d = max_abs_diff(&got.params, &want.params);
        println!("{opt}: changing DR vs 1 GPU max |diff| {d:.2e}");
        assert!(d < tol, "{opt}: changing DR vs 1 GPU {d}");
        for (k, (g, w)) in got.optimizer.iter().zip(&want.optimizer).enumerate() {
            let d = max_abs_diff(g, w);
            assert!(d < tol, "{opt}: optimizer state {k} vs 1 GPU {d}");
        }
        let replicas = two.replica_params().unwrap();
        assert_eq!(replicas[0], replicas[1], "{opt}: replicas differ");
        assert_eq!(replicas[1], got.params, "{opt}: state() is not GPU 1's");
    }
}

/// Staging each next shard ahead, on another thread while a step is enqueued, changes no
/// value: the same parameters, bit for bit, and correct counts as staging each shard in its
/// step, on a pair of replicas whose DR changes every 3 steps (a changed split stages again),
/// and the shards of the steps whose split stayed were staged ahead. The MLP's gradients are
/// deterministic, so any staged value out of place would show in the parameters. (The
/// losses are compared within f32 rounding: the loss kernel sums its samples with atomics, in
/// no fixed order. A bf16 CNN's shards are staged by the same `Slot::fill`, checked against
/// the CPU by `train_cnn_gpu`; its cuDNN gradients need not be deterministic.)
#[test]
fn staging_ahead_changes_no_value() {
    const NAME: &str = "staging_ahead_changes_no_value";
    if gpu_or_skip(NAME).is_none() {
        return;
    }
    let pair = replica_pair(NAME);
    let data = Dataset::synthetic(256, 9);
    let model = ModelSpec::parse("mlp:64,32", data.shape(), 10, "test").unwrap();
    let opt = Optimizer::sgd(0.05);
    let fresh = State::fresh(model.init(5), &opt);
    let [(stats, params, plain), (stats_ahead, params_ahead, times)] = [false, true].map(|ahead| {
        let mut engine = ReplicaEngine::new(&pair, &model, opt, F32, &fresh).unwrap();
        let stats = run_steps(&mut engine, &data, |s| changing_dr(s).to_vec(), ahead);
        let times = engine.host_times().unwrap().unwrap();
        (stats, engine.replica_params().unwrap(), times)
    });
    assert!(params == params_ahead, "parameters differ");
    for (t, (a, b)) in stats.iter().zip(&stats_ahead).enumerate() {
        assert_eq!(a.correct, b.correct, "step {t}: correct counts differ");
        let d = (a.loss - b.loss).abs() / a.loss.abs();
        assert!(
            d < 2e-5,
            "step {t}: losses {} and {} differ by {d:.1e}",
            a.loss,
            b.loss
        );
    }
    // GPU 0 has a share in the DR phases of steps 0-5 and 9-14 (12 steps, 11 counted after
    // its first): the first step of each phase after the first finds the shard of another
    // split or batch staged and stages again (steps 3, 9, 12), the other 8 find theirs.
    assert_eq!(plain.staged_ahead, 0, "{plain:?}");
    assert_eq!((times.staged_ahead, times.steps), (8, 11), "{times:?}");
}

/// A replica's state copied from another's memory (GPU 1 into GPU 0 with 2 GPUs, else between
/// two replicas on GPU 0): exact, over a destination poisoned with NaN.
#[test]
fn replica_copies_state_from_a_peer() {
    let Some(gpu) = gpu_or_skip("replica_copies_state_from_a_peer") else {
        return;
    };
    let src_gpu = if gpu_count() >= 2 {
        let g = Gpu::open(1).unwrap();
        assert!(allreduce::enable_peer_access(&[gpu.clone(), g.clone()]).unwrap());
        g
    } else {
        gpu.clone()
    };
    let model = ModelSpec::Mlp {
        dims: vec![37, 19, 10],
    };
    let opt = Optimizer::adamw(1e-3);
    let n = model.init(1).len();
    let slots: Vec<Vec<f32>> = (0..opt.state_slots())
        .map(|k| random(n, 20 + k as u64))
        .collect();
    let src = Replica::new(src_gpu, &model, opt, F32, &random(n, 3), &slots).unwrap();
    let poison = vec![vec![f32::NAN; n]; opt.state_slots()];
    let mut dst = Replica::new(gpu, &model, opt, F32, &vec![f32::NAN; n], &poison).unwrap();
    let addresses = src.state_ptrs().unwrap();
    // SAFETY: same model and optimizer, peer access enabled, `src` idle meanwhile.
    unsafe { dst.copy_state_from(&addresses).unwrap() };
    assert_eq!(dst.download().unwrap().0, src.download().unwrap().0);
    // A source with another number of buffers is refused before anything is copied.
    // SAFETY: nothing is read.
    assert!(unsafe { dst.copy_state_from(&addresses[..1]) }.is_err());
}

/// Host staging forced on a pair of replicas (2 GPUs, else two on GPU 0) gives bit for bit the
/// parameters of the peer path under the changing DR, stale replicas refreshed through the
/// host, with the one-line notice.
#[test]
fn host_staging_matches_the_peer_path() {
    let Some(_gpu) = gpu_or_skip("host_staging_matches_the_peer_path") else {
        return;
    };
    let pair = replica_pair("host_staging_matches_the_peer_path");
    let data = Dataset::synthetic(1024, 9);
    let model = ModelSpec::parse("mlp:64,32", data.shape(), 10, "test").unwrap();
    let opt = Optimizer::adamw(1e-3);
    let fresh = State::fresh(model.init(5), &opt);
    let mut params = Vec::new();
    for choice in [ExchangeChoice::Auto, ExchangeChoice::Host] {
        let none = CnnOptions::default();
        let mut engine =
            ReplicaEngine::with_exchange(&pair, &model, opt, F32, &fresh, choice, none).unwrap();
        assert_eq!(
            engine.notice().is_some(),
            choice == ExchangeChoice::Host,
            "{choice:?}: {:?}",
            engine.notice()
        );
        run_steps(&mut engine, &data, |s| changing_dr(s).to_vec(), true);
        let replicas = engine.replica_params().unwrap();
        assert_eq!(replicas[0], replicas[1], "{choice:?}: replicas differ");
        params.push(replicas[0].clone());
    }
    assert_eq!(
        params[0], params[1],
        "host staging differs from the peer path"
    );
}

/// Bus bandwidth of the direct all-reduce at 1, 16, 64 and 256 MB over 2, 3, ... up to every
/// GPU of the machine (run with `--ignored`; needs 2 or more GPUs), as a table. Bus bandwidth
/// as nccl-tests defines it: `2 (n-1)/n * bytes / time`. Each iteration is the engine's
/// protocol: both phases ordered by events, then one host synchronisation (the engine's is the
/// next step's stats read). `scripts/torch_ddp_reference.py --allreduce` prints NCCL's in the
/// same form.
#[test]
#[ignore]
fn allreduce_bandwidth() {
    let count = gpu_count().min(MAX_PEERS);
    if count < 2 {
        println!("allreduce_bandwidth: needs 2 GPUs, found {count}");
        return;
    }
    let gpus: Vec<_> = (0..count).map(|o| Gpu::open(o).unwrap()).collect();
    assert!(allreduce::enable_peer_access(&gpus).unwrap());
    let events = PhaseEvents::new(&gpus).unwrap();
    println!("ours: direct all-reduce, {count} x {}", gpus[0].describe());
    println!("{:>5} {:>4} {:>10} {:>10}", "MB", "GPUs", "us", "bus GB/s");
    for mb in [1usize, 16, 64, 256] {
        let len = mb * 1_000_000 / 4;
        let bufs: Vec<_> = gpus
            .iter()
            .map(|g| g.stream().alloc_zeros::<f32>(len).unwrap())
            .collect();
        let ptrs: Vec<u64> = bufs
            .iter()
            .zip(&gpus)
            .map(|(b, g)| b.device_ptr(g.stream()).0)
            .collect();
        for n in 2..=count {
            let members: Vec<usize> = (0..n).collect();
            let run = || direct_allreduce(&gpus, &events, &members, &ptrs[..n], len);
            (0..5).for_each(|_| run());
            let iters = 50;
            let t = Instant::now();
            (0..iters).for_each(|_| run());
            let s = t.elapsed().as_secs_f64() / iters as f64;
            let bus = 2.0 * (n - 1) as f64 / n as f64 * (len * 4) as f64 / s / 1e9;
            println!("{mb:>5} {n:>4} {:>10.1} {bus:>10.1}", s * 1e6);
        }
    }
}

// ---- the linear layers on cuBLASLt, and bf16 ----

/// `c[i][j] = sum_k a[i][k] b[j][k]` (row-major, `k` values a row) in f64, the linear op's
/// reference, and the scale `sum_k |a[i][k] b[j][k]|` of each: f32 accumulation errors are
/// bounded in proportion to it.
fn dots(a: &[f32], b: &[f32], k: usize) -> (Vec<f64>, Vec<f64>) {
    let nmk = (a.len() / k, b.len() / k, k);
    let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
    (
        linear_f64(a, b, None, nmk),
        linear_f64(&abs(a), &abs(b), None, nmk),
    )
}

/// `m` (`rows x cols`, row-major) transposed.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols * rows)
        .map(|i| m[(i % rows) * cols + i / rows])
        .collect()
}

/// `got` against `want` within 1e-5 of each value's scale (f32 accumulation of up to ~50
/// terms: at most ~3e-6 in theory), `what` naming the product.
fn check_dots(what: &str, got: &[f32], (want, scale): &(Vec<f64>, Vec<f64>)) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, ((g, w), s)) in got.iter().zip(want).zip(scale).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= 1e-5 * s,
            "{what} [{i}]: {g} vs {w} (scale {s})"
        );
    }
}

/// `Linear` on random operands against the CPU, in f32 (exact f32 arithmetic, not TF32) and
/// bf16 (against operands rounded as `Precision::operand` rounds them): the forward with no
/// epilogue, the fused bias and the fused bias + ReLU, and the backward with and without
/// dX. Operands at a 16-byte-aligned start and 4 bytes past one (the alignment of odd offsets
/// in the flat parameter vector, so also a bias the epilogue cannot read in place); outputs
/// poisoned with NaN first, and the values before a view left alone; the same call twice
/// gives the same bits (a cached plan).
#[test]
fn linear_layers_match_the_cpu_in_f32_and_bf16() {
    let Some(gpu) = gpu_or_skip("linear_layers_match_the_cpu_in_f32_and_bf16") else {
        return;
    };
    let s = gpu.stream();
    let (rows, din, dout) = (37, 45, 29);
    let up = |v: &[f32]| gpu::upload(s, v).unwrap();
    let poisoned = |n: usize| {
        let mut b = s.alloc_zeros::<f32>(n).unwrap();
        gpu::poison_nan(s, &mut b).unwrap();
        b
    };
    for precision in [F32, Bf16] {
        let mut lin = Linear::new(gpu.clone(), precision).unwrap();
        for at in [0usize, 1] {
            let (x, w) = (random(at + rows * din, 1), random(at + dout * din, 2));
            let (b, dy) = (random(at + dout, 3), random(at + rows * dout, 4));
            let (dx_, dw, db, ddy) = (up(&x), up(&w), up(&b), up(&dy));
            let (x, w, b, dy) = (&x[at..], &w[at..], &b[at..], &dy[at..]);
            let (xr, wr, dyr) = (
                precision.operand(x),
                precision.operand(w),
                precision.operand(dy),
            );
            let what = |name: &str| format!("{precision} offset {at}: {name}");
            for (kind, name) in ["plain", "bias", "bias + relu"].iter().enumerate() {
                let mut outs = Vec::new();
                for _ in 0..2 {
                    let bias = db.slice(at..);
                    let epilogue = match kind {
                        0 => GemmEpilogue::Plain,
                        1 => GemmEpilogue::Bias(bias),
                        _ => GemmEpilogue::BiasRelu(bias),
                    };
                    let mut y = poisoned(at + rows * dout);
                    let (xv, wv) = (dx_.slice(at..), dw.slice(at..));
                    let mut yv = y.slice_mut(at..);
                    lin.forward(&xv, &wv, epilogue, &mut yv, rows, din, dout)
                        .unwrap();
                    outs.push(gpu::download(s, &y).unwrap());
                }
                let got = &outs[0];
                assert!(got[..at].iter().all(|v| v.is_nan()), "{}", what(name));
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    outs[1].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{}: not deterministic",
                    what(name)
                );
                let (mut want, mut scale) = dots(&xr, &wr, din);
                if kind > 0 {
                    for (i, (v, sc)) in want.iter_mut().zip(&mut scale).enumerate() {
                        *v += f64::from(b[i % dout]);
                        *sc += f64::from(b[i % dout].abs());
                        if kind == 2 {
                            *v = v.max(0.0);
                        }
                    }
                }
                check_dots(&what(name), &got[at..], &(want, scale));
            }
            for with_dx in [false, true] {
                let mut gw = poisoned(at + dout * din);
                let mut dx = poisoned(rows * din);
                let (xv, dyv) = (dx_.slice(at..), ddy.slice(at..));
                let input = with_dx.then(|| (dw.slice(at..), &mut dx));
                let mut gwv = gw.slice_mut(at..);
                lin.backward(&xv, &dyv, &mut gwv, input, rows, din, dout)
                    .unwrap();
                let got = gpu::download(s, &gw).unwrap();
                assert!(got[..at].iter().all(|v| v.is_nan()), "{}", what("dW"));
                let want = dots(
                    &transpose(&dyr, rows, dout),
                    &transpose(&xr, rows, din),
                    rows,
                );
                check_dots(&what("dW = dY^T X"), &got[at..], &want);
                let got = gpu::download(s, &dx).unwrap();
                if with_dx {
                    let want = dots(&dyr, &transpose(&wr, dout, din), dout);
                    check_dots(&what("dX = dY W"), &got, &want);
                } else {
                    assert!(got.iter().all(|v| v.is_nan()), "{}", what("no dX"));
                }
            }
        }
        println!("{precision}: forward (3 epilogues) and backward within 1e-5 of the scale");
    }
}

/// Tensor by tensor (the model's layout), `||got - want|| / max(||want||, 1e-2 ||want as a
/// whole||)`: the worst, and its tensor.
fn worst_tensor(model: &ModelSpec, got: &[f32], want: &[f32]) -> (f64, String) {
    let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| f64::from(x).powi(2)).sum::<f64>();
    let total = norm(&mut want.iter().copied()).sqrt();
    let mut worst = (0.0, String::new());
    for slot in &model.layout().slots {
        let r = slot.range();
        let diff = norm(
            &mut got[r.clone()]
                .iter()
                .zip(&want[r.clone()])
                .map(|(g, w)| g - w),
        );
        let size = norm(&mut want[r].iter().copied()).sqrt().max(1e-2 * total);
        if diff.sqrt() / size > worst.0 {
            worst = (diff.sqrt() / size, slot.name.clone());
        }
    }
    worst
}

/// bf16 gradients of the MLP and of the ViT (standard attention, and window attention on 4x4
/// and 8x8 grids) against the CPU's bf16 emulation and its f32 reference, on fresh samples,
/// with the gradient buffer poisoned before each pass. A bf16 rounding flips to the
/// neighbouring value wherever the GPU's f32 activations and the CPU's (f64 sums) straddle a
/// rounding boundary, so the emulation is not matched value for value: tensor by tensor the
/// relative L2 error is within 5e-3 of the emulation (a 1e-6 relative perturbation of the
/// parameters moves the CPU's own emulated gradients by up to 1.6e-3; bf16 against f32 is
/// 4e-3 to 7e-3 in the worst tensor; one H100 measured 4.2e-4 and 5.4e-3) and, for the ViTs,
/// 2e-2 of f32, and every value within 5e-2 relative plus 5e-3 of the largest gradient of the
/// emulation. The loss within 1e-3 relative of the emulation, the correct count within one
/// sample (a flip can decide a near tie). The MLP has no f32 bound: with five samples its
/// bf16 gradient is itself far from f32 wherever a rounding flips a hidden ReLU, by how much
/// depending on the samples (the CPU's emulation against f32 in its worst tensor, five
/// samples: 6.4e-2 on this data set, as an H100 run met it, 0.22 and 0.37 on the next seeds',
/// 5e-3 on seed 5's); the ViTs' LayerNorms keep theirs at 4e-3 to 7e-3 on each of those.
#[test]
fn bf16_gradients_match_the_cpu_emulation() {
    let Some(gpu) = gpu_or_skip("bf16_gradients_match_the_cpu_emulation") else {
        return;
    };
    let data = Dataset::synthetic(8, 2);
    for name in [
        "mlp:19,13",
        "vit:8,16,2,2,32",
        "vit:8,16,2,2,32,win",
        "vit:4,32,2,4,32,win",
    ] {
        let model = ModelSpec::parse(name, data.shape(), 10, "test").unwrap();
        let params = model.init(7);
        let opt = Optimizer::sgd(0.1);
        let state = State::fresh(params.clone(), &opt);
        let mut replica =
            Replica::new(gpu.clone(), &model, opt, Bf16, &params, &state.optimizer).unwrap();
        for n in [5usize, 3] {
            let f = data.shape().features();
            let mut x = vec![0.0; n * f];
            let labels: Vec<u32> = x
                .chunks_mut(f)
                .enumerate()
                .map(|(i, out)| data.sample(i + n, Augment::None, out).unwrap())
                .collect();
            gpu::poison_nan(gpu.stream(), replica.grads_mut()).unwrap();
            replica.forward_backward(&x, &labels, 0.25).unwrap();
            let stats = replica.stats().unwrap();
            let (_, grads) = replica.download().unwrap();
            let reference = |p: Precision| {
                let mut g = vec![0.0; params.len()];
                let stats = forward_backward(&model, p, &params, &x, &labels, 0.25, &mut g);
                (stats, g)
            };
            let (emu_stats, emu) = reference(Bf16);
            let (f32_stats, exact) = reference(F32);
            let top = emu.iter().fold(0.0f32, |m, w| m.max(w.abs()));
            for (i, (g, w)) in grads.iter().zip(&emu).enumerate() {
                assert!(
                    (g - w).abs() <= 5e-2 * w.abs() + 5e-3 * top,
                    "{name} n {n} param {i}: {g} vs {w}"
                );
            }
            let (e_emu, t_emu) = worst_tensor(&model, &grads, &emu);
            let (e_f32, t_f32) = worst_tensor(&model, &grads, &exact);
            println!(
                "{name} n {n}: worst tensor vs the emulation {e_emu:.2e} ({t_emu}), vs f32 \
                 {e_f32:.2e} ({t_f32}); loss {} vs {} (f32 {})",
                stats.loss, emu_stats.loss, f32_stats.loss
            );
            assert!(
                e_emu <= 5e-3,
                "{name} n {n}: {t_emu} {e_emu} vs the emulation"
            );
            if !name.starts_with("mlp") {
                assert!(e_f32 <= 2e-2, "{name} n {n}: {t_f32} {e_f32} vs f32");
            }
            assert!((stats.loss - emu_stats.loss).abs() <= 1e-3 * emu_stats.loss);
            assert!(stats.correct.abs_diff(emu_stats.correct) <= 1);
        }
    }
}

/// bf16 training of the ViT: 20 SGD steps on 1 GPU and on a pair with DR [2,8] give the same
/// parameters within 5e-4, the replicas bit for bit, and 1 GPU is within 5e-4 of the CPU's
/// emulation. SGD, because its update is linear in the gradient: AdamW's normalised step turns
/// bf16's rounding flips on near-zero gradients into differences of the learning rate's size
/// (on the CPU, a 1e-6 relative perturbation of the initial parameters moves 20 bf16 AdamW
/// steps by 2e-3 and 20 SGD steps by 9e-5). With one GPU the pair is two replicas on it.
#[test]
fn bf16_same_seed_same_parameters_for_any_split() {
    if gpu_or_skip("bf16_same_seed_same_parameters_for_any_split").is_none() {
        return;
    }
    let opt = Optimizer::sgd(0.05);
    let single = vit_split_matches_one_gpu(opt, Bf16, 5e-4);
    let (model, data, fresh) = small_vit(&opt);
    let mut cpu = CpuEngine::new(model.clone(), opt, Bf16, 1, fresh);
    let reference = run(&mut cpu, &model, (opt, Bf16), &[10], &data).0.remove(0);
    let d = max_abs_diff(&single, &reference);
    println!("bf16 vit: 1 GPU vs CPU {d:.2e}");
    assert!(d < 5e-4, "1 GPU vs CPU {d}");
}

/// A short bf16 run learns as f32 does: 20 AdamW steps on 1 GPU, same seed, the MLP (the
/// mean loss of the last 5 steps below a fifth of the first 5's, accuracy at least 90%) and
/// the ViT (loss down 1.5%, accuracy up: the ViT learns the synthetic set slowly; the CPU's
/// emulation goes 2.317 -> 2.255, accuracy 0.12 -> 0.20), every step's loss within 3e-2 of
/// f32's (measured on one H100: 9.2e-3 for the MLP, whose loss falls fastest, 2e-4 for the
/// ViT; the CPU's emulation gives 9.1e-3 for the MLP).
#[test]
fn bf16_training_learns_like_f32() {
    let Some(_gpu) = gpu_or_skip("bf16_training_learns_like_f32") else {
        return;
    };
    let data = Arc::new(Dataset::synthetic(1024, 9));
    let mean = |s: &[Progress], f: fn(&Progress) -> f64| s.iter().map(f).sum::<f64>() / 5.0;
    for (name, fall, accuracy) in [("mlp:64,32", 0.2, 0.9), ("vit:8,32,2,4,64", 0.985, 0.0)] {
        let model = ModelSpec::parse(name, data.shape(), 10, "test").unwrap();
        let opt = Optimizer::adamw(2e-3);
        let fresh = State::fresh(model.init(1), &opt);
        let steps = |p: Precision| {
            let mut engine = ReplicaEngine::new(&[0], &model, opt, p, &fresh).unwrap();
            run(&mut engine, &model, (opt, p), &[10], &data).1
        };
        let (bf16, f32) = (steps(Bf16), steps(F32));
        let (first, last) = (&bf16[..5], &bf16[bf16.len() - 5..]);
        let (l0, l1) = (mean(first, |p| p.loss), mean(last, |p| p.loss));
        let (a0, a1) = (mean(first, |p| p.accuracy), mean(last, |p| p.accuracy));
        let gap = bf16
            .iter()
            .zip(&f32)
            .map(|(b, f)| (b.loss - f.loss).abs())
            .fold(0.0, f64::max);
        println!(
            "{name} bf16: loss {l0:.4} -> {l1:.4}, accuracy {a0:.3} -> {a1:.3}; \
             max |loss - f32's| {gap:.2e}"
        );
        assert!(l1 < fall * l0, "{name}: loss {l0} -> {l1}");
        assert!(a1 > a0 && a1 >= accuracy, "{name}: accuracy {a0} -> {a1}");
        assert!(gap <= 3e-2, "{name}: bf16 and f32 losses differ by {gap}");
    }
}
