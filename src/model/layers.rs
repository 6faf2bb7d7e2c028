//! burn's convolution and max-pooling modules run through advcomp's kernels
//! ([`crate::kernels::conv2d`], [`crate::kernels::max_pool2d`]), with the options burn's own
//! `forward` would use.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::prelude::*;
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};

use crate::kernels;

/// (begin, end) padding per spatial dimension of an input of `size` [h, w], "same" worked out
/// as burn does.
fn padding_pairs(
    padding: &PaddingConfig2d,
    kernel: [usize; 2],
    stride: [usize; 2],
    size: [usize; 2],
) -> [(usize, usize); 2] {
    let same = |i: usize| {
        let total = match size[i].div_ceil(stride[i]) {
            0 => 0,
            out => ((out - 1) * stride[i] + kernel[i]).saturating_sub(size[i]),
        };
        (total / 2, total - total / 2)
    };
    match *padding {
        PaddingConfig2d::Valid => [(0, 0); 2],
        PaddingConfig2d::Same => [same(0), same(1)],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
    }
}

/// The options `conv`'s forward pass convolves `x` (dims [n, c, h, w]) with.
pub(crate) fn conv_options(conv: &Conv2d, [_, _, h, w]: [usize; 4]) -> ConvOptions<2> {
    let padding = padding_pairs(&conv.padding, conv.kernel_size, conv.stride, [h, w]);
    ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups)
}

/// `pool`'s forward pass.
pub(crate) fn max_pool(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let padding = padding_pairs(&pool.padding, pool.kernel_size, pool.stride, [h, w]);
    let options = MaxPoolOptions::new(pool.kernel_size)
        .with_stride(pool.stride)
        .with_padding_pairs(padding)
        .with_dilation(pool.dilation)
        .with_ceil_mode(pool.ceil_mode);
    kernels::max_pool2d(x, options)
}
