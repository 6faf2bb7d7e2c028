//! Training and evaluation of any [`Network`] on any device.

use std::str::FromStr;
use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use std::path::{Path, PathBuf};

use crate::data::{DataChoice, DatasetRecord, Images, Split, shuffled_order};
use crate::model::{
    self, CheckpointMeta, Compression, KeyMap, ModelIdentity, ModelKind, ModelRef, Network,
};
use crate::{Error, Result};

/// Test images per forward pass where a model's clean accuracy is measured (no gradients are
/// kept, so the batches are larger than training's).
pub const EVAL_BATCH_SIZE: usize = 500;

/// The seed of a run where none is given.
pub const DEFAULT_SEED: u64 = 1;

/// The optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Optimizer {
    Adam,
    /// SGD with momentum 0.9.
    #[serde(alias = "sgd")]
    SgdMomentum,
}

impl std::fmt::Display for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Optimizer::Adam => "adam",
            Optimizer::SgdMomentum => "sgd",
        })
    }
}

impl FromStr for Optimizer {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "adam" => Ok(Optimizer::Adam),
            "sgd" | "sgd-momentum" => Ok(Optimizer::SgdMomentum),
            _ => Err(Error::usage(format!(
                "unknown optimizer '{s}' (expected adam or sgd)"
            ))),
        }
    }
}

/// How the learning rate moves over the run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    Constant,
    /// Cosine decay from the initial rate to zero over all steps.
    Cosine,
    /// Divide by 10 at 50% and 75% of the epochs (the paper's scheduled decays).
    Step,
}

impl FromStr for Schedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(Schedule::Constant),
            "cosine" => Ok(Schedule::Cosine),
            "step" => Ok(Schedule::Step),
            _ => Err(Error::usage(format!(
                "unknown lr schedule '{s}' (expected constant, cosine or step)"
            ))),
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Schedule::Constant => "constant",
            Schedule::Cosine => "cosine",
            Schedule::Step => "step",
        })
    }
}

/// How a model is trained: `advcomp train`'s flags (flattened), a sweep's `[baseline]` table
/// and, under the compression's own settings, `advcomp compress`'s fine-tuning flags and a
/// sweep's `[finetune]` table. The defaults are written here only: Adam, lr 1e-3 with cosine
/// decay, batch 128, 6 epochs, every training image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSettings {
    /// Passes over the training images (each command names its own flag: `train --epochs`,
    /// `compress --finetune-epochs`, with their defaults from `Default`).
    #[arg(skip = TrainSettings::default().epochs)]
    pub epochs: usize,
    /// Training images per step.
    #[arg(long, default_value_t = TrainSettings::default().batch_size, value_parser = crate::limits::batch_size)]
    pub batch_size: usize,
    /// Learning rate at the start of the schedule.
    #[arg(long = "lr", default_value_t = TrainSettings::default().learning_rate)]
    pub learning_rate: f64,
    /// adam or sgd (momentum 0.9).
    #[arg(long, default_value_t = TrainSettings::default().optimizer)]
    pub optimizer: Optimizer,
    /// constant, cosine or step (÷10 at 50% and 75% of the run).
    #[arg(long, default_value_t = TrainSettings::default().schedule)]
    pub schedule: Schedule,
    /// Train on the first N training images only.
    #[arg(long, value_parser = crate::limits::image_count)]
    pub train_limit: Option<usize>,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            epochs: 6,
            batch_size: 128,
            learning_rate: 1e-3,
            optimizer: Optimizer::Adam,
            schedule: Schedule::Cosine,
            train_limit: None,
        }
    }
}

impl TrainSettings {
    /// The training run of `model` on `dataset` with `seed`.
    pub fn config(
        &self,
        model: impl Into<ModelIdentity>,
        dataset: impl Into<DatasetRecord>,
        seed: u64,
    ) -> TrainConfig {
        TrainConfig {
            model: model.into(),
            dataset: dataset.into(),
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            optimizer: self.optimizer,
            schedule: self.schedule,
            seed,
            train_limit: self.train_limit,
        }
    }
}

/// Everything a training run depends on: [`TrainSettings`], the model, the data and the seed.
/// Its JSON (these fields in this order) is hashed into checkpoints and the sweep's cache keys.
#[derive(Clone, Debug, Serialize)]
pub struct TrainConfig {
    pub model: ModelIdentity,
    pub dataset: DatasetRecord,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub optimizer: Optimizer,
    pub schedule: Schedule,
    pub seed: u64,
    /// Train on the first N training images only.
    pub train_limit: Option<usize>,
}

impl TrainConfig {
    /// The default settings ([`TrainSettings`]) and seed.
    pub fn new(model: impl Into<ModelIdentity>, dataset: impl Into<DatasetRecord>) -> Self {
        TrainSettings::default().config(model, dataset, DEFAULT_SEED)
    }

    /// Refuses settings that cannot run, naming the field.
    pub fn validate(&self) -> Result<()> {
        use crate::limits::{MAX_BATCH_SIZE, MAX_EPOCHS};
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return Err(Error::invalid(
                "epochs",
                format!("must be between 1 and {MAX_EPOCHS} (got {})", self.epochs),
            ));
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(Error::invalid(
                "batch_size",
                format!(
                    "must be between 1 and {MAX_BATCH_SIZE} (got {})",
                    self.batch_size
                ),
            ));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(Error::invalid(
                "learning_rate",
                format!("must be a positive number (got {})", self.learning_rate),
            ));
        }
        if self.train_limit == Some(0) {
            return Err(Error::invalid("train_limit", "must be at least 1 (got 0)"));
        }
        Ok(())
    }

    /// A stable hash of this config (FNV-1a over its JSON), written into checkpoints.
    pub fn hash(&self) -> String {
        let json = serde_json::to_string(self).expect("config serialises");
        crate::stable_hash([json.as_bytes()])
    }

    fn learning_rate_at(&self, step: usize, total: usize) -> f64 {
        let progress = step as f64 / total.max(1) as f64;
        self.learning_rate
            * match self.schedule {
                Schedule::Constant => 1.0,
                Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
                Schedule::Step if progress >= 0.75 => 0.01,
                Schedule::Step if progress >= 0.5 => 0.1,
                Schedule::Step => 1.0,
            }
    }
}

/// One epoch's numbers.
#[derive(Clone, Debug, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    pub seconds: f64,
}

fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{elapsed_precise}}<{{eta_precise}}] {{bar:30}} {{pos}}/{{len}} {{msg}}"
        ))
        .expect("valid template"),
    );
    bar
}

/// Trains a fresh network of `kind` on `train`, evaluating on `test` after every epoch.
/// `on_epoch` sees each epoch's report as it completes.
pub fn train(
    kind: ModelKind,
    config: &TrainConfig,
    device: &Device,
    train: &Images,
    test: &Images,
    on_epoch: impl FnMut(&EpochReport),
) -> Result<(Network, Vec<EpochReport>)> {
    config.validate()?;
    let ad_device = device.clone().autodiff();
    ad_device.seed(config.seed);
    fit_from(kind.init(&ad_device), config, device, train, test, on_epoch)
}

/// Trains `network` (made on the autodiff device), uncompressed.
fn fit_from(
    network: Network,
    config: &TrainConfig,
    device: &Device,
    train: &Images,
    test: &Images,
    on_epoch: impl FnMut(&EpochReport),
) -> Result<(Network, Vec<EpochReport>)> {
    let mut compression = Compression::default();
    fit(
        network,
        &mut compression,
        config,
        device,
        train,
        test,
        |_, _, _| Ok(()),
        on_epoch,
    )
}

/// What a training step's hook is told: this step's number and the run's number of steps.
#[derive(Clone, Copy, Debug)]
pub struct StepInfo {
    pub step: usize,
    pub total: usize,
}

/// The training loop: trains `network` (on the autodiff device) through `compression` on
/// `train`, evaluating the compressed network on `test` after every epoch. `before_step` runs
/// before each step and may change the compression (mask updates). Returns the network
/// without autodiff.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    mut network: Network,
    compression: &mut Compression,
    config: &TrainConfig,
    device: &Device,
    train: &Images,
    test: &Images,
    mut before_step: impl FnMut(StepInfo, &Network, &mut Compression) -> Result<()>,
    mut on_epoch: impl FnMut(&EpochReport),
) -> Result<(Network, Vec<EpochReport>)> {
    config.validate()?;
    let n = config.train_limit.unwrap_or(train.len()).min(train.len());
    if n == 0 {
        return Err(Error::usage("no training images"));
    }
    let ad_device = device.clone().autodiff();
    let mut optimizer = match config.optimizer {
        Optimizer::Adam => AdamConfig::new().init(),
        Optimizer::SgdMomentum => SgdConfig::new()
            .with_momentum(Some(MomentumConfig {
                momentum: 0.9,
                dampening: 0.0,
                nesterov: false,
            }))
            .init(),
    };
    let loss_fn = CrossEntropyLossConfig::new().init(&ad_device);
    let steps_per_epoch = n.div_ceil(config.batch_size);
    let total_steps = steps_per_epoch * config.epochs;
    let mut reports = Vec::new();
    for epoch in 0..config.epochs {
        let start = Instant::now();
        let order = shuffled_order(n, config.seed, epoch);
        let bar = progress_bar(
            steps_per_epoch as u64,
            &format!("epoch {}/{}", epoch + 1, config.epochs),
        );
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let mut recent_losses = Vec::new();
        for (i, indices) in order.chunks(config.batch_size).enumerate() {
            let step = epoch * steps_per_epoch + i;
            let info = StepInfo {
                step,
                total: total_steps,
            };
            before_step(info, &network, compression)?;
            let (images, labels) = train.batch(indices, &ad_device);
            let logits = network.forward_compressed(images, compression);
            let loss = loss_fn.forward(logits.clone(), labels.clone());
            recent_losses.push(loss.clone().inner());
            // Reading values back waits for the device, so the running numbers (and the check
            // that training has not diverged) are sampled.
            if i % 20 == 0 || i + 1 == steps_per_epoch {
                check_finite(std::mem::take(&mut recent_losses), i, epoch, config)?;
                loss_sum += loss.clone().into_scalar::<f32>() as f64 * indices.len() as f64;
                correct += count_correct(logits.inner(), labels.inner());
                seen += indices.len();
                bar.set_message(format!(
                    "loss {:.4} acc {:.2}%",
                    loss_sum / seen as f64,
                    100.0 * correct as f64 / seen as f64
                ));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &network);
            let lr = config.learning_rate_at(step, total_steps);
            network = optimizer.step(lr, network, grads);
            bar.inc(1);
        }
        bar.finish_and_clear();
        let test_accuracy = evaluate(
            &network.valid(),
            compression,
            test,
            device,
            EVAL_BATCH_SIZE,
            None,
        )?;
        let report = EpochReport {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            test_accuracy,
            seconds: start.elapsed().as_secs_f64(),
        };
        on_epoch(&report);
        reports.push(report);
    }
    Ok((network.valid(), reports))
}

/// Refuses to go on when one of the `losses` of the steps up to `last_step` is not finite,
/// naming the first such step: a diverged run writes nothing.
fn check_finite(
    losses: Vec<Tensor<1>>,
    last_step: usize,
    epoch: usize,
    config: &TrainConfig,
) -> Result<()> {
    let count = losses.len();
    match model::first_non_finite(Tensor::cat(losses, 0)) {
        None => Ok(()),
        Some((i, value)) => Err(Error::usage(format!(
            "training diverged: the loss is {value} at epoch {}, step {} of the epoch (learning rate {}); \
             nothing was written — try a lower learning rate",
            epoch + 1,
            last_step + 2 + i - count,
            config.learning_rate
        ))),
    }
}

fn count_correct(logits: Tensor<2>, labels: Tensor<1, Int>) -> usize {
    let predicted = logits.argmax(1).reshape([labels.dims()[0]]);
    predicted.equal(labels).int().sum().into_scalar::<i64>() as usize
}

/// Clean accuracy of `network`, compressed as `compression` says, on the first `limit` images
/// (all when `None`). NaN or infinite logits are a [`Error::NonFinite`] of the target, never
/// an accuracy.
pub fn evaluate(
    network: &Network,
    compression: &Compression,
    images: &Images,
    device: &Device,
    batch_size: usize,
    limit: Option<usize>,
) -> Result<f64> {
    let n = limit.unwrap_or(images.len()).min(images.len());
    if n == 0 {
        return Err(Error::usage("no images to evaluate"));
    }
    let indices: Vec<usize> = (0..n).collect();
    let mut correct = 0;
    for chunk in indices.chunks(batch_size.max(1)) {
        let (x, y) = images.batch(chunk, device);
        let logits = network.forward_compressed(x, compression);
        crate::model::check_logits(&logits, chunk[0], crate::ModelRole::Target)?;
        let labels = y
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .expect("labels");
        let predicted = crate::model::predictions(logits);
        correct += predicted
            .iter()
            .zip(labels)
            .filter(|(p, y)| **p == *y)
            .count();
    }
    Ok(correct as f64 / n as f64)
}

/// The result of [`train_baseline`].
#[derive(Clone, Debug, Serialize)]
pub struct BaselineOutcome {
    pub checkpoint: PathBuf,
    pub test_accuracy: f64,
    /// Empty when an existing checkpoint of the same config was reused.
    pub epochs: Vec<EpochReport>,
    pub reused: bool,
    pub seconds: f64,
}

/// Trains a baseline of `model` (a built-in from scratch; an imported model from its own
/// weights, i.e. fine-tuning) on the images `data` names and writes its checkpoint (with
/// metadata) to `out`.
/// With `reuse`, a checkpoint already at `out` made by the same config is kept and only
/// re-evaluated. `test_limit` evaluates on the first N test images.
#[allow(clippy::too_many_arguments)]
pub fn train_baseline(
    model: &ModelRef,
    data: &DataChoice,
    config: &TrainConfig,
    test_limit: Option<usize>,
    device: &Device,
    out: &Path,
    reuse: bool,
    on_epoch: impl FnMut(&EpochReport),
) -> Result<BaselineOutcome> {
    config.validate()?;
    let start = Instant::now();
    let ad_device = device.clone().autodiff();
    ad_device.seed(config.seed);
    let network = model.load(&ad_device)?;
    let dataset = network.dataset(data, &CheckpointMeta::default())?;
    let mut test = network.images(&dataset, Split::Test)?;
    if let Some(limit) = test_limit {
        test.truncate(limit);
    }
    if reuse && out.exists() {
        let existing =
            model::load_checkpoint(out, Some(model.clone()), &KeyMap::default(), device)?;
        if existing.meta.config_hash == config.hash() {
            let test_accuracy = evaluate(
                &existing.network,
                &existing.compression,
                &test,
                device,
                EVAL_BATCH_SIZE,
                None,
            )
            .map_err(|e| e.naming(crate::ModelRole::Target, out))?;
            return Ok(BaselineOutcome {
                checkpoint: out.to_path_buf(),
                test_accuracy,
                epochs: Vec::new(),
                reused: true,
                seconds: start.elapsed().as_secs_f64(),
            });
        }
    }
    let train_set = network.images(&dataset, Split::Train)?;
    let (network, epochs) = fit_from(network, config, device, &train_set, &test, on_epoch)
        .map_err(|e| e.naming(crate::ModelRole::Target, Path::new(&model.to_string())))?;
    let test_accuracy = epochs.last().map(|r| r.test_accuracy).unwrap_or(0.0);
    let meta = CheckpointMeta {
        model: Some(network.model_ref()),
        model_sha256: network.model_sha256(),
        dataset: Some(dataset.record()),
        seed: config.seed,
        accuracy: Some(test_accuracy),
        compression: None,
        tool_version: crate::VERSION.into(),
        config_hash: config.hash(),
    };
    model::save_checkpoint(out, &network, &meta)?;
    Ok(BaselineOutcome {
        checkpoint: out.to_path_buf(),
        test_accuracy,
        epochs,
        reused: false,
        seconds: start.elapsed().as_secs_f64(),
    })
}
