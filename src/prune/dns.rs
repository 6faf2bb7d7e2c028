//! Dynamic network surgery (Guo et al. 2016, as in the Mayo tool the paper used): per layer
//! t = mean|W| + α · std|W| and M ← (M ∨ |W| > 1.1 t) ∧ (|W| > 0.9 t), with α solved so the
//! layer reaches its density; the forward pass uses W ⊙ M while the update reaches all of W,
//! so pruned weights can come back. While fine-tuning, the density falls to the target over
//! the first `density_ramp` of the steps (Zhu & Gupta 2017's cubic schedule) and the masks
//! update every `mask_interval` steps until `mask_freeze`.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Pruner, check_density};
use crate::kernels;
use crate::{Error, Result};

/// Bisection steps for alpha: 2^-50 of the search interval, far below one weight.
const BISECTION_STEPS: usize = 50;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSettings {
    pub density: f64,
    /// Fine-tuning steps between mask updates.
    pub mask_interval: usize,
    /// Masks stop changing after this fraction of fine-tuning, so the last part tunes the
    /// final mask.
    pub mask_freeze: f64,
    /// The fraction of fine-tuning over which the density falls from 1 to the target; 0
    /// prunes to the target at once.
    pub density_ramp: f64,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            density: 0.1,
            mask_interval: 50,
            mask_freeze: 0.75,
            density_ramp: 0.34,
        }
    }
}

pub struct Dns;

/// The step at which the density reaches the target: the first step at or after
/// `density_ramp` of the run (and at the latest the last step, so short runs reach it too).
fn ramp_end(s: &DnsSettings, total: usize) -> usize {
    ((s.density_ramp * total as f64).ceil() as usize).min(total.saturating_sub(1))
}

/// The density before `step` of `total`: 1 - (1 - target)(1 - (1 - step / end)^3) until the
/// ramp's end, the target from then on (and always without fine-tuning).
fn ramped(s: &DnsSettings, step: usize, total: usize) -> f64 {
    let end = ramp_end(s, total);
    if total == 0 || step >= end {
        return s.density;
    }
    let left = 1.0 - step as f64 / end as f64;
    s.density + (1.0 - s.density) * left.powi(3)
}

impl Pruner for Dns {
    type Settings = DnsSettings;
    const NAME: &'static str = "dns";
    const ABOUT: &'static str = "dynamic network surgery (the paper's): masks follow the weights while fine-tuning, pruned weights can come back";

    fn validate(s: &DnsSettings) -> Result<()> {
        check_density(s.density)?;
        if s.mask_interval == 0 {
            return Err(Error::invalid(
                "mask_interval",
                "must be at least 1 (got 0)",
            ));
        }
        for (field, value) in [
            ("mask_freeze", s.mask_freeze),
            ("density_ramp", s.density_ramp),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(Error::invalid(
                    field,
                    format!("must lie in [0, 1] (got {value})"),
                ));
            }
        }
        if s.mask_freeze < s.density_ramp {
            return Err(Error::invalid(
                "mask_freeze",
                format!(
                    "{} comes before the end of the density ramp {}: masks would freeze above the target density",
                    s.mask_freeze, s.density_ramp
                ),
            ));
        }
        Ok(())
    }

    fn density(s: &DnsSettings) -> f64 {
        s.density
    }

    /// Every `mask_interval` steps until `mask_freeze` of the run (following the density
    /// ramp), and always at the ramp's end.
    fn density_at(s: &DnsSettings, step: usize, total: usize) -> Option<f64> {
        if step == 0 {
            return Some(ramped(s, 0, total));
        }
        let frozen = step as f64 >= s.mask_freeze * total as f64;
        let due = step.is_multiple_of(s.mask_interval) && !frozen;
        (due || step == ramp_end(s, total)).then(|| ramped(s, step, total))
    }

    /// α solved by bisection so that the updated mask keeps the fraction of weights closest
    /// to `density`; each probe runs the `dns_update` kernel on the device and reads back one
    /// count.
    fn mask(
        _: &DnsSettings,
        weights: &Tensor<1>,
        current: Option<&Tensor<1>>,
        density: f64,
    ) -> (Tensor<1>, Option<f64>) {
        let n = weights.dims()[0];
        let device = weights.device();
        let current = match current {
            Some(mask) => mask.clone(),
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
            let (mask, d) = update(alpha);
            if (d - density).abs() < (best_density - density).abs() {
                (best, best_density, best_alpha) = (mask, d, alpha);
            }
            if d > density {
                low = alpha;
            } else {
                high = alpha;
            }
        }
        (best, Some(best_alpha))
    }
}
