//! The patch cut's CPU reference (`kernels/patchify.cu`).

use super::Patches;

/// Images `[n, channels, side, side]` to patch rows `[n * (side/patch)^2, channels * patch^2]`:
/// patches in row-major order, each channel-major, then row, then column.
pub fn patchify(x: &[f32], s: Patches) -> Vec<f32> {
    let (ch, side, p) = (s.channels, s.side, s.patch);
    let per_row = side / p;
    let tokens = per_row * per_row;
    let (pd, features) = (ch * p * p, ch * side * side);
    let mut out = vec![0.0f32; s.values()];
    for (row, o) in out.chunks_mut(pd).enumerate() {
        let (img, tok) = (row / tokens, row % tokens);
        let (py, px) = (tok / per_row, tok % per_row);
        let image = &x[img * features..];
        for k in 0..ch {
            for dy in 0..p {
                for dx in 0..p {
                    o[(k * p + dy) * p + dx] = image[(k * side + py * p + dy) * side + px * p + dx];
                }
            }
        }
    }
    out
}
