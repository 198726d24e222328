//! The transformer's arithmetic, counted once: the floating-point operations of one forward
//! pass, for FLOP/s figures (`attnrt-infer --iters`, benches).

use crate::model::config::Config;

/// Floating-point operations of one forward pass (encoder + decoder) at batch `batch`.
///
/// Counted: every matrix product, a multiply-add as 2 operations. Not counted: softmax,
/// LayerNorm, biases, ReLU, residuals and the `sr` / bias adds (a few percent at the
/// released size), nor work the engine skips (padding, the decoder's one-key self
/// attention softmax). With `N = L_all * batch` tokens, `c` channels, `ff` hidden width:
/// - encoder layer: QKV `2N*c*3c`, output projection `2N*c*c`, FFN `2 * 2N*c*ff`;
///   attention per head and batch item, `L_all` query slots against `L_all` key columns,
///   each score a dot of one window's `w*w*hd` values over `w*w` slots, likewise the
///   output: `2 * 2*L_all^2*hd` whatever the window, so `4*L_all^2*c` over the heads;
/// - decoder: the cross-attention keys and values of every layer from the encoder output
///   `2N*c*2c*layers`; per layer and batch item: self-attention value and output
///   projections, cross-attention query and output projections `4 * 2*c*c`, cross
///   attention of one query over `L_all` keys `2 * 2*L_all*c`, FFN `2 * 2*c*ff`.
pub fn flops(cfg: &Config, batch: usize) -> f64 {
    let (c, ff) = (cfg.d_model as f64, cfg.dim_feedforward as f64);
    let (l, b) = (cfg.l_all() as f64, batch as f64);
    let n = l * b;
    let decoder_layer = b * (4.0 * 2.0 * c * c + 2.0 * 2.0 * l * c + 2.0 * 2.0 * c * ff);
    let memory_kv = 2.0 * n * c * 2.0 * c * cfg.dec_layers as f64;
    encoder_flops(cfg, batch) + memory_kv + cfg.dec_layers as f64 * decoder_layer
}

/// The encoder's share of [`flops`]: its layers alone (counted as there), for the FLOP/s of
/// encoder-only timings.
pub fn encoder_flops(cfg: &Config, batch: usize) -> f64 {
    let (c, ff) = (cfg.d_model as f64, cfg.dim_feedforward as f64);
    let (l, b) = (cfg.l_all() as f64, batch as f64);
    let n = l * b;
    let layer =
        2.0 * n * c * 3.0 * c + 4.0 * l * l * c * b + 2.0 * n * c * c + 2.0 * 2.0 * n * c * ff;
    cfg.enc_layers as f64 * layer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_size_count() {
        // c=256, ff=2048, 704 tokens, 6+6 layers: about 15.2 GFLOP per frame, of which the
        // encoder's attention is 4 * 704^2 * 256 * 6.
        let cfg = Config::released();
        let one = flops(&cfg, 1);
        assert!((one / 1e9 - 15.245).abs() < 0.001, "{one:e}");
        assert!((flops(&cfg, 4) - 4.0 * one).abs() < 1e-6 * one);
        // The encoder's six layers are most of it.
        assert!((encoder_flops(&cfg, 1) / 1e9 - 14.118).abs() < 0.001);
    }
}
