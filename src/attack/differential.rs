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

use super::{AttackConfig, AttackOutput, Differentiable};
use crate::kernels::{self, StepRule, StepSettings};

/// The gradient of `sum_i p_F(y_i|x_i) - weight * p_C(y_i|x_i)` with respect to the images,
/// and both models' predicted classes at `images`.
pub fn differential_gradient(
    compressed: &impl Differentiable,
    reference: &impl Differentiable,
    images: &Tensor<4>,
    labels: &Tensor<1, Int>,
    weight: f32,
) -> (Tensor<4>, Vec<i64>, Vec<i64>) {
    let n = labels.dims()[0];
    let x = images.clone().autodiff().require_grad();
    let index = labels.clone().reshape([n, 1]);
    let logits_c = compressed.logits(x.clone());
    let logits_f = reference.logits(x.clone());
    let predicted = |logits: &Tensor<2>| -> Vec<i64> {
        logits
            .clone()
            .inner()
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .expect("predictions")
    };
    let (pred_c, pred_f) = (predicted(&logits_c), predicted(&logits_f));
    let p_c = softmax(logits_c, 1).gather(1, index.clone());
    let p_f = softmax(logits_f, 1).gather(1, index);
    let objective = (p_f - p_c * weight).sum();
    let grad = x.grad(&objective.backward()).expect("image gradient");
    (grad, pred_c, pred_f)
}

/// Runs DIVA on one batch: `compressed` is attacked, `reference` must stay right.
pub(super) fn diva(
    compressed: &impl Differentiable,
    reference: &impl Differentiable,
    images: Tensor<4>,
    labels: Tensor<1, Int>,
    config: &AttackConfig,
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
        eps: config.eps,
        budget: config.pgd_budget(),
    };
    let weight = config.weight.unwrap_or(1.0);
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
    }
}
