//! A deterministic discrete-event simulator of data-parallel jobs sharing `m` GPUs, driven by
//! the same [`Manager`] the real trainer uses.
//!
//! # Model
//! - **Shards.** Each iteration, a job splits its mini-batch of `B` samples by its current DR
//!   ([`DistributionRatio::split_batch`]); the shard on GPU `g` is `b_g * sample_ms +
//!   iter_overhead_ms` of work (milliseconds of the GPU alone). GPUs given 0 samples (only
//!   possible when `B < 10`) are skipped.
//! - **Processor sharing.** A GPU running `n` shards at once gives each of them speed
//!   `1/n` of the GPU when `n = 1` and `colocation_efficiency / n` when `n >= 2`.
//! - **Synchronisation.** A job's iteration ends when its slowest shard ends, plus, when it
//!   ran on `k > 1` GPUs, a ring all-reduce of its gradients:
//!   `allreduce_latency_ms + 2 (k-1)/k * grad_mb / allreduce_gbps` (MB over GB/s gives ms).
//!   The all-reduce uses the links, not the GPU's compute: other jobs' shards run on at full
//!   share meanwhile, and it does not count as busy time. Links are not shared between jobs.
//! - **DR changes** take effect at a job's next iteration; the iteration in flight finishes
//!   with its old split. That next iteration first stalls for `reconfigure_ms` (default 0:
//!   free), a stand-in for moving replicas and rebuilding communicators; the stall counts
//!   in the iteration's measured time but keeps no GPU busy.
//! - **Exclusive time** of a job: `iterations * (B * sample_ms + iter_overhead_ms)`.
//! - **Manager.** It runs at `t = period_s, 2 period_s, ...` and at every arrival and finish
//!   (events at the same instant are processed first, then one round). Jobs that are ready
//!   to start an iteration at that instant start it after the round, with the new DRs.
//!   It sees each GPU's utilisation, the percentage of the last `period_s` seconds during
//!   which at least one shard ran on it, and each running job's Slow-Down from
//!   [`JobProgress`] (iterations that ended in the last `period_s` seconds), i.e. what a real
//!   machine can measure.
//!
//! Time is simulated with `f64` seconds; events at equal times are ordered by kind and index,
//! so a run is a pure function of the job file and the policy.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use super::bound::file_bound;
use super::cost::{JobModel, RoundModel, allreduce_s, shard_work};
use super::decisions::DecisionLog;
use super::jobs::limits::check_period;
use super::jobs::{JobFile, JobSim, ManagerConfig, SimulationConfig};
use super::policy::{Admission, JobObservation, Manager, PolicyKind};
use super::report::{JobReport, Report};
use super::round::Trace;
use super::slowdown::JobProgress;
use crate::base::DistributionRatio;
use crate::{Error, Result};

/// What to simulate beyond the job file.
#[derive(Clone, Debug, Default)]
pub struct SimOptions {
    /// Overrides `[manager] policy`.
    pub policy: Option<PolicyKind>,
    /// Overrides `[manager] sd_threshold`.
    pub sd_threshold: Option<f64>,
    /// Overrides `[manager] util_threshold`.
    pub util_threshold: Option<f64>,
    /// Overrides `[manager] period_s`.
    pub period_s: Option<f64>,
    /// Record the SD and utilisation seen at every round (for plots).
    pub trace: bool,
    /// Record the manager's decision log ([`super::decisions`]).
    pub decisions: bool,
    /// Leave the report's `max_slowdown_bound` out: the caller bounds the workload once for
    /// several runs ([`Report::with_bound`]), or it costs too much at that size.
    pub skip_bound: bool,
}

/// Counters of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Events processed.
    pub events: u64,
    /// Manager rounds.
    pub rounds: u64,
    /// DR changes applied.
    pub dr_changes: u64,
    /// Iterations run, all jobs together.
    pub iterations: u64,
}

/// A finished simulation.
#[derive(Clone, Debug)]
pub struct SimOutcome {
    pub report: Report,
    pub trace: Trace,
    pub stats: SimStats,
    /// The manager's decision log, when [`SimOptions::decisions`] asked for it.
    pub decisions: Option<DecisionLog>,
}

/// Runs the job file under its manager settings, with `options` overriding them. Every job
/// needs a `[job.sim]` table and the file a `[simulation]` table.
pub fn simulate(file: &JobFile, origin: &str, options: &SimOptions) -> Result<SimOutcome> {
    file.validate(origin)?;
    let machine = file.simulation.clone().ok_or_else(|| {
        Error::invalid(
            format!("{origin}: [simulation]"),
            "missing; the simulator needs at least `gpus`",
        )
    })?;
    file.check_gpus(machine.gpus, origin)?;
    let manager_cfg = file.manager.overridden(
        options.policy,
        options.sd_threshold,
        options.util_threshold,
        options.period_s,
    );
    check_period(manager_cfg.period_s).map_err(|p| Error::invalid("period_s", p))?;
    check_size(file, origin, &machine, manager_cfg.period_s)?;
    let params = manager_cfg.thesis_params()?;
    let jobs = file
        .jobs
        .iter()
        .map(|spec| {
            let sim = spec.sim.as_ref().ok_or_else(|| {
                Error::invalid(
                    format!("{origin}: job '{}': sim", spec.name),
                    "missing [job.sim] table, which the simulator needs",
                )
            })?;
            let exclusive_iter_s = spec.exclusive_iter_s().unwrap_or(0.0);
            Ok(SimJob {
                name: spec.name.clone(),
                batch: spec.batch_size,
                arrival_s: spec.arrival_s,
                costs: sim.clone(),
                initial_dr: spec.initial_dr(machine.gpus, origin)?,
                state: JobState::Pending,
                dr: None,
                progress: JobProgress::new(
                    spec.arrival_s,
                    spec.iterations,
                    exclusive_iter_s,
                    manager_cfg.period_s,
                )?,
                shards_left: 0,
                shards_used: 0,
                plan: Vec::new(),
                reconfigured: false,
                started: false,
                finish_s: 0.0,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let manager = if options.decisions {
        Manager::recording(machine.gpus, manager_cfg.policy, params)?
    } else {
        Manager::new(machine.gpus, manager_cfg.policy.build(params))?
    };
    let sim = Simulator::new(machine, &manager_cfg, manager, jobs, options.trace)?;
    let mut outcome = sim.run()?;
    if !options.skip_bound {
        outcome.report = outcome.report.with_bound(file_bound(file, origin)?);
    }
    Ok(outcome)
}

/// The most iterations (all jobs together) one simulation runs: about a minute of events.
pub const MAX_ITERATIONS: u64 = 100_000_000;
/// The most manager rounds one simulation may need: a few seconds of rounds.
pub const MAX_ROUNDS: f64 = 1e7;

/// What a simulation of `file` costs at most: its iterations, and an upper bound on its
/// manager rounds. Rounds happen only while a job runs (idle time is skipped), and while one
/// runs either some GPU is busy, working through the jobs' total work at a rate of at least
/// `min(1, colocation_efficiency)`, or every running job waits for an all-reduce or a
/// reconfiguration; so the time jobs run is at most the total work over that rate plus every
/// iteration's all-reduce and stall.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimSize {
    pub iterations: u64,
    pub rounds: f64,
}

/// [`SimSize`] of `file` on `machine` with rounds every `period_s`; jobs without `[job.sim]`
/// count no time.
pub fn size(file: &JobFile, machine: &SimulationConfig, period_s: f64) -> SimSize {
    let rate = machine.colocation_efficiency.min(1.0);
    let m = machine.gpus as u64;
    let mut iterations = 0u64;
    let mut busy_s = 0.0;
    for job in &file.jobs {
        iterations = iterations.saturating_add(job.iterations);
        let Some(sim) = &job.sim else { continue };
        let shards = job.batch_size.min(m) as f64;
        let work_ms = job.batch_size as f64 * sim.sample_ms + shards * sim.iter_overhead_ms;
        let exchange_ms = if m > 1 {
            machine.allreduce_latency_ms + 2.0 * sim.grad_mb / machine.allreduce_gbps
        } else {
            0.0
        };
        let iter_ms = work_ms / rate + exchange_ms + machine.reconfigure_ms;
        busy_s += job.iterations as f64 * iter_ms / 1000.0;
    }
    SimSize {
        iterations,
        rounds: busy_s / period_s + 2.0 * file.jobs.len() as f64,
    }
}

/// Refuses a file that would simulate for minutes: too many iterations, or jobs so long
/// for `period_s` that the rounds alone would take that long.
fn check_size(
    file: &JobFile,
    origin: &str,
    machine: &SimulationConfig,
    period_s: f64,
) -> Result<()> {
    let size = size(file, machine, period_s);
    if size.iterations > MAX_ITERATIONS {
        return Err(Error::invalid(
            format!("{origin}: iterations"),
            format!(
                "the jobs ask for {} iterations in all; the simulator runs at most \
                 {MAX_ITERATIONS} (about a minute)",
                size.iterations
            ),
        ));
    }
    if size.rounds > MAX_ROUNDS {
        return Err(Error::invalid(
            format!("{origin}: [manager] period_s"),
            format!(
                "the jobs may run for up to {:.3e} simulated seconds, {:.3e} manager rounds \
                 of {period_s} s; the simulator runs at most {MAX_ROUNDS:e}: raise period_s \
                 (or --period), or shorten the jobs (iterations, [job.sim])",
                size.rounds * period_s,
                size.rounds
            ),
        ));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JobState {
    Pending,
    Running,
    Done,
}

#[derive(Debug)]
struct SimJob {
    name: String,
    batch: u64,
    arrival_s: f64,
    costs: JobSim,
    initial_dr: Option<DistributionRatio>,
    state: JobState,
    dr: Option<DistributionRatio>,
    progress: JobProgress,
    shards_left: u32,
    shards_used: u32,
    /// `(GPU, work in seconds)` of each shard under the current DR.
    plan: Vec<(usize, f64)>,
    /// The DR changed since the last iteration started (costs `reconfigure_ms`).
    reconfigured: bool,
    /// An iteration has started (a DR change before that costs nothing).
    started: bool,
    finish_s: f64,
}

impl SimJob {
    /// Sets the DR and recomputes the per-GPU shards it gives.
    fn set_dr(&mut self, dr: DistributionRatio) {
        self.plan = shard_work(self.batch, &self.costs, &dr);
        self.dr = Some(dr);
    }
}

/// A shard's completion point on its GPU: `(vtime at which it completes, job)`, ordered so
/// that a `BinaryHeap` pops the earliest (then the lowest job index) first.
#[derive(Clone, Copy, Debug)]
struct Due(f64, usize);

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.total_cmp(&self.0).then(other.1.cmp(&self.1))
    }
}

#[derive(Debug, Default)]
struct Gpu {
    /// Work (seconds) each active shard has received since the GPU's origin.
    vtime: f64,
    /// Time `vtime` was last brought up to date.
    last_t: f64,
    /// The shards running, earliest completion first.
    active: BinaryHeap<Due>,
    /// Bumped whenever the next completion may change; stale events are skipped.
    version: u64,
    dirty: bool,
    busy_since: Option<f64>,
    busy_total: f64,
    /// Closed busy intervals, oldest first, pruned to the measurement window.
    intervals: VecDeque<(f64, f64)>,
}

impl Gpu {
    fn speed(&self, eff: f64) -> f64 {
        match self.active.len() {
            0 => 0.0,
            1 => 1.0,
            n => eff / n as f64,
        }
    }

    fn advance(&mut self, t: f64, eff: f64) {
        if t > self.last_t {
            self.vtime += (t - self.last_t) * self.speed(eff);
            self.last_t = t;
        }
    }

    fn add(&mut self, job: usize, work_s: f64, t: f64, eff: f64) {
        self.advance(t, eff);
        if self.active.is_empty() {
            self.busy_since = Some(t);
        }
        self.active.push(Due(self.vtime + work_s, job));
        self.dirty = true;
    }

    fn went_idle(&mut self, t: f64) {
        if let Some(since) = self.busy_since.take() {
            self.busy_total += t - since;
            match self.intervals.back_mut() {
                Some(last) if last.1 >= since => last.1 = t,
                _ => self.intervals.push_back((since, t)),
            }
        }
    }

    /// Busy seconds within `[from, to]`, forgetting intervals that end before `from`.
    fn busy_in(&mut self, from: f64, to: f64) -> f64 {
        while matches!(self.intervals.front(), Some(&(_, end)) if end <= from) {
            self.intervals.pop_front();
        }
        let mut busy: f64 = self
            .intervals
            .iter()
            .map(|&(s, e)| (e.min(to) - s.max(from)).max(0.0))
            .sum();
        if let Some(since) = self.busy_since {
            busy += (to - since.max(from)).max(0.0);
        }
        busy
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    // The order is the processing order of events at equal times.
    GpuDone,
    AllReduceDone,
    Resume,
    Arrival,
    Tick,
}

#[derive(Clone, Copy, Debug)]
struct Event {
    t: f64,
    kind: Kind,
    index: usize,
    version: u64,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    /// Reversed, so that `BinaryHeap` pops the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .t
            .total_cmp(&self.t)
            .then(other.kind.cmp(&self.kind))
            .then(other.index.cmp(&self.index))
            .then(other.version.cmp(&self.version))
    }
}

struct Simulator {
    m: usize,
    eff: f64,
    machine: SimulationConfig,
    reconfigure_s: f64,
    period_s: f64,
    manager: Manager,
    jobs: Vec<SimJob>,
    gpus: Vec<Gpu>,
    heap: BinaryHeap<Event>,
    ready: Vec<usize>,
    finished: usize,
    stats: SimStats,
    trace: Option<Trace>,
}

impl Simulator {
    fn new(
        machine: SimulationConfig,
        manager_cfg: &ManagerConfig,
        manager: Manager,
        jobs: Vec<SimJob>,
        trace: bool,
    ) -> Result<Self> {
        let m = machine.gpus;
        let trace =
            trace.then(|| Trace::new(jobs.iter().map(|j| j.name.clone()).collect(), m, "GPU"));
        Ok(Simulator {
            m,
            eff: machine.colocation_efficiency,
            reconfigure_s: machine.reconfigure_ms / 1000.0,
            machine,
            period_s: manager_cfg.period_s,
            manager,
            jobs,
            gpus: (0..m).map(|_| Gpu::default()).collect(),
            heap: BinaryHeap::new(),
            ready: Vec::new(),
            finished: 0,
            stats: SimStats::default(),
            trace,
        })
    }

    fn push(&mut self, t: f64, kind: Kind, index: usize, version: u64) {
        self.heap.push(Event {
            t,
            kind,
            index,
            version,
        });
    }

    fn run(mut self) -> Result<SimOutcome> {
        for k in 0..self.jobs.len() {
            let t = self.jobs[k].arrival_s;
            self.push(t, Kind::Arrival, k, 0);
        }
        if !self.jobs.is_empty() {
            self.push(self.period_s, Kind::Tick, 0, 0);
        }
        let mut tick_count: u64 = 1;
        while self.finished < self.jobs.len() {
            let Some(first) = self.heap.pop() else {
                break; // unreachable: a running job always has a pending event
            };
            let t = first.t;
            let mut need_round = false;
            let mut event = Some(first);
            while let Some(ev) = event {
                self.stats.events += 1;
                match ev.kind {
                    Kind::GpuDone => self.gpu_done(ev.index, ev.version, t),
                    Kind::AllReduceDone => need_round |= self.iteration_done(ev.index, t),
                    Kind::Arrival => {
                        self.arrive(ev.index)?;
                        need_round = true;
                    }
                    Kind::Resume => self.launch_shards(ev.index, t),
                    Kind::Tick => {
                        need_round = true;
                        tick_count = self.next_tick(tick_count);
                        if self.finished < self.jobs.len() {
                            let next = self.period_s * tick_count as f64;
                            self.push(next, Kind::Tick, 0, 0);
                        }
                    }
                }
                event = match self.heap.peek() {
                    Some(next) if next.t == t => self.heap.pop(),
                    _ => None,
                };
            }
            if need_round {
                self.round(t)?;
            }
            self.start_ready(t);
            self.reschedule(t);
        }
        Ok(self.finish())
    }

    /// The index of the tick after tick `current`. While no job runs, the rounds until the
    /// next arrival would see idle GPUs and no job, and decide nothing: skip to the first
    /// tick at or after that arrival (ticks come last at an instant, so every job arriving
    /// now is already running).
    fn next_tick(&self, current: u64) -> u64 {
        let next = current + 1;
        if self.jobs.iter().any(|j| j.state == JobState::Running) {
            return next;
        }
        let arrival = self
            .jobs
            .iter()
            .filter(|j| j.state == JobState::Pending)
            .map(|j| j.arrival_s)
            .fold(f64::INFINITY, f64::min);
        if !arrival.is_finite() {
            return next;
        }
        // Arrivals are bounded (`limits::ARRIVAL_S`), so the index fits easily.
        next.max((arrival / self.period_s).ceil() as u64)
    }

    fn arrive(&mut self, k: usize) -> Result<()> {
        let admission = Admission {
            job_index: k,
            initial_dr: self.jobs[k].initial_dr.clone(),
        };
        self.manager.set_time(self.jobs[k].arrival_s);
        let dr = self.manager.admit(&admission)?;
        let job = &mut self.jobs[k];
        job.set_dr(dr);
        job.state = JobState::Running;
        self.ready.push(k);
        Ok(())
    }

    fn gpu_done(&mut self, g: usize, version: u64, t: f64) {
        let eff = self.eff;
        let gpu = &mut self.gpus[g];
        if version != gpu.version || gpu.active.is_empty() {
            return;
        }
        gpu.advance(t, eff);
        let target = gpu.active.peek().map_or(f64::INFINITY, |d| d.0);
        // Snap to the completing shard's finish, then complete every shard within 1 ns.
        if gpu.vtime < target {
            gpu.vtime = target;
        }
        let limit = gpu.vtime + 1e-9;
        let mut done = Vec::new();
        while let Some(&Due(f, job)) = gpu.active.peek() {
            if f > limit {
                break;
            }
            gpu.active.pop();
            done.push(job);
        }
        if gpu.active.is_empty() {
            gpu.went_idle(t);
        }
        gpu.dirty = true;
        done.sort_unstable();
        for job in done {
            self.shard_done(job, t);
        }
    }

    fn shard_done(&mut self, k: usize, t: f64) {
        let job = &mut self.jobs[k];
        job.shards_left = job.shards_left.saturating_sub(1);
        if job.shards_left > 0 {
            return;
        }
        let cost = allreduce_s(&self.machine, job.shards_used as usize, job.costs.grad_mb);
        if cost > 0.0 {
            self.push(t + cost, Kind::AllReduceDone, k, 0);
            return;
        }
        // Same-instant finish: handled like an all-reduce of zero length.
        self.push(t, Kind::AllReduceDone, k, 0);
    }

    /// Returns whether the job finished (which calls for a manager round).
    fn iteration_done(&mut self, k: usize, t: f64) -> bool {
        self.stats.iterations += 1;
        let job = &mut self.jobs[k];
        job.progress.iteration_finished(t);
        if job.progress.is_finished() {
            job.state = JobState::Done;
            job.finish_s = t;
            self.finished += 1;
            if let Some(trace) = &mut self.trace {
                let sd = (t - job.arrival_s) / job.progress.exclusive_s();
                trace.job_sd[k].push((t, sd));
            }
            true
        } else {
            self.ready.push(k);
            false
        }
    }

    fn start_ready(&mut self, t: f64) {
        if self.ready.is_empty() {
            return;
        }
        let mut ready = std::mem::take(&mut self.ready);
        ready.sort_unstable();
        for &k in &ready {
            let job = &mut self.jobs[k];
            job.progress.iteration_started(t);
            job.started = true;
            if job.reconfigured && self.reconfigure_s > 0.0 {
                // The iteration starts with the stall: it is part of its measured time.
                job.reconfigured = false;
                self.push(t + self.reconfigure_s, Kind::Resume, k, 0);
            } else {
                job.reconfigured = false;
                self.launch_shards(k, t);
            }
        }
        ready.clear();
        self.ready = ready;
    }

    fn launch_shards(&mut self, k: usize, t: f64) {
        let eff = self.eff;
        let job = &mut self.jobs[k];
        for &(g, work) in &job.plan {
            self.gpus[g].add(k, work, t, eff);
        }
        let used = job.plan.len() as u32;
        job.shards_left = used;
        job.shards_used = used;
    }

    fn reschedule(&mut self, t: f64) {
        let eff = self.eff;
        for g in 0..self.m {
            let gpu = &mut self.gpus[g];
            if !gpu.dirty {
                continue;
            }
            gpu.dirty = false;
            gpu.version += 1;
            if gpu.active.is_empty() {
                continue;
            }
            gpu.advance(t, eff);
            let next = gpu.active.peek().map_or(f64::INFINITY, |d| d.0);
            let dt = ((next - gpu.vtime) / gpu.speed(eff)).max(0.0);
            let version = gpu.version;
            self.push(t + dt, Kind::GpuDone, g, version);
        }
    }

    /// One manager round at time `t`: what the simulated machine measured, then the
    /// manager's changes as new shard plans.
    fn round(&mut self, t: f64) -> Result<()> {
        self.stats.rounds += 1;
        let from = (t - self.period_s).max(0.0);
        let span = t - from;
        let util: Vec<f64> = self
            .gpus
            .iter_mut()
            .map(|gpu| {
                if span > 0.0 {
                    (gpu.busy_in(from, t) / span * 100.0).clamp(0.0, 100.0)
                } else {
                    0.0
                }
            })
            .collect();
        let mut running = Vec::new();
        for (k, job) in self.jobs.iter_mut().enumerate() {
            if job.state != JobState::Running {
                continue;
            }
            let dr = job.dr.clone().ok_or_else(|| {
                Error::invalid(
                    format!("simulation: job '{}'", job.name),
                    "running without a DR",
                )
            })?;
            let sd = job.progress.slowdown(t);
            running.push((k, JobObservation { sd, dr }));
        }
        let model = self
            .manager
            .uses_model()
            .then(|| self.round_model(&running, t));
        let changes = self
            .manager
            .round(t, util, running, model, self.trace.as_mut())?;
        self.stats.dr_changes += changes.len() as u64;
        for change in changes {
            let job = &mut self.jobs[change.job];
            job.set_dr(change.to);
            job.reconfigured = job.started;
        }
        Ok(())
    }

    /// The cost model of the running jobs `running` at `t`, for the policies that predict.
    fn round_model(&self, running: &[(usize, JobObservation)], t: f64) -> RoundModel {
        RoundModel {
            machine: self.machine.clone(),
            jobs: running
                .iter()
                .map(|&(k, _)| {
                    let job = &self.jobs[k];
                    JobModel::new(job.batch, &job.costs, &job.progress, t)
                })
                .collect(),
        }
    }

    fn finish(self) -> SimOutcome {
        let first = self
            .jobs
            .iter()
            .map(|j| j.arrival_s)
            .fold(f64::INFINITY, f64::min);
        let last = self.jobs.iter().map(|j| j.finish_s).fold(0.0, f64::max);
        let makespan = if self.jobs.is_empty() {
            0.0
        } else {
            (last - first).max(0.0)
        };
        let jobs: Vec<JobReport> = self
            .jobs
            .iter()
            .map(|j| {
                let completion_s = j.finish_s - j.arrival_s;
                let exclusive_s = j.progress.exclusive_s();
                JobReport {
                    name: j.name.clone(),
                    completion_s,
                    exclusive_s,
                    slowdown: completion_s / exclusive_s,
                }
            })
            .collect();
        let busy: Vec<f64> = self.gpus.iter().map(|g| g.busy_total).collect();
        let report = Report::new(self.manager.policy_name(), self.m, jobs, makespan, &busy);
        SimOutcome {
            decisions: self.manager.log().cloned(),
            report,
            trace: self.trace.unwrap_or_default(),
            stats: self.stats,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::jobs::JobSpec;

    fn job(name: &str, arrival: f64, iters: u64, dr: Option<Vec<i64>>) -> JobSpec {
        JobSpec {
            name: name.into(),
            batch_size: 100,
            iterations: iters,
            arrival_s: arrival,
            initial_dr: dr,
            sim: Some(JobSim {
                sample_ms: 1.0,
                iter_overhead_ms: 0.0,
                grad_mb: 0.0,
            }),
        }
    }

    fn file(gpus: usize, jobs: Vec<JobSpec>) -> JobFile {
        let mut sim = SimulationConfig::with_gpus(gpus);
        sim.allreduce_latency_ms = 0.0;
        JobFile {
            manager: ManagerConfig::default(),
            simulation: Some(sim),
            jobs,
        }
    }

    fn run(f: &JobFile, p: PolicyKind) -> SimOutcome {
        simulate(
            f,
            "test",
            &SimOptions {
                policy: Some(p),
                trace: true,
                ..SimOptions::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn one_job_alone_runs_at_exclusive_speed() {
        // 100 samples * 1 ms = 0.1 s per iteration, 50 iterations: 5 s.
        let f = file(1, vec![job("a", 2.0, 50, None)]);
        let out = run(&f, PolicyKind::Static);
        let r = &out.report;
        assert!((r.jobs[0].completion_s - 5.0).abs() < 1e-9, "{r:?}");
        assert!((r.jobs[0].slowdown - 1.0).abs() < 1e-9);
        assert!((r.makespan_s - 5.0).abs() < 1e-9);
        assert!((r.mean_gpu_util - 100.0).abs() < 1e-6);
        assert_eq!(out.stats.iterations, 50);
    }

    #[test]
    fn two_jobs_share_a_gpu() {
        let f = file(1, vec![job("a", 0.0, 50, None), job("b", 0.0, 50, None)]);
        let r = run(&f, PolicyKind::Static).report;
        // Both progress at half speed and finish together at 10 s.
        for j in &r.jobs {
            assert!((j.completion_s - 10.0).abs() < 1e-6, "{r:?}");
            assert!((j.slowdown - 2.0).abs() < 1e-6);
        }
        assert!((r.jain_index - 1.0).abs() < 1e-9);
        // With co-location efficiency 0.8, both take 12.5 s.
        let mut g = f.clone();
        g.simulation.as_mut().unwrap().colocation_efficiency = 0.8;
        let r = run(&g, PolicyKind::Static).report;
        assert!((r.jobs[0].completion_s - 12.5).abs() < 1e-6, "{r:?}");
    }

    #[test]
    fn split_jobs_pay_the_allreduce() {
        // On 2 GPUs at [5,5]: 50 ms of compute, then 2*(1/2)*100 MB / 10 GB/s = 10 ms.
        let mut j = job("a", 0.0, 10, Some(vec![5, 5]));
        j.sim.as_mut().unwrap().grad_mb = 100.0;
        let f = file(2, vec![j]);
        let r = run(&f, PolicyKind::Static).report;
        assert!((r.jobs[0].completion_s - 10.0 * 0.06).abs() < 1e-9, "{r:?}");
        // The all-reduce is not busy time: util = 50/60 on both GPUs.
        assert!((r.mean_gpu_util - 100.0 * 5.0 / 6.0).abs() < 1e-6, "{r:?}");
    }

    #[test]
    fn deterministic_and_every_policy_finishes() {
        let f = file(
            4,
            vec![
                job("a", 0.0, 400, Some(vec![5, 5, 0, 0])),
                job("b", 1.0, 300, Some(vec![5, 5, 0, 0])),
                job("c", 2.5, 200, Some(vec![5, 5, 0, 0])),
                job("d", 4.0, 500, Some(vec![5, 5, 0, 0])),
                job("e", 6.0, 100, Some(vec![5, 5, 0, 0])),
            ],
        );
        for p in PolicyKind::ALL {
            let a = run(&f, p);
            let b = run(&f, p);
            assert_eq!(a.report, b.report);
            assert_eq!(a.trace, b.trace);
            assert_eq!(a.report.jobs.len(), 5);
            for j in &a.report.jobs {
                // Below 1 is possible: exclusive means one GPU, and here all-reduce is free.
                assert!(j.slowdown.is_finite() && j.slowdown > 0.2, "{p}: {j:?}");
            }
        }
        let st = run(&f, PolicyKind::Static).report;
        let th = run(&f, PolicyKind::Thesis).report;
        assert!(th.max_slowdown < st.max_slowdown, "{th:?} vs {st:?}");
    }

    #[test]
    fn reconfiguration_stalls_the_job() {
        // One job on two GPUs under thesis: fewer jobs than GPUs, so it hops to the idle GPU
        // every round; each hop after its start costs 0.25 s.
        let mut f = file(2, vec![job("a", 0.0, 100, None)]);
        f.manager.period_s = 1.0;
        let free = run(&f, PolicyKind::Thesis);
        assert!((free.report.jobs[0].completion_s - 10.0).abs() < 1e-9);
        f.simulation.as_mut().unwrap().reconfigure_ms = 250.0;
        let paid = run(&f, PolicyKind::Thesis);
        let hops = paid.stats.dr_changes as f64 - 1.0; // the first is at arrival
        let extra = paid.report.jobs[0].completion_s - 10.0;
        assert!(
            extra >= 0.25 * (hops - 1.0) - 1e-9 && extra <= 0.25 * hops + 1e-9,
            "{extra} {hops}"
        );
        // Stalls are not busy time.
        assert!(paid.report.mean_gpu_util < free.report.mean_gpu_util);
    }

    #[test]
    fn missing_sim_tables_are_errors() {
        let mut f = file(2, vec![job("a", 0.0, 1, None)]);
        f.jobs[0].sim = None;
        let e = simulate(&f, "x.toml", &SimOptions::default()).unwrap_err();
        assert!(e.to_string().contains("job 'a': sim"), "{e}");
        f.simulation = None;
        let e = simulate(&f, "x.toml", &SimOptions::default()).unwrap_err();
        assert!(e.to_string().contains("[simulation]"), "{e}");
        let g = file(2, vec![job("a", 0.0, 1, Some(vec![10, 0, 0]))]);
        let e = simulate(&g, "x.toml", &SimOptions::default()).unwrap_err();
        assert!(e.to_string().contains("initial_dr"), "{e}");
    }
}
