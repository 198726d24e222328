//! `conv2d`: a 2-D convolution with a fused epilogue (bias, residual add, ReLU), as the
//! tracker's backbone and heads use it. [`cpu`] is the reference every engine is checked
//! against.

pub mod cpu;
