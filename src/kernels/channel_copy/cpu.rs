//! The CPU reference of `channel_copy` and the description of one copy: over `rows` rows, a
//! block of `a x b` values of each source row (from `x_off`, row stride `x_stride`) is
//! written transposed into the destination row (from `y_off`, row stride `y_stride`):
//! `y[r][y_off + j a + i] (+)= x[r][x_off + i b + j]`. Constructors name the CNN layers it
//! serves.

/// One copy (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copy2d {
    pub rows: usize,
    pub x_stride: usize,
    pub x_off: usize,
    pub y_stride: usize,
    pub y_off: usize,
    pub a: usize,
    pub b: usize,
}

impl Copy2d {
    /// Channels `[start, start + len)` of rows of `c` into rows of `len` (the backward of a
    /// concatenation's input, a channel split).
    pub fn take(rows: usize, c: usize, start: usize, len: usize) -> Copy2d {
        Copy2d {
            rows,
            x_stride: c,
            x_off: start,
            y_stride: len,
            y_off: 0,
            a: 1,
            b: len,
        }
    }

    /// Rows of `len` into channels `[start, start + len)` of rows of `c` (a concatenation's
    /// input, the backward of a channel split).
    pub fn put(rows: usize, c: usize, start: usize, len: usize) -> Copy2d {
        Copy2d {
            rows,
            x_stride: len,
            x_off: 0,
            y_stride: c,
            y_off: start,
            a: 1,
            b: len,
        }
    }

    /// Each row's `a x b` block transposed to `b x a` (ShuffleNet's shuffle of `c` channels
    /// in `g` groups is `(g, c / g)`; its backward `(c / g, g)`; the flatten of an image's
    /// `(h w, c)` values is one row per image).
    pub fn transpose(rows: usize, a: usize, b: usize) -> Copy2d {
        Copy2d {
            rows,
            x_stride: a * b,
            x_off: 0,
            y_stride: a * b,
            y_off: 0,
            a,
            b,
        }
    }

    /// Values `x` must hold.
    pub fn x_len(&self) -> usize {
        self.rows * self.x_stride
    }

    /// Values `y` must hold.
    pub fn y_len(&self) -> usize {
        self.rows * self.y_stride
    }

    /// Why the copy is malformed, if it is.
    pub fn check(&self) -> Result<(), String> {
        let block = self.a * self.b;
        if self.rows == 0 || block == 0 {
            return Err(format!("an empty copy: {self:?}"));
        }
        if self.x_off + block > self.x_stride || self.y_off + block > self.y_stride {
            return Err(format!(
                "a block of {block} values leaves its row: {self:?}"
            ));
        }
        if self.x_len().max(self.y_len()) > i32::MAX as usize {
            return Err(format!("over 2^31 values: {self:?}"));
        }
        Ok(())
    }
}

/// [`Copy2d`] on the host: `y` (+)= the copy of `x`.
pub fn channel_copy(copy: &Copy2d, x: &[f32], y: &mut [f32], accumulate: bool) {
    for r in 0..copy.rows {
        for j in 0..copy.b {
            for i in 0..copy.a {
                let v = x[r * copy.x_stride + copy.x_off + i * copy.b + j];
                let d = &mut y[r * copy.y_stride + copy.y_off + j * copy.a + i];
                *d = if accumulate { *d + v } else { v };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_the_cnn_layers_maps() {
        // Shuffle of 6 channels in 2 groups: output channel o is input (o % 2) * 3 + o / 2.
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut y = vec![0.0; 12];
        channel_copy(&Copy2d::transpose(2, 2, 3), &x, &mut y, false);
        assert_eq!(&y[..6], &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let mut back = vec![0.0; 12];
        channel_copy(&Copy2d::transpose(2, 3, 2), &y, &mut back, false);
        assert_eq!(back, x);
        // Split channels [1, 3) of rows of 4, put back and accumulated.
        let mut part = vec![0.0; 6];
        channel_copy(&Copy2d::take(3, 4, 1, 2), &x, &mut part, false);
        assert_eq!(part, [1.0, 2.0, 5.0, 6.0, 9.0, 10.0]);
        let mut whole = vec![1.0; 12];
        channel_copy(&Copy2d::put(3, 4, 1, 2), &part, &mut whole, true);
        assert_eq!(&whole[..4], &[1.0, 2.0, 3.0, 1.0]);
        assert!(Copy2d::put(3, 4, 3, 2).check().is_err());
    }
}
