//! IFGM: IFGSM's loop with a gradient-amplitude step (L2-scaled by default, or the paper's
//! literal `step * g`), each step clipped to within `step` of the previous image.

use serde::{Deserialize, Serialize};

use super::fgm::GRAD_NORM;
use super::iterative::{GradNorm, Iterative};
use super::{Attack, AttackOutput, Batch, Parameter, Shape, Target, check, parameters};
use crate::Result;
use crate::kernels::StepRule;

pub struct Ifgm;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub step: f32,
    pub steps: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<f32>,
    pub grad_norm: GradNorm,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            step: 0.02,
            steps: 12,
            budget: None,
            grad_norm: GradNorm::L2,
        }
    }
}

impl Attack for Ifgm {
    type Settings = Settings;
    const NAME: &'static str = "ifgm";
    const ABOUT: &'static str = "iterated L2-scaled gradient steps, each clipped to the step";
    const PARAMETERS: &'static [Parameter] = &[
        parameters::STEP,
        parameters::STEPS,
        parameters::BUDGET,
        GRAD_NORM,
    ];

    fn validate(s: &Settings) -> Result<()> {
        check::positive("step", s.step)?;
        check::count("steps", s.steps)?;
        check::budget(s.budget)
    }

    fn shape(s: &Settings) -> Shape {
        Shape::iterative(s.step, s.steps, s.budget)
    }

    fn passes_per_image(s: &Settings, _: usize) -> f64 {
        2.0 * s.steps as f64
    }

    fn run(s: &Settings, target: &Target, batch: Batch) -> Result<AttackOutput> {
        Ok(Iterative {
            rule: StepRule::Scaled,
            grad_norm: s.grad_norm,
            step: s.step,
            steps: s.steps,
            budget: s.budget,
            random_start: None,
        }
        .run(target.model(), batch))
    }
}
