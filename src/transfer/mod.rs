//! Transfer of adversarial examples: craft a set once per source model (batched on the
//! device), evaluate it on any target, and measure each cell (adversarial accuracy, success
//! rate, perturbation sizes, indicators of attack failure). Sets are stored as float
//! safetensors, never 8-bit images, so a perturbation below 1/255 survives the round trip.

pub mod indicators;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::attack::{self, AttackConfig, AttackKind, Batch, Target, View};
use crate::data::Images;
use crate::kernels::QuantGrad;
use crate::model::{Classifier, Compression, ModelLabel};
use crate::{Error, ModelRole, Result};

pub use indicators::{Diagnostics, Indicators, UnboundedCheck, ZeroGradient};

/// The gradient an attack followed through its source's quantisers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Gradient {
    /// No quantiser on the way (a full or pruned model), or an attack that uses no gradient:
    /// the gradient is the model's own.
    #[default]
    Exact,
    /// Straight-through inside the quantisers' range, zero where they saturate.
    Ste,
    /// BPDA: the identity through every quantiser.
    Identity,
    /// Every estimator, the worst case over them (`auto`).
    All,
}

impl Gradient {
    pub fn name(self) -> &'static str {
        match self {
            Gradient::Exact => "exact",
            Gradient::Ste => "ste",
            Gradient::Identity => "identity",
            Gradient::All => "ste+identity",
        }
    }

    fn of(grad: QuantGrad) -> Self {
        match grad {
            QuantGrad::Ste => Gradient::Ste,
            QuantGrad::Identity => Gradient::Identity,
        }
    }
}

impl fmt::Display for Gradient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for Gradient {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        [
            Gradient::Exact,
            Gradient::Ste,
            Gradient::Identity,
            Gradient::All,
        ]
        .into_iter()
        .find(|g| g.name() == text)
        .ok_or_else(|| Error::usage(format!("unknown gradient '{text}'")))
    }
}

serde_as_text!(Gradient);

/// Adversarial images made on one source model, with the originals' labels.
#[derive(Clone, Debug)]
pub struct AdversarialSet {
    /// What made the set (source checkpoint, attack), as JSON.
    pub description: String,
    /// Images [n, c, h, w] in [0, 1], row-major.
    pub images: Vec<f32>,
    pub shape: [usize; 4],
    pub labels: Vec<i64>,
    /// Attack iterations per image.
    pub iterations: Vec<usize>,
    /// What crafting it showed about the attack (zero gradients, a cascade's stages).
    pub diagnostics: Diagnostics,
    /// Seconds the attack took, and its throughput.
    pub seconds: f64,
}

impl AdversarialSet {
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn images_per_second(&self) -> f64 {
        self.len() as f64 / self.seconds.max(1e-9)
    }
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

/// A progress bar over `images` images, labelled `label`: what [`craft`] advances.
pub fn image_bar(images: usize, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(images as u64).with_style(
        ProgressStyle::with_template(
            "{msg:>18} [{bar:30}] {pos}/{len} images ({per_sec}, eta {eta})",
        )
        .expect("valid template"),
    );
    bar.set_message(label.to_string());
    bar
}

/// The model an attack runs on, as the attack sees it: through its first estimator (the
/// classifier's own `compression.grad`) and, for an attack that runs every estimator, through
/// the other too, when the model quantises its activations (its weights are constants to an
/// attack). The classifiers are frozen: weights compressed once.
pub struct Views {
    models: Vec<(QuantGrad, Classifier)>,
}

impl Views {
    pub fn of(source: &Classifier, config: &AttackConfig) -> Self {
        let frozen = source.frozen();
        let first = frozen.compression.grad;
        let mut grads = vec![first];
        if config.kind().uses_all_estimators() && frozen.compression.quantises_activations() {
            grads.push(match first {
                QuantGrad::Ste => QuantGrad::Identity,
                QuantGrad::Identity => QuantGrad::Ste,
            });
        }
        let models = grads
            .into_iter()
            .map(|grad| {
                let compression = Compression {
                    grad,
                    ..frozen.compression.clone()
                };
                let view = Classifier {
                    network: frozen.network.clone(),
                    compression,
                };
                (grad, view)
            })
            .collect();
        Views { models }
    }

    pub fn target(&self) -> Target<'_> {
        Target::with_views(
            self.models
                .iter()
                .map(|(grad, model)| View { grad: *grad, model })
                .collect(),
        )
    }

    /// The gradient the attack follows.
    fn gradient(&self, kind: AttackKind, quantised: bool) -> Gradient {
        match (kind.uses_gradients(), quantised, self.models.len()) {
            (false, _, _) | (_, false, _) => Gradient::Exact,
            (true, true, 1) => Gradient::of(self.models[0].0),
            (true, true, _) => Gradient::All,
        }
    }
}

/// Runs `config`'s attack on the first `limit` images of `originals` against `source`, in
/// batches of `batch_size` on `device`, advancing `bar` by the images done. The source's
/// quantisers pass gradients as its `compression.grad` says (an attack that runs every
/// estimator also tries the other). A differential attack crafts on the pair with `reference`.
#[allow(clippy::too_many_arguments)]
pub fn craft(
    source: &Classifier,
    originals: &Images,
    limit: usize,
    batch_size: usize,
    config: &AttackConfig,
    reference: Option<&Classifier>,
    device: &Device,
    description: String,
    bar: &ProgressBar,
) -> Result<AdversarialSet> {
    config.validate()?;
    let kind = config.kind();
    if kind.needs_reference() && reference.is_none() {
        return Err(Error::invalid(
            "reference",
            format!(
                "{kind} needs the full model the attacked (compressed) model must disagree with"
            ),
        ));
    }
    let n = limit.min(originals.len());
    if n == 0 {
        return Err(Error::usage("no images to attack"));
    }
    if batch_size == 0 {
        return Err(Error::usage("--batch-size must be at least 1"));
    }
    let indices: Vec<usize> = (0..n).collect();
    let start = Instant::now();
    // Weights compressed once for the whole set, not at every step.
    let views = Views::of(source, config);
    let reference = reference.map(Classifier::frozen);
    // Every logit the attack has its models compute is watched for NaN and infinities.
    let watched: Vec<(QuantGrad, Watched)> = views
        .models
        .iter()
        .map(|(grad, model)| (*grad, Watched::new(model, ModelRole::Source)))
        .collect();
    let reference = reference
        .as_ref()
        .map(|r| Watched::new(r, ModelRole::Reference));
    let mut target = Target::with_views(
        watched
            .iter()
            .map(|(grad, model)| View { grad: *grad, model })
            .collect(),
    );
    if let Some(r) = &reference {
        target = target.with_reference(r);
    }
    let mut images = Vec::new();
    let mut labels = Vec::new();
    let mut iterations = Vec::new();
    let mut stages = Vec::new();
    let (mut zero_images, mut zero_pixels) = (0usize, 0usize);
    for chunk in indices.chunks(batch_size) {
        let (x, y) = originals.batch(chunk, device);
        labels.extend(
            y.clone()
                .into_data()
                .convert::<i64>()
                .try_to_vec::<i64>()
                .expect("labels"),
        );
        if kind.uses_gradients() {
            let (images, pixels) = zero_gradients(target.views(), &x, &y);
            zero_images += images;
            zero_pixels += pixels;
        }
        let out = config.run(
            &target,
            Batch {
                images: x,
                labels: y,
                first_image: chunk[0],
            },
        )?;
        for model in watched.iter().map(|(_, w)| w).chain(&reference) {
            model.check(chunk[0], chunk.len())?;
        }
        let adversarial = host(out.adversarial);
        if let Some(i) = adversarial.iter().position(|v| !v.is_finite()) {
            let per_image = adversarial.len() / chunk.len();
            return Err(Error::NonFinite {
                role: ModelRole::Source,
                problem: format!(
                    "the {kind} attack on it made pixel {} of image {} {}; adversarial images \
                     are finite numbers",
                    i % per_image,
                    chunk[0] + i / per_image,
                    adversarial[i]
                ),
            });
        }
        images.extend(adversarial);
        iterations.extend(out.iterations);
        attack::add_kills(&mut stages, &out.stages);
        bar.inc(chunk.len() as u64);
    }
    let seconds = start.elapsed().as_secs_f64();
    let per_image = originals.channels * originals.height * originals.width;
    let quantised = source.compression.quantises_activations();
    let diagnostics = Diagnostics {
        gradient: views.gradient(kind, quantised),
        zero_gradient: kind.uses_gradients().then(|| ZeroGradient {
            images: zero_images as f64 / n as f64,
            pixels: zero_pixels as f64 / (n * per_image) as f64,
        }),
        stages,
    };
    Ok(AdversarialSet {
        description,
        images,
        shape: [n, originals.channels, originals.height, originals.width],
        labels,
        iterations,
        diagnostics,
        seconds,
    })
}

/// Images of a batch whose cross-entropy gradient is exactly zero through every view the
/// attack follows (an attack that tries both estimators is blind only where both are), and
/// pixels likewise.
fn zero_gradients(views: &[View], images: &Tensor<4>, labels: &Tensor<1, Int>) -> (usize, usize) {
    let n = images.dims()[0].max(1);
    let mut zero: Option<Vec<bool>> = None;
    for view in views {
        let grad = host(attack::loss_gradient(&view.model, images, labels));
        let here = grad.iter().map(|g| *g == 0.0);
        zero = Some(match zero {
            None => here.collect(),
            Some(before) => before.iter().zip(here).map(|(a, b)| *a && b).collect(),
        });
    }
    let zero = zero.unwrap_or_default();
    let per_image = zero.len() / n;
    let pixels = zero.iter().filter(|z| **z).count();
    let images = zero
        .chunks(per_image.max(1))
        .filter(|g| g.iter().all(|z| *z))
        .count();
    (images, pixels)
}

/// The paper's scenario a (source, target) cell belongs to, or the other cells of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// 1: crafted on a compressed model, applied to itself.
    CompToComp,
    /// 2: crafted on the full model, applied to a compressed one.
    FullToComp,
    /// 3: crafted on a compressed model, applied to the full one.
    CompToFull,
    /// The full model attacked by itself (the paper's reference).
    FullToFull,
    /// Between two different compressed models.
    CompToOtherComp,
    /// Between two different full models.
    FullToOtherFull,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::CompToComp,
        Scenario::FullToComp,
        Scenario::CompToFull,
        Scenario::FullToFull,
        Scenario::CompToOtherComp,
        Scenario::FullToOtherFull,
    ];

    /// The paper's three scenarios, in its order.
    pub const PAPER: [Scenario; 3] = [
        Scenario::CompToComp,
        Scenario::FullToComp,
        Scenario::CompToFull,
    ];

    /// Where this scenario's cell is for the compressed model labelled `compressed`: its
    /// (source, target), the other side the full model ([`ModelLabel::FULL`]).
    pub fn cell(self, compressed: &str) -> (&str, &str) {
        match self {
            Scenario::FullToComp => (ModelLabel::FULL, compressed),
            Scenario::CompToFull => (compressed, ModelLabel::FULL),
            Scenario::FullToFull => (ModelLabel::FULL, ModelLabel::FULL),
            _ => (compressed, compressed),
        }
    }

    pub fn of(source_compressed: bool, target_compressed: bool, same_model: bool) -> Self {
        match (source_compressed, target_compressed, same_model) {
            (false, false, true) => Scenario::FullToFull,
            (true, true, true) => Scenario::CompToComp,
            (false, true, _) => Scenario::FullToComp,
            (true, false, _) => Scenario::CompToFull,
            (true, true, false) => Scenario::CompToOtherComp,
            (false, false, false) => Scenario::FullToOtherFull,
        }
    }

    /// The paper's number (1, 2, 3), or 0 for the other cells.
    pub fn number(self) -> u8 {
        match self {
            Scenario::CompToComp => 1,
            Scenario::FullToComp => 2,
            Scenario::CompToFull => 3,
            _ => 0,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Scenario::FullToFull => "FULL->FULL",
            Scenario::CompToComp => "1 COMP->COMP",
            Scenario::FullToComp => "2 FULL->COMP",
            Scenario::CompToFull => "3 COMP->FULL",
            Scenario::CompToOtherComp => "COMP->other COMP",
            Scenario::FullToOtherFull => "FULL->other FULL",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.label())
    }
}

impl FromStr for Scenario {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        Scenario::ALL
            .into_iter()
            .find(|s| s.label() == text)
            .ok_or_else(|| Error::usage(format!("unknown scenario '{text}'")))
    }
}

serde_as_text!(Scenario);

/// One (attack, source, target) cell of one seed: the target's numbers on the source's set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub seed: u64,
    pub attack: AttackKind,
    /// The gradient the attack followed through the source's quantisers.
    #[serde(default)]
    pub gradient: Gradient,
    /// The attack's total budget, when it has one.
    #[serde(default)]
    pub budget: Option<f32>,
    pub source: ModelLabel,
    pub target: ModelLabel,
    pub scenario: Scenario,
    pub metrics: CellMetrics,
}

/// A cache key for a set: FNV-1a over what identifies the source model (its checkpoint's
/// bytes, or a key of everything it was made from), the attack config, the estimator the
/// source's quantisers pass gradients by and the image count, so a set is reused only for
/// exactly the same inputs.
pub fn set_key(source: &[u8], config: &AttackConfig, grad: QuantGrad, images: usize) -> String {
    let json = serde_json::to_string(config).expect("config serialises");
    let grad = grad.to_string();
    crate::stable_hash([
        source,
        json.as_bytes(),
        grad.as_bytes(),
        &images.to_le_bytes(),
    ])
}

/// Resamples of the bootstrap intervals over test images.
const BOOTSTRAP_RESAMPLES: usize = 1000;

/// The 95% percentile-bootstrap interval of the mean of `values` (resampled with a fixed seed,
/// so the same values always give the same interval).
pub fn bootstrap_interval(values: &[f64]) -> [f64; 2] {
    let n = values.len();
    if n == 0 {
        return [f64::NAN, f64::NAN];
    }
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut means: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (BOOTSTRAP_RESAMPLES - 1) as f64).round()) as usize];
    [at(0.025), at(0.975)]
}

/// The numbers of one (source set, target) cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellMetrics {
    pub images: usize,
    /// Target's accuracy on the original images.
    pub clean_accuracy: f64,
    /// Target's accuracy on the adversarial images (the paper's y axis).
    pub adversarial_accuracy: f64,
    /// 95% bootstrap interval of the adversarial accuracy over the test images.
    pub adversarial_accuracy_ci: [f64; 2],
    /// Share of the images the target classified correctly that are now misclassified.
    pub success_rate: f64,
    /// Mean |x_adv - x| over all pixels (the paper's Figure 6).
    pub mean_abs_delta: f64,
    /// 95% bootstrap interval of the mean |x_adv - x| over the test images.
    pub mean_abs_delta_ci: [f64; 2],
    /// Mean number of changed pixels per image.
    pub l0: f64,
    /// Mean per-image L2 norm of the perturbation.
    pub l2: f64,
    /// Largest |x_adv - x| in the set.
    pub linf: f64,
    /// Mean attack iterations per image (DeepFool: until the label flipped).
    pub mean_iterations: f64,
    /// Signs that the attack failed rather than the model resisted (see [`indicators`]).
    #[serde(default)]
    pub indicators: Indicators,
    /// Whether any indicator crossed its threshold.
    #[serde(default)]
    pub masking_suspected: bool,
}

/// `model`'s predicted class of each image; a [`Error::NonFinite`] of the target when a logit
/// is NaN or infinite.
fn predictions(
    model: &Classifier,
    images: &[f32],
    shape: [usize; 4],
    batch: usize,
    device: &Device,
) -> Result<Vec<i64>> {
    let per_image = shape[1] * shape[2] * shape[3];
    let model = &model.frozen();
    let mut out = Vec::with_capacity(shape[0]);
    for start in (0..shape[0]).step_by(batch.max(1)) {
        let end = (start + batch.max(1)).min(shape[0]);
        let data = TensorData::new(
            images[start * per_image..end * per_image].to_vec(),
            [end - start, shape[1], shape[2], shape[3]],
        );
        let logits = model.logits(Tensor::from_data(data, device));
        crate::model::check_logits(&logits, start, ModelRole::Target)?;
        out.extend(crate::model::predictions(logits));
    }
    Ok(out)
}

/// A model as an attack sees it, watched: whether any logits the attack had it compute were
/// NaN or infinite. The flags stay on the device and are read once per batch ([`Self::check`]),
/// so watching costs no synchronisation per step.
struct Watched<'a> {
    model: &'a Classifier,
    role: ModelRole,
    flags: RefCell<Vec<Tensor<1, Bool>>>,
}

impl<'a> Watched<'a> {
    fn new(model: &'a Classifier, role: ModelRole) -> Self {
        Watched {
            model,
            role,
            flags: RefCell::new(Vec::new()),
        }
    }

    /// A [`Error::NonFinite`] of this model if any logits since the last check were not all
    /// finite, for the batch from image `first_image` on.
    fn check(&self, first_image: usize, images: usize) -> Result<()> {
        let flags = std::mem::take(&mut *self.flags.borrow_mut());
        if flags.is_empty() {
            return Ok(());
        }
        let bad = Tensor::cat(flags, 0).int().sum().into_scalar::<i64>();
        if bad > 0 {
            return Err(Error::NonFinite {
                role: self.role,
                problem: format!(
                    "its logits held NaN or infinite numbers while images {first_image}..{} \
                     were attacked; a classifier's logits are finite numbers",
                    first_image + images
                ),
            });
        }
        Ok(())
    }
}

impl attack::Differentiable for Watched<'_> {
    fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        let logits = self.model.logits(images);
        let bad = logits.clone().inner().is_finite().bool_not().any();
        self.flags.borrow_mut().push(bad);
        logits
    }
}

/// How an adversarial set splits a pair: a compressed model C and the full model F beside it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DifferentialMetrics {
    pub images: usize,
    /// Images both models classified correctly before the attack.
    pub both_correct: usize,
    /// Of those, the share where afterwards C is wrong and F still right: the attack fooled
    /// the edge model and a comparison with the full model would not notice.
    pub evasive_success_rate: f64,
    /// Share of the images C classified correctly that it now misclassifies.
    pub success_rate_compressed: f64,
    /// The same for F.
    pub success_rate_reference: f64,
}

/// Evaluates `set` (made from the first images of `originals`) on the pair.
pub fn evaluate_pair(
    compressed: &Classifier,
    reference: &Classifier,
    set: &AdversarialSet,
    originals: &Images,
    batch_size: usize,
    device: &Device,
) -> Result<DifferentialMetrics> {
    // The same checks as a single target's (and its numbers, for the success rates).
    let on_c = evaluate(compressed, set, originals, batch_size, device)
        .map_err(|e| e.in_role(ModelRole::Source))?;
    let on_f = evaluate(reference, set, originals, batch_size, device)
        .map_err(|e| e.in_role(ModelRole::Reference))?;
    let n = set.len();
    let indices: Vec<usize> = (0..n).collect();
    let (clean, _) = originals.batch(&indices, device);
    let clean = host(clean);
    let right = |model: &Classifier, role, images: &[f32]| -> Result<Vec<bool>> {
        Ok(predictions(model, images, set.shape, batch_size, device)
            .map_err(|e| e.in_role(role))?
            .iter()
            .zip(&set.labels)
            .map(|(p, y)| p == y)
            .collect())
    };
    let (c, f) = (ModelRole::Source, ModelRole::Reference);
    let (c_before, f_before) = (right(compressed, c, &clean)?, right(reference, f, &clean)?);
    let (c_after, f_after) = (
        right(compressed, c, &set.images)?,
        right(reference, f, &set.images)?,
    );
    let both: Vec<usize> = (0..n).filter(|&i| c_before[i] && f_before[i]).collect();
    let evasive = both.iter().filter(|&&i| !c_after[i] && f_after[i]).count();
    Ok(DifferentialMetrics {
        images: n,
        both_correct: both.len(),
        evasive_success_rate: evasive as f64 / both.len().max(1) as f64,
        success_rate_compressed: on_c.success_rate,
        success_rate_reference: on_f.success_rate,
    })
}

/// `target`'s predictions on the first `n` images of `originals` (clean): what every cell of
/// that target compares against, so a caller evaluating many sets on one target computes them
/// once ([`evaluate_against`]). NaN or infinite logits are a [`Error::NonFinite`] of the
/// target.
pub fn clean_predictions(
    target: &Classifier,
    originals: &Images,
    n: usize,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<i64>> {
    let indices: Vec<usize> = (0..n.min(originals.len())).collect();
    let (clean, _) = originals.batch(&indices, device);
    let shape = [
        indices.len(),
        originals.channels,
        originals.height,
        originals.width,
    ];
    predictions(target, &host(clean), shape, batch_size, device)
}

/// Evaluates `set` (made from the first images of `originals`) on `target`.
pub fn evaluate(
    target: &Classifier,
    set: &AdversarialSet,
    originals: &Images,
    batch_size: usize,
    device: &Device,
) -> Result<CellMetrics> {
    let clean = clean_predictions(target, originals, set.len(), batch_size, device)?;
    evaluate_against(target, set, originals, &clean, batch_size, device)
}

/// [`evaluate`] with `target`'s clean predictions on at least the set's images given.
pub fn evaluate_against(
    target: &Classifier,
    set: &AdversarialSet,
    originals: &Images,
    clean_predictions: &[i64],
    batch_size: usize,
    device: &Device,
) -> Result<CellMetrics> {
    let n = set.len();
    if originals.len() < n {
        return Err(Error::usage(format!(
            "the adversarial set has {n} images but the dataset only {}",
            originals.len()
        )));
    }
    let image_shape = [originals.channels, originals.height, originals.width];
    if set.shape[1..] != image_shape
        || set.images.len() != n * image_shape.iter().product::<usize>()
        || set.labels.len() != n
        || set.iterations.len() != n
        || n == 0
    {
        return Err(Error::usage(format!(
            "the adversarial set ({:?}, {} labels) does not fit the dataset's {image_shape:?} images",
            set.shape,
            set.labels.len()
        )));
    }
    let indices: Vec<usize> = (0..n).collect();
    let (clean, _) = originals.batch(&indices, device);
    let clean = host(clean);
    let clean_pred = &clean_predictions[..n];
    let adv_pred = predictions(target, &set.images, set.shape, batch_size, device)?;
    let per_image = set.shape[1] * set.shape[2] * set.shape[3];
    let (mut abs_sum, mut l0, mut l2, mut linf) = (0.0f64, 0usize, 0.0f64, 0.0f64);
    let mut abs_per_image = Vec::with_capacity(n);
    for (a, c) in set.images.chunks(per_image).zip(clean.chunks(per_image)) {
        let (mut squares, mut image_abs) = (0.0f64, 0.0f64);
        for (x, y) in a.iter().zip(c) {
            let d = (x - y).abs() as f64;
            image_abs += d;
            squares += d * d;
            l0 += (d > 0.0) as usize;
            linf = linf.max(d);
        }
        l2 += squares.sqrt();
        abs_sum += image_abs;
        abs_per_image.push(image_abs / per_image as f64);
    }
    let adv_right: Vec<f64> = adv_pred
        .iter()
        .zip(&set.labels)
        .map(|(p, y)| (p == y) as u8 as f64)
        .collect();
    let correct = |pred: &[i64]| pred.iter().zip(&set.labels).filter(|(p, y)| p == y).count();
    let was_right: Vec<bool> = clean_pred
        .iter()
        .zip(&set.labels)
        .map(|(p, y)| p == y)
        .collect();
    let flipped = was_right
        .iter()
        .zip(adv_pred.iter().zip(&set.labels))
        .filter(|(right, (p, y))| **right && p != y)
        .count();
    let n_f = n as f64;
    Ok(CellMetrics {
        images: n,
        clean_accuracy: correct(clean_pred) as f64 / n_f,
        adversarial_accuracy: correct(&adv_pred) as f64 / n_f,
        adversarial_accuracy_ci: bootstrap_interval(&adv_right),
        success_rate: flipped as f64 / was_right.iter().filter(|r| **r).count().max(1) as f64,
        mean_abs_delta: abs_sum / (n * per_image) as f64,
        mean_abs_delta_ci: bootstrap_interval(&abs_per_image),
        l0: l0 as f64 / n_f,
        l2: l2 / n_f,
        linf,
        mean_iterations: set.iterations.iter().map(|&i| i as f64).sum::<f64>() / n_f,
        indicators: Indicators::from_set(&set.diagnostics, n),
        masking_suspected: Indicators::from_set(&set.diagnostics, n).masking_suspected(),
    })
}

/// Writes `set` to `path` (safetensors, f32 images, i64 labels and iterations) atomically.
pub fn save(path: &Path, set: &AdversarialSet) -> Result<()> {
    let images: Vec<u8> = bytemuck::cast_slice(&set.images).to_vec();
    let labels: Vec<u8> = bytemuck::cast_slice(&set.labels).to_vec();
    let iterations: Vec<i64> = set.iterations.iter().map(|&i| i as i64).collect();
    let iterations: Vec<u8> = bytemuck::cast_slice(&iterations).to_vec();
    let n = set.len();
    let err =
        |e: safetensors::SafeTensorError| Error::io(path, std::io::Error::other(e.to_string()));
    let views = vec![
        (
            "adversarial",
            TensorView::new(Dtype::F32, set.shape.to_vec(), &images).map_err(err)?,
        ),
        (
            "labels",
            TensorView::new(Dtype::I64, vec![n], &labels).map_err(err)?,
        ),
        (
            "iterations",
            TensorView::new(Dtype::I64, vec![n], &iterations).map_err(err)?,
        ),
    ];
    // No timing in the file: the same attack on the same inputs gives the same bytes.
    let metadata = BTreeMap::from([
        ("description".to_string(), set.description.clone()),
        (
            "diagnostics".to_string(),
            serde_json::to_string(&set.diagnostics).expect("diagnostics serialise"),
        ),
    ]);
    let views = views.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let bytes = crate::files::safetensors_bytes(views, metadata)
        .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
    crate::write_atomically(path, &bytes)
}

/// Reads a set written by [`save`] and checks it against what it claims to be: the attack of
/// the first `count` images of `originals` (same image shape, same labels), with finite pixels
/// in [0, 1] and plausible iteration counts. `seconds` is 0: timings are not stored in sets.
pub fn load(path: &Path, originals: &Images, count: usize) -> Result<AdversarialSet> {
    let bytes =
        crate::files::read_input(path, crate::limits::MAX_DATA_BYTES as u64, 2, Error::data)?;
    let bad = |what: String| Error::data(path, what);
    let (_, header) =
        SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not safetensors: {e}")))?;
    let file =
        SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not safetensors: {e}")))?;
    let tensor = |name: &str, dtype: Dtype| {
        let view = file
            .tensor(name)
            .map_err(|_| bad(format!("no tensor '{name}' (not an adversarial set)")))?;
        if view.dtype() != dtype {
            return Err(bad(format!(
                "tensor '{name}' is {:?}, expected {dtype:?}",
                view.dtype()
            )));
        }
        Ok(view)
    };
    if count == 0 || count > originals.len() {
        return Err(Error::usage(format!(
            "{}: cannot check a set of {count} images against a dataset of {}",
            path.display(),
            originals.len()
        )));
    }
    let images = tensor("adversarial", Dtype::F32)?;
    let shape: [usize; 4] = images
        .shape()
        .try_into()
        .map_err(|_| bad("'adversarial' is not [n, c, h, w]".into()))?;
    let expected = [count, originals.channels, originals.height, originals.width];
    if shape[1..] != expected[1..] {
        return Err(bad(format!(
            "images of shape {:?}, but the dataset's are {:?}",
            &shape[1..],
            &expected[1..]
        )));
    }
    if shape[0] != count {
        return Err(bad(format!(
            "holds {} images, this run attacks {count}",
            shape[0]
        )));
    }
    let pixels: Vec<f32> = bytemuck::pod_collect_to_vec(images.data());
    if let Some((i, v)) = pixels
        .iter()
        .enumerate()
        .find(|(_, v)| !(0.0..=1.0).contains(*v))
    {
        return Err(bad(format!(
            "pixel {i} is {v}; adversarial images lie in [0, 1]"
        )));
    }
    let labels: Vec<i64> = bytemuck::pod_collect_to_vec(tensor("labels", Dtype::I64)?.data());
    let iterations: Vec<i64> =
        bytemuck::pod_collect_to_vec(tensor("iterations", Dtype::I64)?.data());
    if labels.len() != count || iterations.len() != count {
        return Err(bad(format!(
            "{} labels and {} iteration counts for {count} images",
            labels.len(),
            iterations.len()
        )));
    }
    if let Some(i) = (0..count).find(|&i| labels[i] != originals.labels[i] as i64) {
        return Err(bad(format!(
            "label {} of image {i} is not the dataset's ({}): the set was made from other images",
            labels[i], originals.labels[i]
        )));
    }
    let max = crate::limits::MAX_STEPS as i64;
    if let Some(i) = iterations.iter().position(|&t| !(0..=max).contains(&t)) {
        return Err(bad(format!(
            "image {i} took {} iterations; a count lies in 0..={max}",
            iterations[i]
        )));
    }
    let meta = header.metadata().clone().unwrap_or_default();
    let diagnostics = match meta.get("diagnostics") {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| bad(format!("its diagnostics are not readable: {e}")))?,
        None => Diagnostics::default(),
    };
    Ok(AdversarialSet {
        description: meta.get("description").cloned().unwrap_or_default(),
        images: pixels,
        shape,
        labels,
        iterations: iterations.into_iter().map(|i| i as usize).collect(),
        diagnostics,
        seconds: 0.0,
    })
}
