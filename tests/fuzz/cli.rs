//! Command-line lists: device sets and single devices (`base::devices`: `--gpus`,
//! `--device`), distribution ratios (`base::dr`: `--dr`), window lists (`--windows`) and
//! precisions.

use attnrt::base::devices::MAX_DEVICES;
use attnrt::base::{Device, DeviceList, Devices, DistributionRatio};
use attnrt::model::config::parse_windows;
use attnrt::train::parse_precision;
use proptest::prelude::*;

use crate::harness::{bounded, config, damaged_text};

const LISTS: &[&str] = &[
    "all",
    "cpu",
    "cpu:4",
    "cuda",
    "cuda:0",
    "cuda:0,1",
    "0,1,2,3",
    " 1, 0",
    "auto",
    "5,5",
    "2,8",
    "10,0,0,0",
    "3,3,2,2",
    "1,2,4,8,1,2,4,8",
    "[1, 2, 4, 8]",
    "f32",
    "bf16",
    "tf32",
];

fn exercise(text: &str) {
    if let Ok(DeviceList::Named(devices)) = text.parse::<DeviceList>() {
        assert!(devices.count() >= 1 && devices.count() <= MAX_DEVICES);
        // What a run does with the set first: an even split over its devices.
        let dr = DistributionRatio::even(devices.count()).unwrap();
        assert_eq!(dr.gpus(), devices.count());
        if let Devices::Gpus(o) = &devices {
            assert!(!o.is_empty());
        }
    }
    let _ = text.parse::<Device>();
    for gpus in [1, 2, 4, 8] {
        if let Ok(dr) = DistributionRatio::parse(text, gpus) {
            assert_eq!(dr.gpus(), gpus);
            assert_eq!(dr.units().iter().map(|&u| u32::from(u)).sum::<u32>(), 10);
            let _ = dr.split_batch(attnrt::sched::jobs::limits::MAX_BATCH_SIZE);
        }
    }
    let _ = parse_windows(text);
    let _ = parse_precision(text);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn cli_lists(text in damaged_text(LISTS, 4)) {
        bounded("command-line list", move || exercise(&text));
    }
}

/// `--gpus cpu:N` with an N no machine has is refused at once, not a run that allocates a
/// shard per N.
#[test]
fn a_device_list_claiming_terabytes_of_shards_is_refused() {
    for text in ["cpu:1000000000000", "cpu:18446744073709551615", "cpu:4097"] {
        let e = text.parse::<DeviceList>().unwrap_err();
        assert!(e.contains(text) && e.contains("4096"), "{e}");
    }
    assert!("cpu:4096".parse::<DeviceList>().is_ok());
}

#[test]
fn dr_parse_names_the_problem() {
    assert_eq!(
        DistributionRatio::parse(" 2, 8", 2).unwrap().units(),
        &[2, 8]
    );
    for (text, gpus, problem) in [
        ("2,8", 3, "has 2 entries for 3 devices"),
        ("2;8", 2, "tenths"),
        ("-2,12", 2, "0..=10"),
        ("99999999999999999999,1", 2, "tenths"),
        ("", 1, "tenths"),
    ] {
        let e = DistributionRatio::parse(text, gpus).unwrap_err();
        assert!(e.contains(problem), "{text}: {e}");
    }
}
