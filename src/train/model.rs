//! Model specifications and the flat parameter layout every backend shares.
//!
//! All parameters of a model live in one flat f32 vector, and so do their gradients: the
//! all-reduce then exchanges one buffer, and a checkpoint names slices of it. The
//! [`Layout`] says which slice is which tensor.
//!
//! Models, as the job file's `model` names them:
//! - `mlp` or `mlp:H1,H2,...`: fully connected layers `features -> H1 -> ... -> classes`
//!   with ReLU between them (default hidden sizes `512,256`);
//! - `vit-tiny`, `vit-small`: the ViT classifier, not built yet (see docs/TRAINING.md).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Error, Result};

/// A model the trainer can build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSpec {
    /// Layer widths, input first and classes last: `[features, H1, ..., classes]`.
    Mlp { dims: Vec<usize> },
}

const DEFAULT_HIDDEN: [usize; 2] = [512, 256];

impl ModelSpec {
    /// Parses a job file's `model` value for inputs of `features` values and `classes`
    /// classes. `context` names the job and key in errors.
    pub fn parse(spec: &str, features: usize, classes: usize, context: &str) -> Result<ModelSpec> {
        let (name, arg) = match spec.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (spec, None),
        };
        match (name, arg) {
            ("mlp", hidden) => {
                let hidden = match hidden {
                    None => DEFAULT_HIDDEN.to_vec(),
                    Some(list) => list
                        .split(',')
                        .map(|h| h.trim().parse::<usize>().ok().filter(|&h| h > 0))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| {
                            Error::invalid(
                                context,
                                format!(
                                    "'{spec}': mlp:H1,H2,... needs hidden sizes >= 1, \
                                     separated by commas"
                                ),
                            )
                        })?,
                };
                let mut dims = vec![features];
                dims.extend(hidden);
                dims.push(classes);
                Ok(ModelSpec::Mlp { dims })
            }
            ("vit-tiny" | "vit-small", None) => Err(Error::invalid(
                context,
                format!(
                    "'{spec}': the ViT models are not built yet; use mlp or mlp:H1,H2,... \
                     (docs/TRAINING.md)"
                ),
            )),
            _ => Err(Error::invalid(
                context,
                format!("'{spec}' is not one of mlp, mlp:H1,H2,..., vit-tiny, vit-small"),
            )),
        }
    }

    /// The parameter layout.
    pub fn layout(&self) -> Layout {
        let mut layout = Layout::default();
        match self {
            ModelSpec::Mlp { dims } => {
                for (i, w) in dims.windows(2).enumerate() {
                    layout.push(format!("fc{i}.weight"), vec![w[1], w[0]]);
                    layout.push(format!("fc{i}.bias"), vec![w[1]]);
                }
            }
        }
        layout
    }

    /// Initial parameters drawn from `seed`: every tensor uniform in `±1/sqrt(fan_in)`
    /// (PyTorch's default for linear layers).
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let layout = self.layout();
        let mut params = vec![0.0f32; layout.total];
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1417_1A11);
        match self {
            ModelSpec::Mlp { dims } => {
                for (slot, fan_in) in layout
                    .slots
                    .iter()
                    .zip(dims.windows(2).flat_map(|w| [w[0], w[0]]))
                {
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    for p in &mut params[slot.range()] {
                        *p = rng.random_range(-bound..bound);
                    }
                }
            }
        }
        params
    }

    /// Input features per sample.
    pub fn features(&self) -> usize {
        match self {
            ModelSpec::Mlp { dims } => dims[0],
        }
    }

    /// Output classes.
    pub fn classes(&self) -> usize {
        match self {
            ModelSpec::Mlp { dims } => dims[dims.len() - 1],
        }
    }
}

/// One named tensor in the flat parameter vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
}

impl Slot {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// Where each tensor lies in the flat vector; `total` is its length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub slots: Vec<Slot>,
    pub total: usize,
}

impl Layout {
    fn push(&mut self, name: String, shape: Vec<usize>) {
        let len = shape.iter().product();
        self.slots.push(Slot {
            name,
            shape,
            offset: self.total,
            len,
        });
        self.total += len;
    }
}
