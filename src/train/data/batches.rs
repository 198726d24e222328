//! The sample order, mini-batches, their split into per-GPU shards, and the loader thread
//! that assembles batches ahead of the training loop.
//!
//! Sample order: the run is one stream of sample *positions* 0, 1, 2, ...; position `p` is in
//! epoch `p / N` and reads sample `perm_e[p % N]`, where `perm_e` is a permutation of the N
//! samples drawn from `(seed, e)`. Step `t` takes positions `t*B .. (t+1)*B`, and its shards
//! are consecutive ranges of that batch. So the order depends only on the seed and the
//! position, never on the DR: changing the DR between steps cannot drop or repeat a sample,
//! and the data position to checkpoint is just `step * B`.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::base::DistributionRatio;
use crate::train::data::{Augment, Dataset};
use crate::{Error, Result};

/// Maps sample positions to dataset indices (see the module docs). Keeps the current
/// epoch's permutation.
pub struct SampleOrder {
    len: usize,
    seed: u64,
    epoch: u64,
    perm: Vec<u32>,
    /// Every epoch in the set's own order ([`Dataset::in_order`]).
    in_order: bool,
}

impl SampleOrder {
    pub fn new(len: usize, seed: u64) -> SampleOrder {
        let mut order = SampleOrder {
            len,
            seed,
            epoch: 0,
            perm: Vec::new(),
            in_order: false,
        };
        order.shuffle(0);
        order
    }

    /// The order `dataset`'s samples are read in: shuffled per epoch, or in the set's own
    /// order when it asks for that.
    pub fn of(dataset: &Dataset, seed: u64) -> SampleOrder {
        let mut order = SampleOrder::new(dataset.len(), seed);
        order.in_order = dataset.in_order();
        order.shuffle(0);
        order
    }

    fn shuffle(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.perm = (0..self.len as u32).collect();
        if !self.in_order {
            let mut rng =
                ChaCha8Rng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            self.perm.shuffle(&mut rng);
        }
    }

    /// The dataset index at `position`, and its augmentation: a coin for the mirror and a
    /// draw for the crop, from the seed and the position, so a resumed run augments the same
    /// samples the same way.
    pub fn at(&mut self, position: u64) -> (usize, Augment) {
        let epoch = position / self.len as u64;
        if epoch != self.epoch {
            self.shuffle(epoch);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ position.rotate_left(17) ^ 0xF11F);
        let flip = rng.random_bool(0.5);
        (
            self.perm[(position % self.len as u64) as usize] as usize,
            Augment::Train {
                flip,
                draw: rng.next_u64(),
            },
        )
    }
}

/// One mini-batch: `labels.len()` samples, `features` row-major (sample, feature).
#[derive(Clone, Debug)]
pub struct Batch {
    pub step: u64,
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Fills `batch` with step `step` of size `batch_size`, in parallel over samples (a folder
/// set's images are decoded and augmented on rayon's threads). The error is the first
/// sample's that failed (an image that does not decode), with the step.
pub fn fill_batch(
    dataset: &Dataset,
    order: &mut SampleOrder,
    step: u64,
    batch_size: usize,
    batch: &mut Batch,
) -> Result<()> {
    let features = dataset.shape().features();
    let first = step * batch_size as u64;
    let picks: Vec<(usize, Augment)> = (0..batch_size as u64)
        .map(|i| order.at(first + i))
        .collect();
    batch.step = step;
    batch.features.resize(batch_size * features, 0.0);
    batch.labels.resize(batch_size, 0);
    batch
        .features
        .par_chunks_mut(features)
        .zip(batch.labels.par_iter_mut())
        .zip(picks.par_iter())
        .map(|((out, label), &(index, augment))| {
            *label = dataset.sample(index, augment, out)?;
            Ok(())
        })
        .collect::<Result<()>>()
        .map_err(|e| {
            Error::invalid(
                format!("{}: batch of step {step}", dataset.name()),
                e.to_string(),
            )
        })
}

/// How fast the loader assembles batches, and how long the training loop waited for them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoaderStats {
    /// Samples assembled (read, decoded, augmented) per second of the loader's work, in steady
    /// state: over the batches made in a recycled buffer, which leaves out the first batches'
    /// one-off costs (allocating and first touching the buffers, the synthetic set's noise
    /// table drawn at its first sample), as the steps' rate leaves out the first step's. Over
    /// every batch when none was recycled (a run of a few steps).
    pub samples_per_s: f64,
    /// Seconds the consumer waited for a batch, the first batch excepted (every run waits for
    /// that one), in steady state as the rate: for the batches made in a recycled buffer, when
    /// there are any. A batch in a new buffer waits on the buffer's one-off first touch
    /// (tens of MB for a batch of 224x224 images), which a run pays only until the first
    /// batches come back.
    pub waited_s: f64,
}

impl LoaderStats {
    /// The share of the steps' time above which waiting for batches counts as the loader
    /// limiting them.
    pub const LIMITING_SHARE: f64 = 0.05;

    /// Whether the loader, not the step, set the pace of the steps after the first (which
    /// took `steady_s` seconds at `steady_rate` samples/s): it made batches more slowly than
    /// the steps used them (a short run can hide that behind batches made during its first
    /// step, a long one cannot), or the steps waited for batches for more than
    /// [`Self::LIMITING_SHARE`] of their time. The first step's one-off costs (cuDNN's
    /// planning: seconds) are left out, as they would hide the wait of a short run.
    pub fn limited(&self, steady_s: f64, steady_rate: f64) -> bool {
        self.samples_per_s < steady_rate || self.waited_s > Self::LIMITING_SHARE * steady_s
    }
}

/// The per-GPU shards of a batch of `batch` samples under `dr`: consecutive ranges whose
/// lengths are `dr.split_batch(batch)` (they sum to exactly `batch`; a GPU with a zero share
/// gets an empty range).
pub fn shard_ranges(dr: &DistributionRatio, batch: usize) -> Vec<Range<usize>> {
    let mut start = 0;
    dr.split_batch(batch as u64)
        .into_iter()
        .map(|n| {
            let r = start..start + n as usize;
            start = r.end;
            r
        })
        .collect()
}

/// The loader thread's samples and nanoseconds of work: over every batch, and over the batches
/// made in a recycled buffer (the steady state: [`LoaderStats::samples_per_s`]).
#[derive(Debug, Default)]
struct Work {
    all: [AtomicU64; 2],
    recycled: [AtomicU64; 2],
}

/// The consumer's waits for batches after the first: over every batch, and over those made in
/// a recycled buffer (the steady state: [`LoaderStats::waited_s`]; `None` until one comes).
#[derive(Debug, Default)]
struct Waits {
    all: Duration,
    recycled: Option<Duration>,
}

impl Waits {
    fn add(&mut self, recycled: bool, waited: Duration) {
        self.all += waited;
        if recycled {
            *self.recycled.get_or_insert(Duration::ZERO) += waited;
        }
    }

    /// Seconds waited for the recycled batches when there are any, else for every batch.
    fn seconds(&self) -> f64 {
        self.recycled.unwrap_or(self.all).as_secs_f64()
    }
}

impl Work {
    fn add(&self, recycled: bool, samples: usize, took: Duration) {
        let ns = took.as_nanos() as u64;
        let count = |c: &[AtomicU64; 2]| {
            c[0].fetch_add(samples as u64, Ordering::Relaxed);
            c[1].fetch_add(ns, Ordering::Relaxed);
        };
        count(&self.all);
        if recycled {
            count(&self.recycled);
        }
    }

    /// Samples per second of work: the recycled batches' when there are any, else every
    /// batch's; 0 before the first.
    fn samples_per_s(&self) -> f64 {
        let rate = |c: &[AtomicU64; 2]| {
            let ns = c[1].load(Ordering::Relaxed);
            (ns > 0).then(|| c[0].load(Ordering::Relaxed) as f64 / (ns as f64 * 1e-9))
        };
        rate(&self.recycled).or(rate(&self.all)).unwrap_or(0.0)
    }
}

/// Assembles batches `first_step..end_step` on a background thread (the samples of each batch
/// in parallel), keeping up to `depth` ready ahead of the consumer. Used buffers go back
/// through [`Loader::recycle`] so steady state allocates nothing. Dropping the loader stops
/// the thread.
pub struct Loader {
    /// Each batch, and whether it was made in a recycled buffer.
    ready: Option<Receiver<Result<(Batch, bool)>>>,
    spare: SyncSender<Batch>,
    thread: Option<JoinHandle<()>>,
    /// The loader thread's work: [`Work`]'s counters.
    work: Arc<Work>,
    /// The consumer's wait for batches after the first.
    waits: Waits,
    received: u64,
    /// Why the loader stopped early.
    error: Option<Error>,
}

impl Loader {
    pub fn spawn(
        dataset: Arc<Dataset>,
        seed: u64,
        batch_size: usize,
        first_step: u64,
        end_step: u64,
        depth: usize,
    ) -> Result<Loader> {
        let depth = depth.max(1);
        let (ready_tx, ready_rx) = sync_channel::<Result<(Batch, bool)>>(depth);
        let work = Arc::new(Work::default());
        let counters = work.clone();
        // Room for every buffer in flight, so recycling never blocks the consumer.
        let (spare_tx, spare_rx) = sync_channel::<Batch>(depth + 2);
        let thread = std::thread::Builder::new()
            .name("attnrt-loader".into())
            .spawn(move || {
                let mut order = SampleOrder::of(&dataset, seed);
                for step in first_step..end_step {
                    let spare = spare_rx.try_recv().ok();
                    let recycled = spare.is_some();
                    let mut batch = spare.unwrap_or(Batch {
                        step,
                        features: Vec::new(),
                        labels: Vec::new(),
                    });
                    let started = Instant::now();
                    let filled = fill_batch(&dataset, &mut order, step, batch_size, &mut batch);
                    counters.add(recycled, batch_size, started.elapsed());
                    let failed = filled.is_err();
                    // The consumer gone, or a batch that could not be made: either ends the
                    // thread (the error is the consumer's to report).
                    if ready_tx.send(filled.map(|()| (batch, recycled))).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("loader thread", e))?;
        Ok(Loader {
            ready: Some(ready_rx),
            spare: spare_tx,
            thread: Some(thread),
            work,
            waits: Waits::default(),
            received: 0,
            error: None,
        })
    }

    /// The next batch, waiting for it if needed; `None` after the last step, or when a batch
    /// could not be made ([`Loader::take_error`] says why).
    pub fn next_batch(&mut self) -> Option<Batch> {
        let started = Instant::now();
        let next = self.ready.as_ref().and_then(|r| r.recv().ok());
        let waited = started.elapsed();
        let first = self.received == 0;
        self.received += 1;
        match next? {
            Ok((batch, recycled)) => {
                if !first {
                    self.waits.add(recycled, waited);
                }
                Some(batch)
            }
            Err(e) => {
                self.error = Some(e);
                self.ready = None;
                None
            }
        }
    }

    /// Why the loader stopped before its last step, once.
    pub fn take_error(&mut self) -> Option<Error> {
        self.error.take()
    }

    /// The loader's rate so far and the consumer's wait.
    pub fn stats(&self) -> LoaderStats {
        LoaderStats {
            samples_per_s: self.work.samples_per_s(),
            waited_s: self.waits.seconds(),
        }
    }

    /// Hands a used batch's buffers back for reuse.
    pub fn recycle(&self, batch: Batch) {
        // A full spare queue just drops the buffer.
        let _ = self.spare.try_send(batch);
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the receiving end makes the thread's next send fail, and it returns.
        self.ready = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{LoaderStats, Waits, Work};
    use std::time::Duration;

    #[test]
    fn the_loader_rate_leaves_out_batches_in_new_buffers_once_one_was_recycled() {
        let work = Work::default();
        assert_eq!(work.samples_per_s(), 0.0);
        // The first batch: a new buffer and the one-off set-up, 64 samples in 0.5 s.
        work.add(false, 64, Duration::from_millis(500));
        assert_eq!(work.samples_per_s(), 128.0);
        // Then recycled buffers: 2 x 64 samples in 0.01 s each.
        work.add(true, 64, Duration::from_millis(10));
        work.add(true, 64, Duration::from_millis(10));
        assert!((work.samples_per_s() - 6400.0).abs() < 1e-6);
    }

    #[test]
    fn the_wait_leaves_out_batches_in_new_buffers_once_one_was_recycled() {
        let mut waits = Waits::default();
        assert_eq!(waits.seconds(), 0.0);
        // Batches in new buffers, waiting on their first touch.
        waits.add(false, Duration::from_millis(7));
        assert!((waits.seconds() - 0.007).abs() < 1e-12);
        // Then recycled ones: only their waits count.
        waits.add(true, Duration::from_millis(1));
        waits.add(false, Duration::from_millis(5));
        waits.add(true, Duration::from_millis(2));
        assert!((waits.seconds() - 0.003).abs() < 1e-12);
    }

    #[test]
    fn a_loader_slower_than_the_steps_or_waited_for_limits_them() {
        let stats = |samples_per_s, waited_s| LoaderStats {
            samples_per_s,
            waited_s,
        };
        // 2 s of steps at 1000 samples/s.
        assert!(!stats(1500.0, 0.0).limited(2.0, 1000.0));
        assert!(!stats(1500.0, 0.09).limited(2.0, 1000.0));
        // Slower than the steps, though a short run's prefetched batches hid the wait.
        assert!(stats(900.0, 0.0).limited(2.0, 1000.0));
        // Waited for more than 5% of the steps' time.
        assert!(stats(1500.0, 0.11).limited(2.0, 1000.0));
    }
}
