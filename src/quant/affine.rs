//! Affine integer quantisation, as ONNX Runtime's, PyTorch's and TFLite's static quantisation
//! ship it: weights symmetric (zero point 0, codes ±(2^(b−1) − 1)) per output channel or per
//! tensor, scale = max|w| / (2^(b−1) − 1); biases int32 with scale = input scale × weight
//! scale; activations per tensor, asymmetric (a zero point), at the input of every weight
//! layer and at the logits, their range calibrated on training images (min-max, a
//! percentile, or the clip that minimises the quantisation error).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{Grid, Quantiser, Sites, WeightView};
use crate::{Error, Result};

/// An integer type of ONNX's QuantizeLinear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntType {
    Int8,
    Uint8,
    Int4,
    Uint4,
}

impl IntType {
    pub const ALL: [IntType; 4] = [IntType::Int8, IntType::Uint8, IntType::Int4, IntType::Uint4];

    pub fn name(self) -> &'static str {
        match self {
            IntType::Int8 => "int8",
            IntType::Uint8 => "uint8",
            IntType::Int4 => "int4",
            IntType::Uint4 => "uint4",
        }
    }

    pub fn bits(self) -> u32 {
        match self {
            IntType::Int8 | IntType::Uint8 => 8,
            IntType::Int4 | IntType::Uint4 => 4,
        }
    }

    pub fn signed(self) -> bool {
        matches!(self, IntType::Int8 | IntType::Int4)
    }

    /// The type's codes: [−2^(b−1), 2^(b−1) − 1] or [0, 2^b − 1].
    pub fn range(self) -> (i64, i64) {
        let b = self.bits();
        match self.signed() {
            true => (-(1 << (b - 1)), (1 << (b - 1)) - 1),
            false => (0, (1 << b) - 1),
        }
    }

    /// The codes of symmetric weights: ±(2^(b−1) − 1), the most negative code unused (ONNX
    /// Runtime's and PyTorch's "restricted range", so −w is as representable as w).
    pub fn symmetric_range(self) -> (i64, i64) {
        let (_, hi) = self.range();
        (-hi, hi)
    }
}

impl fmt::Display for IntType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for IntType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        IntType::ALL
            .into_iter()
            .find(|t| t.name() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                Error::usage(format!(
                    "unknown integer type '{s}' (expected int8, uint8, int4 or uint4)"
                ))
            })
    }
}

/// An integer type or `float` (not quantised), as settings write it.
mod int_or_float {
    use super::IntType;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<IntType>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(t.map_or("float", IntType::name))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IntType>, D::Error> {
        match String::deserialize(d)?.as_str() {
            "float" => Ok(None),
            other => other.parse().map(Some).map_err(serde::de::Error::custom),
        }
    }
}

/// How an activation's range is chosen from its calibration samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Calibration {
    /// The smallest and largest sample (ONNX Runtime's MinMax).
    #[default]
    MinMax,
    /// The `percentile`-th and (100 − `percentile`)-th percentiles: outliers clip.
    Percentile,
    /// The range [α·min, α·max] (α from 1 down to 0.2 in steps of 0.01) whose grid
    /// quantises the samples with the least squared error.
    Mse,
    /// The grids an imported QDQ file holds (its activations were calibrated by whatever made
    /// it); advcomp does not calibrate them again.
    File,
}

impl fmt::Display for Calibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Calibration::MinMax => "minmax",
            Calibration::Percentile => "percentile",
            Calibration::Mse => "mse",
            Calibration::File => "file",
        })
    }
}

impl FromStr for Calibration {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "minmax" => Ok(Calibration::MinMax),
            "percentile" => Ok(Calibration::Percentile),
            "mse" => Ok(Calibration::Mse),
            "file" => Ok(Calibration::File),
            _ => Err(Error::usage(format!(
                "unknown calibration '{s}' (expected minmax, percentile or mse)"
            ))),
        }
    }
}

serde_as_text!(Calibration);

/// The settings of affine quantisation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AffineSettings {
    /// Weights: int8 or int4, symmetric; `float` keeps them.
    #[serde(with = "int_or_float")]
    pub weights: Option<IntType>,
    /// Activations: uint8, int8, uint4 or int4, asymmetric per tensor; `float` keeps them.
    #[serde(with = "int_or_float")]
    pub activations: Option<IntType>,
    /// Weights per output channel (else one scale per tensor).
    pub per_channel: bool,
    pub calibration: Calibration,
    /// Training images the activations are calibrated on (drawn with `seed`).
    pub calibration_images: usize,
    /// Percentile calibration's upper percentile (its lower is 100 − it).
    pub percentile: f64,
    pub seed: u64,
}

impl Default for AffineSettings {
    fn default() -> Self {
        Self {
            weights: Some(IntType::Int8),
            activations: Some(IntType::Uint8),
            per_channel: false,
            calibration: Calibration::MinMax,
            calibration_images: 1000,
            percentile: 99.99,
            seed: 1,
        }
    }
}

/// The quantiser.
pub struct Affine;

/// A grid whose codes [qmin, qmax] cover [lo, hi] with 0 on a code: ONNX Runtime's
/// compute_scale_zp for asymmetric types (the range widened to include 0; a zero range gets
/// scale 1).
fn asymmetric(lo: f32, hi: f32, t: IntType) -> Result<Grid> {
    let (qmin, qmax) = t.range();
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let mut scale = (hi - lo) / (qmax - qmin) as f32;
    if !(scale > 0.0 && (1.0 / scale).is_finite()) {
        scale = 1.0;
    }
    let zero = (qmin as f32 - lo / scale).round_ties_even() as i64;
    Grid::per_tensor(scale, zero.clamp(qmin, qmax), qmin, qmax)
}

/// The samples' `q`-quantile (0..=1), by selection (the slice is reordered).
fn quantile(samples: &mut [f32], q: f64) -> f32 {
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    *samples.select_nth_unstable_by(i, f32::total_cmp).1
}

/// The squared error of quantising `samples` on `grid`.
fn squared_error(samples: &[f32], grid: &Grid) -> f64 {
    let q = grid.table()[0].quantiser();
    samples.iter().map(|&x| ((q(x) - x) as f64).powi(2)).sum()
}

/// The calibrated range of `samples` (all finite).
fn range(samples: &[f32], s: &AffineSettings, t: IntType) -> Result<(f32, f32)> {
    let min = samples.iter().copied().fold(f32::INFINITY, f32::min);
    let max = samples.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    Ok(match s.calibration {
        Calibration::MinMax => (min, max),
        Calibration::File => {
            return Err(Error::usage(
                "the activations of an imported QDQ model keep the file's grids; they are not \
                 calibrated again",
            ));
        }
        Calibration::Percentile => {
            let mut copy = samples.to_vec();
            let p = s.percentile / 100.0;
            (quantile(&mut copy, 1.0 - p), quantile(&mut copy, p))
        }
        Calibration::Mse => {
            // Every 64th sample at most 65,536 apart: the search costs 81 passes over them.
            let stride = samples.len().div_ceil(1 << 16).max(1);
            let subset: Vec<f32> = samples.iter().step_by(stride).copied().collect();
            let mut best = (f64::INFINITY, min, max);
            for k in 0..=80 {
                let alpha = 1.0 - 0.01 * k as f32;
                let (lo, hi) = (alpha * min, alpha * max);
                let error = squared_error(&subset, &asymmetric(lo, hi, t)?);
                if error < best.0 {
                    best = (error, lo, hi);
                }
            }
            (best.1, best.2)
        }
    })
}

impl Quantiser for Affine {
    type Settings = AffineSettings;
    const NAME: &'static str = "affine";
    const ABOUT: &'static str = "affine integer (int8/int4 weights symmetric per channel or per tensor, \
         calibrated uint8/int8 activations with a zero point), as ONNX Runtime ships it";
    const DATA_DEPENDENT: bool = true;

    fn validate(s: &AffineSettings) -> Result<()> {
        if s.weights.is_none() && s.activations.is_none() {
            return Err(Error::invalid(
                "quantiser",
                "affine quantisation of neither weights nor activations",
            ));
        }
        if let Some(t) = s.weights.filter(|t| !t.signed()) {
            return Err(Error::invalid(
                "weights",
                format!("{t}: weights are quantised symmetrically, to a signed type (int8, int4)"),
            ));
        }
        if !(1..=crate::limits::MAX_IMAGES).contains(&s.calibration_images) {
            return Err(Error::invalid(
                "calibration_images",
                format!(
                    "must be between 1 and {} (got {})",
                    crate::limits::MAX_IMAGES,
                    s.calibration_images
                ),
            ));
        }
        if !(s.percentile > 50.0 && s.percentile <= 100.0) {
            return Err(Error::invalid(
                "percentile",
                format!("must lie in (50, 100] (got {})", s.percentile),
            ));
        }
        Ok(())
    }

    /// `int8-pc` (int8 weights per channel, uint8 activations, min-max), with what differs
    /// from that appended: `int4-pc-aint4-mse`.
    fn label(s: &AffineSettings) -> String {
        let mut label = s.weights.map_or("wf".into(), |t| t.name().to_string());
        if s.per_channel {
            label.push_str("-pc");
        }
        match s.activations {
            Some(IntType::Uint8) => {}
            Some(t) => label.push_str(&format!("-a{t}")),
            None => label.push_str("-af"),
        }
        match s.calibration {
            Calibration::MinMax => {}
            Calibration::Percentile => label.push_str(&format!("-p{}", s.percentile)),
            Calibration::Mse => label.push_str("-mse"),
            Calibration::File => label.push_str("-qdq"),
        }
        label
    }

    /// `affine per channel`, with what differs from uint8 min-max activations appended
    /// (`affine per channel uint4 act. mse`); no commas (it is a CSV field).
    fn scheme(s: &AffineSettings) -> String {
        let mut scheme = match s.per_channel {
            true => "affine per channel".to_string(),
            false => "affine per tensor".to_string(),
        };
        match s.activations {
            Some(IntType::Uint8) => {}
            Some(t) => scheme.push_str(&format!(" {t} act.")),
            None => scheme.push_str(" float act."),
        }
        match s.calibration {
            Calibration::MinMax => {}
            Calibration::File => scheme.push_str(" (QDQ file)"),
            other => scheme.push_str(&format!(" {other}")),
        }
        scheme
    }

    fn bits(s: &AffineSettings) -> Option<u32> {
        s.weights.or(s.activations).map(IntType::bits)
    }

    fn describe(s: &AffineSettings) -> String {
        let weights = match s.weights {
            Some(t) => format!(
                "weights {t} symmetric {}",
                if s.per_channel {
                    "per channel"
                } else {
                    "per tensor"
                }
            ),
            None => "weights float".into(),
        };
        let activations = match s.activations {
            Some(t) => format!(
                "activations {t} asymmetric per tensor ({})",
                match s.calibration {
                    Calibration::File => "calibrated by the QDQ file's maker".to_string(),
                    Calibration::Percentile => format!(
                        "{}th-percentile calibration on {} training images, seed {}",
                        s.percentile, s.calibration_images, s.seed
                    ),
                    other => format!(
                        "{other} calibration on {} training images, seed {}",
                        s.calibration_images, s.seed
                    ),
                }
            ),
            None => "activations float".into(),
        };
        format!("{weights}, {activations}")
    }

    fn imported(s: &AffineSettings) -> bool {
        s.calibration == Calibration::File
    }

    fn sites(_: &AffineSettings) -> Sites {
        Sites::Inputs
    }

    fn quantises(s: &AffineSettings) -> (bool, bool) {
        (s.weights.is_some(), s.activations.is_some())
    }

    fn calibration(s: &AffineSettings) -> Option<(usize, u64)> {
        s.activations.map(|_| (s.calibration_images, s.seed))
    }

    /// scale = max|w| / (2^(b−1) − 1) per output channel (or over the tensor); a channel of
    /// zeros (pruned) gets scale 1.
    fn weight_grid(s: &AffineSettings, w: &WeightView) -> Option<Grid> {
        let t = s.weights?;
        let (qmin, qmax) = t.symmetric_range();
        let scale = |absmax: f32| match absmax > 0.0 {
            true => absmax / qmax as f32,
            false => 1.0,
        };
        let grid = match s.per_channel && w.out_axis < w.shape.len() {
            false => {
                let absmax = w.values.iter().fold(0f32, |m, v| m.max(v.abs()));
                Grid::per_tensor(scale(absmax), 0, qmin, qmax)
            }
            true => {
                let channels = w.shape[w.out_axis];
                let inner: usize = w.shape[w.out_axis + 1..].iter().product();
                let mut absmax = vec![0f32; channels];
                for (i, v) in w.values.iter().enumerate() {
                    let c = (i / inner.max(1)) % channels;
                    absmax[c] = absmax[c].max(v.abs());
                }
                Grid::new(
                    Some(w.out_axis),
                    absmax.into_iter().map(scale).collect(),
                    vec![0; channels],
                    qmin,
                    qmax,
                )
            }
        };
        grid.ok()
    }

    /// int32 codes of scale input scale × weight scale (per channel), zero point 0, where the
    /// layer's input is quantised; else the bias stays float.
    fn bias_grid(_: &AffineSettings, weight: Option<&Grid>, input: Option<&Grid>) -> Option<Grid> {
        let (weight, input) = (weight?, input?);
        let s_in = *input.scale.first()?;
        let scales = weight.scale.iter().map(|s_w| s_in * s_w).collect();
        let axis = weight.axis.map(|_| 0);
        let int32 = (i32::MIN as i64, i32::MAX as i64);
        Grid::new(axis, scales, vec![0; weight.channels()], int32.0, int32.1).ok()
    }

    fn activation_grid(s: &AffineSettings, samples: &[f32]) -> Result<Option<Grid>> {
        let Some(t) = s.activations else {
            return Ok(None);
        };
        if samples.is_empty() {
            return Ok(None);
        }
        if let Some(bad) = samples.iter().find(|v| !v.is_finite()) {
            return Err(Error::usage(format!(
                "calibration: an activation is {bad} (the model's float outputs must be finite)"
            )));
        }
        let (lo, hi) = range(samples, s, t)?;
        asymmetric(lo, hi, t).map(Some)
    }
}
