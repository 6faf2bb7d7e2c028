//! A quantisation grid: what the one quantiser kernel applies.
//!
//! Affine fake quantisation as ONNX's QuantizeLinear then DequantizeLinear define it,
//!   q(x) = (clamp(round_half_even(x · (1/s)) + z, qmin, qmax) − z) · s,
//! per tensor or per channel along one axis. 1/s is the f32 reciprocal computed once on the
//! host, not a division per element: WGSL's division is not correctly rounded, so dividing
//! would make the GPU and the CPU disagree; ONNX divides (x / s), and the two differ only where
//! x / s lies within an ulp of a tie between two codes (the agreement with ONNX Runtime is
//! measured, docs/measurements.md). With z an integer, clamp(round(x/s) + z, qmin, qmax) − z
//! = clamp(round(x/s), qmin − z, qmax − z), which is what the kernels compute: each channel's
//! row of constants is (1/s, s, qmin − z, qmax − z).
//!
//! Fixed point Q(W, P) is the case s = 2^−(W−P), z = 0, codes [−2^(W−1), 2^(W−1) − 1], per
//! tensor: 1/s = 2^F is exact, so it is the formula the fixed-point kernels always computed.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The constants of one channel (or of the whole tensor): multiply by `inv_scale`, round,
/// clamp to [lo, hi] (integer-valued), multiply by `scale`. Laid out as the quantiser shader's
/// `Row`, which the wgpu kernel uploads it as.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Channel {
    pub inv_scale: f32,
    pub scale: f32,
    pub lo: f32,
    pub hi: f32,
}

/// The largest f32 at most `v` (codes above 2^24 are not all f32s: saturation must never round
/// a value past the range).
fn f32_at_most(v: i64) -> f32 {
    let f = v as f32;
    if f as f64 > v as f64 {
        f.next_down()
    } else {
        f
    }
}

/// The smallest f32 at least `v`.
fn f32_at_least(v: i64) -> f32 {
    let f = v as f32;
    if (f as f64) < v as f64 {
        f.next_up()
    } else {
        f
    }
}

impl Channel {
    /// The rounding trick of [`round_ties_even_small`] is exact for |code| <= 2^22.
    fn small(self) -> bool {
        const LIMIT: f32 = 4_194_304.0; // 2^22
        self.lo >= -LIMIT && self.hi <= LIMIT
    }

    /// q as a function with its constants worked out once: what the CPU kernel applies to
    /// every element. The same formula as the reference's tensor ops, bit for bit: a zero
    /// result is +0, NaN stays NaN, ±Inf saturate.
    pub fn quantiser(self) -> impl Fn(f32) -> f32 + Copy + Send + Sync {
        let Channel {
            inv_scale,
            scale,
            lo,
            hi,
        } = self;
        let small = self.small();
        // Clamping before rounding gives the same code as after (the bounds are integers), and
        // keeps the trick's argument small. Selects, not branches, so the loop vectorises.
        move |x: f32| {
            let clamped = (x * inv_scale).clamp(lo, hi);
            let code = match small {
                true => round_ties_even_small(clamped),
                false => clamped.round_ties_even(),
            };
            let q = if code == 0.0 { 0.0 } else { code * scale };
            if x.is_nan() { x } else { q }
        }
    }

    /// Whether the STE passes the gradient at `x`: lo <= x / s <= hi (never for NaN).
    pub fn ste_passes(self) -> impl Fn(f32) -> bool + Copy + Send + Sync {
        let Channel {
            inv_scale, lo, hi, ..
        } = self;
        move |x: f32| {
            let code = x * inv_scale;
            code >= lo && code <= hi
        }
    }
}

/// `x` rounded to the nearest integer, ties to even, for |x| <= 2^22: `f32::round_ties_even` is
/// a libm call per element on x86-64's baseline (no SSE4.1); adding and subtracting 1.5 * 2^23
/// rounds in the default rounding mode (ties to even) instead, and vectorises. Only the sign
/// of a zero result can differ, and q maps every zero code to +0.
fn round_ties_even_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (x + MAGIC) - MAGIC
}

/// A quantisation grid: scales s > 0 and integer zero points z, one per tensor or one per
/// channel along `axis`, and the integer code range [qmin, qmax]. Built through
/// [`Grid::new`], so every grid is valid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "UncheckedGrid")]
pub struct Grid {
    /// The channel axis; `None`: one scale and zero point for the whole tensor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub axis: Option<usize>,
    pub scale: Vec<f32>,
    pub zero: Vec<i64>,
    pub qmin: i64,
    pub qmax: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UncheckedGrid {
    #[serde(default)]
    axis: Option<usize>,
    scale: Vec<f32>,
    zero: Vec<i64>,
    qmin: i64,
    qmax: i64,
}

impl TryFrom<UncheckedGrid> for Grid {
    type Error = String;
    fn try_from(g: UncheckedGrid) -> std::result::Result<Self, String> {
        Grid::new(g.axis, g.scale, g.zero, g.qmin, g.qmax).map_err(|e| e.to_string())
    }
}

/// The widest code range a grid may have: int32's (ONNX's widest quantised type, that of
/// biases).
const CODE_LIMIT: i64 = 1 << 31;

impl Grid {
    /// A grid, refusing what q cannot compute: no channels, scales and zero points of
    /// different counts, a scale that is not a positive number whose reciprocal is finite, a
    /// zero point outside [qmin, qmax], an empty or wider-than-int32 code range.
    pub fn new(
        axis: Option<usize>,
        scale: Vec<f32>,
        zero: Vec<i64>,
        qmin: i64,
        qmax: i64,
    ) -> Result<Self> {
        let fail = |what: String| Err(Error::usage(what));
        if scale.is_empty() || scale.len() != zero.len() {
            return fail(format!(
                "a grid needs as many zero points as scales, at least one (got {} scales, {} \
                 zero points)",
                scale.len(),
                zero.len()
            ));
        }
        if axis.is_none() && scale.len() != 1 {
            return fail(format!(
                "a per-tensor grid has one scale (got {})",
                scale.len()
            ));
        }
        if !(-CODE_LIMIT <= qmin && qmin < qmax && qmax < CODE_LIMIT) {
            return fail(format!(
                "code range [{qmin}, {qmax}] is empty or wider than int32's"
            ));
        }
        if let Some((i, s)) = scale
            .iter()
            .enumerate()
            .find(|(_, s)| !(**s > 0.0 && s.is_finite() && (1.0 / **s).is_finite()))
        {
            return fail(format!(
                "scale {s:e} (channel {i}) is not a positive number with a finite reciprocal"
            ));
        }
        if let Some((i, z)) = zero
            .iter()
            .enumerate()
            .find(|(_, z)| !(qmin..=qmax).contains(*z))
        {
            return fail(format!(
                "zero point {z} (channel {i}) is outside the code range [{qmin}, {qmax}]"
            ));
        }
        Ok(Self {
            axis,
            scale,
            zero,
            qmin,
            qmax,
        })
    }

    /// One scale and zero point for the whole tensor.
    pub fn per_tensor(scale: f32, zero: i64, qmin: i64, qmax: i64) -> Result<Self> {
        Self::new(None, vec![scale], vec![zero], qmin, qmax)
    }

    /// Channels along `axis`.
    pub fn channels(&self) -> usize {
        self.scale.len()
    }

    /// Each channel's constants, as the kernels use them.
    pub fn table(&self) -> Vec<Channel> {
        self.scale
            .iter()
            .zip(&self.zero)
            .map(|(&scale, &zero)| Channel {
                inv_scale: 1.0 / scale,
                scale,
                lo: f32_at_least(self.qmin - zero),
                hi: f32_at_most(self.qmax - zero),
            })
            .collect()
    }

    /// q(x) of channel `channel` on one value, on the host: the kernels' formula.
    pub fn quantise(&self, x: f32, channel: usize) -> f32 {
        self.table()[channel].quantiser()(x)
    }

    /// The integer code of `x` in channel `channel`, as QuantizeLinear stores it (NaN: the
    /// zero point).
    pub fn code(&self, x: f32, channel: usize) -> i64 {
        let c = self.table()[channel];
        let offset = (x * c.inv_scale).clamp(c.lo, c.hi).round_ties_even();
        match offset.is_nan() {
            true => self.zero[channel],
            false => offset as i64 + self.zero[channel],
        }
    }

    /// Checks that the grid fits a tensor of `shape`: its axis exists and has one scale per
    /// channel.
    pub fn fits(&self, shape: &[usize]) -> std::result::Result<(), String> {
        match self.axis {
            None => Ok(()),
            Some(axis) if axis >= shape.len() => Err(format!(
                "per-channel axis {axis} of a tensor of rank {} ({shape:?})",
                shape.len()
            )),
            Some(axis) if shape[axis] != self.channels() => Err(format!(
                "{} scales along axis {axis} of a tensor of shape {shape:?} ({} channels)",
                self.channels(),
                shape[axis]
            )),
            Some(_) => Ok(()),
        }
    }
}
