//! What a figure is made of: points, series, panels, axes, line figures and heat maps, and the
//! written figure.

use std::path::PathBuf;

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
pub(in crate::report) struct Heatmap {
    pub(in crate::report) title: String,
    pub(in crate::report) labels: Vec<String>,
    /// values[source][target], adversarial accuracy.
    pub(in crate::report) values: Vec<Vec<f64>>,
    /// Each target's accuracy on the clean images, shown as a row under the matrix.
    pub(in crate::report) clean: Vec<f64>,
    pub(in crate::report) footer: String,
}

/// A written figure: file stem, caption, and its PNG and SVG.
#[derive(Clone, Debug)]
pub struct Figure {
    pub caption: String,
    pub png: PathBuf,
    pub svg: PathBuf,
}
