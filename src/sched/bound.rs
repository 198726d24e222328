//! A lower bound on the maximum Slow-Down that any schedule of distribution ratios can reach
//! on a workload, under the simulator's cost model ([`super::cost`]).
//!
//! # The relaxation
//! Credit each iteration of job `i` with `x_i = B_i * sample_i + overhead_i` (its exclusive
//! iteration time, in seconds of GPU work), spread over the iteration's shards in proportion
//! to the work they do. In any simulated schedule:
//!
//! 1. **Capacity.** A GPU does at most `c = max(1, colocation_efficiency)` seconds of work per
//!    second, and an iteration on `k` GPUs does `B s + k o >= x_i` of work, so the credit
//!    given to all jobs in a time window of length `L` is at most `m c L`.
//! 2. **Per-job rate.** An iteration on `k <= K_i = min(m, 10, B_i)` GPUs runs at most `k`
//!    shards at once, each at speed `v = max(1, colocation_efficiency / 2)` at most, so its
//!    credit accrues at most at `rho_i = K_i v x_i / (B s + K_i o)` per second.
//! 3. **Iteration time.** Each iteration takes at least `tau_i`
//!    ([`cost::min_iteration_s`]: the best DR shape alone, with its all-reduce), and they run
//!    one after another, so a window of length `L` overlaps at most `L / tau_i + 2` of them
//!    (those inside, and one cut at each end): job `i` is credited at most
//!    `x_i (L / tau_i + 2)` in it, and it finishes no earlier than `a_i + N_i tau_i`.
//!
//! A schedule whose maximum Slow-Down is `S` finishes job `i` by `D_i = a_i + S N_i x_i`.
//! Cut time at every arrival and deadline; the credits of that schedule are then a feasible
//! flow in the network `source -> job i (N_i x_i) -> each cell of [a_i, D_i] (min(rho_i L,
//! x_i (L / tau_i + 2)) for a cell of length L) -> cell (m c L) -> sink` that carries all
//! `sum N_i x_i`, and `S >= tau_i / x_i` for every job.
//!
//! That flow charges the machine `x_i` per iteration, however many GPUs the iteration used.
//! A second network charges the work itself:
//!
//! 4. **Work.** An iteration of shape `p` (a DR shape, [`cost::iteration_shapes`]) takes at
//!    least `T_p` and does `w_p = B s + k_p o` of work. Finishing `N_i` iterations within
//!    `D_i - a_i` takes at least `W_i = min { sum_p q_p w_p : sum_p q_p = N_i,
//!    sum_p q_p T_p <= D_i - a_i, q >= 0 }` of work (read off the lower convex hull of the
//!    shapes' `(T_p, w_p)`). In a cell of length `L` the job does at most `K_i v L`, and at
//!    most `omega_i L + 2 max_p w_p` with `omega_i = max_p w_p / T_p` (the iterations inside,
//!    and one cut at each end). The same network with `W_i` as the demand and these caps
//!    must carry all the work.
//!
//! Both networks let a job wait while others run; processor sharing does not:
//!
//! 5. **No pausing.** From its arrival to its finish a job is always in an iteration: a stall
//!    (after a DR change), a shard phase during which at least one of its shards runs, and an
//!    all-reduce. The shard phase of an iteration on `k` shards lasts at least its largest
//!    shard over `v`, so over any span the job is without a running shard for at most a
//!    fraction `phi_i` of it (the largest `off_k / (on_k + off_k)`, `off_k` the stall and the
//!    all-reduce, `on_k = (B s / k + o) / v`) plus `off_K` (an iteration cut at the span's
//!    end). On a GPU running `u_g` shards of a set `U` of `u` jobs and `v_g >= 1` of other
//!    jobs, `U` gets at most `C u_g / (u_g + v_g) <= C u / (u + v_g)` (`C = max(1, c)`), and
//!    since `v / (u + v)` is concave and 0 at 0, all GPUs together give `U` at most
//!    `C (m - v / (u + v))` per second while `v` jobs outside `U` have a running shard.
//!    Take `n` jobs arriving together at `t0`, a time `T = t0 + L`, and `F` those finished by
//!    `T` (all whose deadline is `<= T`, and any others): the rest run throughout, so, with
//!    `u + v <= n`,
//!    `sum_F N_i x_i <= C m L - (C / n) sum_{j not in F} max(0, L (1 - phi_j) - off_K,j)`.
//!    A job due later is charged the cheaper of finishing (`N_j x_j`, if its caps
//!    (2), (3) allow it within `L`) and running (its share above). Checked at every deadline
//!    of every group of jobs sharing an arrival instant, and of the groups' deadline-order
//!    prefixes (leaving jobs out keeps the argument valid), it is a closed form. On one GPU it
//!    is what processor sharing does to the first job to finish (`n` times its exclusive
//!    time when all `n` arrive together); with `m >= 2` it costs the jobs due at most
//!    `v / (u + v)` of one GPU, since one job can hold GPUs of its own while the others crowd
//!    on one. (No valid cap applies to one job alone: it can hold `m - 1` GPUs whatever the
//!    others do.)
//!
//! The bound is the smallest `S` at which the groups pass (5) and both networks carry their
//! demand (each a necessary condition, monotone in `S`), found by bisection, each step two
//! maximum flows (Dinic); the lower end of the last bracket is returned, so it errs low. The
//! relaxations keep fractional DRs, free reconfiguration, perfect co-location, a machine
//! pooled into one, shards that need not wait for each other, and pausing of jobs that do
//! not arrive together. Large workloads coarsen the cells: a job's window is widened to cell
//! borders, which only adds room, so the result stays a lower bound.

use super::cost::{allreduce_s, iteration_shapes, max_gpu_speed, max_shard_speed};
use super::dr::DR_UNITS;
use super::jobs::{JobFile, JobSim, SimulationConfig};
use crate::{Error, Result};

/// One job of a workload, as the bound sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct BoundJob {
    pub arrival_s: f64,
    pub iterations: u64,
    pub batch_size: u64,
    pub costs: JobSim,
}

/// Time cells used by default; larger workloads are coarsened to this many.
pub const DEFAULT_MAX_CELLS: usize = 2048;
/// (5): the most jobs of one arrival group checked together, those with the earliest
/// deadlines (leaving jobs out only weakens the check).
const MAX_GROUP: usize = 256;
/// Relative width at which the bisection stops; the lower end is returned.
const TOLERANCE: f64 = 1e-3;

/// The bound for a job file's `[simulation]` machine and `[job.sim]` costs.
pub fn file_bound(file: &JobFile, origin: &str) -> Result<f64> {
    let machine = file.simulation.as_ref().ok_or_else(|| {
        Error::invalid(
            format!("{origin}: [simulation]"),
            "missing; the bound needs the machine's costs",
        )
    })?;
    let jobs = file
        .jobs
        .iter()
        .map(|spec| {
            let costs = spec.sim.clone().ok_or_else(|| {
                Error::invalid(
                    format!("{origin}: job '{}': sim", spec.name),
                    "missing; the bound needs the job's costs",
                )
            })?;
            Ok(BoundJob {
                arrival_s: spec.arrival_s,
                iterations: spec.iterations,
                batch_size: spec.batch_size,
                costs,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    max_slowdown_bound(machine, &jobs, DEFAULT_MAX_CELLS)
}

/// The bound (module docs) with at most `max_cells` time cells (at least 2). 0 for no jobs.
pub fn max_slowdown_bound(
    machine: &SimulationConfig,
    jobs: &[BoundJob],
    max_cells: usize,
) -> Result<f64> {
    let prepared = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| Prepared::new(i, j, machine))
        .collect::<Result<Vec<_>>>()?;
    if prepared.is_empty() {
        return Ok(0.0);
    }
    let problem = Problem {
        capacity: machine.gpus as f64 * max_gpu_speed(machine),
        gpu_speed: max_gpu_speed(machine),
        groups: arrival_groups(&prepared),
        jobs: prepared,
        max_cells: max_cells.max(2),
    };
    // (3): no schedule beats any job's own fastest run.
    let own = problem.jobs.iter().map(|j| j.tau / j.x).fold(0.0, f64::max);
    if problem.feasible(own) {
        return Ok(own);
    }
    let (mut lo, mut hi) = (own, own.max(1e-9) * 2.0);
    while !problem.feasible(hi) {
        lo = hi;
        hi *= 2.0;
        if !hi.is_finite() {
            return Ok(lo);
        }
    }
    while hi - lo > TOLERANCE * hi {
        let mid = 0.5 * (lo + hi);
        if problem.feasible(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(lo)
}

#[derive(Clone, Debug)]
struct Prepared {
    arrival: f64,
    iterations: f64,
    /// Exclusive iteration time and exclusive time, seconds.
    x: f64,
    exclusive: f64,
    /// (2), (3): the credit rate cap and the shortest iteration.
    rho: f64,
    tau: f64,
    /// (4): the lower convex hull of the shapes' `(time, work)`, time ascending (work
    /// descending); the job's work rate cap; `omega` and the largest work of an iteration.
    hull: Vec<(f64, f64)>,
    work_rate: f64,
    omega: f64,
    max_work: f64,
    /// (5): the largest fraction of an iteration the job can spend without a running shard
    /// (stall and all-reduce), and the most of that one iteration can hold.
    off_fraction: f64,
    off_max: f64,
}

impl Prepared {
    fn new(i: usize, job: &BoundJob, machine: &SimulationConfig) -> Result<Self> {
        let c = &job.costs;
        let x = (job.batch_size as f64 * c.sample_ms + c.iter_overhead_ms) / 1000.0;
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        let valid = x.is_finite()
            && x > 0.0
            && job.iterations > 0
            && [job.arrival_s, c.sample_ms, c.iter_overhead_ms, c.grad_mb]
                .into_iter()
                .all(ok);
        if !valid {
            return Err(Error::invalid(
                format!("bound: job {i}"),
                format!("needs iterations and an exclusive iteration time > 0: {job:?}"),
            ));
        }
        if machine.gpus == 0
            || !(machine.colocation_efficiency > 0.0 && machine.allreduce_gbps > 0.0)
        {
            return Err(Error::invalid(
                "bound: machine",
                format!("needs GPUs, speed and bandwidth > 0: {machine:?}"),
            ));
        }
        let v = max_shard_speed(machine);
        let k = machine
            .gpus
            .min(usize::from(DR_UNITS))
            .min(usize::try_from(job.batch_size).unwrap_or(usize::MAX)) as f64;
        let work_k = (job.batch_size as f64 * c.sample_ms + k * c.iter_overhead_ms) / 1000.0;
        let shapes = iteration_shapes(job.batch_size, c, machine);
        let stall = machine.reconfigure_ms / 1000.0;
        let off = |shards: f64| stall + allreduce_s(machine, shards as usize, c.grad_mb);
        let off_fraction = (1..=k as usize)
            .map(|shards| {
                let shards = shards as f64;
                let on = (job.batch_size as f64 * c.sample_ms / shards + c.iter_overhead_ms)
                    / 1000.0
                    / v;
                let off = off(shards);
                if off > 0.0 { off / (on + off) } else { 0.0 }
            })
            .fold(0.0, f64::max);
        Ok(Prepared {
            arrival: job.arrival_s,
            iterations: job.iterations as f64,
            x,
            exclusive: job.iterations as f64 * x,
            rho: k * v * x / work_k,
            tau: shapes.iter().map(|p| p.0).fold(f64::INFINITY, f64::min),
            hull: lower_hull(&shapes),
            work_rate: k * v,
            omega: shapes.iter().map(|p| p.1 / p.0).fold(0.0, f64::max),
            max_work: shapes.iter().map(|p| p.1).fold(0.0, f64::max),
            off_fraction,
            off_max: off(k),
        })
    }

    /// (2), (3): the most credit the job can get in a window of `len` seconds.
    fn credit_cap(&self, len: f64) -> f64 {
        (self.rho * len).min(self.x * (len / self.tau + 2.0))
    }

    /// (4): the least work that finishes the job within `span` seconds (infinite if none).
    fn min_work(&self, span: f64) -> f64 {
        let per = span / self.iterations;
        let Some(&(t0, w0)) = self.hull.first() else {
            return f64::INFINITY;
        };
        if per < t0 * (1.0 - 1e-12) {
            return f64::INFINITY;
        }
        let mut w = w0;
        for pair in self.hull.windows(2) {
            let ((ta, wa), (tb, wb)) = (pair[0], pair[1]);
            if per >= tb {
                w = wb;
            } else if per > ta {
                w = wa + (wb - wa) * (per - ta) / (tb - ta);
                break;
            }
        }
        self.iterations * w
    }

    /// (4): the most work the job can do in a window of `len` seconds.
    fn work_cap(&self, len: f64) -> f64 {
        (self.work_rate * len).min(self.omega * len + 2.0 * self.max_work)
    }
}

/// (5): indices of the jobs that share an arrival instant, groups of two or more.
fn arrival_groups(jobs: &[Prepared]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by(|&a, &b| jobs[a].arrival.total_cmp(&jobs[b].arrival).then(a.cmp(&b)));
    order
        .chunk_by(|&a, &b| jobs[a].arrival == jobs[b].arrival)
        .filter(|g| g.len() >= 2)
        .map(<[usize]>::to_vec)
        .collect()
}

/// The lower-left convex hull of `(time, work)` points: time ascending, work descending.
fn lower_hull(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut p = points.to_vec();
    p.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut hull: Vec<(f64, f64)> = Vec::new();
    for q in p {
        // Only points that need less work than every faster one matter.
        if hull.last().is_some_and(|h| q.1 >= h.1) {
            continue;
        }
        while hull.len() >= 2 {
            let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
            // Drop b when it lies on or above the segment from a to q.
            if (b.0 - a.0) * (q.1 - a.1) - (b.1 - a.1) * (q.0 - a.0) <= 0.0 {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(q);
    }
    hull
}

/// Which of the two networks (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Relaxation {
    Credit,
    Work,
}

struct Problem {
    /// `m c`: work per second of the pooled machine.
    capacity: f64,
    /// `c`: work per second of one GPU.
    gpu_speed: f64,
    /// (5): the jobs that arrive at the same instant, deadline order within a group is
    /// decided per `S`; groups of one are left out.
    groups: Vec<Vec<usize>>,
    jobs: Vec<Prepared>,
    max_cells: usize,
}

impl Problem {
    /// Whether every job can finish by `arrival + s * exclusive` in both relaxations.
    fn feasible(&self, s: f64) -> bool {
        if self
            .jobs
            .iter()
            .any(|j| j.tau * j.iterations > s * j.exclusive * (1.0 + 1e-12))
        {
            return false;
        }
        self.groups_feasible(s)
            && self.flow_feasible(s, Relaxation::Credit)
            && self.flow_feasible(s, Relaxation::Work)
    }

    /// (5): whether every group of jobs arriving together can meet its deadlines when each
    /// of its unfinished jobs keeps its share of the machine.
    fn groups_feasible(&self, s: f64) -> bool {
        let mut order: Vec<(f64, usize)> = Vec::new();
        for group in &self.groups {
            order.clear();
            order.extend(
                group
                    .iter()
                    .map(|&i| (self.jobs[i].arrival + s * self.jobs[i].exclusive, i)),
            );
            order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let t0 = self.jobs[group[0]].arrival;
            // Every prefix of the deadline order is a group of its own (fewer jobs, each
            // holding a larger share); a geometric choice of them keeps a large group's
            // checks near quadratic.
            order.truncate(MAX_GROUP);
            let mut size = 2;
            while size <= order.len() {
                let n = size as f64;
                let mut due = 0.0;
                for (l, &(deadline, i)) in order[..size].iter().enumerate() {
                    due += self.jobs[i].exclusive;
                    let len = deadline - t0;
                    let waiting: f64 = order[l + 1..size]
                        .iter()
                        .map(|&(_, j)| {
                            let j = &self.jobs[j];
                            let held = self.gpu_speed / n
                                * (len * (1.0 - j.off_fraction) - j.off_max).max(0.0);
                            if j.exclusive <= j.credit_cap(len) {
                                held.min(j.exclusive)
                            } else {
                                held
                            }
                        })
                        .sum();
                    if due + waiting > self.capacity * len * (1.0 + 1e-12) {
                        return false;
                    }
                }
                size = if size == order.len() {
                    size + 1
                } else {
                    (size + size / 2).min(order.len())
                };
            }
        }
        true
    }

    fn flow_feasible(&self, s: f64, relaxation: Relaxation) -> bool {
        let deadline = |j: &Prepared| j.arrival + s * j.exclusive;
        let demand = |j: &Prepared| match relaxation {
            Relaxation::Credit => j.exclusive,
            Relaxation::Work => j.min_work(s * j.exclusive),
        };
        let cap = |j: &Prepared, len: f64| match relaxation {
            Relaxation::Credit => j.credit_cap(len),
            Relaxation::Work => j.work_cap(len),
        };
        let total: f64 = self.jobs.iter().map(demand).sum();
        if !total.is_finite() {
            return false;
        }
        let mut points: Vec<f64> = self
            .jobs
            .iter()
            .flat_map(|j| [j.arrival, deadline(j)])
            .collect();
        points.sort_by(f64::total_cmp);
        points.dedup();
        if points.len() > self.max_cells + 1 {
            // Every (len-1)/cells-th point, keeping the first and the last.
            let cells = self.max_cells;
            let last = points.len() - 1;
            points = (0..=cells).map(|c| points[c * last / cells]).collect();
            points.dedup();
        }
        let cells = points.len() - 1;
        // The cell containing `t`, rounding down (a window start) or up (a window end).
        let cell_floor = |t: f64| points.partition_point(|&p| p <= t).saturating_sub(1);
        let cell_ceil = |t: f64| points.partition_point(|&p| p < t).max(1);
        let (source, sink) = (0, 1);
        let first_cell = 2;
        let mut net = Network::new(2 + cells);
        for c in 0..cells {
            let len = points[c + 1] - points[c];
            net.edge(first_cell + c, sink, self.capacity * len);
        }
        for j in &self.jobs {
            let need = demand(j);
            let from = cell_floor(j.arrival).min(cells - 1);
            let to = cell_ceil(deadline(j)).min(cells).max(from + 1);
            let node = net.node();
            net.edge(source, node, need);
            for c in from..to {
                let len = points[c + 1] - points[c];
                net.edge(node, first_cell + c, cap(j, len));
            }
        }
        net.max_flow(source, sink, total) >= total * (1.0 - 1e-9)
    }
}

/// A flow network with `f64` capacities and Dinic's algorithm.
struct Network {
    nodes: usize,
    /// Edge `e` goes to `to[e]` with residual `cap[e]`; `e ^ 1` is its reverse.
    to: Vec<usize>,
    cap: Vec<f64>,
}

impl Network {
    fn new(nodes: usize) -> Self {
        Network {
            nodes,
            to: Vec::new(),
            cap: Vec::new(),
        }
    }

    fn node(&mut self) -> usize {
        self.nodes += 1;
        self.nodes - 1
    }

    fn edge(&mut self, from: usize, to: usize, cap: f64) {
        self.to.extend([to, from]);
        self.cap.extend([cap.max(0.0), 0.0]);
    }

    /// The maximum flow from `s` to `t`, stopping once it reaches `enough`.
    fn max_flow(&mut self, s: usize, t: usize, enough: f64) -> f64 {
        // Adjacency in one array, grouped by the edge's tail (`to[e ^ 1]`).
        let mut start = vec![0usize; self.nodes + 1];
        for e in 0..self.to.len() {
            start[self.to[e ^ 1] + 1] += 1;
        }
        for v in 0..self.nodes {
            start[v + 1] += start[v];
        }
        let mut fill = start.clone();
        let mut adj = vec![0usize; self.to.len()];
        for e in 0..self.to.len() {
            let v = self.to[e ^ 1];
            adj[fill[v]] = e;
            fill[v] += 1;
        }
        // Residuals below this are zero: rounding in long chains of f64 sums.
        let eps = enough.abs().max(1e-300) * 1e-13;
        let mut flow = 0.0;
        let mut level = vec![u32::MAX; self.nodes];
        let mut queue = Vec::with_capacity(self.nodes);
        let mut it = vec![0usize; self.nodes];
        let mut path: Vec<usize> = Vec::new();
        while flow < enough {
            level.fill(u32::MAX);
            level[s] = 0;
            queue.clear();
            queue.push(s);
            let mut head = 0;
            while head < queue.len() {
                let v = queue[head];
                head += 1;
                for &e in &adj[start[v]..start[v + 1]] {
                    let w = self.to[e];
                    if self.cap[e] > eps && level[w] == u32::MAX {
                        level[w] = level[v] + 1;
                        queue.push(w);
                    }
                }
            }
            if level[t] == u32::MAX {
                break;
            }
            it.copy_from_slice(&start[..self.nodes]);
            path.clear();
            let mut v = s;
            loop {
                if v == t {
                    let push = path
                        .iter()
                        .map(|&e| self.cap[e])
                        .fold(f64::INFINITY, f64::min);
                    let mut cut = path.len();
                    for (k, &e) in path.iter().enumerate() {
                        self.cap[e] -= push;
                        self.cap[e ^ 1] += push;
                        if self.cap[e] <= eps && cut == path.len() {
                            cut = k;
                        }
                    }
                    flow += push;
                    // Resume from the tail of the first saturated edge.
                    path.truncate(cut);
                    v = path.last().map_or(s, |&e| self.to[e]);
                    continue;
                }
                let mut advanced = false;
                while it[v] < start[v + 1] {
                    let e = adj[it[v]];
                    let w = self.to[e];
                    if self.cap[e] > eps && level[w] == level[v] + 1 {
                        path.push(e);
                        v = w;
                        advanced = true;
                        break;
                    }
                    it[v] += 1;
                }
                if !advanced {
                    if v == s {
                        break;
                    }
                    level[v] = u32::MAX; // a dead end for the rest of this phase
                    let e = path.pop().unwrap_or(0);
                    v = self.to[e ^ 1];
                    it[v] += 1;
                }
            }
        }
        flow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(arrival_s: f64, iterations: u64, sample_ms: f64, grad_mb: f64) -> BoundJob {
        BoundJob {
            arrival_s,
            iterations,
            batch_size: 100,
            costs: JobSim {
                sample_ms,
                iter_overhead_ms: 0.0,
                grad_mb,
            },
        }
    }

    fn machine(gpus: usize) -> SimulationConfig {
        let mut m = SimulationConfig::with_gpus(gpus);
        m.allreduce_latency_ms = 0.0;
        m
    }

    #[test]
    fn max_flow_small() {
        let mut n = Network::new(4);
        n.edge(0, 1, 3.0);
        n.edge(0, 2, 2.0);
        n.edge(1, 2, 1.0);
        n.edge(1, 3, 2.0);
        n.edge(2, 3, 3.0);
        assert!((n.max_flow(0, 3, 100.0) - 5.0).abs() < 1e-12);
    }

    #[test]
    fn identical_jobs_share_the_machine() {
        // Three equal jobs at once on two GPUs, too heavy to split usefully (a 1 GB
        // all-reduce): everyone gets 2/3 of a GPU, so 1.5.
        let jobs = vec![job(0.0, 100, 1.0, 1000.0); 3];
        let b = max_slowdown_bound(&machine(2), &jobs, DEFAULT_MAX_CELLS).unwrap();
        assert!(b <= 1.5 && b > 1.498, "{b}");
        // One GPU: 3.
        let b = max_slowdown_bound(&machine(1), &jobs, DEFAULT_MAX_CELLS).unwrap();
        assert!(b <= 3.0 && b > 2.996, "{b}");
    }

    #[test]
    fn a_lone_job_is_bounded_by_its_fastest_split() {
        // 100 samples of 1 ms on 4 GPUs, no all-reduce: [3,3,2,2], 30 ms of 100.
        let b = max_slowdown_bound(&machine(4), &[job(5.0, 50, 1.0, 0.0)], 64).unwrap();
        assert!((b - 0.3).abs() < 1e-9, "{b}");
        assert_eq!(
            max_slowdown_bound(&machine(4), &[], 64).unwrap(),
            0.0,
            "no jobs"
        );
    }

    #[test]
    fn jobs_arriving_together_cannot_be_paused() {
        // One GPU, 10, 20 and 30 s of work at once: processor sharing is the only schedule,
        // finishing them at 30, 50 and 60 s (Slow-Downs 3, 2.5, 2). Pausing the longer ones
        // would give 2.
        let jobs = vec![
            job(0.0, 100, 1.0, 0.0),
            job(0.0, 200, 1.0, 0.0),
            job(0.0, 300, 1.0, 0.0),
        ];
        let b = max_slowdown_bound(&machine(1), &jobs, DEFAULT_MAX_CELLS).unwrap();
        assert!(b <= 3.0 && b > 2.996, "{b}");
        // A second apart there is no group to check, and the flows pause the long jobs
        // while the short ones run: close to 2 again.
        let apart = vec![
            job(0.0, 300, 1.0, 0.0),
            job(1.0, 200, 1.0, 0.0),
            job(2.0, 100, 1.0, 0.0),
        ];
        let b = max_slowdown_bound(&machine(1), &apart, DEFAULT_MAX_CELLS).unwrap();
        assert!(b < 2.1, "{b}");
    }

    #[test]
    fn staggered_arrivals() {
        // One GPU: a long job at 0 (100 s alone), a short one at 50 s (10 s alone). Finishing
        // the short one first, by 50 + 10 S, leaves the long one done at 110 s: S = 1.1.
        let jobs = vec![job(0.0, 1000, 1.0, 0.0), job(50.0, 100, 1.0, 0.0)];
        let b = max_slowdown_bound(&machine(1), &jobs, 64).unwrap();
        assert!(b <= 1.1 && b > 1.098, "{b}");
        // Coarse cells only lower it.
        let coarse = max_slowdown_bound(&machine(1), &jobs, 2).unwrap();
        assert!(coarse <= b + 1e-9, "{coarse} {b}");
    }
}
