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
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::base::DistributionRatio;
use crate::train::data::Dataset;
use crate::{Error, Result};

/// Maps sample positions to dataset indices (see the module docs). Keeps the current
/// epoch's permutation.
pub struct SampleOrder {
    len: usize,
    seed: u64,
    epoch: u64,
    perm: Vec<u32>,
}

impl SampleOrder {
    pub fn new(len: usize, seed: u64) -> SampleOrder {
        let mut order = SampleOrder {
            len,
            seed,
            epoch: 0,
            perm: Vec::new(),
        };
        order.shuffle(0);
        order
    }

    fn shuffle(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.perm = (0..self.len as u32).collect();
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        self.perm.shuffle(&mut rng);
    }

    /// The dataset index at `position`, and whether augmentation mirrors it (a coin drawn
    /// from the seed and the position, so a resumed run flips the same samples).
    pub fn at(&mut self, position: u64) -> (usize, bool) {
        let epoch = position / self.len as u64;
        if epoch != self.epoch {
            self.shuffle(epoch);
        }
        let flip = ChaCha8Rng::seed_from_u64(self.seed ^ position.rotate_left(17) ^ 0xF11F)
            .random_bool(0.5);
        (
            self.perm[(position % self.len as u64) as usize] as usize,
            flip,
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

/// Fills `batch` with step `step` of size `batch_size`, in parallel over samples.
pub fn fill_batch(
    dataset: &Dataset,
    order: &mut SampleOrder,
    step: u64,
    batch_size: usize,
    batch: &mut Batch,
) {
    let features = dataset.shape().features();
    let first = step * batch_size as u64;
    let picks: Vec<(usize, bool)> = (0..batch_size as u64)
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
        .for_each(|((out, label), &(index, flip))| *label = dataset.sample(index, flip, out));
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

/// Assembles batches `first_step..end_step` on a background thread (the samples of each batch
/// in parallel), keeping up to `depth` ready ahead of the consumer. Used buffers go back
/// through [`Loader::recycle`] so steady state allocates nothing. Dropping the loader stops
/// the thread.
pub struct Loader {
    ready: Option<Receiver<Batch>>,
    spare: SyncSender<Batch>,
    thread: Option<JoinHandle<()>>,
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
        let (ready_tx, ready_rx) = sync_channel::<Batch>(depth);
        // Room for every buffer in flight, so recycling never blocks the consumer.
        let (spare_tx, spare_rx) = sync_channel::<Batch>(depth + 2);
        let thread = std::thread::Builder::new()
            .name("attnrt-loader".into())
            .spawn(move || {
                let mut order = SampleOrder::new(dataset.len(), seed);
                for step in first_step..end_step {
                    let mut batch = spare_rx.try_recv().unwrap_or(Batch {
                        step,
                        features: Vec::new(),
                        labels: Vec::new(),
                    });
                    fill_batch(&dataset, &mut order, step, batch_size, &mut batch);
                    if ready_tx.send(batch).is_err() {
                        return; // the consumer is gone
                    }
                }
            })
            .map_err(|e| Error::io("loader thread", e))?;
        Ok(Loader {
            ready: Some(ready_rx),
            spare: spare_tx,
            thread: Some(thread),
        })
    }

    /// The next batch, waiting for it if needed; `None` after the last step.
    pub fn next_batch(&mut self) -> Option<Batch> {
        self.ready.as_ref().and_then(|r| r.recv().ok())
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
