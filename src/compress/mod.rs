//! Compression of a trained network: a pruner (`prune`: DNS or magnitude, every weight layer
//! to the same density) and a quantiser (`quant`: fixed point or affine integer, its
//! activations calibrated on training images where it needs them), then fine-tuning through
//! the compression (masks and STE quantisers in the forward pass) from the baseline's weights.

mod calibrate;
mod stats;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

pub use stats::{Cdf, LayerSummary, cdf_rows, weight_summary};

use crate::data::{DataChoice, DatasetRecord, Images, Split};
use crate::kernels::QuantGrad;
use crate::model::{
    self, CheckpointMeta, Compression, CompressionRecord, KeyMap, Mask, ModelIdentity, ModelLabel,
    Network, Quantisation, weight_layers,
};
use crate::prune::PruneConfig;
use crate::quant::QuantConfig;
use crate::train::{self, EVAL_BATCH_SIZE, EpochReport, StepInfo, TrainConfig, TrainSettings};
use crate::{Error, ModelRole, Result};

/// How a compressed model is fine-tuned: `advcomp compress`'s flags (flattened) and a sweep's
/// `[finetune]` table. The defaults are written here only: the STE, and 3 epochs of
/// [`TrainSettings`]' run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneSettings {
    /// Quantiser gradient: ste (zero where clamped) or identity (BPDA). A setting of the
    /// compressed model, not of the attacks (they try every estimator on the same models).
    #[arg(long, default_value_t = FinetuneSettings::default().grad)]
    pub grad: QuantGrad,
    #[serde(flatten)]
    #[command(flatten)]
    pub train: TrainSettings,
}

impl Default for FinetuneSettings {
    fn default() -> Self {
        Self {
            grad: QuantGrad::Ste,
            train: TrainSettings {
                epochs: 3,
                ..TrainSettings::default()
            },
        }
    }
}

impl FinetuneSettings {
    /// The compression of `model` on `dataset` with `seed`, fine-tuned as these settings say
    /// (no pruner or quantiser yet: set at least one).
    pub fn config(
        &self,
        model: impl Into<ModelIdentity>,
        dataset: impl Into<DatasetRecord>,
        seed: u64,
    ) -> CompressConfig {
        CompressConfig {
            grad: self.grad,
            ..CompressConfig::new(self.train.config(model, dataset, seed))
        }
    }
}

/// Everything a compression run depends on. Its JSON (these fields in this order) is hashed
/// into checkpoints and the sweep's cache keys.
#[derive(Clone, Debug, Serialize)]
pub struct CompressConfig {
    /// The pruner with its settings (its target density among them), or no pruning.
    pub prune: Option<PruneConfig>,
    /// The quantiser with its settings, or no quantisation.
    pub quant: Option<QuantConfig>,
    pub grad: QuantGrad,
    /// Fine-tuning run (epochs may be 0: compress without fine-tuning).
    pub finetune: TrainConfig,
}

/// Refuses a quantiser that stands for a QDQ file's grids (calibration `file`): advcomp
/// does not make them.
pub fn refuse_imported(q: &QuantConfig) -> Result<()> {
    match q.imported() {
        true => Err(Error::invalid(
            "calibration",
            "file: the grids of an imported QDQ model, which advcomp does not make (calibrate \
             with minmax, percentile or mse)",
        )),
        false => Ok(()),
    }
}

impl CompressConfig {
    /// No pruning, no quantisation (set at least one), fine-tuned by `finetune` as given,
    /// through [`FinetuneSettings`]' default gradient.
    pub fn new(finetune: TrainConfig) -> Self {
        Self {
            prune: None,
            quant: None,
            grad: FinetuneSettings::default().grad,
            finetune,
        }
    }

    /// Refuses settings that cannot run, naming the field.
    pub fn validate(&self) -> Result<()> {
        if let Some(p) = &self.prune {
            p.validate()?;
        }
        if let Some(q) = &self.quant {
            q.validate()?;
            refuse_imported(q)?;
        }
        if self.prune.is_none() && self.quant.is_none() {
            return Err(Error::usage(
                "nothing to compress: give --prune dns|magnitude with --density, --bits, --quant or \
                 --quantiser",
            ));
        }
        if self.finetune.epochs > 0 {
            self.finetune.validate()?;
        }
        Ok(())
    }

    /// A stable hash of this config, written into the compressed checkpoint.
    pub fn hash(&self) -> String {
        let json = serde_json::to_string(self).expect("config serialises");
        crate::stable_hash([json.as_bytes()])
    }

    /// The model's label in a sweep.
    pub fn label(&self) -> ModelLabel {
        ModelLabel::compressed(self.prune.as_ref(), self.quant.as_ref())
    }
}

/// A compressed network: weights baked (masked, quantised), its compression, and the record
/// its checkpoint carries.
pub struct Compressed {
    pub network: Network,
    pub compression: Compression,
    pub record: CompressionRecord,
    pub epochs: Vec<EpochReport>,
    /// Clean accuracy on the test images, compressed.
    pub test_accuracy: f64,
    /// DNS: alpha per layer at the last mask update.
    pub alphas: Vec<(String, f64)>,
}

/// Masks for every weight layer of `network` at `density`, updated from `current`'s; and the
/// pruner's threshold parameter per layer where it has one.
fn prune_all(
    pruner: &PruneConfig,
    network: &Network,
    current: &Compression,
    density: f64,
) -> (std::collections::BTreeMap<String, Mask>, Vec<(String, f64)>) {
    let mut masks = std::collections::BTreeMap::new();
    let mut alphas = Vec::new();
    for layer in weight_layers(network) {
        let now = current.masks.get(&layer.name).map(|m| &m.values);
        let (values, alpha) = pruner.mask(&layer.values, now, density);
        if let Some(alpha) = alpha {
            alphas.push((layer.name.clone(), alpha));
        }
        let mask = Mask {
            values,
            shape: layer.shape,
        };
        masks.insert(layer.name, mask);
    }
    (masks, alphas)
}

/// Compresses `base` (a trained network, without autodiff, on `device`) as `config` says and
/// fine-tunes it on `train`, evaluating on `test` after each epoch. A quantiser whose grids
/// depend on the data is calibrated on `train` first (after pruning), and its weight grids
/// follow the weights while they are fine-tuned.
pub fn compress(
    base: &Network,
    config: &CompressConfig,
    device: &Device,
    train_set: &Images,
    test: &Images,
    on_epoch: impl FnMut(&EpochReport),
) -> Result<Compressed> {
    config.validate()?;
    let mut compression = Compression {
        grad: config.grad,
        ..Compression::default()
    };
    let total = match config.finetune.epochs {
        0 => 0,
        epochs => epochs * steps_per_epoch(&config.finetune, train_set),
    };
    let mut alphas = Vec::new();
    if let Some(pruner) = &config.prune {
        let density = pruner
            .density_at(0, total)
            .expect("masks are set at step 0");
        let (masks, a) = prune_all(pruner, base, &compression, density);
        (compression.masks, alphas) = (masks, a);
    }
    if let Some(quant) = &config.quant {
        let mut grids = crate::quant::Grids::default();
        if let Some(calibration) = quant.calibration() {
            grids.activations =
                calibrate::activations(base, &compression, quant, calibration, train_set, device)?;
        }
        compression.quant = Some(Quantisation {
            config: quant.clone(),
            grids,
        });
        if quant.kind().data_dependent() {
            calibrate::refresh_weights(base, &mut compression);
        }
    }
    let data_dependent = config
        .quant
        .as_ref()
        .is_some_and(|q| q.kind().data_dependent());

    let (network, epochs) = if config.finetune.epochs == 0 {
        (base.clone(), Vec::new())
    } else {
        let ad_device = device.clone().autodiff();
        ad_device.seed(config.finetune.seed);
        let mut network = base.clone().to_device(&ad_device).train();
        // A pruned layer has fewer weights to co-adapt: Han et al. (2015) scale dropout by
        // sqrt(kept fraction) when retraining, which here is the target density.
        if let Some(pruner) = &config.prune {
            network.set_dropout(model::DROPOUT * pruner.density().sqrt());
        }
        train::fit(
            network,
            &mut compression,
            &config.finetune,
            device,
            train_set,
            test,
            |step, network, compression| {
                if let Some(density) = mask_update_due(config, step) {
                    let pruner = config.prune.as_ref().expect("due only when pruning");
                    let (masks, a) = prune_all(pruner, network, compression, density);
                    compression.masks = masks;
                    if !a.is_empty() {
                        alphas = a;
                    }
                }
                // The weights' scales follow the weights (as PyTorch's QAT observers do).
                if data_dependent {
                    calibrate::refresh_weights(network, compression);
                }
                Ok(())
            },
            on_epoch,
        )?
    };
    if data_dependent {
        calibrate::refresh_weights(&network, &mut compression);
    }
    let network = model::bake(network, &compression);
    let test_accuracy =
        train::evaluate(&network, &compression, test, device, EVAL_BATCH_SIZE, None)?;
    let record = compression.record(&network, config.prune.clone(), config.finetune.epochs);
    Ok(Compressed {
        network,
        compression,
        record,
        epochs,
        test_accuracy,
        alphas,
    })
}

/// Training steps per epoch of `config` on `images` (as `train::fit` runs them).
fn steps_per_epoch(config: &TrainConfig, images: &Images) -> usize {
    let n = config.train_limit.unwrap_or(images.len()).min(images.len());
    n.div_ceil(config.batch_size.max(1))
}

/// The density the masks change to before fine-tuning step `at` (after the first), if they
/// change then.
fn mask_update_due(config: &CompressConfig, at: StepInfo) -> Option<f64> {
    match at.step {
        0 => None,
        step => config.prune.as_ref()?.density_at(step, at.total),
    }
}

/// The result of [`compress_checkpoint`].
#[derive(Clone, Debug, Serialize)]
pub struct CompressOutcome {
    pub checkpoint: PathBuf,
    pub record: CompressionRecord,
    pub base_accuracy: f64,
    pub test_accuracy: f64,
    pub epochs: Vec<EpochReport>,
    /// DNS: alpha per layer at the last mask update.
    pub alphas: Vec<(String, f64)>,
    pub seconds: f64,
}

/// Compresses the baseline checkpoint `base` as `config` says, fine-tunes it on its dataset
/// (or the one `data` names), and writes the compressed checkpoint to `out`: weights baked, masks as
/// `<layer>.weight_mask`, the compression record in the metadata. `test_limit` evaluates on
/// the first N test images.
#[allow(clippy::too_many_arguments)]
pub fn compress_checkpoint(
    base: &Path,
    data: &DataChoice,
    config: &CompressConfig,
    test_limit: Option<usize>,
    device: &Device,
    out: &Path,
    on_epoch: impl FnMut(&EpochReport),
) -> Result<CompressOutcome> {
    config.validate()?;
    let start = Instant::now();
    let checkpoint = model::load(base, None, &KeyMap::default(), device)?;
    if !checkpoint.compression.is_none() {
        return Err(Error::checkpoint(
            base,
            "is already compressed; compress the baseline it came from",
        ));
    }
    let dataset = checkpoint.network.dataset(data, &checkpoint.meta)?;
    let mut test = checkpoint.network.images(&dataset, Split::Test)?;
    if let Some(limit) = test_limit {
        test.truncate(limit);
    }
    let base_accuracy = train::evaluate(
        &checkpoint.network,
        &checkpoint.compression,
        &test,
        device,
        EVAL_BATCH_SIZE,
        None,
    )
    .map_err(|e| e.naming(ModelRole::Target, base))?;
    // Without fine-tuning the training images are never read.
    let train_set = match config.finetune.epochs {
        0 => None,
        _ => Some(checkpoint.network.images(&dataset, Split::Train)?),
    };
    let compressed = compress(
        &checkpoint.network,
        config,
        device,
        train_set.as_ref().unwrap_or(&test),
        &test,
        on_epoch,
    )
    // NaN from compression itself (a format that overflows): named by the model compressed.
    .map_err(|e| e.naming(ModelRole::Target, base))?;
    let meta = CheckpointMeta {
        model: Some(checkpoint.network.model_ref()),
        model_sha256: checkpoint.network.model_sha256(),
        dataset: Some(dataset.record()),
        seed: config.finetune.seed,
        accuracy: Some(compressed.test_accuracy),
        compression: Some(compressed.record.clone()),
        tool_version: crate::VERSION.into(),
        config_hash: format!("{}+{}", checkpoint.meta.config_hash, config.hash()),
    };
    model::save_compressed(out, &compressed.network, &compressed.compression, &meta)?;
    Ok(CompressOutcome {
        checkpoint: out.to_path_buf(),
        record: compressed.record,
        base_accuracy,
        test_accuracy: compressed.test_accuracy,
        epochs: compressed.epochs,
        alphas: compressed.alphas,
        seconds: start.elapsed().as_secs_f64(),
    })
}
