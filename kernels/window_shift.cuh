// In-window position arithmetic of CSWinTT's cyclic shifts, shared by the inference
// attention (window_attention.cu) and the ViT's training backward (train_window_attention.cu).
// Positions of a w x w window (w = 1 << lw) are pos = r*w + c.
#pragma once

// The position at (r_x - r_y, c_x - c_y) mod w: both the key position that roll y = a*w + e
// brings to query position x, and the roll that brings key position y to x.
__device__ __forceinline__ int wrap_diff(int x, int y, int lw) {
    const int m = (1 << lw) - 1;
    return ((((x >> lw) - (y >> lw)) & m) << lw) | (((x & m) - (y & m)) & m);
}

// The position at (r_x + r_y, c_x + c_y) mod w: the query position to which roll y brings
// key position x (the inverse of wrap_diff in its first argument).
__device__ __forceinline__ int wrap_add(int x, int y, int lw) {
    const int m = (1 << lw) - 1;
    return ((((x >> lw) + (y >> lw)) & m) << lw) | (((x & m) + (y & m)) & m);
}
