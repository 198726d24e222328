//! Model specifications and the flat parameter layout every backend shares.
//!
//! All parameters of a model live in one flat f32 vector, and so do their gradients: the
//! all-reduce then exchanges one buffer, and a checkpoint names slices of it. The
//! [`Layout`] says which slice is which tensor.
//!
//! Models, as the job file's `model` names them:
//! - `mlp` or `mlp:H1,H2,...`: fully connected layers `features -> H1 -> ... -> classes`
//!   with ReLU between them (default hidden sizes `512,256`);
//! - `vit-tiny`, `vit-small`, or `vit:P,D,L,H,M` (patch, width, depth, heads, MLP width):
//!   the ViT classifier of [`crate::train::models::vit`] on 32x32x3 images. `vit-tiny` is `vit:4,192,6,3,768`,
//!   `vit-small` is `vit:4,384,12,6,1536`. `vit-tiny-win`, `vit-small-win` and
//!   `vit:P,D,L,H,M,win` are the same with CSWinTT's cyclic-shift window attention;
//! - `resnet50`, `resnext50_32x4d`, `densenet121`, `alexnet`, `shufflenet_v2_x1_0`:
//!   torchvision's CNNs ([`cnn`]) with the job's `classes` (default 1000) outputs.

pub mod cnn;
pub mod cpu;
pub mod vit;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::train::data::ImageShape;
use crate::{Error, Result};
use cnn::{Arch, CnnConfig};
use vit::VitConfig;

/// A model the trainer can build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSpec {
    /// Layer widths, input first and classes last: `[features, H1, ..., classes]`.
    Mlp {
        dims: Vec<usize>,
    },
    Vit(VitConfig),
    /// One of the torchvision CNNs ([`cnn`]).
    Cnn(CnnConfig),
}

const DEFAULT_HIDDEN: [usize; 2] = [512, 256];
/// The largest size a `model` value may give (a width, a depth, a head count).
pub const MAX_SIZE: usize = 1 << 20;
/// The most parameters a model may have: 2^31 (8 GB of f32, four times that with the
/// gradients and AdamW's moments), far beyond what this trainer trains, so that a typo in
/// `model` is an error and not an allocation of terabytes.
pub const MAX_PARAMETERS: usize = 1 << 31;
/// `vit-tiny` and `vit-small` as `vit:P,D,L,H,M` sizes.
const TINY: [usize; 5] = [4, 192, 6, 3, 768];
const SMALL: [usize; 5] = [4, 384, 12, 6, 1536];

impl ModelSpec {
    /// Parses a job file's `model` value for images of `image` shape and `classes` classes.
    /// `context` names the job and key in errors.
    pub fn parse(
        spec: &str,
        image: ImageShape,
        classes: usize,
        context: &str,
    ) -> Result<ModelSpec> {
        if let Some(arch) = Arch::from_name(spec) {
            let config = CnnConfig {
                arch,
                classes,
                image,
            };
            cnn::build(config, context)?;
            return Ok(ModelSpec::Cnn(config));
        }
        let (name, arg) = match spec.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (spec, None),
        };
        let sizes = |list: &str, what: &str| {
            list.split(',')
                .map(|h| {
                    h.trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|&h| (1..=MAX_SIZE).contains(&h))
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    Error::invalid(
                        context,
                        format!("'{spec}': {what} (each at most {MAX_SIZE})"),
                    )
                })
        };
        let vit = |v: &[usize], windows: bool| {
            let c = VitConfig {
                image,
                patch: v[0],
                dim: v[1],
                depth: v[2],
                heads: v[3],
                mlp: v[4],
                classes,
                windows,
            };
            if image.height != image.width
                || !image.height.is_multiple_of(c.patch)
                || !c.dim.is_multiple_of(c.heads)
            {
                return Err(Error::invalid(
                    context,
                    format!(
                        "'{spec}': the ViT needs square images whose side the patch ({}) divides \
                         and a width ({}) the heads ({}) divide; the dataset's images are {}x{}x{}",
                        c.patch, c.dim, c.heads, image.channels, image.height, image.width
                    ),
                ));
            }
            Ok(ModelSpec::Vit(c))
        };
        let spec_checked = |model: ModelSpec| {
            let total = model.layout().total;
            if total > MAX_PARAMETERS {
                return Err(Error::invalid(
                    context,
                    format!(
                        "'{spec}' has {total} parameters, more than the {MAX_PARAMETERS} allowed"
                    ),
                ));
            }
            Ok(model)
        };
        match (name, arg) {
            ("mlp", hidden) => {
                let hidden = match hidden {
                    None => DEFAULT_HIDDEN.to_vec(),
                    Some(list) => sizes(
                        list,
                        "mlp:H1,H2,... needs hidden sizes >= 1, separated by commas",
                    )?,
                };
                let mut dims = vec![image.features()];
                dims.extend(hidden);
                dims.push(classes);
                spec_checked(ModelSpec::Mlp { dims })
            }
            ("vit-tiny", None) => vit(&TINY, false),
            ("vit-small", None) => vit(&SMALL, false),
            ("vit-tiny-win", None) => vit(&TINY, true),
            ("vit-small-win", None) => vit(&SMALL, true),
            ("vit", Some(list)) => {
                // A trailing `win` option picks window attention.
                let (list, windows) = match list.rsplit_once(',') {
                    Some((rest, opt)) if opt.trim() == "win" => (rest, true),
                    _ => (list, false),
                };
                let need = "vit:P,D,L,H,M[,win] needs five sizes >= 1, then optionally win";
                let v = sizes(list, need)?;
                if v.len() != 5 {
                    return Err(Error::invalid(context, format!("'{spec}': {need}")));
                }
                spec_checked(vit(&v, windows)?)
            }
            _ => Err(Error::invalid(
                context,
                format!(
                    "'{spec}' is not one of mlp, mlp:H1,H2,..., vit-tiny, vit-small, \
                     vit-tiny-win, vit-small-win, vit:P,D,L,H,M[,win], {}",
                    Arch::ALL.map(Arch::name).join(", ")
                ),
            )),
        }
    }

    /// The parameter layout.
    pub fn layout(&self) -> Layout {
        match self {
            ModelSpec::Mlp { dims } => {
                let mut layout = Layout::default();
                for (i, w) in dims.windows(2).enumerate() {
                    layout.push(format!("fc{i}.weight"), vec![w[1], w[0]]);
                    layout.push(format!("fc{i}.bias"), vec![w[1]]);
                }
                layout
            }
            ModelSpec::Vit(c) => vit::layout(c).0,
            ModelSpec::Cnn(c) => self::cnn::graph(*c).layout,
        }
    }

    /// The layout of the state that is not trained (batch norm's running statistics; empty
    /// for the MLP and the ViT).
    pub fn buffers(&self) -> Layout {
        match self {
            ModelSpec::Cnn(c) => self::cnn::graph(*c).buffers(),
            _ => Layout::default(),
        }
    }

    /// The buffers' initial values.
    pub fn initial_buffers(&self) -> Vec<f32> {
        match self {
            ModelSpec::Cnn(c) => self::cnn::graph(*c).initial_buffers(),
            _ => Vec::new(),
        }
    }

    /// Initial parameters drawn from `seed` (the CNNs: [`cnn::Graph::init`]): linear layers uniform in `±1/sqrt(fan_in)`
    /// (PyTorch's default; a bias takes its weight's bound), LayerNorm scales 1 and shifts 0,
    /// the position embedding uniform in `±0.02`.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        if let ModelSpec::Cnn(c) = self {
            return self::cnn::graph(*c).init(seed);
        }
        let layout = self.layout();
        let mut params = vec![0.0f32; layout.total];
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1417_1A11);
        let mut bound = 1.0f32;
        for slot in &layout.slots {
            let p = &mut params[slot.range()];
            let is_norm = slot.name.contains(".ln") || slot.name.starts_with("norm.");
            if is_norm {
                p.fill(if slot.name.ends_with(".weight") {
                    1.0
                } else {
                    0.0
                });
                continue;
            }
            if slot.name == "pos" {
                p.iter_mut()
                    .for_each(|v| *v = rng.random_range(-0.02..0.02));
                continue;
            }
            if let [_, fan_in] = slot.shape[..] {
                bound = 1.0 / (fan_in as f32).sqrt();
            }
            p.iter_mut()
                .for_each(|v| *v = rng.random_range(-bound..bound));
        }
        params
    }

    /// Input features per sample.
    pub fn features(&self) -> usize {
        match self {
            ModelSpec::Mlp { dims } => dims[0],
            ModelSpec::Vit(c) => c.image.features(),
            ModelSpec::Cnn(c) => c.image.features(),
        }
    }

    /// Output classes.
    pub fn classes(&self) -> usize {
        match self {
            ModelSpec::Mlp { dims } => dims[dims.len() - 1],
            ModelSpec::Vit(c) => c.classes,
            ModelSpec::Cnn(c) => c.classes,
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
    /// Appends a tensor and returns its offset.
    pub(crate) fn push(&mut self, name: String, shape: Vec<usize>) -> usize {
        let len = shape.iter().product();
        let offset = self.total;
        self.slots.push(Slot {
            name,
            shape,
            offset,
            len,
        });
        self.total += len;
        offset
    }
}
