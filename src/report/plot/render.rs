//! The plotters renderer: line figures and heat maps as PNG and SVG, one drawing function per
//! kind of figure, generic over the two backends.

use std::collections::HashMap;
use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::font::register_font;
use super::text::CrispText;
use super::types::{Figure, Heatmap, LineFigure, Look, Panel, Point, Series, XAxis};
use crate::{Error, Result};

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
    let mut rgb = vec![0u8; 3 * size.0 as usize * size.1 as usize];
    draw_png(CrispText(BitMapBackend::with_buffer(&mut rgb, size)).into_drawing_area())
        .map_err(|e| drawing_error(&png, e))?;
    crate::write_atomically(
        &png,
        &palette_png(&rgb, size).map_err(|e| drawing_error(&png, e))?,
    )?;
    let mut text = String::new();
    draw_svg(SVGBackend::with_string(&mut text, size).into_drawing_area())
        .map_err(|e| drawing_error(&svg, e))?;
    crate::write_atomically(&svg, text.as_bytes())?;
    Ok(Figure { caption, png, svg })
}

/// `rgb` as an 8-bit palette PNG. A plot is a few flat colours and their anti-aliased edges
/// (a few thousand colours in all): 256 of them, NeuQuant's choice where there are more, look
/// the same and make the file about 4x smaller than 24-bit RGB.
fn palette_png(rgb: &[u8], (width, height): (u32, u32)) -> std::result::Result<Vec<u8>, String> {
    let mut colours: HashMap<[u8; 3], u8> = HashMap::new();
    for p in rgb.chunks_exact(3) {
        let next = colours.len();
        if next > 256 {
            break;
        }
        colours.entry([p[0], p[1], p[2]]).or_insert(next as u8);
    }
    let (palette, colours) = if colours.len() <= 256 {
        let mut palette = vec![0u8; 3 * colours.len()];
        for (c, &i) in &colours {
            palette[3 * i as usize..][..3].copy_from_slice(c);
        }
        (palette, colours)
    } else {
        let rgba: Vec<u8> = rgb
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect();
        let quant = color_quant::NeuQuant::new(10, 256, &rgba);
        let mut colours = HashMap::new();
        for p in rgb.chunks_exact(3) {
            let c = [p[0], p[1], p[2]];
            colours
                .entry(c)
                .or_insert_with(|| quant.index_of(&[c[0], c[1], c[2], 255]) as u8);
        }
        (quant.color_map_rgb(), colours)
    };
    let indices: Vec<u8> = rgb
        .chunks_exact(3)
        .map(|p| colours[&[p[0], p[1], p[2]]])
        .collect();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette(palette);
    encoder.set_compression(png::Compression::Best);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer
        .write_image_data(&indices)
        .map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
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

/// Draws `heat` into `dir/stem.{png,svg}`.
pub(in crate::report) fn save_heatmap(
    dir: &Path,
    stem: &str,
    caption: String,
    heat: &Heatmap,
) -> Result<Figure> {
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
