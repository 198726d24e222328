//! An ImageNet-style folder: one subfolder of JPEG or PNG images per class, read and
//! augmented sample by sample as torchvision's `ImageFolder` with its usual transforms.
//!
//! - Classes are the subfolders' names in sorted (byte) order, class `k` the `k`-th; the images
//!   of a class are every `.jpg`, `.jpeg` or `.png` file under its folder (any depth, sorted
//!   paths), as torchvision lists them. Other files are not images of the set and are passed
//!   over. An empty class folder, a folder without class folders and an image that does not
//!   decode are errors naming the folder or the file: a set that silently loses images trains
//!   on other data than its owner thinks (torchvision fails the same way).
//! - Training augmentation is `RandomResizedCrop(S)` (area 0.08-1 of the image, aspect ratio
//!   3/4-4/3 on a log scale, ten tries, then the centre crop at the nearest allowed ratio),
//!   resized with an antialiased bilinear filter (PIL's and `image`'s triangle filter), then
//!   a horizontal flip with probability 1/2. Without augmentation ([`Augment::None`]) the
//!   image is evaluated as torchvision's `Resize(S * 8 / 7)` + `CenterCrop(S)` (256 -> 224).
//! - Pixels are normalised with ImageNet's mean and standard deviation per channel.
//!
//! Every draw comes from the sample's [`Augment::Train`] value, itself a function of the seed
//! and the sample's position in the run: a run and its resumption crop the same way.

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::{ImageReader, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::train::data::{Augment, ImageShape};
use crate::{Error, Result};

/// ImageNet's per-channel mean and standard deviation (RGB, of pixels in [0, 1]).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];
/// `RandomResizedCrop`'s defaults: the crop's share of the image's area and its aspect ratio.
const SCALE: (f64, f64) = (0.08, 1.0);
const RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
/// The file name endings read as images (case-insensitive).
const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// The images of a folder set and their classes.
pub struct Folder {
    pub root: PathBuf,
    /// The class folders' names, in class order.
    pub classes: Vec<String>,
    /// Every image with its class.
    pub files: Vec<(PathBuf, u32)>,
}

impl Folder {
    /// Lists `root`'s class folders and their images.
    pub fn scan(root: &Path) -> Result<Folder> {
        let mut classes: Vec<String> = Vec::new();
        for entry in std::fs::read_dir(root).map_err(|e| Error::io(root, e))? {
            let entry = entry.map_err(|e| Error::io(root, e))?;
            // `metadata` follows links, as torchvision's listing does.
            if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
                classes.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        if classes.is_empty() {
            return Err(Error::invalid(
                root.display().to_string(),
                "has no class folders: an image folder set holds one subfolder of JPEG or PNG \
                 images per class",
            ));
        }
        classes.sort();
        if classes.len() > u32::MAX as usize {
            return Err(Error::invalid(
                root.display().to_string(),
                format!("{} class folders is too many", classes.len()),
            ));
        }
        let mut files = Vec::new();
        for (k, name) in classes.iter().enumerate() {
            let dir = root.join(name);
            let before = files.len();
            images_under(&dir, &mut |path| files.push((path, k as u32)))?;
            if files.len() == before {
                return Err(Error::invalid(
                    dir.display().to_string(),
                    format!(
                        "class folder '{name}' holds no image (files ending in {})",
                        EXTENSIONS.map(|e| format!(".{e}")).join(", ")
                    ),
                ));
            }
        }
        Ok(Folder {
            root: root.to_path_buf(),
            classes,
            files,
        })
    }
}

/// Calls `found` with every image file under `dir`, in sorted path order.
fn images_under(dir: &Path, found: &mut dyn FnMut(PathBuf)) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<_>>()?;
    entries.sort();
    for path in entries {
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        if meta.is_dir() {
            images_under(&path, found)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
        {
            found(path);
        }
    }
    Ok(())
}

/// Decodes `path` (JPEG or PNG, recognised by its content), as RGB.
pub fn decode(path: &Path) -> Result<RgbImage> {
    let bad = |e: image::ImageError| {
        Error::invalid(
            path.display().to_string(),
            format!("cannot be decoded as a JPEG or PNG image ({e})"),
        )
    };
    let image = ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(bad)?;
    Ok(image.to_rgb8())
}

/// A crop of an image: top row, left column, height and width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crop {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

/// torchvision's `RandomResizedCrop.get_params` for a `width x height` image: up to ten
/// draws of an area share and a log-uniform aspect ratio, the first that fits; else the
/// centre crop with the aspect ratio clamped to the allowed range.
pub fn random_resized_crop(width: u32, height: u32, rng: &mut impl Rng) -> Crop {
    let area = f64::from(width) * f64::from(height);
    let (lo, hi) = (RATIO.0.ln(), RATIO.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(SCALE.0..SCALE.1);
        let ratio = rng.random_range(lo..hi).exp();
        let w = (target * ratio).sqrt().round() as u32;
        let h = (target / ratio).sqrt().round() as u32;
        if 0 < w && w <= width && 0 < h && h <= height {
            return Crop {
                top: rng.random_range(0..=height - h),
                left: rng.random_range(0..=width - w),
                height: h,
                width: w,
            };
        }
    }
    let ratio = f64::from(width) / f64::from(height);
    let (w, h) = if ratio < RATIO.0 {
        (width, (f64::from(width) / RATIO.0).round() as u32)
    } else if ratio > RATIO.1 {
        ((f64::from(height) * RATIO.1).round() as u32, height)
    } else {
        (width, height)
    };
    Crop {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

/// The evaluation crop: the image scaled so that its shorter side is `side * 8 / 7`
/// (torchvision's `Resize(256)` for 224), then its centre `side x side`.
fn centre_crop(image: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    let short = (side * 8).div_ceil(7).max(side);
    // torchvision's `Resize(int)` keeps the aspect ratio, truncating the longer side.
    let (nw, nh) = if w <= h {
        (
            short,
            (u64::from(short) * u64::from(h) / u64::from(w)) as u32,
        )
    } else {
        (
            (u64::from(short) * u64::from(w) / u64::from(h)) as u32,
            short,
        )
    };
    let scaled = imageops::resize(image, nw, nh, FilterType::Triangle);
    imageops::crop_imm(&scaled, (nw - side) / 2, (nh - side) / 2, side, side).to_image()
}

/// Reads `path` into `out` (`shape`'s features, channel-major), augmented as `augment` says.
pub fn load(path: &Path, shape: ImageShape, augment: Augment, out: &mut [f32]) -> Result<()> {
    let image = decode(path)?;
    let side = shape.width as u32;
    let (crop, flip) = match augment {
        Augment::None => (centre_crop(&image, side), false),
        Augment::Train { flip, draw } => {
            let mut rng = ChaCha8Rng::seed_from_u64(draw);
            let (w, h) = image.dimensions();
            let c = random_resized_crop(w, h, &mut rng);
            let cut = imageops::crop_imm(&image, c.left, c.top, c.width, c.height).to_image();
            (
                imageops::resize(&cut, side, side, FilterType::Triangle),
                flip,
            )
        }
    };
    let plane = shape.height * shape.width;
    for (x, y, pixel) in crop.enumerate_pixels() {
        let x = if flip { side - 1 - x } else { x } as usize;
        let at = y as usize * shape.width + x;
        for (ch, &v) in pixel.0.iter().enumerate() {
            out[ch * plane + at] = (f32::from(v) / 255.0 - MEAN[ch]) / STD[ch];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_stay_inside_and_follow_the_allowed_shapes() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (w, h) in [(500, 375), (375, 500), (32, 32), (1, 1), (7, 300), (300, 7)] {
            for _ in 0..200 {
                let c = random_resized_crop(w, h, &mut rng);
                assert!(c.width >= 1 && c.height >= 1, "{c:?}");
                assert!(
                    c.left + c.width <= w && c.top + c.height <= h,
                    "{c:?} in {w}x{h}"
                );
            }
        }
        // A very thin image never fits a drawn crop: the centre crop at the ratio's bound.
        let c = random_resized_crop(7, 300, &mut rng);
        assert_eq!(
            c,
            Crop {
                top: 145,
                left: 0,
                height: 9,
                width: 7
            }
        );
        let c = random_resized_crop(300, 7, &mut rng);
        assert_eq!((c.width, c.height, c.left, c.top), (9, 7, 145, 0));
    }

    #[test]
    fn the_area_and_ratio_are_drawn_over_their_ranges() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (mut small, mut large, mut wide, mut tall) = (false, false, false, false);
        for _ in 0..2000 {
            let c = random_resized_crop(1000, 1000, &mut rng);
            let share = f64::from(c.width * c.height) / 1e6;
            let ratio = f64::from(c.width) / f64::from(c.height);
            assert!((0.079..=1.0).contains(&share), "{share}");
            assert!((0.74..=1.34).contains(&ratio), "{ratio}");
            small |= share < 0.1;
            large |= share > 0.9;
            wide |= ratio > 1.3;
            tall |= ratio < 0.77;
        }
        assert!(small && large && wide && tall);
    }
}
