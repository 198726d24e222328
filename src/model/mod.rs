//! Model data: the CSWinTT transformer's configuration ([`config`]) and weights
//! ([`weights`], names as in the released checkpoint), seeded synthetic models and inputs
//! ([`synthetic`]), and where the golden files live ([`golden`]). Files are read and written
//! through [`crate::base::safetensors`].

pub mod config;
pub mod golden;
pub mod synthetic;
pub mod weights;

pub use config::Config;
pub use weights::Weights;
