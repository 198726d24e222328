//! Cropping a frame around a box (the original's `sample_target`) and normalising the crop.
//!
//! The square crop of side `ceil(sqrt(w h) * factor)` is centred on the box, zero-padded
//! where it leaves the image, and resized to `output x output` as OpenCV's `cv2.resize`
//! does by default (`INTER_LINEAR`); the padding mask is resized the same way, in f64,
//! and any padding in a pixel's neighbourhood marks it. Two quirks of the original are
//! kept: a crop reaching the right (bottom) edge drops the image's last column (row) and
//! pads one more zero column instead; and rounding is Python's (half to even).
//!
//! OpenCV resizes `uint8` images in fixed point: each axis's two weights are rounded to
//! 1/2048, the horizontal pass is exact in integers, and the vertical pass is OpenCV's SIMD
//! one (each product shifted down by 4 and then 16 bits, the sum rounded once at the
//! end). That is followed here bit for bit; an exact 2x reduction is OpenCV's area
//! average (it switches to `INTER_AREA` there), rounded as its SIMD path rounds.
//! The golden crops allow one grey level of difference, for OpenCV builds that differ.

use super::frame::{BBox, Frame};
use crate::error::{Error, Result};

/// `INTER_RESIZE_COEF_BITS`: OpenCV's fixed-point weights are in units of 1/2048.
const COEF_BITS: u32 = 11;
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;

/// Per-channel mean and standard deviation of the normalisation (ImageNet's, RGB).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Where a crop lies in the frame (spec section 1, steps 1-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropWindow {
    /// `crop_sz`, the side of the square before resizing.
    pub size: usize,
    /// Top-left corner in frame pixels (may be negative).
    pub x1: i64,
    pub y1: i64,
    /// Zero rows/columns added on each side.
    pub x1_pad: usize,
    pub x2_pad: usize,
    pub y1_pad: usize,
    pub y2_pad: usize,
}

impl CropWindow {
    /// The window of side `ceil(sqrt(w h) * factor)` centred on `target`, in a
    /// `width x height` frame. An error when the side is below 1 or the window holds no
    /// pixel of the frame.
    pub fn new(target: &BBox, factor: f64, width: usize, height: usize) -> Result<CropWindow> {
        let side = (target.w * target.h).sqrt() * factor;
        if !(side.is_finite() && side.ceil() >= 1.0) {
            return Err(Error::invalid(
                "crop",
                format!(
                    "too small bounding box {target} (a crop of side {side} x factor {factor})"
                ),
            ));
        }
        let size = side.ceil();
        if size > (1u64 << 40) as f64 {
            return Err(Error::invalid(
                "crop",
                format!("bounding box {target} is too large"),
            ));
        }
        let size_i = size as i64;
        let x1 = (target.x + 0.5 * target.w - size * 0.5).round_ties_even() as i64;
        let y1 = (target.y + 0.5 * target.h - size * 0.5).round_ties_even() as i64;
        let (x2, y2) = (x1 + size_i, y1 + size_i);
        let (w, h) = (width as i64, height as i64);
        let win = CropWindow {
            size: size as usize,
            x1,
            y1,
            x1_pad: (-x1).max(0) as usize,
            x2_pad: (x2 - w + 1).max(0) as usize,
            y1_pad: (-y1).max(0) as usize,
            y2_pad: (y2 - h + 1).max(0) as usize,
        };
        if win.x1_pad + win.x2_pad >= win.size || win.y1_pad + win.y2_pad >= win.size {
            return Err(Error::invalid(
                "crop",
                format!(
                    "the box {target} lies outside the {width}x{height} image: its crop \
                     ({}x{} at {x1},{y1}) holds no pixel of the frame",
                    win.size, win.size
                ),
            ));
        }
        Ok(win)
    }

    /// Whether crop pixel `(r, c)` is padding.
    fn padded(&self, r: usize, c: usize) -> bool {
        r < self.y1_pad
            || r >= self.size - self.y2_pad
            || c < self.x1_pad
            || c >= self.size - self.x2_pad
    }
}

/// A resized crop: RGB pixels, its padding mask and the scale it was resized by.
#[derive(Debug, Clone, PartialEq)]
pub struct Crop {
    /// The output side `o`.
    pub side: usize,
    /// `o x o x 3` bytes, RGB.
    pub pixels: Vec<u8>,
    /// `o x o`, 1 = padding (any padded pixel in the neighbourhood).
    pub mask: Vec<u8>,
    /// `o / crop_sz`.
    pub resize_factor: f64,
}

impl Crop {
    /// `(crop / 255 - mean) / std` per channel, f32, NHWC `(o, o, 3)`.
    pub fn normalised(&self) -> Vec<f32> {
        self.pixels
            .chunks_exact(3)
            .flat_map(|p| (0..3).map(move |ch| (p[ch] as f32 / 255.0 - MEAN[ch]) / STD[ch]))
            .collect()
    }

    /// The mask at the feature grid (`side / stride` a side): pixel `(stride i, stride j)`,
    /// PyTorch's `interpolate` with mode `nearest`.
    pub fn feature_mask(&self, stride: usize) -> Vec<u8> {
        let n = self.side / stride;
        (0..n * n)
            .map(|t| self.mask[(t / n) * stride * self.side + (t % n) * stride])
            .collect()
    }
}

/// `sample_target`: crops `frame` around `target` (side `ceil(sqrt(w h) * factor)`) and
/// resizes it to `output x output`.
pub fn sample_target(frame: &Frame, target: &BBox, factor: f64, output: usize) -> Result<Crop> {
    let win = CropWindow::new(target, factor, frame.width, frame.height)?;
    Ok(resize_window(frame, &win, output))
}

/// One output coordinate's two source taps and their weights, along one axis.
#[derive(Debug, Clone, Copy)]
struct Taps {
    i0: usize,
    i1: usize,
    /// Fixed-point weights (sum 2048).
    w0: i32,
    w1: i32,
    /// Whether the second tap has a nonzero weight (for the mask).
    second: bool,
}

/// OpenCV's source coordinates for `INTER_LINEAR`: `s = (d + 0.5) * scale - 0.5` rounded to
/// f32, `i = floor(s)`, weights `1 - a` and `a` rounded to 1/2048. `rows` selects the
/// vertical convention (indices clipped to the image, weights kept) over the horizontal
/// one (an index out of range is moved to the edge with weight 0).
fn taps(src: usize, dst: usize, rows: bool) -> Vec<Taps> {
    let scale = 1.0 / (dst as f64 / src as f64);
    let fixed = |f: f32| (f * COEF_SCALE).round_ties_even() as i32;
    (0..dst)
        .map(|d| {
            let s = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut i = s.floor() as i64;
            let mut a = s - i as f32;
            let last = src as i64 - 1;
            if rows {
                let clip = |x: i64| x.clamp(0, last) as usize;
                Taps {
                    i0: clip(i),
                    i1: clip(i + 1),
                    w0: fixed(1.0 - a),
                    w1: fixed(a),
                    second: a != 0.0,
                }
            } else {
                if i < 0 {
                    (i, a) = (0, 0.0);
                }
                if i >= last {
                    (i, a) = (last, 0.0);
                }
                let i = i as usize;
                Taps {
                    i0: i,
                    i1: (i + 1).min(last as usize),
                    w0: fixed(1.0 - a),
                    w1: fixed(a),
                    second: a != 0.0,
                }
            }
        })
        .collect()
}

/// The padded window of `frame` resized to `output x output`, with its mask.
fn resize_window(frame: &Frame, win: &CropWindow, output: usize) -> Crop {
    let n = win.size;
    // Crop pixel (r, c, ch): the frame's, or 0 in the padding.
    let pixel = |r: usize, c: usize, ch: usize| -> i32 {
        if win.padded(r, c) {
            0
        } else {
            frame.at(
                (win.y1 + r as i64) as usize,
                (win.x1 + c as i64) as usize,
                ch,
            ) as i32
        }
    };
    let mut pixels = vec![0u8; output * output * 3];
    let mut mask = vec![0u8; output * output];
    if n == output {
        for r in 0..n {
            for c in 0..n {
                mask[r * n + c] = u8::from(win.padded(r, c));
                for ch in 0..3 {
                    pixels[(r * n + c) * 3 + ch] = pixel(r, c, ch) as u8;
                }
            }
        }
    } else if n == 2 * output {
        // OpenCV's INTER_AREA for an exact 2x reduction: the rounded mean of 2 x 2 pixels.
        for r in 0..output {
            for c in 0..output {
                let cells = [
                    (2 * r, 2 * c),
                    (2 * r, 2 * c + 1),
                    (2 * r + 1, 2 * c),
                    (2 * r + 1, 2 * c + 1),
                ];
                mask[r * output + c] = u8::from(cells.iter().any(|&(y, x)| win.padded(y, x)));
                for ch in 0..3 {
                    let sum: i32 = cells.iter().map(|&(y, x)| pixel(y, x, ch)).sum();
                    pixels[(r * output + c) * 3 + ch] = ((sum + 2) >> 2) as u8;
                }
            }
        }
    } else {
        let xs = taps(n, output, false);
        let ys = taps(n, output, true);
        // Horizontal pass of one source row: exact integers, 2048 x the pixel scale.
        let hrow = |r: usize| -> Vec<i32> {
            let mut out = vec![0i32; output * 3];
            for (c, t) in xs.iter().enumerate() {
                for ch in 0..3 {
                    out[c * 3 + ch] = pixel(r, t.i0, ch) * t.w0 + pixel(r, t.i1, ch) * t.w1;
                }
            }
            out
        };
        let width = output * 3;
        // OpenCV's SIMD loops cover the row in blocks of 16 bytes, then of 8 (while more
        // than 8 remain); the last few bytes take the scalar formula.
        let simd_end = {
            let mut x = width / 16 * 16;
            while x + 8 < width {
                x += 8;
            }
            x
        };
        for (r, t) in ys.iter().enumerate() {
            let (s0, s1) = (hrow(t.i0), hrow(t.i1));
            for x in 0..width {
                let v = if x < simd_end {
                    let part = |s: i32, b: i32| ((s >> 4).clamp(-32768, 32767) * b) >> 16;
                    (part(s0[x], t.w0) + part(s1[x], t.w1) + 2) >> 2
                } else {
                    (s0[x] * t.w0 + s1[x] * t.w1 + (1 << 21)) >> 22
                };
                pixels[r * width + x] = v.clamp(0, 255) as u8;
            }
            for (c, tx) in xs.iter().enumerate() {
                let mut rows = vec![t.i0];
                if t.second {
                    rows.push(t.i1);
                }
                let mut cols = vec![tx.i0];
                if tx.second {
                    cols.push(tx.i1);
                }
                let padded = rows.iter().any(|&y| cols.iter().any(|&x| win.padded(y, x)));
                mask[r * output + c] = u8::from(padded);
            }
        }
    }
    Crop {
        side: output,
        pixels,
        mask,
        resize_factor: output as f64 / n as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(w: usize, h: usize) -> Frame {
        let data = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
        Frame::new(h, w, data).unwrap()
    }

    #[test]
    fn window_follows_the_spec_and_its_quirk() {
        // crop_sz = ceil(sqrt(40*30) * 2) = 70; x1 = round(100 + 20 - 35) = 85.
        let w = CropWindow::new(&BBox::new(100.0, 90.0, 40.0, 30.0), 2.0, 320, 240).unwrap();
        assert_eq!((w.size, w.x1, w.y1), (70, 85, 70));
        assert_eq!((w.x1_pad, w.x2_pad, w.y1_pad, w.y2_pad), (0, 0, 0, 0));
        // Round half to even: x + w/2 - size/2 = 2.5 -> 2.
        let w = CropWindow::new(&BBox::new(0.0, 0.0, 5.0, 5.0), 1.0, 100, 100).unwrap();
        assert_eq!(w.x1, 0);
        // A crop ending exactly at the right edge still pads one column (the `+ 1`).
        let w = CropWindow::new(&BBox::new(280.0, 0.0, 40.0, 40.0), 1.0, 320, 240).unwrap();
        assert_eq!((w.x1, w.size, w.x2_pad), (280, 40, 1));
    }

    #[test]
    fn same_size_crop_is_a_copy_with_zero_padding() {
        let f = frame(50, 40);
        let c = sample_target(&f, &BBox::new(-5.0, 10.0, 20.0, 20.0), 1.0, 20).unwrap();
        assert_eq!(c.resize_factor, 1.0);
        for r in 0..20 {
            for col in 0..20 {
                let inside = col >= 5;
                assert_eq!(c.mask[r * 20 + col], u8::from(!inside));
                for ch in 0..3 {
                    let want = if inside { f.at(10 + r, col - 5, ch) } else { 0 };
                    assert_eq!(c.pixels[(r * 20 + col) * 3 + ch], want);
                }
            }
        }
    }

    #[test]
    fn a_uniform_image_stays_uniform() {
        let f = Frame::new(200, 300, vec![173; 200 * 300 * 3]).unwrap();
        for (side, out) in [(97, 128), (150, 128), (256, 128), (384, 384), (1000, 384)] {
            let b = BBox::new(
                150.0 - side as f64 / 2.0,
                100.0 - side as f64 / 2.0,
                side as f64,
                side as f64,
            );
            let c = sample_target(&f, &b, 1.0, out).unwrap();
            for (i, &m) in c.mask.iter().enumerate() {
                if m == 0 {
                    assert_eq!(c.pixels[i * 3], 173, "side {side} -> {out}, pixel {i}");
                }
            }
        }
    }

    #[test]
    fn boxes_outside_the_image_or_too_small_are_errors() {
        let e = CropWindow::new(&BBox::new(500.0, 10.0, 20.0, 20.0), 2.0, 320, 240).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        let e = CropWindow::new(&BBox::new(10.0, 10.0, 0.0, 20.0), 2.0, 320, 240).unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
        assert!(CropWindow::new(&BBox::new(10.0, 10.0, f64::NAN, 20.0), 2.0, 320, 240).is_err());
    }
}
