//! `batch_norm`: PyTorch's `BatchNorm2d` over NHWC tensors (per channel, over the batch and
//! every pixel), in train mode (the batch's statistics, with the running statistics updated)
//! and eval mode (the running statistics). [`cpu`] is the reference; the GPU kernels are not
//! written yet.

pub mod cpu;
