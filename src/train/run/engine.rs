//! Engines run training steps on a set of devices: [`CpuEngine`] (one replica, shards computed
//! in turn: the reference, and what runs without a GPU) and [`ReplicaEngine`] (one device thread
//! and replica per GPU, gradients summed by the all-reduce of [`crate::train::exchange::allreduce`]).
//!
//! A step takes the whole batch and one shard range per device. Each shard's gradient is of
//! `sum(loss) / B` (B the whole batch), so the sum over devices is the full batch's mean
//! gradient whatever the split.
//!
//! In a [`ReplicaEngine`] step only the devices with a non-empty shard work ([`ActiveSet`]): they
//! alone run the pass, the all-reduce and the optimizer; an idle GPU gets no kernel and no
//! barrier (other jobs may be measured on it). Its replica then misses the update, so the
//! engine counts the updates each replica holds ([`Freshness`]) and, before a stale replica
//! works again or is read, copies parameters and optimizer state into it from an up-to-date
//! one (device to device over peer access, else through the host). Leaving an idle device out
//! of the sum changes no value: it used to add zeros.
//!
//! With synchronised batch norm ([`CnnOptions::sync_bn`]) the step's members also sum each
//! batch norm's moments and backward sums during the pass, through a second exchange of the
//! same kind over the replicas' small [`Replica::norm_buffer`]s; every member makes the same
//! exchanges in the same order, and a member whose pass fails still takes its part in the
//! remaining ones (skipping the work), so none is left waiting at a barrier.

use std::cell::Cell;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::base::Precision;
use crate::gpu::{Gpu, nvtx};
use crate::train::data::batches::Batch;
use crate::train::exchange::allreduce::{self, HostExchange, Phase, PhaseEvents};
use cudarc::driver::{CudaSlice, DevicePtr};

use crate::train::gpu::replica::{HostTimes, NormSync, Replica};
use crate::train::models::ModelSpec;
use crate::train::models::cnn;
use crate::train::models::cpu::{self, ShardStats};
use crate::train::optim::Optimizer;
use crate::{Error, Result};

/// Parameters, optimizer state and the model's buffers (batch norm's running statistics,
/// [`ModelSpec::buffers`]), on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    pub params: Vec<f32>,
    pub optimizer: Vec<Vec<f32>>,
    pub buffers: Vec<f32>,
}

impl State {
    /// Fresh state: `params`, zeroed optimizer vectors, no buffers.
    pub fn fresh(params: Vec<f32>, optimizer: &Optimizer) -> State {
        let n = params.len();
        State {
            params,
            optimizer: vec![vec![0.0; n]; optimizer.state_slots()],
            buffers: Vec::new(),
        }
    }

    /// The same state with `buffers`.
    pub fn with_buffers(self, buffers: Vec<f32>) -> State {
        State { buffers, ..self }
    }
}

pub trait Engine {
    /// Devices (shards per step).
    fn devices(&self) -> usize;
    /// Hands the engine training step `t` (from 1) on `batch`, device `g` taking `shards[g]`.
    /// It may return before the step has run (the trainer enqueues the next step while the
    /// GPU runs this one); [`finish`](Self::finish) gives its stats. The batch may be reused
    /// once this returns.
    fn submit(&mut self, t: u64, batch: &Arc<Batch>, shards: &[Range<usize>]) -> Result<()>;
    /// Waits for the oldest submitted step that has not been finished, and returns its stats.
    fn finish(&mut self) -> Result<ShardStats>;
    /// Names the batch of the step after the next [`submit`](Self::submit), so the engine
    /// can stage it while that step's work is enqueued (each device its shard as the DR is
    /// then; a changed DR stages again). Only a hint: nothing changes but the host's time.
    fn stage_ahead(&mut self, _next: &Arc<Batch>) {}
    /// Training step `t`, to the end.
    fn step(&mut self, t: u64, batch: &Arc<Batch>, shards: &[Range<usize>]) -> Result<ShardStats> {
        self.submit(t, batch, shards)?;
        self.finish()
    }
    /// The state of replica 0.
    fn state(&mut self) -> Result<State>;
    /// Every replica's parameters (tests check they are identical).
    fn replica_params(&mut self) -> Result<Vec<Vec<f32>>>;
    /// Replaces the state of every replica (resume).
    fn set_state(&mut self, state: &State) -> Result<()>;
    /// A line to show the user about how the engine runs (e.g. a fallback), if any.
    fn notice(&self) -> Option<String>;
    /// Per GPU, the most device memory in use at once since the engine was made, in bytes
    /// ([`Gpu::memory_peak`]: the allocator's high-water mark, `None` where the allocator
    /// keeps none); empty for engines without GPUs.
    fn memory_peaks(&self) -> Result<Vec<Option<u64>>> {
        Ok(Vec::new())
    }
    /// What runs each convolution pass on the first device (cuDNN's algorithm or a cuBLASLt
    /// GEMM, and the timings that chose it), one line per convolution; empty for engines
    /// without convolutions on a GPU.
    fn conv_paths(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// The host's time enqueueing the first device's steps after its first, and staging
    /// their shards ([`HostTimes`]); `None` for engines without GPUs.
    fn host_times(&self) -> Result<Option<HostTimes>> {
        Ok(None)
    }
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
    /// The CNNs' layer graph, built once.
    graph: Option<cnn::Graph>,
    optimizer: Optimizer,
    /// bf16 is emulated: GEMM operands rounded to bf16 ([`Precision::operand`]).
    precision: Precision,
    devices: usize,
    /// The CNNs' batch norms normalise over every shard of a step ([`CpuEngine::with_sync_bn`]).
    sync_bn: bool,
    state: State,
    grads: Vec<f32>,
    shard_grads: Vec<f32>,
    /// Stats of the submitted steps not finished yet (the steps themselves have run).
    done: VecDeque<ShardStats>,
}

/// The error for [`Engine::finish`] with nothing submitted.
fn nothing_submitted() -> Error {
    Error::invalid("finishing a training step", "no step was submitted")
}

impl CpuEngine {
    pub fn new(
        model: ModelSpec,
        optimizer: Optimizer,
        precision: Precision,
        devices: usize,
        state: State,
    ) -> CpuEngine {
        let n = state.params.len();
        let graph = match &model {
            ModelSpec::Cnn(c) => Some(cnn::graph(*c)),
            _ => None,
        };
        CpuEngine {
            model,
            graph,
            optimizer,
            precision,
            devices,
            sync_bn: false,
            state,
            grads: vec![0.0; n],
            shard_grads: vec![0.0; n],
            done: VecDeque::new(),
        }
    }
}

impl CpuEngine {
    /// With `sync`, a CNN's batch norms normalise each step over all its shards' samples, as
    /// one device with the whole batch (the devices exchanging their statistics); without, each
    /// shard normalises its own samples as a device of a data-parallel job does.
    pub fn with_sync_bn(mut self, sync: bool) -> CpuEngine {
        self.sync_bn = sync;
        self
    }

    /// A CNN's dropout layers with probability `p` instead of the architecture's.
    pub fn with_dropout(mut self, p: f32) -> CpuEngine {
        self.graph = self.graph.map(|g| g.with_dropout(p));
        self
    }
}

impl Engine for CpuEngine {
    fn devices(&self) -> usize {
        self.devices
    }

    fn submit(&mut self, t: u64, batch: &Arc<Batch>, shards: &[Range<usize>]) -> Result<()> {
        check_shards(self.devices, batch, shards)?;
        let features = self.model.features();
        let scale = 1.0 / batch.len() as f32;
        let mut stats = ShardStats::default();
        // The parts the running statistics move by, each with its weight.
        let mut norms = Vec::new();
        match (&self.graph, self.sync_bn) {
            (Some(graph), true) => {
                let parts: Vec<cnn::cpu::Shard> = shards
                    .iter()
                    .map(|r| cnn::cpu::Shard {
                        x: &batch.features[r.start * features..r.end * features],
                        labels: &batch.labels[r.clone()],
                        seed: cnn::step_seed(t, r.start),
                    })
                    .collect();
                let passes = cnn::cpu::forward_backward_synced(
                    graph,
                    self.precision,
                    &self.state.params,
                    &parts,
                    scale,
                    &mut self.grads,
                )?;
                for p in passes {
                    stats += p.stats;
                    // Every shard normalised with the step's statistics: one part.
                    if norms.is_empty() && !p.norms.is_empty() {
                        norms.push((1.0, p.norms));
                    }
                }
            }
            _ => {
                self.grads.fill(0.0);
                // Each shard normalises its own samples (as each GPU does); the running
                // statistics move by the shards' statistics weighted by their share of the
                // batch.
                for r in shards {
                    let (x, labels) = (
                        &batch.features[r.start * features..r.end * features],
                        &batch.labels[r.clone()],
                    );
                    match &self.graph {
                        Some(graph) => {
                            let pass = cnn::cpu::forward_backward(
                                graph,
                                self.precision,
                                &self.state.params,
                                x,
                                labels,
                                scale,
                                cnn::step_seed(t, r.start),
                                &mut self.shard_grads,
                            )?;
                            stats += pass.stats;
                            norms.push((r.len() as f64 / batch.len() as f64, pass.norms));
                        }
                        None => {
                            stats += cpu::forward_backward(
                                &self.model,
                                self.precision,
                                &self.state.params,
                                x,
                                labels,
                                scale,
                                &mut self.shard_grads,
                            )
                        }
                    }
                    self.grads
                        .iter_mut()
                        .zip(&self.shard_grads)
                        .for_each(|(g, s)| *g += s);
                }
            }
        }
        if let Some(graph) = &self.graph {
            let parts: Vec<_> = norms.iter().map(|(w, n)| (*w, n)).collect();
            graph.update_buffers(&mut self.state.buffers, &parts)?;
        }
        self.optimizer.step_cpu(
            t,
            &mut self.state.params,
            &self.grads,
            &mut self.state.optimizer,
        );
        self.done.push_back(stats);
        Ok(())
    }

    fn finish(&mut self) -> Result<ShardStats> {
        self.done.pop_front().ok_or_else(nothing_submitted)
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

/// The devices that work in a step: those with a non-empty shard, in device order. A member's
/// position is its rank in the step's all-reduce.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ActiveSet {
    members: Vec<usize>,
}

impl ActiveSet {
    /// The active devices of `shards` (one range per device); an error when every shard is
    /// empty, since a step needs samples.
    fn of(shards: &[Range<usize>]) -> Result<ActiveSet> {
        let members: Vec<usize> = (0..shards.len())
            .filter(|&d| !shards[d].is_empty())
            .collect();
        if members.is_empty() {
            return Err(Error::invalid("training step", "a batch with no samples"));
        }
        Ok(ActiveSet { members })
    }

    fn members(&self) -> &[usize] {
        &self.members
    }

    /// `device`'s rank in the all-reduce, if it is active.
    fn rank(&self, device: usize) -> Option<usize> {
        self.members.iter().position(|&d| d == device)
    }
}

/// How many updates (steps and [`Engine::set_state`] calls) each replica holds. A replica that
/// holds fewer than the most is stale: it was idle while others stepped.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Freshness {
    held: Vec<u64>,
}

impl Freshness {
    /// `devices` replicas, all holding the initial state.
    fn new(devices: usize) -> Freshness {
        Freshness {
            held: vec![0; devices],
        }
    }

    fn latest(&self) -> u64 {
        self.held.iter().copied().max().unwrap_or(0)
    }

    /// Those of `devices` whose replica is stale.
    fn stale(&self, devices: &[usize]) -> Vec<usize> {
        let latest = self.latest();
        devices
            .iter()
            .copied()
            .filter(|&d| self.held[d] < latest)
            .collect()
    }

    /// An up-to-date replica (the first): the one to copy from and to read the state of.
    fn source(&self) -> usize {
        let latest = self.latest();
        self.held.iter().position(|&h| h == latest).unwrap_or(0)
    }

    /// `device` was brought up to date from a [`source`](Self::source).
    fn refreshed(&mut self, device: usize) {
        self.held[device] = self.latest();
    }

    /// A step's `members` (all up to date before it) applied its update.
    fn stepped(&mut self, members: &[usize]) {
        let next = self.latest() + 1;
        members.iter().for_each(|&d| self.held[d] = next);
    }

    /// Every replica was given the same new state.
    fn set_all(&mut self) {
        let next = self.latest() + 1;
        self.held.fill(next);
    }
}

/// How a [`ReplicaEngine`] sums gradients across GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeChoice {
    /// Over peer memory where every pair of GPUs can reach each other, else through the host
    /// (with a notice).
    Auto,
    /// Through the host even where peer access is available (tests compare the two paths).
    Host,
}

/// How the device threads exchange gradients.
enum Exchange {
    /// Direct all-reduce over peer memory: every device's gradient buffer address, and the
    /// events that order the phases across GPUs.
    Peer(Vec<u64>, PhaseEvents),
    /// Staged through page-locked host memory.
    Host(HostExchange),
}

/// What the device threads share for the whole run: the gradients' exchange (of `len`
/// values) and, with synchronised batch norm, the norm buffers' and the exchanges one pass
/// makes through it.
struct Shared {
    exchange: Exchange,
    len: usize,
    norm: Option<(Exchange, usize)>,
}

/// A CNN job's batch norm, dropout and f32 convolutions on the GPUs (its `sync_bn`,
/// `dropout` and `f32_conv_transforms` keys).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CnnOptions {
    /// Every batch norm normalises with the statistics of the whole step, summed over the
    /// GPUs (as [`CpuEngine::with_sync_bn`]).
    pub sync_bn: bool,
    /// The dropout layers' probability instead of the architecture's.
    pub dropout: Option<f32>,
    /// f32 convolutions may use cuDNN's FFT and Winograd algorithms
    /// ([`Replica::set_conv_transforms`]).
    pub f32_conv_transforms: bool,
}

/// One step's participants: the active devices and the barrier that they, and only they, wait
/// at between the exchange phases.
struct Group {
    active: ActiveSet,
    barrier: Barrier,
}

enum Command {
    Step {
        t: u64,
        batch: Arc<Batch>,
        shard: Range<usize>,
        group: Arc<Group>,
        /// The next step's batch, to stage this device's shard of while this step is enqueued.
        ahead: Option<Arc<Batch>>,
    },
    /// The stats of the oldest step the thread deferred.
    Finish,
    Download,
    Upload(Arc<State>),
    /// Wait for pending work and report the state buffers' addresses (a peer copies them).
    Lend,
    /// Copy parameters and optimizer state from a peer's [`Command::Lend`] addresses.
    CopyFrom(Vec<u64>),
    /// What runs each convolution ([`Engine::conv_paths`]).
    ConvPaths,
    /// The host's time on the steps ([`Engine::host_times`]).
    HostTimes,
}

enum Reply {
    Stats(ShardStats),
    /// The step is enqueued; its stats come with [`Command::Finish`].
    Enqueued,
    State(State),
    Addresses(Vec<u64>),
    Lines(Vec<String>),
    HostTimes(HostTimes),
    Done,
}

struct DeviceThread {
    commands: Sender<Command>,
    replies: Receiver<Result<Reply>>,
    thread: Option<JoinHandle<()>>,
}

/// The multi-GPU engine: one device thread per GPU, each with its own context, stream and
/// replica.
pub struct ReplicaEngine {
    threads: Vec<DeviceThread>,
    /// The devices, for their memory peaks (the replicas belong to the threads).
    gpus: Vec<Arc<Gpu>>,
    /// The members of each submitted step not finished yet, oldest first: each enqueued its
    /// share and deferred its stats read-back.
    pending: VecDeque<Vec<usize>>,
    freshness: Freshness,
    /// Whether a stale replica is refreshed over peer memory (else through the host).
    peer: bool,
    notice: Option<String>,
    /// The next step's batch ([`Engine::stage_ahead`]), for the next submit's devices.
    ahead: Option<Arc<Batch>>,
}

impl ReplicaEngine {
    /// Opens `ordinals`, enables peer access between them (falling back to host staging), and
    /// starts one replica of `state` per GPU, its linear layers computing in `precision`.
    pub fn new(
        ordinals: &[usize],
        model: &ModelSpec,
        optimizer: Optimizer,
        precision: Precision,
        state: &State,
    ) -> Result<ReplicaEngine> {
        let (auto, cnn) = (ExchangeChoice::Auto, CnnOptions::default());
        ReplicaEngine::with_exchange(ordinals, model, optimizer, precision, state, auto, cnn)
    }

    /// As [`new`](Self::new), exchanging gradients (and refreshing stale replicas) as `choice`
    /// says, a CNN's batch norm, dropout and convolutions as `options` says.
    pub fn with_exchange(
        ordinals: &[usize],
        model: &ModelSpec,
        optimizer: Optimizer,
        precision: Precision,
        state: &State,
        choice: ExchangeChoice,
        options: CnnOptions,
    ) -> Result<ReplicaEngine> {
        if ordinals.is_empty() || ordinals.len() > crate::kernels::allreduce::MAX_PEERS {
            return Err(Error::invalid(
                "--gpus",
                format!(
                    "{} GPUs given, 1..={} supported",
                    ordinals.len(),
                    crate::kernels::allreduce::MAX_PEERS
                ),
            ));
        }
        let gpus = ordinals
            .iter()
            .map(|&o| Gpu::open(o))
            .collect::<Result<Vec<_>>>()?;
        let peer = match choice {
            ExchangeChoice::Auto => gpus.len() == 1 || allreduce::enable_peer_access(&gpus)?,
            ExchangeChoice::Host => false,
        };
        let mut replicas = gpus
            .iter()
            .map(|g| {
                let (params, opt_state) = (&state.params, &state.optimizer);
                let mut r = match (model, options.dropout) {
                    (ModelSpec::Cnn(c), Some(p)) => {
                        let graph = cnn::graph(*c).with_dropout(p);
                        Replica::for_graph(
                            g.clone(),
                            graph,
                            optimizer,
                            precision,
                            params,
                            opt_state,
                        )?
                    }
                    _ => Replica::new(g.clone(), model, optimizer, precision, params, opt_state)?,
                };
                r.upload(params, opt_state, &state.buffers)?;
                r.set_conv_transforms(options.f32_conv_transforms);
                Ok(r)
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = match options.sync_bn {
            false => None,
            true => norm_exchange(&gpus, &mut replicas, peer)?,
        };
        // The gradients and, after them, the model buffers' contributions (batch norm).
        let len = replicas.first().map_or(0, Replica::exchange_len);
        let exchange = if peer {
            Exchange::Peer(
                replicas.iter().map(Replica::grads_ptr).collect(),
                PhaseEvents::new(&gpus)?,
            )
        } else {
            Exchange::Host(HostExchange::new(&gpus, len)?)
        };
        let notice = match (peer, choice) {
            (true, _) => None,
            (false, ExchangeChoice::Auto) => Some(
                "peer access between the GPUs is unavailable; gradients are summed through \
                 host memory (slower)",
            ),
            (false, ExchangeChoice::Host) => {
                Some("gradients are summed through host memory, as asked (slower)")
            }
        };
        let shared = Arc::new(Shared {
            exchange,
            len,
            norm,
        });
        let mut threads = Vec::new();
        for (device, replica) in replicas.into_iter().enumerate() {
            let (ctx, crx) = channel();
            let (rtx, rrx) = channel();
            let shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("attnrt-gpu{}", ordinals[device]))
                .spawn(move || device_loop(device, replica, shared, crx, rtx))
                .map_err(|e| Error::io("GPU device thread", e))?;
            threads.push(DeviceThread {
                commands: ctx,
                replies: rrx,
                thread: Some(thread),
            });
        }
        // The peaks count from here: the replicas' own buffers, then what the steps add.
        gpus.iter().try_for_each(|g| g.reset_memory_peak())?;
        Ok(ReplicaEngine {
            gpus,
            freshness: Freshness::new(threads.len()),
            pending: VecDeque::new(),
            threads,
            peer,
            notice: notice.map(str::to_string),
            ahead: None,
        })
    }

    /// Sends one command to each of `devices` and collects the replies in that order.
    fn call(&self, devices: &[usize], make: impl Fn(usize) -> Command) -> Result<Vec<Reply>> {
        let stopped = |d: usize| {
            Error::invalid(
                "GPU device thread",
                format!("the thread of device {d} has stopped"),
            )
        };
        for &d in devices {
            self.threads[d]
                .commands
                .send(make(d))
                .map_err(|_| stopped(d))?;
        }
        // Collect every reply before returning an error, so no thread is left mid-command.
        let replies: Vec<Result<Reply>> = devices
            .iter()
            .map(|&d| {
                self.threads[d]
                    .replies
                    .recv()
                    .unwrap_or_else(|_| Err(stopped(d)))
            })
            .collect();
        replies.into_iter().collect()
    }

    fn every_device(&self) -> Vec<usize> {
        (0..self.threads.len()).collect()
    }

    /// Replica `device`'s state, on the host.
    fn download(&self, device: usize) -> Result<State> {
        match self.call(&[device], |_| Command::Download)?.pop() {
            Some(Reply::State(s)) => Ok(s),
            _ => Err(unexpected_reply(device, "a download")),
        }
    }

    /// Brings the stale replicas among `devices` up to date from an up-to-date one: device to
    /// device when peer access is on, else through the host.
    fn refresh(&mut self, devices: &[usize]) -> Result<()> {
        let stale = self.freshness.stale(devices);
        if stale.is_empty() {
            return Ok(());
        }
        let source = self.freshness.source();
        if self.peer {
            // The source waits for its pending work before lending its addresses, and gets no
            // command until every copy from it has finished (each waits for its copy).
            let addresses = match self.call(&[source], |_| Command::Lend)?.pop() {
                Some(Reply::Addresses(a)) => a,
                _ => return Err(unexpected_reply(source, "a lend")),
            };
            self.call(&stale, |_| Command::CopyFrom(addresses.clone()))?;
        } else {
            let state = Arc::new(self.download(source)?);
            self.call(&stale, |_| Command::Upload(state.clone()))?;
        }
        stale.iter().for_each(|&d| self.freshness.refreshed(d));
        Ok(())
    }
}

/// The exchange of the replicas' norm buffers (peer or host, as the gradients'), and the
/// exchanges one pass makes; `None` for a model without batch norm (AlexNet: nothing to
/// synchronise, as on the CPU).
fn norm_exchange(
    gpus: &[Arc<Gpu>],
    replicas: &mut [Replica],
    peer: bool,
) -> Result<Option<(Exchange, usize)>> {
    let mut bufs = Vec::new();
    let mut shape = (0, 0);
    for r in replicas.iter_mut() {
        let gpu = r.gpu().clone();
        let Some((buf, exchanges)) = r.norm_buffer() else {
            return Ok(None);
        };
        bufs.push(buf.device_ptr(gpu.stream()).0);
        shape = (buf.len(), exchanges);
    }
    let exchange = match peer {
        true => Exchange::Peer(bufs, PhaseEvents::new(gpus)?),
        false => Exchange::Host(HostExchange::new(gpus, shape.0)?),
    };
    Ok(Some((exchange, shape.1)))
}

fn unexpected_reply(device: usize, to: &str) -> Error {
    Error::invalid(
        "GPU device thread",
        format!("the thread of device {device} answered {to} with something else"),
    )
}

impl Engine for ReplicaEngine {
    fn devices(&self) -> usize {
        self.threads.len()
    }

    fn submit(&mut self, t: u64, batch: &Arc<Batch>, shards: &[Range<usize>]) -> Result<()> {
        check_shards(self.threads.len(), batch, shards)?;
        let active = ActiveSet::of(shards)?;
        self.refresh(active.members())?;
        let group = Arc::new(Group {
            barrier: Barrier::new(active.members().len()),
            active,
        });
        let members = group.active.members();
        let ahead = self.ahead.take();
        let replies = self.call(members, |d| Command::Step {
            t,
            batch: batch.clone(),
            shard: shards[d].clone(),
            group: group.clone(),
            ahead: ahead.clone(),
        })?;
        // (A failed step returns above: the run stops, whatever the replicas hold.)
        self.freshness.stepped(members);
        if let Some((&d, _)) = members
            .iter()
            .zip(&replies)
            .find(|(_, r)| !matches!(r, Reply::Enqueued))
        {
            return Err(unexpected_reply(d, "a step"));
        }
        self.pending.push_back(members.to_vec());
        Ok(())
    }

    fn stage_ahead(&mut self, next: &Arc<Batch>) {
        self.ahead = Some(next.clone());
    }

    /// Waits for the oldest pending step on its members and sums their stats.
    fn finish(&mut self) -> Result<ShardStats> {
        let members = self.pending.pop_front().ok_or_else(nothing_submitted)?;
        let mut stats = ShardStats::default();
        for (&d, r) in members
            .iter()
            .zip(self.call(&members, |_| Command::Finish)?)
        {
            match r {
                Reply::Stats(s) => stats += s,
                _ => return Err(unexpected_reply(d, "a finish")),
            }
        }
        Ok(stats)
    }

    /// The state of an up-to-date replica.
    fn state(&mut self) -> Result<State> {
        self.download(self.freshness.source())
    }

    /// Every replica's parameters, stale ones refreshed first.
    fn replica_params(&mut self) -> Result<Vec<Vec<f32>>> {
        let all = self.every_device();
        self.refresh(&all)?;
        Ok(self
            .call(&all, |_| Command::Download)?
            .into_iter()
            .filter_map(|r| match r {
                Reply::State(s) => Some(s.params),
                _ => None,
            })
            .collect())
    }

    fn set_state(&mut self, state: &State) -> Result<()> {
        let state = Arc::new(state.clone());
        self.call(&self.every_device(), |_| Command::Upload(state.clone()))?;
        self.freshness.set_all();
        Ok(())
    }

    fn notice(&self) -> Option<String> {
        self.notice.clone()
    }

    fn memory_peaks(&self) -> Result<Vec<Option<u64>>> {
        self.gpus.iter().map(|g| g.memory_peak()).collect()
    }

    fn conv_paths(&self) -> Result<Vec<String>> {
        match self.call(&[0], |_| Command::ConvPaths)?.pop() {
            Some(Reply::Lines(lines)) => Ok(lines),
            _ => Err(unexpected_reply(0, "the convolutions' paths")),
        }
    }

    fn host_times(&self) -> Result<Option<HostTimes>> {
        match self.call(&[0], |_| Command::HostTimes)?.pop() {
            Some(Reply::HostTimes(times)) => Ok(Some(times)),
            _ => Err(unexpected_reply(0, "the host's times")),
        }
    }
}

impl Drop for ReplicaEngine {
    fn drop(&mut self) {
        for w in &mut self.threads {
            // Closing the command channel ends the thread's loop.
            let (dead, _) = channel();
            w.commands = dead;
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// A device thread's loop: one command at a time until the engine drops its channel.
fn device_loop(
    device: usize,
    mut replica: Replica,
    shared: Arc<Shared>,
    commands: Receiver<Command>,
    replies: Sender<Result<Reply>>,
) {
    while let Ok(cmd) = commands.recv() {
        let reply = match cmd {
            Command::Step {
                t,
                batch,
                shard,
                group,
                ahead,
            } => {
                let work = Work {
                    device,
                    shared: &shared,
                    group: &group,
                };
                let started = Instant::now();
                let reply = work.step(&mut replica, t, &batch, shard, ahead.as_ref());
                replica.record_step(started.elapsed());
                reply
            }
            Command::Finish => replica.take_stats().map(Reply::Stats),
            Command::Download => replica.download().map(|(state, _)| Reply::State(state)),
            Command::Upload(state) => replica
                .upload(&state.params, &state.optimizer, &state.buffers)
                .map(|()| Reply::Done),
            Command::Lend => replica.state_ptrs().map(Reply::Addresses),
            Command::ConvPaths => Ok(Reply::Lines(replica.describe_convs())),
            Command::HostTimes => Ok(Reply::HostTimes(replica.host_times())),
            // SAFETY: the engine sends only a peer replica's `Lend` addresses (same model and
            // optimizer, peer access enabled between all its GPUs), and keeps that peer idle
            // until this copy has finished.
            Command::CopyFrom(addresses) => {
                unsafe { replica.copy_state_from(&addresses) }.map(|()| Reply::Done)
            }
        };
        if replies.send(reply).is_err() {
            return;
        }
    }
}

/// One device thread's part in one step.
struct Work<'a> {
    device: usize,
    shared: &'a Shared,
    group: &'a Group,
}

impl Work<'_> {
    /// Enqueues the pass over the shard, the exchange with the step's other members and the
    /// update, and defers the stats read-back ([`Reply::Enqueued`]): no host synchronisation
    /// per step on the peer path (events order the GPUs' work), so the engine can enqueue
    /// the next step while the GPUs run this one.
    fn step(
        &self,
        replica: &mut Replica,
        t: u64,
        batch: &Arc<Batch>,
        shard: Range<usize>,
        ahead: Option<&Arc<Batch>>,
    ) -> Result<Reply> {
        // NVTX ranges name what this thread enqueues, for nsys timelines.
        let _step = nvtx::range(format!("step {t}"));
        let alone = self.group.active.members().len() == 1;
        let rank = self.group.active.rank(self.device).filter(|_| !alone);
        // Alone, or (never) not a member: nothing to exchange, and batch norm is the step's.
        let sync = match (&self.shared.norm, rank) {
            (Some((exchange, _)), Some(rank)) => Some(StepNormSync {
                work: self,
                exchange,
                rank,
                images: batch.len(),
                done: Cell::new(0),
            }),
            _ => None,
        };
        // A malformed batch is an error, not a panic: the other members are at the barriers.
        let loaded = replica.load_from(batch, shard.clone());
        let next = ahead.map(|b| (b, shard.clone()));
        replica.staging_ahead(next, |replica| {
            let pass = loaded.and_then(|()| {
                let _r = nvtx::range(format!("forward+backward {} samples", shard.len()));
                replica.set_seed(cnn::step_seed(t, shard.start));
                let sync = sync.as_ref().map(|s| s as &dyn NormSync);
                replica.pass_synced(1.0 / batch.len() as f32, sync)
            });
            let pass = match (&sync, &self.shared.norm) {
                (Some(sync), Some((_, exchanges))) => sync.finish(replica, *exchanges, pass),
                _ => pass,
            };
            match rank {
                Some(rank) => {
                    let _r = nvtx::range("all-reduce");
                    let gpu = replica.gpu().clone();
                    let (exchange, len) = (&self.shared.exchange, self.shared.len);
                    self.all_reduce(exchange, &gpu, replica.grads_mut(), (rank, len), pass)
                }
                None => pass,
            }?;
            let _r = nvtx::range("optimizer");
            replica.optimizer_step(t)?;
            replica.stats_later()
        })?;
        Ok(Reply::Enqueued)
    }

    /// Sums `buf` (its first `len` values, this member's buffer of `exchange`) over the
    /// step's members, as member `rank`. Every member waits at the same barriers whatever
    /// happens, so one failing thread (an error in `result`) cannot leave the others waiting
    /// forever; it skips its work and reports.
    fn all_reduce(
        &self,
        exchange: &Exchange,
        gpu: &Gpu,
        buf: &mut CudaSlice<f32>,
        (rank, len): (usize, usize),
        result: Result<()>,
    ) -> Result<()> {
        match exchange {
            Exchange::Peer(bufs, events) => self.peer(gpu, rank, (bufs, len), events, result),
            Exchange::Host(host) => self.host(gpu, host, buf, result),
        }
    }

    /// The direct all-reduce among the step's members over peer memory.
    fn peer(
        &self,
        gpu: &Gpu,
        rank: usize,
        (all_bufs, len): (&[u64], usize),
        events: &PhaseEvents,
        mut result: Result<()>,
    ) -> Result<()> {
        let own = self.device;
        let members = self.group.active.members();
        let bufs: Vec<u64> = members.iter().map(|&d| all_bufs[d]).collect();
        let stream = gpu.stream();
        // The barriers order the enqueues (each event is recorded before anyone waits on it);
        // the events order the GPUs' work, with no host synchronisation.
        if result.is_ok() {
            result = events.record(own, Phase::Gradients, stream);
        }
        self.group.barrier.wait();
        if result.is_ok() {
            // SAFETY: the stream waits for every member's backward pass (its gradients are
            // complete); each member writes only its own chunk of its own buffer.
            let r = events
                .wait_for_others(members, own, Phase::Gradients, stream)
                .and_then(|()| unsafe { allreduce::reduce_scatter(gpu, stream, &bufs, rank, len) });
            result = r.and_then(|()| events.record(own, Phase::ReduceScatter, stream));
        }
        self.group.barrier.wait();
        if result.is_ok() {
            // SAFETY: the stream waits for every member's phase 1 (the chunks are final and
            // nobody reads this buffer's other chunks any more); each member writes only the
            // chunks it does not own, in its own buffer.
            let r = events
                .wait_for_others(members, own, Phase::ReduceScatter, stream)
                .and_then(|()| unsafe { allreduce::all_gather(gpu, stream, &bufs, rank, len) });
            result = r.and_then(|()| events.record(own, Phase::AllGather, stream));
        }
        self.group.barrier.wait();
        if result.is_ok() {
            // Our buffer is not written again (our next backward pass) before every member
            // has copied its chunk out of it.
            result = events.wait_for_others(members, own, Phase::AllGather, stream);
        }
        result
    }

    /// The host-staged exchange among the step's members. No barrier is needed after the
    /// sums: a member's staged buffer is written again only after the next barrier, which
    /// every member reaches after its sum.
    fn host(
        &self,
        gpu: &Gpu,
        host: &HostExchange,
        buf: &mut CudaSlice<f32>,
        mut result: Result<()>,
    ) -> Result<()> {
        self.group.barrier.wait();
        if result.is_ok() {
            result = host.stage(gpu, buf, self.device);
        }
        self.group.barrier.wait();
        if result.is_ok() {
            let members = self.group.active.members();
            result = host.sum_into(gpu, buf, self.device, members);
        }
        result
    }
}

/// One member's synchronised batch norm exchange in one step ([`NormSync`]): the norm
/// exchange among the step's members, counting the exchanges made.
struct StepNormSync<'a> {
    work: &'a Work<'a>,
    exchange: &'a Exchange,
    rank: usize,
    images: usize,
    done: Cell<usize>,
}

impl NormSync for StepNormSync<'_> {
    fn images(&self) -> usize {
        self.images
    }

    fn sum(&self, gpu: &Gpu, buf: &mut CudaSlice<f32>, len: usize) -> Result<()> {
        self.done.set(self.done.get() + 1);
        self.work
            .all_reduce(self.exchange, gpu, buf, (self.rank, len), Ok(()))
    }
}

impl StepNormSync<'_> {
    /// After the pass (`result`): when it stopped early, takes part in the `exchanges` it
    /// did not make, without work, so the other members' exchanges complete.
    fn finish(&self, replica: &mut Replica, exchanges: usize, result: Result<()>) -> Result<()> {
        let missed = exchanges.saturating_sub(self.done.get());
        if missed == 0 {
            return result;
        }
        let gpu = replica.gpu().clone();
        let Some((buf, _)) = replica.norm_buffer() else {
            return result;
        };
        let skipped = || {
            Err(Error::invalid(
                "synchronised batch norm",
                "this GPU's pass stopped early",
            ))
        };
        for _ in 0..missed {
            // Each only waits at the barriers and returns the skip: the pass's error is the
            // one to report.
            let _ = self
                .work
                .all_reduce(self.exchange, &gpu, buf, (self.rank, 0), skipped());
        }
        self.done.set(exchanges);
        result.and_then(|()| skipped())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_set_ranks_the_devices_with_samples_in_device_order() {
        let set = ActiveSet::of(&[0..3, 3..3, 3..10, 10..12]).unwrap();
        assert_eq!(set.members(), &[0, 2, 3]);
        assert_eq!(
            (0..4).map(|d| set.rank(d)).collect::<Vec<_>>(),
            [Some(0), None, Some(1), Some(2)]
        );
        let alone = ActiveSet::of(&[0..0, 0..8]).unwrap();
        assert_eq!((alone.members(), alone.rank(1)), (&[1][..], Some(0)));
        let err = ActiveSet::of(&[0..0, 0..0]).unwrap_err().to_string();
        assert!(err.contains("no samples"), "{err}");
    }

    /// The bookkeeping for two devices whose DR goes [10,0], [5,5], [0,10], [5,5], [10,0],
    /// [10,0] (who is refreshed before each step, and from whom), and for three.
    #[test]
    fn freshness_refreshes_exactly_the_replicas_that_missed_updates() {
        let mut f = Freshness::new(2);
        let mut plan = Vec::new();
        for members in [&[0][..], &[0, 1], &[1], &[0, 1], &[0], &[0]] {
            let stale = f.stale(members);
            plan.push((stale.clone(), f.source()));
            stale.iter().for_each(|&d| f.refreshed(d));
            f.stepped(members);
        }
        assert_eq!(
            plan,
            [
                (vec![], 0),
                (vec![1], 0), // device 1 missed the [10,0] step
                (vec![], 0),
                (vec![0], 1), // device 0 missed the [0,10] step
                (vec![], 0),
                (vec![], 0),
            ]
        );
        // Device 1 missed the last two steps: the state comes from device 0, and reading every
        // replica refreshes device 1 only.
        assert_eq!((f.source(), f.stale(&[0, 1])), (0, vec![1]));
        f.set_all();
        assert!(f.stale(&[0, 1]).is_empty());
        let mut three = Freshness::new(3);
        three.stepped(&[1, 2]);
        assert_eq!((three.source(), three.stale(&[0, 1, 2])), (1, vec![0]));
    }
}
