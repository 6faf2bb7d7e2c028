//! The figures, drawn with plotters as PNG (text rendered with the embedded DejaVu Sans, so no
//! system font library is needed) and as SVG (inlined in `report.html`). One drawing function
//! per kind of figure, generic over the two backends.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{Family, SCENARIOS, View, adversarial_accuracy, mean_abs_delta};
use crate::attack::AttackKind;
use crate::transfer::DifferentialMetrics;
use crate::{Error, Result};

/// One plotted value with its 95% interval (`lo == hi` when there is none).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub y: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Point {
    pub fn new(y: f64, lo: f64, hi: f64) -> Self {
        Self { y, lo, hi }
    }
    pub fn missing() -> Self {
        Self::new(f64::NAN, f64::NAN, f64::NAN)
    }
}

/// A named line: (x, value) points.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, Point)>,
}

/// One chart of a figure.
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Fixed y range (accuracies: 0..1); from the data when absent.
    pub y_range: Option<(f64, f64)>,
    /// The series are empirical CDFs: drawn as step functions without markers, the x axis
    /// spanning the 0.5%..99.5% quantiles (a few extreme logits would squash the rest).
    pub cdf: bool,
}

/// A figure of one or more panels side by side.
#[derive(Clone, Debug)]
pub struct LineFigure {
    pub title: String,
    pub panels: Vec<Panel>,
}

/// The transfer matrix of one attack as a heat map.
struct Heatmap {
    title: String,
    labels: Vec<String>,
    /// values[source][target], adversarial accuracy.
    values: Vec<Vec<f64>>,
}

/// A written figure: file stem, caption, and its PNG and SVG.
#[derive(Clone, Debug)]
pub struct Figure {
    pub caption: String,
    pub png: PathBuf,
    pub svg: PathBuf,
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(23, 190, 207),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            include_bytes!("../../assets/fonts/DejaVuSans.ttf"),
        )
        .unwrap_or_else(|_| panic!("the embedded DejaVu Sans is a valid font"));
    });
}

fn color_of(name: &str, index: usize) -> RGBColor {
    if name.starts_with("BASE") {
        BLACK
    } else {
        PALETTE[index % PALETTE.len()]
    }
}

fn range_of(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-6);
    (lo - pad, hi + pad)
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> DrawResult<DB> {
    let points = || panel.series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = if panel.cdf {
        let quantile = |q: f64| {
            panel
                .series
                .iter()
                .filter_map(move |s| s.points.iter().find(|(_, p)| p.y >= q).map(|(x, _)| *x))
        };
        range_of(quantile(0.005).chain(quantile(0.995)))
    } else {
        range_of(points().map(|(x, _)| *x))
    };
    let (y0, y1) = panel
        .y_range
        .unwrap_or_else(|| range_of(points().flat_map(|(_, p)| [p.y, p.lo, p.hi])));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(62)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (i, series) in panel.series.iter().enumerate() {
        let color = color_of(&series.name, i);
        let pts: Vec<(f64, Point)> = series
            .points
            .iter()
            .copied()
            .filter(|(_, p)| p.y.is_finite())
            .collect();
        if panel.cdf {
            chart.draw_series(LineSeries::new(step_path(&pts), color.stroke_width(2)))?;
            continue;
        }
        if pts.iter().any(|(_, p)| p.hi > p.lo) {
            let mut band: Vec<(f64, f64)> = pts.iter().map(|(x, p)| (*x, p.hi)).collect();
            band.extend(pts.iter().rev().map(|(x, p)| (*x, p.lo)));
            chart.draw_series(std::iter::once(Polygon::new(band, color.mix(0.15))))?;
        }
        chart.draw_series(LineSeries::new(
            pts.iter().map(|(x, p)| (*x, p.y)),
            color.stroke_width(2),
        ))?;
        chart.draw_series(
            pts.iter()
                .map(|(x, p)| Circle::new((*x, p.y), 3, color.filled())),
        )?;
    }
    Ok(())
}

/// One legend for the whole figure, in a strip under the panels (the panels share their
/// series), so it never hides data.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    names: &[&str],
) -> DrawResult<DB> {
    let (width, _) = area.dim_in_pixel();
    let slot = (width as i32 / names.len().max(1) as i32).min(220);
    let start = (width as i32 - slot * names.len() as i32) / 2;
    for (i, name) in names.iter().enumerate() {
        let color = color_of(name, i);
        let x = start + slot * i as i32;
        area.draw(&PathElement::new(
            vec![(x, 16), (x + 24, 16)],
            color.stroke_width(3),
        ))?;
        area.draw(&Text::new(
            name.to_string(),
            (x + 30, 16),
            ("sans-serif", 14)
                .into_font()
                .into_text_style(area)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    Ok(())
}

/// An empirical CDF's points as a staircase starting from 0.
fn step_path(points: &[(f64, Point)]) -> Vec<(f64, f64)> {
    let mut path = Vec::with_capacity(2 * points.len() + 1);
    let mut level = 0.0;
    for (x, p) in points {
        path.push((*x, level));
        path.push((*x, p.y));
        level = p.y;
    }
    path
}

fn draw_lines<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    figure: &LineFigure,
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let root = root.titled(&figure.title, ("sans-serif", 22))?;
    let (_, height) = root.dim_in_pixel();
    let (body, legend) = root.split_vertically(height.saturating_sub(34));
    let names: Vec<&str> = figure
        .panels
        .first()
        .map(|p| p.series.iter().map(|s| s.name.as_str()).collect())
        .unwrap_or_default();
    draw_legend(&legend, &names)?;
    let panels = body.split_evenly((1, figure.panels.len().max(1)));
    for (panel, area) in figure.panels.iter().zip(&panels) {
        draw_panel(area, panel)?;
    }
    root.present()
}

/// White (1: the attack failed everywhere) to dark blue (0: every image fooled).
fn heat_color(v: f64) -> RGBColor {
    let t = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        1.0
    };
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
    RGBColor(mix(8, 247), mix(48, 251), mix(107, 255))
}

fn draw_heatmap<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    heat: &Heatmap,
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let n = heat.labels.len() as i32;
    let label = |v: &SegmentValue<i32>, flip: bool| match v {
        SegmentValue::CenterOf(i) => {
            let i = if flip { n - 1 - i } else { *i };
            heat.labels.get(i as usize).cloned().unwrap_or_default()
        }
        _ => String::new(),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(&heat.title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(80)
        // An integer range's key points include its end, so 0..n-1 gives n segments.
        .build_cartesian_2d((0..n - 1).into_segmented(), (0..n - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(n as usize)
        .y_labels(n as usize)
        .x_label_formatter(&|v| label(v, false))
        .y_label_formatter(&|v| label(v, true))
        .x_desc("target (evaluated on)")
        .y_desc("source (made on)")
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .draw()?;
    let edge = |i: i32| {
        if i >= n {
            SegmentValue::Last
        } else {
            SegmentValue::Exact(i)
        }
    };
    for (s, row) in heat.values.iter().enumerate() {
        let y = n - 1 - s as i32;
        for (t, v) in row.iter().enumerate() {
            let x = t as i32;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(edge(x), edge(y)), (edge(x + 1), edge(y + 1))],
                heat_color(*v).filled(),
            )))?;
            let text = if v.is_finite() {
                format!("{:.0}", 100.0 * v)
            } else {
                "-".into()
            };
            let ink = if *v < 0.5 { WHITE } else { BLACK };
            let style = ("sans-serif", 13)
                .into_font()
                .color(&ink)
                .pos(Pos::new(HPos::Center, VPos::Center));
            chart.draw_series(std::iter::once(Text::new(
                text,
                (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)),
                style,
            )))?;
        }
    }
    root.present()
}

fn drawing_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(path, std::io::Error::other(e.to_string()))
}

/// Writes `stem.png` and `stem.svg` in `dir` with `draw`, each through a temporary file.
fn save(
    dir: &Path,
    stem: &str,
    size: (u32, u32),
    caption: String,
    draw_png: impl FnOnce(DrawingArea<BitMapBackend, Shift>) -> std::result::Result<(), String>,
    draw_svg: impl FnOnce(DrawingArea<SVGBackend, Shift>) -> std::result::Result<(), String>,
) -> Result<Figure> {
    register_font();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    let mut drawn = Ok(());
    crate::files::write_atomically_with(&png, |tmp| {
        drawn = draw_png(BitMapBackend::new(tmp, size).into_drawing_area());
        drawn.clone().map_err(std::io::Error::other)
    })
    .map_err(|e| match drawn {
        Err(problem) => drawing_error(&png, problem),
        Ok(()) => e,
    })?;
    let mut text = String::new();
    draw_svg(SVGBackend::with_string(&mut text, size).into_drawing_area())
        .map_err(|e| drawing_error(&svg, e))?;
    crate::write_atomically(&svg, text.as_bytes())?;
    Ok(Figure { caption, png, svg })
}

/// Draws `figure` into `dir/stem.{png,svg}`.
pub fn save_lines(dir: &Path, stem: &str, caption: String, figure: &LineFigure) -> Result<Figure> {
    let size = (560 * figure.panels.len().max(1) as u32, 490);
    save(
        dir,
        stem,
        size,
        caption,
        |a| draw_lines(a, figure).map_err(|e| e.to_string()),
        |a| draw_lines(a, figure).map_err(|e| e.to_string()),
    )
}

fn save_heatmap(dir: &Path, stem: &str, caption: String, heat: &Heatmap) -> Result<Figure> {
    let side = 140 + 52 * heat.labels.len() as u32;
    save(
        dir,
        stem,
        (side.max(420), side.max(420)),
        caption,
        |a| draw_heatmap(a, heat).map_err(|e| e.to_string()),
        |a| draw_heatmap(a, heat).map_err(|e| e.to_string()),
    )
}

/// One series per scenario: `metric` of each model's cell under `attack`, against `x(model)`.
fn scenario_series(
    view: &View,
    models: &[&super::ModelRow],
    attack: AttackKind,
    x: impl Fn(&super::ModelRow) -> f64,
    metric: fn(&crate::transfer::CellMetrics) -> (f64, [f64; 2]),
) -> Vec<Series> {
    SCENARIOS
        .iter()
        .map(|(name, pair)| Series {
            name: name.to_string(),
            points: models
                .iter()
                .map(|m| {
                    let (s, t) = pair(&m.label);
                    (x(m), view.cell(attack, s, t, metric))
                })
                .collect(),
        })
        .collect()
}

/// Accuracy of one family against its x value (density or bitwidth), one panel per attack:
/// the three scenarios and BASE ACC (Figures 2 and 4).
fn scenario_figure(view: &View, family: Family, title: &str, x_label: &str) -> LineFigure {
    let models = view.family(family);
    let x = |m: &super::ModelRow| match family {
        Family::Quantised => m.bits.unwrap_or(32) as f64,
        _ => m.density,
    };
    let panels = view
        .attacks()
        .into_iter()
        .map(|attack| {
            let mut series = scenario_series(view, &models, attack, x, adversarial_accuracy);
            series.push(Series {
                name: "BASE ACC".into(),
                points: models
                    .iter()
                    .map(|m| (x(m), view.base_accuracy(&m.label)))
                    .collect(),
            });
            Panel {
                title: attack.name().to_uppercase(),
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
        panels,
    }
}

/// Figure 3: the baseline's accuracy under its own IFGM / IFGSM examples against eps, one line
/// per number of iterations.
fn eps_steps_figure(view: &View) -> LineFigure {
    let cells = &view.results.eps_steps;
    let mut attacks: Vec<AttackKind> = Vec::new();
    for c in cells {
        if !attacks.contains(&c.attack) {
            attacks.push(c.attack);
        }
    }
    let mut steps: Vec<usize> = cells.iter().map(|c| c.steps).collect();
    steps.sort_unstable();
    steps.dedup();
    let mut eps: Vec<f32> = cells.iter().map(|c| c.eps).collect();
    eps.sort_by(f32::total_cmp);
    eps.dedup();
    let panels = attacks
        .iter()
        .map(|attack| Panel {
            title: format!("{} on the baseline", attack.name().to_uppercase()),
            x_label: "eps".into(),
            y_label: "accuracy".into(),
            y_range: Some((0.0, 1.02)),
            cdf: false,
            series: steps
                .iter()
                .map(|&k| Series {
                    name: format!("{k} iterations"),
                    points: eps
                        .iter()
                        .map(|&e| {
                            let samples: Vec<_> = cells
                                .iter()
                                .filter(|c| c.attack == *attack && c.steps == k && c.eps == e)
                                .map(|c| adversarial_accuracy(&c.metrics))
                                .collect();
                            (e as f64, super::summarise(&samples))
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect();
    LineFigure {
        title: "Figure 3: accuracy against eps and iterations".into(),
        panels,
    }
}

/// Figure 5: CDFs of all weights and of all activations, one line per bitwidth (and the full
/// model), from the first seed.
fn cdf_figure(view: &View) -> LineFigure {
    let first_seed = view.results.cdfs.first().map_or(1, |s| s.seed);
    let panel = |tensor: &str, title: &str| Panel {
        title: title.into(),
        x_label: format!("{tensor} value"),
        y_label: "fraction <= value".into(),
        y_range: Some((0.0, 1.02)),
        cdf: true,
        series: view
            .results
            .cdfs
            .iter()
            .filter(|s| s.seed == first_seed && s.tensor == tensor)
            .map(|s| Series {
                name: s.label.clone(),
                points: s
                    .points
                    .iter()
                    .map(|(v, f)| (*v as f64, Point::new(*f, *f, *f)))
                    .collect(),
            })
            .collect(),
    };
    LineFigure {
        title: "Figure 5: CDF of weights and activations per bitwidth".into(),
        panels: vec![
            panel("weight", "all weights"),
            panel("activation", "all activations"),
        ],
    }
}

/// Figure 6: IFGSM's mean |delta| per pixel against bitwidth, per scenario.
fn perturbation_figure(view: &View) -> LineFigure {
    let models = view.family(Family::Quantised);
    let bits = |m: &super::ModelRow| m.bits.unwrap_or(32) as f64;
    let series = scenario_series(view, &models, AttackKind::Ifgsm, bits, mean_abs_delta);
    LineFigure {
        title: "Figure 6: mean perturbation per pixel (IFGSM)".into(),
        panels: vec![Panel {
            title: "IFGSM".into(),
            x_label: "bitwidth (weights and activations)".into(),
            y_label: "mean |x_adv - x| per pixel".into(),
            series,
            y_range: None,
            cdf: false,
        }],
    }
}

/// Beyond the paper: DIVA's evasive success against density and bitwidth, beside PGD's evasive
/// share and PGD's ordinary success on the compressed model (mean and 95% interval over seeds).
fn differential_figure(view: &View) -> LineFigure {
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
    let panel = |family: Family, x_label: &str| {
        let models = view.family(family);
        let x = |m: &super::ModelRow| match family {
            Family::Quantised => m.bits.unwrap_or(32) as f64,
            _ => m.density,
        };
        let series = [
            (
                "DIVA: evasive success",
                AttackKind::Diva,
                evasive as fn(&_) -> f64,
            ),
            ("PGD: evasive share", AttackKind::Pgd, evasive),
            (
                "PGD: success on the compressed model",
                AttackKind::Pgd,
                success,
            ),
        ]
        .into_iter()
        .map(|(name, attack, metric)| Series {
            name: name.into(),
            points: models
                .iter()
                .map(|m| (x(m), value(attack, &m.label, metric)))
                .collect(),
        })
        .collect();
        Panel {
            title: format!("{family:?} models against the baseline"),
            x_label: x_label.into(),
            y_label: "rate (see the caption)".into(),
            series,
            y_range: Some((0.0, 1.02)),
            cdf: false,
        }
    };
    let mut panels = Vec::new();
    if !view.family(Family::Pruned).is_empty() {
        panels.push(panel(Family::Pruned, "density"));
    }
    if !view.family(Family::Quantised).is_empty() {
        panels.push(panel(
            Family::Quantised,
            "bitwidth (weights and activations)",
        ));
    }
    LineFigure {
        title: "Beyond the paper: evasive attacks (compressed model fooled, full model right)"
            .into(),
        panels,
    }
}

/// Every figure of the sweep into `dir`, in report order.
pub(super) fn draw_all(dir: &Path, view: &View, labels: &[&str]) -> Result<Vec<Figure>> {
    let mut out = Vec::new();
    let has_pruned = !view.family(Family::Pruned).is_empty();
    let has_quantised = !view.family(Family::Quantised).is_empty();
    if has_pruned {
        out.push(save_lines(
            dir,
            "fig2-density",
            "Figure 2: accuracy against density (pruned models), three scenarios and BASE ACC."
                .into(),
            &scenario_figure(view, Family::Pruned, "Figure 2: pruning", "density"),
        )?);
    }
    if !view.results.eps_steps.is_empty() {
        out.push(save_lines(
            dir,
            "fig3-eps-steps",
            "Figure 3: the baseline under its own IFGM / IFGSM examples, against eps and the \
             number of iterations."
                .into(),
            &eps_steps_figure(view),
        )?);
    }
    if has_quantised {
        out.push(save_lines(
            dir,
            "fig4-bits",
            "Figure 4: accuracy against bitwidth (weights and activations quantised), three \
             scenarios and BASE ACC."
                .into(),
            &scenario_figure(
                view,
                Family::Quantised,
                "Figure 4: fixed-point quantisation",
                "bitwidth",
            ),
        )?);
        out.push(save_lines(
            dir,
            "fig5-cdf",
            "Figure 5: cumulative distribution of all weights and of all activations per \
             bitwidth."
                .into(),
            &cdf_figure(view),
        )?);
        if view.attacks().contains(&AttackKind::Ifgsm) {
            out.push(save_lines(
                dir,
                "fig6-perturbation",
                "Figure 6: mean perturbation per pixel of IFGSM against bitwidth, per scenario \
                 (scenarios 1 and 3 share their source model, so their curves coincide; \
                 scenario 2's source is the baseline)."
                    .into(),
                &perturbation_figure(view),
            )?);
        }
    }
    if !view.results.differential.is_empty() {
        out.push(save_lines(
            dir,
            "fig7-differential",
            "Beyond the paper: DIVA's evasive success (of the images both models classified \
             correctly, the share where the compressed model is now wrong and the full model \
             still right) against density and bitwidth, beside the evasive share of PGD \
             examples with the same step, steps and budget, and PGD's ordinary success on the \
             compressed model."
                .into(),
            &differential_figure(view),
        )?);
    }
    for attack in view.attacks() {
        let heat = Heatmap {
            title: format!("{}: target accuracy (%)", attack.name().to_uppercase()),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            values: labels
                .iter()
                .map(|s| {
                    labels
                        .iter()
                        .map(|t| view.cell(attack, s, t, adversarial_accuracy).y)
                        .collect()
                })
                .collect(),
        };
        out.push(save_heatmap(
            dir,
            &format!("matrix-{attack}"),
            format!(
                "Transfer matrix under {attack}: adversarial accuracy (%) of each target on \
                 each source's examples."
            ),
            &heat,
        )?);
    }
    Ok(out)
}
