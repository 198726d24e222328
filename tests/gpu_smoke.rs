//! Smoke tests of the runtime layer on a real GPU: a kernel from `kernels/` on random data with
//! poisoned outputs, 8 streams forking and joining, graph capture/replay, event timing, and
//! the memory pool's peak.
//! Without a GPU each prints `skipped: <reason>` and passes; `ATTNRT_REQUIRE_GPU=1` makes them fail.

use attnrt::gpu::{self, EventTimer, Graph, StreamSet, testing::gpu_or_skip};
use attnrt::kernels::smoke::SmokeKernels;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// The kernel compiles `a * x + y` to one fused multiply-add, so the reference uses `mul_add`
/// and the comparison can be exact.
fn axpy_cpu(a: f32, x: &[f32], y: &[f32]) -> Vec<f32> {
    x.iter().zip(y).map(|(x, y)| a.mul_add(*x, *y)).collect()
}

#[test]
fn kernel_runs_on_random_data_and_writes_every_element() {
    let Some(gpu) = gpu_or_skip("kernel_runs_on_random_data_and_writes_every_element") else {
        return;
    };
    let smoke = SmokeKernels::load(&gpu).unwrap();
    let s = gpu.stream();
    // An odd size, so the last block is partly idle.
    let n = 100_003;
    let (x, y0) = (random(n, 1), random(n, 2));
    let dx = gpu::upload(s, &x).unwrap();
    let mut dy = gpu::upload(s, &y0).unwrap();
    smoke.axpy(s, 0.5, &dx, &mut dy).unwrap();
    let got = gpu::download(s, &dy).unwrap();
    assert_eq!(got, axpy_cpu(0.5, &x, &y0));

    // Poisoned output with y = 0 start: every element must be overwritten (NaN otherwise).
    let mut dz = gpu::upload(s, &vec![0.0f32; n]).unwrap();
    gpu::poison_nan(s, &mut dz).unwrap();
    let poisoned = gpu::download(s, &dz).unwrap();
    assert!(poisoned.iter().all(|v| v.is_nan()), "poison must be NaN");
}

#[test]
fn eight_streams_fork_and_join() {
    let Some(gpu) = gpu_or_skip("eight_streams_fork_and_join") else {
        return;
    };
    let smoke = SmokeKernels::load(&gpu).unwrap();
    let s = gpu.stream();
    let set = StreamSet::new(&gpu, 8).unwrap();
    let n = 4096 + 7;
    let xs: Vec<Vec<f32>> = (0..8).map(|i| random(n, 10 + i)).collect();
    let dxs: Vec<_> = xs.iter().map(|x| gpu::upload(s, x).unwrap()).collect();
    let mut dys: Vec<_> = (0..8)
        .map(|_| gpu::upload(s, &vec![1.0f32; n]).unwrap())
        .collect();
    set.fork(s).unwrap();
    for (i, (dx, dy)) in dxs.iter().zip(dys.iter_mut()).enumerate() {
        // Several launches per stream, so a missing join would be likely to show.
        for _ in 0..4 {
            smoke.axpy(set.stream(i), i as f32, dx, dy).unwrap();
        }
    }
    set.join(s).unwrap();
    for (i, (x, dy)) in xs.iter().zip(&dys).enumerate() {
        let got = gpu::download(s, dy).unwrap();
        let mut want = vec![1.0f32; n];
        for _ in 0..4 {
            want = axpy_cpu(i as f32, x, &want);
        }
        assert_eq!(got, want, "stream {i}");
    }
}

#[test]
fn captured_graph_replays_with_the_same_result() {
    let Some(gpu) = gpu_or_skip("captured_graph_replays_with_the_same_result") else {
        return;
    };
    let smoke = SmokeKernels::load(&gpu).unwrap();
    let s = gpu.stream();
    let set = StreamSet::new(&gpu, 2).unwrap();
    let n = 1000;
    let x = random(n, 3);
    let dx = gpu::upload(s, &x).unwrap();
    let mut dy0 = gpu::upload(s, &vec![0.0f32; n]).unwrap();
    let mut dy1 = gpu::upload(s, &vec![0.0f32; n]).unwrap();
    gpu.sync().unwrap();
    // A graph with a fork/join inside: one axpy on each of two side streams.
    let graph = Graph::capture(s, || {
        set.fork(s)?;
        smoke.axpy(set.stream(0), 2.0, &dx, &mut dy0)?;
        smoke.axpy(set.stream(1), 3.0, &dx, &mut dy1)?;
        set.join(s)
    })
    .unwrap();
    // Nothing ran during capture.
    assert!(gpu::download(s, &dy0).unwrap().iter().all(|&v| v == 0.0));
    graph.replay().unwrap();
    let once = (
        gpu::download(s, &dy0).unwrap(),
        gpu::download(s, &dy1).unwrap(),
    );
    assert_eq!(once.0, axpy_cpu(2.0, &x, &vec![0.0; n]));
    assert_eq!(once.1, axpy_cpu(3.0, &x, &vec![0.0; n]));
    graph.replay().unwrap();
    let twice = gpu::download(s, &dy0).unwrap();
    assert_eq!(twice, axpy_cpu(2.0, &x, &once.0));
}

/// `Gpu::memory_peak` sees a buffer that came and went, and a reset starts it again from
/// what is in use.
#[test]
fn memory_peak_sees_a_freed_buffer_until_reset() {
    let Some(gpu) = gpu_or_skip("memory_peak_sees_a_freed_buffer_until_reset") else {
        return;
    };
    gpu.sync().unwrap();
    gpu.reset_memory_peak().unwrap();
    let Some(base) = gpu.memory_peak().unwrap() else {
        println!("memory_peak_sees_a_freed_buffer_until_reset: no memory pool on this device");
        return;
    };
    let mib = 1u64 << 20;
    let buf = gpu.stream().alloc_zeros::<u8>(1 << 30).unwrap();
    drop(buf);
    gpu.sync().unwrap();
    let peak = gpu.memory_peak().unwrap().unwrap();
    assert!(peak >= base + 1024 * mib, "peak {peak} from {base}");
    gpu.reset_memory_peak().unwrap();
    let after = gpu.memory_peak().unwrap().unwrap();
    // (Other tests of this binary may hold a few MiB meanwhile.)
    assert!(
        after + 512 * mib <= peak,
        "after a reset {after}, before {peak}"
    );
}

#[test]
fn event_timing_gives_positive_durations() {
    let Some(gpu) = gpu_or_skip("event_timing_gives_positive_durations") else {
        return;
    };
    let smoke = SmokeKernels::load(&gpu).unwrap();
    let s = gpu.stream();
    let n = 1 << 22;
    let dx = gpu::upload(s, &random(n, 4)).unwrap();
    let mut dy = gpu::upload(s, &vec![0.0f32; n]).unwrap();
    let mut timer = EventTimer::start(s).unwrap();
    for i in 0..3 {
        timer
            .span(format!("axpy {i}"), 0, s, || {
                smoke.axpy(s, 1.0, &dx, &mut dy)
            })
            .unwrap();
    }
    let total = timer.elapsed_ms(s).unwrap();
    let spans = timer.spans().unwrap();
    assert!(total > 0.0);
    assert_eq!(spans.len(), 3);
    for w in spans.windows(2) {
        assert!(
            w[0].end_ms <= w[1].start_ms + 1e-3,
            "spans on one stream are ordered"
        );
    }
    for sp in &spans {
        assert!(sp.end_ms > sp.start_ms, "{sp:?}");
    }
}

#[test]
fn no_gpu_errors_name_the_fix() {
    // Runs everywhere: asking for a device that cannot exist gives a clear error, no panic.
    match attnrt::gpu::Gpu::open(4096) {
        Ok(_) => panic!("device 4096 should not exist"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("no usable GPU"), "{msg}");
        }
    }
}

#[test]
fn half_precision_buffers_round_trip_and_poison() {
    let Some(gpu) = gpu_or_skip("half_precision_buffers_round_trip_and_poison") else {
        return;
    };
    let s = gpu.stream();
    let x = random(257, 5);
    let h: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
    let b: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let mut dh = gpu::upload(s, &h).unwrap();
    let mut db = gpu::upload(s, &b).unwrap();
    assert_eq!(gpu::download(s, &dh).unwrap(), h);
    assert_eq!(gpu::download(s, &db).unwrap(), b);
    gpu::poison_nan(s, &mut dh).unwrap();
    gpu::poison_nan(s, &mut db).unwrap();
    assert!(gpu::download(s, &dh).unwrap().iter().all(|v| v.is_nan()));
    assert!(gpu::download(s, &db).unwrap().iter().all(|v| v.is_nan()));
}
