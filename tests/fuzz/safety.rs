//! Safety of inputs beyond parsing: job names cannot reach outside the checkpoint directory,
//! and no script unpickles a file unless told to trust it.

use std::path::Path;

use attnrt::multijob::JobFile;
use attnrt::multijob::supervisor::job_checkpoint_dir;
use attnrt::sched::jobs::file_name_of;
use proptest::prelude::*;

use crate::harness::{NASTY_TEXT, config};

proptest! {
    #![proptest_config(config())]

    /// Whatever a job is called, its checkpoint directory is one plain entry of the
    /// checkpoint directory: `job-` and letters, digits, `-`, `_`, `.`, never `..` or hidden.
    #[test]
    fn job_names_stay_in_the_checkpoint_directory(
        parts in prop::collection::vec(
            prop_oneof![prop::sample::select(NASTY_TEXT).prop_map(str::to_string), ".*"],
            0..6,
        )
    ) {
        let name = parts.concat();
        let root = Path::new("/run/ckpt");
        let dir = job_checkpoint_dir(root, &name);
        prop_assert_eq!(dir.parent(), Some(root));
        let entry = dir.file_name().unwrap().to_str().unwrap().to_string();
        prop_assert!(entry.starts_with("job-"));
        let stem = file_name_of(&name);
        prop_assert!(!stem.starts_with('.'));
        prop_assert!(stem.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
        prop_assert_eq!(dir.components().count(), root.components().count() + 1);
    }
}

fn job_file(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "[[job]]\nname = {}\nmodel = \"mlp\"\ndataset = \"synthetic\"\nbatch_size = 8\n\
                 iterations = 2\n",
                toml::Value::String(n.to_string())
            )
        })
        .collect()
}

/// Names with path separators or dots are mapped (`../../etc/x` trains in `job-_._.._etc_x`);
/// names with NUL, newlines or other control characters are refused; two names that map to
/// one directory are refused, so two jobs never share checkpoints.
#[test]
fn job_names_are_mapped_or_refused() {
    let root = Path::new("ckpt");
    for (name, entry) in [
        ("../../etc/x", "job-_._.._etc_x"),
        ("/etc/passwd", "job-_etc_passwd"),
        ("..", "job-_."),
        (".hidden", "job-_hidden"),
        ("a\\b", "job-a_b"),
        ("résumé 1", "job-r_sum__1"),
    ] {
        let file = JobFile::parse(&job_file(&[name]), "jobs.toml").unwrap();
        let dir = job_checkpoint_dir(root, &file.sched.jobs[0].name);
        assert_eq!(dir, root.join(entry), "{name}");
    }
    for name in ["a\u{0}b", "a\nb", "a\rb", "tab\there", "\u{7f}"] {
        let e = JobFile::parse(&job_file(&[name]), "jobs.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("jobs.toml: job #1: name"), "{name:?}: {e}");
    }
    let long = "x".repeat(200);
    let e = JobFile::parse(&job_file(&[&long]), "jobs.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most 128 bytes"), "{e}");
    let e = JobFile::parse(&job_file(&["a b", "a/b"]), "jobs.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("jobs.toml: job 'a/b': name") && e.contains("'a_b'"),
        "{e}"
    );
}

/// Every `torch.load` in the scripts passes `weights_only=True`, except the one behind
/// `--trust-pickle`; nothing calls `pickle.load` or `numpy.load(allow_pickle=True)`.
#[test]
fn no_script_unpickles_without_being_told_to() {
    let dir = crate::common::repo_file("scripts");
    let mut loads = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "py") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for (i, _) in text.match_indices("torch.load(") {
            loads += 1;
            let call = &text[i..text[i..].find(')').map_or(text.len(), |e| i + e)];
            let before = &text[..i];
            let guarded = before
                .rfind("if not trust_pickle")
                .is_some_and(|g| before[g..].lines().count() < 20);
            assert!(
                call.contains("weights_only=True")
                    || (call.contains("weights_only=False") && guarded),
                "{name}: {call}"
            );
        }
        for bad in ["pickle.load(", "pickle.loads(", "allow_pickle=True"] {
            assert!(!text.contains(bad), "{name} calls {bad}");
        }
    }
    assert!(
        loads >= 2,
        "found {loads} torch.load calls under {}",
        dir.display()
    );
}
