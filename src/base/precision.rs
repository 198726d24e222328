//! The arithmetic precision of an engine's matrix products, one type for inference and
//! training. Each engine states which precisions it supports ([`Precision::require`]):
//! the CPU reference only `f32`, the inference engine `f32`, `tf32` and `bf16`, the trainer
//! `f32` and `bf16`.
//!
//! - `f32`: plain f32 arithmetic (FMA), no tensor-core rounding;
//! - `tf32`: GEMM operands rounded to tf32, f32 accumulation;
//! - `bf16`: GEMM operands rounded to bf16 (to nearest even), f32 accumulation.
//!
//! Everything but the GEMM operands (parameters, softmax, LayerNorm, the loss, optimizer
//! state) stays f32 in every precision.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use half::bf16;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Tf32,
    Bf16,
}

/// Tolerance of an f32 engine against the golden files and the CPU reference: relative error
/// `||ours - expected||_F / ||expected||_F <= 1e-5`.
pub const F32_TOLERANCE: f64 = 1e-5;

/// Tolerance of an engine whose GEMMs run on tf32 tensor cores (f32 accumulation).
pub const TF32_TOLERANCE: f64 = 2e-3;

/// Tolerance of an engine whose GEMMs run on bf16 tensor cores (f32 accumulation).
pub const BF16_TOLERANCE: f64 = 2e-2;

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Tf32, Precision::Bf16];

    /// The relative error (`||ours - expected||_F / ||expected||_F`) an engine computing in
    /// this precision is held to against the golden files and the CPU reference.
    pub fn tolerance(self) -> f64 {
        match self {
            Precision::F32 => F32_TOLERANCE,
            Precision::Tf32 => TF32_TOLERANCE,
            Precision::Bf16 => BF16_TOLERANCE,
        }
    }

    /// An error naming `engine` and what it supports unless `self` is one of `supported`.
    pub fn require(self, engine: &str, supported: &[Precision]) -> Result<()> {
        if supported.contains(&self) {
            return Ok(());
        }
        let names: Vec<String> = supported.iter().map(|p| p.to_string()).collect();
        Err(Error::invalid(
            format!("precision '{self}'"),
            format!("{engine} supports {}", names.join(", ")),
        ))
    }

    /// A GEMM operand as this precision uses it: `v` itself in f32, else every value rounded
    /// to bf16 (kept in f32 storage). The trainer's CPU engine emulates bf16 this way; the
    /// GPU's cast kernel rounds the same way, so both multiply the same numbers. tf32 is not
    /// emulated (no CPU engine runs it) and is returned as is.
    pub fn operand(self, v: &[f32]) -> Cow<'_, [f32]> {
        match self {
            Precision::F32 | Precision::Tf32 => Cow::Borrowed(v),
            Precision::Bf16 => Cow::Owned(v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()),
        }
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("'{s}' is not one of f32, tf32, bf16")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling_and_rounds() {
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
        assert_eq!("f32".parse::<Precision>(), Ok(Precision::F32));
        assert_eq!("fp32".parse::<Precision>(), Ok(Precision::F32));
        assert_eq!("tf32".parse::<Precision>(), Ok(Precision::Tf32));
        let e = "fp16".parse::<Precision>().unwrap_err();
        assert!(e.contains("'fp16'") && e.contains("f32, tf32, bf16"), "{e}");
        // 1 + 2^-8 lies halfway between two bf16 values: to even (1); 1 + 3*2^-8 rounds up.
        let v = [1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -0.0];
        assert_eq!(*Precision::Bf16.operand(&v), [1.0, 1.0 + 4.0 / 256.0, -0.0]);
        assert!(matches!(Precision::F32.operand(&v), Cow::Borrowed(_)));
    }

    #[test]
    fn an_engine_names_what_it_supports() {
        let e = Precision::Tf32
            .require("the trainer", &[Precision::F32, Precision::Bf16])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'tf32'") && e.contains("the trainer supports f32, bf16"),
            "{e}"
        );
        assert!(Precision::Bf16.require("x", &Precision::ALL).is_ok());
    }
}
