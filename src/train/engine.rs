//! Engines run training steps on a set of devices: [`CpuEngine`] (one replica, shards computed
//! in turn: the reference, and what runs without a GPU) and [`GpuEngine`] (one worker thread
//! and replica per GPU, gradients summed by the all-reduce of [`super::allreduce`]).
//!
//! A step takes the whole batch and one shard range per device. Each shard's gradient is of
//! `sum(loss) / B` (B the whole batch), so the sum over devices is the full batch's mean
//! gradient whatever the split; a device with an empty shard contributes zeros and still
//! applies the update, so every replica holds the same parameters after every step.

use std::ops::Range;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;

use super::allreduce::{self, HostExchange, PhaseEvents};
use super::batches::Batch;
use super::cpu::{self, ShardStats};
use super::model::ModelSpec;
use super::optim::Optimizer;
use super::replica::Replica;
use crate::gpu::Gpu;
use crate::{Error, Result};

/// Parameters and optimizer state, on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    pub params: Vec<f32>,
    pub optimizer: Vec<Vec<f32>>,
}

impl State {
    /// Fresh state: `params`, and zeroed optimizer vectors.
    pub fn fresh(params: Vec<f32>, optimizer: &Optimizer) -> State {
        let n = params.len();
        State {
            params,
            optimizer: vec![vec![0.0; n]; optimizer.state_slots()],
        }
    }
}

pub trait Engine {
    /// Devices (shards per step).
    fn devices(&self) -> usize;
    /// Training step `t` (from 1) on `batch`, device `g` taking `shards[g]`.
    fn step(&mut self, t: u64, batch: &Arc<Batch>, shards: &[Range<usize>]) -> Result<ShardStats>;
    /// The state of replica 0.
    fn state(&mut self) -> Result<State>;
    /// Every replica's parameters (tests check they are identical).
    fn replica_params(&mut self) -> Result<Vec<Vec<f32>>>;
    /// Replaces the state of every replica (resume).
    fn set_state(&mut self, state: &State) -> Result<()>;
    /// A line to show the user about how the engine runs (e.g. a fallback), if any.
    fn notice(&self) -> Option<String>;
}

fn check_shards(devices: usize, batch: &Batch, shards: &[Range<usize>]) -> Result<()> {
    let total: usize = shards.iter().map(|r| r.len()).sum();
    if shards.len() != devices || total != batch.len() || shards.iter().any(|r| r.end > batch.len())
    {
        return Err(Error::invalid(
            "training step",
            format!(
                "{} shards covering {total} samples for {devices} devices and a batch of {}",
                shards.len(),
                batch.len()
            ),
        ));
    }
    Ok(())
}

/// The CPU engine: one replica; with several shards it computes them in turn and sums their
/// gradients, as the GPUs do together.
pub struct CpuEngine {
    model: ModelSpec,
    optimizer: Optimizer,
    devices: usize,
    state: State,
    grads: Vec<f32>,
    shard_grads: Vec<f32>,
}

impl CpuEngine {
    pub fn new(model: ModelSpec, optimizer: Optimizer, devices: usize, state: State) -> CpuEngine {
        let n = state.params.len();
        CpuEngine {
            model,
            optimizer,
            devices,
            state,
            grads: vec![0.0; n],
            shard_grads: vec![0.0; n],
        }
    }
}

impl Engine for CpuEngine {
    fn devices(&self) -> usize {
        self.devices
    }

    fn step(&mut self, t: u64, batch: &Arc<Batch>, shards: &[Range<usize>]) -> Result<ShardStats> {
        check_shards(self.devices, batch, shards)?;
        let features = self.model.features();
        let scale = 1.0 / batch.len() as f32;
        let mut stats = ShardStats::default();
        self.grads.fill(0.0);
        for r in shards {
            stats += cpu::forward_backward(
                &self.model,
                &self.state.params,
                &batch.features[r.start * features..r.end * features],
                &batch.labels[r.clone()],
                scale,
                &mut self.shard_grads,
            );
            self.grads
                .iter_mut()
                .zip(&self.shard_grads)
                .for_each(|(g, s)| *g += s);
        }
        self.optimizer.step_cpu(
            t,
            &mut self.state.params,
            &self.grads,
            &mut self.state.optimizer,
        );
        Ok(stats)
    }

    fn state(&mut self) -> Result<State> {
        Ok(self.state.clone())
    }

    fn replica_params(&mut self) -> Result<Vec<Vec<f32>>> {
        Ok(vec![self.state.params.clone()])
    }

    fn set_state(&mut self, state: &State) -> Result<()> {
        self.state = state.clone();
        Ok(())
    }

    fn notice(&self) -> Option<String> {
        None
    }
}

/// How the GPU workers exchange gradients.
enum Exchange {
    /// One GPU: nothing to exchange.
    Alone,
    /// Direct all-reduce over peer memory: the gradient buffers' addresses by rank, and the
    /// events that order the phases across GPUs.
    Peer(Vec<u64>, PhaseEvents),
    /// Staged through host memory.
    Host(HostExchange),
}

/// What the workers share: the barrier that separates the exchange phases, and the exchange.
struct Shared {
    barrier: Barrier,
    exchange: Exchange,
    len: usize,
}

enum Command {
    Step {
        t: u64,
        batch: Arc<Batch>,
        shard: Range<usize>,
    },
    Download,
    Upload(Arc<State>),
}

enum Reply {
    Stats(ShardStats),
    State(State),
    Done,
}

struct Worker {
    commands: Sender<Command>,
    replies: Receiver<Result<Reply>>,
    thread: Option<JoinHandle<()>>,
}

/// The multi-GPU engine: one worker thread per GPU, each with its own context, stream and
/// replica.
pub struct GpuEngine {
    workers: Vec<Worker>,
    notice: Option<String>,
}

impl GpuEngine {
    /// Opens `ordinals`, enables peer access between them (falling back to host staging), and
    /// starts one replica of `state` per GPU.
    pub fn new(
        ordinals: &[usize],
        model: &ModelSpec,
        optimizer: Optimizer,
        state: &State,
    ) -> Result<GpuEngine> {
        if ordinals.is_empty() || ordinals.len() > crate::kernels::train_ops::MAX_PEERS {
            return Err(Error::invalid(
                "--gpus",
                format!(
                    "{} GPUs given, 1..={} supported",
                    ordinals.len(),
                    crate::kernels::train_ops::MAX_PEERS
                ),
            ));
        }
        let gpus = ordinals
            .iter()
            .map(|&o| Gpu::open(o))
            .collect::<Result<Vec<_>>>()?;
        let peer = gpus.len() > 1 && allreduce::enable_peer_access(&gpus)?;
        let replicas = gpus
            .iter()
            .map(|g| Replica::new(g.clone(), model, optimizer, &state.params, &state.optimizer))
            .collect::<Result<Vec<_>>>()?;
        let (exchange, notice) = match (gpus.len(), peer) {
            (1, _) => (Exchange::Alone, None),
            (_, true) => (
                Exchange::Peer(
                    replicas.iter().map(Replica::grads_ptr).collect(),
                    PhaseEvents::new(&gpus)?,
                ),
                None,
            ),
            (n, false) => (
                Exchange::Host(HostExchange::new(n)),
                Some(
                    "peer access between the GPUs is unavailable; gradients are summed through \
                     host memory (slower)"
                        .to_string(),
                ),
            ),
        };
        let shared = Arc::new(Shared {
            barrier: Barrier::new(gpus.len()),
            exchange,
            len: state.params.len(),
        });
        let features = model.features();
        let mut workers = Vec::new();
        for (rank, replica) in replicas.into_iter().enumerate() {
            let (ctx, crx) = channel();
            let (rtx, rrx) = channel();
            let shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("attnrt-gpu{}", ordinals[rank]))
                .spawn(move || worker(rank, replica, features, shared, crx, rtx))
                .map_err(|e| Error::io("GPU worker thread", e))?;
            workers.push(Worker {
                commands: ctx,
                replies: rrx,
                thread: Some(thread),
            });
        }
        Ok(GpuEngine { workers, notice })
    }

    /// Sends one command to every worker and collects the replies in rank order.
    fn all(&mut self, make: impl Fn(usize) -> Command) -> Result<Vec<Reply>> {
        for (rank, w) in self.workers.iter().enumerate() {
            w.commands
                .send(make(rank))
                .map_err(|_| Error::invalid("GPU worker", format!("worker {rank} has stopped")))?;
        }
        // Collect every reply before returning an error, so no worker is left mid-command.
        let replies: Vec<Result<Reply>> = self
            .workers
            .iter()
            .enumerate()
            .map(|(rank, w)| {
                w.replies.recv().unwrap_or_else(|_| {
                    Err(Error::invalid(
                        "GPU worker",
                        format!("worker {rank} has stopped"),
                    ))
                })
            })
            .collect();
        replies.into_iter().collect()
    }
}

impl Engine for GpuEngine {
    fn devices(&self) -> usize {
        self.workers.len()
    }

    fn step(&mut self, t: u64, batch: &Arc<Batch>, shards: &[Range<usize>]) -> Result<ShardStats> {
        check_shards(self.workers.len(), batch, shards)?;
        let mut stats = ShardStats::default();
        for r in self.all(|g| Command::Step {
            t,
            batch: batch.clone(),
            shard: shards[g].clone(),
        })? {
            if let Reply::Stats(s) = r {
                stats += s;
            }
        }
        Ok(stats)
    }

    fn state(&mut self) -> Result<State> {
        match self.workers[0].commands.send(Command::Download) {
            Ok(()) => match self.workers[0].replies.recv() {
                Ok(Ok(Reply::State(s))) => Ok(s),
                Ok(Err(e)) => Err(e),
                _ => Err(Error::invalid("GPU worker", "worker 0 has stopped")),
            },
            Err(_) => Err(Error::invalid("GPU worker", "worker 0 has stopped")),
        }
    }

    fn replica_params(&mut self) -> Result<Vec<Vec<f32>>> {
        Ok(self
            .all(|_| Command::Download)?
            .into_iter()
            .filter_map(|r| match r {
                Reply::State(s) => Some(s.params),
                _ => None,
            })
            .collect())
    }

    fn set_state(&mut self, state: &State) -> Result<()> {
        let state = Arc::new(state.clone());
        self.all(|_| Command::Upload(state.clone())).map(|_| ())
    }

    fn notice(&self) -> Option<String> {
        self.notice.clone()
    }
}

impl Drop for GpuEngine {
    fn drop(&mut self) {
        for w in &mut self.workers {
            // Closing the command channel ends the worker's loop.
            let (dead, _) = channel();
            w.commands = dead;
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// A worker's loop: one command at a time until the engine drops its channel.
fn worker(
    rank: usize,
    mut replica: Replica,
    features: usize,
    shared: Arc<Shared>,
    commands: Receiver<Command>,
    replies: Sender<Result<Reply>>,
) {
    while let Ok(cmd) = commands.recv() {
        let reply = match cmd {
            Command::Step { t, batch, shard } => {
                step(rank, &mut replica, features, &shared, t, &batch, shard).map(Reply::Stats)
            }
            Command::Download => replica.download().map(|(state, _)| Reply::State(state)),
            Command::Upload(state) => replica
                .upload(&state.params, &state.optimizer)
                .map(|()| Reply::Done),
        };
        if replies.send(reply).is_err() {
            return;
        }
    }
}

/// One step on one worker. Every worker waits at the same barriers whatever happens, so one
/// failing worker cannot leave the others waiting forever; it skips its work and reports.
fn step(
    rank: usize,
    replica: &mut Replica,
    features: usize,
    shared: &Shared,
    t: u64,
    batch: &Batch,
    shard: Range<usize>,
) -> Result<ShardStats> {
    let scale = 1.0 / batch.len() as f32;
    let mut result = replica
        .forward_backward(
            &batch.features[shard.start * features..shard.end * features],
            &batch.labels[shard.clone()],
            scale,
        )
        .and_then(|()| replica.stats());
    let gpu = replica.gpu().clone();
    let stream = gpu.stream().clone();
    match &shared.exchange {
        Exchange::Alone => {}
        Exchange::Peer(bufs, events) => {
            // The barriers order the enqueues (each event is recorded before anyone waits on
            // it); the events order the GPUs' work, with no host synchronisation.
            shared.barrier.wait();
            if result.is_ok() {
                // SAFETY: every rank's gradients are complete (each synchronised in `stats`
                // before the barrier); each rank writes only its own chunk of its own buffer.
                let r = unsafe { allreduce::reduce_scatter(&gpu, &stream, bufs, rank, shared.len) };
                result = r.and_then(|()| events.record(rank, 0, &stream)).and(result);
            }
            shared.barrier.wait();
            if result.is_ok() {
                // SAFETY: the stream waits for every rank's phase 1 (the chunks are final and
                // nobody reads this buffer's other chunks any more); each rank writes only the
                // chunks it does not own, in its own buffer.
                let r = events
                    .wait_for_others(rank, 0, &stream)
                    .and_then(|()| unsafe {
                        allreduce::all_gather(&gpu, &stream, bufs, rank, shared.len)
                    });
                result = r.and_then(|()| events.record(rank, 1, &stream)).and(result);
            }
            shared.barrier.wait();
            if result.is_ok() {
                // Our buffer is not written again (next backward pass) before every peer has
                // copied its chunk out of it.
                result = events.wait_for_others(rank, 1, &stream).and(result);
            }
        }
        Exchange::Host(host) => {
            shared.barrier.wait();
            if result.is_ok() {
                result = host.stage(&gpu, replica.grads_mut(), rank).and(result);
            }
            shared.barrier.wait();
            if result.is_ok() {
                result = host.sum_into(&gpu, replica.grads_mut()).and(result);
            }
            shared.barrier.wait();
        }
    }
    let stats = result?;
    replica.optimizer_step(t)?;
    Ok(stats)
}
