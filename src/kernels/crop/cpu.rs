//! The crop op's CPU reference: a square window of a `uint8` RGB frame, zero-padded where it
//! leaves the frame, resized to `output x output` as OpenCV's `cv2.resize` does by default
//! (`INTER_LINEAR`), with its padding mask; and the normalisation of the result.
//!
//! OpenCV resizes `uint8` images in fixed point: each axis's two weights are rounded to
//! 1/2048, the horizontal pass is exact in integers, and the vertical pass is OpenCV's SIMD
//! one (each product shifted down by 4 and then 16 bits, the sum rounded once at the end).
//! That is followed here bit for bit; an exact 2x reduction is OpenCV's area average (it
//! switches to `INTER_AREA` there), rounded as its SIMD path rounds; the same size is a copy.
//! The mask is resized in f64 with OpenCV's edge rules, and any padding with a nonzero weight
//! marks the pixel.

/// `INTER_RESIZE_COEF_BITS`: OpenCV's fixed-point weights are in units of 1/2048.
const COEF_BITS: u32 = 11;
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;

/// Per-channel mean and standard deviation of the normalisation (ImageNet's, RGB).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Where a square crop lies in the frame: its side, its top-left corner (maybe negative)
/// and the zero rows/columns added on each side. The window's crop pixel `(r, c)` is the
/// frame's `(y1 + r, x1 + c)` unless it is padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropWindow {
    /// `crop_sz`, the side of the square before resizing.
    pub size: usize,
    pub x1: i64,
    pub y1: i64,
    pub x1_pad: usize,
    pub x2_pad: usize,
    pub y1_pad: usize,
    pub y2_pad: usize,
}

impl CropWindow {
    /// Whether crop pixel `(r, c)` is padding.
    pub fn padded(&self, r: usize, c: usize) -> bool {
        r < self.y1_pad
            || r >= self.size - self.y2_pad
            || c < self.x1_pad
            || c >= self.size - self.x2_pad
    }

    /// `output / size`: crop pixels per frame pixel.
    pub fn resize_factor(&self, output: usize) -> f64 {
        output as f64 / self.size as f64
    }

    /// Whether every unpadded pixel lies inside a `width x height` frame.
    pub fn fits(&self, width: usize, height: usize) -> bool {
        let inside = |start: i64, pad: usize, end_pad: usize, side: usize| {
            let first = start + pad as i64;
            let last = start + self.size as i64 - end_pad as i64; // exclusive
            pad + end_pad < self.size && first >= 0 && last <= side as i64
        };
        inside(self.x1, self.x1_pad, self.x2_pad, width)
            && inside(self.y1, self.y1_pad, self.y2_pad, height)
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
            .flat_map(|p| (0..3).map(move |ch| normalise(p[ch], ch)))
            .collect()
    }

    /// The mask at the feature grid (`side / stride` a side): pixel `(stride i, stride j)`,
    /// PyTorch's `interpolate` with mode `nearest`.
    pub fn feature_mask(&self, stride: usize) -> Vec<u8> {
        feature_mask(&self.mask, self.side, stride)
    }
}

/// `(v / 255 - mean) / std` of channel `ch`, in f32 in this order (the kernel's too).
pub fn normalise(v: u8, ch: usize) -> f32 {
    (v as f32 / 255.0 - MEAN[ch]) / STD[ch]
}

/// `mask` (`side x side`) at every `stride`-th pixel of both axes.
pub fn feature_mask(mask: &[u8], side: usize, stride: usize) -> Vec<u8> {
    let n = side / stride;
    (0..n * n)
        .map(|t| mask[(t / n) * stride * side + (t % n) * stride])
        .collect()
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

/// Where OpenCV's vertical pass stops using its SIMD loops in a row of `width` bytes: blocks
/// of 16 bytes, then of 8 while more than 8 remain; the bytes after take the scalar formula.
pub fn simd_end(width: usize) -> usize {
    let mut x = width / 16 * 16;
    while x + 8 < width {
        x += 8;
    }
    x
}

/// The window `win` of a `height x width` RGB frame (`frame`, row-major bytes) resized to
/// `output x output`, with its mask. `win` must [`CropWindow::fits`] the frame.
pub fn crop_resize(
    frame: &[u8],
    height: usize,
    width: usize,
    win: &CropWindow,
    output: usize,
) -> Crop {
    assert!(win.fits(width, height) && frame.len() == height * width * 3);
    let n = win.size;
    // Crop pixel (r, c, ch): the frame's, or 0 in the padding.
    let pixel = |r: usize, c: usize, ch: usize| -> i32 {
        if win.padded(r, c) {
            0
        } else {
            let (y, x) = ((win.y1 + r as i64) as usize, (win.x1 + c as i64) as usize);
            frame[(y * width + x) * 3 + ch] as i32
        }
    };
    let mut pixels = vec![0u8; output * output * 3];
    if n == output {
        for r in 0..n {
            for c in 0..n {
                for ch in 0..3 {
                    pixels[(r * n + c) * 3 + ch] = pixel(r, c, ch) as u8;
                }
            }
        }
    } else if n == 2 * output {
        // OpenCV's INTER_AREA for an exact 2x reduction: the rounded mean of 2 x 2 pixels.
        for r in 0..output {
            for c in 0..output {
                for ch in 0..3 {
                    let sum = pixel(2 * r, 2 * c, ch)
                        + pixel(2 * r, 2 * c + 1, ch)
                        + pixel(2 * r + 1, 2 * c, ch)
                        + pixel(2 * r + 1, 2 * c + 1, ch);
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
        let simd_end = simd_end(width);
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
        }
    }
    Crop {
        side: output,
        pixels,
        mask: crop_mask(win, output),
        resize_factor: win.resize_factor(output),
    }
}

/// The padding mask of `win` resized to `output x output` (1 = padded): it depends only on
/// the window, so a GPU engine's host side knows it without reading the crop back.
pub fn crop_mask(win: &CropWindow, output: usize) -> Vec<u8> {
    sampled_mask(win, output, 1)
}

/// [`crop_mask`] at every `stride`-th pixel of both axes (`output / stride` a side), as
/// [`feature_mask`] samples it, without computing the other pixels.
pub fn sampled_mask(win: &CropWindow, output: usize, stride: usize) -> Vec<u8> {
    let n = win.size;
    let side = output / stride;
    let at = |i: usize| i * stride;
    let mut mask = vec![0u8; side * side];
    if n == output {
        for i in 0..side {
            for j in 0..side {
                mask[i * side + j] = u8::from(win.padded(at(i), at(j)));
            }
        }
    } else if n == 2 * output {
        for i in 0..side {
            for j in 0..side {
                let (r, c) = (at(i), at(j));
                let cells = [(0, 0), (0, 1), (1, 0), (1, 1)];
                mask[i * side + j] =
                    u8::from(cells.iter().any(|&(y, x)| win.padded(2 * r + y, 2 * c + x)));
            }
        }
    } else {
        let xs = taps(n, output, false);
        let ys = taps(n, output, true);
        for i in 0..side {
            let t = &ys[at(i)];
            let rows = [Some(t.i0), t.second.then_some(t.i1)];
            for j in 0..side {
                let tx = &xs[at(j)];
                let cols = [Some(tx.i0), tx.second.then_some(tx.i1)];
                let padded = rows
                    .iter()
                    .flatten()
                    .any(|&y| cols.iter().flatten().any(|&x| win.padded(y, x)));
                mask[i * side + j] = u8::from(padded);
            }
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_mask_is_the_full_mask_sampled() {
        // Windows padded on each side, for every resize path (copy, 2x area, bilinear).
        for (size, x1, y1) in [
            (384, -10, 5),
            (768, 100, -300),
            (200, -50, -50),
            (500, 0, 0),
        ] {
            let win = CropWindow {
                size,
                x1,
                y1,
                x1_pad: (-x1).max(0) as usize,
                x2_pad: 7,
                y1_pad: (-y1).max(0) as usize,
                y2_pad: 3,
            };
            let full = crop_mask(&win, 384);
            assert_eq!(
                sampled_mask(&win, 384, 16),
                feature_mask(&full, 384, 16),
                "{win:?}"
            );
            assert!(full.contains(&1), "{win:?}");
        }
    }
}
