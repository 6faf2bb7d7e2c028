//! The indicator that needs a sweep's grids: accuracy that rises with a larger step, more
//! steps or a larger budget (Figure 3's eps x steps grid; `auto` at each budget). A stronger
//! attack of the same kind cannot leave more images correct unless it fails.

use super::Results;
use crate::attack::AttackKind;
use crate::model::ModelLabel;
use crate::transfer::Gradient;

/// The largest rise of accuracy from a weaker to a stronger setting: over `points` (setting
/// order, accuracy), the largest accuracy(b) - accuracy(a) with a before b.
fn largest_rise(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let mut sorted = points.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut lowest = f64::INFINITY;
    let mut rise = f64::NEG_INFINITY;
    for (_, accuracy) in sorted {
        rise = rise.max(accuracy - lowest);
        lowest = lowest.min(accuracy);
    }
    Some(rise.max(0.0))
}

/// Sets `non_monotone` on every cell of a model attacked by itself that a grid covers, and
/// updates `masking_suspected`.
pub(super) fn non_monotone(results: &mut Results) {
    let grid = &results.eps_steps;
    let mut rises: Vec<(u64, ModelLabel, AttackKind, Option<f32>, f64)> = Vec::new();
    // Figure 3: at each number of steps across step sizes, at each step size across steps.
    let mut keys: Vec<(u64, &ModelLabel, AttackKind)> =
        grid.iter().map(|c| (c.seed, &c.source, c.attack)).collect();
    keys.sort();
    keys.dedup();
    for (seed, source, attack) in keys {
        let of =
            |c: &&super::EpsStepsCell| c.seed == seed && c.source == *source && c.attack == attack;
        let cells: Vec<_> = grid.iter().filter(of).collect();
        let mut worst: Option<f64> = None;
        for c in &cells {
            let by_step: Vec<(f64, f64)> = cells
                .iter()
                .filter(|d| d.steps == c.steps)
                .map(|d| (d.eps as f64, d.metrics.adversarial_accuracy))
                .collect();
            let by_steps: Vec<(f64, f64)> = cells
                .iter()
                .filter(|d| d.eps == c.eps)
                .map(|d| (d.steps as f64, d.metrics.adversarial_accuracy))
                .collect();
            for rise in [largest_rise(&by_step), largest_rise(&by_steps)]
                .into_iter()
                .flatten()
            {
                worst = Some(worst.map_or(rise, |w: f64| w.max(rise)));
            }
        }
        if let Some(rise) = worst {
            rises.push((seed, source.clone(), attack, None, rise));
        }
    }
    // `auto` across its budgets.
    let mut sources: Vec<(u64, ModelLabel)> = results
        .cells
        .iter()
        .filter(|c| c.attack == AttackKind::Auto && c.source == c.target)
        .map(|c| (c.seed, c.source.clone()))
        .collect();
    sources.sort();
    sources.dedup();
    for (seed, source) in sources {
        let points: Vec<(f64, f64)> = results
            .cells
            .iter()
            .filter(|c| {
                c.attack == AttackKind::Auto
                    && c.seed == seed
                    && c.source == source
                    && c.target == source
            })
            .filter_map(|c| c.budget.map(|b| (b as f64, c.metrics.adversarial_accuracy)))
            .collect();
        if let Some(rise) = largest_rise(&points) {
            rises.push((seed, source, AttackKind::Auto, Some(0.0), rise));
        }
    }
    for cell in &mut results.cells {
        if cell.source != cell.target || cell.gradient == Gradient::Identity {
            continue;
        }
        let found = rises.iter().find(|(seed, source, attack, auto, _)| {
            *seed == cell.seed
                && *source == cell.source
                && *attack == cell.attack
                && auto.is_some() == (cell.attack == AttackKind::Auto)
        });
        if let Some((.., rise)) = found {
            cell.metrics.indicators.non_monotone = Some(*rise);
            cell.metrics.masking_suspected = cell.metrics.indicators.masking_suspected();
        }
    }
}
