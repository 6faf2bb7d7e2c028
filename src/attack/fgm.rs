//! FGM: one step of IFGM (the gradient scaled to the L2 length of an L-inf step of `step`,
//! or the paper's literal `step * g`), clipped to within `step` of the image.

use serde::{Deserialize, Serialize};

use super::iterative::{GradNorm, Iterative};
use super::{Attack, AttackOutput, Batch, Parameter, Shape, Target, check, parameters};
use crate::Result;
use crate::kernels::StepRule;

pub struct Fgm;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub step: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<f32>,
    pub grad_norm: GradNorm,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            step: 0.02,
            budget: None,
            grad_norm: GradNorm::L2,
        }
    }
}

/// IFGM's and FGM's gradient scaling.
pub(super) const GRAD_NORM: Parameter = Parameter {
    name: "grad_norm",
    flag: "grad-norm",
    help: "IFGM / FGM step: l2 (eps·sqrt(d)·g/||g||) or none (the paper's literal eps·g).",
};

impl Attack for Fgm {
    type Settings = Settings;
    const NAME: &'static str = "fgm";
    const ABOUT: &'static str = "one gradient step of L2 length step·sqrt(d)";
    const PARAMETERS: &'static [Parameter] = &[parameters::STEP, parameters::BUDGET, GRAD_NORM];

    fn validate(s: &Settings) -> Result<()> {
        check::positive("step", s.step)?;
        check::budget(s.budget)
    }

    fn shape(s: &Settings) -> Shape {
        Shape::iterative(s.step, 1, s.budget)
    }

    fn passes_per_image(_: &Settings, _: usize) -> f64 {
        2.0
    }

    fn run(s: &Settings, target: &Target, batch: Batch) -> Result<AttackOutput> {
        Ok(Iterative {
            rule: StepRule::Scaled,
            grad_norm: s.grad_norm,
            step: s.step,
            steps: 1,
            budget: s.budget,
            random_start: None,
        }
        .run(target.model(), batch))
    }
}
