//! Compression of a trained network: pruning (DNS or magnitude, every weight layer to the same
//! density), fixed-point quantisation of weights and activations, and fine-tuning through the
//! compression (masks and STE quantisers in the forward pass) from the baseline's weights.

mod prune;
mod stats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::prelude::*;
use serde::Serialize;

pub use stats::{Cdf, LayerSummary, cdf_rows, weight_summary};

use crate::data::{DataChoice, Images, Split};
use crate::kernels::{FixedPoint, QuantGrad};
pub use crate::model::Pruner;
use crate::model::{
    self, CheckpointMeta, Compression, CompressionRecord, KeyMap, Mask, Network, weight_layers,
};
use crate::train::{self, EpochReport, StepInfo, TrainConfig};
use crate::{Error, ModelRole, Result};

/// The dropout rate the models are trained with.
const BASE_DROPOUT: f64 = 0.5;

/// Everything a compression run depends on.
#[derive(Clone, Debug, Serialize)]
pub struct CompressConfig {
    /// The pruner and its target density in (0, 1], or no pruning.
    pub prune: Option<(Pruner, f64)>,
    pub weights: Option<FixedPoint>,
    pub activations: Option<FixedPoint>,
    pub grad: QuantGrad,
    /// Fine-tuning run (epochs may be 0: compress without fine-tuning).
    pub finetune: TrainConfig,
    /// DNS: fine-tuning steps between mask updates.
    pub mask_interval: usize,
    /// DNS: masks stop changing after this fraction of fine-tuning, so the last part tunes the
    /// final mask.
    pub mask_freeze: f64,
    /// DNS: the fraction of fine-tuning over which the density falls from 1 to the target,
    /// cubically (Zhu & Gupta 2017); 0 prunes to the target at once.
    pub density_ramp: f64,
    /// Magnitude: pruning rounds (1 = one-shot); density falls geometrically from round to
    /// round, each followed by an equal share of fine-tuning.
    pub magnitude_rounds: usize,
}

impl CompressConfig {
    /// Defaults: no pruning, no quantisation (set at least one), STE, 3 epochs of Adam at
    /// lr 1e-3 with cosine decay; DNS density falling to the target over the first 34% of
    /// fine-tuning, masks updated every 50 steps until 75%; one-shot magnitude pruning.
    pub fn new(finetune: TrainConfig) -> Self {
        Self {
            prune: None,
            weights: None,
            activations: None,
            grad: QuantGrad::Ste,
            finetune: TrainConfig {
                epochs: 3,
                learning_rate: 1e-3,
                ..finetune
            },
            mask_interval: 50,
            mask_freeze: 0.75,
            density_ramp: 0.34,
            magnitude_rounds: 1,
        }
    }

    /// Refuses settings that cannot run, naming the field.
    pub fn validate(&self) -> Result<()> {
        if let Some((_, density)) = self.prune
            && !(density > 0.0 && density <= 1.0)
        {
            return Err(Error::invalid(
                "density",
                format!("must lie in (0, 1] (got {density})"),
            ));
        }
        if self.prune.is_none() && self.weights.is_none() && self.activations.is_none() {
            return Err(Error::usage(
                "nothing to compress: give --prune dns|magnitude with --density, or --bits",
            ));
        }
        if self.mask_interval == 0 {
            return Err(Error::invalid(
                "mask_interval",
                "must be at least 1 (got 0)",
            ));
        }
        for (field, value) in [
            ("mask_freeze", self.mask_freeze),
            ("density_ramp", self.density_ramp),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(Error::invalid(
                    field,
                    format!("must lie in [0, 1] (got {value})"),
                ));
            }
        }
        if self.mask_freeze < self.density_ramp {
            return Err(Error::invalid(
                "mask_freeze",
                format!(
                    "{} comes before the end of the density ramp {}: masks would freeze above the target density",
                    self.mask_freeze, self.density_ramp
                ),
            ));
        }
        if !(1..=crate::limits::MAX_EPOCHS).contains(&self.magnitude_rounds) {
            return Err(Error::invalid(
                "magnitude_rounds",
                format!(
                    "must be between 1 and {} (got {})",
                    crate::limits::MAX_EPOCHS,
                    self.magnitude_rounds
                ),
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

    /// The fine-tuning step at which DNS's density reaches the target: the first step at or
    /// after `density_ramp` of the run (and at the latest the last step, so short runs reach
    /// it too).
    fn ramp_end(&self, total: usize) -> usize {
        ((self.density_ramp * total as f64).ceil() as usize).min(total.saturating_sub(1))
    }

    /// DNS's density before `step` of `total`: 1 - (1 - target)(1 - (1 - step / end)^3) until
    /// the ramp's end (Zhu & Gupta 2017's cubic schedule), the target from then on (and
    /// always without fine-tuning).
    fn dns_density(&self, target: f64, step: usize, total: usize) -> f64 {
        let end = self.ramp_end(total);
        if self.finetune.epochs == 0 || step >= end {
            return target;
        }
        let left = 1.0 - step as f64 / end as f64;
        target + (1.0 - target) * left.powi(3)
    }

    /// Magnitude pruning's density after round `r` of `rounds` (1-based): target^(r/rounds).
    fn round_density(&self, target: f64, r: usize) -> f64 {
        target.powf(r as f64 / self.magnitude_rounds as f64)
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

/// New masks for every weight layer, and DNS's alpha per layer (empty for magnitude).
struct Pruned {
    masks: BTreeMap<String, Mask>,
    alphas: Vec<(String, f64)>,
}

/// Masks for every weight layer of `network` at `density`, updated from `current`.
fn prune_all(pruner: Pruner, network: &Network, current: &Compression, density: f64) -> Pruned {
    let mut pruned = Pruned {
        masks: BTreeMap::new(),
        alphas: Vec::new(),
    };
    for layer in weight_layers(network) {
        let now = current.masks.get(&layer.name);
        let mask = match pruner {
            Pruner::Dns => {
                let (mask, alpha) = prune::dns_mask(&layer, now, density);
                pruned.alphas.push((layer.name.clone(), alpha));
                mask
            }
            Pruner::Magnitude => prune::magnitude_mask(&layer, now, density),
        };
        pruned.masks.insert(layer.name, mask);
    }
    pruned
}

/// Compresses `base` (a trained network, without autodiff, on `device`) as `config` says and
/// fine-tunes it on `train`, evaluating on `test` after each epoch.
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
        masks: Default::default(),
        weights: config.weights,
        activations: config.activations,
        grad: config.grad,
        recorder: None,
    };
    let mut alphas = Vec::new();
    if let Some((pruner, target)) = config.prune {
        // Magnitude pruning in rounds needs fine-tuning between them.
        let first = match pruner {
            Pruner::Magnitude if config.finetune.epochs > 0 => config.round_density(target, 1),
            Pruner::Magnitude => target,
            Pruner::Dns => {
                let total = config.finetune.epochs * steps_per_epoch(&config.finetune, train_set);
                config.dns_density(target, 0, total)
            }
        };
        let pruned = prune_all(pruner, base, &compression, first);
        compression.masks = pruned.masks;
        alphas = pruned.alphas;
    }

    let (network, epochs) = if config.finetune.epochs == 0 {
        (base.clone(), Vec::new())
    } else {
        let ad_device = device.clone().autodiff();
        ad_device.seed(config.finetune.seed);
        let mut network = base.clone().to_device(&ad_device).train();
        // A pruned layer has fewer weights to co-adapt: Han et al. (2015) scale dropout by
        // sqrt(kept fraction) when retraining, which here is the target density.
        if let Some((_, density)) = config.prune {
            network.set_dropout(BASE_DROPOUT * density.sqrt());
        }
        train::fit(
            network,
            &mut compression,
            &config.finetune,
            device,
            train_set,
            test,
            |step, network, compression| {
                if let Some((pruner, density)) = mask_update_due(config, step) {
                    let pruned = prune_all(pruner, network, compression, density);
                    compression.masks = pruned.masks;
                    if !pruned.alphas.is_empty() {
                        alphas = pruned.alphas;
                    }
                }
                Ok(())
            },
            on_epoch,
        )?
    };
    let network = model::bake(network, &compression);
    let test_accuracy = train::evaluate(&network, &compression, test, device, 500, None)?;
    let record = compression.record(
        &network,
        config.prune.map(|(p, _)| p),
        config.prune.map(|(_, d)| d),
        config.finetune.epochs,
    );
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

/// Whether fine-tuning changes the masks before step `at`, and to which density: DNS every
/// `mask_interval` steps until `mask_freeze` of the run (following the density ramp) and
/// always at the ramp's end; magnitude at the start of each of its later rounds (round r of
/// R starts at step (r - 1) * total / R).
fn mask_update_due(config: &CompressConfig, at: StepInfo) -> Option<(Pruner, f64)> {
    let (pruner, target) = config.prune?;
    if at.step == 0 {
        return None;
    }
    match pruner {
        Pruner::Dns => {
            let frozen = at.step as f64 >= config.mask_freeze * at.total as f64;
            let due = at.step.is_multiple_of(config.mask_interval) && !frozen;
            (due || at.step == config.ramp_end(at.total))
                .then(|| (pruner, config.dns_density(target, at.step, at.total)))
        }
        Pruner::Magnitude => {
            let rounds = config.magnitude_rounds;
            (2..=rounds)
                .find(|r| at.step == (r - 1) * at.total / rounds)
                .map(|r| (pruner, config.round_density(target, r)))
        }
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
        500,
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
        model: checkpoint.network.model_ref().to_string(),
        model_sha256: checkpoint.network.model_sha256(),
        dataset: dataset.to_string(),
        seed: config.finetune.seed,
        accuracy: Some(compressed.test_accuracy),
        compression: serde_json::to_string(&compressed.record).expect("record serialises"),
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
