//! advcomp's kernels as a burn backend extension: fixed-point fake quantisation, the pruning
//! mask, the DNS mask update, the fused step of the iterative attacks, and the convolution,
//! matrix product and max pooling every model runs through.
//!
//! One trait, [`KernelOps`], with three implementations:
//! - the cubecl backend (wgpu) launches the hand-written WGSL in `shaders/` on the tensors' own
//!   device buffers, and burn's own convolution, matrix product and pooling (`wgsl.rs`);
//! - the Flex CPU backend runs a reference built from ordinary tensor ops (`reference.rs`), the
//!   definition the WGSL is tested against, bit for bit, and its own im2col + GEMM convolution,
//!   matrix product and max pooling (`cpu.rs`: Flex's are several times slower at these
//!   shapes);
//! - `Autodiff<B>` adds the backward passes (`autodiff.rs`): straight-through (STE) or identity
//!   (BPDA) for the quantiser, identity to the dense weights for the mask (DNS lets pruned
//!   weights recover), none for the mask update and the attack step; convolution and pooling
//!   compute only the gradients of tracked inputs (an attack never pays for weight gradients).
//!
//! Kernels know no models or attacks: callers pass tensors and settings.

mod autodiff;
mod burn_pool;
mod cpu;
mod reference;
mod wgsl;

use burn::Tensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, backend_extension};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The WGSL sources, by file name (for validation and for the record).
pub const SHADERS: [(&str, &str); 4] = [
    ("fixed_point.wgsl", wgsl::FIXED_POINT),
    ("mask.wgsl", wgsl::MASK),
    ("dns_update.wgsl", wgsl::DNS_UPDATE),
    ("attack_step.wgsl", wgsl::ATTACK_STEP),
];

/// How an attack step turns the gradient into a perturbation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepRule {
    /// eps * sign(g) (FGSM, IFGSM, PGD).
    Sign,
    /// factor[image] * g, one factor per image (FGM, IFGM).
    Scaled,
}

/// Settings of one fused attack step (see `shaders/attack_step.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepSettings {
    pub rule: StepRule,
    /// Sign step size and half-width of the interval each step stays in.
    pub eps: f32,
    /// Total L-inf budget around the original image (`f32::INFINITY`: none).
    pub budget: f32,
}

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

    /// The smallest and largest integer code, as f32: -2^(W-1) and 2^(W-1) - 1. Above 24 bits
    /// the top code is not an f32; the largest f32 below it is used, so saturation never
    /// rounds a value up past the range.
    pub fn code_range(self) -> (f32, f32) {
        let half = 2f32.powi(self.bits as i32 - 1);
        let top = if self.bits <= 24 {
            half - 1.0
        } else {
            f32::from_bits(half.to_bits() - 1)
        };
        (-half, top)
    }

    /// The representable range [min, max] of values.
    pub fn value_range(self) -> (f32, f32) {
        let (lo, hi) = self.code_range();
        let inv = 1.0 / self.scale();
        (lo * inv, hi * inv)
    }

    /// q(x) on one value, on the host: the same formula as the kernels, for checks.
    pub fn quantise(self, x: f32) -> f32 {
        self.quantiser()(x)
    }

    /// q as a function with its constants worked out once: what the CPU kernel applies to every
    /// element. The same formula as the reference's tensor ops, bit for bit.
    pub fn quantiser(self) -> impl Fn(f32) -> f32 + Copy + Send + Sync {
        let (lo, hi) = self.code_range();
        let (scale, inverse) = (self.scale(), 1.0 / self.scale());
        // Codes of up to 22 bits round exactly with the 1.5 * 2^23 trick (see `round_ties_even`).
        let small = self.bits <= 22;
        // Clamping before rounding gives the same code as after (the bounds are integers), and
        // keeps the trick's argument small. Selects, not branches, so the loop vectorises.
        move |x: f32| {
            let clamped = (x * scale).clamp(lo, hi);
            let code = match small {
                true => round_ties_even_small(clamped),
                false => clamped.round_ties_even(),
            };
            let q = if code == 0.0 { 0.0 } else { code * inverse };
            if x.is_nan() { x } else { q }
        }
    }

    /// Whether the STE passes the gradient at `x`: lo <= x * 2^F <= hi (never for NaN).
    pub fn ste_passes(self) -> impl Fn(f32) -> bool + Copy + Send + Sync {
        let (lo, hi) = self.code_range();
        let scale = self.scale();
        move |x: f32| {
            let code = x * scale;
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

impl std::fmt::Display for FixedPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q({},{})", self.bits, self.int_bits)
    }
}

/// The gradient a quantiser passes back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum QuantGrad {
    /// Straight-through inside the representable range, zero where q clamps.
    #[default]
    Ste,
    /// Gradient 1 everywhere (BPDA).
    Identity,
}

serde_as_text!(QuantGrad);

impl std::str::FromStr for QuantGrad {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ste" => Ok(Self::Ste),
            "identity" | "bpda" => Ok(Self::Identity),
            _ => Err(Error::usage(format!(
                "unknown quantiser gradient '{s}' (expected ste or identity)"
            ))),
        }
    }
}

impl std::fmt::Display for QuantGrad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ste => "ste",
            Self::Identity => "identity",
        })
    }
}

/// The backend extension. Tensors are f32; `mask` tensors hold 0.0 (pruned) or 1.0 (kept) and
/// have the weight's number of elements.
#[backend_extension(Cube, Flex, Autodiff)]
pub trait KernelOps: Backend {
    /// q(x), with `grad` deciding its backward pass.
    fn fixed_point(x: FloatTensor<Self>, format: FixedPoint, grad: QuantGrad) -> FloatTensor<Self>;
    /// The STE backward of q: `grad` where x lies in the range, 0 elsewhere.
    fn fixed_point_ste(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        format: FixedPoint,
    ) -> FloatTensor<Self>;
    /// `weight` where `mask` != 0, +0 elsewhere.
    fn apply_mask(weight: FloatTensor<Self>, mask: FloatTensor<Self>) -> FloatTensor<Self>;
    /// The DNS update: (mask or |w| > t_high) and |w| > t_low, as 1.0/0.0.
    fn dns_update(
        weight: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        t_low: f32,
        t_high: f32,
    ) -> FloatTensor<Self>;
    /// One attack step from `x` (images [n, ...]) with gradient `grad`, original images `x0`
    /// and per-image `factor` [n] (used by [`StepRule::Scaled`]).
    fn attack_step(
        x: FloatTensor<Self>,
        x0: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        factor: FloatTensor<Self>,
        step: StepSettings,
    ) -> FloatTensor<Self>;
    /// 2D convolution without bias, as burn's `conv2d`.
    fn conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;
    /// 2D convolution plus a bias per output channel.
    fn conv_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;
    /// The convolution's gradient with respect to `x` (only its shape is read).
    fn conv_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;
    /// The convolution's gradient with respect to `weight`.
    fn conv_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;
    /// The matrix product a [m, k] · b [k, n].
    fn matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
    /// 2D max pooling, as burn's `max_pool2d`.
    fn max_pool(x: FloatTensor<Self>, options: MaxPoolOptions<2>) -> FloatTensor<Self>;
    /// Max pooling and, per output, the index of its maximum in the input plane.
    fn max_pool_with_indices(
        x: FloatTensor<Self>,
        options: MaxPoolOptions<2>,
    ) -> (FloatTensor<Self>, IntTensor<Self>);
    /// Max pooling's gradient with respect to `x` (only its shape is read).
    fn max_pool_input_grad(
        x: FloatTensor<Self>,
        options: MaxPoolOptions<2>,
        output_grad: FloatTensor<Self>,
        indices: IntTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// 2D convolution (burn's `conv2d`, same arguments), differentiable, fast on every backend.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    use burn::backend::Dispatch;
    let (x, weight) = (x.into_dispatch(), weight.into_dispatch());
    Tensor::from_dispatch(match bias {
        Some(bias) => <Dispatch as KernelOps>::conv_bias(x, weight, bias.into_dispatch(), options),
        None => <Dispatch as KernelOps>::conv(x, weight, options),
    })
}

/// The matrix product a [m, k] · b [k, n] (burn's `matmul` on matrices), differentiable, fast
/// on every backend.
pub fn matmul(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<burn::backend::Dispatch as KernelOps>::matmul(
        a.into_dispatch(),
        b.into_dispatch(),
    ))
}

/// 2D max pooling (burn's `max_pool2d`, same arguments), differentiable, fast on every backend.
pub fn max_pool2d(x: Tensor<4>, options: MaxPoolOptions<2>) -> Tensor<4> {
    // The backends' pooling pads symmetrically; burn's own function pads other cases itself.
    if options.padding.iter().any(|(begin, end)| begin != end) {
        return burn::tensor::module::max_pool2d(x, options);
    }
    Tensor::from_dispatch(<burn::backend::Dispatch as KernelOps>::max_pool(
        x.into_dispatch(),
        options,
    ))
}

/// q(x) elementwise (see [`FixedPoint`]), differentiable as `grad` says.
pub fn fixed_point<const D: usize>(x: Tensor<D>, format: FixedPoint, grad: QuantGrad) -> Tensor<D> {
    Tensor::from_dispatch(<burn::backend::Dispatch as KernelOps>::fixed_point(
        x.into_dispatch(),
        format,
        grad,
    ))
}

/// `weight` ⊙ `mask` (pruned entries exactly +0); the gradient reaches every weight.
pub fn apply_mask<const D: usize>(weight: Tensor<D>, mask: Tensor<D>) -> Tensor<D> {
    assert_eq!(
        weight.dims(),
        mask.dims(),
        "mask shape must match the weight"
    );
    Tensor::from_dispatch(<burn::backend::Dispatch as KernelOps>::apply_mask(
        weight.into_dispatch(),
        mask.into_dispatch(),
    ))
}

/// The DNS mask update with thresholds `t_low` = 0.9 t and `t_high` = 1.1 t; returns the new
/// mask (no gradient).
pub fn dns_update<const D: usize>(
    weight: Tensor<D>,
    mask: Tensor<D>,
    t_low: f32,
    t_high: f32,
) -> Tensor<D> {
    assert_eq!(
        weight.dims(),
        mask.dims(),
        "mask shape must match the weight"
    );
    Tensor::from_dispatch(<burn::backend::Dispatch as KernelOps>::dns_update(
        weight.into_dispatch(),
        mask.into_dispatch(),
        t_low,
        t_high,
    ))
}

/// One fused attack step: x + (eps sign(g) or factor g), clipped to the eps interval of `x`,
/// to the budget around `x0`, and to [0, 1]; a NaN gradient makes no step. `factor` holds one
/// value per image (the first dimension); no gradient flows through it.
pub fn attack_step<const D: usize>(
    x: Tensor<D>,
    x0: Tensor<D>,
    grad: Tensor<D>,
    factor: Tensor<1>,
    step: StepSettings,
) -> Tensor<D> {
    assert_eq!(x.dims(), x0.dims(), "x0 shape must match x");
    assert_eq!(x.dims(), grad.dims(), "gradient shape must match x");
    assert_eq!(factor.dims()[0], x.dims()[0], "one factor per image");
    Tensor::from_dispatch(<burn::backend::Dispatch as KernelOps>::attack_step(
        x.into_dispatch(),
        x0.into_dispatch(),
        grad.into_dispatch(),
        factor.into_dispatch(),
        step,
    ))
}

/// Caps the workgroups per dispatch dimension (65,535 by default, WebGPU's limit), so tests
/// can drive the two-dimensional dispatch with tensors a software adapter can allocate.
/// Results must not depend on it.
#[doc(hidden)]
pub fn limit_groups_per_dimension(groups: u32) {
    wgsl::MAX_GROUPS_PER_DIM.store(groups.max(1), std::sync::atomic::Ordering::Relaxed);
}

#[doc(hidden)]
/// Lets the CPU kernels run their AVX-512 copies (the default) or only their baseline ones, so
/// tests can hold the two to the same bits; returns whether they now run the AVX-512 copies.
pub fn allow_avx512(allowed: bool) -> bool {
    cpu::AVX512_ALLOWED.store(allowed, std::sync::atomic::Ordering::Relaxed);
    cpu::avx512()
}

#[doc(hidden)]
/// The STE backward as a tensor function, for tests that compare backends.
pub fn fixed_point_ste<const D: usize>(
    x: Tensor<D>,
    grad: Tensor<D>,
    format: FixedPoint,
) -> Tensor<D> {
    Tensor::from_dispatch(<burn::backend::Dispatch as KernelOps>::fixed_point_ste(
        x.into_dispatch(),
        grad.into_dispatch(),
        format,
    ))
}

#[doc(hidden)]
/// The reference's q (ordinary tensor ops, `reference.rs`), for tests that hold the fused CPU
/// kernel to it.
pub fn fixed_point_reference<const D: usize>(x: Tensor<D>, format: FixedPoint) -> Tensor<D> {
    Tensor::from_dispatch(reference::fixed_point::<burn::backend::Dispatch>(
        x.into_dispatch(),
        format,
    ))
}

#[doc(hidden)]
/// The reference's STE backward, for the same tests.
pub fn fixed_point_ste_reference<const D: usize>(
    x: Tensor<D>,
    grad: Tensor<D>,
    format: FixedPoint,
) -> Tensor<D> {
    Tensor::from_dispatch(reference::fixed_point_ste::<burn::backend::Dispatch>(
        x.into_dispatch(),
        grad.into_dispatch(),
        format,
    ))
}
