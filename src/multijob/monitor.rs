//! What the manager measures about the devices: utilisation per GPU over a period, and memory
//! for the live view.
//!
//! Utilisation comes from NVML (`utilization.gpu`, the spec's `Util(g)`: the share of time a
//! kernel ran), sampled every poll and averaged over the period. Without NVML (the CPU
//! rehearsal `--gpus cpu:N`, or no driver library) it comes from the jobs' step reports:
//! the share of the period during which some job had a step running that used the device,
//! which is also the simulator's definition. The report's mean utilisation uses the same
//! source as the manager.

use std::collections::VecDeque;

use nvml_wrapper::Nvml;

use crate::base::{Devices, DistributionRatio};
use crate::{Error, Result};

/// One device as the live view shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceStatus {
    /// Utilisation over the last period, percent.
    pub util: f64,
    /// Memory used and total, GiB (NVML only).
    pub memory_gib: Option<(f64, f64)>,
}

/// NVML handles for the CUDA devices a run uses, matched by UUID (NVML and CUDA may number
/// GPUs differently, and CUDA_VISIBLE_DEVICES renumbers only CUDA).
struct NvmlDevices {
    nvml: Nvml,
    uuids: Vec<String>,
}

impl NvmlDevices {
    fn open(ordinals: &[usize]) -> Result<Self> {
        let nvml = Nvml::init().map_err(|e| Error::invalid("NVML", e.to_string()))?;
        cudarc::driver::result::init().map_err(|e| Error::invalid("CUDA driver", e.to_string()))?;
        let uuids = ordinals
            .iter()
            .map(|&o| {
                let dev = cudarc::driver::result::device::get(o as i32)
                    .and_then(cudarc::driver::result::device::get_uuid)
                    .map_err(|e| Error::invalid(format!("cuda:{o}"), e.to_string()))?;
                Ok(format_uuid(&dev.bytes.map(|b| b as u8)))
            })
            .collect::<Result<Vec<_>>>()?;
        let this = NvmlDevices { nvml, uuids };
        this.sample()?;
        Ok(this)
    }

    /// Utilisation (percent) and memory (used, total GiB) of each device now.
    fn sample(&self) -> Result<Vec<(f64, (f64, f64))>> {
        self.uuids
            .iter()
            .map(|uuid| {
                let fail = |e: nvml_wrapper::error::NvmlError| {
                    Error::invalid(format!("NVML device {uuid}"), e.to_string())
                };
                let device = self.nvml.device_by_uuid(uuid.as_str()).map_err(fail)?;
                let util = device.utilization_rates().map_err(fail)?.gpu;
                let mem = device.memory_info().map_err(fail)?;
                let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
                Ok((f64::from(util), (gib(mem.used), gib(mem.total))))
            })
            .collect()
    }
}

/// CUDA's 16 UUID bytes as NVML writes them: `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
fn format_uuid(bytes: &[u8; 16]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        hex[0..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..16].concat()
    )
}

/// Utilisation and memory of a run's devices.
pub struct Monitor {
    nvml: Option<NvmlDevices>,
    /// NVML samples per device: `(time, percent)`, oldest first, pruned to two periods.
    samples: Vec<VecDeque<(f64, f64)>>,
    /// Busy seconds per device integrated from the NVML samples.
    nvml_busy_s: Vec<f64>,
    last_sample_s: Option<f64>,
    /// Step-report busy intervals per device, in the order reported.
    steps: Vec<Vec<(f64, f64)>>,
    memory: Vec<Option<(f64, f64)>>,
    last_util: Vec<f64>,
}

impl Monitor {
    /// A monitor for `devices`; the second value says why NVML is not used, when it is not
    /// and the devices are GPUs.
    pub fn new(devices: &Devices) -> (Monitor, Option<String>) {
        let n = devices.count();
        let (nvml, notice) = match devices {
            Devices::Gpus(ordinals) => match NvmlDevices::open(ordinals) {
                Ok(nvml) => (Some(nvml), None),
                Err(e) => (
                    None,
                    Some(format!(
                        "{e}; GPU utilisation is taken from the jobs' step times instead"
                    )),
                ),
            },
            Devices::Cpu(_) => (None, None),
        };
        let monitor = Monitor {
            nvml,
            samples: vec![VecDeque::new(); n],
            nvml_busy_s: vec![0.0; n],
            last_sample_s: None,
            steps: vec![Vec::new(); n],
            memory: vec![None; n],
            last_util: vec![0.0; n],
        };
        (monitor, notice)
    }

    /// Where utilisation comes from: `nvml` or `steps`.
    pub fn source(&self) -> &'static str {
        if self.nvml.is_some() { "nvml" } else { "steps" }
    }

    /// Takes an NVML sample at `now_s` (nothing without NVML), keeping `window_s` of history.
    pub fn poll(&mut self, now_s: f64, window_s: f64) {
        let Some(nvml) = &self.nvml else { return };
        let Ok(sample) = nvml.sample() else { return };
        let dt = self.last_sample_s.map_or(0.0, |t| (now_s - t).max(0.0));
        self.last_sample_s = Some(now_s);
        for (g, (util, memory)) in sample.into_iter().enumerate() {
            self.nvml_busy_s[g] += util / 100.0 * dt;
            self.memory[g] = Some(memory);
            let history = &mut self.samples[g];
            history.push_back((now_s, util));
            while history
                .front()
                .is_some_and(|&(t, _)| t < now_s - 2.0 * window_s)
            {
                history.pop_front();
            }
        }
    }

    /// A step of a job running under `dr` took `[start_s, end_s]`.
    pub fn step(&mut self, dr: &DistributionRatio, start_s: f64, end_s: f64) {
        for g in dr.used_gpus() {
            if let Some(list) = self.steps.get_mut(g) {
                list.push((start_s, end_s));
            }
        }
    }

    /// Utilisation per device over `[from_s, to_s]`, percent.
    pub fn util(&mut self, from_s: f64, to_s: f64) -> Vec<f64> {
        let span = (to_s - from_s).max(1e-9);
        let util: Vec<f64> = match &self.nvml {
            Some(_) => self
                .samples
                .iter()
                .map(|h| {
                    let inside: Vec<f64> = h
                        .iter()
                        .filter(|&&(t, _)| t > from_s && t <= to_s)
                        .map(|&(_, u)| u)
                        .collect();
                    if inside.is_empty() {
                        0.0
                    } else {
                        inside.iter().sum::<f64>() / inside.len() as f64
                    }
                })
                .collect(),
            None => self
                .steps
                .iter()
                .map(|list| (union_length(list, from_s, to_s) / span * 100.0).clamp(0.0, 100.0))
                .collect(),
        };
        self.last_util = util.clone();
        util
    }

    /// Busy seconds per device from the start until `to_s` (for the report).
    pub fn busy_s(&self, to_s: f64) -> Vec<f64> {
        match &self.nvml {
            Some(_) => self.nvml_busy_s.clone(),
            None => self
                .steps
                .iter()
                .map(|list| union_length(list, f64::NEG_INFINITY, to_s))
                .collect(),
        }
    }

    /// The latest utilisation and memory per device.
    pub fn status(&self) -> Vec<DeviceStatus> {
        self.last_util
            .iter()
            .zip(&self.memory)
            .map(|(&util, &memory_gib)| DeviceStatus { util, memory_gib })
            .collect()
    }
}

/// Total length of the union of `intervals` clipped to `[from, to]`.
fn union_length(intervals: &[(f64, f64)], from: f64, to: f64) -> f64 {
    let mut clipped: Vec<(f64, f64)> = intervals
        .iter()
        .map(|&(s, e)| (s.max(from), e.min(to)))
        .filter(|&(s, e)| e > s)
        .collect();
    clipped.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0.0;
    let mut current: Option<(f64, f64)> = None;
    for (s, e) in clipped {
        current = match current {
            Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                Some((s, e))
            }
            None => Some((s, e)),
        };
    }
    total + current.map_or(0.0, |(s, e)| e - s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_of_overlapping_steps() {
        let steps = [(0.0, 1.0), (0.5, 1.5), (3.0, 4.0), (3.2, 3.4)];
        assert!((union_length(&steps, 0.0, 10.0) - 2.5).abs() < 1e-12);
        assert!((union_length(&steps, 1.0, 3.5) - 1.0).abs() < 1e-12);
        assert_eq!(union_length(&[], 0.0, 1.0), 0.0);
    }

    #[test]
    fn step_utilisation_per_device() {
        let (mut m, notice) = Monitor::new(&Devices::Cpu(2));
        assert!(notice.is_none());
        assert_eq!(m.source(), "steps");
        let split = DistributionRatio::new(vec![5, 5]).unwrap();
        let first = DistributionRatio::new(vec![10, 0]).unwrap();
        m.step(&split, 0.0, 1.0);
        m.step(&first, 1.0, 2.0);
        let u = m.util(0.0, 4.0);
        assert_eq!(u, vec![50.0, 25.0]);
        assert_eq!(m.busy_s(4.0), vec![2.0, 1.0]);
        assert_eq!(m.status()[1].util, 25.0);
    }

    #[test]
    fn uuid_text_matches_nvml() {
        let bytes: [u8; 16] = core::array::from_fn(|i| i as u8 * 17);
        assert_eq!(
            format_uuid(&bytes),
            "GPU-00112233-4455-6677-8899-aabbccddeeff"
        );
    }
}
