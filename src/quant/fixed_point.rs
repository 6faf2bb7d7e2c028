//! Fixed point Q(W, P), the paper's quantiser: W bits, P of them integer bits (sign included),
//! the same format for every weight, bias and layer output.

use serde::{Deserialize, Serialize};

use super::{Grid, Quantiser, Sites, WeightView};
use crate::{Error, Result};

/// A fixed-point format: `bits` total (W), `int_bits` integer bits including the sign (P), so
/// F = W - P fraction bits and the range is [-2^(P-1), 2^(P-1) - 2^-F].
/// Deserialised through [`FixedPoint::new`], so a format read from a file or config is as
/// valid as one built in code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "UncheckedFixedPoint")]
pub struct FixedPoint {
    pub bits: u32,
    pub int_bits: u32,
}

/// A format as read, before [`FixedPoint::new`] checks it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UncheckedFixedPoint {
    bits: u32,
    int_bits: u32,
}

impl TryFrom<UncheckedFixedPoint> for FixedPoint {
    type Error = String;
    fn try_from(f: UncheckedFixedPoint) -> std::result::Result<Self, String> {
        FixedPoint::new(f.bits, f.int_bits).map_err(|e| e.to_string())
    }
}

impl FixedPoint {
    /// A format with W = `bits` and P = `int_bits`; refuses W outside 2..=32 and P outside 1..=W.
    pub fn new(bits: u32, int_bits: u32) -> Result<Self> {
        if !(2..=32).contains(&bits) {
            return Err(Error::usage(format!(
                "bits {bits}: a fixed-point width must be between 2 and 32"
            )));
        }
        if !(1..=bits).contains(&int_bits) {
            return Err(Error::usage(format!(
                "int bits {int_bits}: must be between 1 (the sign bit) and the width {bits}"
            )));
        }
        Ok(Self { bits, int_bits })
    }

    /// The paper's rule for the integer bits: W=4 -> P=1, W=8 -> P=2, any other W -> P=4
    /// (P capped at W for widths below 4).
    pub fn paper(bits: u32) -> Result<Self> {
        let int_bits = match bits {
            4 => 1,
            8 => 2,
            _ => 4.min(bits),
        };
        Self::new(bits, int_bits)
    }

    pub fn frac_bits(self) -> u32 {
        self.bits - self.int_bits
    }

    /// 2^F, exact in f32 (F <= 31).
    pub fn scale(self) -> f32 {
        2f32.powi(self.frac_bits() as i32)
    }

    /// The smallest and largest integer code: -2^(W-1) and 2^(W-1) - 1.
    pub fn codes(self) -> (i64, i64) {
        let half = 1i64 << (self.bits - 1);
        (-half, half - 1)
    }

    /// The representable range [min, max] of values (the top code rounded down to an f32
    /// above 24 bits, as the kernels saturate).
    pub fn value_range(self) -> (f32, f32) {
        let [row] = self.grid().table()[..] else {
            unreachable!("one row")
        };
        (row.lo * row.scale, row.hi * row.scale)
    }

    /// Q(W, P) as a grid: scale 2^-F, zero point 0, the format's codes, per tensor.
    pub fn grid(self) -> Grid {
        let (qmin, qmax) = self.codes();
        Grid::per_tensor(1.0 / self.scale(), 0, qmin, qmax).expect("a valid format is a grid")
    }

    /// q(x) on one value, on the host: the same formula as the kernels, for checks.
    pub fn quantise(self, x: f32) -> f32 {
        self.grid().quantise(x, 0)
    }
}

impl std::fmt::Display for FixedPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q({},{})", self.bits, self.int_bits)
    }
}

/// Q(W, P) of weights (and biases) and of activations, either side optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FixedPointSettings {
    pub weights: Option<FixedPoint>,
    pub activations: Option<FixedPoint>,
}

impl FixedPointSettings {
    /// Weights and activations both in the paper's format of `bits`.
    pub fn paper(bits: u32) -> Result<Self> {
        let format = Some(FixedPoint::paper(bits)?);
        Ok(Self {
            weights: format,
            activations: format,
        })
    }
}

fn name(f: Option<FixedPoint>) -> String {
    f.map_or("float".into(), |f| f.to_string())
}

impl Quantiser for FixedPoint {
    type Settings = FixedPointSettings;
    const NAME: &'static str = "fixed";
    const ABOUT: &'static str =
        "fixed point Q(W,P) (the paper's): one format for every weight, bias and layer output";
    const DATA_DEPENDENT: bool = false;

    fn validate(s: &FixedPointSettings) -> Result<()> {
        match (s.weights, s.activations) {
            (None, None) => Err(Error::invalid(
                "quantiser",
                "fixed point of neither weights nor activations",
            )),
            _ => Ok(()),
        }
    }

    /// `q8` for the paper's Q(W,P) on both sides, else `qw8p2-a4p1`-like.
    fn label(s: &FixedPointSettings) -> String {
        let side = |f: Option<FixedPoint>| match f {
            Some(f) => format!("{}p{}", f.bits, f.int_bits),
            None => "f".into(),
        };
        match (s.weights, s.activations) {
            (Some(w), Some(a)) if w == a && FixedPoint::paper(w.bits).ok() == Some(w) => {
                format!("q{}", w.bits)
            }
            (w, a) => format!("qw{}-a{}", side(w), side(a)),
        }
    }

    fn scheme(_: &FixedPointSettings) -> String {
        "fixed point Q(W P)".into()
    }

    fn bits(s: &FixedPointSettings) -> Option<u32> {
        s.weights.or(s.activations).map(|f| f.bits)
    }

    fn describe(s: &FixedPointSettings) -> String {
        format!(
            "weights {}, activations {}",
            name(s.weights),
            name(s.activations)
        )
    }

    fn sites(_: &FixedPointSettings) -> Sites {
        Sites::Outputs
    }

    fn quantises(s: &FixedPointSettings) -> (bool, bool) {
        (s.weights.is_some(), s.activations.is_some())
    }

    fn calibration(_: &FixedPointSettings) -> Option<(usize, u64)> {
        None
    }

    fn weight_grid(s: &FixedPointSettings, _: &WeightView) -> Option<Grid> {
        s.weights.map(FixedPoint::grid)
    }

    /// Biases take the weights' format.
    fn bias_grid(s: &FixedPointSettings, _: Option<&Grid>, _: Option<&Grid>) -> Option<Grid> {
        s.weights.map(FixedPoint::grid)
    }

    fn activation_grid(s: &FixedPointSettings, _: &[f32]) -> Result<Option<Grid>> {
        Ok(s.activations.map(FixedPoint::grid))
    }
}
