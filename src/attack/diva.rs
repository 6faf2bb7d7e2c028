//! DIVA (Hao et al., "A Tale of Two Models: Constructing Evasive Attacks on Edge Models",
//! MLSys 2022), batched: an L-inf attack on a *pair* — a compressed model C and the full
//! model F it was made from — that pushes C off the true label while keeping F on it, so the
//! attack goes unnoticed by any comparison with F.
//!
//! Each step ascends `p_F(y|x) - c * p_C(y|x)` (softmax probabilities of the true class, DIVA's
//! own form) by `eps * sign(gradient)`, projected onto the L-inf ball of `budget` around the
//! original image and onto [0, 1]: PGD's update and budget, from the clean image. Probabilities
//! rather than cross-entropies keep both terms bounded, so neither model's term can swamp the
//! other once one of them is confidently wrong (CE(F) grows without bound as F fails, which
//! would undo every step on C). An image stops moving once C is wrong and F is right.
//!
//! The attack sees two differentiable models and nothing else: C's quantisers and masks pass
//! gradients the way C's compression says (STE by default).

use burn::prelude::*;
use burn::tensor::activation::softmax;
use serde::{Deserialize, Serialize};

use super::{Attack, AttackOutput, Batch, Differentiable, Parameter, Shape, Target, check, parameters};
use crate::Result;
use crate::kernels::{self, StepRule, StepSettings};

pub struct Diva;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub step: f32,
    pub steps: usize,
    pub budget: f32,
    /// The weight c of the compressed model's term in `p_F(y) - c * p_C(y)`.
    pub weight: f32,
}

impl Default for Settings {
    /// PGD's step, steps and budget; c = 1.
    fn default() -> Self {
        Self {
            step: 0.02,
            steps: 12,
            budget: 0.1,
            weight: 1.0,
        }
    }
}

impl Attack for Diva {
    type Settings = Settings;
    const NAME: &'static str = "diva";
    const ABOUT: &'static str =
        "fools the compressed model while the full one stays right (probability form)";
    const PARAMETERS: &'static [Parameter] = &[
        parameters::STEP,
        parameters::STEPS,
        parameters::BUDGET,
        Parameter {
            name: "weight",
            flag: "diva-weight",
            help: "DIVA: weight c of the source's term in p_ref(y) - c * p_source(y).",
        },
    ];
    const NEEDS_REFERENCE: bool = true;

    fn validate(s: &Settings) -> Result<()> {
        check::positive("step", s.step)?;
        check::count("steps", s.steps)?;
        check::positive("budget", s.budget)?;
        check::at_least_zero("weight", s.weight)
    }

    fn shape(s: &Settings) -> Shape {
        Shape::iterative(s.step, s.steps, Some(s.budget))
    }

    /// Both models, forward and backward.
    fn passes_per_image(s: &Settings, _: usize) -> f64 {
        4.0 * s.steps as f64
    }

    fn run(s: &Settings, target: &Target, batch: Batch) -> Result<AttackOutput> {
        let reference = target.reference().expect("checked by AttackConfig::run");
        Ok(diva(target.model(), reference, batch.images, batch.labels, s))
    }
}

/// The gradient of `sum_i p_F(y_i|x_i) - weight * p_C(y_i|x_i)` with respect to the images,
/// and both models' predicted classes at `images`.
pub fn differential_gradient(
    compressed: &(impl Differentiable + ?Sized),
    reference: &(impl Differentiable + ?Sized),
    images: &Tensor<4>,
    labels: &Tensor<1, Int>,
    weight: f32,
) -> (Tensor<4>, Vec<i64>, Vec<i64>) {
    let n = labels.dims()[0];
    let x = images.clone().autodiff().require_grad();
    let index = labels.clone().reshape([n, 1]);
    let logits_c = compressed.logits(x.clone());
    let logits_f = reference.logits(x.clone());
    let predicted = |logits: &Tensor<2>| crate::model::predictions(logits.clone());
    let (pred_c, pred_f) = (predicted(&logits_c), predicted(&logits_f));
    let p_c = softmax(logits_c, 1).gather(1, index.clone());
    let p_f = softmax(logits_f, 1).gather(1, index);
    let objective = (p_f - p_c * weight).sum();
    let grad = x.grad(&objective.backward()).expect("image gradient");
    (grad, pred_c, pred_f)
}

/// Runs DIVA on one batch: `compressed` is attacked, `reference` must stay right.
fn diva(
    compressed: &dyn Differentiable,
    reference: &dyn Differentiable,
    images: Tensor<4>,
    labels: Tensor<1, Int>,
    config: &Settings,
) -> AttackOutput {
    let n = images.dims()[0];
    let device = images.device();
    let truth: Vec<i64> = labels
        .clone()
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .expect("labels");
    let settings = StepSettings {
        rule: StepRule::Sign,
        eps: config.step,
        budget: config.budget,
    };
    let weight = config.weight;
    let ones = Tensor::<1>::ones([n], &device);
    let mut x = images.clone();
    let mut iterations = vec![config.steps; n];
    let mut active = vec![true; n];
    for step in 0..config.steps {
        let (grad, pred_c, pred_f) =
            differential_gradient(compressed, reference, &x, &labels, weight);
        for i in 0..n {
            if active[i] && pred_c[i] != truth[i] && pred_f[i] == truth[i] {
                active[i] = false;
                iterations[i] = step;
            }
        }
        if !active.iter().any(|a| *a) {
            break;
        }
        // A stopped image gets a zero gradient: the sign step leaves it where it is.
        let keep: Vec<f32> = active.iter().map(|&a| if a { 1.0 } else { 0.0 }).collect();
        let keep =
            Tensor::<1>::from_data(TensorData::new(keep, [n]), &device).reshape([n, 1, 1, 1]);
        x = kernels::attack_step(x, images.clone(), grad * keep, ones.clone(), settings);
    }
    AttackOutput {
        adversarial: x,
        iterations,
        stages: Vec::new(),
    }
}
