//! The loop FGSM, FGM, IFGSM, IFGM and PGD share: from the image (or PGD's random start),
//! `steps` times a step along the cross-entropy gradient, each step a fused `attack_step`
//! kernel (WGSL on wgpu): sign or L2-scaled, clipped to within `step` of the previous image,
//! to the budget around the original and to [0, 1].

use std::str::FromStr;

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::loss::loss_gradient;
use super::{AttackOutput, Batch, Differentiable};
use crate::kernels::{self, StepRule, StepSettings};
use crate::{Error, Result};

/// How IFGM / FGM scale the gradient.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradNorm {
    /// eps * sqrt(d) * g / ||g||_2 per image: a step as long (L2) as an L-inf step of eps.
    #[default]
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

/// One run of the loop.
pub(super) struct Iterative {
    pub rule: StepRule,
    pub grad_norm: GradNorm,
    pub step: f32,
    pub steps: usize,
    pub budget: Option<f32>,
    /// PGD: start from a uniform random point of the budget, seeded.
    pub random_start: Option<u64>,
}

impl Iterative {
    pub fn run(&self, model: &dyn Differentiable, batch: Batch) -> AttackOutput {
        let Batch {
            images,
            labels,
            first_image,
        } = batch;
        let n = images.dims()[0];
        let settings = StepSettings {
            rule: self.rule,
            eps: self.step,
            budget: self.budget.unwrap_or(f32::INFINITY),
        };
        let mut x = images.clone();
        if let (Some(seed), Some(budget)) = (self.random_start, self.budget) {
            x = random_start(&images, budget, seed, first_image);
        }
        let ones = Tensor::<1>::ones([n], &images.device());
        for _ in 0..self.steps {
            let grad = loss_gradient(&model, &x, &labels);
            let factor = match self.rule {
                StepRule::Sign => ones.clone(),
                StepRule::Scaled => self.step_factor(&grad),
            };
            x = kernels::attack_step(x, images.clone(), grad, factor, settings);
        }
        AttackOutput::uniform(x, self.steps)
    }

    /// Per-image factor of the gradient-amplitude step: step * sqrt(d) / ||g||_2 (L2) or step.
    /// The norm is taken as max|g| * ||g / max|g|||, so gradients far below 1e-19 (whose
    /// squares underflow) still give their true direction; only an exactly zero gradient makes
    /// no step (its factor is infinite and the kernel skips NaN steps).
    fn step_factor(&self, grad: &Tensor<4>) -> Tensor<1> {
        let [n, c, h, w] = grad.dims();
        let device = grad.device();
        match self.grad_norm {
            GradNorm::None => Tensor::full([n], self.step, &device),
            GradNorm::L2 => {
                let d = c * h * w;
                let flat = grad.clone().reshape([n, d]);
                let peak = flat.clone().abs().max_dim(1);
                let norm = (flat / peak.clone()).square().sum_dim(1).sqrt() * peak;
                (norm.recip() * (self.step * (d as f32).sqrt())).reshape([n])
            }
        }
    }
}

impl Differentiable for &dyn Differentiable {
    fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        (**self).logits(images)
    }
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
