//! The arithmetic of the linear layers' GEMMs: `f32`, or `bf16` operands with f32
//! accumulation (issue 7's "bf16 compute with f32 master weights"). Everything else of a step
//! stays f32 in both: parameters, optimizer state, gradients, the all-reduce, attention,
//! LayerNorm, softmax and the loss. This is the trainer's own setting (a job file's
//! `precision`, `--precision`); the inference engine's `cswintt::Precision` also has `tf32`.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use half::bf16;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// GEMM operands rounded to bf16 (to nearest even), products accumulated in f32.
    Bf16,
}

impl Precision {
    /// A GEMM operand as this precision uses it: `v` itself in f32, else every value rounded
    /// to bf16 (kept in f32 storage). The CPU engine emulates bf16 this way; the GPU's cast
    /// kernel rounds the same way, so both multiply the same numbers.
    pub fn operand(self, v: &[f32]) -> Cow<'_, [f32]> {
        match self {
            Precision::F32 => Cow::Borrowed(v),
            Precision::Bf16 => Cow::Owned(v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()),
        }
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("'{s}' is not one of f32, bf16")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rounds() {
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
        assert_eq!("f32".parse::<Precision>(), Ok(Precision::F32));
        let e = "fp16".parse::<Precision>().unwrap_err();
        assert!(e.contains("'fp16'") && e.contains("f32, bf16"), "{e}");
        // 1 + 2^-8 lies halfway between two bf16 values: to even (1); 1 + 3*2^-8 rounds up.
        let v = [1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -0.0];
        assert_eq!(*Precision::Bf16.operand(&v), [1.0, 1.0 + 4.0 / 256.0, -0.0]);
        assert!(matches!(Precision::F32.operand(&v), Cow::Borrowed(_)));
    }
}
