//! The CSWinTT transformer's configuration: sizes, layer counts and per-head windows.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::error::{Error, Result};

/// The metadata value of `format` in attnrt's (and the golden files') weights files.
pub const FORMAT: &str = "cswintt-transformer";

/// Window sizes with a relative-position bias table (`rel_bias_table{w}`); heads with any
/// other window (8 in the released model) get no bias. See the spec, encoder step 5.
pub const BIAS_WINDOWS: [usize; 3] = [1, 2, 4];

/// The transformer's shape. `window_sizes[h]` is head `h`'s window; heads `h >= nhead/2`
/// shift by `w/2`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// `c`, the channel width (256 in the released model).
    pub d_model: usize,
    /// `H`, heads of the encoder attention and of both decoder attentions (8).
    pub nhead: usize,
    /// Width of the feed-forward hidden layer (2048).
    pub dim_feedforward: usize,
    /// Encoder layers (6).
    pub enc_layers: usize,
    /// Decoder layers (6).
    pub dec_layers: usize,
    /// `S`, search side in tokens (24).
    pub search_size: usize,
    /// `T`, template side in tokens (8).
    pub template_size: usize,
    /// Window size per head (`[1,2,4,8,1,2,4,8]`).
    pub window_sizes: Vec<usize>,
}

/// The most tokens a side of the search or template region may have: a 4096-pixel crop at
/// stride 16, ten times the released model's.
pub const MAX_SIDE: usize = 256;

impl Config {
    /// The released CSWinTT model: c=256, 8 heads, ff=2048, 6+6 layers, S=24, T=8.
    pub fn released() -> Config {
        Config {
            d_model: 256,
            nhead: 8,
            dim_feedforward: 2048,
            enc_layers: 6,
            dec_layers: 6,
            search_size: 24,
            template_size: 8,
            window_sizes: vec![1, 2, 4, 8, 1, 2, 4, 8],
        }
    }

    /// The config of a weights file: its metadata where present, else inferred from
    /// tensor shapes (see [`crate::model::weights::infer_config`]).
    pub fn from_file(file: &crate::base::TensorFile) -> Result<Config> {
        crate::model::weights::infer_config(file)
    }

    /// The golden files' tiny model: c=64, 8 heads, ff=128, 2+2 layers, S=24, T=8.
    pub fn tiny() -> Config {
        Config {
            d_model: 64,
            dim_feedforward: 128,
            enc_layers: 2,
            dec_layers: 2,
            ..Config::released()
        }
    }

    /// `hd = c / H`, channels per head.
    pub fn hd(&self) -> usize {
        self.d_model / self.nhead
    }

    /// Tokens per template (`T*T`).
    pub fn template_tokens(&self) -> usize {
        self.template_size * self.template_size
    }

    /// Tokens of the search region (`S*S`).
    pub fn search_tokens(&self) -> usize {
        self.search_size * self.search_size
    }

    /// `L_all = S*S + 2*T*T`, all tokens (704).
    pub fn l_all(&self) -> usize {
        self.search_tokens() + 2 * self.template_tokens()
    }

    /// Index of the first search token (`2*T*T`, 128).
    pub fn search_offset(&self) -> usize {
        2 * self.template_tokens()
    }

    /// Head `h`'s window size.
    pub fn window(&self, h: usize) -> usize {
        self.window_sizes[h]
    }

    /// Head `h`'s shift: `w/2` for `h >= H/2`, else 0.
    pub fn shift(&self, h: usize) -> usize {
        if h >= self.nhead / 2 {
            self.window_sizes[h] / 2
        } else {
            0
        }
    }

    /// The largest window.
    pub fn max_window(&self) -> usize {
        self.window_sizes.iter().copied().max().unwrap_or(1)
    }

    /// Whether heads of window `w` add a relative-position bias (`w` in {1, 2, 4}).
    pub fn has_rel_bias(w: usize) -> bool {
        BIAS_WINDOWS.contains(&w)
    }

    /// The distinct windows in use that have a bias table, ascending.
    pub fn bias_windows(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .window_sizes
            .iter()
            .copied()
            .filter(|&w| Config::has_rel_bias(w))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Length of `rel_bias_table{w}`: `(2w-1) * (L_all/w + L/w - 1)` with `L = L_all/w^2`
    /// (the largest index the spec's formula reaches, plus one).
    pub fn rel_bias_table_len(&self, w: usize) -> usize {
        let l_all = self.l_all();
        let l = l_all / (w * w);
        (2 * w - 1) * (l_all / w + (l - 1) / w)
    }

    /// Checks the configuration; `context` names where it came from (a file).
    pub fn validate(&self, context: &str) -> Result<()> {
        let bad = |field: &str, problem: String| {
            Err(Error::invalid(
                format!("{context}: config '{field}'"),
                problem,
            ))
        };
        for (field, v) in [
            ("d_model", self.d_model),
            ("nhead", self.nhead),
            ("dim_feedforward", self.dim_feedforward),
            ("search_size", self.search_size),
            ("template_size", self.template_size),
        ] {
            if v == 0 {
                return bad(field, "must be at least 1, found 0".into());
            }
        }
        if !self.d_model.is_multiple_of(self.nhead) {
            return bad(
                "nhead",
                format!(
                    "nhead {} does not divide d_model {}",
                    self.nhead, self.d_model
                ),
            );
        }
        if self.window_sizes.len() != self.nhead {
            return bad(
                "window_sizes",
                format!(
                    "expected one window per head ({}), found {} ({:?})",
                    self.nhead,
                    self.window_sizes.len(),
                    self.window_sizes
                ),
            );
        }
        if let Some(&w) = self.window_sizes.iter().find(|&&w| w == 0) {
            return bad("window_sizes", format!("window size {w} is not allowed"));
        }
        let wmax = self.max_window();
        for (field, side) in [
            ("search_size", self.search_size),
            ("template_size", self.template_size),
        ] {
            for &w in &self.window_sizes {
                if side % w != 0 {
                    return bad(
                        field,
                        format!(
                            "{side} is not divisible by window size {w} (largest window {wmax})"
                        ),
                    );
                }
            }
        }
        // The sides come from a file's metadata and size every activation: bounded, so a
        // damaged file is an error here rather than an allocation of terabytes later.
        for (field, side) in [
            ("search_size", self.search_size),
            ("template_size", self.template_size),
        ] {
            if side > MAX_SIDE {
                return bad(
                    field,
                    format!("{side} tokens a side is more than the {MAX_SIDE} allowed"),
                );
            }
        }
        Ok(())
    }

    /// The metadata strings attnrt writes (the golden weights files' keys).
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("format".into(), FORMAT.into());
        m.insert("d_model".into(), self.d_model.to_string());
        m.insert("nhead".into(), self.nhead.to_string());
        m.insert("dim_feedforward".into(), self.dim_feedforward.to_string());
        m.insert("enc_layers".into(), self.enc_layers.to_string());
        m.insert("dec_layers".into(), self.dec_layers.to_string());
        m.insert("search_size".into(), self.search_size.to_string());
        m.insert("template_size".into(), self.template_size.to_string());
        m.insert(
            "window_sizes".into(),
            self.window_sizes
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
        m
    }
}

/// One line for reports: `c=256, 8 heads (windows [1, 2, 4, 8, 1, 2, 4, 8]), ff=2048, 6+6
/// layers, S=24, T=8`.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "c={}, {} heads (windows {:?}), ff={}, {}+{} layers, S={}, T={}",
            self.d_model,
            self.nhead,
            self.window_sizes,
            self.dim_feedforward,
            self.enc_layers,
            self.dec_layers,
            self.search_size,
            self.template_size
        )
    }
}

/// The configuration fields found in a file's metadata (each optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartialConfig {
    pub d_model: Option<usize>,
    pub nhead: Option<usize>,
    pub dim_feedforward: Option<usize>,
    pub enc_layers: Option<usize>,
    pub dec_layers: Option<usize>,
    pub search_size: Option<usize>,
    pub template_size: Option<usize>,
    pub window_sizes: Option<Vec<usize>>,
}

impl PartialConfig {
    /// Parses the known keys of `meta`; `context` is the file, for errors.
    pub fn from_metadata(meta: &BTreeMap<String, String>, context: &str) -> Result<PartialConfig> {
        let num = |key: &str| -> Result<Option<usize>> {
            match meta.get(key) {
                None => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                    Error::invalid(
                        format!("{context}: metadata '{key}'"),
                        format!("expected a non-negative integer, found '{v}'"),
                    )
                }),
            }
        };
        let window_sizes =
            match meta.get("window_sizes") {
                None => None,
                Some(v) => Some(parse_windows(v).map_err(|p| {
                    Error::invalid(format!("{context}: metadata 'window_sizes'"), p)
                })?),
            };
        Ok(PartialConfig {
            d_model: num("d_model")?,
            nhead: num("nhead")?,
            dim_feedforward: num("dim_feedforward")?,
            enc_layers: num("enc_layers")?,
            dec_layers: num("dec_layers")?,
            search_size: num("search_size")?,
            template_size: num("template_size")?,
            window_sizes,
        })
    }
}

/// Parses `"1,2,4,8,1,2,4,8"` (also accepts `[1, 2, ...]` and spaces).
pub fn parse_windows(v: &str) -> std::result::Result<Vec<usize>, String> {
    let s = v.trim().trim_start_matches('[').trim_end_matches(']');
    s.split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| format!("expected comma-separated integers, found '{v}'"))
}

/// The default window pattern for `nhead` heads: `[1,2,4,8]` repeated (the released
/// model's `[1,2,4,8,1,2,4,8]` for 8 heads).
pub fn default_windows(nhead: usize) -> Vec<usize> {
    (0..nhead).map(|h| [1, 2, 4, 8][h % 4]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_sizes() {
        let c = Config::released();
        assert_eq!(c.hd(), 32);
        assert_eq!(c.l_all(), 704);
        assert_eq!(c.rel_bias_table_len(1), 1407);
        assert_eq!(c.rel_bias_table_len(2), 1317);
        assert_eq!(c.rel_bias_table_len(4), 1302);
        assert_eq!(
            (0..8).map(|h| c.shift(h)).collect::<Vec<_>>(),
            [0, 0, 0, 0, 0, 1, 2, 4]
        );
        c.validate("test").unwrap();
        assert_eq!(c.bias_windows(), [1, 2, 4]);
    }

    #[test]
    fn rejects_bad() {
        let mut c = Config::released();
        c.search_size = 20;
        assert!(
            c.validate("x")
                .unwrap_err()
                .to_string()
                .contains("search_size")
        );
        let mut c = Config::released();
        c.nhead = 7;
        c.window_sizes = default_windows(7);
        assert!(c.validate("x").unwrap_err().to_string().contains("nhead"));
    }
}
