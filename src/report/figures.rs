//! The study's figures: the paper's Figures 2 to 6, the schemes and differential figures beyond
//! it and the transfer matrices, made from the sweep's results and drawn by [`super::plot`].

use std::path::Path;

use super::plot::{
    Categories, Figure, Heatmap, LineFigure, Look, Panel, Point, Series, XAxis, save_heatmap,
    save_lines,
};
use super::{Family, Run, View, adversarial_accuracy, clean_accuracy, mean_abs_delta};
use crate::Result;
use crate::attack::AttackKind;
use crate::model::ModelLabel;
use crate::transfer::{DifferentialMetrics, Scenario};

/// One series per scenario: `metric` of each model's cell under `run`, against `x(model)`.
fn scenario_series(
    view: &View,
    models: &[&super::ModelRow],
    run: Run,
    x: impl Fn(&super::ModelRow) -> f64,
    metric: fn(&crate::transfer::CellMetrics) -> (f64, [f64; 2]),
) -> Vec<Series> {
    Scenario::PAPER
        .iter()
        .map(|scenario| Series {
            name: scenario.label().to_string(),
            points: models
                .iter()
                .map(|m| {
                    let (s, t) = scenario.cell(&m.label);
                    (x(m), view.cell(run, s, t, metric))
                })
                .collect(),
            look: Look::Scenario(scenario.number()),
        })
        .collect()
}

/// The x axis of a family: density or bitwidth as categories, with the baseline (dense, 32-bit
/// float) as a last category of its own when `with_baseline`; and the axis title.
fn family_axis(view: &View, family: Family, with_baseline: bool) -> (Categories, &'static str) {
    let models = view.paper_family(family);
    let (axis, title, baseline) = match family {
        Family::Quantised => (
            Categories::new(models.iter().map(|m| m.bits.unwrap_or(32) as f64), |b| {
                format!("{b}")
            }),
            "bitwidth of weights and activations",
            "float32",
        ),
        _ => (
            Categories::new(models.iter().map(|m| m.density), |d| format!("{d}")),
            "density (fraction of weights kept)",
            "baseline",
        ),
    };
    let axis = if with_baseline {
        axis.with_baseline(baseline)
    } else {
        axis
    };
    (axis, title)
}

/// A model's place on its family's axis: its density or bitwidth, or the baseline's category.
fn family_x(axis: &Categories, family: Family, m: &super::ModelRow) -> f64 {
    match (m.family, family) {
        (Family::Full, _) => axis.baseline(),
        (_, Family::Quantised) => axis.x(m.bits.unwrap_or(32) as f64),
        _ => axis.x(m.density),
    }
}

/// The family's models and, at the end of the axis, the baseline.
fn with_baseline<'a>(view: &View<'a>, family: Family) -> Vec<&'a super::ModelRow> {
    let mut models = view.paper_family(family);
    models.extend(view.family(Family::Full).into_iter().take(1));
    models
}

/// Accuracy of one family against its x value (density or bitwidth), one panel per attack as
/// the report shows it (the paper's attacks, through BPDA on the quantised models, `auto` at
/// each budget, the worst case): the three scenarios and BASE ACC (Figures 2 and 4), the
/// baseline at the axis' end.
fn scenario_figure(view: &View, family: Family, title: &str, footer: &str) -> LineFigure {
    let models = with_baseline(view, family);
    let (axis, x_label) = family_axis(view, family, true);
    let x = |m: &super::ModelRow| family_x(&axis, family, m);
    let panels: Vec<Panel> = view
        .runs(family == Family::Quantised)
        .into_iter()
        .map(|run| {
            let mut series = scenario_series(view, &models, run, x, adversarial_accuracy);
            series.push(Series {
                name: "BASE ACC (no attack)".into(),
                points: models
                    .iter()
                    .map(|m| (x(m), view.base_accuracy(&m.label)))
                    .collect(),
                look: Look::BaseAccuracy,
            });
            Panel {
                title: run.title(),
                x_axis: axis.axis(),
                x_label: x_label.into(),
                y_label: "accuracy".into(),
                series,
                y_range: Some((0.0, 1.02)),
                cdf: false,
            }
        })
        .collect();
    LineFigure {
        title: title.into(),
        columns: panels.len(),
        panels,
        footer: footer.into(),
    }
}

/// Beside Figure 4: every quantisation scheme of the sweep (fixed point Q(W,P), affine integer
/// per channel, ...) against the width of its weights, one line per scheme ending at the
/// baseline; a panel per attack as the report shows it (the paper's attacks, `auto` at each
/// budget, the worst case) and scenario, then BASE ACC.
fn schemes_figure(view: &View, footer: &str) -> LineFigure {
    let quantised = view.family(Family::Quantised);
    let full = view.family(Family::Full).into_iter().take(1);
    let axis = Categories::new(quantised.iter().map(|m| m.bits.unwrap_or(32) as f64), |b| {
        format!("{b}")
    })
    .with_baseline("float32");
    let x = |m: &super::ModelRow| family_x(&axis, Family::Quantised, m);
    let lines = |value: &dyn Fn(&super::ModelRow) -> Point| -> Vec<Series> {
        view.schemes()
            .into_iter()
            .map(|scheme| {
                let models = view.scheme(scheme).into_iter().chain(full.clone());
                Series::new(scheme, models.map(|m| (x(m), value(m))).collect())
            })
            .collect()
    };
    let panel = |title: String, series: Vec<Series>| Panel {
        title,
        x_axis: axis.axis(),
        x_label: "bitwidth of the weights".into(),
        y_label: "accuracy".into(),
        series,
        y_range: Some((0.0, 1.02)),
        cdf: false,
    };
    let mut panels = Vec::new();
    for run in view.runs(false) {
        for scenario in Scenario::PAPER {
            panels.push(panel(
                format!("{}, scenario {scenario}", run.title()),
                lines(&|m| {
                    let (s, t) = scenario.cell(&m.label);
                    view.cell(run, s, t, adversarial_accuracy)
                }),
            ));
        }
    }
    panels.push(panel(
        "BASE ACC (no attack)".into(),
        lines(&|m| view.base_accuracy(&m.label)),
    ));
    LineFigure {
        title: "Figure 4b: quantisation schemes against bitwidth".into(),
        columns: 3,
        panels,
        footer: footer.into(),
    }
}

fn iterations(k: usize) -> String {
    if k == 1 {
        "1 iteration".into()
    } else {
        format!("{k} iterations")
    }
}

/// Figure 3: the baseline and the pruned sources, each under its own IFGM / IFGSM examples,
/// against the step size, one line per number of iterations; a row of panels per source.
fn eps_steps_figure(view: &View, footer: &str) -> LineFigure {
    let cells = &view.results.eps_steps;
    let mut attacks: Vec<AttackKind> = Vec::new();
    for c in cells {
        if !attacks.contains(&c.attack) {
            attacks.push(c.attack);
        }
    }
    // The baseline first, then the pruned models by falling density.
    let sources: Vec<&str> = [Family::Full, Family::Pruned]
        .into_iter()
        .flat_map(|f| view.family(f))
        .map(|m| m.label.as_str())
        .filter(|label| cells.iter().any(|c| c.source == *label))
        .collect();
    let mut steps: Vec<usize> = cells.iter().map(|c| c.steps).collect();
    steps.sort_unstable();
    steps.dedup();
    let mut eps: Vec<f32> = cells.iter().map(|c| c.eps).collect();
    eps.sort_by(f32::total_cmp);
    eps.dedup();
    let mut panels = Vec::new();
    for source in &sources {
        for attack in &attacks {
            let on = if *source == ModelLabel::FULL {
                "the baseline".to_string()
            } else {
                source.to_string()
            };
            panels.push(Panel {
                title: format!("{} on {on}", attack.name().to_uppercase()),
                x_axis: XAxis::Linear,
                x_label: "step size (eps per iteration)".into(),
                y_label: "accuracy".into(),
                y_range: Some((0.0, 1.02)),
                cdf: false,
                series: steps
                    .iter()
                    .map(|&k| {
                        Series::new(
                            iterations(k),
                            eps.iter()
                                .map(|&e| {
                                    let samples: Vec<_> = cells
                                        .iter()
                                        .filter(|c| {
                                            c.attack == *attack
                                                && c.source == *source
                                                && c.steps == k
                                                && c.eps == e
                                        })
                                        .map(|c| adversarial_accuracy(&c.metrics))
                                        .collect();
                                    (e as f64, super::summarise(&samples))
                                })
                                .collect(),
                        )
                    })
                    .collect(),
            });
        }
    }
    LineFigure {
        title: "Figure 3: accuracy against step size and iterations".into(),
        columns: attacks.len(),
        panels,
        footer: footer.into(),
    }
}

/// Figure 5: CDFs of all weights and of all activations, one line per bitwidth (and the full
/// model), from the first seed.
fn cdf_figure(view: &View, footer: &str) -> LineFigure {
    let first_seed = view.results.cdfs.first().map_or(1, |s| s.seed);
    let panel = |tensor: &str, title: &str| Panel {
        title: title.into(),
        x_axis: XAxis::Linear,
        x_label: format!("{tensor} value"),
        y_label: "fraction <= value".into(),
        y_range: Some((0.0, 1.02)),
        cdf: true,
        series: view
            .results
            .cdfs
            .iter()
            .filter(|s| s.seed == first_seed && s.tensor == tensor)
            .map(|s| {
                Series::new(
                    s.label.clone(),
                    s.points
                        .iter()
                        .map(|(v, f)| (*v as f64, Point::new(*f, *f, *f)))
                        .collect(),
                )
            })
            .collect(),
    };
    LineFigure {
        title: "Figure 5: CDF of weights and activations per bitwidth".into(),
        panels: vec![
            panel("weight", "all weights"),
            panel("activation", "all activations"),
        ],
        columns: 2,
        footer: footer.into(),
    }
}

/// Figure 6: IFGSM's mean |delta| per pixel against bitwidth, per scenario.
fn perturbation_figure(view: &View, footer: &str) -> LineFigure {
    let models = with_baseline(view, Family::Quantised);
    let (axis, x_label) = family_axis(view, Family::Quantised, true);
    let x = |m: &super::ModelRow| family_x(&axis, Family::Quantised, m);
    let series = scenario_series(
        view,
        &models,
        Run::Attack(AttackKind::Ifgsm),
        x,
        mean_abs_delta,
    );
    LineFigure {
        title: "Figure 6: mean perturbation per pixel (IFGSM)".into(),
        panels: vec![Panel {
            title: "IFGSM".into(),
            x_axis: axis.axis(),
            x_label: x_label.into(),
            y_label: "mean |x_adv - x| per pixel".into(),
            series,
            y_range: None,
            cdf: false,
        }],
        columns: 1,
        footer: footer.into(),
    }
}

/// Beyond the paper: DIVA's evasive success against density and bitwidth, beside PGD's evasive
/// share and PGD's ordinary success on the compressed model (mean and 95% interval over seeds).
fn differential_figure(view: &View, footer: &str) -> LineFigure {
    let cells = &view.results.differential;
    let value = |attack: AttackKind, label: &str, metric: fn(&DifferentialMetrics) -> f64| {
        let samples: Vec<(f64, [f64; 2])> = cells
            .iter()
            .filter(|c| c.attack == attack && c.model == label)
            .map(|c| {
                let v = metric(&c.metrics);
                (v, [v, v])
            })
            .collect();
        super::summarise(&samples)
    };
    let evasive = |m: &DifferentialMetrics| m.evasive_success_rate;
    let success = |m: &DifferentialMetrics| m.success_rate_compressed;
    let panel = |family: Family| {
        let models = view.paper_family(family);
        let (axis, x_label) = family_axis(view, family, false);
        let series = [
            (
                "DIVA: evasive success",
                AttackKind::Diva,
                evasive as fn(&_) -> f64,
            ),
            (
                "DIVA, margin form: evasive success",
                AttackKind::DivaMargin,
                evasive,
            ),
            ("PGD: evasive share", AttackKind::Pgd, evasive),
            (
                "PGD: success on the compressed model",
                AttackKind::Pgd,
                success,
            ),
        ]
        .into_iter()
        .map(|(name, attack, metric)| {
            Series::new(
                name,
                models
                    .iter()
                    .map(|m| (family_x(&axis, family, m), value(attack, &m.label, metric)))
                    .collect(),
            )
        })
        .collect();
        Panel {
            title: match family {
                Family::Quantised => "Quantised models against the baseline",
                _ => "Pruned models against the baseline",
            }
            .into(),
            x_axis: axis.axis(),
            x_label: x_label.into(),
            y_label: "fraction of images".into(),
            series,
            y_range: Some((0.0, 1.02)),
            cdf: false,
        }
    };
    let panels: Vec<Panel> = [Family::Pruned, Family::Quantised]
        .into_iter()
        .filter(|f| !view.family(*f).is_empty())
        .map(panel)
        .collect();
    LineFigure {
        title: "Figure 7 (beyond the paper): evasive attacks".into(),
        columns: panels.len(),
        panels,
        footer: footer.into(),
    }
}

/// How the scenario figures are drawn, said once in their captions.
const SCENARIO_LOOK: &str = "Lines in the paper's colours (scenario 1 green, 2 red, 3 cyan, \
    BASE ACC blue), each with its own dash and marker; bands are 95% intervals. At the right \
    end, the baseline: there the three scenarios are one cell (the baseline attacked with its \
    own examples), so their curves meet.";

/// Every figure of the sweep into `dir`, in report order; each carries `footer`.
pub(super) fn draw_all(
    dir: &Path,
    view: &View,
    labels: &[&str],
    footer: &str,
) -> Result<Vec<Figure>> {
    let mut out = Vec::new();
    let has_pruned = !view.family(Family::Pruned).is_empty();
    let has_quantised = !view.family(Family::Quantised).is_empty();
    if has_pruned {
        out.push(save_lines(
            dir,
            "fig2-density",
            format!(
                "Figure 2: accuracy against density (pruned models) under each attack, in the \
                 paper's three scenarios (1: examples made on the compressed model, tested on \
                 itself; 2: made on the baseline, tested on the compressed model; 3: made on \
                 the compressed model, tested on the baseline) and BASE ACC, the accuracy \
                 without attack. {SCENARIO_LOOK}"
            ),
            &scenario_figure(view, Family::Pruned, "Figure 2: pruning", footer),
        )?);
    }
    if !view.results.eps_steps.is_empty() {
        out.push(save_lines(
            dir,
            "fig3-eps-steps",
            "Figure 3: each source (the baseline, then pruned models) under its own IFGM / \
             IFGSM examples, against the step size eps and the number of iterations. Without \
             a budget, k iterations of step eps reach k x eps in L-inf."
                .into(),
            &eps_steps_figure(view, footer),
        )?);
    }
    if has_quantised {
        out.push(save_lines(
            dir,
            "fig4-bits",
            format!(
                "Figure 4: accuracy against bitwidth (weights and activations quantised: {}) \
                 under each attack, in the three scenarios and BASE ACC. {SCENARIO_LOOK}",
                view.schemes().first().copied().unwrap_or_default()
            ),
            &scenario_figure(view, Family::Quantised, "Figure 4: quantisation", footer),
        )?);
        if view.schemes().len() > 1 {
            out.push(save_lines(
                dir,
                "fig4b-schemes",
                format!(
                    "Figure 4b (beyond the paper): accuracy against the width of the weights for \
                     every quantisation scheme of the sweep ({}), one line per scheme ending at \
                     the baseline, per attack and scenario (1: examples made on the quantised \
                     model, tested on itself; 2: made on the baseline; 3: made on the quantised \
                     model, tested on the baseline), and BASE ACC. Bands are 95% intervals.",
                    view.schemes().join("; ")
                ),
                &schemes_figure(view, footer),
            )?);
        }
        out.push(save_lines(
            dir,
            "fig5-cdf",
            "Figure 5: cumulative distribution of all weights and of all activations per \
             bitwidth (the first seed); the fixed-point models' steps are their representable \
             values."
                .into(),
            &cdf_figure(view, footer),
        )?);
        if view.attacks().contains(&AttackKind::Ifgsm) {
            out.push(save_lines(
                dir,
                "fig6-perturbation",
                "Figure 6: mean perturbation per pixel of IFGSM against bitwidth, per scenario. \
                 The perturbation depends only on the model the examples were made on: \
                 scenarios 1 and 3 share theirs (the compressed model), so their curves lie on \
                 top of each other (dotted over solid), and scenario 2's is always the baseline, \
                 so its curve is flat."
                    .into(),
                &perturbation_figure(view, footer),
            )?);
        }
    }
    if !view.results.differential.is_empty() {
        out.push(save_lines(
            dir,
            "fig7-differential",
            "Figure 7 (beyond the paper): DIVA's evasive success (of the images both models \
             classified correctly, the fraction where the compressed model is now wrong and the \
             full model still right) against density and bitwidth, beside the evasive share of \
             PGD examples with the same step, steps and budget, and PGD's ordinary success on \
             the compressed model."
                .into(),
            &differential_figure(view, footer),
        )?);
    }
    for run in view.runs(true) {
        let heat = Heatmap {
            title: format!("{}: accuracy of each target (%)", run.title()),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            values: labels
                .iter()
                .map(|s| {
                    labels
                        .iter()
                        .map(|t| view.cell(run, s, t, adversarial_accuracy).y)
                        .collect()
                })
                .collect(),
            // On the attacked images, as the cells above (BASE ACC is on more images).
            clean: labels
                .iter()
                .map(|t| view.cell(run, t, t, clean_accuracy).y)
                .collect(),
            footer: footer.into(),
        };
        out.push(save_heatmap(
            dir,
            &format!("matrix-{}", run.stem()),
            format!(
                "Transfer matrix under {}: accuracy (%) of each target (column) on each \
                 source's (row) examples; the diagonal (outlined) is each model attacked with \
                 its own examples; the bottom row is each target's accuracy on the same images \
                 without attack. Darker: more images fooled.{}",
                run.title(),
                match run {
                    Run::WorstCase => {
                        " Each cell is the lowest accuracy of every attack and gradient \
                         estimator run on it."
                    }
                    _ => "",
                }
            ),
            &heat,
        )?);
    }
    Ok(out)
}
