//! Two policies beyond the thesis' algorithm:
//!
//! - [`MinmaxPolicy`] (`minmax`): every round, the DRs that minimise the largest predicted
//!   Slow-Down under the simulator's cost model ([`super::cost`]), given with the round's
//!   inputs ([`PeriodInputs::with_model`]);
//! - [`ThesisStablePolicy`] (`thesis-stable`): Algorithms 1 and 2 without their two known
//!   oscillations, to measure how much of `thesis`' distance from the bound they cost.
//!
//! # `minmax`
//! A job's predicted Slow-Down under a set of DRs is `(elapsed + remaining * t) / exclusive`
//! (plus the reconfiguration stall when its DR changes after it started), with `t` its
//! iteration time under processor sharing: the shard on GPU `g` runs at
//! `c(l) / (1 + l)` of the GPU, where `l` is the expected number of other shards active there
//! (each other shard counts the fraction of its job's iteration it is active, found by a few
//! fixed-point sweeps, so that a job waiting for its all-reduce leaves the GPU to the others)
//! and `c` the co-location efficiency; `t` is its slowest shard plus its all-reduce.
//!
//! For a set of GPUs with expected speeds `v_g`, the DR that equalises the shard times has a
//! closed form: `f_g = (tau v_g - overhead) / (B sample)` with
//! `tau = (B sample + k overhead) / sum v`, dropping GPUs whose share comes out negative; it is
//! rounded to tenths by the largest remainder method, which keeps the DR valid.
//!
//! The search starts from the current DRs. Job by job, from the most slowed down, it tries
//! the job alone on each of the three GPUs where it would run fastest, spread over the `k`
//! fastest (`k = 2..=10`, closed form), rebalanced over the GPUs it uses, one unit off its
//! slowest GPU, and the least slowed-down job on its slowest GPU moved elsewhere. A candidate
//! is taken when, over the jobs it touches (those sharing a GPU with a moved job), the
//! Slow-Downs sorted from the largest are lexicographically smaller by more than the
//! hysteresis margin at the first place they differ: the largest predicted Slow-Down never
//! rises, and a move must beat its reconfiguration stall, which is part of the prediction.
//!
//! That prediction keeps a placement until every job finishes, so it never crowds some jobs
//! for a while to let others finish. Alternatives are judged by a short lookahead instead
//! ([`lookahead`]: the placement for a while, then the pooled machine): with more jobs than
//! GPUs, placements that give the jobs due first a GPU each and queue the others on a few
//! ([`deadline_order`]); with no more, sprints ([`sprint`]) that clear GPUs for one of the
//! jobs predicted most slowed down, and the search from the best of them.

use super::cost::{JobModel, RoundModel, allreduce_s, shard_work};
use super::dr::{DR_UNITS, DistributionRatio, apportion, largest_remainder};
use super::jobs::SimulationConfig;
use super::policy::{
    Action, Admission, Decision, PeriodInputs, Policy, ThesisParams, ThesisPolicy, initial_or_even,
};
use crate::{Error, Result};

/// `minmax`'s settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MinmaxParams {
    /// Hysteresis: a move must lower the Slow-Downs it touches by this fraction of the largest
    /// of them (0.002: 0.2%).
    pub margin: f64,
    /// Hysteresis of a placement rebuilt from scratch, which moves most jobs at once.
    pub rebuild_margin: f64,
    /// Sweeps over all jobs per round; each stops early once no job improves.
    pub passes: usize,
    /// Moves of one job per sweep.
    pub moves_per_job: usize,
    /// A sweep ends after this many jobs in a row found no better move.
    pub patience: usize,
    /// Moves per round: `max_moves + jobs / 8`; the search goes on at the next round.
    pub max_moves: usize,
    /// A deadline-ordered placement or a sprint replaces the searched placement when its
    /// lookahead is lower by this fraction.
    pub lookahead_margin: f64,
}

impl Default for MinmaxParams {
    fn default() -> Self {
        MinmaxParams {
            margin: 0.01,
            rebuild_margin: 0.05,
            passes: 2,
            moves_per_job: 3,
            patience: 8,
            max_moves: 16,
            lookahead_margin: 0.001,
        }
    }
}

/// `minmax`: see the module docs.
#[derive(Clone, Debug, Default)]
pub struct MinmaxPolicy {
    pub params: MinmaxParams,
}

impl Policy for MinmaxPolicy {
    fn name(&self) -> &'static str {
        "minmax"
    }

    fn admit(&mut self, gpus: usize, job: &Admission) -> Result<DistributionRatio> {
        // The round that follows every arrival places the job; it has not started, so that
        // move is free.
        initial_or_even(gpus, job)
    }

    fn evaluate(&mut self, inputs: &PeriodInputs) -> Result<Vec<Decision>> {
        let model = inputs.model().ok_or_else(|| {
            Error::invalid(
                "policy minmax",
                "needs the round's cost model (each job's costs and progress), which the \
                 simulator and the trainer give",
            )
        })?;
        let current: Vec<DistributionRatio> = inputs.jobs().iter().map(|j| j.dr.clone()).collect();
        Ok(plan(model, &current, self.params)
            .into_iter()
            .zip(inputs.jobs())
            .map(|(dr, obs)| {
                let action = if dr == obs.dr {
                    Action::Keep
                } else {
                    Action::Rebalance
                };
                Decision { dr, action }
            })
            .collect())
    }

    fn uses_model(&self) -> bool {
        true
    }
}

/// Each job's predicted iteration time (seconds) and Slow-Down if the jobs of `model` keep
/// `drs` (the prediction of the module docs).
pub fn predict(model: &RoundModel, drs: &[DistributionRatio]) -> Vec<(f64, f64)> {
    let search = Search::new(model, drs.to_vec(), drs.to_vec(), MinmaxParams::default());
    search.state.iter().map(|s| (s.t, s.sd)).collect()
}

/// The largest predicted Slow-Down ([`predict`]); 0 without jobs.
pub fn predicted_max_slowdown(model: &RoundModel, drs: &[DistributionRatio]) -> f64 {
    predict(model, drs).iter().map(|p| p.1).fold(0.0, f64::max)
}

/// The DRs `minmax` chooses at one round of `model`, starting from `current`: the local
/// search from the current DRs, or from a placement rebuilt from scratch when that predicts
/// better, unless a deadline-ordered placement or a sprint looks better ahead.
fn plan(
    model: &RoundModel,
    current: &[DistributionRatio],
    params: MinmaxParams,
) -> Vec<DistributionRatio> {
    let kept = Search::new(model, current.to_vec(), current.to_vec(), params);
    let rebuilt = kept.rebuild();
    let mut search = if rebuilt.as_slice() == current {
        kept
    } else {
        let fresh = Search::new(model, current.to_vec(), rebuilt, params);
        if lexicographically_lower(&kept.slowdowns(), &fresh.slowdowns(), params.rebuild_margin) {
            fresh
        } else {
            kept
        }
    };
    search.run();
    let fastest: Vec<(f64, usize)> = model
        .jobs
        .iter()
        .map(|j| fastest_split(j, &model.machine))
        .collect();
    let rates: Vec<f64> = fastest.iter().map(|f| f.0).collect();
    let horizon = lookahead_horizon(model, &rates);
    let ahead =
        |drs: Vec<DistributionRatio>| (lookahead(model, current, &drs, horizon, &rates), drs);
    let mut alternatives: Vec<(f64, Vec<DistributionRatio>)> =
        deadline_order(model, current, &rates)
            .into_iter()
            .map(ahead)
            .collect();
    // With no more jobs than GPUs, sprints of the jobs predicted most slowed down, on each
    // number of GPUs up to their fastest split: the best of each job, and the search from
    // there. (With more jobs, the deadline-ordered placements clear GPUs for the urgent.)
    if model.jobs.len() <= model.machine.gpus {
        let mut by_sd: Vec<usize> = (0..model.jobs.len()).collect();
        by_sd.sort_by(|&a, &b| {
            search.state[b]
                .sd
                .total_cmp(&search.state[a].sd)
                .then(a.cmp(&b))
        });
        for &i in by_sd.iter().take(SPRINTED) {
            let best = (1..=fastest[i].1)
                .filter_map(|k| sprint(model, &search.dr, i, k))
                .map(ahead)
                .min_by(|a, b| a.0.total_cmp(&b.0));
            if let Some(best) = best {
                let mut refined = Search::new(model, current.to_vec(), best.1.clone(), params);
                refined.run();
                alternatives.push(best);
                alternatives.push(ahead(refined.dr));
            }
        }
    }
    let searched = ahead(search.dr);
    let mut chosen = (searched.0 * (1.0 - params.lookahead_margin), searched.1);
    for alt in alternatives {
        if alt.0 < chosen.0 {
            chosen = alt;
        }
    }
    chosen.1
}

/// Job `i` alone on `k` GPUs at an even split (those holding most of its units first, then
/// those the fewest other jobs use), every other job moved off them: a job that also runs
/// elsewhere keeps its other units (scaled back to ten), one that does not goes to the free
/// GPU the fewest jobs use. A sprint: near a job's finish, clearing GPUs for the job that
/// limits the largest Slow-Down pays even though the others are crowded for a while. `None`
/// when no GPU is left for the others.
fn sprint(
    model: &RoundModel,
    drs: &[DistributionRatio],
    i: usize,
    k: usize,
) -> Option<Vec<DistributionRatio>> {
    let m = model.machine.gpus;
    if k == 0 || k >= m {
        return None;
    }
    let mut users = vec![0usize; m];
    for (j, dr) in drs.iter().enumerate() {
        if j != i {
            for g in dr.used_gpus() {
                users[g] += 1;
            }
        }
    }
    let mut gpus: Vec<usize> = (0..m).collect();
    gpus.sort_by_key(|&g| (std::cmp::Reverse(drs[i].get(g)), users[g], g));
    let mut taken = vec![false; m];
    let mut units = vec![0u8; m];
    for (r, &g) in gpus[..k].iter().enumerate() {
        taken[g] = true;
        units[g] = DR_UNITS / k as u8 + u8::from((r as u8) < DR_UNITS % k as u8);
    }
    let mut out = drs.to_vec();
    out[i] = DistributionRatio::new(units).ok()?;
    let mut load = vec![0usize; m];
    for (j, dr) in drs.iter().enumerate() {
        if j != i && !dr.used_gpus().any(|g| taken[g]) {
            for g in dr.used_gpus() {
                load[g] += 1;
            }
        }
    }
    for (j, dr) in drs.iter().enumerate() {
        if j == i || !dr.used_gpus().any(|g| taken[g]) {
            continue;
        }
        let left: u32 = dr
            .used_gpus()
            .filter(|&g| !taken[g])
            .map(|g| u32::from(dr.get(g)))
            .sum();
        out[j] = if left > 0 {
            let quotas: Vec<f64> = (0..m)
                .map(|g| {
                    if taken[g] {
                        0.0
                    } else {
                        f64::from(dr.get(g)) * f64::from(DR_UNITS) / f64::from(left)
                    }
                })
                .collect();
            let units: Vec<u8> = largest_remainder(&quotas, u64::from(DR_UNITS))
                .into_iter()
                .map(|u| u as u8)
                .collect();
            DistributionRatio::new(units).ok()?
        } else {
            let g = (0..m)
                .filter(|&g| !taken[g])
                .min_by_key(|&g| (load[g], g))?;
            DistributionRatio::exclusive(m, g).ok()?
        };
        for g in out[j].used_gpus() {
            load[g] += 1;
        }
    }
    Some(out)
}

/// With more jobs than GPUs, the placements that serve the jobs by deadline: the deadlines
/// that the pooled machine can just meet ([`pooled_slowdown`], each job at its `rates`
/// entry), for each `q` in `1..=QUEUES`, the `m - q` earliest each alone on a GPU (the one
/// holding most of its units when no earlier job took it), every other job queued on the
/// other `q` GPUs (its own when that is one of them, else the shortest queue), where it
/// progresses slowly until a GPU frees up. Processor sharing cannot pause a job; crowding
/// the jobs that can wait on a few GPUs is the closest it comes. Empty with no more jobs
/// than GPUs.
fn deadline_order(
    model: &RoundModel,
    current: &[DistributionRatio],
    rates: &[f64],
) -> Vec<Vec<DistributionRatio>> {
    let m = model.machine.gpus;
    let n = model.jobs.len();
    if n <= m || m <= 1 {
        return Vec::new();
    }
    let left: Vec<Pooled> = model
        .jobs
        .iter()
        .zip(rates)
        .map(|(j, &r)| Pooled::of(j, r))
        .collect();
    let s = pooled_slowdown(&left, m as f64);
    let deadline = |j: usize| s * left[j].exclusive - left[j].elapsed;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| deadline(a).total_cmp(&deadline(b)).then(a.cmp(&b)));
    // The GPU holding most of each job's units, the lowest on a tie.
    let main_gpu: Vec<usize> = current
        .iter()
        .map(|dr| {
            dr.used_gpus()
                .max_by_key(|&g| (dr.get(g), std::cmp::Reverse(g)))
                .unwrap_or(0)
        })
        .collect();
    (1..=QUEUES.min(m - 1))
        .filter_map(|queues| {
            let (first, queued) = order.split_at(m - queues);
            let mut taken = vec![false; m];
            let mut gpu_of: Vec<Option<usize>> = vec![None; n];
            for &j in first {
                let g = main_gpu[j];
                if !taken[g] {
                    taken[g] = true;
                    gpu_of[j] = Some(g);
                }
            }
            // The queues stay on the free GPUs already holding most of them.
            let mut holding = vec![0usize; m];
            for &j in queued {
                holding[main_gpu[j]] += 1;
            }
            let mut free: Vec<usize> = (0..m).filter(|&g| !taken[g]).collect();
            free.sort_by_key(|&g| (std::cmp::Reverse(holding[g]), g));
            let queue_gpus: Vec<usize> = free.iter().copied().take(queues).collect();
            let mut others = free.into_iter().skip(queues);
            for &j in first {
                if gpu_of[j].is_none() {
                    gpu_of[j] = others.next();
                }
            }
            // A queued job stays on its queue GPU, or joins the queue with the fewest jobs.
            let mut count = vec![0usize; m];
            for &j in queued {
                let g = if queue_gpus.contains(&main_gpu[j]) {
                    main_gpu[j]
                } else {
                    *queue_gpus.iter().min_by_key(|&&g| (count[g], g))?
                };
                count[g] += 1;
                gpu_of[j] = Some(g);
            }
            (0..n)
                .map(|j| DistributionRatio::exclusive(m, gpu_of[j]?).ok())
                .collect()
        })
        .collect()
}

/// Each job's iteration time under `drs` while every job keeps running: the shards of a GPU
/// share it equally.
fn instant_times(model: &RoundModel, drs: &[DistributionRatio]) -> Vec<f64> {
    let eff = model.machine.colocation_efficiency;
    let shards: Vec<Vec<(usize, f64)>> = model
        .jobs
        .iter()
        .zip(drs)
        .map(|(j, dr)| shard_work(j.batch_size, &j.costs, dr))
        .collect();
    let mut sharing = vec![0usize; model.machine.gpus];
    for &(g, _) in shards.iter().flatten() {
        sharing[g] += 1;
    }
    shards
        .iter()
        .zip(&model.jobs)
        .map(|(s, j)| {
            let slowest = s
                .iter()
                .map(|&(g, w)| w / speed(sharing[g].saturating_sub(1) as f64, eff))
                .fold(0.0, f64::max);
            slowest + allreduce_s(&model.machine, s.len(), j.costs.grad_mb)
        })
        .collect()
}

/// How far [`lookahead`] looks: 0.3 times the shortest time any job could still finish in
/// alone, so that no job is predicted past its finish, where the next rounds re-plan (the
/// suite's mean distance from the bound is flat from 0.1 to 0.6 times; whole times, or the
/// `m`-th shortest, lose 2 to 8%).
fn lookahead_horizon(model: &RoundModel, rates: &[f64]) -> f64 {
    0.3 * model
        .jobs
        .iter()
        .zip(rates)
        .map(|(j, &r)| Pooled::of(j, r).work)
        .fold(f64::INFINITY, f64::min)
}

/// The largest Slow-Down the jobs of `model` can still reach if they run `horizon` seconds
/// under `drs` ([`instant_times`]; a job that moves from `current` first stalls) and the
/// rest on the pooled machine ([`pooled_slowdown`]): a one-step lookahead that sees that
/// the jobs that can wait may give way now, which the prediction of a fixed placement
/// cannot.
fn lookahead(
    model: &RoundModel,
    current: &[DistributionRatio],
    drs: &[DistributionRatio],
    horizon: f64,
    rates: &[f64],
) -> f64 {
    let stall = model.machine.reconfigure_ms / 1000.0;
    let t = instant_times(model, drs);
    let mut worst = 0.0f64;
    let mut left = Vec::with_capacity(model.jobs.len());
    for (k, job) in model.jobs.iter().enumerate() {
        let pause = if job.done_iters > 0 && drs[k] != current[k] {
            stall
        } else {
            0.0
        };
        let remaining = job.remaining_iters() as f64;
        let needed = pause + remaining * t[k];
        if needed <= horizon {
            worst = worst.max((job.elapsed_s + needed) / job.exclusive_s());
            continue;
        }
        let done = ((horizon - pause).max(0.0) / t[k]).min(remaining);
        left.push(Pooled {
            work: (remaining - done) * job.exclusive_iter_s,
            elapsed: job.elapsed_s + horizon,
            exclusive: job.exclusive_s(),
            rate: rates[k],
        });
    }
    worst.max(pooled_slowdown(&left, model.machine.gpus as f64))
}

/// A job as the pooled machine sees it: exclusive seconds of work left, seconds since it
/// arrived, its exclusive time.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Pooled {
    work: f64,
    elapsed: f64,
    exclusive: f64,
    /// The most exclusive seconds of work it does per second (its fastest split alone).
    rate: f64,
}

impl Pooled {
    fn of(job: &JobModel, rate: f64) -> Self {
        Pooled {
            work: job.remaining_iters() as f64 * job.exclusive_iter_s,
            elapsed: job.elapsed_s,
            exclusive: job.exclusive_s(),
            rate,
        }
    }
}

/// The fastest a job can run alone: the exclusive seconds of work it does per second at its
/// fastest even split (10 units as evenly as integers allow over `k` GPUs, `k` up to
/// `min(gpus, 10, batch)`; where the units sit changes nothing alone), and that `k`.
fn fastest_split(job: &JobModel, machine: &SimulationConfig) -> (f64, usize) {
    let max_k = machine
        .gpus
        .min(usize::from(DR_UNITS))
        .min(usize::try_from(job.batch_size).unwrap_or(usize::MAX))
        .max(1);
    let (sample_s, overhead_s) = (
        job.costs.sample_ms / 1000.0,
        job.costs.iter_overhead_ms / 1000.0,
    );
    let mut best = (job.exclusive_iter_s, 1);
    for k in 2..=max_k {
        let units: Vec<u64> = (0..k)
            .map(|g| {
                u64::from(DR_UNITS) / k as u64
                    + u64::from((g as u64) < u64::from(DR_UNITS) % k as u64)
            })
            .collect();
        let largest = apportion(&units, job.batch_size)
            .and_then(|s| s.into_iter().max())
            .unwrap_or(job.batch_size);
        let t = largest as f64 * sample_s + overhead_s + allreduce_s(machine, k, job.costs.grad_mb);
        if t < best.0 {
            best = (t, k);
        }
    }
    (job.exclusive_iter_s / best.0, best.1)
}

/// The smallest `S` at which `jobs` can all finish by `S exclusive - elapsed` from now on
/// `capacity` pooled GPUs, each job doing at most `rate` exclusive seconds of work per
/// second, preempted and migrated at will (to a relative 1e-4), as far as the prefix
/// condition sees: at every deadline `d_k`,
/// `capacity d_k + sum_{d_j > d_k} min(work_j, rate_j (d_j - d_k)) >= sum work` (the work that
/// must still be done after `d_k` fits before its deadlines), and `work_j <= rate_j d_j`. All
/// jobs being present and every rate 1 (each job on one GPU at a time), it is exact; with
/// larger rates it is necessary, which is enough for a score.
fn pooled_slowdown(jobs: &[Pooled], capacity: f64) -> f64 {
    let jobs: Vec<Pooled> = jobs.iter().copied().filter(|j| j.work > 0.0).collect();
    if jobs.is_empty() {
        return 0.0;
    }
    let total: f64 = jobs.iter().map(|j| j.work).sum();
    let feasible = |s: f64| {
        let d: Vec<f64> = jobs.iter().map(|j| s * j.exclusive - j.elapsed).collect();
        // Latest starts `d - work / rate` and deadlines, each ascending.
        let start: Vec<f64> = jobs
            .iter()
            .zip(&d)
            .map(|(j, d)| d - j.work / j.rate)
            .collect();
        let mut by_start: Vec<usize> = (0..jobs.len()).collect();
        by_start.sort_by(|&a, &b| start[a].total_cmp(&start[b]));
        let mut by_end = by_start.clone();
        by_end.sort_by(|&a, &b| d[a].total_cmp(&d[b]));
        let (mut early, mut late) = (0, 0);
        // The jobs still needing all their work after `t`, and the sums of `rate * d` and
        // of the rates of those already started (each needs `rate (d - t)` more).
        let (mut whole, mut ends, mut started) = (total, 0.0, 0.0);
        for &k in &by_end {
            let t = d[k];
            while early < by_start.len() && start[by_start[early]] < t {
                let j = by_start[early];
                whole -= jobs[j].work;
                ends += jobs[j].rate * d[j];
                started += jobs[j].rate;
                early += 1;
            }
            while late < by_end.len() && d[by_end[late]] <= t {
                let j = by_end[late];
                ends -= jobs[j].rate * d[j];
                started -= jobs[j].rate;
                late += 1;
            }
            if capacity * t + whole + (ends - started * t) < total * (1.0 - 1e-12) {
                return false;
            }
        }
        true
    };
    // Each job alone from now is the least it can reach.
    let mut lo = jobs
        .iter()
        .map(|j| (j.elapsed + j.work / j.rate) / j.exclusive)
        .fold(0.0, f64::max);
    if feasible(lo) {
        return lo;
    }
    let mut hi = lo * 2.0;
    while !feasible(hi) {
        lo = hi;
        hi *= 2.0;
        if !hi.is_finite() {
            return lo;
        }
    }
    while hi - lo > 1e-4 * hi {
        let mid = 0.5 * (lo + hi);
        if feasible(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// Whether `new`, sorted from the largest, is below `old` sorted likewise by more than
/// `margin` times the largest of `old` at the first place where they differ by more.
fn lexicographically_lower(old: &[f64], new: &[f64], margin: f64) -> bool {
    let mut old = old.to_vec();
    let mut new = new.to_vec();
    old.sort_by(|a, b| b.total_cmp(a));
    new.sort_by(|a, b| b.total_cmp(a));
    let margin = margin * old.first().copied().unwrap_or(0.0);
    for (o, n) in old.iter().zip(&new) {
        if *n < o - margin {
            return true;
        }
        if *n > o + margin {
            return false;
        }
    }
    false
}

/// Sweeps of the fixed point when all jobs are recomputed, and when only the jobs a
/// candidate touches are.
const GLOBAL_SWEEPS: usize = 4;
const LOCAL_SWEEPS: usize = 1;
/// GPUs considered for a job beyond those it uses.
const SHORTLIST: usize = DR_UNITS as usize;
/// A job's own moves evaluated in full, of those its own prediction ranks best.
const SCREENED: usize = 2;
/// With more jobs than GPUs, the deadline-ordered placements tried: 1 to this many GPUs
/// shared by the jobs that can wait.
const QUEUES: usize = 5;
/// Jobs given a sprint each round: those with the largest predicted Slow-Downs.
const SPRINTED: usize = 2;
/// Most shards of one job (a DR has 10 units).
const MAX_SHARDS: usize = DR_UNITS as usize;

/// Per-job constants of the prediction.
struct JobCost<'a> {
    model: &'a JobModel,
    remaining: f64,
    exclusive: f64,
    started: bool,
}

/// One job's shards under a tentative DR and their prediction (plain data, cheap to copy).
#[derive(Clone, Copy, Debug)]
struct JobState {
    shards: usize,
    gpu: [usize; MAX_SHARDS],
    /// Seconds of work alone, and the fraction of the iteration the shard is active.
    work: [f64; MAX_SHARDS],
    phi: [f64; MAX_SHARDS],
    /// Predicted iteration time, time left (`remaining * t`) and Slow-Down.
    t: f64,
    left: f64,
    sd: f64,
}

impl JobState {
    fn new(job: &JobModel, dr: &DistributionRatio, t: f64, left: f64) -> Self {
        let mut st = JobState {
            shards: 0,
            gpu: [0; MAX_SHARDS],
            work: [0.0; MAX_SHARDS],
            phi: [1.0; MAX_SHARDS],
            t,
            left,
            sd: 0.0,
        };
        for (g, w) in shard_work(job.batch_size, &job.costs, dr)
            .into_iter()
            .take(MAX_SHARDS)
        {
            st.gpu[st.shards] = g;
            st.work[st.shards] = w;
            st.shards += 1;
        }
        st
    }

    fn gpus(&self) -> &[usize] {
        &self.gpu[..self.shards]
    }

    fn phi_on(&self, g: usize) -> f64 {
        self.gpus()
            .iter()
            .position(|&x| x == g)
            .map_or(0.0, |k| self.phi[k])
    }
}

/// Tentative DRs, job states and GPU occupancy laid over the committed ones (found through
/// `Search::job_slot` and `Search::gpu_slot` while it is being evaluated).
#[derive(Default)]
struct Overlay {
    drs: Vec<(usize, DistributionRatio)>,
    jobs: Vec<(usize, JobState)>,
    gpus: Vec<(usize, Vec<usize>)>,
}

/// No overlay entry.
const NONE: u32 = u32::MAX;

struct Search<'a> {
    machine: &'a SimulationConfig,
    params: MinmaxParams,
    jobs: Vec<JobCost<'a>>,
    /// The DRs the round started from (a change from them costs the reconfiguration stall).
    start: Vec<DistributionRatio>,
    dr: Vec<DistributionRatio>,
    state: Vec<JobState>,
    /// Jobs with a shard on each GPU.
    on_gpu: Vec<Vec<usize>>,
    /// Sum of the activity of the shards on each GPU, and the GPUs by it, lightest first.
    load: Vec<f64>,
    order: Vec<usize>,
    /// Where each job and GPU sits in the overlay being evaluated ([`NONE`]: not there).
    job_slot: Vec<u32>,
    gpu_slot: Vec<u32>,
}

/// Speed of a shard beside `others` expected other active shards.
fn speed(others: f64, eff: f64) -> f64 {
    if others <= 0.0 {
        1.0
    } else {
        (1.0 + (eff - 1.0) * others.min(1.0)) / (1.0 + others)
    }
}

impl<'a> Search<'a> {
    fn new(
        model: &'a RoundModel,
        start: Vec<DistributionRatio>,
        dr: Vec<DistributionRatio>,
        params: MinmaxParams,
    ) -> Self {
        let m = model.machine.gpus;
        let jobs: Vec<JobCost> = model
            .jobs
            .iter()
            .map(|j| JobCost {
                model: j,
                remaining: j.remaining_iters() as f64,
                exclusive: j.exclusive_s(),
                started: j.done_iters > 0,
            })
            .collect();
        let state: Vec<JobState> = jobs
            .iter()
            .zip(&dr)
            .map(|(j, d)| {
                let x = j.model.exclusive_iter_s;
                JobState::new(j.model, d, x, j.remaining * x)
            })
            .collect();
        let n = state.len();
        let mut on_gpu = vec![Vec::new(); m];
        for (i, s) in state.iter().enumerate() {
            for &g in s.gpus() {
                on_gpu[g].push(i);
            }
        }
        let mut search = Search {
            machine: &model.machine,
            params,
            jobs,
            start,
            dr,
            state,
            on_gpu,
            load: vec![0.0; m],
            order: (0..m).collect(),
            job_slot: vec![NONE; n],
            gpu_slot: vec![NONE; m],
        };
        let none = Overlay::default();
        for _ in 0..GLOBAL_SWEEPS {
            for i in 0..n {
                let st = search.predicted(&none, i, &search.state[i]);
                search.state[i] = st;
            }
        }
        for i in 0..n {
            search.state[i].sd = search.slowdown(i, search.state[i].t, &search.dr[i]);
        }
        search.update_loads(0..m);
        search
    }

    fn slowdowns(&self) -> Vec<f64> {
        self.state.iter().map(|s| s.sd).collect()
    }

    fn job<'s>(&'s self, ov: &'s Overlay, j: usize) -> &'s JobState {
        match self.job_slot[j] {
            NONE => &self.state[j],
            k => &ov.jobs[k as usize].1,
        }
    }

    fn jobs_on<'s>(&'s self, ov: &'s Overlay, g: usize) -> &'s [usize] {
        match self.gpu_slot[g] {
            NONE => &self.on_gpu[g],
            k => &ov.gpus[k as usize].1,
        }
    }

    /// Job `i` in state `me` re-predicted: its iteration time, the activity of each shard
    /// and its time left. Each other shard on a GPU counts its activity times the part of
    /// `i`'s remaining time it is still there (jobs that finish sooner leave the GPU to the
    /// others).
    fn predicted(&self, ov: &Overlay, i: usize, me: &JobState) -> JobState {
        let eff = self.machine.colocation_efficiency;
        let mut out = *me;
        let mut slowest = 0.0f64;
        for k in 0..me.shards {
            let g = me.gpu[k];
            let mut others = 0.0;
            for &j in self.jobs_on(ov, g) {
                if j == i {
                    continue;
                }
                let other = self.job(ov, j);
                let overlap = if me.left > 0.0 {
                    (other.left / me.left).min(1.0)
                } else {
                    1.0
                };
                others += other.phi_on(g) * overlap;
            }
            let time = me.work[k] / speed(others, eff);
            slowest = slowest.max(time);
            out.phi[k] = time;
        }
        let t = slowest + allreduce_s(self.machine, me.shards, self.jobs[i].model.costs.grad_mb);
        for k in 0..me.shards {
            out.phi[k] = if t > 0.0 { out.phi[k] / t } else { 0.0 };
        }
        out.t = t;
        out.left = self.jobs[i].remaining * t;
        out
    }

    fn slowdown(&self, i: usize, t: f64, dr: &DistributionRatio) -> f64 {
        let job = &self.jobs[i];
        let stall = if job.started && *dr != self.start[i] {
            self.machine.reconfigure_ms / 1000.0
        } else {
            0.0
        };
        (job.model.elapsed_s + job.remaining * t + stall) / job.exclusive
    }

    /// The overlay of giving the jobs of `changes` their DRs (every job sharing a GPU with
    /// them re-predicted), the largest Slow-Down in it, and whether it improves on the jobs
    /// it touches ([`lexicographically_lower`] with the hysteresis margin).
    fn evaluate(&mut self, changes: &[(usize, DistributionRatio)]) -> (Overlay, f64, bool) {
        let mut ov = Overlay::default();
        let mut touched: Vec<usize> = Vec::new();
        for (i, dr) in changes {
            let old = self.state[*i];
            let state = JobState::new(self.jobs[*i].model, dr, old.t, old.left);
            touched.extend_from_slice(old.gpus());
            touched.extend_from_slice(state.gpus());
            self.job_slot[*i] = ov.jobs.len() as u32;
            ov.jobs.push((*i, state));
            ov.drs.push((*i, dr.clone()));
        }
        touched.sort_unstable();
        touched.dedup();
        for &g in &touched {
            let mut jobs: Vec<usize> = self.on_gpu[g]
                .iter()
                .copied()
                .filter(|&j| self.job_slot[j] == NONE)
                .collect();
            jobs.extend(
                ov.jobs
                    .iter()
                    .filter(|(_, st)| st.gpus().contains(&g))
                    .map(|e| e.0),
            );
            self.gpu_slot[g] = ov.gpus.len() as u32;
            ov.gpus.push((g, jobs));
        }
        // Everyone on a touched GPU, before or after the change.
        for &g in &touched {
            for &j in &self.on_gpu[g] {
                if self.job_slot[j] == NONE {
                    self.job_slot[j] = ov.jobs.len() as u32;
                    ov.jobs.push((j, self.state[j]));
                }
            }
        }
        for _ in 0..LOCAL_SWEEPS {
            for k in 0..ov.jobs.len() {
                let (j, st) = ov.jobs[k];
                ov.jobs[k].1 = self.predicted(&ov, j, &st);
            }
        }
        for k in 0..ov.jobs.len() {
            let j = ov.jobs[k].0;
            let dr = ov
                .drs
                .iter()
                .find(|d| d.0 == j)
                .map_or(&self.dr[j], |d| &d.1);
            ov.jobs[k].1.sd = self.slowdown(j, ov.jobs[k].1.t, dr);
        }
        for (j, _) in &ov.jobs {
            self.job_slot[*j] = NONE;
        }
        for (g, _) in &ov.gpus {
            self.gpu_slot[*g] = NONE;
        }
        let old: Vec<f64> = ov.jobs.iter().map(|(j, _)| self.state[*j].sd).collect();
        let new: Vec<f64> = ov.jobs.iter().map(|(_, st)| st.sd).collect();
        let worst = new.iter().copied().fold(0.0, f64::max);
        let better = lexicographically_lower(&old, &new, self.params.margin);
        (ov, worst, better)
    }

    fn apply(&mut self, ov: Overlay) {
        let mut gpus: Vec<usize> = Vec::new();
        for (j, state) in ov.jobs {
            gpus.extend_from_slice(self.state[j].gpus());
            gpus.extend_from_slice(state.gpus());
            self.state[j] = state;
        }
        for (j, dr) in ov.drs {
            self.dr[j] = dr;
        }
        for (g, jobs) in ov.gpus {
            self.on_gpu[g] = jobs;
        }
        gpus.sort_unstable();
        gpus.dedup();
        self.update_loads(gpus);
    }

    fn update_loads(&mut self, gpus: impl IntoIterator<Item = usize>) {
        for g in gpus {
            self.load[g] = self.on_gpu[g]
                .iter()
                .map(|&j| self.state[j].phi_on(g))
                .sum();
        }
        let load = &self.load;
        self.order
            .sort_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b)));
    }

    /// The local search (module docs): sweeps over the jobs from the most slowed down, each
    /// ending after [`MinmaxParams::patience`] jobs in a row found no better move.
    fn run(&mut self) {
        let n = self.state.len();
        let mut budget = self.params.max_moves + n / 8;
        for _ in 0..self.params.passes {
            let mut by_sd: Vec<usize> = (0..n).collect();
            by_sd.sort_by(|&a, &b| {
                self.state[b]
                    .sd
                    .total_cmp(&self.state[a].sd)
                    .then(a.cmp(&b))
            });
            let mut moved = false;
            let mut idle = 0;
            for &i in &by_sd {
                let mut found = false;
                for _ in 0..self.params.moves_per_job {
                    if budget == 0 {
                        return;
                    }
                    match self.best_move(i) {
                        Some(ov) => {
                            self.apply(ov);
                            budget -= 1;
                            found = true;
                        }
                        None => break,
                    }
                }
                moved |= found;
                idle = if found { 0 } else { idle + 1 };
                if idle >= self.params.patience {
                    break;
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// The candidate move for job `i` (module docs) that improves and leaves the lowest
    /// largest Slow-Down among the jobs it touches.
    fn best_move(&mut self, i: usize) -> Option<Overlay> {
        let m = self.machine.gpus;
        let eff = self.machine.colocation_efficiency;
        let me = self.state[i];
        let others = |s: &Self, g: usize| (s.load[g] - me.phi_on(g)).max(0.0);
        // The lightest GPUs, plus those the job uses, by the load the job would see.
        let mut gpus: Vec<usize> = self.order.iter().copied().take(SHORTLIST).collect();
        for &g in me.gpus() {
            if !gpus.contains(&g) {
                gpus.push(g);
            }
        }
        gpus.sort_by(|&a, &b| others(self, a).total_cmp(&others(self, b)).then(a.cmp(&b)));
        gpus.truncate(SHORTLIST);
        let job = self.jobs[i].model;
        let mut best: Option<(Overlay, f64)> = None;
        let mut consider = |s: &mut Self, change: Vec<(usize, DistributionRatio)>| {
            if change.iter().all(|(j, dr)| *dr == s.dr[*j]) {
                return;
            }
            let (ov, worst, better) = s.evaluate(&change);
            if better && best.as_ref().is_none_or(|b| worst < b.1) {
                best = Some((ov, worst));
            }
        };
        // The job's own moves, screened by its own predicted Slow-Down against the current
        // loads; the best few are evaluated in full.
        let mut own: Vec<DistributionRatio> = gpus
            .iter()
            .take(3)
            .filter_map(|&g| DistributionRatio::exclusive(m, g).ok())
            .collect();
        let max_k = gpus
            .len()
            .min(usize::try_from(job.batch_size).unwrap_or(usize::MAX));
        for k in 2..=max_k {
            let speeds: Vec<(usize, f64)> = gpus[..k]
                .iter()
                .map(|&g| (g, speed(others(self, g), eff)))
                .collect();
            own.extend(balanced(m, job, &speeds));
        }
        let used: Vec<(usize, f64)> = me
            .gpus()
            .iter()
            .map(|&g| (g, speed(others(self, g), eff)))
            .collect();
        if used.len() >= 2 {
            own.extend(balanced(m, job, &used));
        }
        let mut screened: Vec<(f64, DistributionRatio)> = Vec::new();
        for dr in own {
            if dr == self.dr[i] || screened.iter().any(|c| c.1 == dr) {
                continue;
            }
            let shards = shard_work(job.batch_size, &job.costs, &dr);
            let slowest = shards
                .iter()
                .map(|&(g, w)| w / speed(others(self, g), eff))
                .fold(0.0, f64::max);
            let t = slowest + allreduce_s(self.machine, shards.len(), job.costs.grad_mb);
            screened.push((self.slowdown(i, t, &dr), dr));
        }
        screened.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (sd, dr) in screened.into_iter().take(SCREENED) {
            if sd < me.sd {
                consider(self, vec![(i, dr)]);
            }
        }
        // The GPU of the job's slowest shard.
        let slow = (0..me.shards)
            .map(|k| (me.gpu[k], me.work[k] / speed(others(self, me.gpu[k]), eff)))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(g, _)| g);
        if let Some(slow) = slow {
            // The least slowed-down other job there moves its units elsewhere, or every other
            // job there does, leaving the GPU to this one (when this one needs it alone): a job
            // that also runs elsewhere gathers them on its largest other GPU, one that does
            // not goes to the lightest GPUs, those this job does not use first.
            let mut free: Vec<usize> = self
                .order
                .iter()
                .copied()
                .filter(|&g| g != slow && !self.dr[i].uses(g))
                .take(self.on_gpu[slow].len())
                .collect();
            if free.is_empty() {
                free.extend(self.order.iter().copied().find(|&g| g != slow));
            }
            let mut victims: Vec<usize> = self.on_gpu[slow]
                .iter()
                .copied()
                .filter(|&j| j != i)
                .collect();
            victims.sort_by(|&a, &b| {
                self.state[a]
                    .sd
                    .total_cmp(&self.state[b].sd)
                    .then(a.cmp(&b))
            });
            let mut clear = Vec::new();
            let mut next_free = free.iter().cycle();
            for (k, &j) in victims.iter().enumerate() {
                let own_other = self.state[j]
                    .gpus()
                    .iter()
                    .copied()
                    .filter(|&g| g != slow)
                    .max_by_key(|&g| (self.dr[j].get(g), std::cmp::Reverse(g)));
                let Some(to) = own_other.or_else(|| next_free.next().copied()) else {
                    break;
                };
                if let Ok(dr) = self.dr[j].moved(slow, to, self.dr[j].get(slow)) {
                    if k == 0 {
                        consider(self, vec![(j, dr.clone())]);
                    }
                    clear.push((j, dr));
                }
            }
            if !clear.is_empty()
                && let Ok(dr) = DistributionRatio::exclusive(m, slow)
            {
                clear.push((i, dr));
                consider(self, clear);
            }
        }
        best.map(|b| b.0)
    }

    /// A placement from scratch: one GPU per job, the most slowed-down jobs first, each on the
    /// GPU where the largest Slow-Down of the jobs there stays lowest, predicted by processor
    /// sharing with departures (the jobs of a GPU share it equally until each finishes).
    fn rebuild(&self) -> Vec<DistributionRatio> {
        let m = self.machine.gpus;
        let eff = self.machine.colocation_efficiency;
        // Per job: (work left alone, elapsed, exclusive time).
        let work: Vec<(f64, f64, f64)> = self
            .jobs
            .iter()
            .map(|j| {
                (
                    j.remaining * j.model.exclusive_iter_s,
                    j.model.elapsed_s,
                    j.exclusive,
                )
            })
            .collect();
        let urgency = |i: usize| (work[i].1 + work[i].0) / work[i].2;
        let mut by_urgency: Vec<usize> = (0..work.len()).collect();
        by_urgency.sort_by(|&a, &b| {
            urgency(b)
                .total_cmp(&urgency(a))
                .then(work[b].0.total_cmp(&work[a].0))
                .then(a.cmp(&b))
        });
        // The largest Slow-Down on a GPU whose jobs (by work left, ascending) share it, with
        // job `new` inserted at `at`.
        let worst = |jobs: &[usize], at: usize, new: usize| -> f64 {
            let n = jobs.len() + 1;
            let (mut clock, mut prev, mut worst) = (0.0, 0.0, 0.0f64);
            let (before, after) = jobs.split_at(at);
            let all = before.iter().chain(std::iter::once(&new)).chain(after);
            for (k, &j) in all.enumerate() {
                let sharing = n - k;
                let rate = if sharing >= 2 {
                    eff / sharing as f64
                } else {
                    1.0
                };
                clock += (work[j].0 - prev) / rate;
                prev = work[j].0;
                worst = worst.max((work[j].1 + clock) / work[j].2);
            }
            worst
        };
        let mut placed: Vec<Vec<usize>> = vec![Vec::new(); m];
        // Each GPU's largest Slow-Down, and the GPUs by it: a job never lowers a GPU's
        // largest Slow-Down, so the scan stops at the first GPU already above the best so far.
        let mut worst_of = vec![0.0f64; m];
        let mut by_worst: Vec<usize> = (0..m).collect();
        let mut gpu_of = vec![0usize; work.len()];
        for &i in &by_urgency {
            let mut best: Option<(f64, usize, usize)> = None;
            // The GPUs whose largest Slow-Down is lowest; on a large machine the job's best
            // place is among the first few, and scanning them all would make a round grow
            // with the machine.
            for &g in by_worst.iter().take(2 * SHORTLIST) {
                if best.is_some_and(|b| worst_of[g] >= b.0) {
                    break;
                }
                let jobs = &placed[g];
                let at = jobs.partition_point(|&j| work[j].0 <= work[i].0);
                let key = (worst(jobs, at, i), jobs.len(), g);
                if best.is_none_or(|b| key < b) {
                    best = Some(key);
                }
            }
            let Some((w, _, g)) = best else {
                continue;
            };
            let at = placed[g].partition_point(|&j| work[j].0 <= work[i].0);
            placed[g].insert(at, i);
            gpu_of[i] = g;
            worst_of[g] = w;
            if let Some(k) = by_worst.iter().position(|&x| x == g) {
                by_worst.remove(k);
            }
            let at = by_worst.partition_point(|&x| (worst_of[x], x) < (w, g));
            by_worst.insert(at, g);
        }
        gpu_of
            .into_iter()
            .zip(&self.dr)
            .map(|(g, d)| DistributionRatio::exclusive(m, g).unwrap_or_else(|_| d.clone()))
            .collect()
    }
}

/// The DR of `job` over the GPUs of `speeds` (`(GPU, expected speed)`) that equalises its
/// shard times (module docs), rounded to tenths; `None` if no GPU keeps a share.
fn balanced(m: usize, job: &JobModel, speeds: &[(usize, f64)]) -> Option<DistributionRatio> {
    let compute = job.batch_size as f64 * job.costs.sample_ms;
    let overhead = job.costs.iter_overhead_ms;
    let mut kept: Vec<(usize, f64)> = speeds.iter().copied().filter(|s| s.1 > 0.0).collect();
    let mut shares: Vec<f64> = Vec::new();
    while !kept.is_empty() {
        let total: f64 = kept.iter().map(|s| s.1).sum();
        shares = if compute > 0.0 {
            let tau = (compute + kept.len() as f64 * overhead) / total;
            kept.iter()
                .map(|s| (tau * s.1 - overhead) / compute)
                .collect()
        } else {
            kept.iter().map(|s| s.1 / total).collect()
        };
        let Some(worst) = (0..kept.len())
            .filter(|&k| shares[k] <= 0.0)
            .min_by(|&a, &b| shares[a].total_cmp(&shares[b]))
        else {
            break;
        };
        kept.remove(worst);
    }
    // Rounded over the kept GPUs only (the same as over all of them, without sorting a
    // large machine's zeros).
    let total: f64 = shares.iter().sum();
    if kept.is_empty() || total <= 0.0 {
        return None;
    }
    let quotas: Vec<f64> = shares
        .iter()
        .map(|f| f / total * f64::from(DR_UNITS))
        .collect();
    let mut units = vec![0u8; m];
    for (&(g, _), u) in kept
        .iter()
        .zip(largest_remainder(&quotas, u64::from(DR_UNITS)))
    {
        units[g] = u as u8;
    }
    DistributionRatio::new(units).ok()
}

/// `thesis-stable`: the thesis' Algorithms 1 and 2 with two changes aimed at their
/// oscillations (docs/SCHEDULING.md):
/// - with fewer jobs than GPUs, a job alone on a GPU that no earlier job of the round took
///   keeps it (the thesis sends it to the least-utilised GPU, which is never its own);
/// - the job that moves sees the utilisation of each GPU it uses without its own share of it
///   (its units over all units there), so it does not flee its own load.
#[derive(Clone, Debug, Default)]
pub struct ThesisStablePolicy {
    thesis: ThesisPolicy,
}

impl ThesisStablePolicy {
    pub fn new(params: ThesisParams) -> Self {
        ThesisStablePolicy {
            thesis: ThesisPolicy::new(params),
        }
    }
}

impl Policy for ThesisStablePolicy {
    fn name(&self) -> &'static str {
        "thesis-stable"
    }

    fn admit(&mut self, gpus: usize, job: &Admission) -> Result<DistributionRatio> {
        initial_or_even(gpus, job)
    }

    fn evaluate(&mut self, inputs: &PeriodInputs) -> Result<Vec<Decision>> {
        let m = inputs.gpus();
        let jobs = inputs.jobs();
        let util = inputs.util();
        if jobs.len() < m {
            let mut taken = vec![false; m];
            let mut out: Vec<Option<Decision>> = vec![None; jobs.len()];
            for (k, job) in jobs.iter().enumerate() {
                let mut used = job.dr.used_gpus();
                if let (Some(g), None) = (used.next(), used.next())
                    && !taken[g]
                {
                    taken[g] = true;
                    out[k] = Some(Decision {
                        dr: job.dr.clone(),
                        action: Action::Keep,
                    });
                }
            }
            return out
                .into_iter()
                .map(|d| match d {
                    Some(d) => Ok(d),
                    None => {
                        // A free GPU remains: at most jobs.len() - 1 < m are taken.
                        let g = (0..m)
                            .filter(|&g| !taken[g])
                            .min_by(|&a, &b| util[a].total_cmp(&util[b]).then(a.cmp(&b)))
                            .unwrap_or(0);
                        taken[g] = true;
                        Ok(Decision {
                            dr: DistributionRatio::exclusive(m, g)?,
                            action: Action::Exclusive { gpu: g },
                        })
                    }
                })
                .collect();
        }
        // The job the thesis moves: the largest SD, the lowest index among ties.
        let Some(max_job) =
            (0..jobs.len()).reduce(|a, b| if jobs[b].sd > jobs[a].sd { b } else { a })
        else {
            return Ok(Vec::new());
        };
        let mut units_on = vec![0u32; m];
        for job in jobs {
            for (g, &u) in job.dr.units().iter().enumerate() {
                units_on[g] += u32::from(u);
            }
        }
        let own = &jobs[max_job].dr;
        let seen: Vec<f64> = (0..m)
            .map(|g| {
                let share = if units_on[g] > 0 {
                    f64::from(own.get(g)) / f64::from(units_on[g])
                } else {
                    0.0
                };
                util[g] * (1.0 - share)
            })
            .collect();
        self.thesis
            .evaluate(&PeriodInputs::new(seen, jobs.to_vec())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::jobs::JobSim;
    use crate::sched::policy::JobObservation;

    fn dr(u: &[u8]) -> DistributionRatio {
        DistributionRatio::new(u.to_vec()).unwrap()
    }

    fn model(m: usize, jobs: usize) -> RoundModel {
        let mut machine = SimulationConfig::with_gpus(m);
        machine.allreduce_latency_ms = 0.0;
        RoundModel {
            machine,
            jobs: (0..jobs)
                .map(|_| JobModel {
                    batch_size: 100,
                    costs: JobSim {
                        sample_ms: 1.0,
                        iter_overhead_ms: 0.0,
                        grad_mb: 1000.0,
                    },
                    elapsed_s: 0.0,
                    done_iters: 0,
                    total_iters: 100,
                    exclusive_iter_s: 0.1,
                })
                .collect(),
        }
    }

    fn inputs(m: usize, drs: &[&[u8]]) -> PeriodInputs {
        PeriodInputs::new(
            vec![50.0; m],
            drs.iter()
                .map(|u| JobObservation { sd: 1.0, dr: dr(u) })
                .collect(),
        )
        .unwrap()
        .with_model(model(m, drs.len()))
        .unwrap()
    }

    #[test]
    fn prediction_of_shared_gpus() {
        // Two jobs on one GPU, each half as fast; split jobs pay their all-reduce (100 ms
        // for 1 GB on two GPUs).
        let m = model(2, 2);
        assert!((predicted_max_slowdown(&m, &[dr(&[10, 0]), dr(&[10, 0])]) - 2.0).abs() < 1e-9);
        assert!((predicted_max_slowdown(&m, &[dr(&[10, 0]), dr(&[0, 10])]) - 1.0).abs() < 1e-9);
        let one = RoundModel {
            jobs: m.jobs[..1].to_vec(),
            ..m.clone()
        };
        assert!((predicted_max_slowdown(&one, &[dr(&[5, 5])]) - 1.5).abs() < 1e-9);
    }

    #[test]
    fn pooled_deadlines() {
        let job = |work: f64, exclusive: f64| Pooled {
            work,
            elapsed: exclusive - work,
            exclusive,
            rate: 1.0,
        };
        // One GPU, fresh jobs of 1 and 2 s: the short one first, the long one done at 3 s.
        let s = pooled_slowdown(&[job(1.0, 1.0), job(2.0, 2.0)], 1.0);
        assert!((s - 1.5).abs() < 1e-3, "{s}");
        // Three 1 s jobs on two GPUs, migrating: all done at 1.5 s.
        let s = pooled_slowdown(&[job(1.0, 1.0); 3], 2.0);
        assert!((s - 1.5).abs() < 1e-3, "{s}");
        // A job half done in twice its time has used its slack: at least (2 + 0.5) / 1.
        let late = Pooled {
            work: 0.5,
            elapsed: 2.0,
            exclusive: 1.0,
            rate: 1.0,
        };
        assert!((pooled_slowdown(&[late, job(1.0, 1.0)], 2.0) - 2.5).abs() < 1e-3);
        assert_eq!(pooled_slowdown(&[], 4.0), 0.0);
    }

    #[test]
    fn fastest_split_and_pooled_rates() {
        // 100 samples of 1 ms, nothing else: [3,3,2,2] on four GPUs, 30 ms of 100.
        let mut m = model(4, 1);
        m.jobs[0].costs.grad_mb = 0.0;
        let (rate, k) = fastest_split(&m.jobs[0], &m.machine);
        assert!((rate - 100.0 / 30.0).abs() < 1e-9 && k == 4, "{rate} {k}");
        // A 1 GB all-reduce (100 ms on two GPUs) makes any split slower than one GPU.
        assert_eq!(fastest_split(&model(4, 1).jobs[0], &m.machine), (1.0, 1));
        // The pooled machine lets a job run at its rate: 3 s of work at 3 per second, due
        // after 1 s already spent of 3 alone: (1 + 1) / 3.
        let job = Pooled {
            work: 3.0,
            elapsed: 1.0,
            exclusive: 3.0,
            rate: 3.0,
        };
        assert!((pooled_slowdown(&[job], 4.0) - 2.0 / 3.0).abs() < 1e-3);
        // Two such jobs on three GPUs cannot both run at 3: 6 s of work on 3 GPUs.
        let s = pooled_slowdown(&[job, job], 3.0);
        assert!((s - 1.0).abs() < 1e-3, "{s}");
    }

    #[test]
    fn a_sprint_clears_gpus_for_one_job() {
        let m = model(4, 2);
        let drs = [dr(&[5, 5, 0, 0]), dr(&[0, 5, 5, 0])];
        // Job 0 keeps its two GPUs; job 1 keeps its other one.
        assert_eq!(
            sprint(&m, &drs, 0, 2).unwrap(),
            [dr(&[5, 5, 0, 0]), dr(&[0, 0, 10, 0])]
        );
        // On three, it takes the GPU nobody uses before the one job 1 is on.
        assert_eq!(
            sprint(&m, &drs, 0, 3).unwrap(),
            [dr(&[4, 3, 0, 3]), dr(&[0, 0, 10, 0])]
        );
        // Free GPUs before shared ones: job 1 stays; a job with nothing left goes to the free
        // GPU the fewest jobs use.
        let drs = [dr(&[10, 0, 0, 0]), dr(&[0, 10, 0, 0])];
        assert_eq!(
            sprint(&m, &drs, 0, 2).unwrap(),
            [dr(&[5, 0, 5, 0]), dr(&[0, 10, 0, 0])]
        );
        let drs = [dr(&[5, 5, 0, 0]), dr(&[0, 10, 0, 0])];
        assert_eq!(
            sprint(&m, &drs, 0, 2).unwrap(),
            [dr(&[5, 5, 0, 0]), dr(&[0, 0, 10, 0])]
        );
        // Every GPU leaves none for the others.
        assert!(sprint(&m, &drs, 0, 4).is_none());
    }

    #[test]
    fn more_jobs_than_gpus_are_served_by_deadline() {
        // Jobs of 10, 100, 100 and 100 s on two GPUs, all on GPU 0, the short one waiting for
        // 10 s already: it keeps GPU 0 (it is there), the others queue on GPU 1.
        let mut m = model(2, 4);
        for (k, j) in m.jobs.iter_mut().enumerate() {
            j.total_iters = if k == 0 { 100 } else { 1000 };
        }
        m.jobs[0].elapsed_s = 10.0;
        let start = vec![dr(&[10, 0]); 4];
        let drs = deadline_order(&m, &start, &[1.0; 4]).swap_remove(0);
        assert_eq!(
            drs,
            [dr(&[10, 0]), dr(&[0, 10]), dr(&[0, 10]), dr(&[0, 10])]
        );
        let t = instant_times(&m, &drs);
        assert!((t[0] - 0.1).abs() < 1e-12 && (t[3] - 0.3).abs() < 1e-12);
        assert!(deadline_order(&model(4, 4), &vec![dr(&[10, 0, 0, 0]); 4], &[1.0; 4]).is_empty());
        // The round takes it: one step ahead, the late short job alone leaves less for the
        // pooled machine than pairing it with a long one, which the search alone chooses.
        assert_eq!(plan(&m, &start, MinmaxParams::default()), drs);
    }

    #[test]
    fn minmax_spreads_a_bad_placement() {
        // Four jobs all on GPU 0 of four: one GPU each.
        let mut p = MinmaxPolicy::default();
        let d = p.evaluate(&inputs(4, &[&[10u8, 0, 0, 0][..]; 4])).unwrap();
        let mut gpus: Vec<usize> = d
            .iter()
            .map(|d| {
                assert_eq!(d.dr.used_count(), 1, "{}", d.dr);
                d.dr.used_gpus().next().unwrap()
            })
            .collect();
        gpus.sort();
        assert_eq!(gpus, [0, 1, 2, 3]);
        // Already there: nothing moves.
        let d = p
            .evaluate(&inputs(
                4,
                &[
                    &[10, 0, 0, 0],
                    &[0, 10, 0, 0],
                    &[0, 0, 10, 0],
                    &[0, 0, 0, 10],
                ],
            ))
            .unwrap();
        assert!(d.iter().all(|d| d.action == Action::Keep));
        // Without a model it says what it needs.
        let bare = PeriodInputs::new(vec![0.0], vec![]).unwrap();
        let e = p.evaluate(&bare).unwrap_err();
        assert!(e.to_string().contains("cost model"), "{e}");
    }

    #[test]
    fn balanced_shares() {
        let job = &model(3, 1).jobs[0];
        // Equal speeds: even.
        assert_eq!(
            balanced(3, job, &[(0, 1.0), (1, 1.0)]).unwrap().units(),
            &[5, 5, 0]
        );
        // A GPU twice as fast takes twice the share.
        assert_eq!(
            balanced(3, job, &[(0, 0.5), (2, 1.0)]).unwrap().units(),
            &[3, 0, 7]
        );
    }

    #[test]
    fn thesis_stable_keeps_a_lone_job_in_place() {
        let obs = |u: &[u8]| JobObservation { sd: 1.0, dr: dr(u) };
        let inputs = PeriodInputs::new(vec![100.0, 0.0, 0.0], vec![obs(&[10, 0, 0])]).unwrap();
        let d = ThesisStablePolicy::default().evaluate(&inputs).unwrap();
        assert_eq!(d[0].action, Action::Keep);
        let d = ThesisPolicy::default().evaluate(&inputs).unwrap();
        assert_eq!(d[0].dr.units(), &[0, 10, 0]);
        // A job alone on its GPU does not flee its own load to the idlest GPU.
        let inputs = PeriodInputs::new(
            vec![100.0, 60.0],
            vec![
                JobObservation {
                    sd: 2.0,
                    dr: dr(&[10, 0]),
                },
                obs(&[0, 10]),
                obs(&[0, 10]),
            ],
        )
        .unwrap();
        let d = ThesisStablePolicy::default().evaluate(&inputs).unwrap();
        assert!(
            !matches!(d[0].action, Action::UtilRebalance { .. }),
            "{:?}",
            d[0]
        );
        let d = ThesisPolicy::default().evaluate(&inputs).unwrap();
        assert!(
            matches!(d[0].action, Action::UtilRebalance { .. }),
            "{:?}",
            d[0]
        );
    }
}
