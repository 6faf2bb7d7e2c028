//! The reference: each compression kernel and the attack step written with ordinary backend
//! tensor ops. It is what the Flex CPU backend runs and the definition the WGSL kernels are held
//! to, bit for bit.

use burn::backend::Shape;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, FloatDType, TensorMetadata, get_or_init_device_settings};
use burn::tensor::TensorData;

use super::{Channel, StepRule, StepSettings, Table};

fn bool_dtype<B: Backend>(x: &FloatTensor<B>) -> burn::backend::BoolDType {
    get_or_init_device_settings::<B>(&x.device()).bool_dtype
}

/// `x` viewed as [outer, channels, inner] and each of the table's columns (picked by `column`)
/// expanded to that shape: the per-channel constants beside every element.
fn per_channel<B: Backend>(
    x: FloatTensor<B>,
    table: &Table,
    columns: &[fn(&Channel) -> f32],
) -> (FloatTensor<B>, Vec<FloatTensor<B>>) {
    let shape = x.shape();
    let (outer, channels, inner) = table.layout(&shape);
    let device = x.device();
    let full = Shape::new([outer, channels, inner]);
    let columns = columns
        .iter()
        .map(|column| {
            let values: Vec<f32> = table.rows.iter().map(column).collect();
            let t = B::float_from_data(TensorData::new(values, [1, channels, 1]), &device);
            B::float_expand(t, full.clone())
        })
        .collect();
    (B::float_reshape(x, full), columns)
}

/// q(x) = clamp(round_half_even(x * (1/s)), lo, hi) * s per channel; a zero result is +0, NaN
/// stays NaN.
pub(super) fn quantise<B: Backend>(x: FloatTensor<B>, table: &Table) -> FloatTensor<B> {
    let shape = x.shape();
    let dtype = bool_dtype::<B>(&x);
    let (x3, constants) = per_channel::<B>(
        x,
        table,
        &[|c| c.inv_scale, |c| c.scale, |c| c.lo, |c| c.hi],
    );
    let [inv_scale, scale, lo, hi]: [FloatTensor<B>; 4] =
        constants.try_into().expect("four columns");
    let nan = B::float_is_nan(x3.clone(), dtype);
    let code = B::float_round(B::float_mul(x3.clone(), inv_scale));
    let code = clamp_between::<B>(code, lo, hi);
    let zero = B::float_equal_elem(code.clone(), 0f32.into(), dtype);
    let q = B::float_mul(code, scale);
    let q = B::float_mask_fill(q, zero, 0f32.into());
    B::float_reshape(B::float_mask_where(q, nan, x3), shape)
}

/// `grad` where lo <= x * (1/s) <= hi (never for NaN), 0 elsewhere.
pub(super) fn quantise_ste<B: Backend>(
    x: FloatTensor<B>,
    grad: FloatTensor<B>,
    table: &Table,
) -> FloatTensor<B> {
    let shape = x.shape();
    let dtype = bool_dtype::<B>(&x);
    let (x3, constants) = per_channel::<B>(x, table, &[|c| c.inv_scale, |c| c.lo, |c| c.hi]);
    let [inv_scale, lo, hi]: [FloatTensor<B>; 3] = constants.try_into().expect("three columns");
    let scaled = B::float_mul(x3, inv_scale);
    let above_lo = B::float_greater_equal(scaled.clone(), lo, dtype);
    let below_hi = B::float_lower_equal(scaled, hi, dtype);
    let outside = B::bool_not(B::bool_and(above_lo, below_hi));
    let outside = B::bool_reshape(outside, shape);
    B::float_mask_fill(grad, outside, 0f32.into())
}

/// `weight` where `mask` != 0, +0 elsewhere.
pub(super) fn apply_mask<B: Backend>(
    weight: FloatTensor<B>,
    mask: FloatTensor<B>,
) -> FloatTensor<B> {
    let dtype = bool_dtype::<B>(&weight);
    let pruned = B::float_equal_elem(mask, 0f32.into(), dtype);
    B::float_mask_fill(weight, pruned, 0f32.into())
}

/// (mask or |w| > t_high) and |w| > t_low, as 1.0 / 0.0.
pub(super) fn dns_update<B: Backend>(
    weight: FloatTensor<B>,
    mask: FloatTensor<B>,
    t_low: f32,
    t_high: f32,
) -> FloatTensor<B> {
    let dtype = bool_dtype::<B>(&weight);
    let magnitude = B::float_abs(weight);
    let kept = B::float_not_equal_elem(mask, 0f32.into(), dtype);
    let grows = B::float_greater_elem(magnitude.clone(), t_high.into(), dtype);
    let survives = B::float_greater_elem(magnitude, t_low.into(), dtype);
    let keep = B::bool_and(B::bool_or(kept, grows), survives);
    B::bool_into_float(keep, FloatDType::F32)
}

/// `value` clamped between the tensors `lo` and `hi`, as WGSL's clamp (max, then min).
fn clamp_between<B: Backend>(
    value: FloatTensor<B>,
    lo: FloatTensor<B>,
    hi: FloatTensor<B>,
) -> FloatTensor<B> {
    let dtype = bool_dtype::<B>(&value);
    let below = B::float_lower(value.clone(), lo.clone(), dtype);
    let value = B::float_mask_where(value, below, lo);
    let above = B::float_greater(value.clone(), hi.clone(), dtype);
    B::float_mask_where(value, above, hi)
}

/// x + step (eps sign(g), or factor[image] g; 0 where g or the step is NaN), clamped to
/// [x - eps, x + eps], to [x0 - budget, x0 + budget], and to [0, 1].
pub(super) fn attack_step<B: Backend>(
    x: FloatTensor<B>,
    x0: FloatTensor<B>,
    grad: FloatTensor<B>,
    factor: FloatTensor<B>,
    step: StepSettings,
) -> FloatTensor<B> {
    let shape = x.shape();
    let dtype = bool_dtype::<B>(&x);
    let images = shape[0];
    let per_image = shape.num_elements() / images.max(1);
    let raw = match step.rule {
        StepRule::Sign => B::float_mul_scalar(B::float_sign(grad.clone()), step.eps.into()),
        StepRule::Scaled => {
            let flat = Shape::new([images, per_image]);
            let g = B::float_reshape(grad.clone(), flat.clone());
            let f = B::float_expand(B::float_reshape(factor, Shape::new([images, 1])), flat);
            B::float_reshape(B::float_mul(f, g), shape)
        }
    };
    let nan = B::bool_or(
        B::float_is_nan(grad, dtype),
        B::float_is_nan(raw.clone(), dtype),
    );
    let delta = B::float_mask_fill(raw, nan, 0f32.into());
    let moved = B::float_add(x.clone(), delta);
    let moved = clamp_between::<B>(
        moved,
        B::float_sub_scalar(x.clone(), step.eps.into()),
        B::float_add_scalar(x, step.eps.into()),
    );
    let moved = clamp_between::<B>(
        moved,
        B::float_sub_scalar(x0.clone(), step.budget.into()),
        B::float_add_scalar(x0, step.budget.into()),
    );
    B::float_clamp(moved, 0f32.into(), 1f32.into())
}
