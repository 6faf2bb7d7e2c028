//! Untargeted attacks on whole batches: FGSM, FGM, IFGSM (the paper's Algorithm 1), IFGM, PGD
//! and DeepFool-L2. Cross-entropy on logits with the true labels (summed over the batch, so an
//! image's gradient does not depend on the batch size). Attacks see a differentiable model and
//! nothing else: how it was compressed (masks, STE quantisers) is the model's business.
//!
//! The update of the iterative attacks is the fused `attack_step` kernel (WGSL on wgpu).

mod deepfool;
mod differential;

pub use differential::differential_gradient;

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::kernels::{self, StepRule, StepSettings};
use crate::{Error, Result};

/// A model an attack can differentiate: logits for images in [0, 1]. Gradients with respect
/// to the images must flow through it when they are autodiff tensors.
pub trait Differentiable {
    fn logits(&self, images: Tensor<4>) -> Tensor<2>;
}

impl Differentiable for crate::model::Classifier {
    fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        crate::model::Classifier::logits(self, images)
    }
}

/// The attacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttackKind {
    Fgsm,
    Fgm,
    Ifgsm,
    Ifgm,
    Pgd,
    DeepFool,
    /// DIVA: fools a compressed model while its full model stays right (a pair of models).
    Diva,
}

impl AttackKind {
    pub const ALL: [AttackKind; 7] = [
        AttackKind::Fgsm,
        AttackKind::Fgm,
        AttackKind::Ifgsm,
        AttackKind::Ifgm,
        AttackKind::Pgd,
        AttackKind::DeepFool,
        AttackKind::Diva,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AttackKind::Fgsm => "fgsm",
            AttackKind::Fgm => "fgm",
            AttackKind::Ifgsm => "ifgsm",
            AttackKind::Ifgm => "ifgm",
            AttackKind::Pgd => "pgd",
            AttackKind::DeepFool => "deepfool",
            AttackKind::Diva => "diva",
        }
    }

    /// Whether the attack needs a pair: the model attacked and a reference that must stay
    /// right.
    pub fn needs_reference(self) -> bool {
        self == AttackKind::Diva
    }
}

impl fmt::Display for AttackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

serde_as_text!(AttackKind);

impl FromStr for AttackKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        AttackKind::ALL
            .into_iter()
            .find(|k| k.name() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                Error::usage(format!(
                    "unknown attack '{s}' (expected {})",
                    AttackKind::ALL.map(AttackKind::name).join(", ")
                ))
            })
    }
}

/// How IFGM / FGM scale the gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GradNorm {
    /// eps * sqrt(d) * g / ||g||_2 per image: a step as long (L2) as an L-inf step of eps.
    L2,
    /// The paper's literal eps * g.
    None,
}

impl FromStr for GradNorm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "l2" => Ok(Self::L2),
            "none" => Ok(Self::None),
            _ => Err(Error::usage(format!(
                "unknown gradient norm '{s}' (expected l2 or none)"
            ))),
        }
    }
}

/// Everything an attack run depends on.
#[derive(Clone, Debug, Serialize)]
pub struct AttackConfig {
    pub kind: AttackKind,
    /// Step size and per-step interval (the paper: 0.02).
    pub eps: f32,
    /// Iterations of the iterative attacks (the paper: 12); FGSM and FGM take one.
    pub steps: usize,
    /// Total L-inf budget around the original image; PGD's default 0.1, none for the others.
    pub budget: Option<f32>,
    pub grad_norm: GradNorm,
    /// Seed of PGD's random start.
    pub seed: u64,
    /// DeepFool: overshoot of the accumulated perturbation.
    pub overshoot: f32,
    /// DeepFool: most iterations.
    pub max_iterations: usize,
    /// DeepFool: consider only the k classes with the highest clean logits (all when `None`).
    pub candidates: Option<usize>,
    /// DIVA: the weight c of the compressed model's term in `p_F(y) - c * p_C(y)` (absent for
    /// the other attacks, so their configs, and the cache keys made from them, are unchanged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f32>,
}

impl AttackConfig {
    /// Rough image passes (a forward or a backward pass of one image) this attack spends on one
    /// image of a `classes`-class model, for progress estimates: an iteration is a forward and
    /// a backward pass; a DeepFool iteration one per candidate class, about 8 iterations on
    /// MNIST.
    pub fn passes_per_image(&self, classes: usize) -> f64 {
        match self.kind {
            AttackKind::DeepFool => (2 * self.candidates.unwrap_or(classes) * 8) as f64,
            AttackKind::Fgsm | AttackKind::Fgm => 2.0,
            AttackKind::Ifgsm | AttackKind::Ifgm | AttackKind::Pgd => 2.0 * self.steps as f64,
            // Both models, forward and backward.
            AttackKind::Diva => 4.0 * self.steps as f64,
        }
    }

    /// The paper's settings: eps 0.02, 12 steps, L2-scaled IFGM, DeepFool overshoot 0.02 and at
    /// most 50 iterations.
    pub fn new(kind: AttackKind) -> Self {
        Self {
            kind,
            eps: 0.02,
            steps: 12,
            budget: None,
            grad_norm: GradNorm::L2,
            seed: 1,
            overshoot: 0.02,
            max_iterations: 50,
            candidates: None,
            weight: (kind == AttackKind::Diva).then_some(1.0),
        }
    }

    /// Refuses settings that cannot run, naming the field (the command line maps fields to
    /// its flags, a sweep config to its own field names).
    pub fn validate(&self) -> Result<()> {
        use crate::limits::MAX_STEPS;
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::invalid(
                "eps",
                format!("must be a positive number (got {})", self.eps),
            ));
        }
        for (field, value) in [
            ("steps", self.steps),
            ("max_iterations", self.max_iterations),
        ] {
            if !(1..=MAX_STEPS).contains(&value) {
                return Err(Error::invalid(
                    field,
                    format!("must be between 1 and {MAX_STEPS} (got {value})"),
                ));
            }
        }
        if let Some(b) = self.budget
            && !(b > 0.0 && b.is_finite())
        {
            return Err(Error::invalid(
                "budget",
                format!("must be a positive number (got {b})"),
            ));
        }
        if let Some(k) = self.candidates
            && k < 2
        {
            return Err(Error::invalid(
                "candidates",
                format!("DeepFool needs at least 2 classes to compare (got {k})"),
            ));
        }
        if self.kind == AttackKind::DeepFool && self.budget.is_some() {
            return Err(Error::invalid(
                "budget",
                "DeepFool stops at the decision boundary and takes no budget".to_string(),
            ));
        }
        if let Some(c) = self.weight
            && !(c >= 0.0 && c.is_finite())
        {
            return Err(Error::invalid(
                "weight",
                format!("must be a number of at least 0 (got {c})"),
            ));
        }
        if !(self.overshoot >= 0.0 && self.overshoot.is_finite()) {
            return Err(Error::invalid(
                "overshoot",
                format!("must be a number of at least 0 (got {})", self.overshoot),
            ));
        }
        Ok(())
    }

    /// The budget the attack projects onto: PGD's and DIVA's default 0.1, none for the others
    /// unless one was given.
    pub fn effective_budget(&self) -> Option<f32> {
        match self.kind {
            AttackKind::Pgd | AttackKind::Diva => Some(self.pgd_budget()),
            AttackKind::DeepFool => None,
            _ => self.budget,
        }
    }

    /// The largest L-inf perturbation the attack can reach: `min(steps x step, budget)` (the
    /// paper's 12 steps of 0.02 reach 0.24 with no budget; every step, sign or L2-scaled, is
    /// clipped to within `step` of the image before it), none for DeepFool (it stops at the
    /// boundary).
    pub fn linf_reach(&self) -> Option<f32> {
        let budget = self.effective_budget();
        let steps = match self.kind {
            AttackKind::Fgsm | AttackKind::Fgm => 1,
            AttackKind::Ifgsm | AttackKind::Ifgm | AttackKind::Pgd | AttackKind::Diva => self.steps,
            AttackKind::DeepFool => return None,
        };
        let reach = self.eps * steps as f32;
        Some(budget.map_or(reach, |b| b.min(reach)))
    }

    /// The settings this attack uses, by name, with floats as written (0.02, not
    /// 0.019999999552965164): what JSON output and reports show.
    pub fn used_parameters(&self) -> serde_json::Map<String, serde_json::Value> {
        use AttackKind::*;
        let float = json_float;
        let mut out = serde_json::Map::new();
        out.insert("attack".into(), self.kind.name().into());
        let iterative = matches!(self.kind, Ifgsm | Ifgm | Pgd | Diva);
        if self.kind != DeepFool {
            out.insert("step".into(), float(self.eps));
        }
        if iterative {
            out.insert("steps".into(), self.steps.into());
        }
        if let Some(b) = self.effective_budget() {
            out.insert("budget".into(), float(b));
        }
        if matches!(self.kind, Fgm | Ifgm) {
            out.insert(
                "grad_norm".into(),
                serde_json::to_value(self.grad_norm).expect("a unit enum serialises"),
            );
        }
        if self.kind == Pgd {
            out.insert("seed".into(), self.seed.into());
        }
        if self.kind == DeepFool {
            out.insert("overshoot".into(), float(self.overshoot));
            out.insert("max_iterations".into(), self.max_iterations.into());
            if let Some(k) = self.candidates {
                out.insert("candidates".into(), k.into());
            }
        }
        if let Some(c) = self.weight {
            out.insert("weight".into(), float(c));
        }
        if let Some(r) = self.linf_reach() {
            out.insert("linf_reach".into(), float(r));
        }
        out
    }

    /// The attack's settings in a line (the CLI prints it, the report's header lists it): `ifgsm: step 0.02 x 12 steps, L-inf reach 0.24`.
    pub fn describe(&self) -> String {
        let used = self.used_parameters();
        let get = |k: &str| used.get(k).map(|v| v.to_string().replace('"', ""));
        let mut parts = Vec::new();
        match (get("step"), get("steps")) {
            (Some(step), Some(steps)) => parts.push(format!("step {step} x {steps} steps")),
            (Some(step), None) => parts.push(format!("step {step}")),
            _ => {}
        }
        if let Some(n) = get("max_iterations") {
            parts.push(format!("at most {n} iterations"));
        }
        if let Some(k) = get("candidates") {
            parts.push(format!("the {k} most likely classes"));
        }
        for (key, name) in [
            ("budget", "budget"),
            ("grad_norm", "gradient norm"),
            ("overshoot", "overshoot"),
            ("weight", "weight c"),
            ("seed", "random-start seed"),
        ] {
            if let Some(v) = get(key) {
                parts.push(format!("{name} {v}"));
            }
        }
        parts.push(match get("linf_reach") {
            Some(r) => format!("L-inf reach {r}"),
            None if self.kind == AttackKind::DeepFool => {
                "L-inf reach: until the label flips".into()
            }
            None => "L-inf reach: unbounded (give --budget)".into(),
        });
        format!("{}: {}", self.kind, parts.join(", "))
    }

    /// The total budget PGD (and DIVA) project onto.
    fn pgd_budget(&self) -> f32 {
        self.budget.unwrap_or(0.1)
    }
}

/// A float as the user wrote it (`0.02`, not the f32's `0.019999999552965164`), for JSON and
/// result files.
pub fn json_float(v: f32) -> serde_json::Value {
    serde_json::Value::from(v.to_string().parse::<f64>().unwrap_or(f64::NAN))
}

/// Adversarial images of one batch, and the iterations each image took.
pub struct AttackOutput {
    pub adversarial: Tensor<4>,
    /// Steps per image: DeepFool's per-image count until its label flipped, the step count
    /// for the others.
    pub iterations: Vec<usize>,
}

/// The summed cross-entropy of `model` on `images` (autodiff) and its gradient with respect to
/// the images, without autodiff.
pub fn loss_gradient(
    model: &impl Differentiable,
    images: &Tensor<4>,
    labels: &Tensor<1, Int>,
) -> Tensor<4> {
    let x = images.clone().autodiff().require_grad();
    let logits = model.logits(x.clone());
    let n = labels.dims()[0];
    // log-softmax in f32, summed: per-image gradients independent of the batch size.
    let picked = log_softmax(logits, 1).gather(1, labels.clone().reshape([n, 1]));
    let loss = picked.sum().neg();
    x.grad(&loss.backward()).expect("image gradient")
}

/// Per-image factor of the gradient-amplitude step: eps * sqrt(d) / ||g||_2 (L2) or eps.
/// The norm is taken as max|g| * ||g / max|g|||, so gradients far below 1e-19 (whose squares
/// underflow) still give their true direction; only an exactly zero gradient makes no step
/// (its factor is infinite and the kernel skips NaN steps).
fn step_factor(grad: &Tensor<4>, config: &AttackConfig) -> Tensor<1> {
    let [n, c, h, w] = grad.dims();
    let device = grad.device();
    match config.grad_norm {
        GradNorm::None => Tensor::full([n], config.eps, &device),
        GradNorm::L2 => {
            let d = c * h * w;
            let flat = grad.clone().reshape([n, d]);
            let peak = flat.clone().abs().max_dim(1);
            let norm = (flat / peak.clone()).square().sum_dim(1).sqrt() * peak;
            (norm.recip() * (config.eps * (d as f32).sqrt())).reshape([n])
        }
    }
}

/// Runs `config`'s attack on one batch (`images` in [0, 1], `labels` the true classes), all
/// images together on `images`' device.
///
/// `first_image` is the index of the batch's first image in the whole set: PGD's random start
/// is a function of (seed, image index), so any batch size gives the same images.
pub fn attack(
    model: &impl Differentiable,
    images: Tensor<4>,
    labels: Tensor<1, Int>,
    config: &AttackConfig,
    first_image: usize,
) -> Result<AttackOutput> {
    config.validate()?;
    let n = images.dims()[0];
    if config.kind == AttackKind::DeepFool {
        return Ok(deepfool::deepfool(model, images, labels, config));
    }
    if config.kind.needs_reference() {
        return Err(Error::invalid(
            "attack",
            format!(
                "{} attacks a pair: the compressed model and the full model it must leave right",
                config.kind
            ),
        ));
    }
    let (rule, steps, budget) = match config.kind {
        AttackKind::Fgsm => (StepRule::Sign, 1, config.budget),
        AttackKind::Fgm => (StepRule::Scaled, 1, config.budget),
        AttackKind::Ifgsm => (StepRule::Sign, config.steps, config.budget),
        AttackKind::Ifgm => (StepRule::Scaled, config.steps, config.budget),
        AttackKind::Pgd => (StepRule::Sign, config.steps, Some(config.pgd_budget())),
        AttackKind::DeepFool | AttackKind::Diva => unreachable!("handled above"),
    };
    let settings = StepSettings {
        rule,
        eps: config.eps,
        budget: budget.unwrap_or(f32::INFINITY),
    };
    let device = images.device();
    let mut x = images.clone();
    if config.kind == AttackKind::Pgd {
        x = random_start(&images, config.pgd_budget(), config.seed, first_image);
    }
    let ones = Tensor::<1>::ones([n], &device);
    for _ in 0..steps {
        let grad = loss_gradient(model, &x, &labels);
        let factor = match rule {
            StepRule::Sign => ones.clone(),
            StepRule::Scaled => step_factor(&grad, config),
        };
        x = kernels::attack_step(x, images.clone(), grad, factor, settings);
    }
    Ok(AttackOutput {
        adversarial: x,
        iterations: vec![steps; n],
    })
}

/// Runs `config`'s attack on `model` with `reference` beside it: DIVA crafts on the pair; any
/// other attack ignores the reference.
pub fn attack_pair(
    model: &impl Differentiable,
    reference: &impl Differentiable,
    images: Tensor<4>,
    labels: Tensor<1, Int>,
    config: &AttackConfig,
    first_image: usize,
) -> Result<AttackOutput> {
    if !config.kind.needs_reference() {
        return attack(model, images, labels, config, first_image);
    }
    config.validate()?;
    Ok(differential::diva(model, reference, images, labels, config))
}

/// PGD's start: the images plus uniform noise in [-budget, budget], clipped to [0, 1]. Each
/// image's noise comes from a host RNG seeded by (seed, the image's index in the set), so
/// every backend and every batch size starts from the same images.
fn random_start(images: &Tensor<4>, budget: f32, seed: u64, first_image: usize) -> Tensor<4> {
    let dims = images.dims();
    let per_image = dims[1] * dims[2] * dims[3];
    let mut noise = Vec::with_capacity(dims[0] * per_image);
    for i in 0..dims[0] {
        let index = (first_image + i) as u64;
        let mut rng = StdRng::seed_from_u64(crate::stable_hash64([
            &seed.to_le_bytes()[..],
            &index.to_le_bytes()[..],
        ]));
        noise.extend((0..per_image).map(|_| rng.random_range(-budget..=budget)));
    }
    let noise = Tensor::<4>::from_data(TensorData::new(noise, dims), &images.device());
    (images.clone() + noise).clamp(0.0, 1.0)
}
