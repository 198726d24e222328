//! The hand-rolled flags of the benches with their own timing loop (`engine`, `cnn_step`,
//! `train_step`): a missing or bad value prints what the flag expects and exits 2, never a
//! silent default. Unknown flags pass (cargo bench adds `--bench`).

use std::str::FromStr;

pub struct Flags {
    bench: &'static str,
    args: std::iter::Skip<std::env::Args>,
}

impl Flags {
    /// The process's flags, for the bench named `bench` (the prefix of its errors).
    pub fn new(bench: &'static str) -> Flags {
        Flags {
            bench,
            args: std::env::args().skip(1),
        }
    }

    /// The next flag (or stray word).
    pub fn next_flag(&mut self) -> Option<String> {
        self.args.next()
    }

    /// Prints `<bench> bench: expected <text>` and exits 2.
    pub fn usage(&self, text: &str) -> ! {
        eprintln!("{} bench: expected {text}", self.bench);
        std::process::exit(2)
    }

    /// The word after the flag, or the usage `text`.
    pub fn word(&mut self, text: &str) -> String {
        match self.args.next() {
            Some(v) => v,
            None => self.usage(text),
        }
    }

    /// The value after the flag parsed as `T`, or the usage `text`.
    pub fn value<T: FromStr>(&mut self, text: &str) -> T {
        let word = self.word(text);
        word.trim().parse().unwrap_or_else(|_| self.usage(text))
    }

    /// A positive count after the flag, or the usage `text`.
    pub fn count(&mut self, text: &str) -> usize {
        match self.value(text) {
            0 => self.usage(text),
            n => n,
        }
    }

    /// A comma-separated list of `T` after the flag, each element parsed by `parse`; the
    /// usage `text` on an empty list or a bad element.
    pub fn list_with<T>(&mut self, text: &str, parse: impl Fn(&str) -> Option<T>) -> Vec<T> {
        let word = self.word(text);
        let items: Option<Vec<T>> = word.split(',').map(|v| parse(v.trim())).collect();
        match items {
            Some(items) if !items.is_empty() => items,
            _ => self.usage(text),
        }
    }

    /// A comma-separated list of `T` (by `FromStr`) after the flag.
    pub fn list<T: FromStr>(&mut self, text: &str) -> Vec<T> {
        self.list_with(text, |v| v.parse().ok())
    }
}
