//! Policies: measured numbers in, distribution ratios out.
//!
//! A [`Policy`] sees only what a manager can measure on a real machine — each GPU's
//! utilisation over the last period, each running job's Slow-Down and current
//! [`DistributionRatio`], and (implicitly) the number of running jobs — bundled as
//! [`PeriodInputs`], and answers one [`Decision`] per job. [`Manager::evaluate`] is the one
//! evaluation; [`Manager::round`] (`super::round`) wraps it into the round that both the
//! simulator and the live manager of a real run call.
//!
//! Policies:
//! - [`StaticPolicy`] (`static`): each job keeps the DR of the job file (even by default);
//! - [`EvenPolicy`] (`even`): every job spread evenly over all GPUs;
//! - [`PackedPolicy`] (`packed`): one GPU per job, round-robin by job index, never changed;
//! - [`ThesisPolicy`] (`thesis`): the thesis' Algorithms 1 and 2 (see its docs).
//!
//! Ties are broken by the lowest index (GPU or job) everywhere, so a policy is a pure
//! function of its inputs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::cost::RoundModel;
use super::decisions::{DecisionLog, Entry, RoundJob};
use super::dr::{DR_UNITS, DistributionRatio, largest_remainder};
use super::minmax::{MinmaxPolicy, ThesisStablePolicy};
use crate::{Error, Result};

/// What the manager measured for one running job.
#[derive(Clone, Debug, PartialEq)]
pub struct JobObservation {
    /// Current predicted Slow-Down (see [`super::slowdown`]).
    pub sd: f64,
    /// The distribution ratio the job runs with now.
    pub dr: DistributionRatio,
}

/// Everything one evaluation round sees, checked on construction: one utilisation per GPU in
/// percent (`0..=100`), and for each running job (in a fixed order, e.g. job index) a finite,
/// non-negative SD and a DR over the same number of GPUs.
#[derive(Clone, Debug, PartialEq)]
pub struct PeriodInputs {
    util: Vec<f64>,
    jobs: Vec<JobObservation>,
    /// The cost model at this round, for the policies that predict ([`Policy::uses_model`]).
    model: Option<RoundModel>,
}

impl PeriodInputs {
    pub fn new(util: Vec<f64>, jobs: Vec<JobObservation>) -> Result<Self> {
        let ctx = "manager inputs";
        if util.is_empty() {
            return Err(Error::invalid(ctx, "no GPU utilisation given (zero GPUs)"));
        }
        if let Some((g, u)) = util
            .iter()
            .enumerate()
            .find(|(_, u)| !u.is_finite() || !(0.0..=100.0).contains(*u))
        {
            return Err(Error::invalid(
                ctx,
                format!("GPU {g} utilisation is {u}, expected a percentage in 0..=100"),
            ));
        }
        for (i, job) in jobs.iter().enumerate() {
            if !job.sd.is_finite() || job.sd < 0.0 {
                return Err(Error::invalid(
                    ctx,
                    format!("job {i} slow-down is {}, expected finite and >= 0", job.sd),
                ));
            }
            if job.dr.gpus() != util.len() {
                return Err(Error::invalid(
                    ctx,
                    format!(
                        "job {i} distribution ratio {} has {} entries, the machine has {} GPUs",
                        job.dr,
                        job.dr.gpus(),
                        util.len()
                    ),
                ));
            }
        }
        Ok(PeriodInputs {
            util,
            jobs,
            model: None,
        })
    }

    /// These inputs with the round's cost model: one [`super::cost::JobModel`] per job, in
    /// the same order.
    pub fn with_model(mut self, model: RoundModel) -> Result<Self> {
        model.check(self.util.len(), self.jobs.len())?;
        self.model = Some(model);
        Ok(self)
    }

    /// The round's cost model, when the caller gave one.
    pub fn model(&self) -> Option<&RoundModel> {
        self.model.as_ref()
    }

    /// The number of GPUs, `m`.
    pub fn gpus(&self) -> usize {
        self.util.len()
    }

    /// Utilisation per GPU, percent.
    pub fn util(&self) -> &[f64] {
        &self.util
    }

    /// The running jobs.
    pub fn jobs(&self) -> &[JobObservation] {
        &self.jobs
    }
}

/// Why a job's DR is what the policy returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Unchanged.
    Keep,
    /// Set to a given ratio by a fixed policy.
    Set,
    /// Algorithm 1, fewer jobs than GPUs: all units on one free GPU.
    Exclusive { gpu: usize },
    /// Algorithm 2, `DR_Update_Util`: units in proportion to free capacity.
    UtilRebalance { added_gpu: usize },
    /// Algorithm 2, `DR_Update_SD`: `units` moved from GPU `from` to GPU `to`.
    SdShift { from: usize, to: usize, units: u8 },
    /// `minmax`: the DR that lowers the largest predicted Slow-Down among the jobs it touches.
    Rebalance,
}

/// A policy's answer for one job.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub dr: DistributionRatio,
    pub action: Action,
}

impl Decision {
    fn keep(dr: &DistributionRatio) -> Self {
        Decision {
            dr: dr.clone(),
            action: Action::Keep,
        }
    }

    /// Every job of `inputs` keeps its DR: the fixed policies' round.
    fn keep_all(inputs: &PeriodInputs) -> Vec<Self> {
        inputs
            .jobs()
            .iter()
            .map(|j| Decision::keep(&j.dr))
            .collect()
    }

    /// Whether the DR differs from `old`.
    pub fn changes(&self, old: &DistributionRatio) -> bool {
        self.dr != *old
    }
}

/// A job entering the machine.
#[derive(Clone, Debug, PartialEq)]
pub struct Admission {
    /// The job's index in the job file (stable for its lifetime).
    pub job_index: usize,
    /// The DR the job file asks for, if any.
    pub initial_dr: Option<DistributionRatio>,
}

/// A scheduling policy. Implementations must return one decision per job of the inputs, in
/// the same order, each over `inputs.gpus()` GPUs.
pub trait Policy {
    /// The policy's name as used in job files and on the command line.
    fn name(&self) -> &'static str;

    /// The DR a job starts with when it arrives on a machine of `gpus` GPUs. The manager
    /// evaluates right after an arrival, so a dynamic policy may change it at once.
    fn admit(&mut self, gpus: usize, job: &Admission) -> Result<DistributionRatio>;

    /// One evaluation round.
    fn evaluate(&mut self, inputs: &PeriodInputs) -> Result<Vec<Decision>>;

    /// Whether the policy predicts from the round's cost model
    /// ([`PeriodInputs::with_model`]); the manager then records the model in its log.
    fn uses_model(&self) -> bool {
        false
    }
}

pub(super) fn initial_or_even(gpus: usize, job: &Admission) -> Result<DistributionRatio> {
    match &job.initial_dr {
        Some(dr) if dr.gpus() == gpus => Ok(dr.clone()),
        Some(dr) => Err(Error::invalid(
            format!("job {}: initial_dr", job.job_index),
            format!(
                "{dr} has {} entries, the machine has {gpus} GPUs",
                dr.gpus()
            ),
        )),
        None => DistributionRatio::even(gpus),
    }
}

/// `static`: every job keeps its initial DR (from the job file, even if none) for good.
#[derive(Clone, Debug, Default)]
pub struct StaticPolicy;

impl Policy for StaticPolicy {
    fn name(&self) -> &'static str {
        "static"
    }
    fn admit(&mut self, gpus: usize, job: &Admission) -> Result<DistributionRatio> {
        initial_or_even(gpus, job)
    }
    fn evaluate(&mut self, inputs: &PeriodInputs) -> Result<Vec<Decision>> {
        Ok(Decision::keep_all(inputs))
    }
}

/// `even`: every job over all GPUs, [`DistributionRatio::even`].
#[derive(Clone, Debug, Default)]
pub struct EvenPolicy;

impl Policy for EvenPolicy {
    fn name(&self) -> &'static str {
        "even"
    }
    fn admit(&mut self, gpus: usize, _job: &Admission) -> Result<DistributionRatio> {
        DistributionRatio::even(gpus)
    }
    fn evaluate(&mut self, inputs: &PeriodInputs) -> Result<Vec<Decision>> {
        let even = DistributionRatio::even(inputs.gpus())?;
        Ok(inputs
            .jobs()
            .iter()
            .map(|j| {
                if j.dr == even {
                    Decision::keep(&j.dr)
                } else {
                    Decision {
                        dr: even.clone(),
                        action: Action::Set,
                    }
                }
            })
            .collect())
    }
}

/// `packed`: job `k` (index in the job file) gets all of GPU `k mod m`, fixed.
#[derive(Clone, Debug, Default)]
pub struct PackedPolicy;

impl Policy for PackedPolicy {
    fn name(&self) -> &'static str {
        "packed"
    }
    fn admit(&mut self, gpus: usize, job: &Admission) -> Result<DistributionRatio> {
        if gpus == 0 {
            return Err(Error::invalid("packed policy", "zero GPUs"));
        }
        DistributionRatio::exclusive(gpus, job.job_index % gpus)
    }
    fn evaluate(&mut self, inputs: &PeriodInputs) -> Result<Vec<Decision>> {
        Ok(Decision::keep_all(inputs))
    }
}

/// The thesis' two thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThesisParams {
    /// `s`: a job whose SD is below this is never moved.
    pub sd_threshold: f64,
    /// `Util_th`, percentage points: above this gap between the busiest GPU the job uses and
    /// the idlest GPU, rebalance by utilisation, else by SD.
    pub util_threshold: f64,
}

impl ThesisParams {
    pub const DEFAULT_SD_THRESHOLD: f64 = 1.1;
    pub const DEFAULT_UTIL_THRESHOLD: f64 = 20.0;

    /// Checks `sd_threshold` finite and `>= 0`, `util_threshold` in `0..=100`.
    pub fn new(sd_threshold: f64, util_threshold: f64) -> Result<Self> {
        if !sd_threshold.is_finite() || sd_threshold < 0.0 {
            return Err(Error::invalid(
                "sd_threshold",
                format!("must be finite and >= 0, got {sd_threshold}"),
            ));
        }
        if !util_threshold.is_finite() || !(0.0..=100.0).contains(&util_threshold) {
            return Err(Error::invalid(
                "util_threshold",
                format!("must be percentage points in 0..=100, got {util_threshold}"),
            ));
        }
        Ok(ThesisParams {
            sd_threshold,
            util_threshold,
        })
    }
}

impl Default for ThesisParams {
    fn default() -> Self {
        ThesisParams {
            sd_threshold: Self::DEFAULT_SD_THRESHOLD,
            util_threshold: Self::DEFAULT_UTIL_THRESHOLD,
        }
    }
}

/// `thesis`: Algorithms 1 and 2 of the spec, with its reconstruction notes.
///
/// For each running job, in order (`DR_management`):
/// - fewer jobs than GPUs: the job gets all units on the least-utilised GPU of `GPU_set`,
///   which is then removed from `GPU_set` for the next job of this round (so each job gets a
///   GPU of its own);
/// - otherwise only the job with the largest SD moves (ties: the lowest job index), and only
///   if its SD is at least `sd_threshold`. With `g_max` the busiest GPU it uses and `g_min`
///   the idlest GPU: if `Util(g_max) - Util(g_min) > util_threshold`, `DR_Update_Util`
///   spreads its units over `GPU_used + {g_min}` in proportion to free capacity
///   (`100 - Util`), rounded half up as in the thesis and, when that misses 10, repaired by
///   the largest remainder method; else `DR_Update_SD` moves `r` units from the GPU holding
///   most of its units (`g_src`) to the GPU `g_dest != g_src` with the smallest mean SD of
///   the jobs on it (0 for an empty GPU), with `E = SD_i / DR_i[g_src]` and
///   `r = round(((max SD - min SD) / 2) / E)` clamped to `1..=DR_i[g_src]`.
///
/// GPU ties go to the lowest index.
#[derive(Clone, Debug, Default)]
pub struct ThesisPolicy {
    pub params: ThesisParams,
}

impl ThesisPolicy {
    pub fn new(params: ThesisParams) -> Self {
        ThesisPolicy { params }
    }

    /// Algorithm 1 for job `i`; `gpu_set[g]` says whether GPU `g` is still in `GPU_set`.
    fn dr_management(
        &self,
        i: usize,
        max_job: usize,
        inputs: &PeriodInputs,
        gpu_set: &mut [bool],
    ) -> Decision {
        let m = inputs.gpus();
        let util = inputs.util();
        let jobs = inputs.jobs();
        let job = &jobs[i];
        if jobs.len() < m {
            // gpu_set cannot be empty here: at most jobs.len() - 1 < m GPUs were taken.
            let g_min = argmin_by(0..m, |&g| gpu_set[g], |g| util[g]).unwrap_or(0);
            gpu_set[g_min] = false;
            let dr = DistributionRatio::exclusive(m, g_min).unwrap_or_else(|_| job.dr.clone());
            let action = if dr == job.dr {
                Action::Keep
            } else {
                Action::Exclusive { gpu: g_min }
            };
            return Decision { dr, action };
        }
        if i != max_job || job.sd < self.params.sd_threshold {
            return Decision::keep(&job.dr);
        }
        let Some(g_max) = argmax_by(job.dr.used_gpus(), |_| true, |g| util[g]) else {
            return Decision::keep(&job.dr);
        };
        let Some(g_min) = argmin_by(0..m, |&g| gpu_set[g], |g| util[g]) else {
            return Decision::keep(&job.dr);
        };
        if util[g_max] - util[g_min] > self.params.util_threshold {
            return dr_update_util(&job.dr, util, g_min);
        }
        let Some(g_src) = argmax_by(0..m, |_| true, |g| f64::from(job.dr.get(g))) else {
            return Decision::keep(&job.dr);
        };
        let mean_sd = mean_sd_per_gpu(inputs);
        let Some(g_dest) = argmin_by(0..m, |&g| g != g_src, |g| mean_sd[g]) else {
            return Decision::keep(&job.dr); // one GPU: nowhere to move
        };
        let sds = jobs.iter().map(|j| j.sd);
        let max_sd = sds.clone().fold(f64::NEG_INFINITY, f64::max);
        let min_sd = sds.fold(f64::INFINITY, f64::min);
        dr_update_sd(&job.dr, job.sd, max_sd, min_sd, g_src, g_dest)
    }
}

impl Policy for ThesisPolicy {
    fn name(&self) -> &'static str {
        "thesis"
    }

    fn admit(&mut self, gpus: usize, job: &Admission) -> Result<DistributionRatio> {
        initial_or_even(gpus, job)
    }

    fn evaluate(&mut self, inputs: &PeriodInputs) -> Result<Vec<Decision>> {
        let jobs = inputs.jobs();
        // The one job allowed to move when jobs >= GPUs: largest SD, lowest index on ties.
        let max_job = argmax_by(0..jobs.len(), |_| true, |i| jobs[i].sd).unwrap_or(0);
        let mut gpu_set = vec![true; inputs.gpus()];
        Ok((0..jobs.len())
            .map(|i| self.dr_management(i, max_job, inputs, &mut gpu_set))
            .collect())
    }
}

/// Mean SD of the jobs using each GPU (`DR[g] > 0`); 0 for a GPU no job uses.
pub fn mean_sd_per_gpu(inputs: &PeriodInputs) -> Vec<f64> {
    let m = inputs.gpus();
    let mut sum = vec![0.0; m];
    let mut count = vec![0u32; m];
    for job in inputs.jobs() {
        for g in job.dr.used_gpus() {
            sum[g] += job.sd;
            count[g] += 1;
        }
    }
    sum.iter()
        .zip(&count)
        .map(|(s, &c)| if c == 0 { 0.0 } else { s / f64::from(c) })
        .collect()
}

/// Algorithm 2, `DR_Update_Util`: units over `GPU_used + {g_min}` in proportion to
/// `100 - Util`, rounded as in the thesis (`floor(x + 0.5)`), the sum repaired to 10 by the
/// largest remainder method when the rounding misses it.
pub fn dr_update_util(dr: &DistributionRatio, util: &[f64], g_min: usize) -> Decision {
    let m = dr.gpus();
    let mut used: Vec<bool> = (0..m).map(|g| dr.uses(g)).collect();
    if g_min < m {
        used[g_min] = true;
    }
    let free: Vec<f64> = (0..m)
        .map(|g| {
            if used[g] {
                (100.0 - util.get(g).copied().unwrap_or(100.0)).clamp(0.0, 100.0)
            } else {
                0.0
            }
        })
        .collect();
    let remained: f64 = free.iter().sum();
    if remained <= 0.0 {
        return Decision::keep(dr);
    }
    let total = f64::from(DR_UNITS);
    let quotas: Vec<f64> = free.iter().map(|f| f / remained * total).collect();
    let rounded: Vec<u64> = quotas.iter().map(|q| (q + 0.5).floor() as u64).collect();
    let parts = if rounded.iter().sum::<u64>() == u64::from(DR_UNITS) {
        rounded
    } else {
        largest_remainder(&quotas, u64::from(DR_UNITS))
    };
    let units: Vec<u8> = parts.iter().map(|&p| p as u8).collect();
    match DistributionRatio::new(units) {
        Ok(new) if new == *dr => Decision::keep(dr),
        Ok(new) => Decision {
            dr: new,
            action: Action::UtilRebalance { added_gpu: g_min },
        },
        // Unreachable: the repair always sums to 10 and each part is at most 10.
        Err(_) => Decision::keep(dr),
    }
}

/// Algorithm 2, `DR_Update_SD`: move `r` units from `g_src` to `g_dest`, with
/// `E = SD_i / DR_i[g_src]`, `r = floor(((max_sd - min_sd) / 2) / E + 0.5)` clamped to
/// `1..=DR_i[g_src]`.
pub fn dr_update_sd(
    dr: &DistributionRatio,
    sd: f64,
    max_sd: f64,
    min_sd: f64,
    g_src: usize,
    g_dest: usize,
) -> Decision {
    let src_units = dr.get(g_src);
    if src_units == 0 || g_src == g_dest || g_dest >= dr.gpus() {
        return Decision::keep(dr);
    }
    let e = sd / f64::from(src_units);
    let raw = if e > 0.0 && e.is_finite() {
        (((max_sd - min_sd) / 2.0) / e + 0.5).floor()
    } else {
        1.0
    };
    let r = if raw.is_finite() {
        raw.clamp(1.0, f64::from(src_units)) as u8
    } else {
        src_units
    };
    match dr.moved(g_src, g_dest, r) {
        Ok(new) => Decision {
            dr: new,
            action: Action::SdShift {
                from: g_src,
                to: g_dest,
                units: r,
            },
        },
        Err(_) => Decision::keep(dr),
    }
}

/// The first index of `items` passing `keep` with the largest `key` (NaN never wins).
fn argmax_by<I, F, K>(items: I, keep: F, key: K) -> Option<usize>
where
    I: IntoIterator<Item = usize>,
    F: Fn(&usize) -> bool,
    K: Fn(usize) -> f64,
{
    let mut best: Option<(usize, f64)> = None;
    for i in items.into_iter().filter(|i| keep(i)) {
        let k = key(i);
        if k.is_nan() {
            continue;
        }
        // Strictly greater: on ties the earlier (lower) index stays.
        if best.is_none_or(|(_, bk)| k > bk) {
            best = Some((i, k));
        }
    }
    best.map(|(i, _)| i)
}

/// The first index of `items` passing `keep` with the smallest `key` (NaN never wins).
fn argmin_by<I, F, K>(items: I, keep: F, key: K) -> Option<usize>
where
    I: IntoIterator<Item = usize>,
    F: Fn(&usize) -> bool,
    K: Fn(usize) -> f64,
{
    argmax_by(items, keep, |i| -key(i))
}

/// The policies by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    Static,
    Even,
    Packed,
    Thesis,
    #[serde(rename = "thesis-stable")]
    ThesisStable,
    Minmax,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 6] = [
        PolicyKind::Static,
        PolicyKind::Even,
        PolicyKind::Packed,
        PolicyKind::Thesis,
        PolicyKind::ThesisStable,
        PolicyKind::Minmax,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Static => "static",
            PolicyKind::Even => "even",
            PolicyKind::Packed => "packed",
            PolicyKind::Thesis => "thesis",
            PolicyKind::ThesisStable => "thesis-stable",
            PolicyKind::Minmax => "minmax",
        }
    }

    /// A fresh policy of this kind; `params` is used by `thesis` and `thesis-stable` only.
    pub fn build(self, params: ThesisParams) -> Box<dyn Policy + Send> {
        match self {
            PolicyKind::Static => Box::new(StaticPolicy),
            PolicyKind::Even => Box::new(EvenPolicy),
            PolicyKind::Packed => Box::new(PackedPolicy),
            PolicyKind::Thesis => Box::new(ThesisPolicy::new(params)),
            PolicyKind::ThesisStable => Box::new(ThesisStablePolicy::new(params)),
            PolicyKind::Minmax => Box::new(MinmaxPolicy::default()),
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        PolicyKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = PolicyKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown policy '{s}', expected one of {}", names.join(", "))
            })
    }
}

/// The manager: a policy plus the checks around it. The simulator and the real trainer both
/// drive scheduling through [`admit`](Self::admit) and [`round`](Self::round).
pub struct Manager {
    gpus: usize,
    policy: Box<dyn Policy + Send>,
    /// The decision log, when recording ([`Manager::recording`]).
    log: Option<DecisionLog>,
    /// The caller's clock, stamped on log entries.
    now_s: f64,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("gpus", &self.gpus)
            .field("policy", &self.policy.name())
            .finish()
    }
}

impl Manager {
    pub fn new(gpus: usize, policy: Box<dyn Policy + Send>) -> Result<Self> {
        if gpus == 0 {
            return Err(Error::invalid(
                "manager",
                "a machine needs at least one GPU",
            ));
        }
        Ok(Manager {
            gpus,
            policy,
            log: None,
            now_s: 0.0,
        })
    }

    /// A manager running policy `kind` that logs every admission and round with the inputs
    /// it saw (see [`super::decisions`]).
    pub fn recording(gpus: usize, kind: PolicyKind, params: ThesisParams) -> Result<Self> {
        let mut m = Manager::new(gpus, kind.build(params))?;
        m.log = Some(DecisionLog {
            policy: kind,
            params,
            gpus,
            entries: Vec::new(),
        });
        Ok(m)
    }

    /// Sets the time stamped on the next log entries (seconds on the caller's clock).
    pub fn set_time(&mut self, now_s: f64) {
        self.now_s = now_s;
    }

    /// The decision log so far (`None` unless [`recording`](Self::recording)).
    pub fn log(&self) -> Option<&DecisionLog> {
        self.log.as_ref()
    }

    pub fn gpus(&self) -> usize {
        self.gpus
    }

    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// Whether the policy needs the round's cost model ([`PeriodInputs::with_model`]).
    pub fn uses_model(&self) -> bool {
        self.policy.uses_model()
    }

    /// The DR a newly arrived job starts with.
    pub fn admit(&mut self, job: &Admission) -> Result<DistributionRatio> {
        let dr = self.policy.admit(self.gpus, job)?;
        if dr.gpus() != self.gpus {
            return Err(Error::invalid(
                format!("policy {}", self.policy.name()),
                format!(
                    "admitted a DR over {} GPUs on a {}-GPU machine",
                    dr.gpus(),
                    self.gpus
                ),
            ));
        }
        if let Some(log) = &mut self.log {
            log.entries.push(Entry::Admit {
                time_s: self.now_s,
                job: job.job_index,
                initial_dr: job.initial_dr.clone(),
                dr: dr.clone(),
            });
        }
        Ok(dr)
    }

    /// One evaluation round: the policy's decisions, one per job of `inputs`, in order.
    /// The log (when recording) names the jobs by their position in `inputs`.
    pub fn evaluate(&mut self, inputs: &PeriodInputs) -> Result<Vec<Decision>> {
        let positions: Vec<usize> = (0..inputs.jobs().len()).collect();
        self.evaluate_jobs(&positions, inputs)
    }

    /// [`evaluate`](Self::evaluate) with the job-file index of each job of `inputs`, for the
    /// log.
    pub fn evaluate_jobs(
        &mut self,
        jobs: &[usize],
        inputs: &PeriodInputs,
    ) -> Result<Vec<Decision>> {
        if jobs.len() != inputs.jobs().len() {
            return Err(Error::invalid(
                "manager inputs",
                format!(
                    "{} job indices for {} jobs",
                    jobs.len(),
                    inputs.jobs().len()
                ),
            ));
        }
        if inputs.gpus() != self.gpus {
            return Err(Error::invalid(
                "manager inputs",
                format!(
                    "{} GPU utilisations for a {}-GPU machine",
                    inputs.gpus(),
                    self.gpus
                ),
            ));
        }
        let decisions = self.policy.evaluate(inputs)?;
        if decisions.len() != inputs.jobs().len()
            || decisions.iter().any(|d| d.dr.gpus() != self.gpus)
        {
            return Err(Error::invalid(
                format!("policy {}", self.policy.name()),
                format!(
                    "returned {} decisions for {} jobs, or a DR of the wrong length",
                    decisions.len(),
                    inputs.jobs().len()
                ),
            ));
        }
        if let Some(log) = &mut self.log {
            log.entries.push(Entry::Round {
                time_s: self.now_s,
                model: inputs.model().filter(|_| self.policy.uses_model()).cloned(),
                util: inputs.util().to_vec(),
                jobs: inputs
                    .jobs()
                    .iter()
                    .zip(&decisions)
                    .zip(jobs)
                    .map(|((o, d), &job)| RoundJob {
                        job,
                        sd: o.sd,
                        dr: o.dr.clone(),
                        decided: d.dr.clone(),
                    })
                    .collect(),
            });
        }
        Ok(decisions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dr(u: &[u8]) -> DistributionRatio {
        DistributionRatio::new(u.to_vec()).unwrap()
    }

    fn obs(sd: f64, u: &[u8]) -> JobObservation {
        JobObservation { sd, dr: dr(u) }
    }

    /// A period of GPU utilisation `util` and jobs `(sd, dr units)`.
    fn inputs(util: &[f64], jobs: &[(f64, &[u8])]) -> PeriodInputs {
        let jobs = jobs.iter().map(|&(sd, u)| obs(sd, u)).collect();
        PeriodInputs::new(util.to_vec(), jobs).unwrap()
    }

    #[test]
    fn thesis_worked_example() {
        // Utilisation 90/80/20/50, the job on [5,5,0,0] is the most slowed down, 90-20 > 20.
        let inputs = inputs(
            &[90.0, 80.0, 20.0, 50.0],
            &[
                (2.0, &[5, 5, 0, 0]),
                (1.2, &[5, 5, 0, 0]),
                (1.5, &[0, 0, 5, 5]),
                (1.0, &[0, 0, 0, 10]),
            ],
        );
        let mut p = ThesisPolicy::default();
        let d = p.evaluate(&inputs).unwrap();
        assert_eq!(d[0].dr.units(), &[1, 2, 7, 0]);
        assert_eq!(d[0].action, Action::UtilRebalance { added_gpu: 2 });
        for (k, job) in d.iter().enumerate().skip(1) {
            assert_eq!(job.dr, inputs.jobs()[k].dr);
            assert_eq!(job.action, Action::Keep);
        }
        // The function alone, as in the thesis' text.
        let direct = dr_update_util(&dr(&[5, 5, 0, 0]), &[90.0, 80.0, 20.0, 50.0], 2);
        assert_eq!(direct.dr.units(), &[1, 2, 7, 0]);
    }

    #[test]
    fn util_update_sum_repair() {
        // Three GPUs with equal free capacity: the thesis rounding gives 3+3+3 = 9; the
        // largest-remainder repair adds the missing unit to the lowest GPU.
        let d = dr_update_util(&dr(&[5, 5, 0]), &[40.0, 40.0, 40.0], 2);
        assert_eq!(d.dr.units(), &[4, 3, 3]);
        // 35/35/30 of 100 free: rounding half up gives 4+4+3 = 11, repaired to 4+3+3.
        let d = dr_update_util(&dr(&[5, 5, 0]), &[65.0, 65.0, 70.0], 2);
        assert_eq!(d.dr.units().iter().map(|&u| u32::from(u)).sum::<u32>(), 10);
        assert_eq!(d.dr.units(), &[4, 3, 3]);
        // A saturated GPU loses all its units.
        let d = dr_update_util(&dr(&[5, 5, 0, 0]), &[100.0, 50.0, 0.0, 0.0], 2);
        assert_eq!(d.dr.units(), &[0, 3, 7, 0]);
    }

    #[test]
    fn sd_update_moves_half_the_range() {
        // Gap in utilisation small: SD rule. max 2.0, min 0.8: bring the job to 1.4.
        // E = 2.0 / 6 = 1/3; r = round(0.6 / (1/3)) = round(1.8) = 2.
        let inputs = inputs(
            &[80.0, 75.0, 70.0, 70.0],
            &[
                (2.0, &[6, 4, 0, 0]),
                (0.8, &[0, 0, 10, 0]),
                (1.2, &[0, 5, 0, 5]),
                (1.1, &[5, 0, 0, 5]),
            ],
        );
        let d = ThesisPolicy::default().evaluate(&inputs).unwrap();
        // Mean SD per GPU: 0: (2.0+1.1)/2, 1: (2.0+1.2)/2, 2: 0.8, 3: (1.2+1.1)/2 -> GPU 2.
        assert_eq!(d[0].dr.units(), &[4, 4, 2, 0]);
        assert_eq!(
            d[0].action,
            Action::SdShift {
                from: 0,
                to: 2,
                units: 2
            }
        );
        // r is at least 1 even when all SDs are equal, and at most DR[g_src].
        assert_eq!(
            dr_update_sd(&dr(&[5, 5]), 1.5, 1.5, 1.5, 0, 1).dr.units(),
            &[4, 6]
        );
        assert_eq!(
            dr_update_sd(&dr(&[3, 7]), 1.0, 100.0, 0.0, 0, 1).dr.units(),
            &[0, 10]
        );
    }

    #[test]
    fn thesis_thresholds() {
        let inputs = inputs(
            &[90.0, 80.0, 20.0, 50.0],
            &[
                (1.05, &[5, 5, 0, 0]),
                (1.0, &[5, 5, 0, 0]),
                (1.0, &[0, 0, 5, 5]),
                (1.0, &[0, 0, 0, 10]),
            ],
        );
        // Below sd_threshold: nobody moves.
        let d = ThesisPolicy::default().evaluate(&inputs).unwrap();
        assert!(d.iter().all(|d| d.action == Action::Keep));
        // Threshold 1.0 and util gap not above 80: SD rule.
        let mut p = ThesisPolicy::new(ThesisParams::new(1.0, 80.0).unwrap());
        let d = p.evaluate(&inputs).unwrap();
        assert!(matches!(d[0].action, Action::SdShift { .. }));
        assert!(ThesisParams::new(-1.0, 20.0).is_err());
        assert!(ThesisParams::new(1.1, 101.0).is_err());
    }

    #[test]
    fn fewer_jobs_than_gpus_get_one_gpu_each() {
        let inputs = inputs(
            &[100.0, 0.0, 30.0, 0.0],
            &[(3.0, &[5, 5, 0, 0]), (1.0, &[5, 5, 0, 0])],
        );
        let d = ThesisPolicy::default().evaluate(&inputs).unwrap();
        assert_eq!(d[0].dr.units(), &[0, 10, 0, 0]);
        assert_eq!(d[1].dr.units(), &[0, 0, 0, 10]);
    }

    #[test]
    fn ties_break_to_lowest_index() {
        // Two jobs tie for the largest SD: only job 0 moves.
        let inputs = inputs(
            &[90.0, 90.0, 10.0],
            &[(2.0, &[5, 5, 0]), (2.0, &[5, 5, 0]), (1.0, &[0, 0, 10])],
        );
        let d = ThesisPolicy::default().evaluate(&inputs).unwrap();
        assert_ne!(d[0].action, Action::Keep);
        assert_eq!(d[1].action, Action::Keep);
        assert_eq!(d[2].action, Action::Keep);
    }

    #[test]
    fn fixed_policies() {
        let inputs = inputs(&[50.0; 4], &[(5.0, &[5, 5, 0, 0])]);
        let adm = Admission {
            job_index: 5,
            initial_dr: Some(dr(&[5, 5, 0, 0])),
        };
        let none = Admission {
            job_index: 5,
            initial_dr: None,
        };
        assert_eq!(StaticPolicy.admit(4, &adm).unwrap().units(), &[5, 5, 0, 0]);
        assert_eq!(StaticPolicy.admit(4, &none).unwrap().units(), &[3, 3, 2, 2]);
        assert!(StaticPolicy.admit(3, &adm).is_err());
        assert_eq!(EvenPolicy.admit(4, &adm).unwrap().units(), &[3, 3, 2, 2]);
        assert_eq!(PackedPolicy.admit(4, &adm).unwrap().units(), &[0, 10, 0, 0]);
        assert_eq!(
            StaticPolicy.evaluate(&inputs).unwrap()[0].action,
            Action::Keep
        );
        assert_eq!(
            PackedPolicy.evaluate(&inputs).unwrap()[0].action,
            Action::Keep
        );
        let e = EvenPolicy.evaluate(&inputs).unwrap();
        assert_eq!(e[0].dr.units(), &[3, 3, 2, 2]);
        assert_eq!(e[0].action, Action::Set);
    }

    #[test]
    fn inputs_are_checked() {
        assert!(PeriodInputs::new(vec![], vec![]).is_err());
        assert!(PeriodInputs::new(vec![101.0], vec![]).is_err());
        assert!(PeriodInputs::new(vec![f64::NAN], vec![]).is_err());
        assert!(PeriodInputs::new(vec![1.0, 2.0], vec![obs(1.0, &[10])]).is_err());
        assert!(PeriodInputs::new(vec![1.0], vec![obs(-1.0, &[10])]).is_err());
        let mut mgr = Manager::new(2, PolicyKind::Thesis.build(ThesisParams::default())).unwrap();
        let three = inputs(&[0.0; 3], &[]);
        assert!(mgr.evaluate(&three).is_err());
        assert!(Manager::new(0, Box::new(StaticPolicy)).is_err());
        assert_eq!("thesis".parse::<PolicyKind>().unwrap(), PolicyKind::Thesis);
        assert!("fair".parse::<PolicyKind>().is_err());
    }

    #[test]
    fn one_gpu_machine_never_moves() {
        let inputs = inputs(&[100.0], &[(3.0, &[10]), (1.0, &[10])]);
        let d = ThesisPolicy::default().evaluate(&inputs).unwrap();
        assert!(d.iter().all(|d| d.action == Action::Keep));
    }
}
