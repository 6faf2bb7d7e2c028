//! DeepFool-L2 (Moosavi-Dezfooli et al. 2016), batched: the whole batch moves together, each
//! image stops once its label flips (or once its step is exactly zero, when no further
//! iteration could change it) and leaves the batch. Every iteration linearises the class
//! logits of every active image with one forward and one backward pass over the active images
//! repeated once per class it looks at: every class, or with `candidates` = k the image's own
//! and the k classes of largest clean logit (Foolbox's `candidates`: fewer classes, fewer
//! passes; k + 1 instead of K).

use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;
use serde::{Deserialize, Serialize};

use super::{Attack, AttackOutput, Batch, Differentiable, Parameter, Reach, Shape, Target, check};
use crate::{Error, Result};

pub struct DeepFool;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Overshoot of the accumulated perturbation.
    pub overshoot: f32,
    pub max_iterations: usize,
    /// Consider only the k classes with the highest clean logits (all when `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidates: Option<usize>,
}

impl Default for Settings {
    /// Foolbox's and the paper's: overshoot 0.02, at most 50 iterations, every class.
    fn default() -> Self {
        Self {
            overshoot: 0.02,
            max_iterations: 50,
            candidates: None,
        }
    }
}

impl Attack for DeepFool {
    type Settings = Settings;
    const NAME: &'static str = "deepfool";
    const ABOUT: &'static str = "steps to the nearest linearised class boundary (L2)";
    const PARAMETERS: &'static [Parameter] = &[
        Parameter {
            name: "overshoot",
            flag: "overshoot",
            help: "DeepFool's overshoot of the accumulated perturbation.",
        },
        Parameter {
            name: "max_iterations",
            flag: "max-iterations",
            help: "DeepFool's most iterations.",
        },
        Parameter {
            name: "candidates",
            flag: "candidates",
            help: "DeepFool: only the k classes with the highest clean logits.",
        },
    ];

    fn validate(s: &Settings) -> Result<()> {
        check::at_least_zero("overshoot", s.overshoot)?;
        check::count("max_iterations", s.max_iterations)?;
        if let Some(k) = s.candidates
            && k < 2
        {
            return Err(Error::invalid(
                "candidates",
                format!("DeepFool needs at least 2 classes to compare (got {k})"),
            ));
        }
        Ok(())
    }

    fn shape(s: &Settings) -> Shape {
        Shape {
            step: None,
            steps: s.max_iterations,
            budget: None,
            // None: it stops at the decision boundary.
            reach: Reach::default(),
        }
    }

    /// A forward and a backward pass per class looked at and iteration, about 8 iterations
    /// on MNIST.
    fn passes_per_image(s: &Settings, classes: usize) -> f64 {
        let looked_at = match s.candidates {
            Some(k) if k < classes => k + 1,
            _ => classes,
        };
        (2 * looked_at * 8) as f64
    }

    fn run(s: &Settings, target: &Target, batch: Batch) -> Result<AttackOutput> {
        Ok(deepfool(target.model(), batch.images, batch.labels, s))
    }
}

/// Added to each step's distance so a step lands past the boundary, not on it.
const STEP_SLACK: f32 = 1e-4;
/// Floor under the norm of a logit-difference gradient (a flat direction gives no step).
const NORM_FLOOR: f32 = 1e-12;

/// The classes DeepFool looks at for each image ("slots"), fixed on the first iteration.
struct Slots {
    /// [n, S]: slot s of image i holds a class.
    classes: Tensor<2, Int>,
    /// [n, 1]: the slot of the image's own label.
    own: Tensor<2, Int>,
    /// [n, S]: slots that are no boundary to step to (the image's own label).
    excluded: Tensor<2, Bool>,
}

impl Slots {
    /// Every class, in class order (S = K): slot k is class k.
    fn every_class(labels: &Tensor<2, Int>, classes: usize) -> Self {
        let n = labels.dims()[0];
        let all = Tensor::<1, Int>::arange(0..classes as i64, &labels.device())
            .reshape([1, classes])
            .repeat_dim(0, n);
        Self::with_own(all, labels.clone(), labels)
    }

    /// The own label in slot 0, then the k classes of largest `logits` in class order
    /// (S = k + 1; a tie is ranked as `argsort` ranks it). The label among those k is excluded
    /// there too, so the boundaries considered, and their order, are those of
    /// [`Slots::every_class`] with every other class excluded: the same step, from k + 1
    /// gradients instead of K. `truth`: the labels on the host.
    fn candidates(logits: Tensor<2>, labels: &Tensor<2, Int>, truth: &[i64], k: usize) -> Self {
        let [n, classes] = logits.dims();
        let device = logits.device();
        let rank: Vec<i64> = logits
            .neg()
            .argsort(1)
            .argsort(1)
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap_or_default();
        let mut slots = Vec::with_capacity(n * (k + 1));
        for (label, ranks) in truth.iter().zip(rank.chunks(classes)) {
            slots.push(*label);
            slots.extend((0..classes as i64).filter(|&c| ranks[c as usize] < k as i64));
        }
        let slots = Tensor::from_data(TensorData::new(slots, [n, k + 1]), &device);
        Self::with_own(slots, Tensor::zeros([n, 1], &device), labels)
    }

    fn with_own(classes: Tensor<2, Int>, own: Tensor<2, Int>, labels: &Tensor<2, Int>) -> Self {
        let width = classes.dims()[1];
        let excluded = classes.clone().equal(labels.clone().repeat_dim(1, width));
        Self {
            classes,
            own,
            excluded,
        }
    }

    /// The slots of the images at `rows`.
    fn select(&self, rows: Tensor<1, Int>) -> Self {
        Self {
            classes: self.classes.clone().select(0, rows.clone()),
            own: self.own.clone().select(0, rows.clone()),
            excluded: self.excluded.clone().select(0, rows),
        }
    }
}

/// Logits [n, K] (without autodiff) and the gradient of each slot's class logit with respect
/// to the images, [n, S, d]: the batch is repeated S times and block s's loss is the sum of
/// each image's logit of the class in its slot s.
fn class_gradients(
    model: &dyn Differentiable,
    x: &Tensor<4>,
    slots: &Tensor<2, Int>,
) -> (Tensor<2>, Tensor<3>) {
    let [n, c, h, w] = x.dims();
    let width = slots.dims()[1];
    let repeated = x.clone().repeat_dim(0, width).autodiff().require_grad();
    let logits = model.logits(repeated.clone());
    let classes = logits.dims()[1];
    let class_of_row = slots.clone().swap_dims(0, 1).reshape([width * n, 1]);
    let picked = logits.clone().gather(1, class_of_row).sum();
    let grads = repeated
        .grad(&picked.backward())
        .expect("image gradient")
        .reshape([width, n, c * h * w])
        .swap_dims(0, 1);
    let clean = logits.inner().slice([0..n, 0..classes]);
    (clean, grads)
}

fn deepfool(
    model: &dyn Differentiable,
    images: Tensor<4>,
    labels: Tensor<1, Int>,
    config: &Settings,
) -> AttackOutput {
    let dims = images.dims();
    let [n, c, h, w] = dims;
    let d = c * h * w;
    let device = images.device();
    let truth: Vec<i64> = labels
        .clone()
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap();
    let label_index = labels.reshape([n, 1]);
    let scale = 1.0 + config.overshoot;
    let place = |r: &Tensor<2>| (images.clone() + r.clone().reshape(dims) * scale).clamp(0.0, 1.0);

    let mut total = Tensor::<2>::zeros([n, d], &device);
    let mut done = vec![false; n];
    let mut iterations = vec![0usize; n];
    let classes = model.logits(images.clone().narrow(0, 0, 1)).dims()[1];
    // The classes looked at: with --candidates, from the clean logits.
    let slots = match config.candidates {
        Some(k) if k < classes => {
            Slots::candidates(model.logits(place(&total)), &label_index, &truth, k)
        }
        _ => Slots::every_class(&label_index, classes),
    };
    let width = slots.classes.dims()[1];
    let index = |rows: &[usize]| {
        let rows: Vec<i64> = rows.iter().map(|&i| i as i64).collect();
        let m = rows.len();
        Tensor::<1, Int>::from_data(TensorData::new(rows, [m]), &device)
    };
    for _ in 0..config.max_iterations {
        // Only images whose label has not flipped yet go through the model: the batch
        // shrinks as images finish, instead of carrying them to the slowest one's end.
        let active: Vec<usize> = (0..n).filter(|&i| !done[i]).collect();
        if active.is_empty() {
            break;
        }
        let rows = index(&active);
        let x = place(&total).select(0, rows.clone());
        let active_slots = slots.select(rows.clone());
        let (logits, grads) = class_gradients(model, &x, &active_slots.classes);
        let predicted = crate::model::predictions(logits.clone());
        // Images that flipped are done; the rest take a step.
        let mut stepping = Vec::new();
        let mut positions = Vec::new();
        for (j, &i) in active.iter().enumerate() {
            if predicted[j] != truth[i] {
                done[i] = true;
            } else {
                stepping.push(i);
                positions.push(j);
            }
        }
        if stepping.is_empty() {
            break;
        }
        let m = stepping.len();
        let (within, rows) = (index(&positions), index(&stepping));
        let logits = logits.select(0, within.clone());
        let grads = grads.select(0, within.clone());
        let labels = label_index.clone().select(0, rows.clone());
        let slots = active_slots.select(within);

        let own_logit = logits.clone().gather(1, labels);
        let margin = logits.gather(1, slots.classes) - own_logit; // [m, S]: f_k - f_y
        let own_grad = grads
            .clone()
            .gather(1, slots.own.reshape([m, 1, 1]).repeat_dim(2, d));
        let directions = grads - own_grad; // [m, S, d]: w_k
        let norms = directions
            .clone()
            .square()
            .sum_dim(2)
            .sqrt()
            .reshape([m, width])
            .clamp_min(NORM_FLOOR);
        let distance =
            (margin.clone().abs() / norms.clone()).mask_fill(slots.excluded, f32::INFINITY);
        let nearest = distance.argmin(1); // [m, 1]
        let direction = directions
            .gather(1, nearest.clone().reshape([m, 1, 1]).repeat_dim(2, d))
            .reshape([m, d]);
        let gap = margin.gather(1, nearest.clone()).abs() + STEP_SLACK;
        let norm = norms.gather(1, nearest);
        let step = direction * (gap / norm.square());
        // An image whose step is exactly zero (no gradient reaches it, e.g. through saturated
        // quantisers) would see the same input, and take the same zero step, on every further
        // iteration: it stops now with the image it would end with.
        let moved: Vec<f32> = step
            .clone()
            .abs()
            .max_dim(1)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        total = total.select_assign(0, rows, step, IndexingUpdateOp::Add);
        for (&i, moved) in stepping.iter().zip(moved) {
            iterations[i] += 1;
            done[i] |= moved == 0.0;
        }
    }
    AttackOutput {
        adversarial: place(&total),
        iterations,
        stages: Vec::new(),
    }
}
