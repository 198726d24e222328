//! Tracking sequences as datasets ship them, and their frames decoded ahead of the tracker.
//!
//! A sequence is a folder of frames (JPEG or PNG, in name order) with its ground truth:
//! - plain and GOT-10k: the frames and `groundtruth.txt` in the folder (GOT-10k's
//!   `absence.label`, `cover.label` or `meta_info.ini` mark its layout; its test set gives
//!   only the first box);
//! - LaSOT: frames in `img/`, `groundtruth.txt` beside it;
//! - OTB: frames in `img/`, `groundtruth_rect.txt` beside it.
//!
//! `groundtruth.txt` holds one `x,y,w,h` line per frame (separated by commas, tabs or
//! spaces), the first being the initial box. A line with NaN or a non-positive width or
//! height marks a frame without the target (LaSOT and UAV123 do this): the box is `None`.
//! A dataset root is a folder whose subfolders (to three levels down) are sequences.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::frame::{BBox, Frame};
use crate::error::{Error, Result};

/// Ground-truth file names, in the order they are looked for.
const GROUNDTRUTH_FILES: [&str; 2] = ["groundtruth.txt", "groundtruth_rect.txt"];

/// Files whose presence marks a GOT-10k sequence.
const GOT10K_MARKERS: [&str; 3] = ["absence.label", "cover.label", "meta_info.ini"];

/// How deep below a dataset root sequences are looked for.
const MAX_DEPTH: usize = 3;

/// Where a sequence's files are, which also names its template update interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetLayout {
    /// Frames and `groundtruth.txt` in one folder.
    Plain,
    /// GOT-10k: as plain, with its label files.
    Got10k,
    /// LaSOT: `img/` and `groundtruth.txt`.
    Lasot,
    /// OTB: `img/` and `groundtruth_rect.txt`.
    Otb,
}

impl DatasetLayout {
    /// The original's update interval for the dataset: 25 for GOT-10k (test), 200 for
    /// LaSOT, and 200 for datasets its table does not list (OTB, plain folders).
    pub fn update_interval(self) -> usize {
        match self {
            DatasetLayout::Got10k => 25,
            DatasetLayout::Plain | DatasetLayout::Lasot | DatasetLayout::Otb => 200,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DatasetLayout::Plain => "frames folder",
            DatasetLayout::Got10k => "GOT-10k",
            DatasetLayout::Lasot => "LaSOT",
            DatasetLayout::Otb => "OTB",
        }
    }
}

/// A ground-truth file: one box per line, `None` where the target is absent.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundTruth {
    pub path: PathBuf,
    pub boxes: Vec<Option<BBox>>,
}

impl GroundTruth {
    /// Parses `text` (the contents of `path`); errors name the file and the line.
    pub fn parse(path: &Path, text: &str) -> Result<GroundTruth> {
        let lines: Vec<&str> = text.lines().collect();
        let used = lines
            .iter()
            .rposition(|l| !l.trim().is_empty())
            .map_or(0, |i| i + 1);
        let mut boxes = Vec::with_capacity(used);
        for (i, line) in lines[..used].iter().enumerate() {
            let ctx = || format!("{}:{}", path.display(), i + 1);
            let fields: Vec<&str> = line
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|f| !f.is_empty())
                .collect();
            if fields.len() != 4 {
                return Err(Error::invalid(
                    ctx(),
                    format!(
                        "expected 4 numbers x,y,w,h separated by commas, tabs or spaces, found {} \
                         ('{}')",
                        fields.len(),
                        line.trim()
                    ),
                ));
            }
            let mut v = [0.0f64; 4];
            for (dst, f) in v.iter_mut().zip(&fields) {
                *dst = match f.parse::<f64>() {
                    Ok(x) if !x.is_infinite() => x,
                    _ => {
                        return Err(Error::invalid(
                            ctx(),
                            format!("'{f}' is not a number (in '{}')", line.trim()),
                        ));
                    }
                };
            }
            let b = BBox::from_array(v);
            boxes.push(b.is_valid().then_some(b));
        }
        Ok(GroundTruth {
            path: path.to_path_buf(),
            boxes,
        })
    }

    /// Reads and parses a ground-truth file.
    pub fn read(path: &Path) -> Result<GroundTruth> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        GroundTruth::parse(path, &text)
    }

    /// The first box, which starts tracking; an error naming line 1 when it is absent.
    pub fn initial(&self) -> Result<BBox> {
        match self.boxes.first() {
            Some(Some(b)) => Ok(*b),
            Some(None) => Err(Error::invalid(
                format!("{}:1", self.path.display()),
                "the initial box must have finite values and a positive width and height \
                 (NaN or a non-positive size marks an absent target, which cannot start tracking)",
            )),
            None => Err(Error::invalid(
                self.path.display().to_string(),
                "holds no box; the first line must be the initial box x,y,w,h",
            )),
        }
    }
}

/// One sequence: its frames in order and its ground truth, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// The folder's name.
    pub name: String,
    pub dir: PathBuf,
    pub layout: DatasetLayout,
    pub frames: Vec<PathBuf>,
    pub groundtruth: Option<GroundTruth>,
}

impl Sequence {
    /// Opens the sequence in `dir` (any layout above); an error when it has no frames or
    /// more boxes than frames.
    pub fn open(dir: &Path) -> Result<Sequence> {
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
            ));
        }
        let img = dir.join("img");
        let frame_dir = if img.is_dir() { img } else { dir.to_path_buf() };
        let frames = frame_files(&frame_dir)?;
        if frames.is_empty() {
            return Err(Error::invalid(
                dir.display().to_string(),
                "holds no frames (JPEG or PNG files, here or in img/)",
            ));
        }
        let gt_path = GROUNDTRUTH_FILES
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file());
        let layout = match (
            frame_dir != dir,
            gt_path.as_ref().and_then(|p| p.file_name()),
        ) {
            (true, Some(n)) if n == "groundtruth_rect.txt" => DatasetLayout::Otb,
            (true, _) => DatasetLayout::Lasot,
            (false, _) if GOT10K_MARKERS.iter().any(|m| dir.join(m).is_file()) => {
                DatasetLayout::Got10k
            }
            (false, _) => DatasetLayout::Plain,
        };
        let groundtruth = gt_path.map(|p| GroundTruth::read(&p)).transpose()?;
        if let Some(gt) = &groundtruth
            && gt.boxes.len() > frames.len()
        {
            return Err(Error::invalid(
                gt.path.display().to_string(),
                format!(
                    "{} boxes for {} frames in {}",
                    gt.boxes.len(),
                    frames.len(),
                    frame_dir.display()
                ),
            ));
        }
        Ok(Sequence {
            name: dir.file_name().map_or_else(
                || dir.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            dir: dir.to_path_buf(),
            layout,
            frames,
            groundtruth,
        })
    }

    /// Whether the ground truth has a line for every frame (then the run is evaluated).
    pub fn fully_annotated(&self) -> bool {
        self.groundtruth
            .as_ref()
            .is_some_and(|g| g.boxes.len() == self.frames.len())
    }
}

/// The sequences under `dir`: `dir` itself when it is one, else every sequence folder
/// below it (to three levels), in name order.
pub fn find_sequences(dir: &Path) -> Result<Vec<Sequence>> {
    if !dir.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
        ));
    }
    let mut found = Vec::new();
    collect(dir, 0, &mut found)?;
    if found.is_empty() {
        return Err(Error::invalid(
            dir.display().to_string(),
            "holds no frames (JPEG or PNG, here or in img/) and no sequence folders",
        ));
    }
    found.iter().map(|d| Sequence::open(d)).collect()
}

fn is_sequence(dir: &Path) -> Result<bool> {
    let img = dir.join("img");
    Ok(!frame_files(if img.is_dir() { &img } else { dir })?.is_empty())
}

fn collect(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) -> Result<()> {
    if is_sequence(dir)? {
        found.push(dir.to_path_buf());
        return Ok(());
    }
    if depth >= MAX_DEPTH {
        return Ok(());
    }
    let mut subs: Vec<PathBuf> = read_dir(dir)?.into_iter().filter(|p| p.is_dir()).collect();
    subs.sort();
    for s in subs {
        collect(&s, depth + 1, found)?;
    }
    Ok(())
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect()
}

/// The JPEG and PNG files of `dir`, sorted by name.
fn frame_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = read_dir(dir)?
        .into_iter()
        .filter(|p| {
            p.is_file()
                && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png")
                })
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Decodes a JPEG or PNG file into an RGB frame; errors name the file.
pub fn decode_frame(path: &Path) -> Result<Frame> {
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| {
            Error::invalid(
                path.display().to_string(),
                format!("cannot decode the frame: {e}"),
            )
        })?
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    Frame::new(h, w, img.into_raw())
}

struct PrefetchState {
    ready: BTreeMap<usize, Result<Frame>>,
    /// The next index the consumer takes.
    wanted: usize,
    /// The next index a worker claims.
    claimed: usize,
    stop: bool,
}

/// Frames decoded ahead by worker threads, handed out in order. At most `ahead` frames wait
/// decoded at a time, so memory stays bounded however long the sequence.
pub struct Prefetch {
    shared: Arc<(Mutex<PrefetchState>, Condvar)>,
    total: usize,
    next: usize,
    workers: Vec<JoinHandle<()>>,
}

impl Prefetch {
    /// Starts `threads` decoders over `files`, keeping up to `ahead` frames ready.
    pub fn new(files: Vec<PathBuf>, threads: usize, ahead: usize) -> Prefetch {
        let total = files.len();
        let ahead = ahead.max(1);
        let shared = Arc::new((
            Mutex::new(PrefetchState {
                ready: BTreeMap::new(),
                wanted: 0,
                claimed: 0,
                stop: false,
            }),
            Condvar::new(),
        ));
        let files = Arc::new(files);
        let workers = (0..threads.max(1))
            .map(|_| {
                let (shared, files) = (shared.clone(), files.clone());
                std::thread::spawn(move || {
                    let (lock, cv) = &*shared;
                    loop {
                        let i = {
                            let Ok(mut s) = lock.lock() else { return };
                            while !s.stop && s.claimed < total && s.claimed >= s.wanted + ahead {
                                s = match cv.wait(s) {
                                    Ok(s) => s,
                                    Err(_) => return,
                                };
                            }
                            if s.stop || s.claimed >= total {
                                return;
                            }
                            s.claimed += 1;
                            s.claimed - 1
                        };
                        let frame = decode_frame(&files[i]);
                        let Ok(mut s) = lock.lock() else { return };
                        s.ready.insert(i, frame);
                        cv.notify_all();
                    }
                })
            })
            .collect();
        Prefetch {
            shared,
            total,
            next: 0,
            workers,
        }
    }
}

impl Iterator for Prefetch {
    type Item = Result<Frame>;

    fn next(&mut self) -> Option<Result<Frame>> {
        if self.next >= self.total {
            return None;
        }
        let (lock, cv) = &*self.shared;
        let poisoned = || Error::invalid("frame decoding", "a decoder thread panicked");
        let mut s = match lock.lock() {
            Ok(s) => s,
            Err(_) => return Some(Err(poisoned())),
        };
        loop {
            if let Some(f) = s.ready.remove(&self.next) {
                self.next += 1;
                s.wanted = self.next;
                cv.notify_all();
                return Some(f);
            }
            s = match cv.wait(s) {
                Ok(s) => s,
                Err(_) => return Some(Err(poisoned())),
            };
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.0.lock() {
            s.stop = true;
        }
        self.shared.1.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
