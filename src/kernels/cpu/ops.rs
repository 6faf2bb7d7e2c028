//! [`KernelOps`] for Flex: advcomp's kernels where they cover the shapes and dtypes, Flex's own
//! (or the tensor-op reference) otherwise.

use burn::backend::ops::{FloatTensorOps, ModuleOps};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{DType, Flex, IntDType};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};

use super::conv::{Conv, conv2d, conv2d_weight_backward, conv2d_x_backward};
use super::gemm::matmul;
use super::maps::map_channels;
use super::pool::{Pool, max_pool2d, max_pool2d_backward, max_pool2d_with_indices};
use crate::kernels::{KernelOps, QuantGrad, StepSettings, Table, burn_pool, reference};

impl KernelOps for Flex {
    /// One pass of each channel's [`crate::kernels::Channel::quantiser`] (the tests hold it to the reference's
    /// tensor ops, bit for bit).
    fn quantise(x: FloatTensor<Self>, table: Table, _grad: QuantGrad) -> FloatTensor<Self> {
        match x.dtype() {
            DType::F32 => map_channels(&x, None, &table, |row| {
                let q = row.quantiser();
                move |x, _| q(x)
            }),
            _ => reference::quantise::<Self>(x, &table),
        }
    }
    fn quantise_ste(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        table: Table,
    ) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 {
            return reference::quantise_ste::<Self>(x, grad, &table);
        }
        map_channels(&x, Some(&grad), &table, |row| {
            let passes = row.ste_passes();
            move |x, g| if passes(x) { g } else { 0.0 }
        })
    }
    fn apply_mask(weight: FloatTensor<Self>, mask: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::apply_mask::<Self>(weight, mask)
    }
    fn dns_update(
        weight: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        t_low: f32,
        t_high: f32,
    ) -> FloatTensor<Self> {
        reference::dns_update::<Self>(weight, mask, t_low, t_high)
    }
    fn attack_step(
        x: FloatTensor<Self>,
        x0: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        factor: FloatTensor<Self>,
        step: StepSettings,
    ) -> FloatTensor<Self> {
        reference::attack_step::<Self>(x, x0, grad, factor, step)
    }
    fn conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match Conv::of(&x, &weight, &options) {
            Some(conv) => conv2d(conv, &x, &weight, None),
            None => <Flex as ModuleOps<Flex>>::conv2d(x, weight, None, options),
        }
    }
    fn conv_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let fits = |conv: &Conv| {
            bias.dtype() == DType::F32 && bias.layout().shape().as_slice() == [conv.out_channels]
        };
        match Conv::of(&x, &weight, &options).filter(fits) {
            Some(conv) => conv2d(conv, &x, &weight, Some(&bias)),
            None => <Flex as ModuleOps<Flex>>::conv2d(x, weight, Some(bias), options),
        }
    }
    fn conv_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match Conv::of(&x, &weight, &options).filter(|_| output_grad.dtype() == DType::F32) {
            Some(conv) => conv2d_x_backward(conv, &weight, &output_grad),
            None => <Flex as ModuleOps<Flex>>::conv2d_x_backward(x, weight, output_grad, options),
        }
    }
    fn conv_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match Conv::of(&x, &weight, &options).filter(|_| output_grad.dtype() == DType::F32) {
            Some(conv) => conv2d_weight_backward(conv, &x, &output_grad),
            None => {
                <Flex as ModuleOps<Flex>>::conv2d_weight_backward(x, weight, output_grad, options)
            }
        }
    }
    fn matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        match matmul(&a, &b) {
            Some(product) => product,
            None => <Flex as FloatTensorOps<Flex>>::float_matmul(a, b),
        }
    }
    fn max_pool(x: FloatTensor<Self>, options: MaxPoolOptions<2>) -> FloatTensor<Self> {
        match Pool::of(&x, &options) {
            Some(pool) => max_pool2d(pool, &x),
            None => burn_pool::max_pool::<Flex>(x, &options),
        }
    }
    fn max_pool_with_indices(
        x: FloatTensor<Self>,
        options: MaxPoolOptions<2>,
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        match Pool::of(&x, &options) {
            Some(pool) => max_pool2d_with_indices(pool, &x),
            None => burn_pool::max_pool_with_indices::<Flex>(x, &options, IntDType::I64),
        }
    }
    fn max_pool_input_grad(
        x: FloatTensor<Self>,
        options: MaxPoolOptions<2>,
        output_grad: FloatTensor<Self>,
        indices: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        match Pool::of(&x, &options).filter(|_| indices.dtype() == DType::I64) {
            Some(pool) => max_pool2d_backward(pool, &output_grad, &indices),
            None => burn_pool::max_pool_input_grad::<Flex>(x, &options, output_grad, indices),
        }
    }
}
