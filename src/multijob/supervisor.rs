//! The multi-job manager of a real run: one job process per job, a calibration of each job
//! alone, then the policy's rounds every period (and at every arrival, finish and failure)
//! through [`Manager::round`], the round the simulator runs, with measured inputs:
//! utilisation from [`Monitor`], Slow-Down from each job's step reports ([`JobProgress`]).
//!
//! A job's new DR is sent to its process at once and applies from its next iteration. A job
//! that fails (its process reports an error, exits or is killed) is reported and dropped; the
//! next round rebalances the others. A running job that reports no step for
//! [`RunConfig::hang_periods`] periods is hung: its process is killed and it fails the same
//! way. A stop request (`stop`, set by SIGINT/SIGTERM) makes every job process checkpoint and
//! exit. The manager saves its own state ([`SavedRun`]) for `--resume` after every round and at
//! the end, so that even a manager killed outright can be resumed (its job processes see their
//! input close, checkpoint and exit). What happens is reported as [`RunEvent`]s; nothing is
//! printed here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::jobfile::JobFile;
use super::monitor::Monitor;
use super::process::{JobProcess, Message};
use super::protocol::{Command, Event};
use super::saved::{SavedJob, SavedRun};
use super::simfile::calibrated_file;
use super::status::{JobRow, RunEvent, Snapshot};
use crate::base::{Devices, DistributionRatio};
use crate::sched::bound::file_bound;
use crate::sched::cost::{JobModel, RoundModel};
use crate::sched::decisions::DecisionLog;
use crate::sched::jobs::JobSpec;
use crate::sched::policy::{Admission, JobObservation};
use crate::sched::report::{FailedJob, JobReport, Report};
use crate::sched::slowdown::JobProgress;
use crate::sched::{Manager, PolicyKind, ThesisParams, Trace};
use crate::train::RunSettings;
use crate::train::run::calibrate::Calibration;
use crate::{Error, Result};

/// How often the manager wakes up to poll utilisation and redraw.
const TICK: Duration = Duration::from_millis(100);
/// How often a [`RunEvent::Status`] is sent.
const REDRAW_S: f64 = 0.25;
/// A job is hung only after this many times its longest step without one, whatever the
/// period: a slow job is not a hung one.
pub const HANG_STEPS: f64 = 10.0;

/// A multi-job run, resolved from the job file and the flags.
pub struct RunConfig {
    /// The file as loaded, and its path for messages.
    pub file: JobFile,
    pub origin: String,
    /// This program, which each job process runs (`--job-process=NAME`).
    pub exe: PathBuf,
    pub devices: Devices,
    /// The command line's training settings. Its `checkpoint_dir` holds one subdirectory per
    /// job ([`job_checkpoint_dir`]) plus the manager's `manager.json`.
    pub settings: RunSettings,
    pub policy: PolicyKind,
    pub params: ThesisParams,
    pub period_s: f64,
    /// A running job with no step for this many periods (and for at least
    /// [`HANG_STEPS`] times its longest step so far) is hung.
    pub hang_periods: u32,
    /// Measure each job alone before the run (else `[job.sim]` gives the exclusive time).
    pub calibrate: bool,
    pub stop: Arc<AtomicBool>,
}

/// How a run ended.
pub struct RunOutcome {
    pub report: Report,
    pub trace: Trace,
    pub decisions: Option<DecisionLog>,
    /// By job index (`None`: not calibrated, e.g. failed first).
    pub calibrations: Vec<Option<Calibration>>,
    /// Stopped by a signal (the state is saved for `--resume`).
    pub stopped: bool,
    /// Where utilisation came from: `nvml` or `steps`.
    pub util_source: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    Calibrating,
    /// Calibrated (or given its exclusive time), waiting for its arrival time.
    Waiting,
    Running,
    Finished,
    Failed,
    Stopped,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Calibrating => "calibrating",
            Phase::Waiting => "waiting",
            Phase::Running => "running",
            Phase::Finished => "finished",
            Phase::Failed => "failed",
            Phase::Stopped => "stopped",
        }
    }

    fn is_over(self) -> bool {
        matches!(self, Phase::Finished | Phase::Failed | Phase::Stopped)
    }
}

/// One job as the manager tracks it.
struct LiveJob {
    spec: JobSpec,
    process: Option<JobProcess>,
    phase: Phase,
    step: u64,
    calibration: Option<Calibration>,
    progress: Option<JobProgress>,
    /// The DR the manager chose last.
    dr: Option<DistributionRatio>,
    /// The DR of the job's current iteration, and a newer one sent at a time.
    running_dr: Option<DistributionRatio>,
    pending_dr: Option<(f64, DistributionRatio)>,
    samples_per_s: f64,
    last_sd: Option<f64>,
    /// When it last reported a step (or was started), run clock seconds.
    last_step_at_s: f64,
    longest_step_s: f64,
    report: Option<JobReport>,
    failure: Option<FailedJob>,
    end_s: Option<f64>,
}

impl LiveJob {
    fn new(spec: JobSpec) -> Self {
        LiveJob {
            spec,
            process: None,
            phase: Phase::Starting,
            step: 0,
            calibration: None,
            progress: None,
            dr: None,
            running_dr: None,
            pending_dr: None,
            samples_per_s: 0.0,
            last_sd: None,
            last_step_at_s: 0.0,
            longest_step_s: 0.0,
            report: None,
            failure: None,
            end_s: None,
        }
    }

    fn fail(&mut self, now_s: f64, error: String) {
        if self.phase.is_over() {
            return;
        }
        self.phase = Phase::Failed;
        self.end_s = Some(now_s);
        self.failure = Some(FailedJob {
            name: self.spec.name.clone(),
            step: self.step,
            error,
        });
    }

    fn exclusive_iter_s(&self) -> Option<f64> {
        self.calibration
            .as_ref()
            .map(|c| c.full_s)
            .or_else(|| self.spec.exclusive_iter_s())
    }
}

/// The directory of job `name`'s checkpoints under `dir`, named by
/// [`file_name_of`](crate::sched::jobs::file_name_of) so a job name cannot leave `dir`.
pub fn job_checkpoint_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("job-{}", crate::sched::jobs::file_name_of(name)))
}

struct Supervisor<'a> {
    cfg: &'a RunConfig,
    jobs: Vec<LiveJob>,
    manager: Manager,
    monitor: Monitor,
    report: &'a mut dyn FnMut(&RunEvent),
    trace: Trace,
    events: Receiver<Message>,
    /// The run clock: `offset_s` (time already run before a resume) plus time since `t0`.
    offset_s: f64,
    t0: Option<Instant>,
    busy_offset_s: Vec<f64>,
    next_round_s: f64,
    need_round: bool,
    stopping: bool,
    /// The manager's state file could not be written (said once, not every round).
    state_unsaved: bool,
}

/// Runs every job of `cfg.file` to the end (or until `cfg.stop`), telling `report` what
/// happens.
pub fn run(cfg: &RunConfig, report: &mut dyn FnMut(&RunEvent)) -> Result<RunOutcome> {
    let jobs = &cfg.file.sched.jobs;
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    let m = cfg.devices.count();
    cfg.file.sched.check_gpus(m, &cfg.origin)?;
    if !cfg.calibrate
        && let Some(job) = jobs.iter().find(|j| j.sim.is_none())
    {
        return Err(Error::invalid(
            format!("{}: job '{}': sim", cfg.origin, job.name),
            "missing; without calibration the exclusive iteration time comes from [job.sim]",
        ));
    }
    let saved = match (&cfg.settings.checkpoint_dir, cfg.settings.resume) {
        (Some(dir), true) => SavedRun::load(dir, &names, m)?,
        _ => None,
    };
    let (monitor, notice) = Monitor::new(&cfg.devices);
    let (tx, events) = mpsc::channel();
    let mut sup = Supervisor {
        cfg,
        jobs: jobs.iter().cloned().map(LiveJob::new).collect(),
        manager: Manager::recording(m, cfg.policy, cfg.params)?,
        monitor,
        report,
        trace: Trace::new(
            names.iter().map(|n| n.to_string()).collect(),
            m,
            cfg.devices.unit(),
        ),
        events,
        offset_s: saved.as_ref().map_or(0.0, |s| s.clock_s),
        t0: None,
        busy_offset_s: saved.as_ref().map_or(vec![0.0; m], |s| s.busy_s.clone()),
        next_round_s: 0.0,
        need_round: false,
        stopping: false,
        state_unsaved: false,
    };
    if let Some(n) = notice {
        (sup.report)(&RunEvent::Notice(n));
    }
    if let Some(saved) = saved {
        sup.restore(saved);
    }
    for k in 0..sup.jobs.len() {
        if sup.jobs[k].phase.is_over() {
            continue;
        }
        let mut config = cfg
            .file
            .session_config(k, &cfg.origin, &cfg.devices, &cfg.settings);
        config.settings.checkpoint_dir = cfg
            .settings
            .checkpoint_dir
            .as_ref()
            .map(|d| job_checkpoint_dir(d, &config.name));
        match JobProcess::spawn(&cfg.exe, k, config, tx.clone()) {
            Ok(p) => sup.jobs[k].process = Some(p),
            Err(e) => sup.jobs[k].fail(0.0, e.to_string()),
        }
    }
    drop(tx);
    sup.run_loop()?;
    Ok(sup.finish())
}

impl Supervisor<'_> {
    fn now_s(&self) -> f64 {
        self.offset_s + self.t0.map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    fn restore(&mut self, saved: SavedRun) {
        for (job, s) in self.jobs.iter_mut().zip(saved.jobs) {
            match s {
                SavedJob::Unfinished {
                    calibration, dr, ..
                } => {
                    job.calibration = calibration;
                    job.dr = dr;
                }
                SavedJob::Finished { report } => {
                    job.phase = Phase::Finished;
                    job.step = job.spec.iterations;
                    job.end_s = Some(job.spec.arrival_s + report.completion_s);
                    job.report = Some(report);
                }
                SavedJob::Failed { failure } => {
                    job.phase = Phase::Failed;
                    job.step = failure.step;
                    job.failure = Some(failure);
                }
            }
        }
    }

    fn run_loop(&mut self) -> Result<()> {
        let mut last_redraw = f64::NEG_INFINITY;
        loop {
            if self.cfg.stop.load(Ordering::SeqCst) && !self.stopping {
                self.stopping = true;
                (self.report)(&RunEvent::Notice(
                    "stopping; every job checkpoints first".into(),
                ));
                for job in &mut self.jobs {
                    if let Some(p) = &mut job.process {
                        p.send(&Command::Stop);
                    }
                }
            }
            match self.events.recv_timeout(TICK) {
                Ok(msg) => {
                    self.handle(msg);
                    while let Ok(msg) = self.events.try_recv() {
                        self.handle(msg);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {}
            }
            if !self.stopping {
                if self.t0.is_none() {
                    self.prepare();
                } else {
                    self.schedule()?;
                }
            } else {
                // A hung job would never answer the stop: the run must still end.
                self.stop_hung_jobs(self.now_s());
            }
            let now = self.now_s();
            if now - last_redraw >= REDRAW_S {
                last_redraw = now;
                let status = RunEvent::Status(self.snapshot());
                (self.report)(&status);
            }
            if self
                .jobs
                .iter()
                .all(|j| j.phase.is_over() && j.process.is_none())
            {
                return Ok(());
            }
        }
    }

    /// Before the clock starts: calibrate the ready jobs one at a time (each alone on the
    /// machine), then start the clock.
    fn prepare(&mut self) {
        let live = |j: &&mut LiveJob| !j.phase.is_over();
        if self
            .jobs
            .iter_mut()
            .filter(live)
            .any(|j| matches!(j.phase, Phase::Starting | Phase::Calibrating))
        {
            return;
        }
        if self.cfg.calibrate
            && let Some(job) = self
                .jobs
                .iter_mut()
                .find(|j| j.phase == Phase::Ready && j.calibration.is_none())
        {
            job.phase = Phase::Calibrating;
            if let Some(p) = &mut job.process {
                p.send(&Command::Calibrate { gpu: 0 });
            }
            return;
        }
        for job in self.jobs.iter_mut().filter(|j| j.phase == Phase::Ready) {
            job.phase = Phase::Waiting;
        }
        self.t0 = Some(Instant::now());
        self.next_round_s = self.offset_s + self.cfg.period_s;
    }

    /// With the clock running: arrivals, utilisation samples and rounds.
    fn schedule(&mut self) -> Result<()> {
        let now = self.now_s();
        for k in 0..self.jobs.len() {
            if self.jobs[k].phase == Phase::Waiting && self.jobs[k].spec.arrival_s <= now {
                self.start_job(k, now)?;
            }
        }
        self.monitor.poll(now, self.cfg.period_s);
        self.stop_hung_jobs(now);
        if now >= self.next_round_s {
            while self.next_round_s <= now {
                self.next_round_s += self.cfg.period_s;
            }
            self.need_round = true;
        }
        if self.need_round {
            self.need_round = false;
            self.round(now)?;
        }
        Ok(())
    }

    fn start_job(&mut self, k: usize, now: f64) -> Result<()> {
        let m = self.cfg.devices.count();
        let job = &mut self.jobs[k];
        let Some(exclusive) = job.exclusive_iter_s() else {
            job.fail(now, "no exclusive iteration time (not calibrated)".into());
            return Ok(());
        };
        let initial_dr = match &job.dr {
            Some(dr) => Some(dr.clone()),
            None => job.spec.initial_dr(m, &self.cfg.origin)?,
        };
        self.manager.set_time(now);
        let dr = self.manager.admit(&Admission {
            job_index: k,
            initial_dr,
        })?;
        let progress = JobProgress::new(
            job.spec.arrival_s,
            job.spec.iterations,
            exclusive,
            self.cfg.period_s,
        );
        let mut progress = match progress {
            Ok(p) => p.with_done_iters(job.step),
            Err(e) => {
                job.fail(now, e.to_string());
                return Ok(());
            }
        };
        progress.iteration_started(now);
        job.progress = Some(progress);
        if let Some(p) = &mut job.process {
            p.send(&Command::Start { dr: dr.clone() });
        }
        job.running_dr = Some(dr.clone());
        job.dr = Some(dr);
        job.phase = Phase::Running;
        job.last_step_at_s = now;
        self.need_round = true;
        Ok(())
    }

    /// Kills and fails every running job that has been silent too long; the next round gives
    /// its devices to the others.
    fn stop_hung_jobs(&mut self, now: f64) {
        let periods = self.cfg.hang_periods;
        let period_s = self.cfg.period_s;
        for job in &mut self.jobs {
            let silent_s = now - job.last_step_at_s;
            let limit_s = (f64::from(periods) * period_s).max(HANG_STEPS * job.longest_step_s);
            if job.phase != Phase::Running || silent_s <= limit_s {
                continue;
            }
            let error = format!(
                "hung: no step for {silent_s:.1} s ({periods} manager periods of {period_s} s) \
                 after step {}; its process was killed",
                job.step
            );
            (self.report)(&RunEvent::JobFailed {
                job: job.spec.name.clone(),
                error: error.clone(),
            });
            job.fail(now, error);
            if let Some(p) = &mut job.process {
                p.kill();
            }
            self.need_round = true;
        }
    }

    /// One manager round at `now`: what the monitor and the step reports measured, then the
    /// manager's changes sent to the job processes.
    fn round(&mut self, now: f64) -> Result<()> {
        let from = (now - self.cfg.period_s).max(self.offset_s);
        let util = if now > from {
            self.monitor.util(from, now)
        } else {
            vec![0.0; self.cfg.devices.count()]
        };
        let mut running = Vec::new();
        for (k, job) in self.jobs.iter_mut().enumerate() {
            if job.phase != Phase::Running {
                continue;
            }
            let dr = job.dr.clone().ok_or_else(|| {
                Error::invalid(format!("job '{}'", job.spec.name), "running without a DR")
            })?;
            let sd = job.progress.as_mut().map_or(1.0, |p| p.slowdown(now));
            job.last_sd = Some(sd);
            running.push((k, JobObservation { sd, dr }));
        }
        let model = if self.manager.uses_model() {
            Some(self.round_model(&running, now)?)
        } else {
            None
        };
        let changes = self
            .manager
            .round(now, util, running, model, Some(&mut self.trace))?;
        self.save_state(now);
        for change in changes {
            let words = self.trace.describe(&change);
            (self.report)(&RunEvent::DrChanged { time_s: now, words });
            let job = &mut self.jobs[change.job];
            if let Some(p) = &mut job.process {
                p.send(&Command::SetDr {
                    dr: change.to.clone(),
                });
            }
            job.pending_dr = Some((now, change.to.clone()));
            job.dr = Some(change.to);
        }
        Ok(())
    }

    /// The scheduling part of the job file with every calibrated job's costs and the machine's
    /// all-reduce fitted to the measurements (`[job.sim]` for a job run without calibration).
    fn calibrated(&self) -> crate::sched::JobFile {
        let calibrations: Vec<Option<Calibration>> =
            self.jobs.iter().map(|j| j.calibration.clone()).collect();
        calibrated_file(&self.cfg.file, self.cfg.devices.count(), &calibrations).sched
    }

    /// The cost model of the running jobs `running` at `now`, for the policies that predict.
    fn round_model(&self, running: &[(usize, JobObservation)], now: f64) -> Result<RoundModel> {
        let file = self.calibrated();
        let jobs = running
            .iter()
            .map(|&(k, _)| {
                let (spec, job) = (&file.jobs[k], &self.jobs[k]);
                match (&spec.sim, &job.progress) {
                    (Some(costs), Some(progress)) => {
                        Ok(JobModel::new(spec.batch_size, costs, progress, now))
                    }
                    _ => Err(Error::invalid(
                        format!("{}: job '{}'", self.cfg.origin, spec.name),
                        "no cost model for the policy (not calibrated and no [job.sim])",
                    )),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let machine = file.simulation.ok_or_else(|| {
            Error::invalid(
                &self.cfg.origin,
                "no machine costs for the policy's cost model",
            )
        })?;
        Ok(RoundModel { machine, jobs })
    }

    /// The lower bound on the maximum Slow-Down of the finished jobs, from their calibrated
    /// costs; `None` when a job has no costs.
    fn bound(&self) -> Option<f64> {
        let mut file = self.calibrated();
        file.jobs = std::mem::take(&mut file.jobs)
            .into_iter()
            .zip(&self.jobs)
            .filter(|(_, j)| j.report.is_some())
            .map(|(spec, _)| spec)
            .collect();
        file_bound(&file, &self.cfg.origin).ok()
    }

    fn handle(&mut self, msg: Message) {
        let now = self.now_s();
        match msg {
            Message::Event(k, event) => self.on_event(k, event, now),
            Message::Closed(k) => {
                let job = &mut self.jobs[k];
                let how = job.process.take().and_then(JobProcess::wait);
                if !job.phase.is_over() {
                    let error = how
                        .unwrap_or_else(|| "the job process exited before finishing".to_string());
                    (self.report)(&RunEvent::JobFailed {
                        job: job.spec.name.clone(),
                        error: error.clone(),
                    });
                    job.fail(now, error);
                    self.need_round = true;
                }
            }
        }
    }

    fn on_event(&mut self, k: usize, event: Event, now: f64) {
        let job = &mut self.jobs[k];
        match event {
            Event::Ready {
                start_step,
                notice,
                damaged,
                ..
            } => {
                for notice in damaged {
                    (self.report)(&RunEvent::JobNotice {
                        job: job.spec.name.clone(),
                        notice: format!("{notice}; set aside as *.damaged"),
                    });
                }
                job.step = start_step;
                if job.phase == Phase::Starting {
                    job.phase = Phase::Ready;
                }
                if let Some(notice) = notice {
                    (self.report)(&RunEvent::JobNotice {
                        job: job.spec.name.clone(),
                        notice,
                    });
                }
                if start_step > 0 {
                    (self.report)(&RunEvent::Resumed {
                        job: job.spec.name.clone(),
                        step: start_step,
                    });
                }
            }
            Event::Calibrated { calibration } => {
                (self.report)(&RunEvent::Calibrated {
                    job: job.spec.name.clone(),
                    full_s: calibration.full_s,
                });
                job.calibration = Some(calibration);
                job.phase = Phase::Ready;
            }
            Event::Step {
                step,
                step_s,
                samples_per_s,
                checkpoint_error,
                ..
            } => {
                if let Some(error) = checkpoint_error {
                    (self.report)(&RunEvent::JobNotice {
                        job: job.spec.name.clone(),
                        notice: format!("{error}; training goes on"),
                    });
                }
                job.step = step;
                job.samples_per_s = samples_per_s;
                job.last_step_at_s = now;
                job.longest_step_s = job.longest_step_s.max(step_s);
                if let Some(p) = &mut job.progress {
                    p.iteration_finished(now);
                    p.iteration_started(now);
                }
                let started = now - step_s;
                if let Some((sent, dr)) = job.pending_dr.take() {
                    if started >= sent {
                        job.running_dr = Some(dr);
                    } else {
                        job.pending_dr = Some((sent, dr));
                    }
                }
                if let Some(dr) = &job.running_dr {
                    self.monitor.step(dr, started, now);
                }
            }
            Event::Finished { step, .. } => {
                job.step = step;
                job.phase = Phase::Finished;
                job.end_s = Some(now);
                if let Some(exclusive) = job.exclusive_iter_s() {
                    let completion_s = now - job.spec.arrival_s;
                    let exclusive_s = job.spec.iterations as f64 * exclusive;
                    job.report = Some(JobReport {
                        name: job.spec.name.clone(),
                        completion_s,
                        exclusive_s,
                        slowdown: completion_s / exclusive_s,
                    });
                    self.trace.job_sd[k].push((now, completion_s / exclusive_s));
                }
                self.need_round = true;
            }
            Event::Stopped { step } => {
                job.step = step;
                job.phase = Phase::Stopped;
            }
            Event::Failed { message } => {
                (self.report)(&RunEvent::JobFailed {
                    job: job.spec.name.clone(),
                    error: message.clone(),
                });
                job.fail(now, message);
                self.need_round = true;
            }
        }
    }

    /// Writes the manager's state for `--resume` (with a checkpoint directory); a failure is
    /// reported, and the run goes on.
    fn save_state(&mut self, now: f64) {
        let Some(dir) = &self.cfg.settings.checkpoint_dir else {
            return;
        };
        let saved = SavedRun {
            clock_s: now,
            busy_s: self.busy_now(now),
            jobs: self
                .jobs
                .iter()
                .map(|j| match (&j.report, &j.failure) {
                    (Some(report), _) => SavedJob::Finished {
                        report: report.clone(),
                    },
                    (None, Some(failure)) => SavedJob::Failed {
                        failure: failure.clone(),
                    },
                    (None, None) => SavedJob::Unfinished {
                        name: j.spec.name.clone(),
                        calibration: j.calibration.clone(),
                        dr: j.dr.clone(),
                    },
                })
                .collect(),
        };
        match saved.save(dir) {
            Err(e) if !self.state_unsaved => {
                self.state_unsaved = true;
                (self.report)(&RunEvent::Notice(format!(
                    "{e}; the run goes on (--resume would use the last state saved)"
                )));
            }
            _ => {}
        }
    }

    /// Busy seconds per device since the run first started.
    fn busy_now(&self, now: f64) -> Vec<f64> {
        self.monitor
            .busy_s(now)
            .iter()
            .zip(&self.busy_offset_s)
            .map(|(a, b)| a + b)
            .collect()
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            time_s: self.now_s(),
            jobs: self
                .jobs
                .iter()
                .map(|j| JobRow {
                    name: j.spec.name.clone(),
                    state: j.phase.name(),
                    step: j.step,
                    iterations: j.spec.iterations,
                    sd: j.report.as_ref().map(|r| r.slowdown).or(j.last_sd),
                    dr: j.dr.clone().filter(|_| j.phase == Phase::Running),
                    samples_per_s: if j.phase == Phase::Running {
                        j.samples_per_s
                    } else {
                        0.0
                    },
                })
                .collect(),
            devices: self.monitor.status(),
            unit: self.cfg.devices.unit(),
        }
    }

    fn finish(mut self) -> RunOutcome {
        let now = self.now_s();
        let last = RunEvent::Finished(self.snapshot());
        (self.report)(&last);
        let stopped = self.stopping;
        let busy = self.busy_now(now);
        self.save_state(now);
        let first = self
            .jobs
            .iter()
            .map(|j| j.spec.arrival_s)
            .fold(f64::INFINITY, f64::min);
        let end = self
            .jobs
            .iter()
            .filter_map(|j| j.end_s)
            .fold(f64::NEG_INFINITY, f64::max);
        let makespan = if end > first { end - first } else { 0.0 };
        let reports: Vec<JobReport> = self.jobs.iter().filter_map(|j| j.report.clone()).collect();
        let failed: Vec<FailedJob> = self.jobs.iter().filter_map(|j| j.failure.clone()).collect();
        let report = Report::new(
            self.manager.policy_name(),
            self.cfg.devices.count(),
            reports,
            makespan,
            &busy,
        )
        .with_failed(failed);
        let report = match self.bound() {
            Some(bound) => report.with_bound(bound),
            None => report,
        };
        RunOutcome {
            report,
            decisions: self.manager.log().cloned(),
            trace: self.trace,
            calibrations: self.jobs.iter().map(|j| j.calibration.clone()).collect(),
            stopped,
            util_source: self.monitor.source(),
        }
    }
}
