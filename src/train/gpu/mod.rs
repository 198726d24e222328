//! A model's pass on one GPU: the [`replica`] (parameters, gradients, optimizer state and the
//! MLP's pass), the ViT's pass ([`vit`]), the CNNs' ([`cnn`]), the linear layers' GEMMs on cuBLASLt ([`linear`])
//! and attention's batched GEMMs on cuBLAS ([`blas`]).

pub mod blas;
mod buffer_pool;
pub mod cnn;
pub mod linear;
pub mod replica;
pub mod vit;
