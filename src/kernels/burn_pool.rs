//! burn's own max pooling on any backend, called with [`MaxPoolOptions`]: what the wgpu side
//! runs and what the CPU side falls back to. The backends pad symmetrically (the public
//! `kernels::max_pool2d` sends asymmetric padding to burn's tensor-level function first).

use burn::backend::Backend;
use burn::backend::IntDType;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::ops::MaxPoolOptions;

fn padding(options: &MaxPoolOptions<2>) -> [usize; 2] {
    options.padding.map(|(begin, _)| begin)
}

pub(super) fn max_pool<B: Backend>(x: FloatTensor<B>, o: &MaxPoolOptions<2>) -> FloatTensor<B> {
    B::max_pool2d(
        x,
        o.kernel_size,
        o.stride,
        padding(o),
        o.dilation,
        o.ceil_mode,
    )
}

pub(super) fn max_pool_with_indices<B: Backend>(
    x: FloatTensor<B>,
    o: &MaxPoolOptions<2>,
    indices: IntDType,
) -> (FloatTensor<B>, IntTensor<B>) {
    let out = B::max_pool2d_with_indices(
        x,
        o.kernel_size,
        o.stride,
        padding(o),
        o.dilation,
        o.ceil_mode,
        indices,
    );
    (out.output, out.indices)
}

pub(super) fn max_pool_input_grad<B: Backend>(
    x: FloatTensor<B>,
    o: &MaxPoolOptions<2>,
    output_grad: FloatTensor<B>,
    indices: IntTensor<B>,
) -> FloatTensor<B> {
    B::max_pool2d_with_indices_backward(
        x,
        o.kernel_size,
        o.stride,
        padding(o),
        o.dilation,
        o.ceil_mode,
        output_grad,
        indices,
    )
    .x_grad
}
