//! The Square Attack, L-inf (Andriushchenko et al. 2020): score-based, no gradients. It starts
//! from vertical stripes of +-budget and, query after query, redraws one random square window
//! of the perturbation to +-budget per channel, keeping the change when the margin
//! z_y - max_{j != y} z_j falls; an image stops once its margin is negative (fooled).
//!
//! As the authors' code (and torchattacks' `Square`): the window's side is
//! sqrt(p * pixels / channels), p starting at `p_init` and halved at fixed fractions of the
//! query budget (10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000); a redrawn window
//! that would change nothing is drawn again. One difference: a window may start anywhere,
//! the last row and column included (theirs draw its corner from [0, side) of h - side). Random choices come from a generator per image,
//! seeded by (seed, the image's index in the set), so any batch size gives the same images.
//! The perturbation is kept on the host (windows are small, ragged edits); each query is one
//! forward pass of the images still correct.

use burn::prelude::*;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{
    Attack, AttackOutput, Batch, Differentiable, Norm, Parameter, Shape, Target, check,
    host_f32, host_i64, image_rng, parameters,
};
use crate::{Error, Result};

pub struct Square;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<f32>,
    pub queries: usize,
    pub p_init: f32,
    pub seed: u64,
}

impl Default for Settings {
    /// The authors' and AutoAttack's: 5,000 queries, p_init 0.8.
    fn default() -> Self {
        Self {
            budget: None,
            queries: 5000,
            p_init: 0.8,
            seed: 1,
        }
    }
}

impl Attack for Square {
    type Settings = Settings;
    const NAME: &'static str = "square";
    const ABOUT: &'static str = "score-based random squares, no gradients (L-inf)";
    const PARAMETERS: &'static [Parameter] = &[
        parameters::BUDGET,
        parameters::QUERIES,
        parameters::P_INIT,
        parameters::SEED,
    ];
    const USES_GRADIENTS: bool = false;

    fn validate(s: &Settings) -> Result<()> {
        check::required_budget(Self::NAME, s.budget)?;
        check::count("queries", s.queries)?;
        check_p_init(s.p_init)
    }

    fn shape(s: &Settings) -> Shape {
        Shape::budgeted(Norm::Linf, s.budget, s.queries)
    }

    /// A forward pass per query (an upper bound: fooled images stop).
    fn passes_per_image(s: &Settings, _: usize) -> f64 {
        s.queries as f64
    }

    fn run(s: &Settings, target: &Target, batch: Batch) -> Result<AttackOutput> {
        let n = batch.images.dims()[0];
        let indices: Vec<usize> = (batch.first_image..batch.first_image + n).collect();
        let run = search(
            target.model(),
            &batch.images,
            &batch.labels,
            &indices,
            s.budget.expect("validated"),
            s.queries,
            s.p_init,
            s.seed,
        );
        Ok(AttackOutput {
            adversarial: run.images,
            iterations: run.queries,
            stages: Vec::new(),
        })
    }
}

pub(super) fn check_p_init(p: f32) -> Result<()> {
    if p > 0.0 && p <= 1.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            "p_init",
            format!("must lie in (0, 1] (got {p})"),
        ))
    }
}

/// What a search leaves: the images, whether each fooled the model, the queries each used.
pub(super) struct Found {
    pub images: Tensor<4>,
    pub fooled: Vec<bool>,
    pub queries: Vec<usize>,
}

/// The fraction of pixels per square at query `it` of `total` (the authors' schedule, on a
/// budget of 10,000 queries scaled to `total`).
fn p_at(p_init: f32, it: usize, total: usize) -> f32 {
    let it = (it as f64 / total as f64 * 10_000.0) as usize;
    let halvings = match it {
        0..=10 => 0,
        11..=50 => 1,
        51..=200 => 2,
        201..=500 => 3,
        501..=1000 => 4,
        1001..=2000 => 5,
        2001..=4000 => 6,
        4001..=6000 => 7,
        6001..=8000 => 8,
        8001..=10_000 => 9,
        _ => 0,
    };
    p_init / (1u32 << halvings) as f32
}

/// Each image's margin z_y - max_{j != y} z_j at `images` (host, [rows.len(), c, h, w]).
fn margins(
    model: &dyn Differentiable,
    images: &[f32],
    dims: [usize; 4],
    labels: &[i64],
    device: &Device,
) -> Vec<f32> {
    let logits = model.logits(Tensor::from_data(TensorData::new(images.to_vec(), dims), device));
    let classes = logits.dims()[1];
    let values = host_f32(logits);
    values
        .chunks(classes)
        .zip(labels)
        .map(|(z, &y)| {
            let own = z[y as usize];
            let other = z
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != y as usize)
                .fold(f32::NEG_INFINITY, |m, (_, v)| m.max(*v));
            own - other
        })
        .collect()
}

/// The Square Attack on a batch (`indices`: each image's index in the whole set).
#[allow(clippy::too_many_arguments)]
pub(super) fn search(
    model: &dyn Differentiable,
    images: &Tensor<4>,
    labels: &Tensor<1, Int>,
    indices: &[usize],
    budget: f32,
    queries: usize,
    p_init: f32,
    seed: u64,
) -> Found {
    let dims = images.dims();
    let [n, c, h, w] = dims;
    let per_image = c * h * w;
    let device = images.device();
    let x = host_f32(images.clone());
    let y = host_i64(labels.clone());
    let mut rngs: Vec<_> = indices.iter().map(|&i| image_rng(seed, 0x5a0a, i)).collect();
    // Vertical stripes: one sign per (channel, column).
    let mut best = x.clone();
    for (i, rng) in rngs.iter_mut().enumerate() {
        for ch in 0..c {
            for col in 0..w {
                let sign = if rng.random::<bool>() { budget } else { -budget };
                for row in 0..h {
                    let at = i * per_image + (ch * h + row) * w + col;
                    best[at] = (x[at] + sign).clamp(0.0, 1.0);
                }
            }
        }
    }
    let mut margin = margins(model, &best, dims, &y, &device);
    let mut used = vec![1usize; n];
    for it in 0..queries.saturating_sub(1) {
        let open: Vec<usize> = (0..n).filter(|&i| margin[i] > 0.0).collect();
        if open.is_empty() {
            break;
        }
        let p = p_at(p_init, it, queries);
        let side = ((p * per_image as f32 / c as f32).sqrt().round() as usize)
            .max(1)
            .min(h.saturating_sub(1).max(1))
            .min(w);
        let mut candidates = Vec::with_capacity(open.len() * per_image);
        for &i in &open {
            let (image, current) = (
                &x[i * per_image..(i + 1) * per_image],
                &best[i * per_image..(i + 1) * per_image],
            );
            let rng = &mut rngs[i];
            // Any position of the window (the authors' code never starts one at the last row
            // or column, so those pixels kept their first stripe).
            let top = rng.random_range(0..=h - side);
            let left = rng.random_range(0..=w - side);
            let mut candidate = current.to_vec();
            // Redraw the window's signs until the window changes (as the authors' code does).
            loop {
                let mut changed = false;
                for ch in 0..c {
                    let sign = if rng.random::<bool>() { budget } else { -budget };
                    for row in top..top + side {
                        for col in left..left + side {
                            let at = (ch * h + row) * w + col;
                            let v = (image[at] + sign).clamp(0.0, 1.0);
                            changed |= (v - current[at]).abs() >= 1e-7;
                            candidate[at] = v;
                        }
                    }
                }
                if changed {
                    break;
                }
            }
            candidates.extend(candidate);
        }
        let open_labels: Vec<i64> = open.iter().map(|&i| y[i]).collect();
        let new = margins(
            model,
            &candidates,
            [open.len(), c, h, w],
            &open_labels,
            &device,
        );
        for (j, &i) in open.iter().enumerate() {
            used[i] += 1;
            if new[j] < margin[i] {
                margin[i] = new[j];
                best[i * per_image..(i + 1) * per_image]
                    .copy_from_slice(&candidates[j * per_image..(j + 1) * per_image]);
            }
        }
    }
    Found {
        images: Tensor::from_data(TensorData::new(best, dims), &device),
        fooled: margin.iter().map(|m| *m <= 0.0).collect(),
        queries: used,
    }
}
