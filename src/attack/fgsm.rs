//! FGSM (Goodfellow et al. 2015): one step of `step` along the sign of the gradient.

use serde::{Deserialize, Serialize};

use super::iterative::{GradNorm, Iterative};
use super::{Attack, AttackOutput, Batch, Parameter, Shape, Target, check, parameters};
use crate::Result;
use crate::kernels::StepRule;

pub struct Fgsm;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub step: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<f32>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            step: 0.02,
            budget: None,
        }
    }
}

impl Attack for Fgsm {
    type Settings = Settings;
    const NAME: &'static str = "fgsm";
    const ABOUT: &'static str = "one signed gradient step";
    const PARAMETERS: &'static [Parameter] = &[parameters::STEP, parameters::BUDGET];

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
            rule: StepRule::Sign,
            grad_norm: GradNorm::L2,
            step: s.step,
            steps: 1,
            budget: s.budget,
            random_start: None,
        }
        .run(target.model(), batch))
    }
}
