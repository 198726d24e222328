//! Each head's work as a value: window, shift, channels, region geometry, the window
//! partition `P(w, s)` and its inverse as index maps, the `sr(a, e)` table, the gathered
//! relative-position bias `B_w`, and the window-level padding. Everything here is pure
//! host-side arithmetic; the CPU reference uses it directly and the GPU engine uploads
//! its results (index tables, bias, padding).
//!
//! Index conventions (spec, encoder steps 2-6):
//! - a *token* `t` is an index into `L_all` (template1, template2, search, row-major);
//! - a *slot* is an index into the partitioned sequence: `slot = window * w*w + pos`,
//!   `pos = r*w + col` inside the `w x w` window. `P(w, s)` puts token `slot_token(slot)`
//!   at `slot`; the window vector of window `l` is slots `[l*w*w, (l+1)*w*w)`, each
//!   with its `hd` channels contiguous (so a `(L, w*w*hd)` tensor is `(L_all, hd)` in
//!   slot order);
//! - a *column* of the score matrix is `col = l*w*w + a*w + e`: key window `l` rolled by
//!   `(+a, +e)`.

use crate::error::{Error, Result};
use crate::kernels::window_attention::AttentionShape;
use crate::model::config::Config;

/// One of the three token regions, each partitioned as its own grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// `"template1"`, `"template2"` or `"search"`.
    pub name: &'static str,
    /// Grid side (`T` or `S`).
    pub side: usize,
    /// First token of the region in `L_all`.
    pub token_offset: usize,
    /// First window of the region in the partitioned sequence (for a given `w`).
    pub window_offset: usize,
    /// Windows per grid row, `side / w`.
    pub windows_per_side: usize,
    /// Whether `P(w, s)` rolls this region by `-s` (only the search region).
    pub rolled: bool,
}

impl Region {
    /// Windows in this region.
    pub fn windows(&self) -> usize {
        self.windows_per_side * self.windows_per_side
    }
}

/// Head `head`'s attention, as a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadPlan {
    pub head: usize,
    /// Window side `w`.
    pub w: usize,
    /// Cyclic shift `s` of the search region (`w/2` for `head >= H/2`, else 0).
    pub shift: usize,
    /// Channels of this head, `hd = c / H`.
    pub hd: usize,
    /// First channel of this head in `q`, `k`, `v` and in the concatenated output.
    pub channel_offset: usize,
    /// All tokens, `L_all`.
    pub l_all: usize,
    /// Windows, `L = L_all / w^2` (= query rows of the score matrix).
    pub l: usize,
    /// template1, template2, search, in partition order.
    pub regions: [Region; 3],
    /// Whether this head adds `B_w` (`w` in {1, 2, 4}).
    pub has_rel_bias: bool,
}

/// All heads of the encoder attention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub config: Config,
    pub heads: Vec<HeadPlan>,
}

impl Plan {
    /// Validates `config` and builds every head's plan.
    pub fn new(config: &Config) -> Result<Plan> {
        config.validate("plan")?;
        let heads = (0..config.nhead)
            .map(|h| HeadPlan::new(config, h))
            .collect();
        Ok(Plan {
            config: config.clone(),
            heads,
        })
    }
}

impl HeadPlan {
    /// Head `h` of `config` (which must be valid: see [`Config::validate`]).
    pub fn new(config: &Config, h: usize) -> HeadPlan {
        let w = config.window(h);
        let (t, s) = (config.template_size, config.search_size);
        let tt = config.template_tokens();
        let twin = (t / w) * (t / w);
        let region = |name, side: usize, token_offset, window_offset, rolled| Region {
            name,
            side,
            token_offset,
            window_offset,
            windows_per_side: side / w,
            rolled,
        };
        HeadPlan {
            head: h,
            w,
            shift: config.shift(h),
            hd: config.hd(),
            channel_offset: h * config.hd(),
            l_all: config.l_all(),
            l: config.l_all() / (w * w),
            regions: [
                region("template1", t, 0, 0, false),
                region("template2", t, tt, twin, false),
                region("search", s, 2 * tt, 2 * twin, true),
            ],
            has_rel_bias: Config::has_rel_bias(w),
        }
    }

    /// `w * w`, pixels per window.
    pub fn ww(&self) -> usize {
        self.w * self.w
    }

    /// This head's attention over `batch` items as the kernel takes it: all `L_all` slots (in
    /// window order) against all of them, one head.
    pub fn attention_shape(&self, batch: usize) -> AttentionShape {
        AttentionShape {
            w: self.w,
            hd: self.hd,
            n_queries: self.l_all,
            n_keys: self.l_all,
            batch,
            heads: 1,
            head_stride: 0,
        }
    }

    /// `w * w * hd`, the length of a window vector.
    pub fn window_dim(&self) -> usize {
        self.w * self.w * self.hd
    }

    fn region_of_window(&self, window: usize) -> &Region {
        self.regions
            .iter()
            .rev()
            .find(|r| window >= r.window_offset)
            .unwrap_or(&self.regions[0])
    }

    fn region_of_token(&self, token: usize) -> &Region {
        self.regions
            .iter()
            .rev()
            .find(|r| token >= r.token_offset)
            .unwrap_or(&self.regions[0])
    }

    /// The token that `P(w, shift)` places at `slot` (`slot < L_all`).
    pub fn slot_token_shifted(&self, slot: usize, shift: usize) -> usize {
        let w = self.w;
        let (window, pos) = (slot / (w * w), slot % (w * w));
        let r = self.region_of_window(window);
        let wi = window - r.window_offset;
        // Coordinates in the (rolled) grid g'.
        let i = (wi / r.windows_per_side) * w + pos / w;
        let j = (wi % r.windows_per_side) * w + pos % w;
        // g'[i][j] = g[(i+s) mod side][(j+s) mod side], search region only.
        let s = if r.rolled { shift } else { 0 };
        let (si, sj) = ((i + s) % r.side, (j + s) % r.side);
        r.token_offset + si * r.side + sj
    }

    /// The slot at which `P(w, shift)` places `token` (the inverse of
    /// [`HeadPlan::slot_token_shifted`]; window reverse reads from here).
    pub fn token_slot_shifted(&self, token: usize, shift: usize) -> usize {
        let w = self.w;
        let r = self.region_of_token(token);
        let local = token - r.token_offset;
        let (si, sj) = (local / r.side, local % r.side);
        let s = if r.rolled { shift } else { 0 };
        // Inverse roll: g'[i][j] holds g[si][sj] where i = si - s (mod side).
        let i = (si + r.side - s % r.side) % r.side;
        let j = (sj + r.side - s % r.side) % r.side;
        let window = r.window_offset + (i / w) * r.windows_per_side + j / w;
        window * w * w + (i % w) * w + j % w
    }

    /// The token at `slot` under this head's partition `P(w, s)`.
    pub fn slot_token(&self, slot: usize) -> usize {
        self.slot_token_shifted(slot, self.shift)
    }

    /// The slot of `token` under `P(w, s)`.
    pub fn token_slot(&self, token: usize) -> usize {
        self.token_slot_shifted(token, self.shift)
    }

    /// `P(w, s)` as a gather table: `partition_index()[slot] = token`, length `L_all`.
    pub fn partition_index(&self) -> Vec<u32> {
        (0..self.l_all)
            .map(|slot| self.slot_token(slot) as u32)
            .collect()
    }

    /// Window reverse as a gather table: `reverse_index()[token] = slot`, length `L_all`.
    pub fn reverse_index(&self) -> Vec<u32> {
        (0..self.l_all).map(|t| self.token_slot(t) as u32).collect()
    }

    /// `P(w, 0)`, the unshifted partition the padding mask uses (even for shifted heads):
    /// `mask_partition_index()[slot] = token`.
    pub fn mask_partition_index(&self) -> Vec<u32> {
        (0..self.l_all)
            .map(|slot| self.slot_token_shifted(slot, 0) as u32)
            .collect()
    }

    /// `sr(a, e)` as a `w*w` table indexed `a*w + e`: `u(a)*u(e) - 1`,
    /// `u(t) = t/w if t/w > 0.5 else 1 - t/w`, rounded to float16 as the original stores
    /// it (exact for `w <= 8`).
    pub fn sr_table(&self) -> Vec<f32> {
        let w = self.w;
        let u = |t: usize| {
            let x = t as f64 / w as f64;
            if x > 0.5 { x } else { 1.0 - x }
        };
        let mut v = Vec::with_capacity(w * w);
        for a in 0..w {
            for e in 0..w {
                let ua = half::f16::from_f64(u(a)).to_f64();
                let ue = half::f16::from_f64(u(e)).to_f64();
                // The product and difference are taken in float16 as well.
                let p = half::f16::from_f64(ua * ue).to_f64();
                v.push(half::f16::from_f64(p - 1.0).to_f32());
            }
        }
        v
    }

    /// `B_w` gathered from `table_w` (`rel_bias_table{w}`): an `(L, L_all)` row-major
    /// matrix, `B_w[i][col] = table[((i/w) - (col/w) + L_all/w - 1) * (2w-1)
    /// + (i%w) - (col%w) + w - 1]`. `Ok(None)` for heads without a bias (`w == 8`).
    pub fn gathered_bias(&self, table: Option<&[f32]>) -> Result<Option<Vec<f32>>> {
        if !self.has_rel_bias {
            return Ok(None);
        }
        let w = self.w;
        let need = (2 * w - 1) * (self.l_all / w + (self.l - 1) / w);
        let table = table.ok_or_else(|| {
            Error::invalid(
                format!("transformer.rel_bias_table{w}"),
                format!("head {} (window {w}) needs this table", self.head),
            )
        })?;
        if table.len() != need {
            return Err(Error::invalid(
                format!("transformer.rel_bias_table{w}"),
                format!("expected length {need}, found {}", table.len()),
            ));
        }
        let mut b = Vec::with_capacity(self.l * self.l_all);
        for i in 0..self.l {
            for col in 0..self.l_all {
                let idx = ((i / w + self.l_all / w - 1 - col / w) * (2 * w - 1) + (i % w) + w - 1)
                    - (col % w);
                b.push(table[idx]);
            }
        }
        Ok(Some(b))
    }

    /// Window-level key padding, `(b, L)` with 1 = padded, from the merged mask `m`
    /// `(b, L_all)`: for `w == 1` the token's own flag; for `w > 1` the window of
    /// `P(w, 0)` (no shift) is padded iff all its `w*w` pixels are.
    pub fn window_padding(&self, mask: &[u8], batch: usize) -> Vec<u8> {
        let ww = self.ww();
        let mut out = Vec::with_capacity(batch * self.l);
        for b in 0..batch {
            let m = &mask[b * self.l_all..(b + 1) * self.l_all];
            for l in 0..self.l {
                let all = (0..ww).all(|p| m[self.slot_token_shifted(l * ww + p, 0)] != 0);
                out.push(u8::from(all));
            }
        }
        out
    }

    /// Column-level key padding, `(b, L_all)`: column `col` is padded iff its key window
    /// `col / (w*w)` is (see [`HeadPlan::window_padding`]).
    pub fn column_padding(&self, window_padding: &[u8], batch: usize) -> Vec<u8> {
        let ww = self.ww();
        (0..batch * self.l_all)
            .map(|i| {
                let (b, col) = (i / self.l_all, i % self.l_all);
                window_padding[b * self.l + col / ww]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_a_permutation_and_reverse_inverts_it() {
        let c = Config::released();
        let plan = Plan::new(&c).unwrap();
        for h in &plan.heads {
            let p = h.partition_index();
            let r = h.reverse_index();
            let mut seen = vec![false; c.l_all()];
            for (slot, &t) in p.iter().enumerate() {
                assert!(!seen[t as usize]);
                seen[t as usize] = true;
                assert_eq!(r[t as usize] as usize, slot, "head {}", h.head);
            }
        }
    }

    #[test]
    fn partition_layout() {
        let c = Config::released();
        let h = HeadPlan::new(&c, 6); // w = 4, s = 2
        assert_eq!((h.w, h.shift, h.l), (4, 2, 44));
        // First template1 window: pixels (0..4, 0..4) of template1.
        assert_eq!(h.slot_token(0), 0);
        assert_eq!(h.slot_token(1), 1);
        assert_eq!(h.slot_token(4), 8);
        // Second template1 window starts at column 4.
        assert_eq!(h.slot_token(16), 4);
        // First search window, rolled by -2: g'[0][0] = g[2][2].
        let first_search_slot = 8 * 16;
        assert_eq!(h.slot_token(first_search_slot), 128 + 2 * 24 + 2);
        // Last pixel of the last search window wraps to g[1][1].
        assert_eq!(h.slot_token(704 - 1), 128 + 24 + 1);
        // Unshifted partition for the mask.
        assert_eq!(h.slot_token_shifted(first_search_slot, 0), 128);
    }

    #[test]
    fn sr_values() {
        let c = Config::released();
        let h = HeadPlan::new(&c, 1); // w = 2
        assert_eq!(h.sr_table(), vec![0.0, -0.5, -0.5, -0.75]);
        let h8 = HeadPlan::new(&c, 3);
        let t = h8.sr_table();
        assert_eq!(t[0], 0.0);
        assert_eq!(t[9], 0.875 * 0.875 - 1.0);
    }
}
