//! APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
//! diverse parameter-free attacks"): projected gradient ascent with momentum 0.75 from a random
//! start, a step that starts at 2 x budget and halves at checkpoints where the loss stalls,
//! keeping each image's best point. L-inf (sign steps) or L2 (normalised steps); the CE or the
//! DLR loss; restarts on the images still correct.
//!
//! The schedule follows the authors' code (the `autoattack` package, also torchattacks'
//! `APGD`): checkpoints after 22% of the iterations, then at intervals shrinking by 3% of the
//! iterations to at least 6%; at a checkpoint an image's step halves, and it restarts from its
//! best point, when at most 75% of the steps since the last checkpoint raised its loss
//! (counting, as that code does, the first checkpoint's first comparison against a loss of
//! 0), or when neither its step was halved nor its best loss improved at the last checkpoint.
//! An image counts as fooled when any iterate fooled it; it then leaves the batch (the others'
//! iterates do not depend on it), which changes no result and saves the work.
//!
//! The ascent itself is generic over an [`Objective`], which the margin form of DIVA reuses.

use burn::prelude::*;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::loss::{self, Loss};
use super::{
    Attack, AttackOutput, Batch, Differentiable, Norm, Parameter, Shape, Target, check,
    host_f32, image_rng, parameters,
};
use crate::Result;
use crate::kernels::{self, StepRule, StepSettings};

pub struct Apgd;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<f32>,
    pub norm: Norm,
    pub loss: Loss,
    pub iterations: usize,
    pub restarts: usize,
    pub seed: u64,
}

impl Default for Settings {
    /// The authors' and torchattacks' defaults: 100 iterations, one run, the CE loss, L-inf.
    fn default() -> Self {
        Self {
            budget: None,
            norm: Norm::Linf,
            loss: Loss::Ce,
            iterations: 100,
            restarts: 1,
            seed: 1,
        }
    }
}

pub(super) const LOSS: Parameter = Parameter {
    name: "loss",
    flag: "loss",
    help: "APGD's loss: ce (cross-entropy) or dlr (difference of logits ratio).",
};

impl Attack for Apgd {
    type Settings = Settings;
    const NAME: &'static str = "apgd";
    const ABOUT: &'static str = "auto-PGD: momentum, step halving at stalls, best point kept";
    const PARAMETERS: &'static [Parameter] = &[
        parameters::BUDGET,
        parameters::NORM,
        LOSS,
        parameters::ITERATIONS,
        parameters::RESTARTS,
        parameters::SEED,
    ];

    fn validate(s: &Settings) -> Result<()> {
        check::required_budget(Self::NAME, s.budget)?;
        check::count("iterations", s.iterations)?;
        check::count("restarts", s.restarts)
    }

    fn shape(s: &Settings) -> Shape {
        Shape::budgeted(s.norm, s.budget, s.iterations * s.restarts)
    }

    fn passes_per_image(s: &Settings, _: usize) -> f64 {
        2.0 * (s.iterations * s.restarts) as f64
    }

    fn run(s: &Settings, target: &Target, batch: Batch) -> Result<AttackOutput> {
        let schedule = Schedule {
            budget: s.budget.expect("validated"),
            norm: s.norm,
            iterations: s.iterations,
            restarts: s.restarts,
            seed: s.seed,
        };
        let objective = SingleModel {
            model: target.model(),
            loss: s.loss,
        };
        let n = batch.images.dims()[0];
        let indices: Vec<usize> = (batch.first_image..batch.first_image + n).collect();
        let run = schedule.run(&objective, &batch.images, &batch.labels, &indices);
        Ok(AttackOutput {
            adversarial: run.points,
            iterations: run.iterations,
            stages: Vec::new(),
        })
    }
}

/// What APGD ascends, at a point of the batch.
pub(super) struct Evaluation {
    /// The gradient of the summed objective with respect to the images.
    pub grad: Tensor<4>,
    /// Each image's objective (higher: closer to the attack's goal).
    pub value: Vec<f32>,
    /// Whether each image already meets the attack's goal.
    pub success: Vec<bool>,
}

pub(super) trait Objective {
    fn evaluate(&self, x: &Tensor<4>, labels: &Tensor<1, Int>) -> Evaluation;
}

/// One model's loss; success is a misclassified image.
pub(super) struct SingleModel<'a> {
    pub model: &'a dyn Differentiable,
    pub loss: Loss,
}

impl Objective for SingleModel<'_> {
    fn evaluate(&self, x: &Tensor<4>, labels: &Tensor<1, Int>) -> Evaluation {
        let probe = loss::probe(self.model, x, labels, self.loss);
        Evaluation {
            grad: probe.grad,
            value: probe.loss,
            success: probe.correct.iter().map(|c| !c).collect(),
        }
    }
}

/// APGD's budget, iterations and randomness.
pub(super) struct Schedule {
    pub budget: f32,
    pub norm: Norm,
    pub iterations: usize,
    pub restarts: usize,
    pub seed: u64,
}

/// What a run of APGD leaves.
pub(super) struct Run {
    /// Per image: its last successful iterate, or its best (highest-objective) point.
    pub points: Tensor<4>,
    pub success: Vec<bool>,
    /// Iterations until the first success (all of them when none).
    pub iterations: Vec<usize>,
}

/// The state of the images still ascending (rows of the tensors, entries of the vectors).
struct Ascent {
    /// Their index in the batch.
    rows: Vec<usize>,
    x0: Tensor<4>,
    labels: Tensor<1, Int>,
    x: Tensor<4>,
    x_old: Tensor<4>,
    grad: Tensor<4>,
    x_best: Tensor<4>,
    grad_best: Tensor<4>,
    step: Vec<f32>,
    best: Vec<f32>,
    best_at_check: Vec<f32>,
    reduced_at_check: Vec<bool>,
    /// Objective per iteration since the last checkpoint, per image.
    history: Vec<Vec<f32>>,
    /// The objective of the iterate before the window (0 before the first checkpoint, as in
    /// the authors' code).
    before_window: Vec<f32>,
}

impl Ascent {
    /// Keeps the images at `keep` (positions in `rows`), in order.
    fn retain(&mut self, keep: &[usize]) {
        let device = self.x.device();
        let index = Tensor::<1, Int>::from_data(
            TensorData::new(
                keep.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [keep.len()],
            ),
            &device,
        );
        let pick = |t: &Tensor<4>| t.clone().select(0, index.clone());
        self.x0 = pick(&self.x0);
        self.x = pick(&self.x);
        self.x_old = pick(&self.x_old);
        self.grad = pick(&self.grad);
        self.x_best = pick(&self.x_best);
        self.grad_best = pick(&self.grad_best);
        self.labels = self.labels.clone().select(0, index);
        let keep_f32 = |v: &[f32]| keep.iter().map(|&i| v[i]).collect::<Vec<_>>();
        self.rows = keep.iter().map(|&i| self.rows[i]).collect();
        self.step = keep_f32(&self.step);
        self.best = keep_f32(&self.best);
        self.best_at_check = keep_f32(&self.best_at_check);
        self.reduced_at_check = keep.iter().map(|&i| self.reduced_at_check[i]).collect();
        self.history = keep.iter().map(|&i| self.history[i].clone()).collect();
        self.before_window = keep_f32(&self.before_window);
    }

    fn len(&self) -> usize {
        self.rows.len()
    }
}

impl Schedule {
    /// Runs APGD on a batch (`indices`: each image's index in the whole set, for its random
    /// start), restarting on the images not yet successful.
    pub fn run(
        &self,
        objective: &dyn Objective,
        images: &Tensor<4>,
        labels: &Tensor<1, Int>,
        indices: &[usize],
    ) -> Run {
        let dims = images.dims();
        let n = dims[0];
        let per_image = dims[1] * dims[2] * dims[3];
        let mut points = host_f32(images.clone());
        let mut success = vec![false; n];
        let mut iterations = vec![0usize; n];
        for restart in 0..self.restarts {
            let open: Vec<usize> = (0..n).filter(|&i| !success[i]).collect();
            if open.is_empty() {
                break;
            }
            let (x0, y) = rows_of(images, labels, &open);
            let ids: Vec<usize> = open.iter().map(|&i| indices[i]).collect();
            let start = self.random_start(&x0, &ids, restart as u64);
            let out = self.single_run(objective, x0, y, start);
            let values = host_f32(out.points);
            for (j, &i) in open.iter().enumerate() {
                // A later restart's best point replaces an earlier one only when it fools.
                if out.success[j] || restart == 0 {
                    points[i * per_image..(i + 1) * per_image]
                        .copy_from_slice(&values[j * per_image..(j + 1) * per_image]);
                }
                success[i] |= out.success[j];
                iterations[i] += out.iterations[j];
            }
        }
        Run {
            points: Tensor::from_data(TensorData::new(points, dims), &images.device()),
            success,
            iterations,
        }
    }

    /// The authors' random start: L-inf, uniform noise scaled so its largest pixel is the
    /// budget; L2, Gaussian noise scaled to the budget's length; clipped to [0, 1].
    fn random_start(&self, x0: &Tensor<4>, indices: &[usize], stream: u64) -> Tensor<4> {
        let dims = x0.dims();
        let per_image = dims[1] * dims[2] * dims[3];
        let mut noise = Vec::with_capacity(dims[0] * per_image);
        for &index in indices {
            let mut rng = image_rng(self.seed, 0xa96d + stream, index);
            let t: Vec<f32> = match self.norm {
                Norm::Linf => (0..per_image)
                    .map(|_| 2.0 * rng.random::<f32>() - 1.0)
                    .collect(),
                // Standard normal by Box-Muller (the direction is all that matters here).
                Norm::L2 => (0..per_image)
                    .map(|_| {
                        let u: f32 = 1.0 - rng.random::<f32>();
                        let v: f32 = rng.random();
                        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
                    })
                    .collect(),
            };
            let scale = match self.norm {
                Norm::Linf => t.iter().fold(0f32, |m, v| m.max(v.abs())),
                Norm::L2 => t.iter().map(|v| v * v).sum::<f32>().sqrt(),
            };
            noise.extend(t.iter().map(|v| self.budget * v / scale.max(1e-12)));
        }
        let noise = Tensor::<4>::from_data(TensorData::new(noise, dims), &x0.device());
        (x0.clone() + noise).clamp(0.0, 1.0)
    }

    /// `x` moved by `delta` and projected onto the budget around `x0` and onto [0, 1].
    fn project_step(&self, x: Tensor<4>, x0: &Tensor<4>, delta: Tensor<4>) -> Tensor<4> {
        match self.norm {
            Norm::Linf => {
                let n = x.dims()[0];
                let ones = Tensor::<1>::ones([n], &x.device());
                kernels::attack_step(
                    x,
                    x0.clone(),
                    delta,
                    ones,
                    StepSettings {
                        rule: StepRule::Scaled,
                        eps: f32::INFINITY,
                        budget: self.budget,
                    },
                )
            }
            Norm::L2 => {
                let moved = x + delta - x0.clone();
                let norm = l2_norms(&moved);
                let scale = norm.clone().clamp_max(self.budget) / (norm + 1e-12);
                (x0.clone() + moved * scale).clamp(0.0, 1.0)
            }
        }
    }

    /// The step from `x` along `grad`: the sign (L-inf) or the normalised gradient (L2),
    /// times each image's step size.
    fn direction(&self, grad: &Tensor<4>, step: &[f32]) -> Tensor<4> {
        let n = step.len();
        let device = grad.device();
        let step = Tensor::<1>::from_data(TensorData::new(step.to_vec(), [n]), &device)
            .reshape([n, 1, 1, 1]);
        match self.norm {
            Norm::Linf => grad.clone().sign() * step,
            Norm::L2 => grad.clone() / (l2_norms(grad) + 1e-12) * step,
        }
    }

    fn single_run(
        &self,
        objective: &dyn Objective,
        x0: Tensor<4>,
        labels: Tensor<1, Int>,
        start: Tensor<4>,
    ) -> Run {
        let dims = x0.dims();
        let n = dims[0];
        let per_image = dims[1] * dims[2] * dims[3];
        let device = x0.device();
        let total = self.iterations;
        let (mut k, k_min, k_decrease) = (
            ((0.22 * total as f64) as usize).max(1),
            ((0.06 * total as f64) as usize).max(1),
            ((0.03 * total as f64) as usize).max(1),
        );
        let first = objective.evaluate(&start, &labels);
        let mut done: Vec<Option<(Vec<f32>, usize)>> = vec![None; n];
        let mut state = Ascent {
            rows: (0..n).collect(),
            x0,
            labels,
            x: start.clone(),
            x_old: start.clone(),
            grad: first.grad.clone(),
            x_best: start.clone(),
            grad_best: first.grad,
            step: vec![2.0 * self.budget; n],
            best: first.value.clone(),
            best_at_check: first.value,
            reduced_at_check: vec![true; n],
            history: vec![Vec::new(); n],
            before_window: vec![0.0; n],
        };
        let finish = |state: &mut Ascent,
                      done: &mut Vec<Option<(Vec<f32>, usize)>>,
                      fooled: &[bool],
                      x: &Tensor<4>,
                      iteration: usize| {
            if !fooled.iter().any(|f| *f) {
                return;
            }
            let values = host_f32(x.clone());
            let mut keep = Vec::new();
            for (j, &f) in fooled.iter().enumerate() {
                if f {
                    let row = values[j * per_image..(j + 1) * per_image].to_vec();
                    done[state.rows[j]] = Some((row, iteration));
                } else {
                    keep.push(j);
                }
            }
            state.retain(&keep);
        };
        finish(&mut state, &mut done, &first.success, &start, 0);
        let mut since_check = 0;
        for i in 0..total {
            if state.len() == 0 {
                break;
            }
            let momentum = if i > 0 { 0.75 } else { 1.0 };
            let previous = state.x_old.clone();
            state.x_old = state.x.clone();
            let z = self.project_step(
                state.x.clone(),
                &state.x0,
                self.direction(&state.grad, &state.step),
            );
            let delta = (z - state.x.clone()) * momentum
                + (state.x.clone() - previous) * (1.0 - momentum);
            state.x = self.project_step(state.x.clone(), &state.x0, delta);
            let e = objective.evaluate(&state.x, &state.labels);
            let evaluated = state.x.clone();
            state.grad = e.grad;
            let improved: Vec<bool> = e
                .value
                .iter()
                .zip(&state.best)
                .map(|(v, b)| v > b)
                .collect();
            state.x_best = super::select_rows(&improved, state.x.clone(), state.x_best.clone());
            state.grad_best =
                super::select_rows(&improved, state.grad.clone(), state.grad_best.clone());
            for (j, &value) in e.value.iter().enumerate() {
                state.history[j].push(value);
                if improved[j] {
                    state.best[j] = value;
                }
            }
            since_check += 1;
            if since_check == k {
                let mut reduce = vec![false; state.len()];
                for (j, reduce) in reduce.iter_mut().enumerate() {
                    let h = &state.history[j];
                    // Steps since the last checkpoint that raised the objective.
                    let rises = (0..h.len())
                        .filter(|&t| {
                            h[t] > if t == 0 {
                                state.before_window[j]
                            } else {
                                h[t - 1]
                            }
                        })
                        .count();
                    let oscillating = rises as f64 <= k as f64 * 0.75;
                    let stalled =
                        !state.reduced_at_check[j] && state.best_at_check[j] >= state.best[j];
                    *reduce = oscillating || stalled;
                    state.reduced_at_check[j] = *reduce;
                    state.best_at_check[j] = state.best[j];
                    if *reduce {
                        state.step[j] /= 2.0;
                    }
                    // The next window compares its first iterate with this one's last.
                    state.before_window[j] = *h.last().expect("an iterate since the checkpoint");
                    state.history[j].clear();
                }
                if reduce.iter().any(|r| *r) {
                    state.x = super::select_rows(&reduce, state.x_best.clone(), state.x.clone());
                    state.grad =
                        super::select_rows(&reduce, state.grad_best.clone(), state.grad.clone());
                }
                k = k.saturating_sub(k_decrease).max(k_min);
                since_check = 0;
            }
            finish(&mut state, &mut done, &e.success, &evaluated, i + 1);
        }
        // The images never fooled end at their best point.
        let best = host_f32(state.x_best.clone());
        for (j, &row) in state.rows.iter().enumerate() {
            done[row] = Some((best[j * per_image..(j + 1) * per_image].to_vec(), total));
        }
        let mut points = Vec::with_capacity(n * per_image);
        let mut success = vec![true; n];
        let mut iterations = Vec::with_capacity(n);
        for &row in &state.rows {
            success[row] = false;
        }
        for entry in done {
            let (row, at) = entry.expect("every image ends somewhere");
            points.extend(row);
            iterations.push(at);
        }
        Run {
            points: Tensor::from_data(TensorData::new(points, dims), &device),
            success,
            iterations,
        }
    }
}

/// Each image's L2 norm, shaped [n, 1, 1, 1] to scale the images.
fn l2_norms(x: &Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    x.clone()
        .reshape([n, c * h * w])
        .square()
        .sum_dim(1)
        .sqrt()
        .reshape([n, 1, 1, 1])
}

/// The images and labels at `rows` of a batch.
pub(super) fn rows_of(
    images: &Tensor<4>,
    labels: &Tensor<1, Int>,
    rows: &[usize],
) -> (Tensor<4>, Tensor<1, Int>) {
    let index = Tensor::<1, Int>::from_data(
        TensorData::new(
            rows.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            [rows.len()],
        ),
        &images.device(),
    );
    (
        images.clone().select(0, index.clone()),
        labels.clone().select(0, index),
    )
}
