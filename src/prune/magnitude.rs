//! Magnitude pruning (Han et al. 2016): keep the largest |w| of every layer; pruned weights
//! never come back. With `rounds` > 1 the density falls geometrically, target^(r/rounds) in
//! round r, each round followed by an equal share of fine-tuning.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Pruner, check_density};
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MagnitudeSettings {
    pub density: f64,
    /// Pruning rounds (1 = one-shot).
    pub rounds: usize,
}

impl Default for MagnitudeSettings {
    fn default() -> Self {
        Self {
            density: 0.1,
            rounds: 1,
        }
    }
}

pub struct Magnitude;

/// The density after round `r` of the run (1-based): target^(r/rounds).
fn round_density(s: &MagnitudeSettings, r: usize) -> f64 {
    s.density.powf(r as f64 / s.rounds as f64)
}

impl Pruner for Magnitude {
    type Settings = MagnitudeSettings;
    const NAME: &'static str = "magnitude";
    const ABOUT: &'static str =
        "magnitude pruning: keep the largest weights; pruned weights stay pruned";

    fn validate(s: &MagnitudeSettings) -> Result<()> {
        check_density(s.density)?;
        if !(1..=crate::limits::MAX_EPOCHS).contains(&s.rounds) {
            return Err(Error::invalid(
                "magnitude_rounds",
                format!(
                    "must be between 1 and {} (got {})",
                    crate::limits::MAX_EPOCHS,
                    s.rounds
                ),
            ));
        }
        Ok(())
    }

    fn density(s: &MagnitudeSettings) -> f64 {
        s.density
    }

    /// Round 1 before fine-tuning (the target at once without it); round r of R at step
    /// (r - 1) * total / R.
    fn density_at(s: &MagnitudeSettings, step: usize, total: usize) -> Option<f64> {
        match (step, total) {
            (0, 0) => Some(s.density),
            (0, _) => Some(round_density(s, 1)),
            _ => (2..=s.rounds)
                .find(|r| step == (r - 1) * total / s.rounds)
                .map(|r| round_density(s, r)),
        }
    }

    /// Keep the round(`density` * n) largest |w| among the weights `current` keeps (all when
    /// `None`); ties go to the lower index, so the count is exact.
    fn mask(
        _: &MagnitudeSettings,
        weights: &Tensor<1>,
        current: Option<&Tensor<1>>,
        density: f64,
    ) -> (Tensor<1>, Option<f64>) {
        let n = weights.dims()[0];
        let device = weights.device();
        let host = |t: Tensor<1>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let weights = host(weights.clone());
        let kept_now = match current {
            Some(mask) => host(mask.clone()),
            None => vec![1.0; n],
        };
        let keep = ((density * n as f64).round() as usize).min(n);
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
        (
            Tensor::from_data(TensorData::new(values, [n]), &device),
            None,
        )
    }
}
