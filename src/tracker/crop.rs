//! Cropping a frame around a box (the original's `sample_target`): where the square crop
//! of side `ceil(sqrt(w h) * factor)` lies, centred on the box (spec section 1, steps 1-3;
//! rounding is Python's, half to even). The crop itself (zero padding, OpenCV's resize, the
//! padding mask) and the normalisation are the crop op's ([`crate::kernels::crop`]): its CPU
//! reference here, its kernel on the GPU. The spec's quirk is kept: a crop reaching the right
//! (bottom) edge drops the image's last column (row) and pads one more zero column instead.

use super::frame::{BBox, Frame};
use crate::error::{Error, Result};
pub use crate::kernels::crop::cpu::{Crop, CropWindow, MEAN, STD, crop_resize};

/// The window of side `ceil(sqrt(w h) * factor)` centred on `target`, in a `width x height`
/// frame. An error when the side is below 1 or the window holds no pixel of the frame.
pub fn crop_window(target: &BBox, factor: f64, width: usize, height: usize) -> Result<CropWindow> {
    let side = (target.w * target.h).sqrt() * factor;
    if !(side.is_finite() && side.ceil() >= 1.0) {
        return Err(Error::invalid(
            "crop",
            format!("too small bounding box {target} (a crop of side {side} x factor {factor})"),
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

/// `sample_target`: crops `frame` around `target` (side `ceil(sqrt(w h) * factor)`) and
/// resizes it to `output x output`.
pub fn sample_target(frame: &Frame, target: &BBox, factor: f64, output: usize) -> Result<Crop> {
    let win = crop_window(target, factor, frame.width, frame.height)?;
    Ok(crop_resize(
        &frame.data,
        frame.height,
        frame.width,
        &win,
        output,
    ))
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
        let w = crop_window(&BBox::new(100.0, 90.0, 40.0, 30.0), 2.0, 320, 240).unwrap();
        assert_eq!((w.size, w.x1, w.y1), (70, 85, 70));
        assert_eq!((w.x1_pad, w.x2_pad, w.y1_pad, w.y2_pad), (0, 0, 0, 0));
        // Round half to even: x + w/2 - size/2 = 2.5 -> 2.
        let w = crop_window(&BBox::new(0.0, 0.0, 5.0, 5.0), 1.0, 100, 100).unwrap();
        assert_eq!(w.x1, 0);
        // A crop ending exactly at the right edge still pads one column (the `+ 1`).
        let w = crop_window(&BBox::new(280.0, 0.0, 40.0, 40.0), 1.0, 320, 240).unwrap();
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
        let e = crop_window(&BBox::new(500.0, 10.0, 20.0, 20.0), 2.0, 320, 240).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        let e = crop_window(&BBox::new(10.0, 10.0, 0.0, 20.0), 2.0, 320, 240).unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
        assert!(crop_window(&BBox::new(10.0, 10.0, f64::NAN, 20.0), 2.0, 320, 240).is_err());
    }
}
