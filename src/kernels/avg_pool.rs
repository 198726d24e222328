//! `avg_pool`: PyTorch's `AvgPool2d` (floor mode, `count_include_pad`) and
//! `AdaptiveAvgPool2d` over NHWC tensors, forward and backward. [`cpu`] is the reference; the
//! GPU kernels are not written yet.

pub mod cpu;
