//! Frames and boxes.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// An RGB frame: `height x width x 3` bytes, row-major, as the original decodes and
/// converts its frames (BGR -> RGB).
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub height: usize,
    pub width: usize,
    pub data: Vec<u8>,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Frame({}x{})", self.width, self.height)
    }
}

impl Frame {
    /// A frame from RGB bytes; the length must be `height * width * 3`.
    pub fn new(height: usize, width: usize, data: Vec<u8>) -> Result<Frame> {
        if height == 0 || width == 0 || data.len() != height * width * 3 {
            return Err(Error::invalid(
                "frame",
                format!(
                    "expected {height} x {width} x 3 = {} bytes (both sides at least 1), found {}",
                    height * width * 3,
                    data.len()
                ),
            ));
        }
        Ok(Frame {
            height,
            width,
            data,
        })
    }

    /// Channel `ch` of pixel `(y, x)`.
    pub fn at(&self, y: usize, x: usize, ch: usize) -> u8 {
        self.data[(y * self.width + x) * 3 + ch]
    }
}

/// A box `[x, y, w, h]` in pixels: top-left corner, width and height (the trackers'
/// results format).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl BBox {
    pub fn new(x: f64, y: f64, w: f64, h: f64) -> BBox {
        BBox { x, y, w, h }
    }

    pub fn from_array(a: [f64; 4]) -> BBox {
        BBox::new(a[0], a[1], a[2], a[3])
    }

    pub fn to_array(self) -> [f64; 4] {
        [self.x, self.y, self.w, self.h]
    }

    /// The centre `(cx, cy)`.
    pub fn center(&self) -> (f64, f64) {
        (self.x + 0.5 * self.w, self.y + 0.5 * self.h)
    }

    /// Whether every field is finite and the sides positive: a target that is present.
    pub fn is_valid(&self) -> bool {
        self.to_array().iter().all(|v| v.is_finite()) && self.w > 0.0 && self.h > 0.0
    }

    /// Checks that the box can start tracking in a `width x height` frame: finite,
    /// positive sides, and overlapping the image. `context` names where it came from.
    pub fn check_initial(&self, width: usize, height: usize, context: &str) -> Result<()> {
        if !self.is_valid() {
            return Err(Error::invalid(
                context,
                format!(
                    "the initial box {self} needs finite values and a positive width and height"
                ),
            ));
        }
        let (w, h) = (width as f64, height as f64);
        if self.x >= w || self.y >= h || self.x + self.w <= 0.0 || self.y + self.h <= 0.0 {
            return Err(Error::invalid(
                context,
                format!("the initial box {self} lies outside the {width}x{height} image"),
            ));
        }
        Ok(())
    }

    /// `clip_box` with `margin`: keeps the box inside a `width x height` image, at least
    /// `margin` pixels wide and high (the spec's tracking step 5).
    pub fn clip(&self, width: usize, height: usize, margin: f64) -> BBox {
        let (w, h) = (width as f64, height as f64);
        let x1 = self.x.max(0.0).min(w - margin);
        let x2 = (self.x + self.w).max(margin).min(w);
        let y1 = self.y.max(0.0).min(h - margin);
        let y2 = (self.y + self.h).max(margin).min(h);
        BBox::new(x1, y1, margin.max(x2 - x1), margin.max(y2 - y1))
    }

    /// Intersection over union (0 when either box is empty).
    pub fn iou(&self, other: &BBox) -> f64 {
        let iw = ((self.x + self.w).min(other.x + other.w) - self.x.max(other.x)).max(0.0);
        let ih = ((self.y + self.h).min(other.y + other.h) - self.y.max(other.y)).max(0.0);
        let inter = iw * ih;
        let union = self.w * self.h + other.w * other.h - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }
}

impl fmt::Display for BBox {
    /// `x,y,w,h`, the results files' line format (shortest exact decimals).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{},{}", self.x, self.y, self.w, self.h)
    }
}

impl FromStr for BBox {
    type Err = String;
    /// Four numbers separated by commas, tabs or spaces.
    fn from_str(s: &str) -> std::result::Result<BBox, String> {
        let fields: Vec<&str> = s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|f| !f.is_empty())
            .collect();
        if fields.len() != 4 {
            return Err(format!(
                "expected 4 numbers x,y,w,h separated by commas, tabs or spaces, found {} in '{s}'",
                fields.len()
            ));
        }
        let mut v = [0.0; 4];
        for (dst, f) in v.iter_mut().zip(&fields) {
            *dst = f
                .parse::<f64>()
                .map_err(|_| format!("'{f}' is not a number (in '{s}')"))?;
        }
        Ok(BBox::from_array(v))
    }
}
