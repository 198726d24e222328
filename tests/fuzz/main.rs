//! Fuzzing of every parser of untrusted input, one module per kind of input: valid inputs
//! damaged (bit flips, truncation, splicing, insertions, numbers replaced by huge, negative,
//! NaN or malformed ones, unicode and control characters) and random bytes. A case passes
//! when the parser returns, value or error, within the time limit: a panic or a hang fails
//! it. Each target runs `ATTNRT_FUZZ_CASES` cases (default 2000, for CI);
//! `scripts/fuzz-long.sh` runs 100 000 each. See docs/FUZZING.md.

#[path = "../common/mod.rs"]
mod common;

mod checkpoint;
mod cli;
mod dataset;
mod harness;
mod jobfile;
mod protocol;
mod safetensors;
mod safety;
