//! `dropout`: PyTorch's `Dropout` in train mode (zero each value with probability `p`, scale
//! the rest by `1 / (1 - p)`), with masks drawn from a seed so that a step can be repeated
//! exactly. [`cpu`] is the reference; the GPU kernel is not written yet.

pub mod cpu;
