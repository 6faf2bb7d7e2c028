//! IFGSM (the paper's Algorithm 1; Kurakin et al.'s BIM): `steps` signed gradient steps of
//! `step`, each clipped to within `step` of the previous image and to [0, 1] (and, with a
//! budget, projected onto the L-inf ball around the original).

use serde::{Deserialize, Serialize};

use super::iterative::{GradNorm, Iterative};
use super::{Attack, AttackOutput, Batch, Parameter, Shape, Target, check, parameters};
use crate::Result;
use crate::kernels::StepRule;

pub struct Ifgsm;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub step: f32,
    pub steps: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<f32>,
}

impl Default for Settings {
    /// The paper's: 12 steps of 0.02, no budget (L-inf reach 0.24).
    fn default() -> Self {
        Self {
            step: 0.02,
            steps: 12,
            budget: None,
        }
    }
}

impl Attack for Ifgsm {
    type Settings = Settings;
    const NAME: &'static str = "ifgsm";
    const ABOUT: &'static str = "iterated signed gradient steps (the paper's Algorithm 1)";
    const PARAMETERS: &'static [Parameter] =
        &[parameters::STEP, parameters::STEPS, parameters::BUDGET];

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
            rule: StepRule::Sign,
            grad_norm: GradNorm::L2,
            step: s.step,
            steps: s.steps,
            budget: s.budget,
            random_start: None,
        }
        .run(target.model(), batch))
    }
}
