//! Distribution ratios: how a data-parallel job splits every mini-batch over the GPUs.
//!
//! A [`DistributionRatio`] holds one integer per GPU in `0..=10`, summing to exactly
//! [`DR_UNITS`] (10): the job processes `DR[g] / 10` of each mini-batch on GPU `g`. The type
//! can only be built through checked constructors, so a value that exists is valid: a ratio
//! that does not sum to 10 would drop or duplicate samples.
//!
//! [`apportion`] and [`largest_remainder`] are the integer rounding used everywhere a whole
//! must be split into parts that add up exactly: the even split, the thesis' sum repair, and
//! the split of a mini-batch into per-GPU shard sizes ([`DistributionRatio::split_batch`]).
//! Ties always go to the lowest index, so every result is deterministic.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The number of units a distribution ratio distributes (the thesis' tenths of a batch).
pub const DR_UNITS: u8 = 10;

/// How one job splits its mini-batch over the `m` GPUs of a machine. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<u8>", into = "Vec<u8>")]
pub struct DistributionRatio {
    units: Vec<u8>,
}

impl DistributionRatio {
    /// Checks and wraps one entry per GPU: at least one GPU, each entry `0..=10`, sum 10.
    pub fn new(units: impl Into<Vec<u8>>) -> Result<Self> {
        let units = units.into();
        let wide: Vec<i64> = units.iter().map(|&u| i64::from(u)).collect();
        check_units(&wide).map_err(|problem| Error::invalid("distribution ratio", problem))?;
        Ok(DistributionRatio { units })
    }

    /// Like [`new`](Self::new) for signed input as read from a file; on failure the problem
    /// text (without context) is returned so the caller can name the file, job and key.
    pub fn from_signed(units: &[i64]) -> std::result::Result<Self, String> {
        check_units(units)?;
        // check_units proved every entry is in 0..=10.
        Ok(DistributionRatio {
            units: units.iter().map(|&u| u as u8).collect(),
        })
    }

    /// Parses tenths written as `2,8` (spaces allowed) for a machine of `gpus` devices; on
    /// failure the problem text (without context) is returned, for the caller to name the
    /// flag or key.
    pub fn parse(text: &str, gpus: usize) -> std::result::Result<Self, String> {
        let units: Vec<i64> = text
            .split(',')
            .map(|u| u.trim().parse::<i64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| "expected tenths like 2,8".to_string())?;
        if units.len() != gpus {
            return Err(format!("has {} entries for {gpus} devices", units.len()));
        }
        Self::from_signed(&units)
    }

    /// All 10 units on GPU `gpu` of `gpus`.
    pub fn exclusive(gpus: usize, gpu: usize) -> Result<Self> {
        if gpu >= gpus {
            return Err(Error::invalid(
                "distribution ratio",
                format!("GPU {gpu} does not exist on a machine with {gpus} GPU(s)"),
            ));
        }
        let mut units = vec![0; gpus];
        units[gpu] = DR_UNITS;
        Ok(DistributionRatio { units })
    }

    /// The 10 units spread as evenly as integers allow over `gpus` GPUs, the remainder on
    /// the lowest-numbered GPUs: 4 GPUs give `[3,3,2,2]`, 3 give `[4,3,3]`. With more than
    /// 10 GPUs only GPUs 0..9 get a unit (a ratio has only 10 units).
    pub fn even(gpus: usize) -> Result<Self> {
        if gpus == 0 {
            return Err(Error::invalid(
                "distribution ratio",
                "a machine needs at least one GPU",
            ));
        }
        let parts = apportion(&vec![1; gpus], u64::from(DR_UNITS))
            .ok_or_else(|| Error::invalid("distribution ratio", "no GPU to spread over"))?;
        Ok(DistributionRatio {
            units: parts.into_iter().map(|p| p as u8).collect(),
        })
    }

    /// Units proportional to non-negative `weights` (one per GPU), rounded by the largest
    /// remainder method so they sum to exactly 10.
    pub fn from_weights(weights: &[f64]) -> Result<Self> {
        if weights.is_empty() {
            return Err(Error::invalid(
                "distribution ratio",
                "a machine needs at least one GPU",
            ));
        }
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err(Error::invalid(
                "distribution ratio",
                format!("weights must be finite and non-negative, got {weights:?}"),
            ));
        }
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            return Err(Error::invalid(
                "distribution ratio",
                "weights must not all be zero",
            ));
        }
        let quotas: Vec<f64> = weights
            .iter()
            .map(|w| w / total * f64::from(DR_UNITS))
            .collect();
        let parts = largest_remainder(&quotas, u64::from(DR_UNITS));
        Ok(DistributionRatio {
            units: parts.into_iter().map(|p| p as u8).collect(),
        })
    }

    /// The number of GPUs of the machine (entries, used or not).
    pub fn gpus(&self) -> usize {
        self.units.len()
    }

    /// The units, one per GPU.
    pub fn units(&self) -> &[u8] {
        &self.units
    }

    /// The units on GPU `gpu`, 0 for a GPU that does not exist.
    pub fn get(&self, gpu: usize) -> u8 {
        self.units.get(gpu).copied().unwrap_or(0)
    }

    /// The fraction of each mini-batch processed on GPU `gpu`.
    pub fn fraction(&self, gpu: usize) -> f64 {
        f64::from(self.get(gpu)) / f64::from(DR_UNITS)
    }

    /// Whether the job uses GPU `gpu` (`DR[gpu] > 0`).
    pub fn uses(&self, gpu: usize) -> bool {
        self.get(gpu) > 0
    }

    /// The GPUs the job uses (`GPU_used`), in increasing order.
    pub fn used_gpus(&self) -> impl Iterator<Item = usize> + '_ {
        self.units
            .iter()
            .enumerate()
            .filter(|(_, u)| **u > 0)
            .map(|(g, _)| g)
    }

    /// How many GPUs the job uses.
    pub fn used_count(&self) -> usize {
        self.units.iter().filter(|u| **u > 0).count()
    }

    /// A copy with `count` units moved from GPU `from` to GPU `to`.
    pub fn moved(&self, from: usize, to: usize, count: u8) -> Result<Self> {
        let m = self.gpus();
        if from >= m || to >= m {
            return Err(Error::invalid(
                "distribution ratio",
                format!("cannot move units between GPUs {from} and {to} of {m}"),
            ));
        }
        if self.units[from] < count {
            return Err(Error::invalid(
                "distribution ratio",
                format!(
                    "cannot move {count} unit(s) off GPU {from}, which has {}",
                    self.units[from]
                ),
            ));
        }
        let mut units = self.units.clone();
        units[from] -= count;
        units[to] += count;
        Ok(DistributionRatio { units })
    }

    /// Splits a mini-batch of `batch` samples into per-GPU shard sizes that sum to exactly
    /// `batch`: shard `g` is `batch * DR[g] / 10`, rounded by the largest remainder method
    /// (ties to the lowest GPU). A GPU with `DR[g] = 0` always gets 0; a used GPU may get 0
    /// when the batch is smaller than 10.
    pub fn split_batch(&self, batch: u64) -> Vec<u64> {
        let weights: Vec<u64> = self.units.iter().map(|&u| u64::from(u)).collect();
        // The weights sum to 10 > 0, so apportion always succeeds.
        apportion(&weights, batch).unwrap_or_else(|| vec![0; self.units.len()])
    }
}

impl fmt::Display for DistributionRatio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, u) in self.units.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{u}")?;
        }
        write!(f, "]")
    }
}

impl TryFrom<Vec<u8>> for DistributionRatio {
    type Error = Error;
    fn try_from(units: Vec<u8>) -> Result<Self> {
        DistributionRatio::new(units)
    }
}

impl From<DistributionRatio> for Vec<u8> {
    fn from(dr: DistributionRatio) -> Vec<u8> {
        dr.units
    }
}

impl TryFrom<&[u8]> for DistributionRatio {
    type Error = Error;
    fn try_from(units: &[u8]) -> Result<Self> {
        DistributionRatio::new(units.to_vec())
    }
}

fn check_units(units: &[i64]) -> std::result::Result<(), String> {
    if units.is_empty() {
        return Err("needs one entry per GPU, got none".into());
    }
    if let Some((g, u)) = units
        .iter()
        .enumerate()
        .find(|(_, u)| !(0..=i64::from(DR_UNITS)).contains(*u))
    {
        return Err(format!(
            "entry {g} is {u}, each entry must be in 0..={DR_UNITS} (got {units:?})"
        ));
    }
    let sum: i64 = units.iter().sum();
    if sum != i64::from(DR_UNITS) {
        return Err(format!(
            "entries must sum to {DR_UNITS}, {units:?} sums to {sum}"
        ));
    }
    Ok(())
}

/// Splits `total` into integer parts proportional to `weights`, exactly summing to `total`,
/// by the largest remainder (Hamilton) method with exact integer arithmetic; ties go to the
/// lowest index. `None` when there are no weights or they are all zero.
pub fn apportion(weights: &[u64], total: u64) -> Option<Vec<u64>> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if sum == 0 {
        return None;
    }
    let total128 = u128::from(total);
    let mut parts = Vec::with_capacity(weights.len());
    let mut rems = Vec::with_capacity(weights.len());
    for &w in weights {
        let num = u128::from(w) * total128;
        parts.push((num / sum) as u64);
        rems.push(num % sum);
    }
    let given: u64 = parts.iter().sum();
    let mut left = total - given; // < weights.len(), since each remainder is below one part
    let mut order: Vec<usize> = (0..weights.len()).collect();
    // Largest remainder first; the stable sort keeps ties in index order.
    order.sort_by(|&a, &b| rems[b].cmp(&rems[a]));
    for &i in &order {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    Some(parts)
}

/// Rounds non-negative real `quotas` that sum (up to rounding error) to `total` into
/// integers summing to exactly `total`: every quota is floored, then the units still
/// missing go one each to the largest fractional parts, ties to the lowest index. Should
/// floating-point error make the floors exceed `total`, units are taken back from the
/// smallest fractional parts, ties to the highest index. Non-finite or negative quotas
/// count as 0.
pub fn largest_remainder(quotas: &[f64], total: u64) -> Vec<u64> {
    let clean: Vec<f64> = quotas
        .iter()
        .map(|&q| if q.is_finite() && q > 0.0 { q } else { 0.0 })
        .collect();
    let mut parts: Vec<u64> = clean.iter().map(|q| q.floor() as u64).collect();
    if parts.is_empty() {
        return parts;
    }
    let frac: Vec<f64> = clean.iter().map(|q| q - q.floor()).collect();
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&a, &b| frac[b].total_cmp(&frac[a]));
    let given: u64 = parts.iter().sum();
    if given < total {
        let mut left = total - given;
        // Normally one pass suffices; cycle in case the quotas summed to less than `total`.
        while left > 0 {
            for &i in &order {
                if left == 0 {
                    break;
                }
                parts[i] += 1;
                left -= 1;
            }
        }
    } else if given > total {
        let mut excess = given - total;
        while excess > 0 {
            for &i in order.iter().rev() {
                if excess == 0 {
                    break;
                }
                if parts[i] > 0 {
                    parts[i] -= 1;
                    excess -= 1;
                }
            }
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dr(u: &[u8]) -> DistributionRatio {
        DistributionRatio::new(u.to_vec()).unwrap()
    }

    #[test]
    fn new_checks_invariants() {
        assert!(DistributionRatio::new(vec![5, 5, 0, 0]).is_ok());
        assert!(DistributionRatio::new(vec![10]).is_ok());
        let e = DistributionRatio::new(vec![5, 4, 0, 0]).unwrap_err();
        assert!(e.to_string().contains("sum to 10"), "{e}");
        let e = DistributionRatio::new(vec![11, 0]).unwrap_err();
        assert!(e.to_string().contains("0..=10"), "{e}");
        assert!(DistributionRatio::new(Vec::<u8>::new()).is_err());
        assert!(DistributionRatio::from_signed(&[-1, 11]).is_err());
        assert!(DistributionRatio::from_signed(&[6, 4]).is_ok());
    }

    #[test]
    fn even_uses_largest_remainder_lowest_index_first() {
        assert_eq!(DistributionRatio::even(1).unwrap().units(), &[10]);
        assert_eq!(DistributionRatio::even(2).unwrap().units(), &[5, 5]);
        assert_eq!(DistributionRatio::even(3).unwrap().units(), &[4, 3, 3]);
        assert_eq!(DistributionRatio::even(4).unwrap().units(), &[3, 3, 2, 2]);
        assert_eq!(
            DistributionRatio::even(8).unwrap().units(),
            &[2, 2, 1, 1, 1, 1, 1, 1]
        );
        let e12 = DistributionRatio::even(12).unwrap();
        assert_eq!(e12.units(), &[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]);
        assert!(DistributionRatio::even(0).is_err());
    }

    #[test]
    fn exclusive_and_moved() {
        let d = DistributionRatio::exclusive(4, 2).unwrap();
        assert_eq!(d.units(), &[0, 0, 10, 0]);
        assert!(DistributionRatio::exclusive(4, 4).is_err());
        let m = d.moved(2, 0, 3).unwrap();
        assert_eq!(m.units(), &[3, 0, 7, 0]);
        assert!(d.moved(0, 2, 1).is_err());
        assert!(d.moved(2, 9, 1).is_err());
        assert_eq!(m.used_gpus().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(m.used_count(), 2);
        assert_eq!(m.to_string(), "[3,0,7,0]");
    }

    #[test]
    fn split_batch_sums_exactly() {
        assert_eq!(dr(&[5, 5, 0, 0]).split_batch(128), vec![64, 64, 0, 0]);
        assert_eq!(dr(&[1, 2, 7, 0]).split_batch(128), vec![13, 26, 89, 0]);
        // 3.3 / 3.3 / 3.4 of 11: floors 3,3,3, the last unit to the largest remainder.
        assert_eq!(dr(&[3, 3, 4]).split_batch(11), vec![3, 3, 5]);
        assert_eq!(dr(&[3, 3, 4]).split_batch(10), vec![3, 3, 4]);
        assert_eq!(dr(&[5, 5]).split_batch(1), vec![1, 0]);
        for b in 0..200 {
            for u in [[1u8, 2, 7, 0], [3, 3, 2, 2], [0, 0, 0, 10], [9, 0, 1, 0]] {
                let s = dr(&u).split_batch(b);
                assert_eq!(s.iter().sum::<u64>(), b);
                for g in 0..4 {
                    if u[g] == 0 {
                        assert_eq!(s[g], 0);
                    }
                }
            }
        }
    }

    #[test]
    fn largest_remainder_repairs_sums() {
        // Three equal shares: rounding gives 3+3+3, the repair gives the spare unit to GPU 0.
        let q = [10.0 / 3.0; 3];
        assert_eq!(largest_remainder(&q, 10), vec![4, 3, 3]);
        // Rounding half up would give 4+4+3 = 11.
        assert_eq!(largest_remainder(&[3.5, 3.5, 3.0], 10), vec![4, 3, 3]);
        assert_eq!(largest_remainder(&[], 10), Vec::<u64>::new());
        // Quotas summing slightly above the total are trimmed.
        assert_eq!(largest_remainder(&[5.0, 6.0], 10).iter().sum::<u64>(), 10);
        assert_eq!(
            DistributionRatio::from_weights(&[10.0, 20.0, 80.0, 0.0])
                .unwrap()
                .units(),
            &[1, 2, 7, 0]
        );
        assert!(DistributionRatio::from_weights(&[0.0, 0.0]).is_err());
        assert!(DistributionRatio::from_weights(&[f64::NAN, 1.0]).is_err());
    }

    #[test]
    fn apportion_is_exact() {
        assert_eq!(apportion(&[1, 1, 1], 10), Some(vec![4, 3, 3]));
        assert_eq!(apportion(&[0, 0], 10), None);
        assert_eq!(apportion(&[2, 1], 0), Some(vec![0, 0]));
        assert_eq!(apportion(&[7, 3], 1_000_001), Some(vec![700_001, 300_000]));
    }
}
