//! DETR's sine positional encoding of a feature mask, and a cache of it: the encoding
//! depends only on the mask, and a tracker sees few distinct masks (none at all while the
//! target stays away from the image's edges).
//!
//! Computed in f32 in the original's order of operations, whatever the engine's precision.

use std::collections::HashMap;
use std::sync::Arc;

/// Distinct masks kept before the cache starts over (each entry is `side^2 x c` floats).
const CACHE_ENTRIES: usize = 64;

/// The encoding of a `side x side` mask (nonzero = padded) with `channels` channels,
/// `(side, side, channels)` token-major (`(H, W, B = 1, C)` in the golden files):
/// `[pos_y (channels / 2), pos_x (channels / 2)]`, each interleaving `sin` at even and
/// `cos` at odd channels.
pub fn sine_encoding(mask: &[u8], side: usize, channels: usize) -> Vec<f32> {
    let npf = channels / 2;
    let scale = std::f32::consts::TAU;
    let eps = 1e-6f32;
    // Cumulative counts of unpadded pixels down the rows (y) and along the columns (x).
    let not = |t: usize| f32::from(u8::from(mask[t] == 0));
    let mut ye = vec![0.0f32; side * side];
    let mut xe = vec![0.0f32; side * side];
    for i in 0..side {
        for j in 0..side {
            let t = i * side + j;
            ye[t] = not(t) + if i > 0 { ye[t - side] } else { 0.0 };
            xe[t] = not(t) + if j > 0 { xe[t - 1] } else { 0.0 };
        }
    }
    let dim_t: Vec<f32> = (0..npf)
        .map(|k| 10000f32.powf(2.0 * (k / 2) as f32 / npf as f32))
        .collect();
    let mut pos = vec![0.0f32; side * side * channels];
    for i in 0..side {
        for j in 0..side {
            let t = i * side + j;
            let y = ye[t] / (ye[(side - 1) * side + j] + eps) * scale;
            let x = xe[t] / (xe[i * side + side - 1] + eps) * scale;
            let out = &mut pos[t * channels..(t + 1) * channels];
            for (k, &d) in dim_t.iter().enumerate() {
                let (py, px) = (y / d, x / d);
                (out[k], out[npf + k]) = if k % 2 == 0 {
                    (py.sin(), px.sin())
                } else {
                    (py.cos(), px.cos())
                };
            }
        }
    }
    pos
}

/// Encodings by mask, computed once each.
#[derive(Debug, Default)]
pub struct PositionCache {
    entries: HashMap<(usize, usize, Vec<u8>), Arc<Vec<f32>>>,
}

impl PositionCache {
    /// The encoding of `mask` (see [`sine_encoding`]), from the cache when seen before.
    pub fn get(&mut self, mask: &[u8], side: usize, channels: usize) -> Arc<Vec<f32>> {
        let key = (side, channels, mask.to_vec());
        if let Some(p) = self.entries.get(&key) {
            return p.clone();
        }
        if self.entries.len() >= CACHE_ENTRIES {
            self.entries.clear();
        }
        let p = Arc::new(sine_encoding(mask, side, channels));
        self.entries.insert(key, p.clone());
        p
    }

    /// Distinct masks held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
