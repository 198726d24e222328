//! The head copies' CPU reference (`kernels/heads.cu`): value `e` of the head-major side
//! `[n * h, t, dh]` pairs with one row-major value; see [`Heads`].

use super::Heads;

/// The row-major index of head-major value `e`: slot `slot` of head `head` is token
/// `slot_token[head * t + slot]` (the identity without a table).
fn row_major_index(e: usize, s: &Heads, slot_token: Option<&[u32]>) -> usize {
    let (c, rest) = (e % s.dh, e / s.dh);
    let (slot, rest) = (rest % s.t, rest / s.t);
    let (head, img) = (rest % s.h, rest / s.h);
    let tok = slot_token.map_or(slot, |t| t[head * s.t + slot] as usize);
    (img * s.t + tok) * s.stride + s.offset + head * s.dh + c
}

/// Row-major columns -> head-major `[n * h, t, dh]`, each value times `scale`.
pub fn heads_from_rows(rows: &[f32], s: Heads, slot_token: Option<&[u32]>, scale: f32) -> Vec<f32> {
    (0..s.heads_len())
        .map(|e| scale * rows[row_major_index(e, &s, slot_token)])
        .collect()
}

/// Head-major `[n * h, t, dh]` -> the row-major columns of `rows`, each value times `scale`
/// (the other columns are left as they are).
pub fn heads_to_rows(
    heads: &[f32],
    rows: &mut [f32],
    s: Heads,
    slot_token: Option<&[u32]>,
    scale: f32,
) {
    for (e, &v) in heads[..s.heads_len()].iter().enumerate() {
        rows[row_major_index(e, &s, slot_token)] = scale * v;
    }
}
