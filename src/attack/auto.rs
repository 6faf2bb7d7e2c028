//! `auto`: the worst case over attacks and gradient estimators, as AutoAttack's cascade (Croce
//! & Hein 2020): APGD with the cross-entropy loss, APGD with the DLR loss, then the Square
//! Attack, each only on the images every earlier stage left correct. A model with quantisers
//! shows its gradient through each estimator (STE, BPDA); each APGD stage runs under every
//! one of them. An image counts as robust only if it survives every stage; each stage's share
//! of the kills is reported.
//!
//! Square is L-inf: with an L2 budget the cascade is the APGD stages alone. The DLR loss needs
//! three classes: a two-class model runs the CE stages and Square.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::apgd::{Schedule, SingleModel, rows_of};
use super::loss::{self, Loss};
use super::{
    Attack, AttackOutput, Batch, Norm, Parameter, Shape, Stage, StageKills, Target, check,
    host_f32, parameters,
};
use crate::Result;

pub struct Auto;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<f32>,
    pub norm: Norm,
    /// APGD's iterations per stage (and restart).
    pub iterations: usize,
    pub restarts: usize,
    /// The Square Attack's query budget.
    pub queries: usize,
    pub p_init: f32,
    pub seed: u64,
}

impl Default for Settings {
    /// AutoAttack's standard settings for these stages: 100 APGD iterations, one run each,
    /// Square with 5,000 queries and p_init 0.8.
    fn default() -> Self {
        Self {
            budget: None,
            norm: Norm::Linf,
            iterations: 100,
            restarts: 1,
            queries: 5000,
            p_init: 0.8,
            seed: 1,
        }
    }
}

impl Attack for Auto {
    type Settings = Settings;
    const NAME: &'static str = "auto";
    const ABOUT: &'static str = "the worst case: APGD-CE, APGD-DLR (every gradient estimator), \
                                 then Square, each on the images still correct";
    const PARAMETERS: &'static [Parameter] = &[
        parameters::BUDGET,
        parameters::NORM,
        parameters::ITERATIONS,
        parameters::RESTARTS,
        parameters::QUERIES,
        parameters::P_INIT,
        parameters::SEED,
    ];
    const USES_ALL_ESTIMATORS: bool = true;

    fn validate(s: &Settings) -> Result<()> {
        check::required_budget(Self::NAME, s.budget)?;
        check::count("iterations", s.iterations)?;
        check::count("restarts", s.restarts)?;
        check::count("queries", s.queries)?;
        super::square::check_p_init(s.p_init)
    }

    fn shape(s: &Settings) -> Shape {
        Shape::budgeted(s.norm, s.budget, s.iterations * s.restarts)
    }

    /// The first stage on every image (the later ones see the few it leaves).
    fn passes_per_image(s: &Settings, _: usize) -> f64 {
        2.0 * (s.iterations * s.restarts) as f64 * 1.5
    }

    fn run(s: &Settings, target: &Target, batch: Batch) -> Result<AttackOutput> {
        let Batch {
            images,
            labels,
            first_image,
        } = batch;
        let dims = images.dims();
        let n = dims[0];
        let per_image = dims[1] * dims[2] * dims[3];
        let budget = s.budget.expect("validated");
        let indices: Vec<usize> = (first_image..first_image + n).collect();
        let clean_logits = target.model().logits(images.clone());
        let classes = clean_logits.dims()[1];
        // Images misclassified without attack are no stage's kill; they stay as they are.
        let mut state = Cascade {
            correct: loss::correct(clean_logits, &labels),
            points: host_f32(images.clone()),
            iterations: vec![0usize; n],
            per_image,
        };
        let mut stages = Vec::new();
        let schedule = Schedule {
            budget,
            norm: s.norm,
            iterations: s.iterations,
            restarts: s.restarts,
            seed: s.seed,
        };
        let losses: &[Loss] = if classes >= 3 {
            &[Loss::Ce, Loss::Dlr]
        } else {
            &[Loss::Ce]
        };
        for &loss in losses {
            for view in target.views() {
                let open = state.open();
                let mut fooled = 0;
                if !open.is_empty() {
                    let (x, y) = rows_of(&images, &labels, &open);
                    let ids: Vec<usize> = open.iter().map(|&i| indices[i]).collect();
                    let objective = SingleModel {
                        model: view.model,
                        loss,
                    };
                    let run = schedule.run(&objective, &x, &y, &ids);
                    fooled = state.place(&open, &run.points, &run.success, &run.iterations);
                }
                // One view: the model has no quantisers, its gradient is its own.
                let several = target.views().len() > 1;
                stages.push(StageKills {
                    stage: Stage::Apgd {
                        loss,
                        grad: several.then_some(view.grad),
                    },
                    fooled,
                });
            }
        }
        if s.norm == Norm::Linf {
            let open = state.open();
            let mut fooled = 0;
            if !open.is_empty() {
                let (x, y) = rows_of(&images, &labels, &open);
                let ids: Vec<usize> = open.iter().map(|&i| indices[i]).collect();
                let found = super::square::search(
                    target.model(),
                    &x,
                    &y,
                    &ids,
                    budget,
                    s.queries,
                    s.p_init,
                    s.seed,
                );
                fooled = state.place(&open, &found.images, &found.fooled, &found.queries);
            }
            stages.push(StageKills {
                stage: Stage::Square,
                fooled,
            });
        }
        Ok(AttackOutput {
            adversarial: Tensor::from_data(TensorData::new(state.points, dims), &images.device()),
            iterations: state.iterations,
            stages,
        })
    }
}

/// The cascade's images as its stages leave them.
struct Cascade {
    /// Whether each image is still classified correctly.
    correct: Vec<bool>,
    /// Each image's current point, on the host.
    points: Vec<f32>,
    /// Iterations (or queries) spent on each image.
    iterations: Vec<usize>,
    per_image: usize,
}

impl Cascade {
    /// The images still correct.
    fn open(&self) -> Vec<usize> {
        (0..self.correct.len()).filter(|&i| self.correct[i]).collect()
    }

    /// A stage's result on `rows`: fooled images take the point that fooled, the others the
    /// stage's best one. Returns how many it fooled.
    fn place(&mut self, rows: &[usize], found: &Tensor<4>, fooled: &[bool], spent: &[usize]) -> usize {
        let values = host_f32(found.clone());
        let d = self.per_image;
        let mut kills = 0;
        for (j, &i) in rows.iter().enumerate() {
            self.iterations[i] += spent[j];
            self.points[i * d..(i + 1) * d].copy_from_slice(&values[j * d..(j + 1) * d]);
            if fooled[j] {
                self.correct[i] = false;
                kills += 1;
            }
        }
        kills
    }
}
