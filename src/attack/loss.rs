//! The losses attacks ascend, per image, with their gradient with respect to the images.

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

use super::{Differentiable, host_f32, host_i64};
use crate::{Error, Result};

/// The loss of APGD (and of `auto`'s stages).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// Cross-entropy of the logits with the true label.
    #[default]
    Ce,
    /// The difference of logits ratio (Croce & Hein 2020), z sorted in decreasing order:
    /// -(z_y - max_{j != y} z_j) / (z_1 - z_3 + 1e-12). Invariant to the logits' scale, so it
    /// does not saturate as softmax cross-entropy does on a confident model.
    Dlr,
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Loss::Ce => "ce",
            Loss::Dlr => "dlr",
        })
    }
}

impl FromStr for Loss {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ce" => Ok(Loss::Ce),
            "dlr" => Ok(Loss::Dlr),
            _ => Err(Error::usage(format!(
                "unknown loss '{s}' (expected ce or dlr)"
            ))),
        }
    }
}

/// The summed cross-entropy of `model` on `images` (autodiff) and its gradient with respect to
/// the images, without autodiff.
pub fn loss_gradient(
    model: &impl Differentiable,
    images: &Tensor<4>,
    labels: &Tensor<1, Int>,
) -> Tensor<4> {
    probe(model, images, labels, Loss::Ce).grad
}

/// What one forward and backward pass tells about each image of a batch.
pub(super) struct Probe {
    /// The gradient of the summed loss with respect to the images.
    pub grad: Tensor<4>,
    /// Each image's loss.
    pub loss: Vec<f32>,
    /// Whether the model still classifies each image correctly.
    pub correct: Vec<bool>,
}

/// Each image's loss (higher: closer to misclassified) as an autodiff tensor [n], from the
/// logits [n, K] and the true labels.
pub(super) fn per_image(logits: Tensor<2>, labels: &Tensor<1, Int>, loss: Loss) -> Tensor<1> {
    let [n, classes] = logits.dims();
    let index = labels.clone().reshape([n, 1]);
    match loss {
        // log-softmax in f32: per-image gradients independent of the batch size.
        Loss::Ce => log_softmax(logits, 1).gather(1, index).reshape([n]).neg(),
        Loss::Dlr => {
            assert!(classes >= 3, "the DLR loss needs at least 3 classes");
            // Which logits are which is read without autodiff; the values are gathered from
            // the autodiff logits, so the gradient flows through them.
            let plain = logits.clone().inner();
            let (_, order) = plain.clone().sort_descending_with_indices(1);
            let first = order.clone().narrow(1, 0, 1);
            let third = order.narrow(1, 2, 1);
            let own = labels.clone().one_hot::<2>(classes).equal_elem(1);
            let best_other = plain.mask_fill(own, f32::NEG_INFINITY).argmax(1);
            let z = |i: Tensor<2, Int>| logits.clone().gather(1, i).reshape([n]);
            let margin = z(index) - z(best_other);
            let scale = z(first) - z(third) + 1e-12;
            margin.neg() / scale
        }
    }
}

/// Each image's margin z_y - max_{j != y} z_j (positive: classified correctly) as an autodiff
/// tensor [n].
pub(super) fn margin(logits: Tensor<2>, labels: &Tensor<1, Int>) -> Tensor<1> {
    let [n, classes] = logits.dims();
    let index = labels.clone().reshape([n, 1]);
    let own = labels.clone().one_hot::<2>(classes).equal_elem(1);
    let best_other = logits
        .clone()
        .inner()
        .mask_fill(own, f32::NEG_INFINITY)
        .argmax(1);
    logits.clone().gather(1, index).reshape([n]) - logits.gather(1, best_other).reshape([n])
}

/// Whether each row's prediction (argmax of `logits`) equals its label.
pub(super) fn correct(logits: Tensor<2>, labels: &Tensor<1, Int>) -> Vec<bool> {
    let predicted = crate::model::predictions(logits);
    predicted
        .iter()
        .zip(host_i64(labels.clone()))
        .map(|(p, y)| *p == y)
        .collect()
}

/// One forward and backward pass of `model` at `images` with `loss`.
pub(super) fn probe(
    model: &(impl Differentiable + ?Sized),
    images: &Tensor<4>,
    labels: &Tensor<1, Int>,
    loss: Loss,
) -> Probe {
    let x = images.clone().autodiff().require_grad();
    let logits = model.logits(x.clone());
    let correct = correct(logits.clone().inner(), labels);
    let losses = per_image(logits, labels, loss);
    let values = host_f32(losses.clone().inner());
    let grad = x.grad(&losses.sum().backward()).expect("image gradient");
    Probe {
        grad,
        loss: values,
        correct,
    }
}
