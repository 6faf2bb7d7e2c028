//! Pruning masks: dynamic network surgery (DNS, Guo et al. 2016) and magnitude pruning
//! (Han et al. 2016), one layer at a time, every layer to the same target density.

use burn::prelude::*;

use crate::kernels;
use crate::model::{Mask, WeightLayer};

/// Bisection steps for DNS's alpha: 2^-50 of the search interval, far below one weight.
const BISECTION_STEPS: usize = 50;

/// DNS's mask for `layer` at `target` density, updated from `current` (all kept when `None`):
/// t = mean|W| + alpha * std|W| with alpha solved by bisection so that the updated mask
///   M <- (M or |W| > 1.1 t) and |W| > 0.9 t
/// keeps the fraction of weights closest to `target`. Each probe runs the `dns_update` kernel
/// on the device and reads back one count. Returns the mask and alpha.
pub(crate) fn dns_mask(layer: &WeightLayer, current: Option<&Mask>, target: f64) -> (Mask, f64) {
    let n = layer.values.dims()[0];
    let device = layer.values.device();
    let weights = layer.values.clone();
    let current = match current {
        Some(mask) => mask.values.clone(),
        None => Tensor::ones([n], &device),
    };
    let magnitude = weights.clone().abs();
    let mean = magnitude.clone().mean().into_scalar::<f32>() as f64;
    let std = (magnitude.clone().var(0).into_scalar::<f32>() as f64)
        .sqrt()
        .max(f64::MIN_POSITIVE);
    let max = magnitude.max().into_scalar::<f32>() as f64;

    let update = |alpha: f64| {
        let t = (mean + alpha * std).max(0.0);
        let mask = kernels::dns_update(
            weights.clone(),
            current.clone(),
            (0.9 * t) as f32,
            (1.1 * t) as f32,
        );
        let kept = mask.clone().sum().into_scalar::<f32>() as f64;
        (mask, kept / n as f64)
    };
    // Density falls as alpha grows: all non-zero weights kept at t = 0, none once 0.9 t > max.
    let (mut low, mut high) = (-mean / std, (max / 0.9 - mean) / std + 1.0);
    let (mut best, mut best_density) = update(low);
    let mut best_alpha = low;
    for _ in 0..BISECTION_STEPS {
        let alpha = 0.5 * (low + high);
        let (mask, density) = update(alpha);
        if (density - target).abs() < (best_density - target).abs() {
            (best, best_density, best_alpha) = (mask, density, alpha);
        }
        if density > target {
            low = alpha;
        } else {
            high = alpha;
        }
    }
    let mask = Mask {
        values: best,
        shape: layer.shape.clone(),
    };
    (mask, best_alpha)
}

/// Magnitude pruning: keep the round(`target` * n) largest |w| among the weights `current`
/// keeps (all when `None`); pruned weights never come back. Ties go to the lower index, so
/// the count is exact.
pub(crate) fn magnitude_mask(layer: &WeightLayer, current: Option<&Mask>, target: f64) -> Mask {
    let n = layer.values.dims()[0];
    let device = layer.values.device();
    let host = |t: Tensor<1>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let weights = host(layer.values.clone());
    let kept_now = match current {
        Some(mask) => host(mask.values.clone()),
        None => vec![1.0; n],
    };
    let keep = ((target * n as f64).round() as usize).min(n);
    let mut order: Vec<usize> = (0..n).filter(|&i| kept_now[i] != 0.0).collect();
    order.sort_by(|&a, &b| {
        weights[b]
            .abs()
            .total_cmp(&weights[a].abs())
            .then(a.cmp(&b))
    });
    let mut values = vec![0.0f32; n];
    for &i in order.iter().take(keep) {
        values[i] = 1.0;
    }
    Mask {
        values: Tensor::from_data(TensorData::new(values, [n]), &device),
        shape: layer.shape.clone(),
    }
}
