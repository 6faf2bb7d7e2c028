//! Indicators of attack failure (after Pintor et al., NeurIPS 2022): signs that an attack's
//! result measures its own failure (gradient masking, a blind estimator, a saturated loss)
//! rather than the model's robustness. Each is a named value on a cell, `None` where it does
//! not apply; a cell whose indicators cross their thresholds says `masking_suspected`.
//!
//! Some come from crafting the set (zero gradients, what only the gradient-free stage found);
//! the others compare cells ([`complete`]): the same attack through the other estimator, other
//! sources' examples on the same target, a larger budget or more steps, an unbounded run.

use serde::{Deserialize, Serialize};

use super::{Cell, Gradient};
use crate::attack::{AttackKind, Stage, StageKills};
use crate::model::ModelLabel;

/// Images whose loss gradient at the clean image is exactly zero, and pixels, as shares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ZeroGradient {
    pub images: f64,
    pub pixels: f64,
}

/// What crafting a set tells about the attack, beside the images.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Diagnostics {
    /// The gradient the attack followed through the source's quantisers.
    pub gradient: Gradient,
    /// At the clean images, through the first estimator (gradient attacks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_gradient: Option<ZeroGradient>,
    /// A cascade's stages in order and what each fooled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageKills>,
}

/// The indicators of one cell: each a named value, `None` where it does not apply.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Indicators {
    /// This cell's accuracy minus the same attack's (same source and target) through the
    /// source's other gradient estimator: on the STE cell, accuracy under the STE minus under
    /// BPDA (the identity). Large: this estimator blinds the attack.
    pub estimator_gap: Option<f64>,
    /// Share of images whose loss gradient at the clean image is exactly zero (through the
    /// estimator the attack followed first).
    pub zero_gradient_images: Option<f64>,
    /// Share of pixels whose loss gradient at the clean image is exactly zero.
    pub zero_gradient_pixels: Option<f64>,
    /// Share of the images `auto`'s gradient-free stage (Square) fooled after every gradient
    /// stage missed them, on the same model: set on the gradient attacks' cells of a model
    /// attacked by itself (their gradients missed those images), not on `auto`'s own cells
    /// (its number already counts them; its JSON and report list each stage's kills).
    pub gradient_free_only: Option<f64>,
    /// On a model attacked by itself: its accuracy minus the lowest accuracy another source's
    /// examples (the same attack) leave it at. Positive: transfer beats the white-box attack.
    pub transfer_beats_white_box: Option<f64>,
    /// Accuracy a gradient attack with a budget of 1.0 (IFGSM, 20 steps of 0.1) leaves on the
    /// source through the same estimator: a working gradient reaches about 0.
    pub unbounded_accuracy: Option<f64>,
    /// The largest rise of accuracy on the same source with a larger step, budget or more
    /// steps of the same attack (Figure 3's grid, `auto`'s budgets).
    pub non_monotone: Option<f64>,
}

/// The thresholds past which an indicator suspects masking (fractions of images).
pub mod thresholds {
    /// 5 points: two estimators of one gradient should agree far better on a model whose
    /// gradient works.
    pub const ESTIMATOR_GAP: f64 = 0.05;
    /// 5% of images with no gradient at all.
    pub const ZERO_GRADIENT_IMAGES: f64 = 0.05;
    /// 1% of images found only by the gradient-free attack (AutoAttack's authors report well
    /// under a point on models whose gradients work).
    pub const GRADIENT_FREE_ONLY: f64 = 0.01;
    /// 5 points: another model's examples beating the white-box attack by more.
    pub const TRANSFER_BEATS_WHITE_BOX: f64 = 0.05;
    /// 1% of images left at a budget of 1.0.
    pub const UNBOUNDED_ACCURACY: f64 = 0.01;
    /// 3 points of accuracy gained with more budget or more steps.
    pub const NON_MONOTONE: f64 = 0.03;
}

/// An indicator that crossed its threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    EstimatorGap,
    ZeroGradient,
    GradientFreeOnly,
    TransferBeatsWhiteBox,
    Unbounded,
    NonMonotone,
}

impl Flag {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Flag::EstimatorGap => "estimator gap",
            Flag::ZeroGradient => "zero gradient",
            Flag::GradientFreeOnly => "gradient-free only",
            Flag::TransferBeatsWhiteBox => "transfer beats white-box",
            Flag::Unbounded => "unbounded check",
            Flag::NonMonotone => "non-monotone",
        }
    }
}

impl Indicators {
    /// The indicators past their thresholds.
    pub fn flags(&self) -> Vec<Flag> {
        use thresholds::*;
        let over = |v: Option<f64>, limit: f64| v.is_some_and(|v| v > limit);
        let mut out = Vec::new();
        if over(self.estimator_gap, ESTIMATOR_GAP) {
            out.push(Flag::EstimatorGap);
        }
        if over(self.zero_gradient_images, ZERO_GRADIENT_IMAGES) {
            out.push(Flag::ZeroGradient);
        }
        if over(self.gradient_free_only, GRADIENT_FREE_ONLY) {
            out.push(Flag::GradientFreeOnly);
        }
        if over(self.transfer_beats_white_box, TRANSFER_BEATS_WHITE_BOX) {
            out.push(Flag::TransferBeatsWhiteBox);
        }
        if over(self.unbounded_accuracy, UNBOUNDED_ACCURACY) {
            out.push(Flag::Unbounded);
        }
        if over(self.non_monotone, NON_MONOTONE) {
            out.push(Flag::NonMonotone);
        }
        out
    }

    pub fn masking_suspected(&self) -> bool {
        !self.flags().is_empty()
    }

    /// The indicators a set carries to every cell made from it.
    pub fn from_set(diagnostics: &Diagnostics, images: usize) -> Self {
        let stages = &diagnostics.stages;
        let gradient_free_only = stages.iter().any(|s| s.stage == Stage::Square).then(|| {
            let only = stages
                .iter()
                .filter(|s| !s.stage.uses_gradients())
                .map(|s| s.fooled)
                .sum::<usize>();
            only as f64 / images.max(1) as f64
        });
        Indicators {
            zero_gradient_images: diagnostics.zero_gradient.map(|z| z.images),
            zero_gradient_pixels: diagnostics.zero_gradient.map(|z| z.pixels),
            gradient_free_only,
            ..Indicators::default()
        }
    }

    /// The flags in one plain sentence about `model` under `attack`, which left `accuracy`
    /// (`None`: no sign of masking). E.g. "q8: the gradient IFGSM follows is exactly zero on
    /// 71.0% of the images at the start; through BPDA it fools 56.8 points more: the 74.2%
    /// under IFGSM is likely gradient masking, not robustness."
    pub fn sentence(&self, model: &str, attack: &str, accuracy: f64) -> Option<String> {
        let pct = |v: Option<f64>| format!("{:.1}%", 100.0 * v.unwrap_or(0.0));
        let points = |v: Option<f64>| format!("{:.1} points", 100.0 * v.unwrap_or(0.0));
        let parts: Vec<String> = self
            .flags()
            .into_iter()
            .map(|flag| match flag {
                Flag::ZeroGradient => format!(
                    "the gradient {attack} follows is exactly zero on {} of the images at the \
                     start ({} of the pixels)",
                    pct(self.zero_gradient_images),
                    pct(self.zero_gradient_pixels)
                ),
                Flag::EstimatorGap => format!(
                    "through the other gradient estimator it fools {} more",
                    points(self.estimator_gap)
                ),
                Flag::GradientFreeOnly => format!(
                    "the gradient-free Square Attack fooled {} of the images every gradient \
                     stage missed",
                    pct(self.gradient_free_only)
                ),
                Flag::TransferBeatsWhiteBox => format!(
                    "another model's examples fool it {} more than its own",
                    points(self.transfer_beats_white_box)
                ),
                Flag::Unbounded => format!(
                    "with a budget of 1.0 a gradient attack still leaves {} correct (a working \
                     gradient reaches about 0%)",
                    pct(self.unbounded_accuracy)
                ),
                Flag::NonMonotone => format!(
                    "its accuracy rises by up to {} with a larger step, budget or more steps",
                    points(self.non_monotone)
                ),
            })
            .collect();
        (!parts.is_empty()).then(|| {
            format!(
                "{model}: {}: the {:.1}% under {attack} is likely gradient masking, not \
                 robustness.",
                parts.join("; "),
                100.0 * accuracy
            )
        })
    }
}

/// Accuracy left on a model by an unbounded gradient attack through one estimator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnboundedCheck {
    pub seed: u64,
    pub model: ModelLabel,
    pub gradient: Gradient,
    pub accuracy: f64,
}

/// Fills in the indicators that compare cells: the estimator gap (pairs of cells that differ
/// only in the estimator), transfer beating the white-box attack (on each model attacked by
/// itself), the unbounded check (on the cells of its model and estimator), and what only
/// `auto`'s gradient-free stage found (on the gradient attacks' cells of the same model, which
/// missed those images, where they left more correct than `auto` did — an attack that already
/// reached the worst case was not blind; not on `auto`'s own, whose number already counts
/// them).
pub fn complete(cells: &mut [Cell], unbounded: &[UnboundedCheck]) {
    // (seed, model, share only Square found, auto's accuracy)
    let gradient_free: Vec<(u64, ModelLabel, f64, f64)> = cells
        .iter()
        .filter(|c| c.attack == AttackKind::Auto && c.source == c.target)
        .filter_map(|c| {
            c.metrics
                .indicators
                .gradient_free_only
                .map(|v| (c.seed, c.source.clone(), v, c.metrics.adversarial_accuracy))
        })
        .collect();
    let same_run = |a: &Cell, b: &Cell| {
        a.seed == b.seed && a.attack == b.attack && a.budget == b.budget && a.source == b.source
    };
    let snapshot: Vec<Cell> = cells.to_vec();
    for cell in cells.iter_mut() {
        let m = &cell.metrics;
        let accuracy = m.adversarial_accuracy;
        let mut indicators = m.indicators.clone();
        // The same attack, source and target through the other estimator.
        let other = match cell.gradient {
            Gradient::Ste => Some(Gradient::Identity),
            Gradient::Identity => Some(Gradient::Ste),
            _ => None,
        };
        if let Some(other) = other
            && let Some(twin) = snapshot
                .iter()
                .find(|c| same_run(c, cell) && c.target == cell.target && c.gradient == other)
        {
            indicators.estimator_gap = Some(accuracy - twin.metrics.adversarial_accuracy);
        }
        if cell.source == cell.target {
            let lowest = snapshot
                .iter()
                .filter(|c| {
                    c.seed == cell.seed
                        && c.attack == cell.attack
                        && c.budget == cell.budget
                        && c.target == cell.target
                        && c.source != cell.source
                        && c.gradient != Gradient::Identity
                })
                .map(|c| c.metrics.adversarial_accuracy)
                .fold(f64::INFINITY, f64::min);
            if lowest.is_finite() {
                indicators.transfer_beats_white_box = Some(accuracy - lowest);
            }
        }
        if cell.attack == AttackKind::Auto {
            indicators.gradient_free_only = None;
        } else if cell.attack.uses_gradients() && cell.source == cell.target {
            indicators.gradient_free_only = gradient_free
                .iter()
                .filter(|(seed, source, ..)| *seed == cell.seed && *source == cell.source)
                .filter(|(.., auto_accuracy)| accuracy > *auto_accuracy)
                .map(|(_, _, v, _)| *v)
                .reduce(f64::max);
        }
        if cell.attack.uses_gradients()
            && let Some(check) = unbounded.iter().find(|u| {
                u.seed == cell.seed
                    && u.model == cell.source
                    && (u.gradient == cell.gradient
                        || (cell.gradient == Gradient::All && u.gradient == Gradient::Identity))
            })
        {
            indicators.unbounded_accuracy = Some(check.accuracy);
        }
        cell.metrics.masking_suspected = indicators.masking_suspected();
        cell.metrics.indicators = indicators;
    }
}

/// The attack the unbounded check runs: IFGSM, 20 steps of 0.1 within a budget of 1.0, which
/// reaches any image of [0, 1] from any other.
pub fn unbounded_attack() -> crate::attack::AttackConfig {
    use crate::attack::AttackConfig;
    AttackConfig::new(AttackKind::Ifgsm)
        .with("step", 0.1)
        .and_then(|c| c.with("steps", 20))
        .and_then(|c| c.with("budget", 1.0))
        .expect("valid settings")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::{CellMetrics, Scenario};

    fn cell(attack: AttackKind, accuracy: f64, gradient_free_only: Option<f64>) -> Cell {
        Cell {
            seed: 1,
            attack,
            gradient: Gradient::Exact,
            budget: (attack == AttackKind::Auto).then_some(0.1),
            source: ModelLabel::named("dns0.05"),
            target: ModelLabel::named("dns0.05"),
            scenario: Scenario::CompToComp,
            metrics: CellMetrics {
                images: 200,
                clean_accuracy: 0.97,
                adversarial_accuracy: accuracy,
                adversarial_accuracy_ci: [accuracy; 2],
                success_rate: 0.0,
                mean_abs_delta: 0.0,
                mean_abs_delta_ci: [0.0; 2],
                l0: 0.0,
                l2: 0.0,
                linf: 0.0,
                mean_iterations: 0.0,
                indicators: Indicators {
                    gradient_free_only,
                    ..Indicators::default()
                },
                masking_suspected: false,
            },
        }
    }

    /// What only Square found accuses the gradient attacks that left more images correct than
    /// `auto`, not one that already reached the worst case (DeepFool at 0%).
    #[test]
    fn gradient_free_finds_accuse_only_attacks_above_the_worst_case() {
        let mut cells = vec![
            cell(AttackKind::Auto, 0.10, Some(0.02)),
            cell(AttackKind::Ifgsm, 0.215, None),
            cell(AttackKind::DeepFool, 0.0, None),
        ];
        complete(&mut cells, &[]);
        assert_eq!(cells[0].metrics.indicators.gradient_free_only, None);
        assert_eq!(cells[1].metrics.indicators.gradient_free_only, Some(0.02));
        assert!(cells[1].metrics.masking_suspected);
        assert_eq!(cells[2].metrics.indicators.gradient_free_only, None);
        assert!(!cells[2].metrics.masking_suspected);
    }
}
