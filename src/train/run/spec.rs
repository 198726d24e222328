//! A job's training keys in the job file, typed and checked once: `model`, `dataset`, and the
//! optional `optimizer`, `lr` and `precision` (the command line's flags override these
//! three), and the CNNs' `classes`, `init_weights`, `sync_bn`, `dropout` and
//! `f32_conv_transforms`. The other keys of a `[[job]]` are the scheduler's
//! (`crate::sched::jobs`).

use serde::{Deserialize, Serialize};

use crate::base::Precision;
use crate::train::PRECISIONS;
use crate::train::models::cnn::Arch;
use crate::train::optim::OptimizerKind;
use crate::{Error, Result};

/// One `[[job]]`'s training keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    /// The model to build (`crate::train::models::ModelSpec::parse`).
    pub model: String,
    /// The dataset to read (`crate::train::data::Dataset::open`).
    pub dataset: String,
    /// Default adamw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<OptimizerKind>,
    /// Default 1e-3 ([`DEFAULT_LR`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// The GEMM operands' precision, one of [`PRECISIONS`] (default f32). Master weights,
    /// optimizer state and gradients are f32 either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// The model's outputs (at least the dataset's classes); default: the CNNs 1000, the
    /// other models the dataset's classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<usize>,
    /// A safetensors file of initial weights under torchvision's names (the CNNs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_weights: Option<String>,
    /// The CNNs' batch norms normalise over the whole batch, all devices' shards together
    /// (default false: each device its own shard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_bn: Option<bool>,
    /// The probability of the CNNs' dropout layers, in [0, 1) (default: the architecture's,
    /// 0.5 for AlexNet); 0 turns dropout off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    /// Whether the CNNs' f32 convolutions on the GPU may use cuDNN's FFT and Winograd
    /// algorithms, as PyTorch's f32 does (default false: direct and implicit-GEMM sums, about
    /// 1e-7 a call where the transforms lose 1e-5 to 1e-3; see `kernels::conv2d`). bf16 may
    /// always; the CPU's convolutions are direct sums either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f32_conv_transforms: Option<bool>,
}

/// The learning rate when neither the job file nor `--lr` gives one.
pub const DEFAULT_LR: f32 = 1e-3;

/// The keys as written in a job file, before they are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    model: String,
    dataset: String,
    #[serde(default)]
    optimizer: Option<String>,
    #[serde(default)]
    lr: Option<f64>,
    #[serde(default)]
    precision: Option<String>,
    #[serde(default)]
    classes: Option<i64>,
    #[serde(default)]
    init_weights: Option<String>,
    #[serde(default)]
    sync_bn: Option<bool>,
    #[serde(default)]
    dropout: Option<f64>,
    #[serde(default)]
    f32_conv_transforms: Option<bool>,
}

impl TrainSpec {
    /// The `[[job]]` keys this type reads.
    pub const KEYS: [&'static str; 10] = [
        "model",
        "dataset",
        "optimizer",
        "lr",
        "precision",
        "classes",
        "init_weights",
        "sync_bn",
        "dropout",
        "f32_conv_transforms",
    ];

    /// Reads and checks a job's training keys; `label` (the file and the job, e.g.
    /// `jobs.toml: job 'a'`) starts every error, followed by the key.
    pub fn from_table(table: toml::Table, label: &str) -> Result<TrainSpec> {
        let ctx = |key: &str| format!("{label}: {key}");
        let w =
            Written::deserialize(toml::Value::Table(table)).map_err(|e| Error::parse(label, e))?;
        if w.model.trim().is_empty() {
            return Err(Error::invalid(ctx("model"), "must not be empty"));
        }
        if w.dataset.trim().is_empty() {
            return Err(Error::invalid(ctx("dataset"), "must not be empty"));
        }
        let optimizer = w
            .optimizer
            .map(|name| {
                name.parse()
                    .map_err(|p| Error::invalid(ctx("optimizer"), p))
            })
            .transpose()?;
        if let Some(lr) = w.lr
            && !(lr.is_finite() && lr > 0.0)
        {
            return Err(Error::invalid(
                ctx("lr"),
                format!("must be finite and > 0, got {lr}"),
            ));
        }
        let precision = w
            .precision
            .map(|name| parse_precision(&name).map_err(|p| Error::invalid(ctx("precision"), p)))
            .transpose()?;
        let classes = w
            .classes
            .map(|k| match usize::try_from(k) {
                Ok(k) if k > 0 => Ok(k),
                _ => Err(Error::invalid(
                    ctx("classes"),
                    format!("must be at least 1, got {k}"),
                )),
            })
            .transpose()?;
        if w.init_weights
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            return Err(Error::invalid(ctx("init_weights"), "must not be empty"));
        }
        // Batch norm and dropout layers are the CNNs' alone.
        let cnn_only = |key: &str| {
            Error::invalid(
                ctx(key),
                format!(
                    "only the torchvision CNNs have it, model '{}' does not",
                    w.model
                ),
            )
        };
        let is_cnn = Arch::from_name(&w.model).is_some();
        if w.sync_bn.is_some() && !is_cnn {
            return Err(cnn_only("sync_bn"));
        }
        if w.f32_conv_transforms.is_some() && !is_cnn {
            return Err(cnn_only("f32_conv_transforms"));
        }
        if let Some(p) = w.dropout {
            if !is_cnn {
                return Err(cnn_only("dropout"));
            }
            if !(0.0..1.0).contains(&p) {
                return Err(Error::invalid(
                    ctx("dropout"),
                    format!("must be in [0, 1), got {p}"),
                ));
            }
        }
        Ok(TrainSpec {
            model: w.model,
            dataset: w.dataset,
            optimizer,
            lr: w.lr,
            precision,
            classes,
            init_weights: w.init_weights,
            sync_bn: w.sync_bn,
            dropout: w.dropout,
            f32_conv_transforms: w.f32_conv_transforms,
        })
    }
}

/// A precision the trainer runs ([`PRECISIONS`]), by name; the error lists them.
pub fn parse_precision(name: &str) -> std::result::Result<Precision, String> {
    match name.parse::<Precision>() {
        Ok(p) if PRECISIONS.contains(&p) => Ok(p),
        _ => {
            let names: Vec<String> = PRECISIONS.iter().map(|p| p.to_string()).collect();
            Err(format!("'{name}' is not one of {}", names.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> Result<TrainSpec> {
        let text = format!("model = \"mlp\"\ndataset = \"synthetic\"\n{extra}");
        TrainSpec::from_table(toml::from_str(&text).unwrap(), "jobs.toml: job 'j'")
    }

    fn err(extra: &str) -> String {
        spec(extra).unwrap_err().to_string()
    }

    #[test]
    fn keys_are_typed_and_checked_with_the_job_named() {
        let plain = spec("").unwrap();
        assert_eq!(
            (plain.optimizer, plain.lr, plain.precision),
            (None, None, None)
        );
        let full = spec("optimizer = \"sgd\"\nlr = 0.5\nprecision = \"bf16\"").unwrap();
        assert_eq!(full.optimizer, Some(OptimizerKind::Sgd));
        assert_eq!(full.lr, Some(0.5));
        assert_eq!(full.precision, Some(Precision::Bf16));
        assert_eq!(
            spec("precision = \"fp32\"").unwrap().precision,
            Some(Precision::F32)
        );
        let e = err("precision = \"f16\"");
        assert!(
            e.starts_with("jobs.toml: job 'j': precision") && e.contains("'f16'"),
            "{e}"
        );
        // Precisions that exist but the trainer does not run are refused here too.
        let e = err("precision = \"tf32\"");
        assert!(e.contains("'tf32' is not one of f32, bf16"), "{e}");
        let e = err("precision = 16");
        assert!(e.contains("job 'j'") && e.contains("precision"), "{e}");
        let e = err("classes = 0");
        assert!(
            e.starts_with("jobs.toml: job 'j': classes: must be at least 1"),
            "{e}"
        );
        assert_eq!(spec("classes = 7").unwrap().classes, Some(7));
        let e = err("init_weights = \"\"");
        assert!(e.starts_with("jobs.toml: job 'j': init_weights"), "{e}");
        let e = err("lr = -1.0");
        assert!(e.starts_with("jobs.toml: job 'j': lr"), "{e}");
        let e = err("optimizer = \"adam\"");
        assert!(
            e.contains("job 'j': optimizer") && e.contains("'adam'"),
            "{e}"
        );
        let e = TrainSpec::from_table(toml::Table::new(), "jobs.toml: job 'j'")
            .unwrap_err()
            .to_string();
        assert!(e.contains("job 'j'") && e.contains("model"), "{e}");
        let empty = TrainSpec::from_table(
            toml::from_str("model = \" \"\ndataset = \"synthetic\"").unwrap(),
            "jobs.toml: job 'j'",
        )
        .unwrap_err()
        .to_string();
        assert!(empty.contains("job 'j': model"), "{empty}");
    }

    #[test]
    fn sync_bn_dropout_and_conv_transforms_are_the_cnns_keys() {
        let cnn = |extra: &str| {
            let text = format!("model = \"resnet50\"\ndataset = \"synthetic\"\n{extra}");
            TrainSpec::from_table(toml::from_str(&text).unwrap(), "jobs.toml: job 'j'")
        };
        let s = cnn("sync_bn = true\ndropout = 0.0").unwrap();
        assert_eq!((s.sync_bn, s.dropout), (Some(true), Some(0.0)));
        assert_eq!(cnn("").unwrap().sync_bn, None);
        let e = err("sync_bn = true");
        assert!(
            e.starts_with("jobs.toml: job 'j': sync_bn") && e.contains("model 'mlp'"),
            "{e}"
        );
        let e = err("dropout = 0.1");
        assert!(e.starts_with("jobs.toml: job 'j': dropout"), "{e}");
        for bad in ["dropout = 1.0", "dropout = -0.5", "dropout = nan"] {
            let e = cnn(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("jobs.toml: job 'j': dropout: must be in [0, 1)"),
                "{e}"
            );
        }
        let e = cnn("sync_bn = \"yes\"").unwrap_err().to_string();
        assert!(e.contains("job 'j'") && e.contains("sync_bn"), "{e}");
        let s = cnn("f32_conv_transforms = true").unwrap();
        assert_eq!(s.f32_conv_transforms, Some(true));
        let e = err("f32_conv_transforms = false");
        assert!(
            e.starts_with("jobs.toml: job 'j': f32_conv_transforms") && e.contains("model 'mlp'"),
            "{e}"
        );
        let e = cnn("f32_conv_transforms = 1").unwrap_err().to_string();
        assert!(
            e.contains("job 'j'") && e.contains("f32_conv_transforms"),
            "{e}"
        );
    }

    #[test]
    fn precision_names_what_the_trainer_runs() {
        assert_eq!(parse_precision("bf16"), Ok(Precision::Bf16));
        assert_eq!(
            parse_precision("fp16").unwrap_err(),
            "'fp16' is not one of f32, bf16"
        );
    }
}
