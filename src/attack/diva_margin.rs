//! DIVA's margin form: an evasive attack on a pair — fool the compressed model C while the
//! full model F stays right — on APGD's schedule (momentum, step halving at stalls, random
//! start, the best point kept), through every gradient estimator C has.
//!
//! DIVA's own objective, p_F(y) - c * p_C(y), is a difference of softmax probabilities: on a
//! confident model both saturate, their gradients vanish, and the attack stalls (on the quick
//! sweep's LeNet5 it was less evasive than plain PGD). This form ascends logit margins
//! m(x) = z_y - max_{j != y} z_j instead, each capped where its goal is met:
//!
//!   L = min(m_F - kappa, 0) - max(m_C, -kappa)
//!
//! so C is pushed until its margin is -kappa (wrong, by kappa) and F is pulled back only when
//! its margin falls below kappa; L reaches its top, 0, exactly where the attack has succeeded.
//! An image succeeds when C is wrong and F right at some iterate; it keeps that iterate.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::apgd::{Evaluation, Objective, Schedule, rows_of};
use super::loss::{correct, margin};
use super::{
    Attack, AttackOutput, Batch, Differentiable, Norm, Parameter, Shape, Target, check,
    host_f32, parameters,
};
use crate::Result;

pub struct DivaMargin;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub budget: f32,
    pub iterations: usize,
    /// The margin (in logits) F keeps and C is pushed past.
    pub kappa: f32,
    pub seed: u64,
}

impl Default for Settings {
    /// DIVA's and PGD's budget, 25 iterations (twice PGD's 12 steps: APGD's schedule needs a
    /// few checkpoints), kappa 0.
    fn default() -> Self {
        Self {
            budget: 0.1,
            iterations: 25,
            kappa: 0.0,
            seed: 1,
        }
    }
}

impl Attack for DivaMargin {
    type Settings = Settings;
    const NAME: &'static str = "diva-margin";
    const ABOUT: &'static str = "fools the compressed model while the full one stays right \
                                 (logit margins on APGD's schedule)";
    const PARAMETERS: &'static [Parameter] = &[
        parameters::BUDGET,
        parameters::ITERATIONS,
        Parameter {
            name: "kappa",
            flag: "kappa",
            help: "DIVA's margin form: the logit margin the reference keeps and the source is \
                   pushed past.",
        },
        parameters::SEED,
    ];
    const NEEDS_REFERENCE: bool = true;
    const USES_ALL_ESTIMATORS: bool = true;

    fn validate(s: &Settings) -> Result<()> {
        check::positive("budget", s.budget)?;
        check::count("iterations", s.iterations)?;
        check::at_least_zero("kappa", s.kappa)
    }

    fn shape(s: &Settings) -> Shape {
        Shape::budgeted(Norm::Linf, Some(s.budget), s.iterations)
    }

    /// Both models, forward and backward, under one estimator (a second one sees the few
    /// images left).
    fn passes_per_image(s: &Settings, _: usize) -> f64 {
        4.0 * s.iterations as f64
    }

    fn run(s: &Settings, target: &Target, batch: Batch) -> Result<AttackOutput> {
        let reference = target.reference().expect("checked by AttackConfig::run");
        let Batch {
            images,
            labels,
            first_image,
        } = batch;
        let dims = images.dims();
        let n = dims[0];
        let per_image = dims[1] * dims[2] * dims[3];
        let schedule = Schedule {
            budget: s.budget,
            norm: Norm::Linf,
            iterations: s.iterations,
            restarts: 1,
            seed: s.seed,
        };
        let mut points = host_f32(images.clone());
        let mut done = vec![false; n];
        let mut iterations = vec![0usize; n];
        for view in target.views() {
            let open: Vec<usize> = (0..n).filter(|&i| !done[i]).collect();
            if open.is_empty() {
                break;
            }
            let (x, y) = rows_of(&images, &labels, &open);
            let ids: Vec<usize> = open.iter().map(|&i| first_image + i).collect();
            let objective = Evasion {
                compressed: view.model,
                reference,
                kappa: s.kappa,
            };
            let run = schedule.run(&objective, &x, &y, &ids);
            let values = host_f32(run.points);
            for (j, &i) in open.iter().enumerate() {
                iterations[i] += run.iterations[j];
                if run.success[j] || !done[i] {
                    points[i * per_image..(i + 1) * per_image]
                        .copy_from_slice(&values[j * per_image..(j + 1) * per_image]);
                }
                done[i] = run.success[j];
            }
        }
        Ok(AttackOutput {
            adversarial: Tensor::from_data(TensorData::new(points, dims), &images.device()),
            iterations,
            stages: Vec::new(),
        })
    }
}

/// The margin objective on the pair.
struct Evasion<'a> {
    compressed: &'a dyn Differentiable,
    reference: &'a dyn Differentiable,
    kappa: f32,
}

impl Objective for Evasion<'_> {
    fn evaluate(&self, x: &Tensor<4>, labels: &Tensor<1, Int>) -> Evaluation {
        let input = x.clone().autodiff().require_grad();
        let logits_c = self.compressed.logits(input.clone());
        let logits_f = self.reference.logits(input.clone());
        let c_right = correct(logits_c.clone().inner(), labels);
        let f_right = correct(logits_f.clone().inner(), labels);
        let m_c = margin(logits_c, labels);
        let m_f = margin(logits_f, labels);
        let value = (m_f - self.kappa).clamp_max(0.0) - m_c.clamp_min(-self.kappa);
        let values = host_f32(value.clone().inner());
        let grad = input
            .grad(&value.sum().backward())
            .expect("image gradient");
        Evaluation {
            grad,
            value: values,
            success: c_right.iter().zip(&f_right).map(|(c, f)| !c && *f).collect(),
        }
    }
}
