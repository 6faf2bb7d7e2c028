//! The figures, drawn with plotters as PNG (text rendered with the embedded DejaVu Sans, so no
//! system font library is needed) and as SVG (inlined in `report.html`). One drawing function
//! per kind of figure, generic over the two backends.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::bitmap_text::CrispText;
use super::{Family, Run, SCENARIOS, View, adversarial_accuracy, clean_accuracy, mean_abs_delta};
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

/// How a line is coloured: the paper's colours for its scenarios and BASE ACC, the palette's
/// otherwise. Line dashes and marker shapes follow the series' place in the panel, so curves
/// that coincide stay visible and the figures read in grey too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Look {
    Palette,
    /// The paper's scenario 1 (green), 2 (red), 3 (cyan).
    Scenario(u8),
    /// Clean accuracy (blue).
    BaseAccuracy,
}

/// A named line: (x, value) points.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, Point)>,
    pub look: Look,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, Point)>) -> Self {
        Self {
            name: name.into(),
            points,
            look: Look::Palette,
        }
    }
}

/// A panel's x axis.
#[derive(Clone, Debug, PartialEq)]
pub enum XAxis {
    /// Numeric, spanning the data.
    Linear,
    /// One evenly spaced tick per category; a point's x is its category's index.
    Categories(Vec<String>),
}

/// Numeric values (densities, bitwidths) shown as categories: one tick each, in ascending
/// order, so 0.05 and 0.1 do not crowd together and no tick stands where there is no data;
/// optionally a last category of its own for the baseline (a grid may hold density 1 or 32
/// bits too, which are compressed models, not the baseline).
pub struct Categories {
    values: Vec<f64>,
    labels: Vec<String>,
    baseline: bool,
}

impl Categories {
    pub fn new(values: impl IntoIterator<Item = f64>, label: impl Fn(f64) -> String) -> Self {
        let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        values.sort_by(f64::total_cmp);
        values.dedup();
        let labels = values.iter().map(|v| label(*v)).collect();
        Self {
            values,
            labels,
            baseline: false,
        }
    }

    /// Adds the baseline as the last category, named `name`.
    pub fn with_baseline(mut self, name: &str) -> Self {
        self.labels.push(name.into());
        self.baseline = true;
        self
    }

    /// The x of the baseline's category (NaN without one).
    pub fn baseline(&self) -> f64 {
        if self.baseline {
            self.values.len() as f64
        } else {
            f64::NAN
        }
    }

    /// The x of `value`: its category's index (NaN when it is not one).
    pub fn x(&self, value: f64) -> f64 {
        self.values
            .iter()
            .position(|v| *v == value)
            .map_or(f64::NAN, |i| i as f64)
    }

    pub fn axis(&self) -> XAxis {
        XAxis::Categories(self.labels.clone())
    }
}

/// One chart of a figure.
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub x_axis: XAxis,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Fixed y range (accuracies: 0..1); from the data when absent.
    pub y_range: Option<(f64, f64)>,
    /// The series are empirical CDFs: drawn as step functions without markers, the x axis
    /// spanning the 0.5%..99.5% quantiles (a few extreme logits would squash the rest).
    pub cdf: bool,
}

/// A figure of one or more panels, side by side in rows of `columns`.
#[derive(Clone, Debug)]
pub struct LineFigure {
    pub title: String,
    pub panels: Vec<Panel>,
    pub columns: usize,
    /// One line of provenance under the figure (model, dataset, preset, images).
    pub footer: String,
}

/// The transfer matrix of one attack as a heat map.
struct Heatmap {
    title: String,
    labels: Vec<String>,
    /// values[source][target], adversarial accuracy.
    values: Vec<Vec<f64>>,
    /// Each target's accuracy on the clean images, shown as a row under the matrix.
    clean: Vec<f64>,
    footer: String,
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

/// The font of every figure: DejaVu Sans, embedded.
pub(super) const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("the embedded DejaVu Sans is a valid font"));
    });
}

/// The font sizes are even: plotters' ab_glyph text places each glyph at `size / 2 +` its
/// top, truncated to whole pixels, so with an odd size glyphs whose top lies below the
/// middle (".", ",", "-") land a pixel higher than the rest ("dns0·5").
const TEXT: u32 = 14;
const SMALL: u32 = 12;
const TITLE: u32 = 22;
const PANEL_TITLE: u32 = 18;

fn color_of(look: Look, index: usize) -> RGBColor {
    match look {
        // The paper's Figures 2 and 4: green, red and cyan lines, BASE ACC blue.
        Look::Scenario(1) => RGBColor(44, 160, 44),
        Look::Scenario(2) => RGBColor(214, 39, 40),
        Look::Scenario(_) => RGBColor(23, 190, 207),
        Look::BaseAccuracy => RGBColor(31, 119, 180),
        Look::Palette => PALETTE[index % PALETTE.len()],
    }
}

/// Dash and gap lengths of the `index`-th line of a panel (solid first).
fn dashes(index: usize) -> Option<(u32, u32)> {
    [None, Some((9, 5)), Some((3, 4)), Some((14, 4))][index % 4]
}

/// The `index`-th marker shape at `at`.
fn marker<DB: DrawingBackend>(
    chart: &mut ChartContext<DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    index: usize,
    at: &[(f64, f64)],
    color: RGBColor,
) -> DrawResult<DB> {
    let style = color.filled();
    match index % 4 {
        0 => chart.draw_series(at.iter().map(|p| Circle::new(*p, 4, style)))?,
        1 => chart.draw_series(at.iter().map(|p| TriangleMarker::new(*p, 5, style)))?,
        2 => chart.draw_series(
            at.iter()
                .map(|p| EmptyElement::at(*p) + Rectangle::new([(-4, -4), (4, 4)], style)),
        )?,
        _ => chart.draw_series(at.iter().map(|p| Cross::new(*p, 5, color.stroke_width(2))))?,
    };
    Ok(())
}

/// A tick label: as few decimals as the axis needs, and never "-0".
fn tick(v: f64, span: f64) -> String {
    let decimals = (2.0 - span.abs().max(1e-9).log10().floor()).clamp(0.0, 6.0) as usize;
    let text = format!("{v:.decimals$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    if text == "-0" { "0".into() } else { text }
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
    let (x0, x1) = match &panel.x_axis {
        XAxis::Categories(labels) => (-0.4, labels.len().max(1) as f64 - 0.6),
        XAxis::Linear if panel.cdf => {
            let quantile = |q: f64| {
                panel
                    .series
                    .iter()
                    .filter_map(move |s| s.points.iter().find(|(_, p)| p.y >= q).map(|(x, _)| *x))
            };
            range_of(quantile(0.005).chain(quantile(0.995)))
        }
        XAxis::Linear => range_of(points().map(|(x, _)| *x)),
    };
    let (y0, y1) = panel
        .y_range
        .unwrap_or_else(|| range_of(points().flat_map(|(_, p)| [p.y, p.lo, p.hi])));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", PANEL_TITLE))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let (x_span, y_span) = (x1 - x0, y1 - y0);
    let x_label = |v: &f64| match &panel.x_axis {
        XAxis::Categories(labels) => {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        }
        XAxis::Linear => tick(*v, x_span),
    };
    let y_tick = |v: &f64| tick(*v, y_span);
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_tick)
        .label_style(("sans-serif", TEXT))
        .axis_desc_style(("sans-serif", TEXT))
        .light_line_style(WHITE.mix(0.0));
    if let XAxis::Categories(labels) = &panel.x_axis {
        // One tick per category: the key points are the categories' indices.
        mesh.x_labels(labels.len().max(1));
    }
    mesh.draw()?;
    for (i, series) in panel.series.iter().enumerate() {
        let color = color_of(series.look, i);
        let mut pts: Vec<(f64, Point)> = series
            .points
            .iter()
            .copied()
            .filter(|(x, p)| p.y.is_finite() && x.is_finite())
            .collect();
        if !panel.cdf {
            // Lines run left to right whatever order the models came in.
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        if panel.cdf {
            // Staircases without markers; coinciding ones told apart by their dashes.
            let path = step_path(&pts);
            match dashes(i) {
                None => {
                    chart.draw_series(LineSeries::new(path, color.stroke_width(2)))?;
                }
                Some((dash, gap)) => {
                    chart.draw_series(DashedLineSeries::new(
                        path,
                        dash,
                        gap,
                        color.stroke_width(2),
                    ))?;
                }
            }
            continue;
        }
        if pts.iter().any(|(_, p)| p.hi > p.lo) {
            let mut band: Vec<(f64, f64)> = pts.iter().map(|(x, p)| (*x, p.hi)).collect();
            band.extend(pts.iter().rev().map(|(x, p)| (*x, p.lo)));
            chart.draw_series(std::iter::once(Polygon::new(band, color.mix(0.12))))?;
        }
        let line: Vec<(f64, f64)> = pts.iter().map(|(x, p)| (*x, p.y)).collect();
        match dashes(i) {
            None => {
                chart.draw_series(LineSeries::new(line.iter().copied(), color.stroke_width(2)))?;
            }
            Some((dash, gap)) => {
                chart.draw_series(DashedLineSeries::new(
                    line.iter().copied(),
                    dash,
                    gap,
                    color.stroke_width(2),
                ))?;
            }
        }
        marker(&mut chart, i, &line, color)?;
    }
    Ok(())
}

/// One legend for the whole figure, in a strip under the panels (the panels share their
/// series), so it never hides data: each entry shows its line's dash and marker.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    series: &[&Series],
    markers: bool,
) -> DrawResult<DB> {
    let (width, _) = area.dim_in_pixel();
    // Each entry as wide as its text (about 7.5 px a character at 14 px), centred together.
    let widths: Vec<i32> = series
        .iter()
        .map(|s| 42 + (7.5 * s.name.chars().count() as f64) as i32 + 28)
        .collect();
    let mut x = (width as i32 - widths.iter().sum::<i32>()).max(0) / 2;
    let y = 14;
    for (i, s) in series.iter().enumerate() {
        let color = color_of(s.look, i);
        let style = color.stroke_width(2);
        match dashes(i) {
            None => area.draw(&PathElement::new(vec![(x, y), (x + 36, y)], style))?,
            Some((dash, gap)) => {
                let mut from = x;
                while from < x + 36 {
                    let to = (from + dash as i32).min(x + 36);
                    area.draw(&PathElement::new(vec![(from, y), (to, y)], style))?;
                    from = to + gap as i32;
                }
            }
        }
        let at = (x + 18, y);
        let fill = color.filled();
        match i % 4 {
            _ if !markers => {}
            0 => area.draw(&Circle::new(at, 4, fill))?,
            1 => area.draw(&TriangleMarker::new(at, 5, fill))?,
            2 => area.draw(&Rectangle::new(
                [(at.0 - 4, at.1 - 4), (at.0 + 4, at.1 + 4)],
                fill,
            ))?,
            _ => area.draw(&Cross::new(at, 5, color.stroke_width(2)))?,
        }
        area.draw(&Text::new(
            s.name.clone(),
            (x + 42, y),
            ("sans-serif", TEXT)
                .into_font()
                .into_text_style(area)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
        x += widths[i];
    }
    Ok(())
}

/// The provenance line at the bottom of a figure.
fn draw_footer<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, footer: &str) -> DrawResult<DB> {
    let (_, height) = area.dim_in_pixel();
    area.draw(&Text::new(
        footer.to_string(),
        (8, height as i32 / 2),
        ("sans-serif", SMALL)
            .into_font()
            .color(&RGBColor(90, 90, 90))
            .pos(Pos::new(HPos::Left, VPos::Center)),
    ))
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

const LEGEND_HEIGHT: u32 = 30;
const FOOTER_HEIGHT: u32 = 22;
/// Every panel is drawn at this size and every figure is shown at its own size, so text
/// reads the same in all of them (three panels fit a report page's width).
const PANEL_SIZE: (u32, u32) = (440, 400);
/// At most this many panels side by side.
const MOST_COLUMNS: usize = 3;

/// Columns and rows of a figure's panels.
fn grid(figure: &LineFigure) -> (usize, usize) {
    let columns = figure
        .columns
        .clamp(1, MOST_COLUMNS)
        .min(figure.panels.len().max(1));
    (columns, figure.panels.len().div_ceil(columns).max(1))
}

fn draw_lines<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    figure: &LineFigure,
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let (_, height) = root.dim_in_pixel();
    let (root, footer) = root.split_vertically(height.saturating_sub(FOOTER_HEIGHT));
    draw_footer(&footer, &figure.footer)?;
    let root = root.titled(&figure.title, ("sans-serif", TITLE))?;
    let (_, height) = root.dim_in_pixel();
    let (body, legend) = root.split_vertically(height.saturating_sub(LEGEND_HEIGHT));
    // The legend lists every series name once, in the order of its first panel.
    let mut names: Vec<&Series> = Vec::new();
    for s in figure.panels.iter().flat_map(|p| p.series.iter()) {
        if !names.iter().any(|n| n.name == s.name) {
            names.push(s);
        }
    }
    draw_legend(&legend, &names, figure.panels.iter().any(|p| !p.cdf))?;
    let (columns, rows) = grid(figure);
    let panels = body.split_evenly((rows, columns));
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

const COLOUR_BAR_WIDTH: u32 = 90;

/// The heat map's scale: accuracy 0% (dark) to 100% (white), ticks every 25%.
fn draw_colour_bar<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
    let (_, height) = area.dim_in_pixel();
    let (top, bottom) = (60, height as i32 - 110);
    let (left, right) = (14, 34);
    let span = (bottom - top).max(1);
    for y in top..bottom {
        let v = 1.0 - (y - top) as f64 / span as f64;
        area.draw(&Rectangle::new(
            [(left, y), (right, y + 1)],
            heat_color(v).filled(),
        ))?;
    }
    area.draw(&Rectangle::new(
        [(left, top), (right, bottom)],
        BLACK.stroke_width(1),
    ))?;
    for pct in [0, 25, 50, 75, 100] {
        let y = bottom - span * pct / 100;
        area.draw(&PathElement::new(vec![(right, y), (right + 4, y)], BLACK))?;
        area.draw(&Text::new(
            format!("{pct}%"),
            (right + 7, y),
            ("sans-serif", SMALL)
                .into_font()
                .into_text_style(area)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    area.draw(&Text::new(
        "accuracy",
        (left, top - 22),
        ("sans-serif", SMALL)
            .into_font()
            .into_text_style(area)
            .pos(Pos::new(HPos::Left, VPos::Center)),
    ))
}

fn draw_heatmap<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    heat: &Heatmap,
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let (width, height) = root.dim_in_pixel();
    let (root, footer) = root.split_vertically(height.saturating_sub(FOOTER_HEIGHT));
    draw_footer(&footer, &heat.footer)?;
    let (matrix, bar) = root.split_horizontally(width.saturating_sub(COLOUR_BAR_WIDTH));
    draw_colour_bar(&bar)?;
    let n = heat.labels.len() as i32;
    // One row per source, and under them the targets' clean accuracy.
    let rows = n + 1;
    let row_label = |i: i32| {
        if i == n {
            "clean (no attack)".to_string()
        } else {
            heat.labels.get(i as usize).cloned().unwrap_or_default()
        }
    };
    let label = |v: &SegmentValue<i32>, flip: bool| match v {
        SegmentValue::CenterOf(i) if flip => row_label(rows - 1 - i),
        SegmentValue::CenterOf(i) => heat.labels.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    let mut chart = ChartBuilder::on(&matrix)
        .caption(&heat.title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(130)
        // An integer range's key points include its end, so 0..n-1 gives n segments.
        .build_cartesian_2d((0..n - 1).into_segmented(), (0..rows - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(n as usize)
        .y_labels(rows as usize)
        .x_label_formatter(&|v| label(v, false))
        .y_label_formatter(&|v| label(v, true))
        .x_desc("target (evaluated on)")
        .y_desc("source (examples made on)")
        .label_style(("sans-serif", TEXT))
        .axis_desc_style(("sans-serif", TEXT))
        .draw()?;
    let edge = |i: i32, end: i32| {
        if i >= end {
            SegmentValue::Last
        } else {
            SegmentValue::Exact(i)
        }
    };
    let cells = heat
        .values
        .iter()
        .enumerate()
        .map(|(s, row)| (s as i32, row))
        .chain(std::iter::once((n, &heat.clean)));
    for (s, row) in cells {
        let y = rows - 1 - s;
        for (t, v) in row.iter().enumerate() {
            let x = t as i32;
            let corners = [
                (edge(x, n), edge(y, rows)),
                (edge(x + 1, n), edge(y + 1, rows)),
            ];
            chart.draw_series(std::iter::once(Rectangle::new(
                corners.clone(),
                heat_color(*v).filled(),
            )))?;
            if s == x {
                // The diagonal: each model attacked with its own examples.
                chart.draw_series(std::iter::once(Rectangle::new(
                    corners,
                    RGBColor(230, 120, 20).stroke_width(3),
                )))?;
            }
            let text = if v.is_finite() {
                format!("{:.0}", 100.0 * v)
            } else {
                "-".into()
            };
            let ink = if *v < 0.5 { WHITE } else { BLACK };
            let style = ("sans-serif", TEXT)
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
    // A rule between the matrix and the clean-accuracy row.
    chart.draw_series(std::iter::once(PathElement::new(
        vec![
            (SegmentValue::Exact(0), SegmentValue::Exact(1)),
            (SegmentValue::Last, SegmentValue::Exact(1)),
        ],
        BLACK.stroke_width(2),
    )))?;
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
    draw_png: impl FnOnce(DrawingArea<CrispText, Shift>) -> std::result::Result<(), String>,
    draw_svg: impl FnOnce(DrawingArea<SVGBackend, Shift>) -> std::result::Result<(), String>,
) -> Result<Figure> {
    register_font();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    let mut drawn = Ok(());
    crate::files::write_atomically_with(&png, |tmp| {
        drawn = draw_png(CrispText(BitMapBackend::new(tmp, size)).into_drawing_area());
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
    let (columns, rows) = grid(figure);
    let size = (
        // Wide enough for the footer and the legend under a single panel.
        (PANEL_SIZE.0 * columns as u32).max(820),
        PANEL_SIZE.1 * rows as u32 + 40 + LEGEND_HEIGHT + FOOTER_HEIGHT,
    );
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
    let side = 200 + 56 * heat.labels.len() as u32;
    save(
        dir,
        stem,
        (
            side.max(480) + COLOUR_BAR_WIDTH,
            side.max(480) + FOOTER_HEIGHT,
        ),
        caption,
        |a| draw_heatmap(a, heat).map_err(|e| e.to_string()),
        |a| draw_heatmap(a, heat).map_err(|e| e.to_string()),
    )
}

/// One series per scenario: `metric` of each model's cell under `run`, against `x(model)`.
fn scenario_series(
    view: &View,
    models: &[&super::ModelRow],
    run: Run,
    x: impl Fn(&super::ModelRow) -> f64,
    metric: fn(&crate::transfer::CellMetrics) -> (f64, [f64; 2]),
) -> Vec<Series> {
    SCENARIOS
        .iter()
        .zip(1u8..)
        .map(|((name, pair), number)| Series {
            name: name.to_string(),
            points: models
                .iter()
                .map(|m| {
                    let (s, t) = pair(&m.label);
                    (x(m), view.cell(run, s, t, metric))
                })
                .collect(),
            look: Look::Scenario(number),
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
        for (name, pair) in SCENARIOS {
            panels.push(panel(
                format!("{}, scenario {name}", run.title()),
                lines(&|m| {
                    let (s, t) = pair(&m.label);
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
            let on = if *source == "full" {
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
