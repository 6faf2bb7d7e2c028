//! advcomp's kernels as a burn backend extension: fake quantisation on a [`Grid`] (affine,
//! per tensor or per channel; fixed point is one case of it), the pruning mask, the DNS mask update, the fused step of the iterative attacks, and the convolution,
//! matrix product and max pooling every model runs through.
//!
//! One trait, [`KernelOps`], with three implementations:
//! - the cubecl backend (wgpu) launches the hand-written WGSL in `shaders/` on the tensors' own
//!   device buffers, and burn's own convolution, matrix product and pooling (`wgsl.rs`);
//! - the Flex CPU backend runs a reference built from ordinary tensor ops (`reference.rs`), the
//!   definition the WGSL is tested against, bit for bit, and its own im2col + GEMM convolution,
//!   matrix product and max pooling (`cpu/`: Flex's are several times slower at these
//!   shapes);
//! - `Autodiff<B>` adds the backward passes (`autodiff.rs`): straight-through (STE: the
//!   gradient where qmin <= code <= qmax, zero elsewhere) or identity (BPDA) for the quantiser, identity to the dense weights for the mask (DNS lets pruned
//!   weights recover), none for the mask update and the attack step; convolution and pooling
//!   compute only the gradients of tracked inputs (an attack never pays for weight gradients).
//!
//! Kernels know no models or attacks: callers pass tensors and settings.

mod autodiff;
mod burn_pool;
mod cpu;
mod grid;
mod reference;
mod wgsl;

pub use grid::{Channel, Grid};

use crate::{Error, Result};
use burn::Tensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, backend_extension};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};

/// The WGSL that runs, by file name (for validation and for the record): each file of
/// `shaders/` after the prelude, its placeholders filled in.
pub fn shaders() -> [(String, String); 4] {
    [
        wgsl::QUANTISE,
        wgsl::MASK,
        wgsl::DNS_UPDATE,
        wgsl::ATTACK_STEP,
    ]
    .map(|shader| (shader.file(), shader.complete()))
}

/// How an attack step turns the gradient into a perturbation. The value is the attack-step
/// shader's mode (its `MODE_*` constants are filled in from it).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepRule {
    /// eps * sign(g) (FGSM, IFGSM, PGD).
    Sign = 0,
    /// factor[image] * g, one factor per image (FGM, IFGM).
    Scaled = 1,
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

/// A grid's constants as the kernels take them: one row per channel along `axis` (one row
/// for the whole tensor when `axis` is `None`).
#[derive(Clone, Debug)]
pub struct Table {
    axis: Option<usize>,
    rows: std::sync::Arc<[Channel]>,
}

impl Table {
    pub fn of(grid: &Grid) -> Self {
        Self {
            axis: grid.axis,
            rows: grid.table().into(),
        }
    }

    /// (outer, channels, inner) of a tensor of `shape`: element i is in channel
    /// (i / inner) % channels. Panics when the grid does not fit (callers check with
    /// [`Grid::fits`]).
    fn layout(&self, shape: &[usize]) -> (usize, usize, usize) {
        let len: usize = shape.iter().product();
        match self.axis {
            None => (1, 1, len),
            Some(axis) => {
                assert!(
                    axis < shape.len() && shape[axis] == self.rows.len(),
                    "a grid of {} channels along axis {axis} does not fit shape {shape:?}",
                    self.rows.len()
                );
                let inner: usize = shape[axis + 1..].iter().product();
                (
                    len / (inner * self.rows.len()).max(1),
                    self.rows.len(),
                    inner,
                )
            }
        }
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
    /// q(x) on a grid's table, with `grad` deciding its backward pass.
    fn quantise(x: FloatTensor<Self>, table: Table, grad: QuantGrad) -> FloatTensor<Self>;
    /// The STE backward of q: `grad` where x / s lies in [qmin − z, qmax − z], 0 elsewhere.
    fn quantise_ste(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        table: Table,
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

/// q(x) elementwise on `grid` (see [`Grid`]), differentiable as `grad` says. Panics when the
/// grid does not fit the tensor's shape (see [`Grid::fits`]).
pub fn quantise<const D: usize>(x: Tensor<D>, grid: &Grid, grad: QuantGrad) -> Tensor<D> {
    Tensor::from_dispatch(<burn::backend::Dispatch as KernelOps>::quantise(
        x.into_dispatch(),
        Table::of(grid),
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
pub fn quantise_ste<const D: usize>(x: Tensor<D>, grad: Tensor<D>, grid: &Grid) -> Tensor<D> {
    Tensor::from_dispatch(<burn::backend::Dispatch as KernelOps>::quantise_ste(
        x.into_dispatch(),
        grad.into_dispatch(),
        Table::of(grid),
    ))
}

#[doc(hidden)]
/// The reference's q (ordinary tensor ops, `reference.rs`), for tests that hold the fused CPU
/// kernel to it.
pub fn quantise_reference<const D: usize>(x: Tensor<D>, grid: &Grid) -> Tensor<D> {
    Tensor::from_dispatch(reference::quantise::<burn::backend::Dispatch>(
        x.into_dispatch(),
        &Table::of(grid),
    ))
}

#[doc(hidden)]
/// The reference's STE backward, for the same tests.
pub fn quantise_ste_reference<const D: usize>(
    x: Tensor<D>,
    grad: Tensor<D>,
    grid: &Grid,
) -> Tensor<D> {
    Tensor::from_dispatch(reference::quantise_ste::<burn::backend::Dispatch>(
        x.into_dispatch(),
        grad.into_dispatch(),
        &Table::of(grid),
    ))
}
