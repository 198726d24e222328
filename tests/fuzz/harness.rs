//! What every target shares: the case count, the per-case time limit, and the mutations that
//! turn valid inputs into damaged ones.

use std::os::unix::thread::JoinHandleExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::Config;

/// Cases per target: `ATTNRT_FUZZ_CASES`, else enough for CI to stay quick.
pub fn cases() -> u32 {
    std::env::var("ATTNRT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// `cases() / divisor` cases (at least 10), for targets whose cases run a network; all of
/// them with `ATTNRT_FUZZ_FULL=1` (the long run).
pub fn config_scaled(divisor: u32) -> Config {
    let full = std::env::var_os("ATTNRT_FUZZ_FULL").is_some_and(|v| v == "1");
    let cases = if full {
        cases()
    } else {
        (cases() / divisor).max(10)
    };
    Config {
        cases,
        // Failures are reported with their input; the files proptest would keep them in are
        // not part of the repository.
        failure_persistence: None,
        ..Config::default()
    }
}

pub fn config() -> Config {
    config_scaled(1)
}

/// The most CPU time one case may take: more is a hang (`ATTNRT_FUZZ_CASE_S` overrides it).
/// CPU time, not wall time, so that a case waiting for a core on a loaded machine is not
/// taken for a hang; a case blocked without spinning is caught by a wall-clock limit of
/// 30 times that.
fn case_limit() -> Duration {
    let s = std::env::var("ATTNRT_FUZZ_CASE_S")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(1.0);
    Duration::from_secs_f64(s)
}

/// The CPU time `thread` has used, when the system can say.
fn cpu_time(thread: libc::pthread_t) -> Option<Duration> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `thread` belongs to a JoinHandle the caller holds (not yet joined), and `clock`
    // is a valid place for the id.
    if unsafe { libc::pthread_getcpuclockid(thread, &mut clock) } != 0 {
        return None;
    }
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a clock id from pthread_getcpuclockid and a valid timespec to fill.
    if unsafe { libc::clock_gettime(clock, &mut t) } != 0 {
        return None;
    }
    Some(Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
}

/// Runs `case` on a thread of its own and fails, naming `what`, when it panics or runs past
/// the limits (the stuck thread is left behind: the test has failed by then).
pub fn bounded<F: FnOnce() + Send + 'static>(what: &str, case: F) {
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let handle = std::thread::spawn(move || {
        case();
        let _ = tx.send(());
    });
    let (limit, wall_limit) = (case_limit(), case_limit() * 30);
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(()) => {
                let _ = handle.join();
                return;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let panic = handle.join().err().map(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                });
                panic!("{what}: panicked: {}", panic.unwrap_or_default());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let cpu = cpu_time(handle.as_pthread_t()).unwrap_or_default();
                let wall = started.elapsed();
                if cpu > limit || wall > wall_limit {
                    panic!(
                        "{what}: still running after {:.1} s of CPU time, {:.1} s in all (a hang)",
                        cpu.as_secs_f64(),
                        wall.as_secs_f64()
                    );
                }
            }
        }
    }
}

/// Numbers a damaged file may hold where a valid one had a number.
pub const NASTY_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "-0.0",
    "1e308",
    "-1e308",
    "1e-300",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "4294967296",
    "1099511627776",
    "99999999999999999999999999",
    "0.5",
    "1e",
    "0x10",
    "",
];

/// Text a damaged file may hold anywhere.
pub const NASTY_TEXT: &[&str] = &[
    "\u{0}",
    "\n",
    "\r\n",
    "\"",
    "\\",
    "{",
    "}",
    "[",
    "]",
    ",",
    "=",
    ":",
    "/",
    "../",
    "\u{202e}",
    "\u{feff}",
    "é",
    "💥",
    "\u{1b}[2J",
    "\t",
    " ",
];

/// One change to a byte string.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Flip bit `bit` of the byte at `at` (a fraction of the length).
    Flip { at: f64, bit: u8 },
    /// Cut the input to this fraction of its length.
    Truncate(f64),
    /// Remove `len` bytes at `at`.
    Delete { at: f64, len: usize },
    /// Copy `len` bytes from `from` over the bytes at `to` (splicing the input into itself).
    Splice { from: f64, to: f64, len: usize },
    /// Insert bytes at `at`.
    Insert { at: f64, bytes: Vec<u8> },
    /// Replace the `nth` number (run of digits, `.`, `e`, `-`) with `with`.
    Number { nth: usize, with: String },
    /// Set the byte at `at`.
    Set { at: f64, byte: u8 },
}

fn index(at: f64, len: usize) -> usize {
    ((at * len as f64) as usize).min(len.saturating_sub(1))
}

impl Mutation {
    pub fn apply(&self, b: &mut Vec<u8>) {
        let len = b.len();
        match self {
            Mutation::Flip { at, bit } if len > 0 => b[index(*at, len)] ^= 1 << (bit % 8),
            Mutation::Set { at, byte } if len > 0 => b[index(*at, len)] = *byte,
            Mutation::Truncate(f) => b.truncate((f * len as f64) as usize),
            Mutation::Delete { at, len: n } if len > 0 => {
                let i = index(*at, len);
                b.drain(i..(i + n).min(len));
            }
            Mutation::Splice { from, to, len: n } if len > 0 => {
                let (f, t) = (index(*from, len), index(*to, len));
                let n = (*n).min(len - f).min(len - t);
                let chunk = b[f..f + n].to_vec();
                b[t..t + n].copy_from_slice(&chunk);
            }
            Mutation::Insert { at, bytes } => {
                let i = if len == 0 { 0 } else { index(*at, len + 1) };
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Number { nth, with } => {
                let spans = number_spans(b);
                if !spans.is_empty() {
                    let (s, e) = spans[nth % spans.len()];
                    b.splice(s..e, with.bytes());
                }
            }
            _ => {}
        }
    }
}

/// `(start, end)` of each number-like run of an input read as text.
fn number_spans(b: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let mut s = i;
            if s > 0 && b[s - 1] == b'-' {
                s -= 1;
            }
            while i < b.len() && (b[i].is_ascii_digit() || b".eE+-".contains(&b[i])) {
                i += 1;
            }
            spans.push((s, i));
        } else {
            i += 1;
        }
    }
    spans
}

fn fraction() -> impl Strategy<Value = f64> {
    0.0..1.0f64
}

/// Any one mutation.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    let text = prop::sample::select(NASTY_TEXT).prop_map(|s| s.as_bytes().to_vec());
    let number = prop::sample::select(NASTY_NUMBERS).prop_map(|s| s.to_string());
    prop_oneof![
        1 => (fraction(), any::<u8>()).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        1 => fraction().prop_map(Mutation::Truncate),
        1 => (fraction(), 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => (fraction(), fraction(), 1usize..256)
            .prop_map(|(from, to, len)| Mutation::Splice { from, to, len }),
        1 => (fraction(), prop_oneof![text, prop::collection::vec(any::<u8>(), 1..16)])
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        3 => (any::<usize>(), number).prop_map(|(nth, with)| Mutation::Number { nth, with }),
        1 => (fraction(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
    ]
}

/// One of `seeds` with up to `most` mutations applied, or (one case in eight) random bytes.
pub fn damaged(seeds: Vec<Vec<u8>>, most: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        7 => (
            prop::sample::select(seeds),
            prop::collection::vec(mutation(), 0..=most)
        )
            .prop_map(|(mut seed, ms)| {
                for m in &ms {
                    m.apply(&mut seed);
                }
                seed
            }),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

/// Like [`damaged`], as text (invalid UTF-8 replaced), for parsers that take `&str`.
pub fn damaged_text(seeds: &[&str], most: usize) -> impl Strategy<Value = String> {
    let seeds = seeds.iter().map(|s| s.as_bytes().to_vec()).collect();
    damaged(seeds, most).prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A safetensors file `header` (JSON) followed by `data`, with the length the header has.
pub fn safetensors_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header.as_bytes());
    b.extend(data);
    b
}

/// A safetensors file damaged where parsers look: restructured (tensors dropped, renamed,
/// reshaped, retyped, filled with NaN; metadata replaced), its header's JSON mutated as text
/// with the length prefix rewritten to match (so the damage reaches the tensors, not just the
/// length check), or the whole file mutated as bytes.
pub fn damaged_safetensors(seeds: Vec<Vec<u8>>, most: usize) -> impl Strategy<Value = Vec<u8>> {
    let whole = damaged(seeds.clone(), most);
    let header = (
        prop::sample::select(seeds.clone()),
        prop::collection::vec(mutation(), 1..=most.max(1)),
        prop::collection::vec(mutation(), 0..=2),
    )
        .prop_map(|(seed, header_ms, data_ms)| {
            let n = seed
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
                .unwrap_or(0)
                .min(seed.len().saturating_sub(8));
            let mut header = seed[8..8 + n].to_vec();
            for m in &header_ms {
                m.apply(&mut header);
            }
            let mut data = seed[8 + n..].to_vec();
            for m in &data_ms {
                m.apply(&mut data);
            }
            let mut b = (header.len() as u64).to_le_bytes().to_vec();
            b.extend(header);
            b.extend(data);
            b
        });
    prop_oneof![1 => whole, 1 => header, 2 => restructured(seeds, most)]
}

/// One change to a safetensors file's structure, which keeps it a well-formed file: what
/// the loaders behind the format's own checks meet.
#[derive(Clone, Debug)]
pub enum Restructure {
    Drop(usize),
    Rename(usize, String),
    /// A new shape; the data is cut or repeated to fit it.
    Reshape(usize, Vec<usize>),
    /// Another dtype; the data is cut or repeated to fit it.
    Retype(usize, &'static str),
    /// Every 4-byte value set to these bytes (NaN, infinity, huge, ...).
    Fill(usize, [u8; 4]),
    /// A metadata value replaced (or added under key `__new`).
    Meta(usize, String),
    MetaDrop(usize),
}

const DTYPES: &[(&str, usize)] = &[
    ("F32", 4),
    ("F16", 2),
    ("BF16", 2),
    ("F64", 8),
    ("U8", 1),
    ("I8", 1),
    ("BOOL", 1),
    ("I32", 4),
    ("I64", 8),
    ("U16", 2),
];

fn restructure() -> impl Strategy<Value = Restructure> {
    let dim = prop_oneof![4 => 0usize..9, 2 => 9usize..80, 1 => Just(1usize << 20)];
    let fill = prop::sample::select(vec![
        f32::NAN.to_le_bytes(),
        f32::INFINITY.to_le_bytes(),
        f32::MAX.to_le_bytes(),
        (-0.0f32).to_le_bytes(),
        [0xff; 4],
        [0; 4],
    ]);
    let text = prop_oneof![
        prop::sample::select(NASTY_NUMBERS).prop_map(str::to_string),
        prop::sample::select(NASTY_TEXT).prop_map(str::to_string),
        "[a-z_.0-9]{0,12}",
    ];
    prop_oneof![
        1 => any::<usize>().prop_map(Restructure::Drop),
        1 => (any::<usize>(), text.clone()).prop_map(|(i, n)| Restructure::Rename(i, n)),
        1 => (any::<usize>(), prop::collection::vec(dim, 0..5))
            .prop_map(|(i, s)| Restructure::Reshape(i, s)),
        1 => (any::<usize>(), prop::sample::select(DTYPES).prop_map(|d| d.0))
            .prop_map(|(i, d)| Restructure::Retype(i, d)),
        1 => (any::<usize>(), fill).prop_map(|(i, f)| Restructure::Fill(i, f)),
        2 => (any::<usize>(), text).prop_map(|(i, v)| Restructure::Meta(i, v)),
        1 => any::<usize>().prop_map(Restructure::MetaDrop),
    ]
}

/// A tensor of a file being restructured: name, dtype, shape, bytes.
type Entry = (String, String, Vec<usize>, Vec<u8>);
/// Its metadata: key, value.
type Meta = Vec<(String, String)>;

fn width(dtype: &str) -> usize {
    DTYPES.iter().find(|d| d.0 == dtype).map_or(1, |d| d.1)
}

/// `data` cut or repeated to `len` bytes.
fn fit(data: &[u8], len: usize) -> Vec<u8> {
    if data.is_empty() {
        return vec![0; len];
    }
    data.iter().copied().cycle().take(len).collect()
}

/// The tensors and metadata of a well-formed file, in offset order.
fn decode(bytes: &[u8]) -> Option<(Vec<Entry>, Meta)> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(bytes.get(8..8 + n)?).ok()?;
    let data = &bytes[8 + n..];
    let mut meta = Vec::new();
    let mut tensors = Vec::new();
    for (name, v) in header.as_object()? {
        if name == "__metadata__" {
            for (k, v) in v.as_object()? {
                meta.push((k.clone(), v.as_str()?.to_string()));
            }
            continue;
        }
        let dtype = v["dtype"].as_str()?.to_string();
        let shape: Vec<usize> = v["shape"]
            .as_array()?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()?;
        let off = v["data_offsets"].as_array()?;
        let (a, b) = (off[0].as_u64()? as usize, off[1].as_u64()? as usize);
        tensors.push((name.clone(), dtype, shape, data.get(a..b)?.to_vec()));
    }
    Some((tensors, meta))
}

fn encode(tensors: &[Entry], meta: &[(String, String)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !meta.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> = meta
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        header.insert("__metadata__".into(), m.into());
    }
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend(bytes);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    safetensors_bytes(&serde_json::Value::Object(header).to_string(), &data)
}

impl Restructure {
    fn apply(&self, tensors: &mut Vec<Entry>, meta: &mut Meta) {
        let n = tensors.len();
        // Tensors of more than 16 MB are not made: the cases stay fast, and a header that
        // claims more than the file holds is the other strategies' business.
        let limit = 1 << 24;
        match self {
            Restructure::Drop(i) if n > 0 => {
                tensors.remove(i % n);
            }
            Restructure::Rename(i, name) if n > 0 => tensors[i % n].0 = name.clone(),
            Restructure::Reshape(i, shape) if n > 0 => {
                let t = &mut tensors[i % n];
                let len = shape
                    .iter()
                    .try_fold(width(&t.1), |a, &d| a.checked_mul(d))
                    .filter(|&l| l <= limit);
                if let Some(len) = len {
                    t.2 = shape.clone();
                    t.3 = fit(&t.3, len);
                }
            }
            Restructure::Retype(i, dtype) if n > 0 => {
                let t = &mut tensors[i % n];
                let len = t.2.iter().product::<usize>() * width(dtype);
                if len <= limit {
                    t.1 = dtype.to_string();
                    t.3 = fit(&t.3, len);
                }
            }
            Restructure::Fill(i, value) if n > 0 => {
                for c in tensors[i % n].3.chunks_exact_mut(4) {
                    c.copy_from_slice(value);
                }
            }
            Restructure::Meta(i, value) => {
                if meta.is_empty() {
                    meta.push(("__new".into(), value.clone()));
                } else {
                    let k = i % meta.len();
                    meta[k].1 = value.clone();
                }
            }
            Restructure::MetaDrop(i) if !meta.is_empty() => {
                let k = i % meta.len();
                meta.remove(k);
            }
            _ => {}
        }
    }
}

/// A seed with up to `most` structural changes (see [`Restructure`]), re-encoded well-formed.
pub fn restructured(seeds: Vec<Vec<u8>>, most: usize) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(seeds),
        prop::collection::vec(restructure(), 1..=most.max(1)),
    )
        .prop_map(|(seed, changes)| {
            let Some((mut tensors, mut meta)) = decode(&seed) else {
                return seed;
            };
            for c in &changes {
                c.apply(&mut tensors, &mut meta);
            }
            encode(&tensors, &meta)
        })
}

/// The harness itself: a case that spins is a hang after its CPU limit, a panic is a
/// failure, and either names the target.
#[test]
fn a_spinning_or_panicking_case_fails_naming_the_target() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let spinning = stop.clone();
    let hang = std::panic::catch_unwind(|| {
        bounded("spinner", move || {
            while !spinning.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        })
    });
    // The spinning thread outlives the failed case; stop it.
    stop.store(true, Ordering::Relaxed);
    let msg = *hang.unwrap_err().downcast::<String>().unwrap();
    assert!(
        msg.starts_with("spinner: ") && msg.contains("a hang"),
        "{msg}"
    );
    let panic = std::panic::catch_unwind(|| bounded("panicker", || panic!("boom")));
    let msg = *panic.unwrap_err().downcast::<String>().unwrap();
    assert!(msg.starts_with("panicker: panicked: boom"), "{msg}");
}
