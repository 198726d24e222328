//! The manager-job process protocol (`multijob::protocol`): damaged lines in both directions,
//! and names that try to break out of their line.

use attnrt::base::{Devices, DistributionRatio};
use attnrt::multijob::JobFile;
use attnrt::multijob::protocol::{Command, Event, send};
use attnrt::train::RunSettings;
use attnrt::train::run::calibrate::Calibration;
use proptest::prelude::*;

use crate::harness::{NASTY_TEXT, bounded, config, damaged_text};

const JOBS: &str = "[[job]]\nname = \"a\"\nmodel = \"mlp\"\ndataset = \"synthetic\"\n\
                    batch_size = 8\niterations = 2\n";

fn open(name: &str) -> Command {
    let file = JobFile::parse(JOBS, "jobs.toml").unwrap();
    let mut config =
        file.session_config(0, "jobs.toml", &Devices::Cpu(2), &RunSettings::in_memory(3));
    config.name = name.to_string();
    Command::Open {
        config: Box::new(config),
    }
}

fn line(msg: &impl serde::Serialize) -> String {
    let mut out = Vec::new();
    send(&mut out, msg).unwrap();
    String::from_utf8(out).unwrap()
}

/// One line of every command and event.
fn seeds() -> Vec<String> {
    let dr = DistributionRatio::new(vec![3, 7]).unwrap();
    let mut v = vec![
        line(&open("a")),
        line(&Command::Calibrate { gpu: 1 }),
        line(&Command::Start { dr: dr.clone() }),
        line(&Command::SetDr { dr }),
        line(&Command::Stop),
    ];
    for e in [
        Event::Ready {
            start_step: 3,
            iterations: 10,
            batch_size: 8,
            notice: Some("fallback".into()),
            damaged: vec!["ckpt-0000000012.json: checksum".into()],
        },
        Event::Calibrated {
            calibration: Calibration {
                full_s: 0.02,
                half_s: 0.01,
                split_s: Some(0.012),
                grad_mb: 1.5,
                batch_size: 8,
            },
        },
        Event::Step {
            step: 4,
            step_s: 0.01,
            loss: 2.3,
            accuracy: 0.1,
            samples_per_s: 800.0,
            checkpoint_error: Some("disk full".into()),
        },
        Event::Finished {
            step: 10,
            loss: 0.5,
            accuracy: 0.9,
        },
        Event::Stopped { step: 5 },
        Event::Failed {
            message: "out of memory".into(),
        },
    ] {
        v.push(line(&e));
    }
    v
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn protocol_lines(text in damaged_text(&seeds().iter().map(String::as_str).collect::<Vec<_>>(), 4)) {
        bounded("protocol line", move || {
            // The readers take one line at a time, as the processes' line readers hand them.
            for l in text.lines() {
                let _ = serde_json::from_str::<Command>(l);
                let _ = serde_json::from_str::<Event>(l);
            }
        });
    }

    /// Whatever a job's name or a failure's message holds, it travels as one line and comes
    /// back unchanged: nothing in it can start a second command.
    #[test]
    fn names_stay_inside_their_line(
        parts in prop::collection::vec(
            prop_oneof![prop::sample::select(NASTY_TEXT).prop_map(str::to_string), ".*"],
            0..6,
        )
    ) {
        let name: String = parts.concat();
        for (text, back) in [
            (line(&open(&name)), None),
            (line(&Event::Failed { message: name.clone() }), Some(())),
        ] {
            prop_assert_eq!(text.matches('\n').count(), 1);
            prop_assert!(text.ends_with('\n'));
            let l = text.trim_end_matches('\n');
            match back {
                None => prop_assert_eq!(serde_json::from_str::<Command>(l).unwrap(), open(&name)),
                Some(()) => prop_assert_eq!(
                    serde_json::from_str::<Event>(l).unwrap(),
                    Event::Failed { message: name.clone() }
                ),
            }
        }
    }
}

/// A job named to inject a second command (a newline, then a `stop`) or to look like the
/// protocol's own separator is refused by the job file, naming the job's position; had it got
/// through, its `open` line would still be one line.
#[test]
fn a_job_name_cannot_inject_into_the_protocol() {
    for name in [
        "a\n{\"command\":\"stop\"}",
        "a\r{\"command\":\"stop\"}",
        "a\u{0}b",
        "\u{1b}[2Jclear",
    ] {
        let text = JOBS.replace("name = \"a\"", &format!("name = {}", toml_string(name)));
        let e = JobFile::parse(&text, "jobs.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("jobs.toml: job #1: name") && e.contains("control character"),
            "{name:?}: {e}"
        );
        let l = line(&open(name));
        assert_eq!(l.lines().count(), 1, "{l}");
        assert_eq!(
            serde_json::from_str::<Command>(l.trim_end()).unwrap(),
            open(name)
        );
    }
    // Separators that are not control characters are ordinary text inside a JSON string.
    let name = "a\"},{\"command\":\"stop\"} \u{2028}";
    let text = JOBS.replace("name = \"a\"", &format!("name = {}", toml_string(name)));
    let file = JobFile::parse(&text, "jobs.toml").unwrap();
    assert_eq!(file.sched.jobs[0].name, name);
    let l = line(&open(name));
    assert_eq!(l.lines().count(), 1);
    assert_eq!(
        serde_json::from_str::<Command>(l.trim_end()).unwrap(),
        open(name)
    );
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
