//! Model data: safetensors I/O ([`io`]), the CSWinTT transformer's configuration
//! ([`config`]) and weights ([`weights`], names as in the released checkpoint), seeded
//! synthetic models and inputs ([`synthetic`]), and where the golden files live
//! ([`golden`]).

pub mod config;
pub mod golden;
pub mod io;
pub mod synthetic;
pub mod tensor;
pub mod weights;

pub use config::Config;
pub use io::TensorFile;
pub use tensor::{Tensor, relative_error};
pub use weights::Weights;
