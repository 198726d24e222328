//! One grammar for naming devices on every command line.
//!
//! A set of devices ([`DeviceList`], `attnrt-train --gpus`):
//! - `all`: every GPU (the CPU when there is none);
//! - `cpu`: the CPU; `cpu:N`: N shards computed in turn on the CPU, which rehearses an N-GPU
//!   machine without one;
//! - `cuda:0`, `cuda:0,1`, or the bare ordinals `0`, `0,1`: those GPUs, in that order; `cuda`
//!   alone is GPU 0.
//!
//! One device ([`Device`], `attnrt-infer --device`): `auto` (the first GPU when one is usable,
//! else the CPU), `cpu`, `cuda` (GPU 0), `cuda:N` or the bare ordinal `N`.
//!
//! Which GPUs exist is only known at run time, so `all` and `auto` stay unresolved here: the
//! layers that open devices resolve them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The most devices a set may name: far beyond any machine, and small enough that the
/// per-device state a run allocates (one shard, one ratio entry each) always fits.
pub const MAX_DEVICES: usize = 4096;

/// What the set grammar accepts, for error messages.
const LIST_GRAMMAR: &str = "all, cpu, cpu:N, cuda:N[,M...] or GPU ordinals like 0,1";

/// One device, as given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The first GPU when one is usable, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            _ => match cuda_ordinals(s).as_deref() {
                Some(&[n]) => Ok(Device::Cuda(n)),
                _ => Err(format!("'{s}' is not one of auto, cpu, cuda, cuda:N")),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => write!(f, "auto"),
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A set of devices as given on the command line: `all`, or a set named outright.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceList {
    /// Every GPU; the CPU when there is none.
    All,
    Named(Devices),
}

impl FromStr for DeviceList {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "all" {
            return Ok(DeviceList::All);
        }
        if s == "cpu" {
            return Ok(DeviceList::Named(Devices::Cpu(1)));
        }
        if let Some(n) = s.strip_prefix("cpu:") {
            return match n.parse::<usize>() {
                Ok(n) if (1..=MAX_DEVICES).contains(&n) => Ok(DeviceList::Named(Devices::Cpu(n))),
                _ => Err(format!(
                    "'{s}': cpu:N needs a shard count N of 1..={MAX_DEVICES}"
                )),
            };
        }
        let ordinals =
            cuda_ordinals(s).ok_or_else(|| format!("'{s}' is not one of {LIST_GRAMMAR}"))?;
        let mut seen = ordinals.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != ordinals.len() {
            return Err(format!("'{s}' names a GPU twice"));
        }
        if ordinals.len() > MAX_DEVICES {
            return Err(format!("'{s}' names more than {MAX_DEVICES} GPUs"));
        }
        Ok(DeviceList::Named(Devices::Gpus(ordinals)))
    }
}

impl fmt::Display for DeviceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceList::All => write!(f, "all"),
            DeviceList::Named(Devices::Cpu(1)) => write!(f, "cpu"),
            DeviceList::Named(Devices::Cpu(n)) => write!(f, "cpu:{n}"),
            DeviceList::Named(Devices::Gpus(o)) => {
                let list: Vec<String> = o.iter().map(usize::to_string).collect();
                write!(f, "cuda:{}", list.join(","))
            }
        }
    }
}

/// `cuda`, `cuda:LIST` or a bare `LIST` of ordinals (`0,1`) as the ordinals it names.
fn cuda_ordinals(s: &str) -> Option<Vec<usize>> {
    let list = match s.strip_prefix("cuda") {
        Some("") => return Some(vec![0]),
        Some(rest) => rest.strip_prefix(':')?,
        None => s,
    };
    list.split(',')
        .map(|g| g.trim().parse::<usize>().ok())
        .collect()
}

/// The devices a job's mini-batch is split over, resolved: one shard per device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Devices {
    /// `n` shards computed in turn on the CPU.
    Cpu(usize),
    /// CUDA ordinals.
    Gpus(Vec<usize>),
}

impl Devices {
    /// How many shards a step has (the distribution ratio's length).
    pub fn count(&self) -> usize {
        match self {
            Devices::Cpu(n) => *n,
            Devices::Gpus(o) => o.len(),
        }
    }

    /// What one of these devices is called in views and plots: `GPU`, or `CPU shard`.
    pub fn unit(&self) -> &'static str {
        match self {
            Devices::Cpu(_) => "CPU shard",
            Devices::Gpus(_) => "GPU",
        }
    }
}

impl fmt::Display for Devices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Devices::Cpu(1) => write!(f, "the CPU"),
            Devices::Cpu(n) => write!(f, "the CPU ({n} shards, in turn)"),
            Devices::Gpus(o) => write!(f, "GPUs {o:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> DeviceList {
        s.parse().unwrap()
    }

    #[test]
    fn every_spelling_of_a_set() {
        let gpus = |o: &[usize]| DeviceList::Named(Devices::Gpus(o.to_vec()));
        assert_eq!(list("all"), DeviceList::All);
        assert_eq!(list("cpu"), DeviceList::Named(Devices::Cpu(1)));
        assert_eq!(list("cpu:3"), DeviceList::Named(Devices::Cpu(3)));
        assert_eq!(list("1,0"), gpus(&[1, 0]));
        assert_eq!(list("0, 1"), gpus(&[0, 1]));
        assert_eq!(list("cuda:0,1"), gpus(&[0, 1]));
        assert_eq!(list("cuda:2"), gpus(&[2]));
        assert_eq!(list("cuda"), gpus(&[0]));
        for bad in [
            "cpu:0", "cpu:x", "0,0", "cuda:1,1", "a", "", "cuda:", "cuda0", "gpu:0",
        ] {
            assert!(bad.parse::<DeviceList>().is_err(), "{bad}");
        }
        let e = "0,0".parse::<DeviceList>().unwrap_err();
        assert!(e.contains("twice"), "{e}");
        // Display writes the grammar back.
        for s in ["all", "cpu", "cpu:2", "cuda:1,0"] {
            assert_eq!(list(s).to_string(), s);
        }
    }

    #[test]
    fn every_spelling_of_one_device() {
        let one = |s: &str| s.parse::<Device>();
        assert_eq!(one("auto"), Ok(Device::Auto));
        assert_eq!(one("cpu"), Ok(Device::Cpu));
        assert_eq!(one("cuda"), Ok(Device::Cuda(0)));
        assert_eq!(one("cuda:3"), Ok(Device::Cuda(3)));
        assert_eq!(one("1"), Ok(Device::Cuda(1)));
        for bad in ["cuda:0,1", "all", "cpu:2", "gpu", ""] {
            let e = one(bad).unwrap_err();
            assert!(e.contains("auto, cpu, cuda, cuda:N"), "{bad}: {e}");
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn resolved_sets_name_their_devices() {
        assert_eq!(Devices::Cpu(2).count(), 2);
        assert_eq!(Devices::Gpus(vec![3, 1]).count(), 2);
        assert_eq!(Devices::Cpu(2).unit(), "CPU shard");
        assert_eq!(Devices::Gpus(vec![0]).unit(), "GPU");
        assert_eq!(Devices::Cpu(1).to_string(), "the CPU");
        assert_eq!(Devices::Gpus(vec![0, 1]).to_string(), "GPUs [0, 1]");
        let json = serde_json::to_string(&Devices::Gpus(vec![0, 1])).unwrap();
        assert_eq!(
            serde_json::from_str::<Devices>(&json).unwrap(),
            Devices::Gpus(vec![0, 1])
        );
    }
}
