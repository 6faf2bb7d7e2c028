//! PGD (Madry et al. 2018): IFGSM from a uniform random start inside the L-inf budget, every
//! step projected onto the budget.

use serde::{Deserialize, Serialize};

use super::iterative::{GradNorm, Iterative};
use super::{Attack, AttackOutput, Batch, Parameter, Shape, Target, check, parameters};
use crate::Result;
use crate::kernels::StepRule;

pub struct Pgd;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub step: f32,
    pub steps: usize,
    pub budget: f32,
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            step: 0.02,
            steps: 12,
            budget: 0.1,
            seed: 1,
        }
    }
}

impl Attack for Pgd {
    type Settings = Settings;
    const NAME: &'static str = "pgd";
    const ABOUT: &'static str = "IFGSM from a random start, projected onto the budget";
    const PARAMETERS: &'static [Parameter] = &[
        parameters::STEP,
        parameters::STEPS,
        parameters::BUDGET,
        parameters::SEED,
    ];

    fn validate(s: &Settings) -> Result<()> {
        check::positive("step", s.step)?;
        check::count("steps", s.steps)?;
        check::positive("budget", s.budget)
    }

    fn shape(s: &Settings) -> Shape {
        Shape::iterative(s.step, s.steps, Some(s.budget))
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
            budget: Some(s.budget),
            random_start: Some(s.seed),
        }
        .run(target.model(), batch))
    }
}
