//! Training data: a seeded synthetic set and the CIFAR-10 and MNIST file formats, held in
//! memory and read by sample index.
//!
//! - `synthetic` (or `synthetic:N`, N samples, default 50 000): 32x32x3 images, 10 classes;
//!   `synthetic:N,S` the same with SxSx3 images (the CNNs that need larger ones).
//!   Each class has a fixed random smooth pattern; a sample is its class pattern plus
//!   Gaussian noise (a window of a noise table, at an offset and with a sign drawn per
//!   sample), all drawn from the seed, so a model can learn it and accuracy rises.
//! - `cifar10:DIR`: `data_batch_1.bin` .. `data_batch_5.bin`, records of 1 label byte and
//!   3072 pixel bytes (channel-major 32x32x3). Missing batches after the first are allowed
//!   (a small subset), a missing first one is an error.
//! - `mnist:DIR`: `train-images-idx3-ubyte` and `train-labels-idx1-ubyte` (IDX format).
//! - `folder:DIR` or `folder:DIR,S`: an ImageNet-style folder, one subfolder of JPEG or PNG
//!   images per class, read from disk as the batches are assembled and augmented to SxSx3
//!   (default 224; [`folder`]). Only the file list is held in memory.
//! - `tensors:FILE`: a safetensors file of `images` (N, C, H, W) (f32, f16 or bf16, used as
//!   they are: already normalised) and `labels` (N,) (I64 or I32), read *in file order*,
//!   epoch after epoch, without augmentation: a fixed sequence of batches that another
//!   framework can replay exactly (`scripts/compare_loss_curves.py`). The classes are the
//!   metadata's `classes`, else the largest label plus one.
//!
//! Pixels become `(x / 255 - 0.5) / 0.25` (a folder set: ImageNet's mean and standard
//! deviation). Every error names the file and what is wrong.

pub mod batches;
pub mod folder;

use std::path::Path;
use std::sync::OnceLock;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::base::TensorFile;
use crate::{Error, Result};

/// Channels, height and width of one sample; features are channel-major (`c, h, w`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageShape {
    pub const CIFAR: ImageShape = ImageShape {
        channels: 3,
        height: 32,
        width: 32,
    };
    /// Features per sample.
    pub fn features(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// Standard deviation of the synthetic samples' noise (the patterns' amplitude is 1).
const SYNTHETIC_NOISE: f32 = 3.0;

/// Distinct noise windows a synthetic sample's offset can pick: `features + NOISE_WINDOWS`
/// noise values, drawn once per dataset (about 4.6 MiB at 224x224).
const NOISE_WINDOWS: usize = 1 << 20;

/// The synthetic dataset's noise table for samples of `features` values, drawn from `rng`.
fn noise_table(mut rng: ChaCha8Rng, features: usize) -> Vec<f32> {
    let normal = Normal::new(0.0f32, SYNTHETIC_NOISE).unwrap_or_else(|_| unreachable!());
    (0..features + NOISE_WINDOWS)
        .map(|_| normal.sample(&mut rng))
        .collect()
}

/// Where the samples come from.
enum Source {
    /// Class patterns (`classes x features`) and a table of Gaussian noise (drawn at the
    /// first sample, so that opening a set only for its length costs nothing); samples are
    /// generated on demand from `(seed, index)`: the class's pattern plus a window of the
    /// table at a drawn offset, with a drawn sign. Drawing every noise value per sample kept
    /// the loader at about 5,000 224x224 samples/s on 16 cores (AlexNet's GPU step takes
    /// 20,000); a window is a vectorised add.
    Synthetic {
        seed: u64,
        patterns: Vec<f32>,
        noise: OnceLock<Vec<f32>>,
        /// The generator the table is drawn from: the patterns' after them (boxed: the
        /// other sources are a few words).
        noise_rng: Box<ChaCha8Rng>,
    },
    /// Raw pixel bytes, `len x features`.
    Pixels { pixels: Vec<u8>, labels: Vec<u8> },
    /// Image files, decoded and augmented when a sample is read.
    Files(folder::Folder),
    /// Ready features, `len x features`, and labels.
    Features {
        features: Vec<f32>,
        labels: Vec<u32>,
    },
}

/// How a sample is augmented: not at all, or as in training with its coin flip and a draw
/// for the random crop (both functions of the seed and the sample's position in the run).
/// Each set applies what suits it: CIFAR-10 the flip, a folder set the crop and the flip;
/// the synthetic set and MNIST nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Augment {
    None,
    Train { flip: bool, draw: u64 },
}

/// A dataset held in memory: samples by index, their labels, and the image shape.
pub struct Dataset {
    name: String,
    shape: ImageShape,
    classes: usize,
    len: usize,
    /// Random horizontal flips (CIFAR-10 only: the synthetic patterns and digits are not
    /// mirror-symmetric classes).
    flip: bool,
    source: Source,
}

const SYNTHETIC_DEFAULT_LEN: usize = 50_000;
/// The most samples `synthetic:N` may have: 2^26, fifty times ImageNet. The samples are drawn
/// on the fly, but each epoch's order is a permutation of them held in memory (4 bytes a
/// sample).
pub const MAX_SYNTHETIC_LEN: usize = 1 << 26;
/// The largest side `synthetic:N,S` may have: each class's pattern is held in memory
/// (`3 * S * S` f32s), 120 MB for the ten classes at this side.
pub const MAX_SYNTHETIC_SIDE: usize = 1024;
const CLASSES: usize = 10;
/// The side of a folder set's images when `folder:DIR` gives none (ImageNet's training crop).
pub const FOLDER_DEFAULT_SIDE: usize = 224;

impl Dataset {
    /// Opens the dataset named by a job file's `dataset` value. `seed` drives the synthetic
    /// set; `context` (say "jobs.toml: job 'a': dataset") starts errors about the value itself.
    pub fn open(spec: &str, seed: u64, context: &str) -> Result<Dataset> {
        let (kind, arg) = match spec.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (spec, None),
        };
        let opened = match (kind, arg) {
            ("synthetic", None) => Ok(Dataset::synthetic(SYNTHETIC_DEFAULT_LEN, seed)),
            ("synthetic", Some(arg)) => {
                let (n, side) = match arg.split_once(',') {
                    Some((n, s)) => (n, s.trim().parse::<usize>().ok()),
                    None => (arg, Some(ImageShape::CIFAR.height)),
                };
                match (n.trim().parse::<usize>(), side) {
                    (Ok(n), Some(side))
                        if (1..=MAX_SYNTHETIC_LEN).contains(&n)
                            && (1..=MAX_SYNTHETIC_SIDE).contains(&side) =>
                    {
                        Ok(Dataset::synthetic_sized(n, side, seed))
                    }
                    _ => Err(Error::invalid(
                        context,
                        format!(
                            "'{spec}': synthetic:N[,S] needs a sample count N in \
                             1..={MAX_SYNTHETIC_LEN} and an image side S in 1..={MAX_SYNTHETIC_SIDE}"
                        ),
                    )),
                }
            }
            ("cifar10", Some(dir)) if !dir.is_empty() => Dataset::cifar10(Path::new(dir)),
            ("mnist", Some(dir)) if !dir.is_empty() => Dataset::mnist(Path::new(dir)),
            ("tensors", Some(file)) if !file.is_empty() => Dataset::tensors(Path::new(file)),
            ("folder", Some(arg)) if !arg.is_empty() => {
                // A trailing `,S` is the side; a folder whose name ends in `,digits` is
                // written with its side: `folder:DIR,224`.
                let (dir, side) = match arg.rsplit_once(',') {
                    Some((dir, s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                        (dir, s.parse::<usize>().ok())
                    }
                    _ => (arg, Some(FOLDER_DEFAULT_SIDE)),
                };
                match side {
                    Some(side) if (1..=MAX_SYNTHETIC_SIDE).contains(&side) && !dir.is_empty() => {
                        Dataset::folder(Path::new(dir), side)
                    }
                    _ => Err(Error::invalid(
                        context,
                        format!(
                            "'{spec}': folder:DIR[,S] needs a folder and an image side S in \
                             1..={MAX_SYNTHETIC_SIDE}"
                        ),
                    )),
                }
            }
            _ => Err(Error::invalid(
                context,
                format!(
                    "'{spec}' is not one of synthetic, synthetic:N, synthetic:N,S, cifar10:DIR, \
                     mnist:DIR, folder:DIR, folder:DIR,S, tensors:FILE"
                ),
            )),
        };
        // A file the dataset could not read names itself; the job file's key says where
        // it was asked for.
        opened.map_err(|e| match e {
            Error::Io { .. } => Error::invalid(context, format!("'{spec}': {e}")),
            e => e,
        })
    }

    /// `len` synthetic 32x32x3 samples in 10 classes, drawn from `seed`.
    pub fn synthetic(len: usize, seed: u64) -> Dataset {
        Dataset::synthetic_sized(len, ImageShape::CIFAR.height, seed)
    }

    /// `len` synthetic `side x side x 3` samples in 10 classes, drawn from `seed`.
    pub fn synthetic_sized(len: usize, side: usize, seed: u64) -> Dataset {
        let shape = ImageShape {
            channels: 3,
            height: side,
            width: side,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_DA7A);
        // Smooth patterns: a few random low-frequency waves per class and channel, so the
        // classes differ in structure a convolution-free model can still pick up.
        let mut patterns = vec![0.0f32; CLASSES * shape.features()];
        for class in patterns.chunks_mut(shape.features()) {
            for channel in class.chunks_mut(shape.height * shape.width) {
                let (fy, fx): (f32, f32) = (rng.random_range(0.5..3.0), rng.random_range(0.5..3.0));
                let (py, px): (f32, f32) = (rng.random_range(0.0..6.3), rng.random_range(0.0..6.3));
                for (i, v) in channel.iter_mut().enumerate() {
                    let (y, x) = ((i / shape.width) as f32, (i % shape.width) as f32);
                    let t = std::f32::consts::TAU / shape.width as f32;
                    *v = (fy * y * t + py).sin() * (fx * x * t + px).cos();
                }
            }
        }
        let name = if shape == ImageShape::CIFAR {
            format!("synthetic:{len}")
        } else {
            format!("synthetic:{len},{side}")
        };
        Dataset {
            name,
            shape,
            classes: CLASSES,
            len,
            flip: false,
            source: Source::Synthetic {
                seed,
                patterns,
                noise: OnceLock::new(),
                noise_rng: Box::new(rng),
            },
        }
    }

    /// The CIFAR-10 binary training batches in `dir`.
    pub fn cifar10(dir: &Path) -> Result<Dataset> {
        const RECORD: usize = 1 + 3072;
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for k in 1..=5 {
            let path = dir.join(format!("data_batch_{k}.bin"));
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                // Batches 2..5 are optional so that a small file set works.
                Err(e) if k > 1 && e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(Error::io(&path, e)),
            };
            if bytes.is_empty() || bytes.len() % RECORD != 0 {
                return Err(Error::invalid(
                    path.display().to_string(),
                    format!(
                        "a CIFAR-10 batch holds records of {RECORD} bytes (1 label, 3072 pixels); \
                         this file has {} bytes",
                        bytes.len()
                    ),
                ));
            }
            for (r, rec) in bytes.chunks_exact(RECORD).enumerate() {
                if usize::from(rec[0]) >= CLASSES {
                    return Err(Error::invalid(
                        path.display().to_string(),
                        format!("record {r} has label {}, expected 0..=9", rec[0]),
                    ));
                }
                labels.push(rec[0]);
                pixels.extend_from_slice(&rec[1..]);
            }
        }
        Ok(Dataset::from_pixels(
            format!("cifar10:{}", dir.display()),
            ImageShape::CIFAR,
            true,
            pixels,
            labels,
        ))
    }

    /// The MNIST training set (IDX files) in `dir`.
    pub fn mnist(dir: &Path) -> Result<Dataset> {
        let images_path = dir.join("train-images-idx3-ubyte");
        let labels_path = dir.join("train-labels-idx1-ubyte");
        let (dims, pixels) = read_idx(&images_path, 0x0803)?;
        let (ldims, labels) = read_idx(&labels_path, 0x0801)?;
        let shape = ImageShape {
            channels: 1,
            height: dims[1],
            width: dims[2],
        };
        if ldims[0] != dims[0] {
            return Err(Error::invalid(
                labels_path.display().to_string(),
                format!(
                    "holds {} labels but {} holds {} images",
                    ldims[0],
                    images_path.display(),
                    dims[0]
                ),
            ));
        }
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| usize::from(**l) >= CLASSES)
        {
            return Err(Error::invalid(
                labels_path.display().to_string(),
                format!("label {i} is {l}, expected 0..=9"),
            ));
        }
        Ok(Dataset::from_pixels(
            format!("mnist:{}", dir.display()),
            shape,
            false,
            pixels,
            labels,
        ))
    }

    /// The image folder `dir` ([`folder`]), its samples cropped to `side x side`.
    pub fn folder(dir: &Path, side: usize) -> Result<Dataset> {
        let files = folder::Folder::scan(dir)?;
        let name = if side == FOLDER_DEFAULT_SIDE {
            format!("folder:{}", dir.display())
        } else {
            format!("folder:{},{side}", dir.display())
        };
        Ok(Dataset {
            name,
            shape: ImageShape {
                channels: 3,
                height: side,
                width: side,
            },
            classes: files.classes.len(),
            len: files.files.len(),
            flip: true,
            source: Source::Files(files),
        })
    }

    /// The samples of a safetensors file, in its order (see the module docs).
    pub fn tensors(path: &Path) -> Result<Dataset> {
        let file = TensorFile::open(path)?;
        let images = file.f32("images")?;
        let (lshape, raw) = file.i64("labels")?;
        let bad = |what: &str, problem: String| Error::invalid(file.context(what), problem);
        let [n, channels, height, width] = images.shape[..] else {
            return Err(bad(
                "images",
                format!("shape {:?}, expected (N, C, H, W)", images.shape),
            ));
        };
        if n == 0 || channels == 0 || height == 0 || width == 0 {
            return Err(bad(
                "images",
                format!("shape {:?} holds no image", images.shape),
            ));
        }
        if lshape != [n] {
            return Err(bad(
                "labels",
                format!("shape {lshape:?}, expected ({n},): one per image"),
            ));
        }
        let classes = match file.meta_value("classes") {
            Some(k) => k.parse::<usize>().ok().filter(|&k| k > 0).ok_or_else(|| {
                Error::invalid(
                    file.meta_context("classes"),
                    format!("'{k}' is not a positive class count"),
                )
            })?,
            None => raw.iter().copied().max().unwrap_or(0).max(0) as usize + 1,
        };
        let mut labels = Vec::with_capacity(n);
        for (i, &l) in raw.iter().enumerate() {
            match u32::try_from(l) {
                Ok(v) if (v as usize) < classes => labels.push(v),
                _ => {
                    return Err(bad(
                        "labels",
                        format!("label {i} is {l}, expected 0..{classes}"),
                    ));
                }
            }
        }
        Ok(Dataset {
            name: format!("tensors:{}", path.display()),
            shape: ImageShape {
                channels,
                height,
                width,
            },
            classes,
            len: n,
            flip: false,
            source: Source::Features {
                features: images.data,
                labels,
            },
        })
    }

    /// Whether the samples are read in the set's own order every epoch rather than shuffled
    /// (a `tensors:FILE` set, which replays a fixed sequence of batches).
    pub fn in_order(&self) -> bool {
        matches!(self.source, Source::Features { .. })
    }

    fn from_pixels(
        name: String,
        shape: ImageShape,
        flip: bool,
        pixels: Vec<u8>,
        labels: Vec<u8>,
    ) -> Dataset {
        Dataset {
            name,
            shape,
            classes: CLASSES,
            len: labels.len(),
            flip,
            source: Source::Pixels { pixels, labels },
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn shape(&self) -> ImageShape {
        self.shape
    }
    pub fn classes(&self) -> usize {
        self.classes
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes sample `index`'s normalised features into `out` (`shape().features()` long) and
    /// returns its label, augmented as `augment` says ([`Augment`]). `index` must be below
    /// `len()`. Only a folder set can fail: an image file that cannot be read or decoded.
    pub fn sample(&self, index: usize, augment: Augment, out: &mut [f32]) -> Result<u32> {
        let flip = matches!(augment, Augment::Train { flip: true, .. });
        let label = match &self.source {
            Source::Synthetic {
                seed,
                patterns,
                noise,
                noise_rng,
            } => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(index as u64));
                let label = rng.random_range(0..self.classes);
                let f = out.len();
                let pattern = &patterns[label * f..(label + 1) * f];
                let noise = noise.get_or_init(|| noise_table((**noise_rng).clone(), f));
                let at = rng.random_range(0..=noise.len() - f);
                let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
                for ((o, p), n) in out.iter_mut().zip(pattern).zip(&noise[at..at + f]) {
                    *o = p + sign * n;
                }
                label as u32
            }
            Source::Pixels { pixels, labels } => {
                let f = out.len();
                for (o, p) in out.iter_mut().zip(&pixels[index * f..(index + 1) * f]) {
                    *o = (f32::from(*p) / 255.0 - 0.5) / 0.25;
                }
                u32::from(labels[index])
            }
            Source::Features { features, labels } => {
                let f = out.len();
                out.copy_from_slice(&features[index * f..(index + 1) * f]);
                labels[index]
            }
            Source::Files(files) => {
                let (path, label) = &files.files[index];
                folder::load(path, self.shape, augment, out)?;
                // The folder's loader flips as it crops.
                return Ok(*label);
            }
        };
        if flip && self.flip {
            for row in out.chunks_mut(self.shape.width) {
                row.reverse();
            }
        }
        Ok(label)
    }
}

/// Reads an unsigned-byte IDX file with the given magic number; returns its dimensions and
/// data. The magic is `0x0801` for labels (1 dimension) and `0x0803` for images (3).
fn read_idx(path: &Path, magic: u32) -> Result<(Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |problem: String| Error::invalid(path.display().to_string(), problem);
    let ndim = (magic & 0xFF) as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(bad(format!(
            "too short for an IDX header ({} bytes)",
            bytes.len()
        )));
    }
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if word(0) != magic {
        return Err(bad(format!(
            "IDX magic number is {:#010x}, expected {magic:#010x} (unsigned bytes, {ndim} dimensions)",
            word(0)
        )));
    }
    let dims: Vec<usize> = (0..ndim).map(|d| word(4 + 4 * d) as usize).collect();
    let expected: usize = dims.iter().product();
    if expected == 0 || bytes.len() - header != expected {
        return Err(bad(format!(
            "dimensions {dims:?} need {expected} data bytes, the file has {}",
            bytes.len() - header
        )));
    }
    Ok((dims, bytes[header..].to_vec()))
}
