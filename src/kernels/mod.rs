//! The ops, one module per op family: `src/kernels/<op>.rs` launches the kernels of
//! `kernels/<op>.cu` through one typed struct loaded once per GPU (`<Op>Kernels::load`), with
//! host-side shape checks before every launch, and `<op>::cpu` is the op's public CPU
//! reference (f64 accumulation), which the CPU engines, the tests and the benches call. The
//! compiled images themselves are the runtime's ([`crate::gpu::images`]), re-exported here.

pub use crate::gpu::images::{KernelModule, compiled};

pub mod allreduce;
pub mod avg_pool;
pub mod batch_norm;
pub mod bias_grad;
pub mod blaslt;
pub mod cast;
pub mod channel_copy;
pub mod conv2d;
pub mod crop;
pub mod dropout;
pub mod elementwise;
pub mod gelu;
pub mod heads;
pub(crate) mod launch;
pub mod layer_norm;
pub mod linear;
pub mod max_pool;
pub mod mean_tokens;
pub mod optimizer;
pub mod patchify;
pub mod pool;
pub mod smoke;
pub mod soft_argmax;
pub mod softmax;
pub mod softmax_cross_entropy;
pub mod window_attention;
